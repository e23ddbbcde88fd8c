//! [`HttpAgents`]: the agent's HTTP API over a [`Transport`], each answer read as the
//! contract says ([`crate::interpret`]).

use std::sync::Arc;

use futures::future::BoxFuture;
use http::Method;
use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use webaccel_api::ErrorCategory;
use webaccel_api::agent::{AgentStats, Capabilities, ModelDescription, ModelList, ModelSpec};
use webaccel_api::oip::ModelMetadata;

use crate::error::{AgentError, AgentResult, interpret};
use crate::transport::{AgentRequest, Transport};
use crate::{AgentApi, Endpoint, ModelOnAgent};

/// The agents over HTTP.
#[derive(Clone)]
pub struct HttpAgents {
    transport: Arc<dyn Transport>,
    /// Header the bearer token travels in: `authorization`, or another when a proxy in
    /// between (the API server's pod proxy) consumes `authorization` itself.
    token_header: HeaderName,
}

impl std::fmt::Debug for HttpAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAgents")
            .field("token_header", &self.token_header)
            .finish_non_exhaustive()
    }
}

impl HttpAgents {
    /// Agents reached directly over HTTP, each call bounded by `timeout`.
    #[cfg(feature = "reqwest")]
    pub fn new(timeout: std::time::Duration) -> Self {
        Self::with_transport(crate::DirectHttp::new(timeout))
    }

    /// Agents reached through `transport`.
    pub fn with_transport(transport: impl Transport) -> Self {
        Self {
            transport: Arc::new(transport),
            token_header: AUTHORIZATION,
        }
    }

    /// Sends the token in `header` instead of `authorization`.
    pub fn with_token_header(mut self, header: HeaderName) -> Self {
        self.token_header = header;
        self
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        ep: &Endpoint,
        method: Method,
        path: &str,
        body: Option<&ModelSpec>,
    ) -> AgentResult<(u16, Option<T>)> {
        let mut headers = HeaderMap::new();
        if let Some(token) = &ep.token
            && let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
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
                .map_err(|e| AgentError::Unreachable {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
        interpret(path, status, &bytes)
    }

    /// A GET whose answer must have a body.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        ep: &Endpoint,
        path: &str,
    ) -> AgentResult<T> {
        let (_, v) = self.call(ep, Method::GET, path, None).await?;
        v.ok_or_else(|| AgentError::Malformed {
            path: path.to_owned(),
            message: "empty body".into(),
        })
    }

    /// Every model the agent holds, in any state (`GET /v1/repository/models`).
    pub async fn models(&self, ep: &Endpoint) -> AgentResult<ModelList> {
        self.get(ep, "/v1/repository/models").await
    }

    /// The models that generate text there, as the OpenAI API lists them
    /// (`GET /v1/models`).
    pub async fn generation_models(
        &self,
        ep: &Endpoint,
    ) -> AgentResult<webaccel_api::openai::ModelList> {
        self.get(ep, "/v1/models").await
    }

    /// A model's KServe v2 metadata (`GET /v2/models/{name}`): its inputs and outputs.
    pub async fn model_metadata(&self, ep: &Endpoint, name: &str) -> AgentResult<ModelMetadata> {
        self.get(ep, &format!("/v2/models/{name}")).await
    }
}

impl AgentApi for HttpAgents {
    fn stats<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<AgentStats>> {
        Box::pin(self.get(ep, "/v1/stats"))
    }

    fn capabilities<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<Capabilities>> {
        Box::pin(self.get(ep, "/v1/capabilities"))
    }

    fn model<'a>(
        &'a self,
        ep: &'a Endpoint,
        name: &'a str,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>> {
        Box::pin(async move {
            match self
                .get::<ModelDescription>(ep, &format!("/v1/repository/models/{name}"))
                .await
            {
                Ok(d) => Ok(ModelOnAgent::from_description(&d)),
                Err(e) if e.category() == Some(ErrorCategory::ModelNotFound) => {
                    Ok(ModelOnAgent::Absent)
                }
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
            let path = "/v1/repository/models?wait=false";
            match self
                .call::<ModelDescription>(ep, Method::POST, path, Some(spec))
                .await
            {
                Ok((_, Some(d))) => Ok(ModelOnAgent::from_description(&d)),
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
            let path = format!("/v1/repository/models/{name}");
            match self
                .call::<serde_json::Value>(ep, Method::DELETE, &path, None)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if e.category() == Some(ErrorCategory::ModelNotFound) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn drain<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<()>> {
        Box::pin(async move {
            self.call::<serde_json::Value>(ep, Method::POST, "/v1/drain", None)
                .await
                .map(|_| ())
        })
    }
}
