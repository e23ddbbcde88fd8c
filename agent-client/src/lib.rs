//! The one client of the node agent's HTTP API: load (`/v1/stats`), capabilities, the
//! models it holds, model load and unload, drain, and a model's KServe metadata, over
//! the agent's typed contract ([`webaccel_api::agent`]). The engine, the operator, local
//! mode, the gateway's discovery and the benches all ask agents through it.
//!
//! Requests travel over a [`Transport`]: straight HTTP ([`DirectHttp`], feature
//! `reqwest`), or whatever a host puts in between (the operator's API-server pod proxy).
//! [`AgentApi`] is the part the engine decides with, so tests stand in for agents.
//!
//! Errors keep the agent's category and `retryable` flag: a 401 (token rotated) or a 503
//! (browser restarting) is the agent's state, not the model's fault, and must never be
//! taken for a refused model.

mod client;
mod error;
mod transport;

pub use client::HttpAgents;
pub use error::{AgentError, AgentResult, interpret};
#[cfg(feature = "reqwest")]
pub use transport::DirectHttp;
pub use transport::{AgentRequest, Transport, TransportError};
pub use webaccel_api::agent::TOKEN_HEADER;

use futures::future::BoxFuture;
use webaccel_api::agent::{AgentStats, Capabilities, ModelDescription, ModelSpec, ModelState};

/// Where one agent listens and the token it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The browser it belongs to (a pod's name, a local process's name).
    pub pod: String,
    pub base_url: String,
    /// `None` for an agent that asks for none.
    pub token: Option<String>,
}

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
        /// What it was loaded from: the load's URI and the file's digest (empty where the
        /// agent did not say), so a host can tell a copy of a file since replaced.
        uri: String,
        sha256: String,
        /// What it takes of a browser's memory: what loading it added, as the agent
        /// measured it, plus what a decoder's KV cache may grow to (its reservation).
        memory_bytes: Option<u64>,
        /// How it serves (batching, precision, generation, ensemble steps), so a host can
        /// tell a copy loaded with a spec since changed. `None` where unknown.
        settings: Option<Box<webaccel_api::agent::ServingSettings>>,
    },
    Failed(String),
}

impl ModelOnAgent {
    /// What a model description (`GET /v1/repository/models/{name}`, a load's answer) says.
    pub fn from_description(d: &ModelDescription) -> Self {
        match &d.status {
            ModelState::Loaded(m) => Self::Loaded {
                backend: m.backend.clone(),
                init_ms: Some(m.init_ms()),
                precision: m.precision,
                uri: d.spec.uri.clone(),
                sha256: m.sha256.clone(),
                memory_bytes: match (m.memory_bytes, m.kv_reserve_bytes) {
                    (Some(used), reserve) => Some(used.saturating_add(reserve.unwrap_or(0))),
                    (None, reserve) => reserve,
                },
                settings: Some(Box::new(d.spec.serving())),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn described(memory: Option<u64>, reserve: Option<u64>) -> Option<u64> {
        let d: ModelDescription = serde_json::from_value(serde_json::json!({
            "name": "llm",
            "spec": {"name": "llm", "uri": "https://m/llm.onnx"},
            "status": {
                "state": "loaded", "sha256": "ab", "bytes": 1, "backend": "wasm",
                "inputs": [], "outputs": [], "fetch_ms": 0.0, "page_fetch_ms": 0.0,
                "create_ms": 1.0, "memory_bytes": memory, "kv_reserve_bytes": reserve,
            },
        }))
        .unwrap();
        match ModelOnAgent::from_description(&d) {
            ModelOnAgent::Loaded { memory_bytes, .. } => memory_bytes,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_decoders_place_is_what_its_load_took_and_what_its_cache_may_grow_to() {
        assert_eq!(described(Some(100), None), Some(100));
        assert_eq!(described(Some(100), Some(50)), Some(150));
        assert_eq!(
            described(None, Some(50)),
            Some(50),
            "use unknown: the reservation at least"
        );
        assert_eq!(described(None, None), None);
    }
}
