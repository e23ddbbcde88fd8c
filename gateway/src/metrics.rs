//! The gateway's Prometheus metrics: requests by model and outcome, latency, retries
//! (and retries the budget refused), and, read at scrape time, breaker state and
//! outstanding requests per browser, queue depth and requests waiting for a browser.
//! Model labels are bounded: a model no browser has ever held is counted as `unknown`.

use std::collections::BTreeSet;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use webaccel_api::timing::StageTimes;

use crate::backend::Backends;
use crate::queue::Queues;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    model: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    model: String,
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    model: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrowserLabel {
    pool: String,
    browser: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// 10 µs to about 5 s: a stage can take a few microseconds.
fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 20))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<Outcome, Counter>,
    latency: Family<ModelLabel, Histogram, fn() -> Histogram>,
    retries: Family<Reason, Counter>,
    retries_refused: Family<Reason, Counter>,
    hedges: Family<Reason, Counter>,
    breaker: Family<BrowserLabel, Gauge>,
    outstanding: Family<BrowserLabel, Gauge>,
    queued: Family<ModelLabel, Gauge>,
    waiting_for_browser: Family<ModelLabel, Gauge>,
    generations: Family<Outcome, Counter>,
    time_to_first_token: Family<ModelLabel, Histogram, fn() -> Histogram>,
    generated_tokens: Family<ModelLabel, Counter>,
    stage_duration: Family<StageLabels, Histogram, fn() -> Histogram>,
    /// Models ever seen on a browser: the only model label values used.
    known: RwLock<BTreeSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("webaccel_gateway");
        let m = Self {
            registry: Mutex::new(Registry::default()),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            retries: Family::default(),
            retries_refused: Family::default(),
            hedges: Family::default(),
            breaker: Family::default(),
            outstanding: Family::default(),
            queued: Family::default(),
            waiting_for_browser: Family::default(),
            generations: Family::default(),
            time_to_first_token: Family::new_with_constructor(latency_histogram),
            generated_tokens: Family::default(),
            stage_duration: Family::new_with_constructor(stage_histogram),
            known: RwLock::default(),
        };
        r.register(
            "requests",
            "Requests answered, by model and outcome",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "End-to-end latency through the gateway, retries included",
            m.latency.clone(),
        );
        r.register(
            "retries",
            "Retries on another browser, by the failure that caused them",
            m.retries.clone(),
        );
        r.register(
            "retries_refused",
            "Retries not made because the retry budget was spent",
            m.retries_refused.clone(),
        );
        r.register(
            "hedges",
            "Hedged requests by model and reason: sent (a second browser tried), won (it answered first), no_browser or budget (not sent)",
            m.hedges.clone(),
        );
        r.register(
            "breaker_state",
            "Circuit breaker per browser: 0 closed, 1 half-open, 2 open",
            m.breaker.clone(),
        );
        r.register(
            "outstanding",
            "Requests outstanding per browser",
            m.outstanding.clone(),
        );
        r.register(
            "queue_depth",
            "Requests waiting for a browser, per model",
            m.queued.clone(),
        );
        r.register(
            "waiting_for_browser",
            "Requests waiting because no ready browser holds the model (scale from zero)",
            m.waiting_for_browser.clone(),
        );
        r.register(
            "generations",
            "Text generations streamed, by model and outcome (ok, cancelled, or the error category)",
            m.generations.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "From a generation's arrival at the gateway to its first token leaving it",
            m.time_to_first_token.clone(),
        );
        r.register(
            "generated_tokens",
            "Tokens streamed through the gateway, by model",
            m.generated_tokens.clone(),
        );
        r.register(
            "request_stage_seconds",
            "Time per stage of a successful request, the gateway's and those its agent and page reported (see webaccel_api::timing::Stage)",
            m.stage_duration.clone(),
        );
        *m.registry.lock() = r;
        m
    }
}

impl Metrics {
    /// Whether a browser has ever held `model`.
    pub fn is_known(&self, model: &str) -> bool {
        self.known.read().contains(model)
    }

    fn model_label(&self, model: &str) -> String {
        if self.known.read().contains(model) {
            model.to_owned()
        } else {
            "unknown".to_owned()
        }
    }

    /// Notes models that browsers hold, so they get their own label.
    pub fn learn_models<'a>(&self, models: impl Iterator<Item = &'a String>) {
        let mut known = self.known.write();
        for m in models {
            if !known.contains(m) {
                known.insert(m.clone());
            }
        }
    }

    /// Observes a successful request's stages, each in its own histogram.
    pub fn stages(&self, model: &str, stages: &StageTimes) {
        let model = self.model_label(model);
        for (stage, ms) in stages.measured() {
            self.stage_duration
                .get_or_create(&StageLabels {
                    model: model.clone(),
                    stage: stage.as_str(),
                })
                .observe(ms / 1e3);
        }
    }

    pub fn finished(&self, model: &str, outcome: &str, elapsed: Duration) {
        let model = self.model_label(model);
        self.requests
            .get_or_create(&Outcome {
                model: model.clone(),
                outcome: outcome.to_owned(),
            })
            .inc();
        if !elapsed.is_zero() {
            self.latency
                .get_or_create(&ModelLabel { model })
                .observe(elapsed.as_secs_f64());
        }
    }

    /// A generation ended (or was refused: no first token, no tokens).
    pub fn generation_finished(
        &self,
        model: &str,
        outcome: &str,
        first_token: Option<Duration>,
        tokens: u64,
    ) {
        let model = self.model_label(model);
        self.generations
            .get_or_create(&Outcome {
                model: model.clone(),
                outcome: outcome.to_owned(),
            })
            .inc();
        if let Some(t) = first_token {
            self.time_to_first_token
                .get_or_create(&ModelLabel {
                    model: model.clone(),
                })
                .observe(t.as_secs_f64());
        }
        if tokens > 0 {
            self.generated_tokens
                .get_or_create(&ModelLabel { model })
                .inc_by(tokens);
        }
    }

    pub fn retry(&self, model: &str, reason: &str) {
        self.retries
            .get_or_create(&Reason {
                model: self.model_label(model),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn retry_refused(&self, model: &str, reason: &str) {
        self.retries_refused
            .get_or_create(&Reason {
                model: self.model_label(model),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A hedge sent, won, or not sent and why.
    pub fn hedge(&self, model: &str, reason: &str) {
        self.hedges
            .get_or_create(&Reason {
                model: self.model_label(model),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The exposition, with the gauges read from the live state first.
    pub fn encode(&self, backends: &Backends, queues: &Queues) -> String {
        self.breaker.clear();
        self.outstanding.clear();
        for b in backends.all() {
            let ep = b.endpoint();
            let label = BrowserLabel {
                pool: ep.pool,
                browser: if ep.pod.is_empty() { ep.id } else { ep.pod },
            };
            self.breaker.get_or_create(&label).set(b.breaker_state().1);
            self.outstanding
                .get_or_create(&label)
                .set(i64::try_from(b.outstanding()).unwrap_or(i64::MAX));
        }
        self.queued.clear();
        self.waiting_for_browser.clear();
        for (model, w) in queues.snapshot() {
            let label = ModelLabel {
                model: self.model_label(&model),
            };
            self.queued
                .get_or_create(&label)
                .set(i64::try_from(w.total).unwrap_or(i64::MAX));
            self.waiting_for_browser
                .get_or_create(&label)
                .set(i64::try_from(w.for_browser).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        let registry = self.registry.lock();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
