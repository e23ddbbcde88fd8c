//! Quantized models in a real Chromium: the fixture transformer quantized by
//! onnxruntime's own tools (`fixtures/make_quantized.py`: int8 dynamic, int8 QDQ, 4-bit
//! MatMulNBits, fp16) loads on wasm, its precision is detected from the graph and
//! reported, its outputs match native onnxruntime on the same file, and a spec whose
//! precision disagrees with the file is refused with the reason. On WebGPU a model with
//! operators onnxruntime-web's WebGPU provider lacks is refused naming them.

use std::path::Path;
use std::process::Command;

use crate::common::{Agent, assert_tensors_close};
use serde_json::{Value, json};

/// Runs make_quantized.py into `dir`; returns its quantized.json.
fn make_quantized(dir: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make_quantized.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(dir)
        .output()
        .expect("python3 runs (numpy, onnx, onnxruntime, onnx_ir: requirements-test.txt)");
    assert!(
        out.status.success(),
        "make_quantized.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(dir.join("quantized.json")).unwrap()).unwrap()
}

fn reference(dir: &Path, stem: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{stem}.json"))).unwrap())
        .unwrap()
}

/// How close the browser must be to native onnxruntime on the same file: the same
/// kernels up to operation order, with fp16 rounding in between for the fp16 model.
fn tolerance(precision: &str) -> (f64, f64) {
    match precision {
        "fp16" => (2e-3, 2e-3),
        _ => (1e-4, 1e-4),
    }
}

#[tokio::test]
async fn quantized_models_run_on_wasm_with_their_precision_detected() {
    let _machine = webaccel_testkit::beside().await;
    let dir = tempfile::tempdir().unwrap();
    let summary = make_quantized(dir.path());
    let variants: Vec<(String, String)> = summary["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let file = m["file"].as_str().unwrap();
            (
                file.trim_end_matches(".onnx").to_owned(),
                m["precision"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(variants.len(), 5, "{summary}");
    let specs: Vec<String> = variants
        .iter()
        .map(|(stem, _)| {
            format!(
                "{stem}=file://{},backend=wasm",
                dir.path().join(format!("{stem}.onnx")).display()
            )
        })
        .collect();
    let agent = Agent::start(&specs, &[]).await;

    for (stem, precision) in &variants {
        let (status, model) = agent.get(&format!("/v1/repository/models/{stem}")).await;
        assert_eq!(status, 200, "{model}");
        let loaded = &model["status"];
        assert_eq!(loaded["state"], "loaded", "{model}");
        assert_eq!(loaded["precision"], precision.as_str(), "{stem}: {model}");
        assert!(
            loaded["precision_reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{model}"
        );

        let want = reference(dir.path(), stem);
        let (status, body) = agent
            .post(
                &format!("/v2/models/{stem}/infer"),
                &json!({"inputs": want["inputs"]}),
            )
            .await;
        assert_eq!(status, 200, "{stem}: {body}");
        let (abs, rel) = tolerance(precision);
        assert_tensors_close(
            stem,
            body["outputs"].as_array().unwrap(),
            want["outputs"].as_array().unwrap(),
            abs,
            rel,
        );
    }

    // A spec that names the wrong precision is refused, with what the file is.
    let (status, body) = agent
        .post(
            "/v1/repository/models",
            &json!({
                "name": "claims_int8",
                "uri": format!("file://{}", dir.path().join("transformer_fp32.onnx").display()),
                "backend": "wasm",
                "precision": "int8",
            }),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("asks for precision int8 but the file is fp32"),
        "{error}"
    );
    // The right claim loads.
    let (status, body) = agent
        .post(
            "/v1/repository/models",
            &json!({
                "name": "claims_int4",
                "uri": format!("file://{}", dir.path().join("transformer_int4.onnx").display()),
                "backend": "wasm",
                "precision": "int4",
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"]["precision"], "int4", "{body}");
}

#[tokio::test]
async fn on_webgpu_whole_block_int4_runs_and_what_it_cannot_run_right_is_refused() {
    let _machine = webaccel_testkit::beside().await;
    let dir = tempfile::tempdir().unwrap();
    make_quantized(dir.path());
    let agent = Agent::start(&[], &[]).await;
    let load = |stem: &'static str| {
        let agent = &agent;
        let uri = format!(
            "file://{}",
            dir.path().join(format!("{stem}.onnx")).display()
        );
        async move {
            agent
                .post(
                    "/v1/repository/models",
                    &json!({"name": stem, "uri": uri, "backend": "webgpu"}),
                )
                .await
        }
    };
    // onnxruntime-web's WebGPU provider has MatMulNBits: a 4-bit model whose K is a
    // whole number of blocks runs whole on the GPU (SwiftShader here), as do fp32 and fp16.
    for (stem, abs) in [("transformer_fp32", 1e-3), ("matmul_k64_int4", 1e-4)] {
        let (status, body) = load(stem).await;
        assert_eq!(status, 201, "{stem}: {body}");
        assert_eq!(body["status"]["backend"], "webgpu", "{body}");
        let want = reference(dir.path(), stem);
        let (status, out) = agent
            .post(
                &format!("/v2/models/{stem}/infer"),
                &json!({"inputs": want["inputs"]}),
            )
            .await;
        assert_eq!(status, 200, "{stem}: {out}");
        assert_tensors_close(
            &format!("{stem} on webgpu"),
            out["outputs"].as_array().unwrap(),
            want["outputs"].as_array().unwrap(),
            abs,
            abs,
        );
    }
    // With K smaller than a block its answers are wrong (measured: off by up to 4.4), so
    // the agent refuses webgpu for such a model, and `auto` skips it with the reason.
    for stem in ["matmul_k16_int4", "transformer_int4"] {
        let (status, body) = load(stem).await;
        assert_eq!(status, 422, "{stem}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("cannot run on webgpu") && error.contains("K 16, block size 32"),
            "{error}"
        );
    }
    let uri = format!(
        "file://{}",
        dir.path().join("matmul_k16_int4.onnx").display()
    );
    let (status, body) = agent
        .post(
            "/v1/repository/models",
            &json!({"name": "k16_auto", "uri": uri, "backend": "auto"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"]["backend"], "wasm", "{body}");
    let webgpu = body["status"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["backend"] == "webgpu")
        .cloned()
        .unwrap();
    assert_eq!(webgpu["ok"], false, "{body}");
    assert!(
        webgpu["error"].as_str().unwrap().contains("MatMulNBits"),
        "{body}"
    );
    let want = reference(dir.path(), "matmul_k16_int4");
    let (status, out) = agent
        .post(
            "/v2/models/k16_auto/infer",
            &json!({"inputs": want["inputs"]}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert_tensors_close(
        "k16 on wasm",
        out["outputs"].as_array().unwrap(),
        want["outputs"].as_array().unwrap(),
        1e-4,
        1e-4,
    );

    // fp16 on an adapter without shader-f16 (SwiftShader) comes back as zeros from
    // onnxruntime-web: refused with the reason. (An adapter with the feature would run it.)
    let (_, caps) = agent.get("/v1/capabilities").await;
    let f16 = caps["webgpu"]["adapter"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "shader-f16");
    let (status, body) = load("transformer_fp16").await;
    if f16 {
        assert_eq!(status, 201, "{body}");
    } else {
        assert_eq!(status, 422, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("shader-f16"),
            "{body}"
        );
    }

    // int8 needs operators it lacks: refused at load, naming them, not run half on the CPU.
    for (stem, ops) in [
        (
            "transformer_int8_dynamic",
            &["DynamicQuantizeLinear", "MatMulInteger"][..],
        ),
        ("transformer_int8_qdq", &["QuantizeLinear"][..]),
    ] {
        let (status, body) = load(stem).await;
        assert_eq!(status, 422, "{stem}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("backend webgpu cannot run these operators"),
            "{error}"
        );
        for op in ops {
            assert!(error.contains(op), "{stem}: {op} not named: {error}");
        }
    }
}
