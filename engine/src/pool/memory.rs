//! The per-pool memory the decisions need between rounds: the autoscaler's history, the
//! heal backoff, the size last steered to. Lost on restart, like the HPA's: the
//! autoscaler then starts from the current size, and the heal backoff from zero.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::autoscale::Autoscaler;

#[derive(Debug, Default)]
pub struct PoolMemory {
    pub autoscaler: Autoscaler,
    /// Heal rounds in a row that found something broken.
    pub heal_streak: u32,
    pub next_heal_at: Option<Timestamp>,
    /// The size last steered to, to notice changes.
    pub last_desired: Option<i32>,
}

impl PoolMemory {
    /// Whether broken browsers may be replaced at `now`.
    pub fn may_heal(&self, now: Timestamp) -> bool {
        self.next_heal_at.is_none_or(|t| now >= t)
    }

    /// Records the outcome of a heal round: the backoff grows (from `base`, doubling, up
    /// to `max`) while rounds keep finding broken browsers, and resets after a clean one.
    pub fn heal_round(&mut self, now: Timestamp, healed: bool, base: Duration, max: Duration) {
        if healed {
            let wait = base.saturating_mul(1 << self.heal_streak.min(16)).min(max);
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
}
