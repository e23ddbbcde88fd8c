//! Scale from zero: requests for a model that no ready browser holds wait (within their
//! deadline) instead of failing, and the number waiting per model is published to
//! whoever can start browsers: on Kubernetes the operator (an annotation on the pool,
//! `webaccel.dev/waiting-requests`), in local mode the engine. Published when it
//! changes, at most once a second, and again every 30 s while requests wait (the
//! operator ignores a signal older than two minutes).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::backend::Backends;
use crate::queue::Queues;

/// Requests waiting for a browser, per model (models with none are absent).
pub type WaitingByModel = BTreeMap<String, usize>;

/// Where the waiting counts go.
pub trait WaitingSink: Send + Sync + std::fmt::Debug + 'static {
    /// The current counts; a model missing from `waiting` has none waiting any more.
    fn publish(&self, waiting: &WaitingByModel);
}

/// Nobody to tell (static agents): the counts only reach the log.
#[derive(Debug)]
pub struct LogOnly;

impl WaitingSink for LogOnly {
    fn publish(&self, waiting: &WaitingByModel) {
        if !waiting.is_empty() {
            tracing::info!(
                ?waiting,
                "requests are waiting for models no ready browser holds"
            );
        }
    }
}

const REPUBLISH: Duration = Duration::from_secs(30);

/// The publishing loop: every second, the models whose requests wait for a browser.
pub async fn publish(
    queues: Arc<Queues>,
    backends: Arc<Backends>,
    sink: Arc<dyn WaitingSink>,
    stop: CancellationToken,
) {
    let mut last = WaitingByModel::new();
    let mut last_sent = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {},
        }
        let now: WaitingByModel = queues
            .snapshot()
            .into_iter()
            .filter(|(model, w)| w.for_browser > 0 && !backends.serves(model))
            .map(|(model, w)| (model, w.for_browser))
            .collect();
        if now != last || (!now.is_empty() && last_sent.elapsed() >= REPUBLISH) {
            sink.publish(&now);
            last = now;
            last_sent = Instant::now();
        }
    }
}
