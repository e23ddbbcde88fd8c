//! The per-pool memory the decisions need between rounds: the autoscaler's history, the
//! heal backoff, the size last steered to. Lost on restart, like the HPA's: the
//! autoscaler then starts from the current size, and the heal backoff from zero.

use std::time::Duration;

use jiff::Timestamp;
use webaccel_api::Backoff;

use crate::autoscale::Autoscaler;
use crate::pool::decide::Plan;

#[derive(Debug, Default)]
pub struct PoolMemory {
    pub autoscaler: Autoscaler,
    /// Heal rounds in a row that found something broken.
    pub heal_streak: u32,
    pub next_heal_at: Option<Timestamp>,
    /// The size last steered to, to notice changes.
    pub last_desired: Option<i32>,
    /// A roll that stopped: the spec it rolled to and why. A new spec rolls afresh.
    pub stopped_roll: Option<(String, String)>,
}

impl PoolMemory {
    /// Why the roll to `template_hash` stopped, if it did.
    pub fn roll_stopped(&self, template_hash: &str) -> Option<&str> {
        self.stopped_roll
            .as_ref()
            .filter(|(hash, _)| hash == template_hash)
            .map(|(_, why)| why.as_str())
    }

    /// Whether broken browsers may be replaced at `now`.
    pub fn may_heal(&self, now: Timestamp) -> bool {
        self.next_heal_at.is_none_or(|t| now >= t)
    }

    /// Records what `plan` did about broken browsers: a round that healed, or one that
    /// found nothing broken (none deferred), moves the heal backoff; a round whose
    /// broken browsers all waited for the backoff leaves it as it is.
    pub fn record_heals(&mut self, plan: &Plan, now: Timestamp, base: Duration, max: Duration) {
        let healed = plan.heals();
        if healed || plan.heal_deferred.is_empty() {
            self.heal_round(now, healed, base, max);
        }
    }

    /// Records the outcome of a heal round: the backoff grows (from `base`, doubling, up
    /// to `max`) while rounds keep finding broken browsers, and resets after a clean one.
    pub fn heal_round(&mut self, now: Timestamp, healed: bool, base: Duration, max: Duration) {
        if healed {
            let wait = Backoff::new(base, max).delay(self.heal_streak);
            self.heal_streak += 1;
            self.next_heal_at = now.checked_add(wait).ok();
        } else if self.may_heal(now) {
            self.heal_streak = 0;
            self.next_heal_at = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heals_back_off_while_they_keep_finding_breakage() {
        let mut m = PoolMemory::default();
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let (base, max) = (Duration::from_secs(5), Duration::from_secs(20));
        assert!(m.may_heal(t0));
        m.heal_round(t0, true, base, max);
        assert!(!m.may_heal(t0 + Duration::from_secs(4)));
        let t1 = t0 + Duration::from_secs(5);
        assert!(m.may_heal(t1));
        m.heal_round(t1, true, base, max);
        assert_eq!(m.next_heal_at, Some(t1 + Duration::from_secs(10)));
        // A clean round after the backoff resets it.
        let t2 = t1 + Duration::from_secs(10);
        m.heal_round(t2, false, base, max);
        assert_eq!((m.heal_streak, m.next_heal_at), (0, None));
    }

    #[test]
    fn a_round_whose_broken_browsers_all_wait_leaves_the_backoff_alone() {
        use crate::pool::decide::Removal;
        let mut m = PoolMemory::default();
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let (base, max) = (Duration::from_secs(5), Duration::from_secs(20));
        let healing = Plan {
            delete: vec![("p-1".into(), Removal::Heal("crash-looping".into()))],
            ..Plan::default()
        };
        m.record_heals(&healing, t0, base, max);
        assert_eq!(m.heal_streak, 1);
        // Still broken, held back by the backoff: no reset, no growth.
        let waiting = Plan {
            heal_deferred: vec!["p-2".into()],
            ..Plan::default()
        };
        m.record_heals(&waiting, t0 + Duration::from_secs(1), base, max);
        assert_eq!(
            (m.heal_streak, m.next_heal_at),
            (1, Some(t0 + Duration::from_secs(5)))
        );
        // Nothing broken after the backoff: reset.
        m.record_heals(&Plan::default(), t0 + Duration::from_secs(6), base, max);
        assert_eq!((m.heal_streak, m.next_heal_at), (0, None));
    }
}
