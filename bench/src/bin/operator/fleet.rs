//! The benchmark's stand-ins: the test kit's fake API server as a benchmark wants it, and
//! agents that answer from memory.

use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use serde_json::Value;
use webaccel_agent_client::{AgentApi, AgentResult, Endpoint, ModelOnAgent};
use webaccel_api::agent::{AgentStats, Capabilities, ModelSpec};
use webaccel_testkit::kube::{ApiServer, Options};

/// The fake API server of a benchmark: a kubelet stand-in, real watch timeouts, and
/// request counts only (a run makes millions of requests).
pub fn bench_options() -> Options {
    Options {
        log_calls: false,
        ..Options::default()
    }
}

pub fn bench_api(objects: Vec<Value>) -> ApiServer {
    ApiServer::new(objects, bench_options())
}

/// Agents answering from memory: every browser reports the same load, which a trial sets,
/// and holds model `minilm`.
#[derive(Default)]
pub struct Agents {
    pub load: AtomicU64,
    pub calls: AtomicU64,
}

impl AgentApi for Agents {
    fn stats<'a>(&'a self, _ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<AgentStats>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let load = self.load.load(Ordering::Relaxed);
        Box::pin(async move {
            Ok(AgentStats {
                healthy: true,
                ready: true,
                outstanding: load,
                ..AgentStats::default()
            })
        })
    }
    fn capabilities<'a>(&'a self, _ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<Capabilities>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(async {
            Ok(Capabilities::synthetic(
                &[webaccel_api::Backend::Wasm],
                "",
                "",
            ))
        })
    }
    fn model<'a>(
        &'a self,
        _: &'a Endpoint,
        name: &'a str,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            Ok(if name == "minilm" {
                ModelOnAgent::Loaded {
                    backend: "wasm".into(),
                    init_ms: Some(40.0),
                    precision: Some(webaccel_api::Precision::Fp32),
                    uri: String::new(),
                    sha256: String::new(),
                    memory_bytes: None,
                    settings: None,
                }
            } else {
                ModelOnAgent::Absent
            })
        })
    }
    fn load<'a>(
        &'a self,
        _: &'a Endpoint,
        _: &'a ModelSpec,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(ModelOnAgent::Loading) })
    }
    fn unload<'a>(&'a self, _: &'a Endpoint, _: &'a str) -> BoxFuture<'a, AgentResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn drain<'a>(&'a self, _: &'a Endpoint) -> BoxFuture<'a, AgentResult<()>> {
        Box::pin(async { Ok(()) })
    }
}
