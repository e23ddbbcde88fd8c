//! `POST /v1/drain`, the operator's way to empty a browser before deleting it: the agent
//! stops taking work, says so in readiness and stats, and refuses new requests as retryable.

use crate::common::{Agent, model_uri};
use serde_json::json;

#[tokio::test]
async fn a_drained_agent_turns_unready_and_refuses_new_work_as_retryable() {
    let _machine = webaccel_testkit::beside().await;
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
    assert_eq!((stats.draining, stats.outstanding), (true, 0));

    let (code, body) = agent.infer_reference("mlp", "mlp").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["category"], "shutting_down", "{body}");
    assert_eq!(body["retryable"], true, "{body}");
    // Liveness is untouched: draining is not a reason to restart the pod.
    assert_eq!(agent.get("/healthz").await.0, 200);
}

/// A model loaded for the first time at run time (what the operator does for a
/// ModelDeployment) must not take the models already served out of rotation: the agent stays
/// ready while it loads. The slow load is `auto` on the cnn, which times every backend.
#[tokio::test]
async fn a_first_time_runtime_load_keeps_the_agent_ready() {
    let _machine = webaccel_testkit::beside().await;
    let agent = Agent::start(
        &[format!("mlp={},backend=wasm", model_uri("mlp.onnx"))],
        &[],
    )
    .await;
    let spec = json!({"name": "cnn", "uri": model_uri("cnn.onnx"), "backend": "auto"});
    let (load, seen) = tokio::join!(agent.post("/v1/repository/models", &spec), async {
        let mut seen_loading = 0;
        let mut unready = Vec::new();
        for _ in 0..400 {
            let (code, ready) = agent.get("/readyz").await;
            if code != 200 {
                unready.push(ready.clone());
            }
            match ready["models"]["cnn"].as_str() {
                Some("loading" | "pending") => seen_loading += 1,
                Some("loaded") => break,
                _ => {}
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        (seen_loading, unready)
    });
    assert_eq!(load.0, 201, "{}", load.1);
    let (seen_loading, unready) = seen;
    assert!(
        seen_loading > 0,
        "never saw cnn loading; the check proved nothing"
    );
    assert!(
        unready.is_empty(),
        "unready {} times during a first-time load, first: {}",
        unready.len(),
        unready[0]
    );
    // The model already served kept serving.
    let (code, body) = agent.infer_reference("mlp", "mlp").await;
    assert_eq!(code, 200, "{body}");
}
