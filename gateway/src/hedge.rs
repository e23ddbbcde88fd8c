//! Hedged requests (Dean and Barroso, "The Tail at Scale"): a request a browser has not
//! answered within its model's usual time (a quantile of its recent answers, the 95th by
//! default) is sent to a second browser as well; the first answer wins and the other is
//! cancelled (its bridge gets a cancel frame, so the agent drops it if it has not run).
//! A hedge is a retry sent early: it takes a token from the same retry budget, so hedges
//! can never multiply the load of a fleet in trouble. Off unless `--hedge-quantile` is
//! given; only plain inference is hedged (answers depend on the inputs alone), never a
//! generation or a pipeline's stages.
//!
//! This module keeps each model's delay; [`crate::hedging`] sends the hedges.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;

/// Answers kept per model to take the quantile of.
const WINDOW: usize = 512;
/// Answers a model needs before it is hedged: with fewer the quantile says little.
const MIN_SAMPLES: usize = 50;
/// The delay is recomputed after this many new answers (not on every request).
const RECOMPUTE_EVERY: usize = 32;

/// When to hedge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HedgePolicy {
    /// The quantile of a model's recent round trips after which a second browser is
    /// tried (0.95: about one request in twenty is hedged).
    pub quantile: f64,
    /// Never sooner than this.
    pub min_delay: Duration,
}

#[derive(Debug, Default)]
struct ModelWindow {
    round_trips: VecDeque<Duration>,
    since_computed: usize,
    delay: Option<Duration>,
}

/// Each model's hedging delay, from its recent round trips.
#[derive(Debug)]
pub struct HedgeDelays {
    policy: HedgePolicy,
    models: Mutex<HashMap<String, ModelWindow>>,
}

impl HedgeDelays {
    pub fn new(policy: HedgePolicy) -> Self {
        Self {
            policy,
            models: Mutex::default(),
        }
    }

    /// Notes a successful round trip of `model`.
    pub fn observe(&self, model: &str, round_trip: Duration) {
        let mut models = self.models.lock();
        let w = match models.get_mut(model) {
            Some(w) => w,
            None => models.entry(model.to_owned()).or_default(),
        };
        if w.round_trips.len() == WINDOW {
            w.round_trips.pop_front();
        }
        w.round_trips.push_back(round_trip);
        w.since_computed += 1;
        if w.round_trips.len() >= MIN_SAMPLES
            && (w.delay.is_none() || w.since_computed >= RECOMPUTE_EVERY)
        {
            let mut sorted: Vec<Duration> = w.round_trips.iter().copied().collect();
            let rank = ((self.policy.quantile * sorted.len() as f64).ceil() as usize)
                .clamp(1, sorted.len());
            let (_, at, _) = sorted.select_nth_unstable(rank - 1);
            w.delay = Some((*at).max(self.policy.min_delay));
            w.since_computed = 0;
        }
    }

    /// How long to wait for `model`'s first browser before hedging; `None` until it has
    /// answered enough requests to say.
    pub fn delay(&self, model: &str) -> Option<Duration> {
        self.models.lock().get(model).and_then(|w| w.delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_is_the_quantile_of_recent_answers_and_waits_for_enough_of_them() {
        let d = HedgeDelays::new(HedgePolicy {
            quantile: 0.95,
            min_delay: Duration::from_micros(100),
        });
        for i in 0..(MIN_SAMPLES - 1) {
            d.observe("m", Duration::from_millis(i as u64));
        }
        assert_eq!(d.delay("m"), None, "too few answers yet");
        // Recomputed at 50 answers, then every 32: at 114, answers of 1..=100 ms and 14
        // more of 50 ms, whose 95th (the 109th) is 95 ms.
        let d = HedgeDelays::new(HedgePolicy {
            quantile: 0.95,
            min_delay: Duration::from_micros(100),
        });
        for i in 1..=100 {
            d.observe("m", Duration::from_millis(i));
        }
        for _ in 0..14 {
            d.observe("m", Duration::from_millis(50));
        }
        assert_eq!(d.delay("m"), Some(Duration::from_millis(95)));
        assert_eq!(d.delay("other"), None);
        // Never below the floor.
        let d = HedgeDelays::new(HedgePolicy {
            quantile: 0.5,
            min_delay: Duration::from_millis(5),
        });
        for _ in 0..MIN_SAMPLES {
            d.observe("m", Duration::from_millis(1));
        }
        assert_eq!(d.delay("m"), Some(Duration::from_millis(5)));
    }

    #[test]
    fn old_answers_leave_the_window() {
        let d = HedgeDelays::new(HedgePolicy {
            quantile: 0.95,
            min_delay: Duration::ZERO,
        });
        for _ in 0..WINDOW {
            d.observe("m", Duration::from_millis(100));
        }
        for _ in 0..WINDOW {
            d.observe("m", Duration::from_millis(2));
        }
        assert_eq!(d.delay("m"), Some(Duration::from_millis(2)));
    }
}
