//! Numerical correctness in a real Chromium: every fixture model on `wasm` and on
//! `webgpu` (SwiftShader here) against onnxruntime's outputs, over HTTP and the bridge;
//! `auto` measures the backends; WebNN is detected and refused with its reason.

use crate::common::{Agent, assert_outputs_match, model_uri, reference_tensors, tensors_json};
use serde_json::json;
use webaccel_api::wire::Message;

// wasm runs the same kernels as onnxruntime's CPU provider up to operation order.
const WASM_ABS: f64 = 1e-5;
const WASM_REL: f64 = 1e-4;
// WebGPU shaders (here SwiftShader) may fuse and reorder float operations.
const GPU_ABS: f64 = 1e-4;
const GPU_REL: f64 = 1e-3;

#[tokio::test]
async fn every_model_matches_onnxruntime_on_wasm_and_webgpu() {
    let _machine = webaccel_testkit::beside().await;
    let mut models = Vec::new();
    for m in ["mlp", "cnn", "transformer", "types"] {
        models.push(format!(
            "{m}_wasm={},backend=wasm",
            model_uri(&format!("{m}.onnx"))
        ));
    }
    for m in ["mlp", "cnn", "transformer"] {
        models.push(format!(
            "{m}_webgpu={},backend=webgpu",
            model_uri(&format!("{m}.onnx"))
        ));
    }
    let agent = Agent::start(&models, &[]).await;

    for m in ["mlp", "cnn", "transformer", "types"] {
        let (status, body) = agent.infer_reference(&format!("{m}_wasm"), m).await;
        assert_eq!(status, 200, "{m} wasm: {body}");
        assert_eq!(body["parameters"]["backend"], "wasm");
        assert_eq!(body["model_name"], format!("{m}_wasm"));
        assert_outputs_match(m, body["outputs"].as_array().unwrap(), WASM_ABS, WASM_REL);
    }
    for m in ["mlp", "cnn", "transformer"] {
        let (status, body) = agent.infer_reference(&format!("{m}_webgpu"), m).await;
        assert_eq!(status, 200, "{m} webgpu: {body}");
        assert_eq!(body["parameters"]["backend"], "webgpu");
        assert_outputs_match(m, body["outputs"].as_array().unwrap(), GPU_ABS, GPU_REL);
    }

    // The same through the binary bridge.
    let mut bridge = agent.bridge().await;
    for (id, m) in [(1u64, "transformer"), (2, "types")] {
        bridge
            .send_request(id, &format!("{m}_wasm"), reference_tensors(m))
            .await;
        let (got_id, msg) = bridge.recv().await;
        assert_eq!(got_id, id);
        let Message::Response(resp) = msg else {
            panic!("{m}: {msg:?}")
        };
        assert_eq!(resp.backend, "wasm");
        assert!(resp.compute_ms > 0.0);
        assert_outputs_match(m, &tensors_json(&resp.outputs), WASM_ABS, WASM_REL);
    }

    // Model metadata follows the protocol, with the symbolic batch dimension as -1.
    let (status, meta) = agent.get("/v2/models/mlp_wasm").await;
    assert_eq!(status, 200);
    assert_eq!(
        meta["inputs"],
        json!([{"name": "x", "datatype": "FP32", "shape": [-1, 16]}])
    );
    assert_eq!(meta["versions"], json!(["1"]));
    assert_eq!(agent.get("/v2/models/mlp_wasm/ready").await.0, 200);
    assert_eq!(
        agent.get("/v2/models/mlp_wasm/versions/1/ready").await.0,
        200
    );
}

#[tokio::test]
async fn auto_measures_backends_and_webnn_is_refused_with_its_reason() {
    let _machine = webaccel_testkit::beside().await;
    let agent = Agent::start(&[format!("tr={}", model_uri("transformer.onnx"))], &[]).await;

    // Capabilities are what the browser really has: SwiftShader is software.
    let (_, caps) = agent.get("/v1/capabilities").await;
    assert!(
        caps["browser"]["version"]
            .as_str()
            .unwrap()
            .contains("Chrome/"),
        "{caps}"
    );
    let gpu = &caps["webgpu"];
    if gpu["available"] == true {
        let adapter = &gpu["adapter"];
        if adapter["architecture"] == "swiftshader" {
            assert_eq!(adapter["kind"], "software", "{adapter}");
            assert_eq!(adapter["is_fallback_adapter"], true);
        }
    } else {
        assert!(gpu["reason"].as_str().unwrap().len() > 10, "{gpu}");
    }
    assert_eq!(caps["wasm"]["simd"], true);
    assert_eq!(
        caps["wasm"]["cross_origin_isolated"], true,
        "page must be cross-origin isolated"
    );
    assert_eq!(caps["wasm"]["threads"], true);
    let webnn_cpu = &caps["webnn"]["cpu"];

    // auto: every candidate is listed with a timing or the reason it could not run, and
    // the chosen backend is the fastest measured one.
    let (_, model) = agent.get("/v1/repository/models/tr").await;
    let status = &model["status"];
    assert_eq!(status["state"], "loaded", "{model}");
    let candidates = status["candidates"].as_array().unwrap();
    let labels: Vec<_> = candidates
        .iter()
        .map(|c| c["backend"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        ["webgpu", "webnn:gpu", "webnn:npu", "webnn:cpu", "wasm"]
    );
    let fastest = candidates
        .iter()
        .filter(|c| c["ok"] == true)
        .min_by(|a, b| {
            a["steady_ms"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["steady_ms"].as_f64().unwrap())
        })
        .unwrap();
    assert_eq!(status["backend"], fastest["backend"], "{candidates:?}");
    for c in candidates.iter().filter(|c| c["ok"] == false) {
        assert!(c["error"].as_str().unwrap().contains("unavailable"), "{c}");
    }
    let (code, body) = agent.infer_reference("tr", "transformer").await;
    assert_eq!(code, 200);
    assert_eq!(body["parameters"]["backend"], status["backend"]);

    // Asking for WebNN where the browser has none is refused with the detected reason.
    let (code, body) = agent
        .post(
            "/v1/repository/models",
            &json!({"name": "nn", "uri": model_uri("mlp.onnx"), "backend": "webnn"}),
        )
        .await;
    if webnn_cpu["available"] == true {
        assert_eq!(code, 201, "{body}");
    } else {
        assert_eq!(code, 422, "{body}");
        assert_eq!(body["category"], "model_load_failed");
        let reason = webnn_cpu["reason"].as_str().unwrap();
        assert!(body["error"].as_str().unwrap().contains(reason), "{body}");
        let (_, state) = agent.get("/v1/repository/models/nn").await;
        assert_eq!(state["status"]["state"], "failed");
        assert_eq!(agent.infer_reference("nn", "mlp").await.0, 503);
    }
}

/// The stock `tritonclient.http` from PyPI at its default settings (binary tensors both
/// ways), JSON, and both mixed, against native onnxruntime on the same model files; a
/// BYTES tensor is refused with a 400 naming it.
#[tokio::test]
async fn tritonclient_with_its_defaults_gets_onnxruntime_answers() {
    let _machine = webaccel_testkit::beside().await;
    let models: Vec<String> = ["mlp", "cnn", "transformer", "types"]
        .iter()
        .map(|m| format!("{m}={},backend=wasm", model_uri(&format!("{m}.onnx"))))
        .collect();
    let agent = Agent::start(&models, &[]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/triton_http.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&agent.base)
        .arg(crate::common::fixture(""))
        .args(["--token", crate::common::TOKEN])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("ok types mixed"), "{stdout}");
    assert!(stdout.contains("ok BYTES refused"), "{stdout}");
}
