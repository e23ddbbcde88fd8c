//! What the agent measures about itself: Prometheus metrics for scraping, and the
//! `/v1/stats` summary the operator reads to scale pools (in flight, queued, per-model
//! latency, errors by category).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use webaccel_api::ErrorCategory;
use webaccel_api::agent::LoadedModel;
pub use webaccel_api::agent::{GenerationStats, ModelStats};

use crate::generation::run::Outcome;

mod stages;
pub use stages::StageMetrics;

/// Latencies kept per model for percentiles in `/v1/stats`.
const WINDOW: usize = 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabel {
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RowLabels {
    table: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Debug, Default)]
struct ModelWindow {
    requests: u64,
    errors: u64,
    latency_ms: VecDeque<f64>,
    compute_ms: VecDeque<f64>,
    batches: u64,
    batched_requests: u64,
    max_batch_requests: u64,
    generation: Option<GenerationWindow>,
}

/// A generating model's recent figures.
#[derive(Debug, Default)]
struct GenerationWindow {
    generations: u64,
    errors: u64,
    abandoned: u64,
    sequences: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    ttft_ms: VecDeque<f64>,
    inter_token_ms: VecDeque<f64>,
    tokens_per_s: VecDeque<f64>,
}

#[derive(Debug)]
pub struct Stats {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<ModelLabel, Histogram, fn() -> Histogram>,
    errors: Family<CategoryLabel, Counter>,
    restarts: Family<ReasonLabel, Counter>,
    model_init: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    batches: Family<ModelLabel, Counter>,
    batched_requests: Family<ModelLabel, Counter>,
    pub in_flight: Gauge,
    pub queued: Gauge,
    metric_rows: Family<RowLabels, Counter>,
    /// Last writer totals seen, to turn them into counter increments at scrape time.
    metric_rows_seen: Mutex<BTreeMap<(String, String), u64>>,
    windows: Mutex<BTreeMap<String, ModelWindow>>,
    errors_by_category: Mutex<BTreeMap<ErrorCategory, u64>>,
    generations: Family<RequestLabels, Counter>,
    generated_tokens: Family<ModelLabel, Counter>,
    ttft: Family<ModelLabel, Histogram, fn() -> Histogram>,
    inter_token: Family<ModelLabel, Histogram, fn() -> Histogram>,
    pub sequences: Gauge,
    /// Each request's stages: histograms and the slowest 1%.
    pub stages: StageMetrics,
}

/// Counts a sequence running in the page while it lives.
#[derive(Debug)]
pub struct RunningSequence<'a> {
    stats: &'a Stats,
    model: String,
}

impl Drop for RunningSequence<'_> {
    fn drop(&mut self) {
        self.stats.sequences.dec();
        if let Some(g) = self
            .stats
            .windows
            .lock()
            .get_mut(&self.model)
            .and_then(|w| w.generation.as_mut())
        {
            g.sequences = g.sequences.saturating_sub(1);
        }
    }
}

fn latency_histogram() -> Histogram {
    // 0.1 ms to ~1.6 min.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

impl Default for Stats {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("webaccel_agent");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<ModelLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let errors = Family::<CategoryLabel, Counter>::default();
        let restarts = Family::<ReasonLabel, Counter>::default();
        let model_init = Family::<ModelLabel, Gauge<f64, AtomicU64>>::default();
        let batches = Family::<ModelLabel, Counter>::default();
        let batched_requests = Family::<ModelLabel, Counter>::default();
        registry.register(
            "batches",
            "Runs in the page that joined more than one request (dynamic batching)",
            batches.clone(),
        );
        registry.register(
            "batched_requests",
            "Requests served by runs that joined more than one request",
            batched_requests.clone(),
        );
        let in_flight = Gauge::default();
        let queued = Gauge::default();
        registry.register(
            "requests",
            "Inference requests by model and outcome",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "End-to-end inference latency inside the agent",
            latency.clone(),
        );
        registry.register(
            "errors",
            "Failed requests by error category",
            errors.clone(),
        );
        registry.register(
            "browser_restarts",
            "Browser restarts by reason",
            restarts.clone(),
        );
        registry.register(
            "model_init_seconds",
            "Session creation time of the loaded model",
            model_init.clone(),
        );
        registry.register(
            "in_flight",
            "Requests running in the page",
            in_flight.clone(),
        );
        let metric_rows = Family::<RowLabels, Counter>::default();
        registry.register(
            "metric_rows",
            "Metric rows for ClickHouse by table and fate: written, spooled, replayed, dropped, recovered (from the journal a killed agent left)",
            metric_rows.clone(),
        );
        registry.register(
            "queued",
            "Requests accepted and waiting for their model",
            queued.clone(),
        );
        let generations = Family::<RequestLabels, Counter>::default();
        registry.register(
            "generations",
            "Text generations by model and outcome (ok, cancelled, or the error category)",
            generations.clone(),
        );
        let generated_tokens = Family::<ModelLabel, Counter>::default();
        registry.register(
            "generated_tokens",
            "Tokens generated, by model",
            generated_tokens.clone(),
        );
        let ttft = Family::<ModelLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "time_to_first_token_seconds",
            "From a generation's arrival to its first token",
            ttft.clone(),
        );
        let inter_token = Family::<ModelLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "inter_token_seconds",
            "Median time between a generation's tokens, one observation per generation",
            inter_token.clone(),
        );
        let sequences = Gauge::default();
        registry.register(
            "sequences",
            "Text generations running in the page",
            sequences.clone(),
        );
        let stages = StageMetrics::register(&mut registry);
        Self {
            registry,
            stages,
            requests,
            latency,
            errors,
            restarts,
            model_init,
            batches,
            batched_requests,
            in_flight,
            queued,
            metric_rows,
            metric_rows_seen: Mutex::default(),
            windows: Mutex::default(),
            errors_by_category: Mutex::default(),
            generations,
            generated_tokens,
            ttft,
            inter_token,
            sequences,
        }
    }
}

fn push(q: &mut VecDeque<f64>, v: f64) {
    if q.len() == WINDOW {
        q.pop_front();
    }
    q.push_back(v);
}

/// Nearest-rank percentile.
fn percentile(q: &VecDeque<f64>, p: f64) -> Option<f64> {
    if q.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = q.iter().copied().collect();
    v.sort_by(f64::total_cmp);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

impl Stats {
    /// Records a finished request; `compute_ms` is the page's own time when it succeeded.
    pub fn record(&self, model: &str, elapsed: Duration, result: Result<f64, ErrorCategory>) {
        let outcome = match result {
            Ok(_) => "ok".to_owned(),
            Err(c) => c.as_str().to_owned(),
        };
        self.requests
            .get_or_create(&RequestLabels {
                model: model.to_owned(),
                outcome,
            })
            .inc();
        self.latency
            .get_or_create(&ModelLabel {
                model: model.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
        let mut windows = self.windows.lock();
        let w = windows.entry(model.to_owned()).or_default();
        w.requests += 1;
        match result {
            Ok(compute_ms) => {
                push(&mut w.latency_ms, elapsed.as_secs_f64() * 1e3);
                push(&mut w.compute_ms, compute_ms);
            }
            Err(c) => {
                w.errors += 1;
                drop(windows);
                self.error(c);
            }
        }
    }

    /// Counts an error that did not reach a model (bad frames, auth, overload).
    pub fn error(&self, category: ErrorCategory) {
        self.errors
            .get_or_create(&CategoryLabel {
                category: category.as_str().to_owned(),
            })
            .inc();
        *self.errors_by_category.lock().entry(category).or_default() += 1;
    }

    pub fn browser_restarted(&self, reason: &str) {
        self.restarts
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Brings the metric-row counters up to the writer's totals (called at scrape).
    pub fn observe_metric_rows(&self, table: &str, totals: &[(&str, u64)]) {
        let mut seen = self.metric_rows_seen.lock();
        for &(state, total) in totals {
            let last = seen
                .entry((table.to_owned(), state.to_owned()))
                .or_default();
            self.metric_rows
                .get_or_create(&RowLabels {
                    table: table.to_owned(),
                    state: state.to_owned(),
                })
                .inc_by(total.saturating_sub(*last));
            *last = (*last).max(total);
        }
    }

    /// A run in the page joined `requests` (more than one) requests of `model`.
    pub fn batch(&self, model: &str, requests: usize) {
        let label = ModelLabel {
            model: model.to_owned(),
        };
        let n = requests as u64;
        self.batches.get_or_create(&label).inc();
        self.batched_requests.get_or_create(&label).inc_by(n);
        let mut windows = self.windows.lock();
        let w = windows.entry(model.to_owned()).or_default();
        w.batches += 1;
        w.batched_requests += n;
        w.max_batch_requests = w.max_batch_requests.max(n);
    }

    fn generation_window<R>(&self, model: &str, f: impl FnOnce(&mut GenerationWindow) -> R) -> R {
        let mut windows = self.windows.lock();
        let w = windows.entry(model.to_owned()).or_default();
        f(w.generation.get_or_insert_with(GenerationWindow::default))
    }

    fn count_generation(&self, model: &str, outcome: &str) {
        self.generations
            .get_or_create(&RequestLabels {
                model: model.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// A generation of `model` refused before it ran (a bad request, overload, no
    /// browser).
    pub fn generation_refused(&self, model: &str, category: ErrorCategory) {
        self.count_generation(model, category.as_str());
        self.generation_window(model, |g| {
            g.generations += 1;
            g.errors += 1;
        });
        self.error(category);
    }

    /// A sequence of `model` starts running in the page; it counts until the guard
    /// drops.
    pub fn sequence_started(&self, model: &str) -> RunningSequence<'_> {
        self.sequences.inc();
        self.generation_window(model, |g| g.sequences += 1);
        RunningSequence {
            stats: self,
            model: model.to_owned(),
        }
    }

    /// A generation of `model` ended: its tokens and times.
    pub fn generation_finished(&self, model: &str, outcome: &Outcome) {
        let label = ModelLabel {
            model: model.to_owned(),
        };
        let name = match (&outcome.end, outcome.error) {
            (_, Some(c)) => c.as_str(),
            _ if outcome.abandoned => "cancelled",
            _ => "ok",
        };
        self.count_generation(model, name);
        if let Some(c) = outcome.error {
            self.error(c);
        }
        if let Some(end) = &outcome.end {
            self.generated_tokens
                .get_or_create(&label)
                .inc_by(u64::from(end.usage.completion_tokens));
            self.ttft
                .get_or_create(&label)
                .observe(end.timings.ttft_ms / 1e3);
            if end.usage.completion_tokens > 1 {
                self.inter_token
                    .get_or_create(&label)
                    .observe(end.timings.inter_token_p50_ms / 1e3);
            }
        }
        self.generation_window(model, |g| {
            g.generations += 1;
            g.errors += u64::from(outcome.error.is_some());
            g.abandoned += u64::from(outcome.abandoned);
            if let Some(end) = &outcome.end {
                g.prompt_tokens += u64::from(end.usage.prompt_tokens);
                g.completion_tokens += u64::from(end.usage.completion_tokens);
                push(&mut g.ttft_ms, end.timings.ttft_ms);
                if end.usage.completion_tokens > 1 {
                    push(&mut g.inter_token_ms, end.timings.inter_token_p50_ms);
                    push(&mut g.tokens_per_s, end.timings.tokens_per_s);
                }
            }
        });
    }

    pub fn model_loaded(&self, model: &str, m: &LoadedModel) {
        self.model_init
            .get_or_create(&ModelLabel {
                model: model.to_owned(),
            })
            .set(m.create_ms / 1e3);
    }

    pub fn per_model(&self) -> BTreeMap<String, ModelStats> {
        let windows = self.windows.lock();
        windows
            .iter()
            .map(|(name, w)| {
                (
                    name.clone(),
                    ModelStats {
                        requests: w.requests,
                        outstanding: 0,
                        errors: w.errors,
                        latency_p50_ms: percentile(&w.latency_ms, 0.5),
                        latency_p99_ms: percentile(&w.latency_ms, 0.99),
                        compute_p50_ms: percentile(&w.compute_ms, 0.5),
                        batches: w.batches,
                        batched_requests: w.batched_requests,
                        max_batch_requests: w.max_batch_requests,
                        generation: w.generation.as_ref().map(|g| GenerationStats {
                            generations: g.generations,
                            errors: g.errors,
                            cancelled: g.abandoned,
                            sequences: g.sequences,
                            prompt_tokens: g.prompt_tokens,
                            completion_tokens: g.completion_tokens,
                            ttft_p50_ms: percentile(&g.ttft_ms, 0.5),
                            ttft_p99_ms: percentile(&g.ttft_ms, 0.99),
                            inter_token_p50_ms: percentile(&g.inter_token_ms, 0.5),
                            inter_token_p99_ms: percentile(&g.inter_token_ms, 0.99),
                            tokens_per_s_p50: percentile(&g.tokens_per_s, 0.5),
                        }),
                    },
                )
            })
            .collect()
    }

    pub fn errors_by_category(&self) -> BTreeMap<ErrorCategory, u64> {
        self.errors_by_category.lock().clone()
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let q: VecDeque<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&q, 0.5), Some(50.0));
        assert_eq!(percentile(&q, 0.99), Some(99.0));
        assert_eq!(percentile(&VecDeque::new(), 0.5), None);
    }

    #[test]
    fn records_requests_errors_and_exposes_them() {
        let s = Stats::default();
        s.record("mlp", Duration::from_millis(2), Ok(1.0));
        s.record(
            "mlp",
            Duration::from_millis(4),
            Err(ErrorCategory::BrowserCrashed),
        );
        let m = &s.per_model()["mlp"];
        assert_eq!((m.requests, m.errors, m.latency_p50_ms), (2, 1, Some(2.0)));
        assert_eq!(s.errors_by_category()[&ErrorCategory::BrowserCrashed], 1);
        let text = s.encode();
        assert!(
            text.contains(
                r#"webaccel_agent_requests_total{model="mlp",outcome="browser_crashed"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"webaccel_agent_errors_total{category="browser_crashed"} 1"#),
            "{text}"
        );
    }
}
