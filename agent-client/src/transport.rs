//! How requests reach agents: straight over HTTP ([`DirectHttp`], feature `reqwest`), or
//! through something in between that a host provides (the Kubernetes API server's pod
//! proxy, when the operator runs outside the cluster).

use std::time::Duration;

use futures::future::BoxFuture;

/// One request to an agent, as a [`Transport`] carries it.
#[derive(Debug, Clone)]
pub struct AgentRequest<'a> {
    pub method: http::Method,
    /// The endpoint's base URL (or, through a proxy, its base path) and the agent path.
    pub url: String,
    pub headers: http::HeaderMap,
    /// A JSON body.
    pub body: Option<Vec<u8>>,
    /// The agent path alone (`/v1/stats`), for errors.
    pub path: &'a str,
}

/// Why no answer came back over a [`Transport`] (the client reports it as the agent
/// being unreachable, in these words).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Nothing came back within the transport's own deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The request could not be sent or its answer read (connection refused or reset,
    /// TLS, a malformed request): the underlying client's error.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl TransportError {
    /// The underlying client's error.
    pub fn failed(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Failed(Box::new(e))
    }
}

/// Carries [`AgentRequest`]s: answers the status and body, or why nothing came.
pub trait Transport: Send + Sync + 'static {
    fn send<'a>(
        &'a self,
        req: AgentRequest<'a>,
    ) -> BoxFuture<'a, Result<(u16, Vec<u8>), TransportError>>;
}

/// Agents reached over HTTP at their own address.
#[cfg(feature = "reqwest")]
#[derive(Debug, Clone)]
pub struct DirectHttp {
    http: reqwest::Client,
}

#[cfg(feature = "reqwest")]
impl DirectHttp {
    /// Every call bounded by `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .unwrap_or_default();
        Self { http }
    }
}

#[cfg(feature = "reqwest")]
impl Transport for DirectHttp {
    fn send<'a>(
        &'a self,
        req: AgentRequest<'a>,
    ) -> BoxFuture<'a, Result<(u16, Vec<u8>), TransportError>> {
        Box::pin(async move {
            let mut r = self.http.request(req.method, req.url).headers(req.headers);
            if let Some(body) = req.body {
                r = r
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(body);
            }
            let resp = r.send().await.map_err(TransportError::failed)?;
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.map_err(TransportError::failed)?;
            Ok((status, bytes.to_vec()))
        })
    }
}
