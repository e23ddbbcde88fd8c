//! The autoscaler: from the load the agents report to a pool size, with HPA-style
//! stabilization windows so a noisy load does not make the pool flap.
//!
//! Pure: time comes in as seconds, so synthetic load traces can drive it in tests.

use std::collections::VecDeque;

use crate::policy::Autoscaling;

/// What the autoscaler sees at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSample {
    /// In-flight plus queued requests summed over the browsers that answered.
    pub load: u64,
    /// Browsers whose load is included in `load`.
    pub reporting: i32,
    /// Ready browsers that did not answer; their load is unknown.
    pub silent: i32,
    /// Requests waiting for a browser in a pool that has none ready (the
    /// `webaccel.dev/waiting-requests` annotation), the scale-from-zero signal.
    pub waiting: u64,
    /// Requests one browser computes at once, averaged over the browsers that answered
    /// (their page workers), or the pool's setting while none did; at least 1. A
    /// browser's capacity is this times the policy's target.
    pub workers_per_browser: f64,
    /// Browsers the pool's models need for their replicas, with why: the recommendation
    /// never goes below it, and like any recommendation it passes the windows (so the
    /// pool does not drop a browser the moment a model shrinks, only after the down
    /// window).
    pub floor: Option<(i32, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: i32,
    /// What the load alone asks for, before stabilization.
    pub recommended: i32,
    pub reason: String,
    /// A bounded name for `reason`, fit for a metric label: `load`, `waiting_requests`,
    /// `idle`, `silent_browsers` or `model_replicas`.
    pub cause: &'static str,
}

/// Per-pool memory: the recent recommendations the stabilization windows look at.
#[derive(Debug, Default, Clone)]
pub struct Autoscaler {
    history: VecDeque<(f64, i32)>,
}

impl Autoscaler {
    /// Decides the pool size at `now_s` given its current size and load.
    pub fn decide(
        &mut self,
        policy: &Autoscaling,
        now_s: f64,
        current: i32,
        sample: LoadSample,
    ) -> Decision {
        let target = f64::from(policy.target_in_flight_per_browser.max(1))
            * sample.workers_per_browser.max(1.0);
        let (mut recommended, mut why, mut cause) = if sample.reporting + sample.silent == 0 {
            // Nobody to ask: only the waiting-requests signal says anything.
            if sample.waiting > 0 {
                let n = (sample.waiting as f64 / target).ceil() as i32;
                (
                    n.max(1),
                    format!("{} requests waiting and no ready browser", sample.waiting),
                    "waiting_requests",
                )
            } else {
                (
                    policy.min_replicas,
                    "no ready browser and nothing waiting".to_owned(),
                    "idle",
                )
            }
        } else {
            let n = (sample.load as f64 / target).ceil() as i32;
            let why = format!(
                "load {} over {} browsers, target {}/browser",
                sample.load, sample.reporting, target
            );
            (n, why, if sample.load == 0 { "idle" } else { "load" })
        };
        // A browser whose load is unknown might be busy: never scale below what is running.
        if sample.silent > 0 && recommended < current {
            recommended = current;
            cause = "silent_browsers";
            why.push_str(&format!(
                "; {} browsers did not report, holding",
                sample.silent
            ));
        }
        if let Some((floor, why_floor)) = &sample.floor
            && *floor > recommended
        {
            why = format!("{why_floor} (load alone: {recommended})");
            recommended = *floor;
            cause = "model_replicas";
        }
        let recommended = recommended.clamp(policy.min_replicas, policy.max_replicas);

        let up_window = f64::from(policy.scale_up_stabilization_seconds);
        let down_window = f64::from(policy.scale_down_stabilization_seconds);
        let keep = up_window.max(down_window);
        self.history.push_back((now_s, recommended));
        while self.history.front().is_some_and(|(t, _)| now_s - t > keep) {
            self.history.pop_front();
        }
        // Scale up to the lowest recommendation of the up window (all of it must want more),
        // down to the highest of the down window (all of it must want less).
        let within = |w: f64| {
            self.history
                .iter()
                .filter(move |(t, _)| now_s - t <= w)
                .map(|&(_, r)| r)
        };
        // A window of 0 means at once: this sample alone, even if others were taken at
        // the same instant.
        let up_to = if up_window > 0.0 {
            within(up_window).min().unwrap_or(recommended)
        } else {
            recommended
        };
        let down_to = if down_window > 0.0 {
            within(down_window).max().unwrap_or(recommended)
        } else {
            recommended
        };
        let desired = if up_to > current {
            up_to
        } else if down_to < current {
            down_to
        } else {
            current
        }
        .clamp(policy.min_replicas, policy.max_replicas);
        let reason = if desired == recommended {
            format!("{why} → {desired}")
        } else {
            format!("{why} → {recommended}, stabilized at {desired}")
        };
        Decision {
            desired,
            recommended,
            reason,
            cause,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: i32, max: i32, up: i32, down: i32) -> Autoscaling {
        Autoscaling {
            enabled: true,
            min_replicas: min,
            max_replicas: max,
            target_in_flight_per_browser: 4,
            scale_up_stabilization_seconds: up,
            scale_down_stabilization_seconds: down,
        }
    }

    fn sample(load: u64, reporting: i32, silent: i32, waiting: u64) -> LoadSample {
        LoadSample {
            load,
            reporting,
            silent,
            waiting,
            workers_per_browser: 1.0,
            floor: None,
        }
    }

    fn load(load: u64, reporting: i32) -> LoadSample {
        sample(load, reporting, 0, 0)
    }

    #[test]
    fn a_browser_with_page_workers_holds_their_share_of_the_load() {
        let p = policy(1, 10, 0, 0);
        let mut a = Autoscaler::default();
        let four_workers = LoadSample {
            workers_per_browser: 4.0,
            ..load(16, 1)
        };
        // Target 4 per worker: 16 requests fill one browser of four workers...
        assert_eq!(a.decide(&p, 0.0, 1, four_workers.clone()).desired, 1);
        // ...and 17 need a second; without workers they would need five browsers.
        let more = LoadSample {
            load: 17,
            ..four_workers
        };
        assert_eq!(a.decide(&p, 1.0, 1, more).desired, 2);
        assert_eq!(a.decide(&p, 2.0, 2, load(17, 1)).desired, 5);
    }

    /// Runs a trace of (second, load) through the autoscaler, applying each decision at
    /// once, and returns the sizes over time.
    fn run(p: &Autoscaling, start: i32, trace: &[(f64, u64)]) -> Vec<(f64, i32)> {
        let mut a = Autoscaler::default();
        let mut size = start;
        trace
            .iter()
            .map(|&(t, l)| {
                size = a.decide(p, t, size, load(l, size)).desired;
                (t, size)
            })
            .collect()
    }

    #[test]
    fn a_spike_scales_up_at_the_first_sample_and_down_only_after_the_window() {
        let p = policy(1, 10, 0, 60);
        // 10 s idle, 20 s at 30 requests, then idle again; one sample a second.
        let trace: Vec<(f64, u64)> = (0..120)
            .map(|t| (f64::from(t), if (10..30).contains(&t) { 30 } else { 0 }))
            .collect();
        let sizes = run(&p, 1, &trace);
        assert_eq!(sizes[9].1, 1);
        assert_eq!(
            sizes[10].1, 8,
            "30 requests / 4 per browser: up at the first sample"
        );
        // The load drops at t=30; the down window holds 8 until t=30+60 has passed.
        assert_eq!(sizes[89].1, 8);
        assert_eq!(sizes[90].1, 1);
    }

    #[test]
    fn a_slow_ramp_is_followed_step_by_step_within_bounds() {
        let p = policy(2, 6, 0, 30);
        let trace: Vec<(f64, u64)> = (0..60).map(|t| (f64::from(t), t as u64)).collect();
        let sizes = run(&p, 2, &trace);
        // Never outside [min, max], never down while load only rises.
        assert!(sizes.iter().all(|&(_, s)| (2..=6).contains(&s)));
        assert!(sizes.windows(2).all(|w| w[1].1 >= w[0].1));
        assert_eq!(sizes[20].1, 5, "load 20 / 4 = 5");
        assert_eq!(sizes.last().unwrap().1, 6, "capped at max");
    }

    #[test]
    fn a_flapping_load_does_not_flap_the_pool() {
        let p = policy(1, 10, 10, 120);
        // Every 5 s the load jumps between 4 and 40 for 10 minutes.
        let trace: Vec<(f64, u64)> = (0..600)
            .map(|t| (f64::from(t), if (t / 5) % 2 == 0 { 4 } else { 40 }))
            .collect();
        let sizes = run(&p, 1, &trace);
        let changes = sizes.windows(2).filter(|w| w[0].1 != w[1].1).count();
        // The up window (10 s) never sees a steady 40, so the pool stays put instead of
        // changing size 120 times.
        assert!(changes <= 1, "{changes} size changes");
    }

    #[test]
    fn up_window_waits_for_sustained_load() {
        let p = policy(1, 10, 5, 60);
        // Idle for 5 s, then 20 requests from t=5 on.
        let trace: Vec<(f64, u64)> = (0..15)
            .map(|t| (f64::from(t), if t < 5 { 0 } else { 20 }))
            .collect();
        let sizes = run(&p, 1, &trace);
        assert_eq!(
            sizes[9].1, 1,
            "t=4 (idle) is still inside the 5 s window at t=9"
        );
        assert_eq!(sizes[10].1, 5, "from t=10 the whole window wants 5");
    }

    #[test]
    fn scales_to_zero_and_back_from_zero_on_waiting_requests() {
        let p = policy(0, 4, 0, 0);
        let mut a = Autoscaler::default();
        let idle = a.decide(&p, 0.0, 2, load(0, 2));
        assert_eq!(idle.desired, 0);
        let none = a.decide(&p, 1.0, 0, sample(0, 0, 0, 0));
        assert_eq!(none.desired, 0);
        let woken = a.decide(&p, 2.0, 0, sample(0, 0, 0, 9));
        assert_eq!(woken.desired, 3, "{}", woken.reason);
        assert_eq!(
            (idle.cause, none.cause, woken.cause),
            ("idle", "idle", "waiting_requests")
        );
        assert!(woken.reason.contains("9 requests waiting"));
    }

    #[test]
    fn the_models_floor_passes_the_windows_like_any_recommendation() {
        let p = policy(1, 10, 0, 30);
        let mut a = Autoscaler::default();
        let with_floor = |n| LoadSample {
            floor: Some((n, format!("the models' replicas need {n} browsers"))),
            ..load(0, 2)
        };
        let up = a.decide(&p, 0.0, 2, with_floor(3));
        assert_eq!((up.desired, up.cause), (3, "model_replicas"));
        assert!(
            up.reason
                .starts_with("the models' replicas need 3 browsers (load alone: 0)")
        );
        // The model shrinks: the browser stays for the down window, then goes.
        assert_eq!(a.decide(&p, 10.0, 3, with_floor(2)).desired, 3);
        assert_eq!(a.decide(&p, 31.0, 3, with_floor(2)).desired, 2);
    }

    #[test]
    fn a_zero_window_follows_the_latest_sample_even_within_the_same_instant() {
        let p = policy(1, 10, 0, 60);
        let mut a = Autoscaler::default();
        assert_eq!(a.decide(&p, 5.0, 1, load(0, 1)).desired, 1);
        assert_eq!(a.decide(&p, 5.0, 1, load(0, 1)).desired, 1);
        assert_eq!(a.decide(&p, 5.0, 1, load(12, 1)).desired, 3);
    }

    #[test]
    fn a_silent_browser_blocks_scale_down_but_not_scale_up() {
        let p = policy(1, 10, 0, 0);
        let mut a = Autoscaler::default();
        let held = a.decide(&p, 0.0, 4, sample(0, 3, 1, 0));
        assert_eq!(held.desired, 4);
        assert_eq!(held.cause, "silent_browsers");
        let up = a.decide(&p, 1.0, 4, sample(40, 3, 1, 0));
        assert_eq!(up.desired, 10);
    }
}
