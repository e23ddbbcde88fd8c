//! Ensembles in a real Chromium: two generated models chained in the page (on wasm, on
//! webgpu with the intermediate tensor left in a GPU buffer, and across the two) answer
//! what native onnxruntime gives running them one after the other; the ensemble is served
//! under its own name with metadata for its own inputs and outputs; steps that do not fit
//! are refused with the reason. The agent runs two page workers, so each worker holds the
//! ensemble.

use std::path::Path;
use std::process::Command;

use crate::common::{Agent, assert_tensors_close};
use serde_json::{Value, json};

fn make_ensemble(dir: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make_ensemble.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(dir)
        .output()
        .expect("python3 runs (numpy, onnx, onnxruntime: requirements-test.txt)");
    assert!(
        out.status.success(),
        "make_ensemble.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(dir.join("ensemble.json")).unwrap()).unwrap()
}

fn pipeline(first: &str, second: &str, outputs: &[&str]) -> Value {
    json!({
        "steps": [
            {"model": first, "input_map": {"x": "INPUT"}, "output_map": {"hidden": "hidden"}},
            {"model": second, "input_map": {"hidden": "hidden"}, "output_map": {"y": "OUTPUT"}},
        ],
        "outputs": outputs,
    })
}

/// The reference tensors renamed as the ensemble calls them.
fn renamed(tensors: &Value, name: &str) -> Value {
    let mut t = tensors[0].clone();
    t["name"] = name.into();
    t
}

#[tokio::test]
async fn chained_models_answer_like_onnxruntime_on_wasm_webgpu_and_across() {
    let _machine = webaccel_testkit::beside().await;
    let dir = tempfile::tempdir().unwrap();
    let reference = make_ensemble(dir.path());
    let agent = Agent::start(&[], &["--page-workers=2", "--wasm-threads=1"]).await;
    for (name, file, backend) in [
        ("first", "first.onnx", "wasm"),
        ("second", "second.onnx", "wasm"),
        ("first_gpu", "first.onnx", "webgpu"),
        ("second_gpu", "second.onnx", "webgpu"),
    ] {
        let uri = format!("file://{}", dir.path().join(file).display());
        let (status, body) = agent
            .post(
                "/v1/repository/models",
                &json!({"name": name, "uri": uri, "backend": backend}),
            )
            .await;
        assert_eq!(status, 201, "{name}: {body}");
    }
    let input = renamed(&reference["inputs"], "INPUT");
    let want_y = renamed(&reference["outputs"], "OUTPUT");
    let want_hidden = renamed(&reference["hidden"], "hidden");

    for (name, first, second, backend, tol) in [
        ("pipe", "first", "second", "wasm", 1e-5),
        ("pipe_gpu", "first_gpu", "second_gpu", "webgpu", 1e-4),
        ("pipe_mixed", "first", "second_gpu", "wasm+webgpu", 1e-4),
    ] {
        let (status, body) = agent
            .post(
                "/v1/repository/models",
                &json!({"name": name, "ensemble": pipeline(first, second, &["OUTPUT"])}),
            )
            .await;
        assert_eq!(status, 201, "{name}: {body}");
        assert_eq!(body["status"]["backend"], backend, "{body}");

        // KServe metadata: the ensemble's own inputs and outputs.
        let (status, meta) = agent.get(&format!("/v2/models/{name}")).await;
        assert_eq!(status, 200, "{meta}");
        assert_eq!(meta["inputs"][0]["name"], "INPUT", "{meta}");
        assert_eq!(meta["inputs"][0]["shape"], json!([1, 16]), "{meta}");
        assert_eq!(
            meta["outputs"],
            json!([{"name": "OUTPUT", "datatype": "FP32", "shape": [1, 8]}]),
            "{meta}"
        );

        let (status, out) = agent
            .post(
                &format!("/v2/models/{name}/infer"),
                &json!({"inputs": [input]}),
            )
            .await;
        assert_eq!(status, 200, "{name}: {out}");
        assert_tensors_close(
            name,
            out["outputs"].as_array().unwrap(),
            std::slice::from_ref(&want_y),
            tol,
            tol,
        );
    }

    // The intermediate tensor can be an output too.
    let (status, body) = agent
        .post(
            "/v1/repository/models",
            &json!({"name": "pipe_both", "ensemble": pipeline("first_gpu", "second_gpu", &["OUTPUT", "hidden"])}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, out) = agent
        .post("/v2/models/pipe_both/infer", &json!({"inputs": [input]}))
        .await;
    assert_eq!(status, 200, "{out}");
    assert_tensors_close(
        "pipe_both",
        out["outputs"].as_array().unwrap(),
        &[want_y, want_hidden],
        1e-4,
        1e-4,
    );

    // Steps that do not fit are refused with the reason.
    for (i, (ensemble, why)) in [
        (pipeline("first", "nope", &["OUTPUT"]), "step model 'nope' is not on this agent"),
        (
            json!({"steps": [{"model": "second", "input_map": {}, "output_map": {"y": "Y"}}], "outputs": ["Y"]}),
            "model input 'hidden' is not in input_map",
        ),
        (pipeline("first", "second", &["Z"]), "ensemble output 'Z' is written by no step"),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = agent
            .post("/v1/repository/models", &json!({"name": format!("bad{i}"), "ensemble": ensemble}))
            .await;
        assert_eq!(status, 422, "{body}");
        assert!(body["error"].as_str().unwrap().contains(why), "{body}");
    }
}
