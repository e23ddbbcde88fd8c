//! The gateway's HTTP surfaces: the KServe v2 routes (behind the client tokens, probes
//! open) and the admin port: `/healthz`, `/readyz`, `/metrics`, `/v1/endpoints`
//! (every browser as the gateway sees it) and `/v1/stats` (the slowest 1% of recent
//! requests, stage by stage).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use webaccel_api::timing::TailReport;
use webaccel_kserve::auth::{self, Tokens};
use webaccel_kserve::http as v2;

use crate::service::Gateway;

/// KServe v2 on the client port.
pub fn kserve_router(gateway: Arc<Gateway>, tokens: Arc<Tokens>) -> Router {
    let protected = v2::routes::<Gateway>()
        .merge(webaccel_kserve::generate::routes::<Gateway>())
        .merge(webaccel_kserve::openai::routes::<Gateway>())
        .layer(middleware::from_fn_with_state(tokens, auth::require));
    Router::new()
        .merge(v2::probe_routes::<Gateway>())
        .merge(protected)
        .layer(middleware::map_response_with_state(
            gateway.clone(),
            close_when_draining,
        ))
        .with_state(gateway)
}

/// While draining, every HTTP/1 answer closes its connection: a client's pooled
/// connection would otherwise keep reaching this gateway after its endpoint is gone, and
/// its next request would meet the closed port. Its next connection goes to another.
async fn close_when_draining(
    State(gateway): State<Arc<Gateway>>,
    mut resp: axum::response::Response,
) -> axum::response::Response {
    if gateway.draining() {
        resp.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// One browser in `/v1/endpoints`.
#[derive(Debug, Serialize)]
struct EndpointView {
    id: String,
    url: String,
    pool: String,
    pod: String,
    serving: bool,
    connected: bool,
    breaker: &'static str,
    outstanding: usize,
    models: Vec<String>,
}

async fn endpoints(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    let list: Vec<EndpointView> = gateway
        .backends
        .all()
        .iter()
        .map(|b| {
            let ep = b.endpoint();
            EndpointView {
                id: ep.id,
                url: ep.url,
                pool: ep.pool,
                pod: ep.pod,
                serving: ep.serving,
                connected: b.is_connected(),
                breaker: b.breaker_state().0,
                outstanding: b.outstanding(),
                models: ep.models.into_iter().collect(),
            }
        })
        .collect();
    Json(list)
}

async fn readyz(State(gateway): State<Arc<Gateway>>) -> StatusCode {
    use webaccel_kserve::InferenceApi as _;
    if gateway.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gateway.metrics.encode(&gateway.backends, &gateway.queues),
    )
}

/// `GET /v1/stats` on the admin port: the gateway's own figures.
#[derive(Debug, Serialize)]
struct GatewayStats {
    /// Where the slowest 1% of the last minute's requests spent their time.
    tail: TailReport,
}

async fn stats(State(gateway): State<Arc<Gateway>>) -> Json<GatewayStats> {
    Json(GatewayStats {
        tail: gateway.tail.report(),
    })
}

/// The admin port.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/endpoints", get(endpoints))
        .route("/v1/stats", get(stats))
        .with_state(gateway)
}
