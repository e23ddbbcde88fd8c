//! Shared by the integration tests: repository paths, the Python helpers (which must
//! be there: a missing python3 or onnxruntime fails the tests, it does not skip them)
//! and builders for small synthetic models.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

use webaccel_onnx::proto::tensor_proto::DataType;
use webaccel_onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto, tensor_shape_proto, type_proto,
};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the workspace")
        .to_path_buf()
}

pub fn fixtures() -> PathBuf {
    repo().join("node-agent/tests/fixtures")
}

pub fn run_stages_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/run_stages.py")
}

static PYTHON: Once = Once::new();

/// Fails (never skips) when python3 or the packages the fixtures need are missing.
fn require_python() {
    PYTHON.call_once(|| {
        let out = Command::new("python3")
            .args(["-c", "import numpy, onnx, onnxruntime"])
            .output()
            .expect(
                "these tests need python3 with numpy, onnx and onnxruntime \
                 (pip install -r requirements-test.txt); running python3 failed",
            );
        assert!(
            out.status.success(),
            "these tests need python3 with numpy, onnx and onnxruntime \
             (pip install -r requirements-test.txt): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Runs `python3 ARGS...`; panics with its stderr when it fails. Returns stdout.
pub fn python<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    require_python();
    let out = Command::new("python3")
        .args(args)
        .output()
        .expect("running python3");
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    assert!(
        out.status.success(),
        "python3 {} failed ({}):\n{}\n{}",
        shown.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// `IN` after strict onnx shape inference, written to `out`.
pub fn infer_shapes(input: &Path, out: &Path) {
    python(&[
        run_stages_py().as_os_str(),
        "infer".as_ref(),
        input.as_os_str(),
        out.as_os_str(),
    ]);
}

pub fn read_model(path: &Path) -> ModelProto {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    webaccel_onnx::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---- synthetic models ----

pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: Some(op.to_owned()),
        name: Some(name.to_owned()),
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: outputs.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

pub fn with_int_attr(mut node: NodeProto, name: &str, value: i64) -> NodeProto {
    node.attribute.push(AttributeProto {
        name: Some(name.to_owned()),
        r#type: Some(attribute_proto::AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    });
    node
}

pub fn value_info(name: &str, elem: DataType, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

/// An initializer of zeros (`raw_data`), sized from dims and type.
pub fn tensor(name: &str, elem: DataType, dims: &[i64]) -> TensorProto {
    let mut t = TensorProto {
        name: Some(name.to_owned()),
        data_type: Some(elem as i32),
        dims: dims.to_vec(),
        ..Default::default()
    };
    let bytes = webaccel_onnx::tensor_bytes(&t);
    t.raw_data = Some(vec![0; usize::try_from(bytes).expect("small")]);
    t
}

pub fn model(graph: GraphProto) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        producer_name: Some("webaccel-onnx-tests".to_owned()),
        opset_import: vec![
            OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            },
            OperatorSetIdProto {
                domain: Some("com.microsoft".to_owned()),
                version: Some(1),
            },
        ],
        graph: Some(graph),
        ..Default::default()
    }
}
