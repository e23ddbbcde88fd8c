//! Sharding: the fixture transformer and the 6-layer encoder cut into 2 and 3 stages,
//! run one after another by onnxruntime (run_stages.py) against the whole model; and
//! the graphs that must be refused.

use std::path::{Path, PathBuf};

use crate::common::*;
use serde_json::Value;
use webaccel_onnx::proto::tensor_proto::DataType;
use webaccel_onnx::proto::{AttributeProto, GraphProto, ModelProto, attribute_proto};
use webaccel_onnx::{ShardError, StagePlan, shard, shard_with_plan};

/// Cuts the model at `path` into `stages`, writes the stage files, runs them with
/// run_stages.py and checks what it reports against the whole model and the plan.
fn check_stages(path: &Path, reference: &Path, stages: usize, out: &Path) -> (StagePlan, Value) {
    check_stages_within(path, reference, stages, out, 1e-5)
}

fn check_stages_within(
    path: &Path,
    reference: &Path,
    stages: usize,
    out: &Path,
    tolerance: f64,
) -> (StagePlan, Value) {
    let model = read_model(path);
    let sharded = shard_with_plan(&model, stages).unwrap();
    assert_eq!(sharded.models.len(), stages);
    let mut files: Vec<PathBuf> = Vec::new();
    for (i, m) in sharded.models.iter().enumerate() {
        let file = out.join(format!("stage{i}.onnx"));
        std::fs::write(&file, webaccel_onnx::encode(m)).unwrap();
        files.push(file);
    }
    let mut args = vec![
        run_stages_py().into_os_string(),
        "run".into(),
        path.into(),
        reference.into(),
    ];
    args.extend(files.into_iter().map(PathBuf::into_os_string));
    let report: Value = serde_json::from_str(&python(&args)).unwrap();
    let plan = sharded.plan;
    let whole = report["whole_parameter_bytes"].as_u64().unwrap();
    let label = format!("{} in {stages} stages", path.display());

    let error = report["max_abs_error"].as_f64().unwrap();
    assert!(error <= tolerance, "{label}: max abs error {error}");

    // Each stage keeps its own initializers only, unchanged; together all of them.
    assert_eq!(plan.parameter_bytes, whole, "{label}");
    assert_eq!(
        report["unique_parameter_bytes"].as_u64(),
        Some(whole),
        "{label}"
    );
    let duplicated = report["duplicated_parameter_bytes"].as_u64().unwrap();
    assert_eq!(plan.duplicated_parameter_bytes, duplicated, "{label}");
    let stage_reports = report["stages"].as_array().unwrap();
    let sum: u64 = stage_reports
        .iter()
        .map(|s| s["parameter_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, whole + duplicated, "{label}");
    // Only small constants (shapes, scales) are copied into several stages.
    assert!(
        duplicated * 100 < whole,
        "{label}: {duplicated} of {whole} bytes duplicated: {}",
        report["duplicated_initializers"]
    );
    for (i, (s, summary)) in stage_reports.iter().zip(&plan.stages).enumerate() {
        let bytes = s["parameter_bytes"].as_u64().unwrap();
        assert!(
            bytes < whole,
            "{label}: stage {i} holds {bytes} of {whole} bytes"
        );
        assert!(bytes > 0, "{label}: stage {i} holds no parameters");
        assert_eq!(summary.parameter_bytes, bytes, "{label}: stage {i}");
        assert_eq!(
            s["unused_initializers"],
            Value::Array(vec![]),
            "{label}: stage {i}"
        );
        assert_eq!(
            s["changed_initializers"],
            Value::Array(vec![]),
            "{label}: stage {i}"
        );
        assert_eq!(s["name"], format!("{}_stage{i}", plan.model), "{label}");
        assert_eq!(summary.name, format!("{}_stage{i}", plan.model), "{label}");
        assert_eq!(s["nodes"].as_u64(), Some(summary.nodes as u64), "{label}");
        let names = |key: &str| -> Vec<String> {
            s[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        let plan_names = |v: &[webaccel_onnx::TensorInfo]| -> Vec<String> {
            v.iter().map(|t| t.name.clone()).collect()
        };
        assert_eq!(
            names("inputs"),
            plan_names(&summary.inputs),
            "{label}: stage {i}"
        );
        assert_eq!(
            names("outputs"),
            plan_names(&summary.outputs),
            "{label}: stage {i}"
        );
        assert_eq!(s["ir_version"].as_i64(), model.ir_version, "{label}");
        assert!(
            summary.outputs.iter().all(|t| t.datatype != "unknown"),
            "{label}"
        );
    }
    assert_eq!(
        plan.stages.iter().map(|s| s.nodes).sum::<usize>(),
        model.graph.as_ref().unwrap().node.len(),
        "{label}: every node in exactly one stage"
    );
    (plan, report)
}

#[test]
fn transformer_stages_compute_what_the_whole_model_does() {
    let dir = tempfile::tempdir().unwrap();
    let inferred = dir.path().join("transformer.onnx");
    infer_shapes(&fixtures().join("models/transformer.onnx"), &inferred);
    let reference = fixtures().join("models/transformer.json");
    for stages in [2, 3] {
        let out = dir.path().join(format!("s{stages}"));
        std::fs::create_dir(&out).unwrap();
        let (plan, _) = check_stages(&inferred, &reference, stages, &out);
        assert_eq!(plan.model, "transformer");
        // The first stage reads the tokens; the last gives the hidden states.
        assert_eq!(plan.stages[0].inputs[0].name, "tokens");
        let last = plan.stages.last().unwrap();
        assert_eq!(last.outputs.len(), 1);
        assert_eq!(last.outputs[0].to_string(), "hidden: float[1,8,16]");
    }
}

#[test]
fn encoder_stages_compute_what_the_whole_model_does() {
    let dir = tempfile::tempdir().unwrap();
    let script = fixtures().join("make_encoder.py");
    python(&[script.as_os_str(), dir.path().as_os_str()]);
    let inferred = dir.path().join("encoder_inferred.onnx");
    infer_shapes(&dir.path().join("encoder.onnx"), &inferred);
    for stages in [2, 3] {
        let out = dir.path().join(format!("s{stages}"));
        std::fs::create_dir(&out).unwrap();
        let (plan, _) = check_stages(&inferred, &dir.path().join("encoder.json"), stages, &out);
        // Balanced: no stage holds more than 60% (2 stages) or 45% (3) of the weights.
        let share = if stages == 2 { 60 } else { 45 };
        for s in &plan.stages {
            assert!(
                s.parameter_bytes * 100 <= plan.parameter_bytes * share,
                "unbalanced: {plan:#?}"
            );
        }
        // The encoder is a chain of blocks: one activation tensor crosses each cut.
        for s in &plan.stages[1..] {
            let crossing: Vec<_> = s.inputs.iter().filter(|t| t.name != "tokens").collect();
            assert_eq!(crossing.len(), 1, "{:?}", s.inputs);
        }
    }
}

#[test]
fn quantized_and_half_precision_models_cut_too() {
    let dir = tempfile::tempdir().unwrap();
    let script = fixtures().join("make_quantized.py");
    python(&[script.as_os_str(), dir.path().as_os_str()]);
    for (name, tolerance) in [
        ("transformer_int8_dynamic", 1e-5),
        ("transformer_int8_qdq", 1e-5),
        ("transformer_int4", 1e-5),
        // onnxruntime's CPU provider computes most float16 operators in float32 and keeps
        // the whole model's intermediates in float32; a stage's float16 output is
        // rounded to float16 as the model declares, which costs about 1e-3 here.
        ("transformer_fp16", 5e-3),
    ] {
        // The quantizers' new tensors have no value info yet.
        let inferred = dir.path().join(format!("{name}_inferred.onnx"));
        infer_shapes(&dir.path().join(format!("{name}.onnx")), &inferred);
        let out = dir.path().join(name);
        std::fs::create_dir(&out).unwrap();
        let reference = dir.path().join(format!("{name}.json"));
        check_stages_within(&inferred, &reference, 2, &out, tolerance);
    }
}

/// x -> Relu -> If(cond){then: Identity(r)}{else: Neg(r)} -> Relu -> y
fn model_with_if() -> ModelProto {
    let branch = |name: &str, op: &str| GraphProto {
        name: Some(name.to_owned()),
        node: vec![node(
            op,
            &format!("{name}_op"),
            &["r"],
            &[&format!("{name}_out")],
        )],
        output: vec![value_info(&format!("{name}_out"), DataType::Float, &[4])],
        ..Default::default()
    };
    let mut if_node = node("If", "branch", &["cond"], &["picked"]);
    for (attr, body) in [
        ("then_branch", branch("then", "Identity")),
        ("else_branch", branch("else", "Neg")),
    ] {
        if_node.attribute.push(AttributeProto {
            name: Some(attr.to_owned()),
            r#type: Some(attribute_proto::AttributeType::Graph as i32),
            g: Some(body),
            ..Default::default()
        });
    }
    model(GraphProto {
        name: Some("with_if".to_owned()),
        node: vec![
            node("Relu", "first", &["x"], &["r"]),
            if_node,
            node("Relu", "last", &["picked"], &["y"]),
        ],
        input: vec![
            value_info("x", DataType::Float, &[4]),
            value_info("cond", DataType::Bool, &[]),
        ],
        output: vec![value_info("y", DataType::Float, &[4])],
        value_info: vec![
            value_info("r", DataType::Float, &[4]),
            value_info("picked", DataType::Float, &[4]),
        ],
        ..Default::default()
    })
}

#[test]
fn control_flow_is_refused() {
    let err = shard(&model_with_if(), 2).unwrap_err();
    assert!(matches!(err, ShardError::ControlFlow { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "node 'branch' is an If: control flow cannot be cut"
    );
    // One stage cuts nothing: the model comes back whole, under the stage's name, with
    // the tensor the branches read from the enclosing graph.
    let whole = shard(&model_with_if(), 1).unwrap();
    let g = whole[0].graph.as_ref().unwrap();
    assert_eq!(g.name(), "with_if_stage0");
    assert_eq!(g.node.len(), 3);
}

#[test]
fn more_stages_than_cut_points_are_refused() {
    let model = read_model(&fixtures().join("models/transformer.onnx"));
    let nodes = model.graph.as_ref().unwrap().node.len();
    let err = shard(&model, nodes + 1).unwrap_err();
    assert!(matches!(err, ShardError::TooFewCutPoints { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "{} stages need {nodes} cut points, but a graph of {nodes} nodes has only {}",
            nodes + 1,
            nodes - 1
        )
    );
    assert!(matches!(shard(&model, 0), Err(ShardError::NoStages)));
}

/// x -> Relu -> Neg -> MatMul(w) -> y: only the last node reads weights.
fn chain_with_weights_at_the_end() -> ModelProto {
    model(GraphProto {
        name: Some("tail".to_owned()),
        node: vec![
            node("Relu", "a", &["x"], &["t1"]),
            node("Neg", "b", &["t1"], &["t2"]),
            node("MatMul", "c", &["t2", "w"], &["y"]),
        ],
        initializer: vec![tensor("w", DataType::Float, &[4, 4])],
        input: vec![value_info("x", DataType::Float, &[1, 4])],
        output: vec![value_info("y", DataType::Float, &[1, 4])],
        value_info: vec![
            value_info("t1", DataType::Float, &[1, 4]),
            value_info("t2", DataType::Float, &[1, 4]),
        ],
        ..Default::default()
    })
}

#[test]
fn stages_without_parameters_are_refused() {
    let err = shard(&chain_with_weights_at_the_end(), 2).unwrap_err();
    assert!(
        matches!(
            err,
            ShardError::EmptyStage {
                stage: 0,
                stages: 2
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("stage 0 of 2 would be empty"),
        "{err}"
    );
}

#[test]
fn crossing_tensors_without_types_are_refused() {
    // The committed transformer has not been through shape inference.
    let model = read_model(&fixtures().join("models/transformer.onnx"));
    let err = shard(&model, 2).unwrap_err();
    assert!(matches!(err, ShardError::MissingType { .. }), "{err:?}");
    assert!(err.to_string().contains("shape_inference"), "{err}");
}

#[test]
fn unsorted_graphs_are_cut_in_topological_order() {
    let mut model = chain_with_weights_at_the_end();
    let graph = model.graph.as_mut().unwrap();
    graph.initializer.push(tensor("v", DataType::Float, &[4]));
    graph.node[1].input.push("v".to_owned());
    graph.node[1].op_type = Some("Add".to_owned());
    graph.node.reverse();
    let stages = shard(&model, 2).unwrap();
    let names = |i: usize| -> Vec<String> {
        stages[i]
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .map(|n| n.name().to_owned())
            .collect()
    };
    assert_eq!(names(0), ["a", "b"]);
    assert_eq!(names(1), ["c"]);
    let g1 = stages[1].graph.as_ref().unwrap();
    assert_eq!(
        g1.input.iter().map(|v| v.name()).collect::<Vec<_>>(),
        ["t2"]
    );
    assert_eq!(
        g1.initializer.iter().map(|t| t.name()).collect::<Vec<_>>(),
        ["w"]
    );
}

#[test]
fn outputs_needed_later_pass_through_the_stages_between() {
    // t1 = x + wa; t2 = t1 + wb; y = (t2 + t1) + wd; t1 is also a graph output. Cut in
    // 3 ([a], [b], [c, d]): t1 crosses stage 1 untouched, on to the last stage.
    let graph = GraphProto {
        name: Some("skip".to_owned()),
        node: vec![
            node("Add", "a", &["x", "wa"], &["t1"]),
            node("Add", "b", &["t1", "wb"], &["t2"]),
            node("Add", "c", &["t2", "t1"], &["y0"]),
            node("Add", "d", &["y0", "wd"], &["y"]),
        ],
        initializer: vec![
            tensor("wa", DataType::Float, &[4]),
            tensor("wb", DataType::Float, &[4]),
            tensor("wd", DataType::Float, &[4]),
        ],
        input: vec![value_info("x", DataType::Float, &[4])],
        output: vec![
            value_info("y", DataType::Float, &[4]),
            value_info("t1", DataType::Float, &[4]),
        ],
        value_info: ["t2", "y0"]
            .iter()
            .map(|n| value_info(n, DataType::Float, &[4]))
            .collect(),
        ..Default::default()
    };
    let sharded = shard_with_plan(&model(graph), 3).unwrap();
    let io = |i: usize| {
        let s = &sharded.plan.stages[i];
        let names =
            |v: &[webaccel_onnx::TensorInfo]| v.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        (names(&s.inputs), names(&s.outputs))
    };
    assert_eq!(io(0), (vec!["x".to_owned()], vec!["t1".to_owned()]));
    assert_eq!(
        io(1),
        (
            vec!["t1".to_owned()],
            vec!["t1".to_owned(), "t2".to_owned()]
        )
    );
    assert_eq!(
        io(2),
        (
            vec!["t1".to_owned(), "t2".to_owned()],
            vec!["y".to_owned(), "t1".to_owned()]
        )
    );
}
