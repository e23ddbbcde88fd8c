//! The size a pool steers to: `replicas`, or, with autoscaling on, the autoscaler's
//! decision from the load its ready browsers report (and, while none is ready, the
//! number of requests waiting for one: scale from zero).

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

/// Decides the pool's size at `now`. `waiting` is the number of requests waiting for a
/// browser of this pool (only heard while it has none ready).
pub fn desired(
    spec: &PoolPolicy,
    browsers: &[BrowserView],
    memory: &mut PoolMemory,
    waiting: u64,
    now: Timestamp,
) -> Size {
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
    let sample = LoadSample {
        workers_per_browser,
        load: serving.iter().filter_map(|b| b.load()).sum(),
        reporting: count(serving.iter().filter(|b| b.stats.is_some()).count()),
        silent: count(serving.iter().filter(|b| b.stats.is_none()).count()),
        waiting: if serving.is_empty() { waiting } else { 0 },
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
