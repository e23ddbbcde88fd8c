//! Routes under `/page`: the runtime's files, onnxruntime-web's assets, model bytes and
//! the page's WebSocket. Everything is served from local disk with cross-origin
//! isolation headers, so wasm threads work and nothing comes from the internet.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::agent::Agent;

#[derive(Deserialize)]
struct Secret {
    s: String,
}

/// Routes for the page; `web_root` holds `src/` and `node_modules/`.
pub fn routes(agent: Arc<Agent>, web_root: PathBuf) -> Router {
    let isolation = |name: &'static str, value: &'static str| {
        SetResponseHeaderLayer::overriding(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )
    };
    let ort_dir = web_root.join("node_modules/onnxruntime-web/dist");
    // onnxruntime-web's files are versioned by the lockfile and never change under a
    // running agent: let Chromium cache them (and the compiled wasm) across restarts.
    let ort = Router::new()
        .nest_service("/page/ort", ServeDir::new(ort_dir))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        ));
    let runtime = Router::new()
        .route("/page/ws", get(page_socket))
        .route("/page/models/{sha}", get(model_bytes))
        .nest_service("/page", ServeDir::new(web_root.join("src")))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    Router::new()
        .merge(ort)
        .merge(runtime)
        .layer(isolation("cross-origin-opener-policy", "same-origin"))
        .layer(isolation("cross-origin-embedder-policy", "require-corp"))
        .layer(isolation("cross-origin-resource-policy", "same-origin"))
        .with_state(agent)
}

async fn page_socket(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<Secret>,
    ws: WebSocketUpgrade,
) -> Response {
    if !agent.browser.secret_matches(&q.s) {
        return (StatusCode::FORBIDDEN, "wrong page secret").into_response();
    }
    // Large tensors go through this socket; the agent's own limits already apply.
    ws.max_message_size(usize::MAX)
        .max_frame_size(usize::MAX)
        .on_upgrade(move |socket| async move { agent.browser.page_connected(q.s, socket) })
}

async fn model_bytes(
    State(agent): State<Arc<Agent>>,
    Path(sha): Path<String>,
    Query(q): Query<Secret>,
) -> Response {
    if !agent.browser.secret_matches(&q.s) {
        return (StatusCode::FORBIDDEN, "wrong page secret").into_response();
    }
    if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        return (StatusCode::BAD_REQUEST, "not a sha256").into_response();
    }
    match tokio::fs::read(agent.cache.path_for(&sha)).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => (StatusCode::NOT_FOUND, e.to_string()).into_response(),
    }
}
