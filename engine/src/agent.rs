//! Talking to the node agents: load (`/v1/stats`), capabilities, model load and unload,
//! and drain, over the agent's typed contract (`webaccel_api::agent`). Behind a trait so
//! the operator's controller tests and local mode's tests can stand in for agents.
//!
//! Errors keep the agent's category and `retryable` flag: a 401 (token rotated) or a 503
//! (browser restarting) is the agent's state, not the model's fault, and must never be
//! taken for a refused model.

use std::time::Duration;

use futures::future::BoxFuture;
use webaccel_api::ErrorCategory;
use webaccel_api::agent::{AgentStats, Capabilities, ModelDescription, ModelSpec, ModelState};
use webaccel_api::oip::ErrorBody;

/// Where one agent listens and the token it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The browser it belongs to (a pod's name, a local process's name).
    pub pod: String,
    pub base_url: String,
    pub token: String,
}

/// Why a call to an agent failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AgentError {
    /// No answer: connection refused, timeout, reset.
    #[error("{path}: agent unreachable: {message}")]
    Unreachable { path: String, message: String },
    /// The agent answered with an error, in its own words.
    #[error("{path}: HTTP {status} ({category}): {message}")]
    Refused {
        path: String,
        status: u16,
        category: ErrorCategory,
        message: String,
    },
    /// The agent answered something that is not its contract.
    #[error("{path}: malformed answer: {message}")]
    Malformed { path: String, message: String },
}

impl AgentError {
    /// Whether asking again later may work (the agent is restarting its browser, is
    /// unreachable for now, or is overloaded). Refusals because of the request itself
    /// (bad model, bad spec) and authentication failures are not retryable.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Malformed { .. } => true,
            Self::Refused { category, .. } => category.is_retryable(),
        }
    }

    /// The agent refused the token (rotated, or not the pool's): ask again with a fresh one.
    pub fn unauthorized(&self) -> bool {
        matches!(
            self,
            Self::Refused {
                category: ErrorCategory::Unauthorized,
                ..
            }
        )
    }

    /// A bounded label for metrics: `unreachable`, `malformed` or the category.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "unreachable",
            Self::Malformed { .. } => "malformed",
            Self::Refused { category, .. } => category.as_str(),
        }
    }
}

pub type AgentResult<T> = Result<T, AgentError>;

/// What the agent said about one model on it.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelOnAgent {
    Absent,
    Loading,
    Loaded {
        backend: String,
        init_ms: Option<f64>,
        /// Detected from the model's graph by the agent.
        precision: Option<webaccel_api::Precision>,
    },
    Failed(String),
}

impl ModelOnAgent {
    pub fn from_state(state: &ModelState) -> Self {
        match state {
            ModelState::Loaded(m) => Self::Loaded {
                backend: m.backend.clone(),
                init_ms: Some(m.init_ms()),
                precision: m.precision,
            },
            ModelState::Failed { reason } => Self::Failed(reason.clone()),
            // Pending (waiting for a browser) and loading.
            ModelState::Pending | ModelState::Loading => Self::Loading,
        }
    }
}

/// The agent API as the pool engine uses it.
pub trait AgentApi: Send + Sync + 'static {
    fn stats<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<AgentStats>>;
    fn capabilities<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<Capabilities>>;
    fn model<'a>(
        &'a self,
        ep: &'a Endpoint,
        name: &'a str,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>>;
    /// Starts loading a model and returns at once (the agent loads in the background):
    /// look again with [`AgentApi::model`]. A model the agent refuses outright (not
    /// ONNX, bad digest, backend unavailable) comes back as `Failed` with its reason.
    fn load<'a>(
        &'a self,
        ep: &'a Endpoint,
        spec: &'a ModelSpec,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>>;
    fn unload<'a>(&'a self, ep: &'a Endpoint, name: &'a str) -> BoxFuture<'a, AgentResult<()>>;
    fn drain<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<()>>;
}

/// One request to an agent, as a [`Transport`] carries it.
#[derive(Debug, Clone)]
pub struct AgentRequest<'a> {
    pub method: reqwest::Method,
    /// The endpoint's base URL (or, through a proxy, its base path) and the agent path.
    pub url: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: Option<Vec<u8>>,
    /// The agent path alone (`/v1/stats`), for errors.
    pub path: &'a str,
}

/// How requests reach agents: straight over HTTP (the default, [`DirectHttp`]), or through
/// something in between that a host provides (the Kubernetes API server's pod proxy, when
/// the operator runs outside the cluster). Answers the status and body, or why nothing came.
pub trait Transport: Send + Sync + 'static {
    fn send<'a>(&'a self, req: AgentRequest<'a>) -> BoxFuture<'a, Result<(u16, Vec<u8>), String>>;
}

/// Agents reached over HTTP at their own address.
#[derive(Debug, Clone)]
pub struct DirectHttp {
    http: reqwest::Client,
}

impl DirectHttp {
    pub fn new(timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .unwrap_or_default();
        Self { http }
    }
}

impl Transport for DirectHttp {
    fn send<'a>(&'a self, req: AgentRequest<'a>) -> BoxFuture<'a, Result<(u16, Vec<u8>), String>> {
        Box::pin(async move {
            let mut r = self.http.request(req.method, req.url).headers(req.headers);
            if let Some(body) = req.body {
                r = r
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body);
            }
            let resp = r.send().await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
            Ok((status, bytes.to_vec()))
        })
    }
}

/// The agents over HTTP.
#[derive(Clone)]
pub struct HttpAgents {
    transport: std::sync::Arc<dyn Transport>,
    /// Header the bearer token travels in: `authorization`, or another when a proxy in
    /// between (the API server's pod proxy) consumes `authorization` itself.
    token_header: reqwest::header::HeaderName,
}

impl std::fmt::Debug for HttpAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAgents")
            .field("token_header", &self.token_header)
            .finish_non_exhaustive()
    }
}

/// The header an agent also takes its token from (`x-webaccel-token: Bearer <token>`), for
/// proxies that consume `authorization` themselves, such as the API server's pod proxy.
pub const TOKEN_HEADER: &str = "x-webaccel-token";

impl HttpAgents {
    /// Agents reached directly, each call bounded by `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self::with_transport(DirectHttp::new(timeout))
    }

    /// Agents reached through `transport`.
    pub fn with_transport(transport: impl Transport) -> Self {
        Self {
            transport: std::sync::Arc::new(transport),
            token_header: reqwest::header::AUTHORIZATION,
        }
    }

    /// Sends the token in `header` instead of `authorization`.
    pub fn with_token_header(mut self, header: reqwest::header::HeaderName) -> Self {
        self.token_header = header;
        self
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        ep: &Endpoint,
        method: reqwest::Method,
        path: &str,
        body: Option<&ModelSpec>,
    ) -> AgentResult<(u16, Option<T>)> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", ep.token)) {
            headers.insert(self.token_header.clone(), v);
        }
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| AgentError::Malformed {
                path: path.to_owned(),
                message: e.to_string(),
            })?),
            None => None,
        };
        let req = AgentRequest {
            method,
            url: format!("{}{path}", ep.base_url),
            headers,
            body,
            path,
        };
        let (status, bytes) =
            self.transport
                .send(req)
                .await
                .map_err(|message| AgentError::Unreachable {
                    path: path.to_owned(),
                    message,
                })?;
        interpret(path, status, &bytes)
    }
}

/// An agent's answer to `path` as the contract reads it: a 2xx body (none when empty), or
/// the agent's error with its category. A body that is not the agent's error (a proxy
/// answered) gets its category from the status.
pub fn interpret<T: serde::de::DeserializeOwned>(
    path: &str,
    status: u16,
    bytes: &[u8],
) -> AgentResult<(u16, Option<T>)> {
    if (200..300).contains(&status) {
        if bytes.is_empty() {
            return Ok((status, None));
        }
        return serde_json::from_slice(bytes)
            .map(|v| (status, Some(v)))
            .map_err(|e| AgentError::Malformed {
                path: path.to_owned(),
                message: e.to_string(),
            });
    }
    let (category, message) = match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => (b.category, b.error),
        // Not the agent's error body: a proxy or something else answered.
        Err(_) => (
            match status {
                401 | 403 => ErrorCategory::Unauthorized,
                404 => ErrorCategory::ModelNotFound,
                502..=504 => ErrorCategory::BrowserUnavailable,
                _ => ErrorCategory::Internal,
            },
            String::from_utf8_lossy(bytes).chars().take(500).collect(),
        ),
    };
    Err(AgentError::Refused {
        path: path.to_owned(),
        status,
        category,
        message,
    })
}

fn required<T>(path: &str, v: Option<T>) -> AgentResult<T> {
    v.ok_or_else(|| AgentError::Malformed {
        path: path.to_owned(),
        message: "empty body".into(),
    })
}

impl AgentApi for HttpAgents {
    fn stats<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<AgentStats>> {
        Box::pin(async move {
            let (_, v) = self
                .call(ep, reqwest::Method::GET, "/v1/stats", None)
                .await?;
            required("/v1/stats", v)
        })
    }

    fn capabilities<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<Capabilities>> {
        Box::pin(async move {
            let (_, v) = self
                .call(ep, reqwest::Method::GET, "/v1/capabilities", None)
                .await?;
            required("/v1/capabilities", v)
        })
    }

    fn model<'a>(
        &'a self,
        ep: &'a Endpoint,
        name: &'a str,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>> {
        Box::pin(async move {
            let path = format!("/v1/models/{name}");
            match self
                .call::<ModelDescription>(ep, reqwest::Method::GET, &path, None)
                .await
            {
                Ok((_, d)) => Ok(ModelOnAgent::from_state(&required(&path, d)?.status)),
                Err(AgentError::Refused {
                    category: ErrorCategory::ModelNotFound,
                    ..
                }) => Ok(ModelOnAgent::Absent),
                Err(e) => Err(e),
            }
        })
    }

    fn load<'a>(
        &'a self,
        ep: &'a Endpoint,
        spec: &'a ModelSpec,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>> {
        Box::pin(async move {
            let path = "/v1/models?wait=false";
            match self
                .call::<ModelDescription>(ep, reqwest::Method::POST, path, Some(spec))
                .await
            {
                Ok((_, Some(d))) => Ok(ModelOnAgent::from_state(&d.status)),
                Ok((_, None)) => Ok(ModelOnAgent::Loading),
                // Refused because of the model itself (not ONNX, bad digest, backend
                // unavailable, bad spec): the model's fault, with the agent's reason.
                Err(AgentError::Refused {
                    category: ErrorCategory::ModelLoadFailed | ErrorCategory::BadRequest,
                    message,
                    ..
                }) => Ok(ModelOnAgent::Failed(message)),
                Err(e) => Err(e),
            }
        })
    }

    fn unload<'a>(&'a self, ep: &'a Endpoint, name: &'a str) -> BoxFuture<'a, AgentResult<()>> {
        Box::pin(async move {
            let path = format!("/v1/models/{name}");
            match self
                .call::<serde_json::Value>(ep, reqwest::Method::DELETE, &path, None)
                .await
            {
                Ok(_)
                | Err(AgentError::Refused {
                    category: ErrorCategory::ModelNotFound,
                    ..
                }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn drain<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<()>> {
        Box::pin(async move {
            self.call::<serde_json::Value>(ep, reqwest::Method::POST, "/v1/drain", None)
                .await
                .map(|_| ())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_agent_states_are_retryable() {
        let refused = |category| AgentError::Refused {
            path: "/v1/models".into(),
            status: 503,
            category,
            message: "x".into(),
        };
        assert!(refused(ErrorCategory::BrowserUnavailable).retryable());
        assert!(!refused(ErrorCategory::Unauthorized).retryable());
        assert!(
            AgentError::Unreachable {
                path: "/".into(),
                message: "refused".into()
            }
            .retryable()
        );
        assert_eq!(refused(ErrorCategory::Unauthorized).label(), "unauthorized");
    }
}
