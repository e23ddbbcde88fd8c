//! `--agent-access=apiserver-proxy`: agents reached through the API server's pod proxy with
//! the operator's own kube client, the token in `x-webaccel-token` (the API server consumes
//! `authorization`). The proxy runs with the user's kubeconfig (an operator outside the
//! cluster), so these requests are not checked against the chart's RBAC.

use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::json;
use webaccel_agent_client::{AgentApi, AgentError};
use webaccel_api::ErrorCategory;
use webaccel_operator::context::{AgentAccess, endpoint};
use webaccel_operator::pool::observe::BrowserView;
use webaccel_operator::proxy::ApiServerProxy;

#[tokio::test]
async fn agents_are_reached_through_the_pod_proxy_with_the_token_header() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        // 1. Stats through the proxy.
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), "GET");
        assert_eq!(
            req.uri().path(),
            "/api/v1/namespaces/ml/pods/web-a:8700/proxy/v1/stats"
        );
        assert_eq!(req.headers()["x-webaccel-token"], "Bearer secret");
        assert!(req.headers().get("authorization").is_none());
        let stats = serde_json::to_value(webaccel_api::agent::AgentStats {
            healthy: true,
            ready: true,
            outstanding: 3,
            ..Default::default()
        })
        .unwrap();
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(serde_json::to_vec(&stats).unwrap()))
                .unwrap(),
        );
        // 2. A load, query and body passed on.
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), "POST");
        assert_eq!(req.uri().query(), Some("wait=false"));
        let body = req.into_body().collect_bytes().await.unwrap();
        let spec: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(spec["name"], "minilm");
        // The API server cannot reach the pod: its own 503 Status.
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "error trying to reach service: dial tcp 10.0.0.1:8700: connect: connection refused",
            "reason": "ServiceUnavailable", "code": 503});
        send.send_response(
            Response::builder()
                .status(503)
                .body(Body::from(serde_json::to_vec(&status).unwrap()))
                .unwrap(),
        );
    });
    let client = Client::new(service, "default");
    let agents = ApiServerProxy::agents(client, Duration::from_secs(2));
    let view = BrowserView {
        name: "web-a".into(),
        ip: Some("10.0.0.1".into()),
        phase: "Running".into(),
        ready: true,
        ..BrowserView::default()
    };
    let ep = endpoint(AgentAccess::ApiserverProxy, "ml", &view, "secret").unwrap();
    assert_eq!(ep.base_url, "/api/v1/namespaces/ml/pods/web-a:8700/proxy");
    assert_eq!(agents.stats(&ep).await.unwrap().load(), 3);
    let spec: webaccel_api::agent::ModelSpec = serde_json::from_value(json!({
        "name": "minilm", "uri": "https://h/m.onnx", "backend": "wasm"}))
    .unwrap();
    let err = agents.load(&ep, &spec).await.unwrap_err();
    assert!(
        matches!(
            &err,
            AgentError::Refused {
                status: 503,
                category: ErrorCategory::BrowserUnavailable,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.retryable());
    server.await.unwrap();

    // Direct access goes to the pod's IP.
    let direct = endpoint(AgentAccess::Direct, "ml", &view, "secret").unwrap();
    assert_eq!(direct.base_url, "http://10.0.0.1:8700");
}
