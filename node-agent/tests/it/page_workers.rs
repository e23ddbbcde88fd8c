//! Page workers in a real Chromium: with `--page-workers 2` the page runs two
//! onnxruntime-web instances, requests go to both and every answer equals onnxruntime's
//! for its own input; a worker that spins forever is replaced by the page (not the
//! browser) and meanwhile every request is answered, correctly or with a retryable 503.

use std::time::{Duration, Instant};

use crate::common::{Agent, assert_tensors_close, model_uri, onnxruntime_outputs};
use futures::future::join_all;
use serde_json::{Value, json};

const ABS: f64 = 1e-5;
const REL: f64 = 1e-4;

/// Request `i`'s mlp input: distinct per request, exact in f32.
fn mlp_request(i: usize) -> Vec<Value> {
    let data: Vec<f64> = (0..16)
        .map(|j| ((i * 31 + j * 7) % 64) as f64 / 32.0 - 1.0)
        .collect();
    vec![json!({"name": "x", "datatype": "FP32", "shape": [1, 16], "data": data})]
}

fn transformer_request(i: usize) -> Vec<Value> {
    let data: Vec<u64> = (0..8).map(|j| ((i * 13 + j * 5) % 32) as u64).collect();
    vec![json!({"name": "tokens", "datatype": "INT64", "shape": [1, 8], "data": data})]
}

async fn infer(agent: &Agent, model: &str, inputs: &[Value]) -> (u16, Value) {
    agent
        .post(
            &format!("/v2/models/{model}/infer"),
            &json!({"inputs": inputs}),
        )
        .await
}

#[tokio::test]
async fn two_workers_share_the_requests_and_answer_like_onnxruntime() {
    let _machine = webaccel_testkit::alone().await;
    two_workers_share_the_requests(&[]).await;
}

#[tokio::test]
async fn two_workers_in_firefox() {
    let _machine = webaccel_testkit::alone().await;
    let binary = crate::common::firefox();
    two_workers_share_the_requests(&["--browser", "firefox", "--firefox", &binary]).await;
}

async fn two_workers_share_the_requests(browser: &[&str]) {
    let models = [
        format!("mlp={},backend=wasm", model_uri("mlp.onnx")),
        format!("tf={},backend=wasm", model_uri("transformer.onnx")),
    ];
    let mut args = vec!["--page-workers=2", "--wasm-threads=1"];
    args.extend_from_slice(browser);
    let agent = Agent::start(&models, &args).await;
    let (_, caps) = agent.get("/v1/capabilities").await;
    assert_eq!(
        caps["page_workers"],
        json!({"workers": 2, "threads_per_worker": 1}),
        "{caps}"
    );

    for (model, file, make) in [
        ("mlp", "mlp.onnx", mlp_request as fn(usize) -> Vec<Value>),
        ("tf", "transformer.onnx", transformer_request),
    ] {
        let requests: Vec<Vec<Value>> = (0..24).map(make).collect();
        let answers = join_all(requests.iter().map(|r| infer(&agent, model, r))).await;
        let want = onnxruntime_outputs(file, &requests);
        for (i, ((status, body), want)) in answers.iter().zip(&want).enumerate() {
            assert_eq!(*status, 200, "{model} request {i}: {body}");
            assert_tensors_close(
                &format!("{model} request {i}"),
                body["outputs"].as_array().unwrap(),
                want,
                ABS,
                REL,
            );
        }
    }

    // Both instances ran requests (the heartbeat carries their counts).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = agent.stats().await;
        let ws = &stats.page_workers;
        let runs: Vec<u64> = ws.iter().map(|w| w.runs).collect();
        if ws.len() == 2 && runs.iter().sum::<u64>() >= 48 {
            assert!(
                runs.iter().all(|&r| r > 0),
                "a worker ran nothing: {stats:#?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "workers never reported 48 runs: {stats:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_spinning_worker_is_replaced_and_no_request_hangs() {
    let _machine = webaccel_testkit::alone().await;
    let models = [format!("mlp={},backend=wasm", model_uri("mlp.onnx"))];
    let agent = Agent::start(
        &models,
        &[
            "--page-workers=2",
            "--wasm-threads=1",
            "--hang-timeout=2s",
            "--enable-debug-endpoints",
        ],
    )
    .await;
    let (status, body) = agent.post("/v1/debug/hang-worker/1", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = agent.post("/v1/debug/hang-worker/7", &json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no page worker 7"),
        "{body}"
    );

    // Four clients for eight seconds: through the hang, the replacement and after.
    let started = Instant::now();
    let client = |c: usize| {
        let agent = &agent;
        async move {
            let (mut answered, mut retryable, mut slowest) = (Vec::new(), 0, Duration::ZERO);
            let mut i = c * 10_000;
            while started.elapsed() < Duration::from_secs(8) {
                let t0 = Instant::now();
                let (status, body) = infer(agent, "mlp", &mlp_request(i)).await;
                slowest = slowest.max(t0.elapsed());
                match status {
                    200 => answered.push((i, body)),
                    503 => {
                        assert_eq!(body["retryable"], true, "{body}");
                        retryable += 1;
                    }
                    other => panic!("unexpected {other}: {body}"),
                }
                i += 1;
            }
            (answered, retryable, slowest)
        }
    };
    let results = join_all((0..4).map(client)).await;
    let answered: Vec<&(usize, Value)> = results.iter().flat_map(|r| &r.0).collect();
    let retryable: u32 = results.iter().map(|r| r.1).sum();
    let slowest = results.iter().map(|r| r.2).max().unwrap();
    println!(
        "ok {}, retryable {retryable}, slowest {slowest:?}",
        answered.len()
    );
    assert!(answered.len() > 100, "too few answers: {}", answered.len());
    assert!(
        slowest < Duration::from_secs(6),
        "a request hung for {slowest:?}"
    );
    // Every answer is right for its own input.
    let requests: Vec<Vec<Value>> = answered.iter().map(|(i, _)| mlp_request(*i)).collect();
    let want = onnxruntime_outputs("mlp.onnx", &requests);
    for ((i, body), want) in answered.iter().zip(&want) {
        assert_tensors_close(
            &format!("mlp request {i}"),
            body["outputs"].as_array().unwrap(),
            want,
            ABS,
            REL,
        );
    }

    let stats = agent.stats().await;
    let ws = &stats.page_workers;
    assert_eq!(ws.len(), 2, "{stats:#?}");
    assert_eq!(ws[1].restarts, 1, "{stats:#?}");
    assert_eq!(ws[0].restarts, 0, "{stats:#?}");
    assert!(ws[1].ready, "{stats:#?}");
    assert_eq!(
        stats.browser.restarts, 0,
        "the browser itself kept running: {stats:#?}"
    );
    // The replacement serves: more requests reach worker 1.
    let before = ws[1].runs;
    let requests: Vec<Vec<Value>> = (0..16).map(mlp_request).collect();
    join_all(requests.iter().map(|r| infer(&agent, "mlp", r))).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = agent.stats().await.page_workers[1].runs;
    assert!(
        after > before,
        "the replacement took no request ({before} → {after})"
    );
}
