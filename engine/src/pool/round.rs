//! One round of a pool's decisions, the same for pods and local processes: the size
//! ([`size::desired`]), then the plan ([`decide::plan`]) under the heal backoff; and, once
//! the host has carried the plan out, what the next round must remember ([`remember`]).
//!
//! Deciding feeds the autoscaler (its windows want every sample) but changes nothing else
//! the pool remembers, so a host may decide more often than it acts (the operator's agent
//! poller decides to learn whether the reconcile has work).

use std::time::Duration;

use jiff::Timestamp;

use super::browser::BrowserView;
use super::decide::{self, Plan};
use super::memory::PoolMemory;
use super::size::{self, Demand, Size};
use crate::policy::PoolPolicy;

/// The host's pacing of a pool's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// How long a drain may take before the browser goes anyway.
    pub drain_timeout: Duration,
    /// The heal backoff: its first step (doubled per round that finds breakage) and cap.
    pub heal_backoff: Duration,
    pub heal_backoff_max: Duration,
}

/// What one round decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub size: Size,
    /// The spec the browsers are rolled to.
    pub template_hash: String,
    /// The size steered to before: the pool's memory, else what the host last reported.
    pub previous: Option<i32>,
    pub plan: Plan,
}

impl Round {
    /// The reason, when this round changes the size.
    pub fn scaled(&self) -> Option<&str> {
        self.previous
            .filter(|&p| p != self.size.desired)
            .map(|_| self.size.reason.as_str())
    }
}

/// Decides the pool's size and plan at `now` from `browsers`. `template_hash` is what
/// current browsers are built from; `demand` is what the gateway (requests waiting for a
/// browser of this pool) and the autoscaled models ask of it; `reported` is the size the host last reported (a status), which stands in
/// for the memory of a process that just started.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    policy: &PoolPolicy,
    template_hash: &str,
    browsers: &[BrowserView],
    memory: &mut PoolMemory,
    demand: Demand,
    reported: Option<i32>,
    pacing: &Pacing,
    now: Timestamp,
) -> Round {
    let size = size::desired(policy, browsers, memory, demand, now);
    let plan = decide::plan(
        browsers,
        &decide::Inputs {
            desired: size.desired,
            template_hash,
            healing: &policy.healing,
            recycle: policy.recycle.as_ref(),
            now,
            may_heal: memory.may_heal(now),
            drain_timeout_s: i64::try_from(pacing.drain_timeout.as_secs()).unwrap_or(i64::MAX),
            rollout: &policy.rollout,
            roll_stopped: memory.roll_stopped(template_hash),
        },
    );
    Round {
        template_hash: template_hash.to_owned(),
        previous: memory.last_desired.or(reported),
        size,
        plan,
    }
}

/// Remembers what `round` decided once the host has carried it out: the size steered to,
/// and the heal backoff.
pub fn remember(memory: &mut PoolMemory, round: &Round, pacing: &Pacing, now: Timestamp) {
    memory.last_desired = Some(round.size.desired);
    memory.stopped_roll = round
        .plan
        .roll_stopped
        .clone()
        .map(|why| (round.template_hash.clone(), why));
    memory.record_heals(
        &round.plan,
        now,
        pacing.heal_backoff,
        pacing.heal_backoff_max,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::decide::Removal;

    const PACING: Pacing = Pacing {
        drain_timeout: Duration::from_secs(60),
        heal_backoff: Duration::from_secs(10),
        heal_backoff_max: Duration::from_secs(300),
    };

    fn broken(name: &str) -> BrowserView {
        BrowserView {
            name: name.into(),
            phase: "Failed".into(),
            template_hash: Some("h".into()),
            ..BrowserView::default()
        }
    }

    #[test]
    fn a_round_sizes_plans_and_after_acting_remembers_the_size_and_the_heal() {
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let policy = PoolPolicy {
            replicas: 2,
            ..PoolPolicy::default()
        };
        let mut memory = PoolMemory::default();
        let round = decide(
            &policy,
            "h",
            &[broken("p-1")],
            &mut memory,
            Demand::default(),
            Some(1),
            &PACING,
            t0,
        );
        assert_eq!(round.size.desired, 2);
        assert_eq!(
            round.scaled(),
            Some("spec.replicas is 2"),
            "from the reported 1"
        );
        assert!(matches!(round.plan.delete[0].1, Removal::Heal(_)));
        assert_eq!(round.plan.create, 2);
        assert_eq!(
            memory.last_desired, None,
            "deciding alone remembers nothing"
        );
        remember(&mut memory, &round, &PACING, t0);
        assert_eq!(memory.last_desired, Some(2));
        // The heal backoff now holds the next broken browser back.
        let again = decide(
            &policy,
            "h",
            &[broken("p-2")],
            &mut memory,
            Demand::default(),
            None,
            &PACING,
            t0 + Duration::from_secs(1),
        );
        assert_eq!(again.plan.heal_deferred, ["p-2"]);
        assert_eq!(again.scaled(), None);
    }
}
