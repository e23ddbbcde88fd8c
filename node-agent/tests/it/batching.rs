//! Dynamic batching in a real Chromium: concurrent requests with different inputs are
//! joined into runs of more than one request, and every answer equals onnxruntime's
//! output for that request's own input; a request with more rows than a batch holds
//! runs alone; a request past its deadline is dropped before it runs; a model without a
//! dynamic batch dimension loads with batching refused and still answers.

use std::time::Duration;

use crate::common::{Agent, assert_tensors_close, model_uri, onnxruntime_outputs};
use futures::future::join_all;
use serde_json::{Value, json};
use webaccel_api::wire::{self, InferRequest, Message};
use webaccel_api::{DataType, Tensor};

// wasm runs the same kernels as onnxruntime's CPU provider up to operation order.
const ABS: f64 = 1e-5;
const REL: f64 = 1e-4;

/// A small deterministic generator (no test depends on a seed's luck).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// A float in [-1, 1) that f32 holds exactly.
    fn unit(&mut self) -> f64 {
        (self.next() % 4096) as f64 / 2048.0 - 1.0
    }
}

fn mlp_request(rng: &mut Lcg, rows: usize) -> Vec<Value> {
    let data: Vec<f64> = (0..rows * 16).map(|_| rng.unit()).collect();
    vec![json!({"name": "x", "datatype": "FP32", "shape": [rows, 16], "data": data})]
}

fn transformer_request(rng: &mut Lcg, rows: usize) -> Vec<Value> {
    let data: Vec<u64> = (0..rows * 8).map(|_| rng.next() % 32).collect();
    vec![json!({"name": "tokens", "datatype": "INT64", "shape": [rows, 8], "data": data})]
}

/// Sends all requests at once over HTTP; returns each answer's body.
async fn infer_all(agent: &Agent, model: &str, requests: &[Vec<Value>]) -> Vec<Value> {
    let calls = requests.iter().map(|inputs| async move {
        let (status, body) = agent
            .post(
                &format!("/v2/models/{model}/infer"),
                &json!({"inputs": inputs}),
            )
            .await;
        assert_eq!(status, 200, "{model}: {body}");
        body
    });
    join_all(calls).await
}

/// Checks every answer against onnxruntime's for its own input; returns the batch
/// sizes (rows of the run) the answers report.
fn check(model: &str, file: &str, requests: &[Vec<Value>], answers: &[Value]) -> Vec<u64> {
    let want = onnxruntime_outputs(file, requests);
    let mut sizes = Vec::new();
    for (i, (body, want)) in answers.iter().zip(&want).enumerate() {
        assert_tensors_close(
            &format!("{model} request {i}"),
            body["outputs"].as_array().unwrap(),
            want,
            ABS,
            REL,
        );
        sizes.push(body["parameters"]["batch_size"].as_u64().unwrap());
    }
    sizes
}

#[tokio::test]
async fn concurrent_requests_are_batched_and_each_gets_its_own_answer() {
    let _machine = webaccel_testkit::beside().await;
    let batched = "backend=wasm,max_batch_size=8,max_queue_delay_us=20000";
    let models = [
        format!("mlp={},{batched}", model_uri("mlp.onnx")),
        format!("tb={},{batched}", model_uri("transformer_batch.onnx")),
        // The fixed-shape transformer ([1, 8]) cannot be batched.
        format!("tf={},{batched}", model_uri("transformer.onnx")),
    ];
    let agent = Agent::start(&models, &[]).await;

    // The load reports what batching does for each model.
    let (_, mlp) = agent.get("/v1/repository/models/mlp").await;
    let status = &mlp["status"]["batching"];
    assert_eq!(status["enabled"], true, "{mlp}");
    assert_eq!(status["max_batch_size"], 8);
    assert_eq!(status["max_queue_delay_us"], 20000);
    assert_eq!(mlp["spec"]["max_batch_size"], 8);
    let (_, tf) = agent.get("/v1/repository/models/tf").await;
    assert_eq!(tf["status"]["state"], "loaded", "{tf}");
    assert_eq!(tf["status"]["batching"]["enabled"], false, "{tf}");
    let reason = tf["status"]["batching"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("input 'tokens' has shape [1, 8]"),
        "{reason}"
    );

    let mut rng = Lcg(42);
    // mlp: 16 requests at once, mostly one row, some two or three, and one of ten rows
    // (more than a batch holds: it runs alone).
    let rows = [1, 1, 2, 1, 3, 1, 1, 1, 2, 1, 1, 1, 1, 1, 10, 1];
    let requests: Vec<Vec<Value>> = rows.iter().map(|&r| mlp_request(&mut rng, r)).collect();
    let answers = infer_all(&agent, "mlp", &requests).await;
    let sizes = check("mlp", "mlp.onnx", &requests, &answers);
    println!("mlp batch sizes: {sizes:?}");
    assert!(sizes.iter().any(|&s| s > 1), "no mlp batch: {sizes:?}");
    assert!(sizes.iter().all(|&s| s <= 10), "{sizes:?}");
    assert_eq!(sizes[14], 10, "the ten-row request runs alone");
    for (s, &r) in sizes.iter().zip(&rows) {
        assert!(*s >= r as u64 && (*s <= 8 || r == 10), "{sizes:?}");
    }

    // The transformer with a dynamic batch: 16 requests of one row.
    let requests: Vec<Vec<Value>> = (0..16).map(|_| transformer_request(&mut rng, 1)).collect();
    let answers = infer_all(&agent, "tb", &requests).await;
    let sizes = check("tb", "transformer_batch.onnx", &requests, &answers);
    println!("transformer_batch batch sizes: {sizes:?}");
    assert!(
        sizes.iter().any(|&s| s > 1),
        "no transformer batch: {sizes:?}"
    );
    assert!(sizes.iter().all(|&s| s <= 8), "{sizes:?}");

    // Batching refused: concurrent requests still answer, one at a time.
    let requests: Vec<Vec<Value>> = (0..4).map(|_| transformer_request(&mut rng, 1)).collect();
    let answers = infer_all(&agent, "tf", &requests).await;
    let sizes = check("tf", "transformer.onnx", &requests, &answers);
    assert_eq!(sizes, [1, 1, 1, 1]);

    // The same over the bridge: a request whose deadline passes while it waits for its
    // batch to fill is dropped with deadline_exceeded; the others are answered.
    let mut bridge = agent.bridge().await;
    let tensor = |rng: &mut Lcg| {
        let vals: Vec<u8> = (0..16)
            .flat_map(|_| (rng.unit() as f32).to_le_bytes())
            .collect();
        Tensor::from_bytes("x", DataType::Fp32, vec![1, 16], vals.into()).unwrap()
    };
    let hurried = wire::encode(
        100,
        &Message::Request(InferRequest {
            model: "mlp".into(),
            inputs: vec![tensor(&mut rng)],
            timeout_ms: Some(1),
            ..Default::default()
        }),
    );
    bridge
        .send_raw(tokio_tungstenite::tungstenite::Message::Binary(
            hurried.into(),
        ))
        .await;
    let (id, reply) = bridge.recv().await;
    assert_eq!(id, 100);
    let Message::Error(e) = reply else {
        panic!("a request past its deadline was answered: {reply:?}")
    };
    assert_eq!(e.category, webaccel_api::ErrorCategory::DeadlineExceeded);
    let inputs: Vec<Tensor> = (0..6).map(|_| tensor(&mut rng)).collect();
    for (i, t) in inputs.iter().enumerate() {
        bridge.send_request(i as u64, "mlp", vec![t.clone()]).await;
    }
    let want = onnxruntime_outputs(
        "mlp.onnx",
        &inputs
            .iter()
            .map(|t| crate::common::tensors_json(std::slice::from_ref(t)))
            .collect::<Vec<_>>(),
    );
    for _ in 0..inputs.len() {
        let (id, reply) = bridge.recv().await;
        let Message::Response(resp) = reply else {
            panic!("bridge request {id}: {reply:?}")
        };
        assert_tensors_close(
            &format!("bridge request {id}"),
            &crate::common::tensors_json(&resp.outputs),
            &want[usize::try_from(id).unwrap()],
            ABS,
            REL,
        );
    }

    // /v1/stats counts runs of more than one request; every request counts once.
    let stats = agent.stats().await;
    let m = &stats.models["mlp"];
    println!("mlp stats: {m:?}");
    assert!(m.batches >= 1, "{m:?}");
    assert!(m.max_batch_requests >= 2, "{m:?}");
    assert!(m.max_batch_requests <= 8, "{m:?}");
    assert_eq!(m.requests, 16 + 1 + 6, "{m:?}");
    assert_eq!(stats.models["tf"].batches, 0);
    let metrics = agent.metrics().await;
    assert!(
        metrics.contains(r#"webaccel_agent_batches_total{model="tb"}"#),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(agent.stats().await.queued, 0);
}
