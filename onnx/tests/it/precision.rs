//! Precision detection on the quantized fixtures (made at test time by
//! make_quantized.py), on the committed fp32 fixtures and on synthetic graphs.

use crate::common::*;
use webaccel_onnx::proto::GraphProto;
use webaccel_onnx::proto::tensor_proto::DataType;
use webaccel_onnx::{Error, Precision, detect, parameters, parse};

#[test]
fn quantized_fixtures_have_the_precision_quantized_json_says() {
    let dir = tempfile::tempdir().unwrap();
    let script = fixtures().join("make_quantized.py");
    python(&[script.as_os_str(), dir.path().as_os_str()]);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("quantized.json")).unwrap()).unwrap();
    let models = summary["models"].as_array().unwrap();
    let mut seen = Vec::new();
    for entry in models {
        let file = entry["file"].as_str().unwrap();
        let expected: Precision = serde_json::from_value(entry["precision"].clone()).unwrap();
        let model = read_model(&dir.path().join(file));
        let report = detect(&model).unwrap();
        assert_eq!(report.precision, expected, "{file}: {}", report.reason);
        let reason = &report.reason;
        match file {
            "transformer_int4.onnx" => {
                assert_eq!(reason, "4 MatMulNBits nodes with bits=4");
                // The packed 4-bit weights are uint8 initializers.
                assert!(
                    report.weight_bytes_by_type.contains_key("uint8"),
                    "{report:?}"
                );
            }
            "transformer_int8_dynamic.onnx" => {
                // Four MatMulInteger; q, k and v share one quantized input, so two
                // DynamicQuantizeLinear.
                assert_eq!(reason, "6 DynamicQuantizeLinear/MatMulInteger nodes");
            }
            "transformer_int8_qdq.onnx" => {
                assert!(reason.starts_with("QDQ: "), "{reason}");
                assert!(reason.contains("QuantizeLinear"), "{reason}");
                assert!(reason.contains("int8"), "{reason}");
            }
            "transformer_fp16.onnx" => {
                assert!(reason.starts_with("float16 initializers: "), "{reason}");
            }
            "transformer_fp32.onnx" => {
                assert_eq!(reason, "float32 initializers: 6.8 kB of 6.8 kB");
            }
            other => panic!("quantized.json lists an unexpected file {other}"),
        }
        // Quantized, the block still computes nearly what the fp32 one does.
        let error = entry["max_abs_error"].as_f64().unwrap();
        if expected == Precision::Fp32 {
            assert_eq!(error, 0.0, "{file}");
        } else {
            assert!(error > 0.0 && error < 0.5, "{file}: max abs error {error}");
        }
        // Its reference data sits beside it.
        let reference: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(file.replace(".onnx", ".json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(reference["outputs"][0]["name"], "hidden", "{file}");
        assert_eq!(reference["outputs"][0]["datatype"], "FP32", "{file}");
        seen.push(file.to_owned());
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "transformer_fp16.onnx",
            "transformer_fp32.onnx",
            "transformer_int4.onnx",
            "transformer_int8_dynamic.onnx",
            "transformer_int8_qdq.onnx"
        ]
    );
}

#[test]
fn committed_fixtures_are_fp32() {
    for name in ["mlp", "cnn", "transformer", "transformer_batch"] {
        let model = read_model(&fixtures().join(format!("models/{name}.onnx")));
        let report = detect(&model).unwrap();
        assert_eq!(
            report.precision,
            Precision::Fp32,
            "{name}: {}",
            report.reason
        );
        assert!(
            report.reason.starts_with("float32 initializers"),
            "{}",
            report.reason
        );
    }
    // Only graph inputs, no weights: nothing says otherwise.
    let types = read_model(&fixtures().join("models/types.onnx"));
    let report = detect(&types).unwrap();
    assert_eq!(report.precision, Precision::Fp32);
    assert!(report.reason.contains("fp32 assumed"), "{}", report.reason);
}

#[test]
fn parameters_are_counted_from_initializers() {
    let model = read_model(&fixtures().join("models/transformer.onnx"));
    let p = parameters(&model).unwrap();
    // tok_emb 32x16, pos_emb 8x16, LayerNorm 2x16, four 16x16 projections (float32);
    // two shapes (4 + 3 int64) and one float32 scalar.
    let floats = (32 * 16 + 8 * 16 + 2 * 16 + 4 * 16 * 16 + 1) * 4;
    assert_eq!(p.bytes_by_type["float"], floats);
    assert_eq!(p.bytes_by_type["int64"], 7 * 8);
    assert_eq!(p.bytes, floats + 56);
    assert_eq!(p.tensors, 11);
}

#[test]
fn bytes_that_are_not_a_model_are_refused() {
    let bytes = std::fs::read(fixtures().join("models/invalid.onnx")).unwrap();
    assert!(matches!(parse(&bytes), Err(Error::Decode(_))));
    assert!(matches!(parse(&[]), Err(Error::NoGraph)));
}

#[test]
fn external_data_is_refused() {
    let mut w = tensor("w", DataType::Float, &[4, 4]);
    w.raw_data = None;
    w.data_location = Some(1); // EXTERNAL
    let graph = GraphProto {
        node: vec![node("MatMul", "mm", &["x", "w"], &["y"])],
        initializer: vec![w],
        input: vec![value_info("x", DataType::Float, &[1, 4])],
        output: vec![value_info("y", DataType::Float, &[1, 4])],
        ..Default::default()
    };
    let bytes = webaccel_onnx::encode(&model(graph));
    let err = parse(&bytes).unwrap_err();
    assert!(
        matches!(&err, Error::ExternalData(name) if name == "w"),
        "{err}"
    );
    assert!(err.to_string().contains("external file"), "{err}");
}

fn ms(mut n: webaccel_onnx::proto::NodeProto) -> webaccel_onnx::proto::NodeProto {
    n.domain = Some("com.microsoft".to_owned());
    n
}

fn graph_of(
    nodes: Vec<webaccel_onnx::proto::NodeProto>,
    inits: Vec<webaccel_onnx::proto::TensorProto>,
) -> Precision {
    let graph = GraphProto {
        node: nodes,
        initializer: inits,
        input: vec![value_info("x", DataType::Float, &[1, 64])],
        output: vec![value_info("y", DataType::Float, &[1, 64])],
        ..Default::default()
    };
    detect(&model(graph)).unwrap().precision
}

#[test]
fn operators_decide_before_weight_types() {
    let packed = || tensor("b", DataType::Uint8, &[64, 2, 16]);
    // MatMulNBits without `bits`: 4 by default.
    let nbits = ms(node("MatMulNBits", "q", &["x", "b", "s"], &["y"]));
    assert_eq!(
        graph_of(vec![nbits.clone()], vec![packed()]),
        Precision::Int4
    );
    // With bits=8 it is 8-bit quantization.
    let nbits8 = with_int_attr(nbits, "bits", 8);
    assert_eq!(graph_of(vec![nbits8], vec![packed()]), Precision::Int8);
    // QDQ whose weights are int4.
    let dq = node("DequantizeLinear", "dq", &["w4", "s"], &["w"]);
    let mm = node("MatMul", "mm", &["x", "w"], &["y"]);
    assert_eq!(
        graph_of(
            vec![dq, mm.clone()],
            vec![tensor("w4", DataType::Int4, &[64, 64])]
        ),
        Precision::Int4
    );
    // QDQ with an int8 zero point, weights float.
    let q = node("QuantizeLinear", "q", &["x", "s", "zp"], &["xq"]);
    let dq = node("DequantizeLinear", "dq", &["xq", "s", "zp"], &["xd"]);
    let mm8 = node("MatMul", "mm", &["xd", "w"], &["y"]);
    assert_eq!(
        graph_of(
            vec![q, dq, mm8],
            vec![
                tensor("zp", DataType::Int8, &[]),
                tensor("w", DataType::Float, &[64, 64])
            ]
        ),
        Precision::Int8
    );
    // A QLinear operator.
    let qconv = node("QLinearConv", "c", &["x"], &["y"]);
    assert_eq!(graph_of(vec![qconv], vec![]), Precision::Int8);
    // Not quantization though its name starts with Q.
    let gelu = ms(node("QuickGelu", "g", &["x"], &["y"]));
    assert_eq!(graph_of(vec![gelu], vec![]), Precision::Fp32);
    // Float weights: the type with most bytes.
    let mixed = vec![
        tensor("w", DataType::Float16, &[64, 64]),
        tensor("b", DataType::Float, &[64]),
    ];
    assert_eq!(graph_of(vec![mm], mixed), Precision::Fp16);
}

#[test]
fn precision_names() {
    assert_eq!(Precision::Int4.to_string(), "int4");
    assert_eq!(serde_json::to_string(&Precision::Fp16).unwrap(), "\"fp16\"");
}
