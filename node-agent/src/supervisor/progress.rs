//! The supervisor's watchdog: each loop says which step it is in and how long that step
//! may take; a loop found past that bound (plus a grace) is stuck, and `/healthz` says so.

use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use serde::Serialize;

/// Where a loop is and until when it is expected to move on.
#[derive(Debug)]
pub(super) struct Progress(Mutex<Step>);

#[derive(Debug, Clone, Copy)]
struct Step {
    stage: &'static str,
    since: Instant,
    /// `None`: waiting is legitimately unbounded (an idle standby, a shutdown).
    bound: Option<Duration>,
}

/// A loop stuck past its step's bound.
#[derive(Debug, Clone, Serialize)]
pub struct Stall {
    pub stage: String,
    pub stuck_for_s: f64,
    pub bound_s: f64,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} for {:.0} s, past its bound of {:.0} s",
            self.stage, self.stuck_for_s, self.bound_s
        )
    }
}

impl Progress {
    pub(super) fn new(stage: &'static str) -> Self {
        Self(Mutex::new(Step {
            stage,
            since: Instant::now(),
            bound: None,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Step> {
        self.0.lock()
    }

    /// Enters a step that must end within `bound`.
    pub(super) fn enter(&self, stage: &'static str, bound: Duration) {
        *self.lock() = Step {
            stage,
            since: Instant::now(),
            bound: Some(bound),
        };
    }

    /// Enters a wait with no bound.
    pub(super) fn idle(&self, stage: &'static str) {
        *self.lock() = Step {
            stage,
            since: Instant::now(),
            bound: None,
        };
    }

    /// The stall, if the current step has run past its bound plus `grace`.
    pub(super) fn stalled(&self, grace: Duration, who: &str) -> Option<Stall> {
        let step = *self.lock();
        let bound = step.bound?;
        let elapsed = step.since.elapsed();
        (elapsed > bound + grace).then(|| Stall {
            stage: format!("{who}: {}", step.stage),
            stuck_for_s: elapsed.as_secs_f64(),
            bound_s: bound.as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_past_its_bound_is_a_stall_and_an_idle_wait_is_not() {
        let p = Progress::new("x");
        assert!(p.stalled(Duration::ZERO, "loop").is_none(), "idle at first");
        p.enter("connecting", Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        let stall = p.stalled(Duration::ZERO, "loop").expect("stalled");
        assert_eq!(stall.stage, "loop: connecting");
        assert!(
            p.stalled(Duration::from_secs(60), "loop").is_none(),
            "within grace"
        );
        p.idle("waiting");
        assert!(p.stalled(Duration::ZERO, "loop").is_none());
    }
}
