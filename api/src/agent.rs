//! The agent's HTTP contract, one serde type per message, shared by the agent (which
//! writes them) and everyone who reads them: the operator, the gateway, local mode and
//! the metrics recorder. `/v1/stats` is [`AgentStats`], `/v1/capabilities` is
//! [`Capabilities`], `/v1/repository/models` is [`ModelList`] of [`ModelDescription`], and a model
//! load (`POST /v1/repository/models`, or `--model` on the command line) is a [`ModelSpec`]. Errors
//! are [`crate::oip::ErrorBody`], whose category says whether to retry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, WebNnDevice};
use crate::tensor::DataType;

mod capabilities;
mod ensemble;
mod spec;

pub use capabilities::{
    Adapter, BrowserSummary, Capabilities, PageWorkers, RuntimeStart, WasmSupport, WebGpuSupport,
    WebNnSupport,
};
pub use ensemble::{Ensemble, EnsembleError, EnsembleIo, EnsembleStep};
pub use spec::{ModelSpec, ServingSettings, SpecError};

/// A second header the agent takes its token from (`x-webaccel-token: Bearer <token>`),
/// for a proxy in between that consumes `authorization` itself: the Kubernetes API
/// server's pod proxy, through which an operator outside the cluster reaches the agents.
pub const TOKEN_HEADER: &str = "x-webaccel-token";

/// An input or output of a loaded model, as the runtime reports it. `-1` marks a
/// dynamic dimension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IoMeta {
    pub name: String,
    /// `None` for types webaccel cannot carry (strings, sequences).
    pub datatype: Option<DataType>,
    pub ort_type: String,
    pub shape: Vec<i64>,
}

/// The requests an agent sent through the page after a load, before it counted the
/// model loaded (`--warmup-requests`), and the first and last one's milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PathWarmup {
    pub requests: u32,
    pub first_ms: f64,
    pub last_ms: f64,
}

/// A model that is loaded in a page, with what loading it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadedModel {
    pub sha256: String,
    pub bytes: u64,
    /// The execution provider running it: `wasm`, `webgpu` or `webnn:<device>`.
    pub backend: String,
    /// The precision detected from the model's graph, and the evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<crate::Precision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision_reason: Option<String>,
    pub inputs: Vec<IoMeta>,
    pub outputs: Vec<IoMeta>,
    /// Milliseconds: agent fetch (0 on a cache hit), page fetch, session creation,
    /// first run (warm-up), steady run (median after warm-up).
    pub fetch_ms: f64,
    pub page_fetch_ms: f64,
    pub create_ms: f64,
    pub warmup_ms: Option<f64>,
    pub steady_ms: Option<f64>,
    /// The request path's warm-up, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_warmup: Option<PathWarmup>,
    /// With `backend=auto`: every candidate measured, and why the others lost or failed.
    #[serde(default)]
    pub candidates: Option<Vec<BackendCandidate>>,
    /// Whether requests are joined into batches, when the spec asks for batching.
    /// (Boxed: it is rare, and `ModelState` carries this struct inline.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<Box<BatchingStatus>>,
    /// What the load added to the memory of the agent's browsers (their processes'
    /// proportional set size after the load and warm-up, less before); `None` where the
    /// agent cannot read it (not Linux). What placement packs by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// A decoder's: what the KV cache of its `maxSequences` sequences at the full context
    /// takes at its peak (see `node-agent`'s `Generator::kv_reserve_bytes`). Not yet in
    /// `memory_bytes` (the load's warm-up holds no such cache), but placement counts it
    /// as taken, as vLLM reserves its cache up front: a browser that cannot hold it is not
    /// given the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_reserve_bytes: Option<u64>,
}

/// One backend `backend=auto` tried on a model: what it measured, or why it could not
/// run the model (`ok` false, `error` says why).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendCandidate {
    /// `wasm`, `webgpu` or `webnn:<device>`.
    pub backend: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steady_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Dynamic batching of a loaded model, when its spec asks for it (`max_batch_size` > 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchingStatus {
    /// False when the model cannot be batched; `reason` says why, and requests run one
    /// at a time.
    pub enabled: bool,
    pub max_batch_size: u32,
    pub max_queue_delay_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl LoadedModel {
    /// Session creation plus warm-up: what it took to make the model ready.
    pub fn init_ms(&self) -> f64 {
        self.create_ms + self.warmup_ms.unwrap_or(0.0)
    }
}

/// Where a model is on an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ModelState {
    /// Waiting for a browser to load into.
    Pending,
    Loading,
    Loaded(Box<LoadedModel>),
    Failed {
        reason: String,
    },
}

impl ModelState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Loading => "loading",
            Self::Loaded(_) => "loaded",
            Self::Failed { .. } => "failed",
        }
    }
}

/// One model on an agent: `GET /v1/repository/models/{name}`, and the answer to a load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelDescription {
    pub name: String,
    pub spec: ModelSpec,
    pub status: ModelState,
}

/// `GET /v1/repository/models`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub models: Vec<ModelDescription>,
}

impl ModelList {
    /// The names of the models loaded and serving.
    pub fn loaded(&self) -> impl Iterator<Item = &str> {
        self.models
            .iter()
            .filter(|m| matches!(m.status, ModelState::Loaded(_)))
            .map(|m| m.name.as_str())
    }
}

/// Per-model figures in `/v1/stats` (over the agent's recent window).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStats {
    /// Requests since the agent started.
    pub requests: u64,
    /// Requests of this model inside the agent now: running, queued for a run, or (for
    /// a text-generation model) generating or waiting for a place in the page. The
    /// per-model autoscaler sizes the model's replicas by it.
    #[serde(default)]
    pub outstanding: u64,
    pub errors: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub compute_p50_ms: Option<f64>,
    /// Runs of the model in the page that joined more than one request (dynamic
    /// batching), and the requests those runs served.
    #[serde(default)]
    pub batches: u64,
    #[serde(default)]
    pub batched_requests: u64,
    /// The most requests one run has joined so far (0 before any batch).
    #[serde(default)]
    pub max_batch_requests: u64,
    /// For a model that generates text: its generations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationStats>,
}

/// A text-generating model's figures in `/v1/stats`: generations since the agent
/// started, the sequences running now, and recent times (the last 1024 generations).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationStats {
    pub generations: u64,
    pub errors: u64,
    /// Ended because their client went away or cancelled.
    pub cancelled: u64,
    /// Running in the page now.
    pub sequences: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    /// The median gap between tokens, per generation; the median and 99th percentile of
    /// those.
    pub inter_token_p50_ms: Option<f64>,
    pub inter_token_p99_ms: Option<f64>,
    pub tokens_per_s_p50: Option<f64>,
}

/// Where the agent's browser is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrowserState {
    #[default]
    Starting,
    LoadingModels,
    Ready,
    Restarting,
    Stopped,
}

/// The agent's browser as `/v1/stats` reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BrowserStatus {
    pub state: BrowserState,
    pub generation: u64,
    pub pid: Option<u32>,
    pub version: String,
    pub restarts: u64,
    pub last_restart_reason: Option<String>,
    /// From detecting a failure to serving again, for the last restart.
    pub last_recovery_ms: Option<f64>,
    /// From launching the first browser to its page connecting back.
    pub cold_start_ms: Option<f64>,
    /// Launch attempts that failed in a row (0 when the browser is up).
    pub failed_launches: u32,
    pub last_launch_error: Option<String>,
    /// The standby browser's process, when one is ready.
    pub standby_pid: Option<u32>,
    /// Standby browsers that died while waiting and were replaced.
    pub standby_replacements: u64,
}

/// `GET /v1/stats`: what the operator scales and heals by and the gateway routes by.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStats {
    /// False when the agent should be restarted (launches keep failing, or its
    /// supervisor is stuck); `unhealthy_reason` says why.
    pub healthy: bool,
    #[serde(default)]
    pub unhealthy_reason: Option<String>,
    pub ready: bool,
    pub draining: bool,
    /// The pool and pod this agent says it belongs to.
    #[serde(default)]
    pub pool: String,
    #[serde(default)]
    pub pod: String,
    /// Requests inside the agent: running, queued, or waiting for a browser.
    pub outstanding: u64,
    pub in_flight: u64,
    pub queued: u64,
    pub max_in_flight: u64,
    pub heartbeat_rtt_ms: Option<f64>,
    pub models: BTreeMap<String, ModelStats>,
    pub errors_by_category: BTreeMap<String, u64>,
    pub browser: BrowserStatus,
    /// Where the agent's metric rows are (written, spooled); for people, not programs.
    #[serde(default)]
    pub metrics: serde_json::Value,
    /// The serving page's workers (`--page-workers`), from its last heartbeat: one entry
    /// per onnxruntime-web instance. Empty before the first heartbeat.
    #[serde(default)]
    pub page_workers: Vec<PageWorker>,
    /// The memory of the agent's browsers (every process it launched, with their
    /// children: proportional set size), read at most every 2 s; `None` off Linux.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser_memory_bytes: Option<u64>,
    /// The KV caches its loaded decoders may grow to (the sum of their
    /// `kv_reserve_bytes`): memory promised though perhaps not used yet. Counted whole,
    /// so while sequences run the room left is understated by what their caches hold.
    #[serde(default, skip_serializing_if = "spec::is_zero")]
    pub reserved_bytes: u64,
    /// Where the slowest 1% of the last minute's requests spent their time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<crate::timing::TailReport>,
}

/// One onnxruntime-web instance of the serving page (a Web Worker, or the page itself
/// when it runs one), as the page reports it with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageWorker {
    /// Requests it was given since the page started.
    pub runs: u64,
    /// Times it stopped answering (or died) and was replaced by a new worker.
    pub restarts: u64,
    /// Running a request now.
    pub busy: bool,
    /// Started with every model loaded (false while a replacement loads them).
    pub ready: bool,
    /// Text generations it is running.
    #[serde(default)]
    pub sequences: u32,
}

impl AgentStats {
    /// The memory its browsers use or have promised: what they use now plus the KV
    /// caches its decoders may grow to. `None` where the use is unknown.
    pub fn committed_bytes(&self) -> Option<u64> {
        self.browser_memory_bytes
            .map(|used| used.saturating_add(self.reserved_bytes))
    }

    /// Requests this browser computes at once: its page workers (1 when it has not said).
    /// The autoscaler's notion of one browser's capacity follows it.
    pub fn parallelism(&self) -> u64 {
        (self.page_workers.len() as u64).max(1)
    }

    /// The load an autoscaler sizes by: what runs plus what waits.
    pub fn load(&self) -> u64 {
        self.outstanding.max(self.in_flight + self.queued)
    }

    /// Requests served since the agent started (for recycling after N requests).
    pub fn requests_served(&self) -> u64 {
        self.models.values().map(|m| m.requests).sum()
    }
}

/// What `backend=auto` and a spec's backend resolve to when the agent reports it.
pub fn backend_of(label: &str) -> Option<(Backend, Option<WebNnDevice>)> {
    match label.split_once(':') {
        Some((b, dev)) => Some((b.parse().ok()?, dev.parse().ok())),
        None => Some((label.parse().ok()?, None)),
    }
}

#[cfg(test)]
mod tests;
