//! One ClickHouse row per request (`gateway_requests`), handed to the analytics writer
//! without waiting: batched, spooled to disk while ClickHouse is unreachable, replayed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use webaccel_analytics::rows::{GatewayRequestRow, new_row_id, now_ms};
use webaccel_analytics::{ClickHouseSettings, Writer, WriterConfig, WriterHandle};
use webaccel_api::timing::{Stage, StageTimes, ms};
use webaccel_api::wire::InferRequest;
use webaccel_kserve::{ApiError, CallOptions};

/// What one request did, filled in as it goes.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub row: GatewayRequestRow,
    pub attempts: u32,
    pub pool: String,
    pub browser: String,
    pub backend: String,
    pub compute_ms: f64,
    /// Its stages, for a success.
    pub stages: StageTimes,
}

impl RequestRecord {
    pub fn new(req: &InferRequest, options: &CallOptions) -> Self {
        Self {
            row: GatewayRequestRow {
                event_time: now_ms(),
                row_id: new_row_id(),
                request_id: options.request_id.clone(),
                model: req.model.clone(),
                pool: String::new(),
                browser: String::new(),
                backend: String::new(),
                attempts: 0,
                latency_ms: 0.0,
                compute_ms: 0.0,
                bytes_in: req.inputs.iter().map(|t| t.data.len() as u64).sum(),
                outcome: String::new(),
                error_category: String::new(),
                ..GatewayRequestRow::default()
            },
            attempts: 0,
            pool: String::new(),
            browser: String::new(),
            backend: String::new(),
            compute_ms: 0.0,
            stages: StageTimes::default(),
        }
    }

    pub fn finish(&mut self, elapsed: Duration, error: Option<&ApiError>) {
        let r = &mut self.row;
        r.latency_ms = elapsed.as_secs_f64() * 1e3;
        r.attempts = self.attempts;
        r.pool = std::mem::take(&mut self.pool);
        r.browser = std::mem::take(&mut self.browser);
        r.backend = std::mem::take(&mut self.backend);
        r.compute_ms = if error.is_none() {
            self.compute_ms
        } else {
            0.0
        };
        if error.is_none() {
            let stage = |s: Stage| self.stages.get(s).unwrap_or(0.0);
            r.receive_ms = stage(Stage::Receive);
            r.route_ms = stage(Stage::Route);
            r.bridge_ms = stage(Stage::Bridge);
            r.agent_queue_ms = stage(Stage::AgentQueue);
            r.page_link_ms = stage(Stage::PageLink);
            r.page_queue_ms = stage(Stage::PageQueue);
            r.decode_ms = stage(Stage::Decode);
            r.encode_ms = stage(Stage::Encode);
            r.agent_reply_ms = stage(Stage::AgentReply);
            r.gateway_reply_ms = stage(Stage::GatewayReply);
        }
        r.outcome = if error.is_some() { "error" } else { "ok" }.into();
        r.error_category = error
            .map(|e| e.category.as_str().to_owned())
            .unwrap_or_default();
    }
}

/// Where a request went, filled in as it goes: every browser that answered (one per
/// stage for a pipeline) and the one being tried, attempts over all.
#[derive(Debug, Default)]
pub struct Trace {
    pub attempts: u32,
    /// `(pool, browser, backend)` of each answer, in order.
    pub answered: Vec<(String, String, String)>,
    /// The browser of the attempt under way (or that failed last).
    pub trying: Option<(String, String)>,
    pub compute_ms: f64,
    /// The stages of every answer, summed (one per pipeline stage), `bridge` worked out
    /// per answer; the gateway's own are added when the request ends.
    pub stages: StageTimes,
    /// The bridge round trips of the answers, summed.
    pub round_trips: Duration,
    /// When the last answer came back.
    pub last_answer: Option<Instant>,
}

impl Trace {
    /// Writes where the request went into its ClickHouse row: the first pool, and every
    /// browser and backend, comma-separated.
    pub fn record(&self, record: &mut RequestRecord) {
        record.attempts = self.attempts;
        let mut pools: Vec<&str> = self.answered.iter().map(|a| a.0.as_str()).collect();
        let mut browsers: Vec<&str> = self.answered.iter().map(|a| a.1.as_str()).collect();
        if let Some((pool, browser)) = &self.trying {
            pools.push(pool);
            browsers.push(browser);
        }
        record.pool = pools.first().map(|p| (*p).to_owned()).unwrap_or_default();
        record.browser = browsers.join(",");
        record.backend = self.backends();
        record.compute_ms = self.compute_ms;
        record.stages = self.stages;
    }

    /// Notes an answer that came back over the bridge after `round_trip`: its stages
    /// join the request's, and the bridge's share is the round trip less the agent's
    /// span (its own `receive`, decoding the frame, counts as the bridge's).
    pub fn answered_after(&mut self, round_trip: Duration, stages: &StageTimes) {
        let mut agent = *stages;
        agent.receive = None;
        self.stages.accumulate(&agent);
        self.stages
            .add(Stage::Bridge, ms(round_trip) - agent.total());
        self.round_trips += round_trip;
        self.last_answer = Some(Instant::now());
    }

    /// The backends that answered, each once, in order.
    pub fn backends(&self) -> String {
        let mut seen: Vec<&str> = Vec::new();
        for (_, _, b) in &self.answered {
            if !seen.contains(&b.as_str()) {
                seen.push(b);
            }
        }
        seen.join(",")
    }

    /// The browsers that answered, in order.
    pub fn browsers(&self) -> String {
        let names: Vec<&str> = self.answered.iter().map(|a| a.1.as_str()).collect();
        names.join(",")
    }
}

/// Where request rows go: ClickHouse through the analytics writer, or nowhere.
#[derive(Debug, Default)]
pub struct Recorder {
    handle: Option<WriterHandle<GatewayRequestRow>>,
    writer: Mutex<Option<Writer<GatewayRequestRow>>>,
}

impl Recorder {
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Starts the writer and applies the schema in the background until ClickHouse
    /// answers (rows spool meanwhile).
    /// The spool holds at most `spool_max_bytes`; rows past it are dropped and counted.
    pub fn start(
        settings: ClickHouseSettings,
        spool_dir: PathBuf,
        spool_max_bytes: u64,
    ) -> std::io::Result<Self> {
        let config = WriterConfig {
            spool_max_bytes,
            ..WriterConfig::new(spool_dir)
        };
        let writer = Writer::start(&settings, config)?;
        let handle = writer.handle.clone();
        tokio::spawn(async move {
            loop {
                match webaccel_analytics::schema::migrate(&settings).await {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "ClickHouse schema not applied yet; request rows spool meanwhile");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
        });
        Ok(Self {
            handle: Some(handle),
            writer: Mutex::new(Some(writer)),
        })
    }

    pub fn write(&self, record: RequestRecord) {
        if let Some(h) = &self.handle {
            h.write(record.row);
        }
    }

    /// Writes (or spools) what is left; at shutdown.
    pub async fn shutdown(&self) {
        let writer = self.writer.lock().take();
        if let Some(w) = writer {
            w.shutdown().await;
        }
    }
}
