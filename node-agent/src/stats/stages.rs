//! Each successful request's stages (`webaccel_api::timing`): a histogram per model and
//! stage, and the last minute's requests for `/v1/stats`'s slowest 1%.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use webaccel_api::timing::{Stage, StageTimes, TailWindow};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    model: String,
    stage: &'static str,
}

/// 10 µs to about 5 s: a stage can take a few microseconds.
fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 20))
}

#[derive(Debug)]
pub struct StageMetrics {
    duration: Family<StageLabels, Histogram, fn() -> Histogram>,
    /// The last minute's successful requests, for the slowest 1%'s breakdown.
    pub tail: TailWindow,
}

impl StageMetrics {
    /// The metrics, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let duration = Family::<StageLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            stage_histogram,
        );
        registry.register(
            "request_stage_seconds",
            "Time per stage of a successful inference request, from the front's receive to the agent's reply (see webaccel_api::timing::Stage)",
            duration.clone(),
        );
        Self {
            duration,
            tail: TailWindow::default(),
        }
    }

    /// Notes a successful request's stages (each in its histogram) and its whole time
    /// for the window of the slowest.
    pub fn answered(&self, model: &str, request_id: &str, stages: &StageTimes, total_ms: f64) {
        for (stage, ms) in stages.measured() {
            self.observe(model, stage, ms);
        }
        self.tail.push(model, request_id, total_ms, *stages);
    }

    fn observe(&self, model: &str, stage: Stage, ms: f64) {
        self.duration
            .get_or_create(&StageLabels {
                model: model.to_owned(),
                stage: stage.as_str(),
            })
            .observe(ms / 1e3);
    }
}
