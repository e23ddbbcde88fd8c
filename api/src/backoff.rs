//! Exponential backoff, the one shape of every wait that grows after each failure in
//! webaccel (the gateway's retries, bridge reconnects and circuit-breaker cool-downs, the
//! agent's browser restarts and launches, the engine's heals): a first pause doubled per
//! step, capped, with full jitter where many callers may fail at once.
//!
//! It keeps no state: the caller counts its steps (failures in a row, heals in a row)
//! where it keeps its other state, which is what the engine's per-pool memory and the
//! supervisor's loop need. (The `backon` crate's backoff is an iterator, and its jitter
//! adds up to one more pause on top, where these places draw between zero and the pause.)

use std::time::Duration;

/// `base` doubled per step, at most `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    /// A backoff whose first pause is `base` and that never waits longer than `cap`.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The pause after `step` earlier ones: `base` doubled `step` times, at most `cap`.
    pub fn delay(self, step: u32) -> Duration {
        // 2^31 steps of any base outgrow every cap in use; the shift cannot overflow.
        self.base.saturating_mul(1u32 << step.min(31)).min(self.cap)
    }

    /// [`Self::delay`] with full jitter: uniformly random between zero and it, so callers
    /// that failed together do not come back together.
    pub fn full_jitter(self, step: u32) -> Duration {
        self.delay(step).mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn doubles_from_the_base_up_to_the_cap() {
        let b = Backoff::new(MS(500), Duration::from_secs(30));
        let steps: Vec<Duration> = (0..8).map(|s| b.delay(s)).collect();
        assert_eq!(
            steps,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000].map(MS)
        );
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn a_long_way_to_the_cap_is_still_reached() {
        let b = Backoff::new(Duration::from_nanos(1), Duration::from_secs(1));
        assert_eq!(b.delay(30), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_stays_between_zero_and_the_delay() {
        let b = Backoff::new(MS(50), Duration::from_secs(5));
        for step in 0..20 {
            let d = b.full_jitter(step);
            assert!(d <= b.delay(step), "{step}: {d:?}");
        }
    }
}
