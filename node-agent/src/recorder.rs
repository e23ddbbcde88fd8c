//! Where the agent's figures go: one row per inference request, one per text
//! generation and one per browser start or failure, handed to webaccel-analytics' writer without waiting. ClickHouse
//! being down, or not yet migrated, never stops the agent: rows spool to disk and are
//! replayed once it answers.

use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};
use webaccel_analytics::rows::{
    BrowserConnectionRow, GenerationRow, InferenceRow, new_row_id, now_ms,
};
use webaccel_analytics::{ClickHouseSettings, Writer, WriterConfig, WriterHandle};
use webaccel_api::agent::Capabilities;
use webaccel_api::timing::{Stage, StageTimes};

/// How often migrations are retried while ClickHouse cannot be reached.
const MIGRATION_RETRY: Duration = Duration::from_secs(5);

/// Labels every row of this agent carries.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub pool: String,
    pub pod: String,
}

#[derive(Debug)]
struct Sinks {
    settings: ClickHouseSettings,
    inference: WriterHandle<InferenceRow>,
    generation: WriterHandle<GenerationRow>,
    browser: WriterHandle<BrowserConnectionRow>,
    writers: Mutex<Option<Writers>>,
    migration: Mutex<Result<(), String>>,
}

type Writers = (
    Writer<InferenceRow>,
    Writer<GenerationRow>,
    Writer<BrowserConnectionRow>,
);

/// One finished text generation, as the agent saw it.
#[derive(Debug)]
pub struct GenerationRecord<'a> {
    pub model: &'a str,
    /// What it ran on; empty when it failed before the page.
    pub backend: &'a str,
    pub end: Option<&'a webaccel_api::generate::GenerationEnd>,
    /// `None` on success (or when the client left), the error category otherwise.
    pub error: Option<&'a str>,
    /// The client left before the end.
    pub abandoned: bool,
}

/// One finished inference request, as the agent saw it.
#[derive(Debug)]
pub struct InferenceRecord<'a> {
    pub model: &'a str,
    pub task: &'a str,
    pub precision: &'a str,
    pub backend: &'a str,
    pub init_ms: f64,
    pub compute_ms: f64,
    pub latency_ms: f64,
    /// The request's own rows (its leading dimension).
    pub batch_size: u32,
    /// Rows of the run in the page that answered it: more than `batch_size` when dynamic
    /// batching joined it with other requests; 0 when it failed before running.
    pub dynamic_batch_size: u32,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// `None` on success, the error category otherwise.
    pub error: Option<&'a str>,
    /// The request's id, when it came with one.
    pub request_id: Option<&'a str>,
    /// Its stages so far (none for a failure).
    pub stages: StageTimes,
}

#[derive(Debug, Clone, Default)]
struct BrowserLabels {
    name: String,
    version: String,
    adapter: String,
    adapter_kind: String,
}

#[derive(Debug, Default)]
pub struct Recorder {
    origin: Origin,
    sinks: Option<Sinks>,
    /// The browser the rows describe: its kind (`chromium`, `firefox`, ...), version,
    /// WebGPU adapter and the adapter's kind.
    browser: Mutex<BrowserLabels>,
}

impl Recorder {
    /// A recorder that records nothing (no ClickHouse configured).
    /// The pool and pod this agent records its rows under.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn disabled(origin: Origin) -> Self {
        Self {
            origin,
            ..Self::default()
        }
    }

    /// Starts the writers (spooling under `spool_dir`) and migrates the schema in the
    /// background, retrying until ClickHouse answers.
    pub fn start(
        settings: ClickHouseSettings,
        spool_dir: std::path::PathBuf,
        origin: Origin,
    ) -> std::io::Result<Self> {
        let inference = Writer::start(&settings, WriterConfig::new(spool_dir.clone()))?;
        let generation = Writer::start(&settings, WriterConfig::new(spool_dir.clone()))?;
        let browser = Writer::start(&settings, WriterConfig::new(spool_dir))?;
        Ok(Self {
            origin,
            sinks: Some(Sinks {
                settings,
                inference: inference.handle.clone(),
                generation: generation.handle.clone(),
                browser: browser.handle.clone(),
                writers: Mutex::new(Some((inference, generation, browser))),
                migration: Mutex::new(Err("not attempted yet".into())),
            }),
            browser: Mutex::default(),
        })
    }

    /// Applies the schema, retrying until it works; run it on its own task.
    pub async fn migrate_until_done(&self) {
        let Some(s) = &self.sinks else { return };
        loop {
            match webaccel_analytics::schema::migrate(&s.settings).await {
                Ok(report) => {
                    tracing::info!(applied = ?report.applied, server = ?report.features.version, "ClickHouse schema ready");
                    *s.migration.lock() = Ok(());
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?MIGRATION_RETRY, "ClickHouse is not usable yet; metrics are spooled to disk meanwhile");
                    *s.migration.lock() = Err(e.to_string());
                }
            }
            tokio::time::sleep(MIGRATION_RETRY).await;
        }
    }

    /// Notes the browser now serving (`name` as `--browser` says it: `chromium`,
    /// `firefox`, ...), for the rows that follow.
    pub fn set_browser(&self, name: &str, version: &str, capabilities: &Capabilities) {
        let kind = capabilities.webgpu.adapter.as_ref().map_or("none", |a| {
            if a.is_software() {
                "software"
            } else {
                "hardware"
            }
        });
        *self.browser.lock() = BrowserLabels {
            name: name.to_owned(),
            version: version.to_owned(),
            // The same label the pool's status shows.
            adapter: capabilities.adapter_label().unwrap_or_default(),
            adapter_kind: kind.to_owned(),
        };
    }

    fn browser(&self) -> BrowserLabels {
        self.browser.lock().clone()
    }

    /// The browser's labels for a row of work run on `backend`: the WebGPU adapter only
    /// where WebGPU ran it.
    fn labels_for(&self, backend: &str) -> BrowserLabels {
        let browser = self.browser();
        let (adapter, adapter_kind) = match backend {
            "webgpu" => (browser.adapter, browser.adapter_kind),
            b if b.starts_with("webnn") => (b.to_owned(), "unknown".to_owned()),
            _ => (String::new(), "none".to_owned()),
        };
        BrowserLabels {
            adapter,
            adapter_kind,
            ..browser
        }
    }

    pub fn inference(&self, r: &InferenceRecord<'_>) {
        let Some(s) = &self.sinks else { return };
        let BrowserLabels {
            name,
            version,
            adapter,
            adapter_kind,
        } = self.labels_for(r.backend);
        let stage = |s: Stage| r.stages.get(s).unwrap_or(0.0);
        s.inference.write(InferenceRow {
            event_time: now_ms(),
            row_id: new_row_id(),
            pool: self.origin.pool.clone(),
            pod: self.origin.pod.clone(),
            browser: name,
            browser_version: version,
            model: r.model.to_owned(),
            task: r.task.to_owned(),
            backend: r.backend.to_owned(),
            adapter,
            adapter_kind,
            init_ms: r.init_ms,
            inference_ms: r.compute_ms,
            latency_ms: r.latency_ms,
            batch_size: r.batch_size,
            dynamic_batch_size: r.dynamic_batch_size,
            precision: r.precision.to_owned(),
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            outcome: if r.error.is_some() { "error" } else { "ok" }.into(),
            error_category: r.error.unwrap_or_default().to_owned(),
            request_id: r.request_id.unwrap_or_default().to_owned(),
            receive_ms: stage(Stage::Receive),
            agent_queue_ms: stage(Stage::AgentQueue),
            page_link_ms: stage(Stage::PageLink),
            page_queue_ms: stage(Stage::PageQueue),
            decode_ms: stage(Stage::Decode),
            encode_ms: stage(Stage::Encode),
            agent_reply_ms: stage(Stage::AgentReply),
        });
    }

    pub fn generation(&self, r: &GenerationRecord<'_>) {
        let Some(s) = &self.sinks else { return };
        let BrowserLabels {
            name,
            version,
            adapter,
            adapter_kind,
        } = self.labels_for(r.backend);
        let timings = r.end.map(|e| e.timings.clone()).unwrap_or_default();
        let usage = r.end.map(|e| e.usage).unwrap_or_default();
        let finish_reason = match (r.end, r.abandoned) {
            (Some(e), _) => e.finish_reason.as_str(),
            (None, true) => "cancelled",
            (None, false) => "",
        };
        s.generation.write(GenerationRow {
            event_time: now_ms(),
            row_id: new_row_id(),
            pool: self.origin.pool.clone(),
            pod: self.origin.pod.clone(),
            browser: name,
            browser_version: version,
            model: r.model.to_owned(),
            backend: r.backend.to_owned(),
            adapter,
            adapter_kind,
            kv_cache: timings.kv_cache.map_or("", |p| p.as_str()).to_owned(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            queue_ms: timings.queue_ms,
            prefill_ms: timings.prefill_ms,
            ttft_ms: timings.ttft_ms,
            inter_token_p50_ms: timings.inter_token_p50_ms,
            inter_token_p99_ms: timings.inter_token_p99_ms,
            tokens_per_s: timings.tokens_per_s,
            max_batch: timings.max_batch,
            kv_bytes: timings.kv_bytes,
            finish_reason: finish_reason.to_owned(),
            outcome: if r.error.is_some() { "error" } else { "ok" }.into(),
            error_category: r.error.unwrap_or_default().to_owned(),
        });
    }

    /// A browser started (`start_ms` set), crashed, hung or stopped.
    pub fn browser_event(
        &self,
        event: &str,
        reason: &str,
        start_ms: f64,
        capabilities: &Capabilities,
    ) {
        let Some(s) = &self.sinks else { return };
        let BrowserLabels {
            name,
            version,
            adapter,
            adapter_kind: kind,
        } = self.browser();
        let webnn = capabilities
            .webnn
            .iter()
            .map(|(d, v)| format!("{d}={}", if v.available { "yes" } else { "no" }))
            .collect::<Vec<_>>()
            .join(",");
        s.browser.write(BrowserConnectionRow {
            event_time: now_ms(),
            row_id: new_row_id(),
            pool: self.origin.pool.clone(),
            pod: self.origin.pod.clone(),
            browser: name,
            browser_version: version,
            event: event.to_owned(),
            reason: reason.to_owned(),
            adapter,
            adapter_kind: kind,
            webnn,
            start_ms,
        });
    }

    /// For `/readyz` and `/v1/stats`: whether metrics reach ClickHouse, and what waits.
    pub fn status(&self) -> Value {
        let Some(s) = &self.sinks else {
            return json!({"enabled": false});
        };
        let migration = s.migration.lock().clone();
        let inference = s.inference.snapshot();
        let generation = s.generation.snapshot();
        let browser = s.browser.snapshot();
        json!({
            "enabled": true,
            "url": s.settings.url,
            "database": s.settings.database,
            "schema": match &migration { Ok(()) => "ready".to_owned(), Err(e) => e.clone() },
            "healthy": migration.is_ok() && inference.healthy && generation.healthy && browser.healthy,
            "inference_performance": inference,
            "generation_performance": generation,
            "browser_connections": browser,
        })
    }

    /// Writer totals per table: (table, [(state, rows)]).
    pub fn totals(&self) -> Vec<(&'static str, [(&'static str, u64); 5])> {
        let Some(s) = &self.sinks else {
            return Vec::new();
        };
        let row = |w: webaccel_analytics::writer::WriterSnapshot| {
            [
                ("written", w.written),
                ("spooled", w.spooled),
                ("replayed", w.replayed),
                ("dropped", w.dropped),
                ("recovered", w.recovered),
            ]
        };
        vec![
            ("inference_performance", row(s.inference.snapshot())),
            ("generation_performance", row(s.generation.snapshot())),
            ("browser_connections", row(s.browser.snapshot())),
        ]
    }

    /// Writes (or spools) what is pending; call before exit.
    pub async fn shutdown(&self) {
        let Some(s) = &self.sinks else { return };
        let writers = s.writers.lock().take();
        if let Some((inference, generation, browser)) = writers {
            inference.shutdown().await;
            generation.shutdown().await;
            browser.shutdown().await;
        }
    }
}
