use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt as _;
use serde_json::{Map, Value, json};
use tower::ServiceExt as _;
use webaccel_api::oip::{ModelReady, TensorMetadata};
use webaccel_api::wire::{InferRequest, InferResponse};

use super::*;
use crate::api::Inferred;

/// Answers every request with its inputs as outputs, or with the error it was built with.
struct Echo {
    fail: Option<ApiError>,
    seen: std::sync::Mutex<Vec<CallOptions>>,
}

impl InferenceApi for Echo {
    fn server_name(&self) -> &str {
        "echo"
    }
    fn server_version(&self) -> &str {
        "0"
    }
    fn ready(&self) -> bool {
        true
    }
    fn max_tensor_bytes(&self) -> usize {
        1024
    }
    async fn model_metadata(&self, name: &str) -> Result<ModelMetadata, ApiError> {
        Ok(ModelMetadata {
            name: name.into(),
            versions: vec![VERSION.into()],
            platform: "test".into(),
            inputs: vec![TensorMetadata {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![-1],
            }],
            outputs: vec![],
            parameters: Map::new(),
        })
    }
    async fn model_ready(&self, name: &str) -> Result<ModelReady, ApiError> {
        Ok(ModelReady {
            name: name.into(),
            ready: name == "up",
            state: None,
        })
    }
    async fn infer(
        &self,
        request: InferRequest,
        options: CallOptions,
    ) -> Result<Inferred, ApiError> {
        self.seen.lock().unwrap().push(options);
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        Ok(Inferred {
            response: InferResponse {
                model: request.model,
                backend: "echo".into(),
                compute_ms: 0.0,
                page_ms: None,
                stages: Default::default(),
                outputs: request.inputs,
            },
            parameters: Map::from_iter([("backend".to_owned(), json!("echo"))]),
        })
    }
}

fn app(fail: Option<ApiError>) -> (Router, Arc<Echo>) {
    let api = Arc::new(Echo {
        fail,
        seen: Default::default(),
    });
    let router = routes::<Echo>()
        .merge(probe_routes::<Echo>())
        .with_state(api.clone());
    (router, api)
}

async fn send(router: Router, req: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let resp = router.oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

fn post(path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::post(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body)).unwrap()
}

#[tokio::test]
async fn json_in_binary_out_with_request_id_and_deadline() {
    let (router, api) = app(None);
    let body = json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.5, 2.5]}],
                      "parameters": {"binary_data_output": true, "timeout": 3_000_000}});
    let (status, headers, bytes) = send(
        router,
        post(
            "/v2/models/m/infer",
            serde_json::to_vec(&body).unwrap(),
            &[("webaccel-timeout", "1s"), ("x-request-id", "abc")],
        ),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(headers["x-request-id"], "abc");
    let n: usize = headers[oip::HEADER_LENGTH]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        &bytes[n..],
        [1.5f32.to_le_bytes(), 2.5f32.to_le_bytes()].concat()
    );
    let seen = api.seen.lock().unwrap().clone();
    assert_eq!(
        seen[0].timeout,
        Some(Duration::from_secs(1)),
        "the shorter deadline wins"
    );
    assert_eq!(seen[0].request_id, "abc");
}

#[tokio::test]
async fn refusals_carry_status_category_and_retry_after() {
    let overloaded = ApiError::new(ErrorCategory::Overloaded, "queue full")
        .with_retry_after(Duration::from_millis(1500));
    let (router, _) = app(Some(overloaded));
    let body = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]});
    let (status, headers, bytes) = send(
        router,
        post(
            "/v2/models/m/infer",
            serde_json::to_vec(&body).unwrap(),
            &[],
        ),
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(headers[header::RETRY_AFTER], "2");
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        v,
        json!({"error": "queue full", "category": "overloaded", "retryable": true})
    );

    let (router, _) = app(None);
    let cases = [
        (post("/v2/models/m/infer", b"{".to_vec(), &[]), 400, "invalid inference request JSON"),
        (post("/v2/models/m/infer", serde_json::to_vec(&json!({"inputs": [{"name": "x", "shape": [1000], "datatype": "FP32", "data": []}]})).unwrap(), &[]), 413, "the limit is 1024"),
        (post("/v2/models/m/infer", serde_json::to_vec(&body).unwrap(), &[("webaccel-timeout", "soon")]), 400, "not a duration"),
        (post("/v2/models/m/versions/2/infer", serde_json::to_vec(&body).unwrap(), &[]), 404, "no version 2"),
    ];
    for (req, want_status, want) in cases {
        let (status, _, bytes) = send(router.clone(), req).await;
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(status.as_u16(), want_status, "{text}");
        assert!(text.contains(want), "{text}");
    }
}

#[tokio::test]
async fn health_metadata_and_readiness() {
    let (router, _) = app(None);
    let get = |p: &str| Request::get(p).body(Body::empty()).unwrap();
    assert_eq!(send(router.clone(), get("/v2/health/live")).await.0, 200);
    assert_eq!(send(router.clone(), get("/v2/health/ready")).await.0, 200);
    let (_, _, meta) = send(router.clone(), get("/v2")).await;
    let meta: Value = serde_json::from_slice(&meta).unwrap();
    assert_eq!(meta["extensions"], json!(["binary_tensor_data"]));
    assert_eq!(
        send(router.clone(), get("/v2/models/up/ready")).await.0,
        200
    );
    assert_eq!(
        send(router.clone(), get("/v2/models/down/ready")).await.0,
        400
    );
    let (status, _, meta) = send(router, get("/v2/models/m/versions/1")).await;
    assert_eq!(status, 200);
    let meta: Value = serde_json::from_slice(&meta).unwrap();
    assert_eq!(meta["inputs"][0]["shape"], json!([-1]));
}

#[test]
fn timeouts_parse_in_both_forms() {
    assert_eq!(parse_timeout("250"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_timeout("2s"), Ok(Duration::from_secs(2)));
    assert!(parse_timeout("-1").is_err());
}

/// Errors axum makes before a handler runs come in the protocol's JSON shape too: a
/// body over the limit (the gateway's used to be plain text `length limit exceeded`)
/// and a method the route does not take (its `Allow` header kept).
#[tokio::test]
async fn errors_before_the_handler_are_json_with_a_category() {
    let (router, _) = app(None);
    let (status, headers, bytes) = send(
        router.clone(),
        post("/v2/models/m/infer", vec![b' '; 3 << 20], &[]),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let v: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
    assert_eq!(v["category"], "payload_too_large", "{v}");
    assert_eq!(v["retryable"], false);
    assert!(v["error"].as_str().unwrap().contains("limit"), "{v}");

    let (status, headers, bytes) = send(
        router,
        Request::get("/v2/models/m/infer")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    assert!(headers.contains_key(header::ALLOW), "{headers:?}");
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["category"], "bad_request", "{v}");
}
