//! The rows webaccel records. Times are milliseconds since the epoch (see
//! [`crate::server::Features::time_type`]); every row carries a random `row_id` so a
//! batch replayed after an ambiguous failure collapses instead of counting twice.

use serde::{Deserialize, Serialize};

/// A row of one of webaccel's tables.
pub trait TableRow:
    clickhouse::RowOwned
    + clickhouse::RowWrite
    + Serialize
    + for<'de> Deserialize<'de>
    + Send
    + Sync
    + 'static
{
    const TABLE: &'static str;
}

/// A fresh random row id.
pub fn new_row_id() -> u64 {
    rand::random()
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One inference request (`inference_performance`).
#[derive(Debug, Clone, Default, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct InferenceRow {
    pub event_time: i64,
    pub row_id: u64,
    pub pool: String,
    pub pod: String,
    pub browser: String,
    pub browser_version: String,
    pub model: String,
    pub task: String,
    pub backend: String,
    pub adapter: String,
    /// `hardware`, `software` (e.g. SwiftShader) or `none` (wasm).
    pub adapter_kind: String,
    pub init_ms: f64,
    pub inference_ms: f64,
    pub latency_ms: f64,
    /// The request's own rows (its leading dimension).
    pub batch_size: u32,
    pub precision: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// `ok` or `error`.
    pub outcome: String,
    pub error_category: String,
    /// Rows of the run in the page that answered the request: more than `batch_size`
    /// when the agent's dynamic batching joined it with other requests; 0 when it
    /// failed before running (migration 6).
    pub dynamic_batch_size: u32,
    /// The request's id (`x-request-id`, as the gateway passed it down): joins the row to
    /// the gateway's (migration 9). Empty where the client gave none and no gateway ran.
    #[serde(default)]
    pub request_id: String,
    /// The request's stages as the agent measured them (`webaccel_api::timing::Stage`,
    /// `run` being `inference_ms`); 0 where unmeasured: errors, and rows before
    /// migrations 10-16.
    #[serde(default)]
    pub receive_ms: f64,
    #[serde(default)]
    pub agent_queue_ms: f64,
    #[serde(default)]
    pub page_link_ms: f64,
    #[serde(default)]
    pub page_queue_ms: f64,
    #[serde(default)]
    pub decode_ms: f64,
    #[serde(default)]
    pub encode_ms: f64,
    #[serde(default)]
    pub agent_reply_ms: f64,
}

impl TableRow for InferenceRow {
    const TABLE: &'static str = "inference_performance";
}

/// One text generation on an agent (`generation_performance`, migration 7).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct GenerationRow {
    pub event_time: i64,
    pub row_id: u64,
    pub pool: String,
    pub pod: String,
    pub browser: String,
    pub browser_version: String,
    pub model: String,
    pub backend: String,
    pub adapter: String,
    pub adapter_kind: String,
    /// The KV cache's precision in the page: `fp32`, `int8` or `int4`.
    pub kv_cache: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Waiting for a place among the browser's sequences.
    pub queue_ms: f64,
    pub prefill_ms: f64,
    /// From arrival at the agent to the first token.
    pub ttft_ms: f64,
    pub inter_token_p50_ms: f64,
    pub inter_token_p99_ms: f64,
    /// Completion tokens per second after the first.
    pub tokens_per_s: f64,
    /// The most sequences decoded together in one step while it ran.
    pub max_batch: u32,
    /// Its KV cache's size in the page at the end.
    pub kv_bytes: u64,
    /// `stop`, `length`, `cancelled`; empty when it failed.
    pub finish_reason: String,
    /// `ok` or `error`.
    pub outcome: String,
    pub error_category: String,
}

impl TableRow for GenerationRow {
    const TABLE: &'static str = "generation_performance";
}

impl InferenceRow {
    /// A successful request of `model` on `browser`/`backend` with the given latency and
    /// neutral values elsewhere: the starting point of synthetic data in tests,
    /// benchmarks and demos (change fields with struct update syntax).
    pub fn synthetic(
        model: &str,
        browser: &str,
        backend: &str,
        event_time: i64,
        latency_ms: f64,
    ) -> Self {
        Self {
            event_time,
            row_id: new_row_id(),
            pool: "synthetic".into(),
            pod: "synthetic-0".into(),
            browser: browser.into(),
            browser_version: String::new(),
            model: model.into(),
            task: "vision".into(),
            backend: backend.into(),
            adapter: String::new(),
            adapter_kind: "none".into(),
            init_ms: 1.0,
            inference_ms: latency_ms / 2.0,
            latency_ms,
            batch_size: 1,
            precision: "fp32".into(),
            bytes_in: 64,
            bytes_out: 16,
            outcome: "ok".into(),
            error_category: String::new(),
            request_id: String::new(),
            dynamic_batch_size: 1,
            ..Self::default()
        }
    }
}

/// A browser starting, failing or stopping (`browser_connections`).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct BrowserConnectionRow {
    pub event_time: i64,
    pub row_id: u64,
    pub pool: String,
    pub pod: String,
    pub browser: String,
    pub browser_version: String,
    /// `started`, `crashed`, `hung` or `stopped`.
    pub event: String,
    pub reason: String,
    pub adapter: String,
    pub adapter_kind: String,
    pub webnn: String,
    pub start_ms: f64,
}

impl TableRow for BrowserConnectionRow {
    const TABLE: &'static str = "browser_connections";
}

/// A pool scaling, healing or recycling (`pool_events`).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct PoolEventRow {
    pub event_time: i64,
    pub row_id: u64,
    pub namespace: String,
    pub pool: String,
    /// `scale`, `heal`, `drain`, `roll`, `recycle`, or `model_scale` (a ModelDeployment's
    /// replicas, in `model`; `from`/`to` count replicas, not browsers).
    pub event: String,
    pub pod: String,
    pub from_replicas: u32,
    pub to_replicas: u32,
    pub reason: String,
    /// The ModelDeployment of a `model_scale` event; empty for the pool's own.
    #[serde(default)]
    pub model: String,
}

impl TableRow for PoolEventRow {
    const TABLE: &'static str = "pool_events";
}

/// A detected performance regression (`regressions`).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct RegressionRow {
    pub event_time: i64,
    pub row_id: u64,
    pub model: String,
    pub browser: String,
    pub backend: String,
    pub metric: String,
    pub baseline_p50: f64,
    pub recent_p50: f64,
    pub change_pct: f64,
    pub p_value: f64,
    pub severity: String,
    pub baseline_samples: u64,
    pub recent_samples: u64,
}

impl TableRow for RegressionRow {
    const TABLE: &'static str = "regressions";
}

/// One request the gateway answered (`gateway_requests`): its end-to-end latency as the
/// gateway saw it, where it ran, and how many attempts it took.
#[derive(Debug, Clone, Default, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct GatewayRequestRow {
    pub event_time: i64,
    pub row_id: u64,
    pub request_id: String,
    pub model: String,
    /// The pool and browser (pod) of the last attempt; empty if none was tried.
    pub pool: String,
    pub browser: String,
    pub backend: String,
    pub attempts: u32,
    pub latency_ms: f64,
    /// The model's run time in the page, for a success.
    pub compute_ms: f64,
    pub bytes_in: u64,
    /// `ok` or `error`.
    pub outcome: String,
    pub error_category: String,
    /// The request's stages, the gateway's and those the agent and page reported
    /// (`webaccel_api::timing::Stage`, `run` being `compute_ms`); 0 where unmeasured:
    /// errors, and rows before migrations 17-26.
    #[serde(default)]
    pub receive_ms: f64,
    #[serde(default)]
    pub route_ms: f64,
    #[serde(default)]
    pub bridge_ms: f64,
    #[serde(default)]
    pub agent_queue_ms: f64,
    #[serde(default)]
    pub page_link_ms: f64,
    #[serde(default)]
    pub page_queue_ms: f64,
    #[serde(default)]
    pub decode_ms: f64,
    #[serde(default)]
    pub encode_ms: f64,
    #[serde(default)]
    pub agent_reply_ms: f64,
    #[serde(default)]
    pub gateway_reply_ms: f64,
}

impl TableRow for GatewayRequestRow {
    const TABLE: &'static str = "gateway_requests";
}
