//! KServe v2 over HTTP: health, server and model metadata, model readiness and
//! inference, with JSON tensors and the binary tensor data extension both ways.
//!
//! Per-request deadline: the `webaccel-timeout` header (`250ms`, `2s`, or plain
//! milliseconds) or the protocol's `timeout` parameter (microseconds, as tritonclient
//! sends it); the shorter wins, and the server never waits longer than its own limit.
//! Request id: `x-request-id`, generated when absent and echoed in the response.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use webaccel_api::ErrorCategory;
use webaccel_api::oip::{self, ModelMetadata, ServerMetadata};
use webaccel_api::timing::{Stage, ms};

use crate::api::{ApiError, CallOptions, InferenceApi};

/// The per-request deadline header.
pub const TIMEOUT_HEADER: &str = "webaccel-timeout";
/// The request id header, passed down to the agent and echoed back.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Set to `1` (or `true`), asks for the answer's stages as response parameters.
pub const STAGES_HEADER: &str = "webaccel-stages";
/// The only version each model has; the protocol's version path segment must match it.
pub const VERSION: &str = "1";

/// The health probes, which need no credentials (Kubernetes probes cannot carry any).
pub fn probe_routes<A: InferenceApi>() -> Router<Arc<A>> {
    Router::new()
        .route("/v2/health/live", get(server_live::<A>))
        .route("/v2/health/ready", get(server_ready::<A>))
}

/// Metadata, readiness and inference.
pub fn routes<A: InferenceApi>() -> Router<Arc<A>> {
    Router::new()
        .route("/v2", get(server_metadata::<A>))
        .route("/v2/models/{name}", get(model_metadata::<A>))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_v::<A>),
        )
        .route("/v2/models/{name}/ready", get(model_ready::<A>))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_v::<A>),
        )
        .route("/v2/models/{name}/infer", post(infer::<A>))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer_v::<A>),
        )
        // Outermost, so a request's `receive` stage covers reading its body.
        .route_layer(axum::middleware::from_fn(stamp_arrival))
        .layer(axum::middleware::map_response(
            crate::api::plain_errors_as_json,
        ))
}

async fn server_live<A: InferenceApi>(State(api): State<Arc<A>>) -> StatusCode {
    if api.live() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn server_ready<A: InferenceApi>(State(api): State<Arc<A>>) -> StatusCode {
    // The protocol: 200 when ready, 4xx when not.
    if api.ready() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}

async fn server_metadata<A: InferenceApi>(State(api): State<Arc<A>>) -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: api.server_name().to_owned(),
        version: api.server_version().to_owned(),
        extensions: oip::EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
    })
}

pub(crate) fn check_version(name: &str, version: &str) -> Result<(), ApiError> {
    if version == VERSION {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCategory::ModelNotFound,
            format!("model '{name}' has no version {version} (only {VERSION})"),
        ))
    }
}

async fn model_metadata<A: InferenceApi>(
    State(api): State<Arc<A>>,
    Path(name): Path<String>,
) -> Result<Json<ModelMetadata>, ApiError> {
    api.model_metadata(&name).await.map(Json)
}

async fn model_metadata_v<A: InferenceApi>(
    state: State<Arc<A>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, ApiError> {
    check_version(&name, &version)?;
    model_metadata(state, Path(name)).await
}

async fn model_ready<A: InferenceApi>(
    State(api): State<Arc<A>>,
    Path(name): Path<String>,
) -> Response {
    match api.model_ready(&name).await {
        // The protocol: 200 when ready, 4xx when not.
        Ok(r) if r.ready => (StatusCode::OK, Json(r)).into_response(),
        Ok(r) => (StatusCode::BAD_REQUEST, Json(r)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn model_ready_v<A: InferenceApi>(
    state: State<Arc<A>>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    match check_version(&name, &version) {
        Ok(()) => model_ready(state, Path(name)).await,
        Err(e) => e.into_response(),
    }
}

/// Parses a `webaccel-timeout` value: a humantime duration (`250ms`, `2s`) or plain
/// milliseconds.
pub fn parse_timeout(value: &str) -> Result<Duration, String> {
    let v = value.trim();
    if let Ok(ms) = v.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(v).map_err(|e| {
        format!("{TIMEOUT_HEADER} '{value}' is not a duration such as 250ms or 2s ({e})")
    })
}

/// When a request's head arrived (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Arrived(pub Instant);

async fn stamp_arrival(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    request.extensions_mut().insert(Arrived(Instant::now()));
    next.run(request).await
}

/// Whether a `webaccel-stages` value asks for the stages.
pub fn asks_for_stages(value: Option<&str>) -> bool {
    value.is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The call's options from the request headers and the body's `timeout` parameter;
/// `arrived` is when the request's head came (now, when unknown).
pub fn call_options(
    headers: &HeaderMap,
    body_timeout: Option<Duration>,
    arrived: Option<Instant>,
) -> Result<CallOptions, ApiError> {
    let header_timeout = match headers.get(TIMEOUT_HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| format!("{TIMEOUT_HEADER} is not text"))
                .and_then(parse_timeout)
                .map_err(|m| ApiError::new(ErrorCategory::BadRequest, m))?,
        ),
    };
    let timeout = match (header_timeout, body_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let request_id = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| format!("{:016x}", rand::random::<u64>()), str::to_owned);
    Ok(CallOptions {
        timeout,
        request_id,
        arrived: arrived.unwrap_or_else(Instant::now),
        report_stages: asks_for_stages(headers.get(STAGES_HEADER).and_then(|v| v.to_str().ok())),
    })
}

/// `POST .../infer`: JSON tensors, binary tensors (announced by
/// `Inference-Header-Content-Length`), or both mixed; each output answered the way the
/// request asked.
async fn infer<A: InferenceApi>(
    State(api): State<Arc<A>>,
    Path(name): Path<String>,
    arrived: Option<Extension<Arrived>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let arrived = arrived.map(|Extension(Arrived(at))| at);
    let header_length = headers
        .get(oip::HEADER_LENGTH)
        .map(|v| v.to_str().unwrap_or("?"));
    let parsed = oip::parse_request(&name, &body, header_length, api.max_tensor_bytes())
        .map_err(ApiError::from)
        .inspect_err(|e| api.refused(e))?;
    let options =
        call_options(&headers, parsed.timeout, arrived).inspect_err(|e| api.refused(e))?;
    let request_id = options.request_id.clone();
    let arrived = options.arrived;
    let inferred = api.infer(parsed.request, options).await?;
    let encoding = Instant::now();
    let encoded = oip::encode_response(
        VERSION,
        parsed.id,
        &inferred.response,
        &parsed.encoding,
        inferred.parameters,
    );
    let mut response = (
        [(header::CONTENT_TYPE, encoded.content_type())],
        encoded.body,
    )
        .into_response();
    let h = response.headers_mut();
    if let Some(n) = encoded.header_length {
        h.insert(oip::HEADER_LENGTH, HeaderValue::from(n));
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert(REQUEST_ID_HEADER, v);
    }
    let mut stages = inferred.response.stages;
    stages.set(Stage::Send, ms(encoding.elapsed()));
    api.answered(&name, &request_id, &stages, ms(arrived.elapsed()));
    Ok(response)
}

async fn infer_v<A: InferenceApi>(
    state: State<Arc<A>>,
    Path((name, version)): Path<(String, String)>,
    arrived: Option<Extension<Arrived>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_version(&name, &version)?;
    infer(state, Path(name), arrived, headers, body).await
}

#[cfg(test)]
mod tests;
