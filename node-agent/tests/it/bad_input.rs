//! Bad input gets a clear error with the right status and category, and the agent keeps
//! serving: unknown models, wrong names/shapes/datatypes, length mismatches, oversized
//! tensors, overload, authentication, malformed bridge frames, bad model files.

use std::time::Duration;

use crate::common::{Agent, TOKEN, model_uri, reference, reference_tensors};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use webaccel_api::ErrorCategory;
use webaccel_api::wire::{self, InferRequest, Message};

fn mlp_input(shape: Value, datatype: &str, data: Value) -> Value {
    json!({"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]})
}

async fn expect(agent: &Agent, path: &str, body: Value, status: u16, category: &str, needle: &str) {
    let (code, resp) = agent.post(path, &body).await;
    assert_eq!(code, status, "{path} {body}: {resp}");
    assert_eq!(resp["category"], category, "{resp}");
    let msg = resp["error"].as_str().unwrap();
    assert!(msg.contains(needle), "expected '{needle}' in '{msg}'");
}

#[tokio::test]
async fn http_requests_are_validated_and_the_agent_keeps_serving() {
    let _machine = webaccel_testkit::beside().await;
    let agent = Agent::start(
        &[format!("mlp={},backend=wasm", model_uri("mlp.onnx"))],
        &["--max-tensor-bytes", "1024"],
    )
    .await;
    let infer = "/v2/models/mlp/infer";
    let zeros = |n: usize| json!(vec![0.0; n]);

    expect(
        &agent,
        "/v2/models/nope/infer",
        mlp_input(json!([1, 16]), "FP32", zeros(16)),
        404,
        "model_not_found",
        "unknown model 'nope'",
    )
    .await;
    let wrong_name = json!({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": zeros(16)}]});
    expect(
        &agent,
        infer,
        wrong_name,
        400,
        "bad_request",
        "has no input 'input'",
    )
    .await;
    expect(
        &agent,
        infer,
        mlp_input(json!([1, 15]), "FP32", zeros(15)),
        400,
        "bad_request",
        "must have shape [-1, 16]",
    )
    .await;
    expect(
        &agent,
        infer,
        mlp_input(json!([1, 16]), "INT32", json!(vec![0; 16])),
        400,
        "bad_request",
        "must be FP32, got INT32",
    )
    .await;
    expect(
        &agent,
        infer,
        mlp_input(json!([1, 16]), "FP32", zeros(15)),
        400,
        "bad_request",
        "needs 16 elements of FP32 but data has 15",
    )
    .await;
    expect(
        &agent,
        infer,
        mlp_input(json!([1, 16]), "FLOAT", zeros(16)),
        400,
        "bad_request",
        "unknown datatype 'FLOAT'",
    )
    .await;
    expect(
        &agent,
        infer,
        json!({"inputs": "x"}),
        400,
        "bad_request",
        "invalid inference request JSON",
    )
    .await;
    // 17 rows of 16 floats are 1088 bytes, over the 1024-byte limit.
    expect(
        &agent,
        infer,
        mlp_input(json!([17, 16]), "FP32", zeros(272)),
        413,
        "payload_too_large",
        "limit is 1024",
    )
    .await;
    expect(
        &agent,
        "/v2/models/mlp/versions/7/infer",
        mlp_input(json!([1, 16]), "FP32", zeros(16)),
        404,
        "model_not_found",
        "version 7",
    )
    .await;

    // Authentication: no token or a wrong one is 401; probes need none.
    let anon = reqwest::Client::new();
    let r = anon
        .get(format!("{}/v1/stats", agent.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = anon
        .post(format!("{}{infer}", agent.base))
        .bearer_auth("wrong")
        .json(&reference("mlp"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for probe in ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"] {
        assert_eq!(
            anon.get(format!("{}{probe}", agent.base))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{probe}"
        );
    }
    let r = anon
        .get(format!("{}/metrics", agent.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(
        text.contains("webaccel_agent_errors_total{category=\"bad_request\"}"),
        "{text}"
    );

    // After all that, a good request still works.
    let (code, body) = agent.infer_reference("mlp", "mlp").await;
    assert_eq!(code, 200, "{body}");
    let (_, stats) = agent.get("/v1/stats").await;
    assert!(
        stats["errors_by_category"]["bad_request"].as_u64().unwrap() >= 6,
        "{stats}"
    );
}

#[tokio::test]
async fn bad_model_files_are_refused_with_the_reason() {
    let _machine = webaccel_testkit::beside().await;
    let agent = Agent::start(&[], &[]).await;
    let (code, body) = agent
        .post(
            "/v1/repository/models",
            &json!({"name": "bad", "uri": model_uri("invalid.onnx"), "backend": "wasm"}),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["category"], "model_load_failed");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("protobuf"),
        "{body}"
    );

    let (code, body) = agent
        .post(
            "/v1/repository/models",
            &json!({"name": "tampered", "uri": model_uri("mlp.onnx"), "sha256": "0".repeat(64), "backend": "wasm"}),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("sha256 mismatch"),
        "{body}"
    );

    let (code, body) = agent
        .post(
            "/v1/repository/models",
            &json!({"name": "x", "uri": "ftp://host/m.onnx"}),
        )
        .await;
    assert_eq!(code, 400, "{body}");

    // A good model with its real digest loads at run time, serves, and unloads.
    let sums = std::fs::read_to_string(crate::common::fixture("SHA256SUMS")).unwrap();
    let sha = sums
        .lines()
        .find(|l| l.ends_with("mlp.onnx"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let (code, body) = agent
        .post("/v1/repository/models", &json!({"name": "good", "uri": model_uri("mlp.onnx"), "sha256": sha, "backend": "wasm"}))
        .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["status"]["sha256"], sha);
    assert_eq!(agent.infer_reference("good", "mlp").await.0, 200);
    let r = agent
        .http
        .delete(format!("{}/v1/repository/models/good", agent.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(agent.infer_reference("good", "mlp").await.0, 404);
}

/// Serves the fixture folder over HTTP on a free port; returns its base URL.
async fn serve_fixtures() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/models/{file}",
        axum::routing::get(
            |axum::extract::Path(file): axum::extract::Path<String>| async move {
                match std::fs::read(crate::common::fixture(&file)) {
                    Ok(bytes) => Ok(bytes),
                    Err(_) => Err(axum::http::StatusCode::NOT_FOUND),
                }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/models")
}

#[tokio::test]
async fn models_load_over_http_with_digest_checks() {
    let _machine = webaccel_testkit::beside().await;
    let base = serve_fixtures().await;
    let agent = Agent::start(&[format!("boot={base}/mlp.onnx,backend=wasm")], &[]).await;
    assert_eq!(agent.infer_reference("boot", "mlp").await.0, 200);

    let sums = std::fs::read_to_string(crate::common::fixture("SHA256SUMS")).unwrap();
    let sha = sums
        .lines()
        .find(|l| l.ends_with("cnn.onnx"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let (code, body) = agent
        .post("/v1/repository/models", &json!({"name": "cnn", "uri": format!("{base}/cnn.onnx"), "sha256": sha, "backend": "wasm"}))
        .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = agent.infer_reference("cnn", "cnn").await;
    assert_eq!(code, 200, "{body}");
    crate::common::assert_outputs_match("cnn", body["outputs"].as_array().unwrap(), 1e-5, 1e-4);

    let (code, body) = agent
        .post(
            "/v1/repository/models",
            &json!({"name": "missing", "uri": format!("{base}/nope.onnx")}),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("HTTP 404"),
        "{body}"
    );
    let (code, body) = agent
        .post(
            "/v1/repository/models",
            &json!({"name": "wrong", "uri": format!("{base}/types.onnx"), "sha256": sha}),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("sha256 mismatch"),
        "{body}"
    );
    // The server metadata names the agent.
    let (code, meta) = agent.get("/v2").await;
    assert_eq!((code, meta["name"].as_str()), (200, Some("webaccel-agent")));
}

#[tokio::test]
async fn malformed_bridge_frames_get_error_frames_and_hurt_no_one() {
    let _machine = webaccel_testkit::beside().await;
    let agent = Agent::start(
        &[format!("mlp={},backend=wasm", model_uri("mlp.onnx"))],
        &[],
    )
    .await;
    let mut a = agent.bridge().await;
    let mut b = agent.bridge().await;

    a.send_raw(WsMessage::Binary(b"garbage".to_vec().into()))
        .await;
    let (id, msg) = a.recv().await;
    assert_eq!(id, 0);
    let Message::Error(e) = msg else {
        panic!("{msg:?}")
    };
    assert_eq!(e.category, ErrorCategory::BadRequest);
    assert!(e.message.contains("malformed frame"), "{}", e.message);

    // A valid prefix with a truncated tensor: the error carries the request id.
    let mut frame = wire::encode(
        77,
        &Message::Request(InferRequest {
            model: "mlp".into(),
            inputs: reference_tensors("mlp"),
            outputs: vec![],
            ..Default::default()
        }),
    );
    frame.truncate(frame.len() - 4);
    a.send_raw(WsMessage::Binary(frame.into())).await;
    let (id, msg) = a.recv().await;
    assert_eq!(id, 77);
    assert!(
        matches!(msg, Message::Error(ref e) if e.category == ErrorCategory::BadRequest),
        "{msg:?}"
    );

    a.send_raw(WsMessage::Text("hello".into())).await;
    assert!(matches!(a.recv().await.1, Message::Error(_)));

    a.send_request(5, "nope", reference_tensors("mlp")).await;
    let (id, msg) = a.recv().await;
    assert_eq!(id, 5);
    assert!(
        matches!(msg, Message::Error(ref e) if e.category == ErrorCategory::ModelNotFound),
        "{msg:?}"
    );

    // Both connections still serve.
    for (bridge, id) in [(&mut a, 8u64), (&mut b, 9)] {
        bridge
            .send_request(id, "mlp", reference_tensors("mlp"))
            .await;
        let (got, msg) = bridge.recv().await;
        assert_eq!(got, id);
        assert!(matches!(msg, Message::Response(_)), "{msg:?}");
    }
}

#[tokio::test]
async fn too_many_in_flight_is_429_and_a_hung_page_fails_them_retryably() {
    let _machine = webaccel_testkit::alone().await;
    let agent = Agent::start(
        &[format!("mlp={},backend=wasm", model_uri("mlp.onnx"))],
        &["--max-in-flight", "1", "--enable-debug-endpoints"],
    )
    .await;
    // Freeze the page so the first request stays in flight.
    let (code, _) = agent.post("/v1/debug/hang", &json!({})).await;
    assert_eq!(code, 202);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let first = {
        let agent_http = agent.http.clone();
        let url = format!("{}/v2/models/mlp/infer", agent.base);
        let body = json!({"inputs": reference("mlp")["inputs"]});
        tokio::spawn(async move {
            let r = agent_http.post(url).json(&body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap(),
                started.elapsed(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, body) = agent.infer_reference("mlp", "mlp").await;
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["category"], "overloaded");
    assert_eq!(body["retryable"], true);

    let (code, body, took) = first.await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        ["browser_hung", "browser_crashed"].contains(&body["category"].as_str().unwrap()),
        "{body}"
    );
    assert_eq!(body["retryable"], true);
    assert!(
        took < Duration::from_secs(3),
        "the hang must be detected within 3 s, took {took:?}"
    );

    // The browser is restarted and the model reloaded.
    agent.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(agent.infer_reference("mlp", "mlp").await.0, 200);
    let stats = agent.stats().await;
    assert_eq!(stats.browser.restarts, 1, "{stats:?}");
    assert_eq!(stats.browser.last_restart_reason.as_deref(), Some("hung"));
}

/// A bridge request carries its sender's deadline (`timeout_ms`), which the agent keeps;
/// a cancel frame drops a request that is still queued.
#[tokio::test]
async fn bridge_deadlines_and_cancels_are_honoured() {
    let _machine = webaccel_testkit::alone().await;
    let agent = Agent::start(
        &[format!("mlp={},backend=wasm", model_uri("mlp.onnx"))],
        &[
            "--enable-debug-endpoints",
            "--hang-timeout",
            "20s",
            "--drain-timeout",
            "1s",
        ],
    )
    .await;
    let mut bridge = agent.bridge().await;
    // Freeze the page: nothing completes until the browser is replaced.
    assert_eq!(agent.post("/v1/debug/hang", &json!({})).await.0, 202);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let request = |timeout_ms| {
        wire::encode(
            0,
            &Message::Request(InferRequest {
                model: "mlp".into(),
                inputs: reference_tensors("mlp"),
                timeout_ms,
                ..Default::default()
            }),
        )
    };
    let send = |id: u64, frame: Vec<u8>| {
        let mut frame = frame;
        frame[8..16].copy_from_slice(&id.to_le_bytes());
        WsMessage::Binary(frame.into())
    };
    // 1 runs (stuck in the page), 2 and 3 wait in the model's queue.
    bridge.send_raw(send(1, request(None))).await;
    bridge.send_raw(send(2, request(None))).await;
    let started = std::time::Instant::now();
    bridge.send_raw(send(3, request(Some(300)))).await;
    let (id, msg) = bridge.recv().await;
    assert_eq!(id, 3);
    let Message::Error(e) = msg else {
        panic!("{msg:?}")
    };
    assert_eq!(e.category.as_str(), "deadline_exceeded", "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let mut cancel = wire::encode(2, &Message::Cancel);
    cancel[8..16].copy_from_slice(&2u64.to_le_bytes());
    bridge.send_raw(WsMessage::Binary(cancel.into())).await;
    // Request 2 leaves the queue: only request 1 is left in the agent.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stats = agent.stats().await;
        if stats.queued == 0 && stats.in_flight == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
