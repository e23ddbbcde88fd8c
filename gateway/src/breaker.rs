//! A circuit breaker per browser. Closed, it lets everything through and counts; it
//! opens after `consecutive` health failures in a row, or when at least `failure_ratio`
//! of the outcomes in the last `window` failed (with `min_requests` of them). Open, it
//! lets nothing through for a cool-down; then one probe goes through (half-open): a
//! success closes it, a failure opens it again with twice the cool-down (up to
//! `max_cooldown`). Pure state: the caller passes the time, so tests control it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use webaccel_api::Backoff;

#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    pub consecutive: u32,
    pub window: Duration,
    pub min_requests: usize,
    pub failure_ratio: f64,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive: 5,
            window: Duration::from_secs(10),
            min_requests: 20,
            failure_ratio: 0.5,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(60),
        }
    }
}

/// `reopened` counts the probes that failed in a row: the cool-down's backoff step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open {
        until: Instant,
        reopened: u32,
    },
    /// One probe is out (since `since`); its outcome decides.
    HalfOpen {
        since: Instant,
        reopened: u32,
    },
}

/// Whether a request may go to the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Yes, as the half-open probe.
    Probe,
    No,
}

#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: State,
    consecutive_failures: u32,
    outcomes: VecDeque<(Instant, bool)>,
}

/// A probe that never reported (its caller went away) is given up after this long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        Self {
            cfg,
            state: State::Closed,
            consecutive_failures: 0,
            outcomes: VecDeque::new(),
        }
    }

    /// Asks to send a request now.
    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            State::Closed => Admit::Yes,
            State::Open { until, reopened } if now >= until => {
                self.state = State::HalfOpen {
                    since: now,
                    reopened,
                };
                Admit::Probe
            }
            State::HalfOpen { since, reopened } if now >= since + PROBE_TIMEOUT => {
                self.state = State::HalfOpen {
                    since: now,
                    reopened,
                };
                Admit::Probe
            }
            State::Open { .. } | State::HalfOpen { .. } => Admit::No,
        }
    }

    /// Whether a request would be admitted now (without taking the probe).
    pub fn would_admit(&self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { until, .. } => now >= until,
            State::HalfOpen { since, .. } => now >= since + PROBE_TIMEOUT,
        }
    }

    /// Whether its next admission would be the half-open probe: such a browser gets the
    /// next request whatever its load says, so recovery is seen at once.
    pub fn probe_due(&self, now: Instant) -> bool {
        match self.state {
            State::Closed => false,
            State::Open { until, .. } => now >= until,
            State::HalfOpen { since, .. } => now >= since + PROBE_TIMEOUT,
        }
    }

    /// Records an outcome: `healthy` is false only for failures that say the browser or
    /// its connection is broken.
    pub fn record(&mut self, now: Instant, healthy: bool) {
        self.outcomes.push_back((now, healthy));
        while self
            .outcomes
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > self.cfg.window)
        {
            self.outcomes.pop_front();
        }
        if healthy {
            self.consecutive_failures = 0;
            if matches!(self.state, State::HalfOpen { .. }) {
                self.state = State::Closed;
                self.outcomes.clear();
            }
            return;
        }
        self.consecutive_failures += 1;
        match self.state {
            State::HalfOpen { reopened, .. } => self.reopen(now, reopened),
            State::Closed if self.should_open() => self.open(now),
            _ => {}
        }
    }

    /// Opens the circuit now, whatever the counts say: the browser stopped answering
    /// altogether (requests outstanding, no answer for too long).
    pub fn trip(&mut self, now: Instant) {
        match self.state {
            State::Closed => self.open(now),
            State::HalfOpen { reopened, .. } => self.reopen(now, reopened),
            State::Open { .. } => {}
        }
    }

    /// Opens a closed circuit for the first cool-down.
    fn open(&mut self, now: Instant) {
        self.state = State::Open {
            until: now + self.cfg.cooldown,
            reopened: 0,
        };
    }

    /// Opens the circuit again after a failed probe, the cool-down doubled per failed
    /// probe in a row up to `max_cooldown`.
    fn reopen(&mut self, now: Instant, reopened: u32) {
        let reopened = reopened.saturating_add(1);
        let cooldown = Backoff::new(self.cfg.cooldown, self.cfg.max_cooldown).delay(reopened);
        self.state = State::Open {
            until: now + cooldown,
            reopened,
        };
    }

    fn should_open(&self) -> bool {
        if self.consecutive_failures >= self.cfg.consecutive {
            return true;
        }
        let n = self.outcomes.len();
        let failed = self.outcomes.iter().filter(|(_, ok)| !ok).count();
        #[allow(clippy::cast_precision_loss)]
        let ratio = failed as f64 / n.max(1) as f64;
        n >= self.cfg.min_requests && ratio >= self.cfg.failure_ratio
    }

    /// `closed`, `open` or `half_open`, for metrics and the admin view.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }

    /// 0 closed, 1 half-open, 2 open (the metric's value).
    pub fn state_code(&self) -> i64 {
        match self.state {
            State::Closed => 0,
            State::HalfOpen { .. } => 1,
            State::Open { .. } => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive: 3,
            window: Duration::from_secs(10),
            min_requests: 10,
            failure_ratio: 0.5,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(4),
        }
    }

    #[test]
    fn opens_on_consecutive_failures_probes_after_cooldown_and_closes_on_success() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        for k in 0..3 {
            assert_eq!(b.admit(t0), Admit::Yes, "{k}");
            b.record(t0, false);
        }
        assert_eq!(b.state_name(), "open");
        assert_eq!(b.admit(t0 + Duration::from_millis(999)), Admit::No);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.admit(t1), Admit::Probe);
        assert_eq!(b.admit(t1), Admit::No, "one probe at a time");
        b.record(t1, true);
        assert_eq!(b.state_name(), "closed");
        assert_eq!(b.admit(t1), Admit::Yes);
    }

    #[test]
    fn a_failed_probe_doubles_the_cooldown_up_to_the_cap() {
        let mut t = Instant::now();
        let mut b = Breaker::new(cfg());
        for _ in 0..3 {
            b.record(t, false);
        }
        for want in [2, 4, 4] {
            t += Duration::from_secs(10);
            assert_eq!(b.admit(t), Admit::Probe);
            b.record(t, false);
            assert_eq!(
                b.admit(t + Duration::from_secs(want) - Duration::from_millis(1)),
                Admit::No
            );
            assert!(b.would_admit(t + Duration::from_secs(want)));
        }
    }

    #[test]
    fn a_stalled_browser_trips_the_circuit() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        b.trip(t0);
        assert_eq!(b.state_name(), "open");
        assert_eq!(b.admit(t0), Admit::No);
        assert_eq!(b.admit(t0 + Duration::from_secs(1)), Admit::Probe);
    }

    #[test]
    fn opens_on_a_failure_rate_without_a_streak() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        for k in 0..10 {
            b.record(t0, k % 2 == 0);
        }
        assert_eq!(b.state_name(), "open", "5 of 10 failed");
        let mut b = Breaker::new(cfg());
        for k in 0..9 {
            b.record(t0, k % 2 == 0);
        }
        assert_eq!(b.state_name(), "closed", "too few requests to judge a rate");
    }

    #[test]
    fn old_outcomes_leave_the_window_and_an_abandoned_probe_is_replaced() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        for _ in 0..4 {
            b.record(t0, false);
            b.record(t0, true);
        }
        // Counted with the old ones, 7 of 14 would have failed; alone, 3 of 6.
        let later = t0 + Duration::from_secs(11);
        for _ in 0..3 {
            b.record(later, false);
            b.record(later, true);
        }
        assert_eq!(b.state_name(), "closed");
        let mut b = Breaker::new(cfg());
        for _ in 0..3 {
            b.record(t0, false);
        }
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.admit(t1), Admit::Probe);
        assert_eq!(b.admit(t1 + PROBE_TIMEOUT), Admit::Probe);
    }
}
