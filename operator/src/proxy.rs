//! Agents reached through the Kubernetes API server's pod proxy
//! (`/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/...`), for an operator that runs
//! outside the cluster (a laptop against kind or minikube), where pod IPs lead nowhere.
//! Requests go through the operator's own kube client (its credentials, its TLS); the API
//! server consumes `authorization` itself, so the agents' token travels in
//! `x-webaccel-token`, which it passes on.

use std::time::Duration;

use futures::future::BoxFuture;
use kube::Client;
use kube::client::Body;
use webaccel_agent_client::{AgentRequest, HttpAgents, TOKEN_HEADER, Transport, TransportError};

/// The API server's pod proxy as a transport for the agent client.
#[derive(Clone)]
pub struct ApiServerProxy {
    client: Client,
    timeout: Duration,
}

impl std::fmt::Debug for ApiServerProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServerProxy")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ApiServerProxy {
    pub fn new(client: Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    /// The agent client over this proxy, with the token in `x-webaccel-token`.
    pub fn agents(client: Client, timeout: Duration) -> HttpAgents {
        HttpAgents::with_transport(Self::new(client, timeout))
            .with_token_header(http::HeaderName::from_static(TOKEN_HEADER))
    }
}

impl Transport for ApiServerProxy {
    fn send<'a>(
        &'a self,
        req: AgentRequest<'a>,
    ) -> BoxFuture<'a, Result<(u16, Vec<u8>), TransportError>> {
        Box::pin(async move {
            let mut builder = http::Request::builder()
                .method(req.method)
                .uri(req.url.as_str());
            for (k, v) in &req.headers {
                builder = builder.header(k, v);
            }
            let body = match req.body {
                Some(b) => {
                    builder = builder.header(http::header::CONTENT_TYPE, "application/json");
                    Body::from(b)
                }
                None => Body::from(Vec::new()),
            };
            let request = builder.body(body).map_err(TransportError::failed)?;
            let exchange = async {
                let resp = self
                    .client
                    .send(request)
                    .await
                    .map_err(TransportError::failed)?;
                let status = resp.status().as_u16();
                let bytes = resp
                    .into_body()
                    .collect_bytes()
                    .await
                    .map_err(TransportError::failed)?;
                Ok((status, bytes.to_vec()))
            };
            tokio::time::timeout(self.timeout, exchange)
                .await
                .map_err(|_| TransportError::Timeout(self.timeout))?
        })
    }
}
