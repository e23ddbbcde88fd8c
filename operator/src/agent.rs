//! Talking to the node agents in the browser pods: load (`/v1/stats`), capabilities, model
//! load and unload, and drain. Behind a trait so controller tests can stand in for agents.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::Value;
use webaccel_api::Backend;

/// Where one agent listens and the token it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub pod: String,
    pub base_url: String,
    pub token: String,
}

/// The part of an agent's `/v1/stats` the operator acts on.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct AgentStats {
    /// False after repeated failed browser launches: the pod should be replaced.
    #[serde(default = "yes")]
    pub healthy: bool,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub draining: bool,
    /// Requests inside the agent: running, queued, or waiting for a browser.
    #[serde(default)]
    pub outstanding: u64,
    #[serde(default)]
    pub in_flight: u64,
    #[serde(default)]
    pub queued: u64,
    #[serde(default)]
    pub models: BTreeMap<String, ModelCounts>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ModelCounts {
    #[serde(default)]
    pub count: u64,
}

impl AgentStats {
    /// The load the autoscaler sizes by: what runs plus what waits.
    pub fn load(&self) -> u64 {
        self.outstanding.max(self.in_flight + self.queued)
    }

    /// Requests served since the agent started (for recycling after N requests).
    pub fn requests_served(&self) -> u64 {
        self.models.values().map(|m| m.count).sum()
    }
}

/// What a browser can run, from the agent's `/v1/capabilities`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capabilities {
    pub backends: Vec<Backend>,
    /// The WebGPU adapter, with ` (software)` for a fallback adapter such as SwiftShader.
    pub adapter: Option<String>,
}

impl Capabilities {
    /// Reads the agent's capability report. Backends are listed only when the browser said
    /// they work: WebGPU when an adapter was found, WebNN when any device type had a context.
    pub fn from_report(report: &Value) -> Self {
        let mut backends = Vec::new();
        let mut adapter = None;
        if report["webgpu"]["available"].as_bool() == Some(true) {
            backends.push(Backend::Webgpu);
            let a = &report["webgpu"]["adapter"];
            let name = [
                a["vendor"].as_str(),
                a["architecture"].as_str(),
                a["description"].as_str(),
            ]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
            let kind = a["kind"].as_str().unwrap_or("unknown");
            adapter = Some(if name.is_empty() {
                format!("unnamed ({kind})")
            } else {
                format!("{name} ({kind})")
            });
        }
        if let Some(devices) = report["webnn"].as_object()
            && devices
                .values()
                .any(|d| d["available"].as_bool() == Some(true))
        {
            backends.push(Backend::Webnn);
        }
        // WebAssembly is onnxruntime-web's baseline: any browser that started the runtime has it.
        if report.get("wasm").is_some() {
            backends.push(Backend::Wasm);
        }
        Self { backends, adapter }
    }

    /// `wasm,webgpu(software)` style, for the pool's Backends column.
    pub fn summary(&self) -> Vec<String> {
        self.backends
            .iter()
            .map(|b| match (b, &self.adapter) {
                (Backend::Webgpu, Some(a)) if a.ends_with("(software)") => {
                    "webgpu(software)".into()
                }
                _ => b.as_str().to_owned(),
            })
            .collect()
    }
}

/// What the agent said about one model on it.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelOnAgent {
    Absent,
    Loading,
    Loaded {
        backend: String,
        init_ms: Option<f64>,
    },
    Failed(String),
}

impl ModelOnAgent {
    /// Reads one entry of the agent's `GET /v1/models/{name}` (or the 201 answer to a load):
    /// `{"name", "spec", "status": {"state": "loaded", "backend", "create_ms", "warmup_ms"}}`.
    pub fn from_description(d: &Value) -> Self {
        let status = &d["status"];
        match status["state"].as_str().unwrap_or("") {
            "loaded" => Self::Loaded {
                backend: status["backend"].as_str().unwrap_or("unknown").to_owned(),
                init_ms: status["create_ms"]
                    .as_f64()
                    .map(|c| c + status["warmup_ms"].as_f64().unwrap_or(0.0)),
            },
            "failed" => Self::Failed(
                status["reason"]
                    .as_str()
                    .unwrap_or("the agent reported a failed load")
                    .to_owned(),
            ),
            "" => Self::Absent,
            // "pending" (waiting for a browser) and "loading".
            _ => Self::Loading,
        }
    }
}

/// A model the operator asks an agent to load; the JSON of the agent's `POST /v1/models`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LoadRequest {
    pub name: String,
    pub uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub backend: Backend,
    pub warmup: bool,
    pub task: String,
    pub precision: String,
}

pub type AgentResult<T> = Result<T, String>;

/// The agent API as the controllers use it.
pub trait AgentApi: Send + Sync + 'static {
    fn stats<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<AgentStats>>;
    fn capabilities<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<Capabilities>>;
    fn model<'a>(
        &'a self,
        ep: &'a Endpoint,
        name: &'a str,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>>;
    fn load<'a>(
        &'a self,
        ep: &'a Endpoint,
        req: &'a LoadRequest,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>>;
    fn unload<'a>(&'a self, ep: &'a Endpoint, name: &'a str) -> BoxFuture<'a, AgentResult<()>>;
    fn drain<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<()>>;
}

/// The agents over HTTP.
#[derive(Debug, Clone)]
pub struct HttpAgents {
    http: reqwest::Client,
    load_timeout: Duration,
}

impl HttpAgents {
    pub fn new(timeout: Duration, load_timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .unwrap_or_default();
        Self { http, load_timeout }
    }

    async fn call(
        &self,
        ep: &Endpoint,
        method: reqwest::Method,
        path: &str,
        body: Option<&LoadRequest>,
        timeout: Option<Duration>,
    ) -> AgentResult<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", ep.base_url))
            .bearer_auth(&ep.token);
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(|e| format!("{path}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| format!("{path}: {e}"))?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }
}

fn refused(path: &str, status: u16, body: &Value) -> String {
    let reason = body["error"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string());
    format!("{path}: HTTP {status}: {reason}")
}

impl AgentApi for HttpAgents {
    fn stats<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<AgentStats>> {
        Box::pin(async move {
            match self
                .call(ep, reqwest::Method::GET, "/v1/stats", None, None)
                .await?
            {
                (200, v) => serde_json::from_value(v).map_err(|e| format!("/v1/stats: {e}")),
                (s, v) => Err(refused("/v1/stats", s, &v)),
            }
        })
    }

    fn capabilities<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<Capabilities>> {
        Box::pin(async move {
            match self
                .call(ep, reqwest::Method::GET, "/v1/capabilities", None, None)
                .await?
            {
                (200, v) => Ok(Capabilities::from_report(&v)),
                (s, v) => Err(refused("/v1/capabilities", s, &v)),
            }
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
                .call(ep, reqwest::Method::GET, &path, None, None)
                .await?
            {
                (200, v) => Ok(ModelOnAgent::from_description(&v)),
                (404, _) => Ok(ModelOnAgent::Absent),
                (s, v) => Err(refused(&path, s, &v)),
            }
        })
    }

    fn load<'a>(
        &'a self,
        ep: &'a Endpoint,
        req: &'a LoadRequest,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>> {
        Box::pin(async move {
            let timeout = Some(self.load_timeout);
            match self
                .call(ep, reqwest::Method::POST, "/v1/models", Some(req), timeout)
                .await?
            {
                (201, v) => Ok(ModelOnAgent::from_description(&v)),
                (202, _) => Ok(ModelOnAgent::Loading),
                // A refusal (bad file, digest mismatch, backend unavailable) is the model's
                // fault, not the agent's: it becomes FailedToLoad with the agent's reason.
                (s, v) if (400..500).contains(&s) => {
                    Ok(ModelOnAgent::Failed(refused("load", s, &v)))
                }
                (s, v) => Err(refused("/v1/models", s, &v)),
            }
        })
    }

    fn unload<'a>(&'a self, ep: &'a Endpoint, name: &'a str) -> BoxFuture<'a, AgentResult<()>> {
        Box::pin(async move {
            let path = format!("/v1/models/{name}");
            match self
                .call(ep, reqwest::Method::DELETE, &path, None, None)
                .await?
            {
                (204 | 200 | 404, _) => Ok(()),
                (s, v) => Err(refused(&path, s, &v)),
            }
        })
    }

    fn drain<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<()>> {
        Box::pin(async move {
            match self
                .call(ep, reqwest::Method::POST, "/v1/drain", None, None)
                .await?
            {
                (200, _) => Ok(()),
                (s, v) => Err(refused("/v1/drain", s, &v)),
            }
        })
    }
}
