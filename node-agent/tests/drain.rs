//! `POST /v1/drain`, the operator's way to empty a browser before deleting it: the agent
//! stops taking work, says so in readiness and stats, and refuses new requests as retryable.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::{Agent, model_uri};
use serde_json::json;

#[tokio::test]
async fn a_drained_agent_turns_unready_and_refuses_new_work_as_retryable() {
    let agent = Agent::start(
        &[format!("mlp={},backend=wasm", model_uri("mlp.onnx"))],
        &[],
    )
    .await;
    let (code, body) = agent.infer_reference("mlp", "mlp").await;
    assert_eq!(code, 200, "{body}");

    let (code, body) = agent.post("/v1/drain", &json!({})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, json!({"draining": true, "outstanding": 0}));

    let (code, ready) = agent.get("/readyz").await;
    assert_eq!(code, 503, "{ready}");
    assert_eq!(ready["draining"], true);
    let stats = agent.stats().await;
    assert_eq!(
        (stats["draining"].as_bool(), stats["outstanding"].as_u64()),
        (Some(true), Some(0))
    );

    let (code, body) = agent.infer_reference("mlp", "mlp").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["category"], "shutting_down", "{body}");
    assert_eq!(body["retryable"], true, "{body}");
    // Liveness is untouched: draining is not a reason to restart the pod.
    assert_eq!(agent.get("/healthz").await.0, 200);
}
