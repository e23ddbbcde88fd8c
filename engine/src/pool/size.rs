//! The size a pool steers to: `replicas`, or, with autoscaling on, the autoscaler's
//! decision from the load its ready browsers report (and, while none is ready, the
//! number of requests waiting for one: scale from zero), raised to the browsers its
//! autoscaled models' replicas need ([`Demand::model_browsers`]): the browsers follow
//! the models.

use jiff::Timestamp;

use super::browser::BrowserView;
use super::memory::PoolMemory;
use crate::autoscale::LoadSample;
use crate::policy::PoolPolicy;

/// The size and why, with a bounded cause for metrics (`spec`, `load`, `idle`,
/// `waiting_requests`, `silent_browsers`).
#[derive(Debug, Clone, PartialEq)]
pub struct Size {
    pub desired: i32,
    pub reason: String,
    pub cause: &'static str,
}

/// What is asked of a pool besides its browsers' own load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    /// Requests waiting for a browser of this pool (only heard while it has none ready).
    pub waiting: u64,
    /// Browsers the pool's models need for the replicas they want: a browser holds one
    /// replica of a model, so the most any one model wants (per stage).
    pub model_browsers: i32,
    /// Browsers to add to those serving, for replicas that fit on none for memory.
    pub without_room: i32,
}

/// Decides the pool's size at `now`.
pub fn desired(
    spec: &PoolPolicy,
    browsers: &[BrowserView],
    memory: &mut PoolMemory,
    demand: Demand,
    now: Timestamp,
) -> Size {
    let waiting = demand.waiting;
    let Some(policy) = spec.autoscaling.as_ref().filter(|a| a.enabled) else {
        return Size {
            desired: spec.replicas,
            reason: format!("spec.replicas is {}", spec.replicas),
            cause: "spec",
        };
    };
    let serving: Vec<&BrowserView> = browsers
        .iter()
        .filter(|b| !b.terminating && !b.is_draining() && b.ready)
        .collect();
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let parallelism: Vec<u64> = serving
        .iter()
        .filter_map(|b| b.stats.as_ref().map(|s| s.parallelism()))
        .collect();
    #[allow(clippy::cast_precision_loss)]
    let workers_per_browser = if parallelism.is_empty() {
        f64::from(spec.page_workers.unwrap_or(1).max(1))
    } else {
        parallelism.iter().sum::<u64>() as f64 / parallelism.len() as f64
    };
    let count_of = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let serving_now = count_of(serving.len());
    // What the models' replicas need: the most any model wants, or (for replicas that
    // fit on no browser for memory) one more browser each beyond those serving.
    let for_models = if demand.without_room > 0
        && serving_now.saturating_add(demand.without_room) > demand.model_browsers
    {
        Some((
            serving_now.saturating_add(demand.without_room),
            format!(
                "{} replicas fit on none of the {serving_now} browsers for memory",
                demand.without_room
            ),
        ))
    } else {
        (demand.model_browsers > 0).then(|| {
            (
                demand.model_browsers,
                format!(
                    "the models' replicas need {} browsers",
                    demand.model_browsers
                ),
            )
        })
    };
    let sample = LoadSample {
        workers_per_browser,
        load: serving.iter().filter_map(|b| b.load()).sum(),
        reporting: count(serving.iter().filter(|b| b.stats.is_some()).count()),
        silent: count(serving.iter().filter(|b| b.stats.is_none()).count()),
        waiting: if serving.is_empty() { waiting } else { 0 },
        floor: for_models,
    };
    let current = count(
        browsers
            .iter()
            .filter(|b| !b.terminating && !b.is_draining())
            .count(),
    );
    let current = memory.last_desired.unwrap_or(current);
    #[allow(clippy::cast_precision_loss)]
    let now_s = now.as_millisecond() as f64 / 1000.0;
    let d = memory.autoscaler.decide(policy, now_s, current, sample);
    Size {
        desired: d.desired,
        reason: d.reason,
        cause: d.cause,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Autoscaling;

    fn ready(name: &str) -> BrowserView {
        BrowserView {
            name: name.into(),
            phase: "Running".into(),
            ready: true,
            // Answering, with nothing in flight.
            stats: Some(webaccel_api::agent::AgentStats::default()),
            ..BrowserView::default()
        }
    }

    #[test]
    fn the_browsers_follow_the_models_replicas_within_the_pools_bounds() {
        let spec = PoolPolicy {
            autoscaling: Some(Autoscaling {
                enabled: true,
                min_replicas: 0,
                max_replicas: 5,
                target_in_flight_per_browser: 4,
                scale_up_stabilization_seconds: 0,
                scale_down_stabilization_seconds: 0,
            }),
            ..PoolPolicy::default()
        };
        let now = Timestamp::from_second(1_800_000_000).unwrap_or_default();
        let size = |model_browsers, browsers: &[BrowserView]| {
            let mut memory = PoolMemory::default();
            let demand = Demand {
                waiting: 0,
                model_browsers,
                without_room: 0,
            };
            desired(&spec, browsers, &mut memory, demand, now)
        };
        // Idle browsers, but a model wants 3 replicas: 3 browsers.
        let s = size(3, &[ready("a")]);
        assert_eq!((s.desired, s.cause), (3, "model_replicas"), "{}", s.reason);
        // Within the pool's max.
        assert_eq!(size(9, &[ready("a")]).desired, 5);
        // No model wants anything and nothing is in flight: down to the pool's min.
        let s = size(0, &[ready("a"), ready("b")]);
        assert_eq!((s.desired, s.cause), (0, "idle"));
        // Two browsers serve; a replica fits on neither for memory: a third.
        let mut memory = PoolMemory::default();
        let demand = Demand {
            waiting: 0,
            model_browsers: 2,
            without_room: 1,
        };
        let s = desired(&spec, &[ready("a"), ready("b")], &mut memory, demand, now);
        assert_eq!((s.desired, s.cause), (3, "model_replicas"));
        assert!(
            s.reason
                .starts_with("1 replicas fit on none of the 2 browsers"),
            "{}",
            s.reason
        );
    }
}
