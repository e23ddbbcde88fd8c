//! What a KServe v2 server needs from the thing it fronts (an agent, the gateway), and
//! the error every route answers with.

use std::time::{Duration, Instant};

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use webaccel_api::ErrorCategory;
use webaccel_api::oip::{ErrorBody, ModelMetadata, ModelReady};
use webaccel_api::timing::StageTimes;
use webaccel_api::wire::{InferRequest, InferResponse};

/// The request's own deadline and identity, as the client gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOptions {
    /// The shortest of what the client asked for: the `webaccel-timeout` header, the
    /// protocol's `timeout` parameter, gRPC's `grpc-timeout`. `None`: the server's default.
    pub timeout: Option<Duration>,
    /// From `x-request-id` (or generated), passed down to the agent and into the logs.
    pub request_id: String,
    /// When the front first saw the request (its head, before the body was read): the
    /// start of its `receive` stage.
    pub arrived: Instant,
    /// The client asked (header `webaccel-stages: 1`) for the answer's stages as response
    /// parameters (`stage_<name>_ms`).
    pub report_stages: bool,
}

impl CallOptions {
    /// Options with no deadline of the client's, for request `request_id` arriving now.
    pub fn new(request_id: impl Into<String>) -> Self {
        Self {
            timeout: None,
            request_id: request_id.into(),
            arrived: Instant::now(),
            report_stages: false,
        }
    }

    /// The effective timeout: the client's, never longer than `limit`.
    pub fn timeout_within(&self, limit: Duration) -> Duration {
        self.timeout.map_or(limit, |t| t.min(limit))
    }

    /// Adds the answer's measured stages to `parameters` as `stage_<name>_ms`, when the
    /// client asked for them.
    pub fn add_stages(&self, parameters: &mut Map<String, Value>, stages: &StageTimes) {
        if self.report_stages {
            for (stage, ms) in stages.measured() {
                parameters.insert(format!("stage_{}_ms", stage.as_str()), Value::from(ms));
            }
        }
    }
}

/// A finished inference and the response parameters to report with it (backend,
/// compute time; the gateway adds where it ran and how many attempts it took).
#[derive(Debug, Clone)]
pub struct Inferred {
    pub response: InferResponse,
    pub parameters: Map<String, Value>,
}

/// An error with its category (which picks the HTTP status and gRPC code) and, for
/// overload, when to come back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub category: ErrorCategory,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(category: ErrorCategory, message: impl Into<String>) -> Self {
        Self {
            category,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.message.clone(),
            category: self.category,
            retryable: self.category.is_retryable(),
        }
    }
}

impl From<webaccel_api::oip::ProtocolError> for ApiError {
    fn from(e: webaccel_api::oip::ProtocolError) -> Self {
        Self::new(e.category, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.category.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, Json(self.body())).into_response();
        let headers = resp.headers_mut();
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up (the header has no finer unit).
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if self.category == ErrorCategory::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Answers the errors axum makes itself (a body over the limit, a wrong content type, a
/// method the route does not take: plain text) in the protocol's JSON shape, made by
/// `to`, with a category for the status, keeping the status and headers. A client of
/// the protocol parses every error the same way, and a 413 says `payload_too_large`.
pub async fn plain_errors_as(resp: Response, to: impl FnOnce(ApiError) -> Response) -> Response {
    let status = resp.status();
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/event-stream"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // axum's rejections are a line of text; anything longer is cut, not buffered whole.
    let text = axum::body::to_bytes(body, 16 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let category = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCategory::PayloadTooLarge,
        StatusCode::UNAUTHORIZED => ErrorCategory::Unauthorized,
        StatusCode::TOO_MANY_REQUESTS => ErrorCategory::Overloaded,
        s if s.is_client_error() => ErrorCategory::BadRequest,
        _ => ErrorCategory::Internal,
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let made = to(ApiError::new(category, message));
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, made.into_body())
}

/// [`plain_errors_as`] with the KServe v2 (and Triton) error body.
pub async fn plain_errors_as_json(resp: Response) -> Response {
    plain_errors_as(resp, IntoResponse::into_response).await
}

/// What a KServe v2 server fronts. The futures are `Send` so the servers can run them
/// on any worker.
pub trait InferenceApi: Send + Sync + 'static {
    /// The server's name and version for `GET /v2`.
    fn server_name(&self) -> &str;
    fn server_version(&self) -> &str;
    /// Liveness for `/v2/health/live` (false: restart me).
    fn live(&self) -> bool {
        true
    }
    /// Readiness for `/v2/health/ready`.
    fn ready(&self) -> bool;
    /// The largest tensor accepted, in bytes (larger ones are refused with 413 before
    /// they are read).
    fn max_tensor_bytes(&self) -> usize;
    fn model_metadata(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<ModelMetadata, ApiError>> + Send;
    fn model_ready(&self, name: &str) -> impl Future<Output = Result<ModelReady, ApiError>> + Send;
    fn infer(
        &self,
        request: InferRequest,
        options: CallOptions,
    ) -> impl Future<Output = Result<Inferred, ApiError>> + Send;
    /// Told of every request refused before it reached [`InferenceApi::infer`]
    /// (malformed, too large), for the server's own error counts.
    fn refused(&self, _error: &ApiError) {}

    /// Told of every successful answer once encoded: its stages complete (`send`, the
    /// encoding, included) and the milliseconds since the front first saw it.
    fn answered(&self, _model: &str, _request_id: &str, _stages: &StageTimes, _total_ms: f64) {}
}
