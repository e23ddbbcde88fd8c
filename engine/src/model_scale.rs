//! The per-model autoscaler: from a model's own demand (requests in flight and queued on
//! its replicas, plus requests the gateway holds for it) to its number of replicas, after
//! Knative's KPA. A pool's browsers then follow the replicas (see
//! [`crate::pool::size::Demand`]).
//!
//! Why KPA's shape and not the pool autoscaler's (HPA-style min/max over windows): a
//! model's demand is a concurrency, averaged over a window it is steady, but a burst must
//! be met within seconds, and an idle model should give its browsers' memory back and
//! come back on the first request. So: the stable window's average sets the size; the
//! panic window's average, when it asks for `panicThresholdPercent` of the ready
//! replicas, scales up at once and forbids scaling down until a stable window has passed
//! without panic; scaling down goes only as far as every stable average of the last
//! window allows (so a load at a boundary does not flap the replicas); zero comes only
//! after `scaleToZeroGraceSeconds` with nothing in flight or waiting, and requests
//! waiting for a model at zero bring it back at once.
//!
//! Pure: time comes in as seconds, so synthetic traces drive it in tests.

use std::collections::VecDeque;

use crate::policy::ModelAutoscaling;

/// The target per replica when the spec gives none and the model does not say (a
/// text-generation model's `maxSequences` does).
pub const DEFAULT_TARGET: i32 = 4;

/// What the model autoscaler sees at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ModelLoad {
    /// Requests of this model in flight or queued, summed over the replicas that answered
    /// (for a text-generation model: its running and waiting sequences).
    pub in_flight: u64,
    /// Requests the gateway holds for this model because no browser serves it.
    pub waiting: u64,
    /// Loaded replicas (serving).
    pub ready: i32,
    /// Replicas whose agent did not answer: their load is unknown.
    pub silent: i32,
}

/// One decision and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelScale {
    pub desired: i32,
    pub reason: String,
    /// A bounded name for the reason, fit for a metric label: `load`, `panic`,
    /// `waiting_requests`, `idle`, `scale_to_zero_grace` or `silent_replicas`.
    pub cause: &'static str,
    /// Whether the autoscaler is in panic mode (scale-down held).
    pub panicking: bool,
}

/// Per-model memory between decisions. Lost on restart: it then starts from the size the
/// host last reported, with an empty window (which can only hold the size).
#[derive(Debug, Default, Clone)]
pub struct ModelScaler {
    /// `(second, concurrency)` over the stable window.
    samples: VecDeque<(f64, f64)>,
    /// Panic mode lasts until this second.
    panic_until: Option<f64>,
    /// The highest size decided in this panic.
    panic_peak: i32,
    /// The last second something was in flight or waiting (or the first decision).
    last_active: Option<f64>,
    /// `(second, size the stable average asked for)` over the stable window: scale-down
    /// goes only to the most of them, so a size holds until a whole window agrees it is
    /// too big (a load at a boundary does not flap the replicas).
    asked: VecDeque<(f64, i32)>,
}

#[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
fn replicas_for(concurrency: f64, target: f64) -> i32 {
    (concurrency / target).ceil().min(f64::from(i32::MAX)) as i32
}

impl ModelScaler {
    /// Decides the replicas at `now_s`. `current` is the size last decided (or reported);
    /// `target` the concurrency one replica holds.
    #[allow(clippy::cast_precision_loss)]
    pub fn decide(
        &mut self,
        policy: &ModelAutoscaling,
        target: i32,
        now_s: f64,
        current: i32,
        load: ModelLoad,
    ) -> ModelScale {
        let target = f64::from(target.max(1));
        let stable = f64::from(policy.stable_window_seconds.max(1));
        let panic_window = f64::from(policy.panic_window_seconds.max(1)).min(stable);
        let demand = load.in_flight + load.waiting;
        let concurrency = demand as f64;
        if demand > 0 || self.last_active.is_none() {
            self.last_active = Some(now_s);
        }
        self.samples.push_back((now_s, concurrency));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now_s - t >= stable)
        {
            self.samples.pop_front();
        }
        // The mean over a window; `from_load` drops the window's leading idle samples.
        let average = |window: f64, from_load: bool| {
            let within: Vec<f64> = self
                .samples
                .iter()
                .filter(|(t, _)| now_s - t < window)
                .map(|&(_, c)| c)
                .skip_while(|&c| from_load && c == 0.0)
                .collect();
            within.iter().sum::<f64>() / within.len().max(1) as f64
        };
        // The panic window starts where its load does: leading idle samples are the quiet
        // before a burst, not part of it, and counting them would hide a step from idle
        // for most of the window (16 in flight after 5 idle seconds averages 2.7 over 6 s).
        // Knative's buckets behave so when nothing was recorded while idle. A load that
        // was already running keeps its whole window, so only a rise from nothing is
        // judged on its first samples; the stable window always counts the idle time.
        let (stable_avg, panic_avg) = (average(stable, false), average(panic_window, true));
        let want_stable = replicas_for(stable_avg, target);
        let want_panic = replicas_for(panic_avg, target);
        self.asked.push_back((now_s, want_stable));
        while self.asked.front().is_some_and(|(t, _)| now_s - t >= stable) {
            self.asked.pop_front();
        }
        let held = self
            .asked
            .iter()
            .map(|&(_, n)| n)
            .max()
            .unwrap_or(want_stable);
        let clamp = |n: i32| n.clamp(policy.min_replicas, policy.max_replicas);

        // Panic: the short window asks for the threshold's share of what serves now,
        // measured unrounded (5 in flight at 4 per replica is 125% of one, not the 2
        // replicas it rounds up to).
        let ready = f64::from(load.ready.max(1));
        if panic_avg / target / ready * 100.0 >= f64::from(policy.panic_threshold_percent)
            && want_panic > current
        {
            if self.panic_until.is_none() {
                self.panic_peak = current;
            }
            self.panic_until = Some(now_s + stable);
        }
        if self.panic_until.is_some_and(|t| now_s >= t) {
            self.panic_until = None;
        }
        let panicking = self.panic_until.is_some();

        let (mut desired, mut reason, mut cause) = if current == 0 && load.waiting > 0 {
            // From zero: the held requests cannot wait for a window to fill.
            let n = replicas_for(load.waiting as f64, target).max(1);
            (
                n,
                format!(
                    "{} requests waiting and no replica; target {target}/replica",
                    load.waiting
                ),
                "waiting_requests",
            )
        } else if panicking {
            let n = want_panic.max(self.panic_peak).max(current);
            self.panic_peak = n;
            (
                n,
                format!(
                    "panic: {panic_avg:.1} in flight over {panic_window}s on {} ready, target {target}/replica; scale-down held",
                    load.ready
                ),
                "panic",
            )
        } else {
            let cause = if stable_avg > 0.0 { "load" } else { "idle" };
            // Down only as far as the latest demand (the panic window) and every stable
            // average over the last window allow: the stable average lags a rising load,
            // and dropping below what the last seconds (or any moment of the window)
            // asked for would only bring the replica back.
            let n = if want_stable < current {
                want_stable
                    .max(want_panic.min(current))
                    .max(held.min(current))
            } else {
                want_stable
            };
            (
                n,
                format!("{stable_avg:.1} in flight over {stable}s, target {target}/replica"),
                cause,
            )
        };

        // Zero only after the grace with nothing in flight or waiting.
        if desired == 0 && current > 0 && policy.min_replicas == 0 {
            let idle_for = now_s - self.last_active.unwrap_or(now_s);
            if idle_for < f64::from(policy.scale_to_zero_grace_seconds) {
                desired = 1;
                cause = "scale_to_zero_grace";
                reason = format!(
                    "idle for {idle_for:.0}s of the {}s grace before zero",
                    policy.scale_to_zero_grace_seconds
                );
            }
        }
        // A replica whose load is unknown might be busy: never below what is there.
        if load.silent > 0 && desired < current {
            desired = current;
            cause = "silent_replicas";
            reason.push_str(&format!(
                "; {} replicas did not report, holding",
                load.silent
            ));
        }
        let bounded = clamp(desired);
        if bounded != desired {
            reason.push_str(&format!(
                "; within [{}, {}]",
                policy.min_replicas, policy.max_replicas
            ));
        }
        ModelScale {
            desired: bounded,
            reason: format!("{reason} → {bounded}"),
            cause,
            panicking,
        }
    }
}

#[cfg(test)]
#[path = "model_scale_tests.rs"]
mod tests;
