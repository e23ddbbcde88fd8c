//! A model loaded again with another spec (a re-applied deployment: another batching
//! delay, a new page session) keeps answering throughout: the old copy serves until the
//! new one is loaded, over the waiting and the background (`?wait=false`) load alike, and
//! the same background reload asked for twice is one reload.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Agent, assert_outputs_match, model_uri};

fn mlp_spec(delay_us: u64, warmup: bool) -> Value {
    json!({
        "name": "mlp",
        "uri": model_uri("mlp.onnx"),
        "backend": "wasm",
        "max_batch_size": 8,
        "max_queue_delay_us": delay_us,
        "warmup": warmup,
    })
}

#[tokio::test]
async fn a_model_reloaded_with_other_settings_answers_throughout() {
    let _machine = webaccel_testkit::beside().await;
    let agent = Arc::new(
        Agent::start(
            &[format!(
                "mlp={},backend=wasm,max_batch_size=8,max_queue_delay_us=20000",
                model_uri("mlp.onnx")
            )],
            &[],
        )
        .await,
    );

    // Four clients in a loop, each answer checked against onnxruntime's.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (agent, stop) = (agent.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut answered, mut failed) = (0u32, Vec::new());
                while !stop.load(Ordering::Acquire) {
                    let (status, body) = agent.infer_reference("mlp", "mlp").await;
                    if status == 200 {
                        assert_outputs_match(
                            "mlp",
                            body["outputs"].as_array().unwrap(),
                            1e-5,
                            1e-4,
                        );
                        answered += 1;
                    } else {
                        failed.push(format!("{status} {body}"));
                    }
                }
                (answered, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Another batching delay, the load waited for: the agent's copy serves meanwhile.
    let (status, body) = agent
        .post("/v1/repository/models", &mlp_spec(5_000, true))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["spec"]["max_queue_delay_us"], 5_000, "{body}");
    assert_eq!(body["status"]["state"], "loaded", "{body}");
    assert_eq!(
        body["status"]["batching"]["max_queue_delay_us"], 5_000,
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Warm-up off makes the page create a new session: loaded in the background, and
    // asked for twice (a controller's next round) before it is done.
    let reload = mlp_spec(5_000, false);
    for _ in 0..2 {
        let (status, body) = agent
            .post("/v1/repository/models?wait=false", &reload)
            .await;
        assert_eq!(status, 202, "{body}");
        // What answers meanwhile is the copy serving, with its own spec.
        assert_eq!(body["status"]["state"], "loaded", "{body}");
        assert_eq!(body["spec"]["warmup"], true, "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = agent.get("/v1/repository/models/mlp").await;
        if body["spec"]["warmup"] == false && body["status"]["state"] == "loaded" {
            // Loaded without a warm-up: the page made a new session.
            assert!(body["status"]["warmup_ms"].is_null(), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload never finished: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Release);
    let mut answered = 0;
    for c in clients {
        let (n, failed) = c.await.unwrap();
        assert!(
            failed.is_empty(),
            "requests failed during the reloads: {failed:?}"
        );
        answered += n;
    }
    println!("{answered} requests answered across two reloads");
    assert!(answered > 40, "too few requests to tell: {answered}");
}
