//! The pool's decisions, pure: which browsers to create, drain, delete or replace, given
//! the desired size and what the pods and their agents report.

use crate::policy::{HealingSpec, RecycleSpec, RolloutSpec};
use jiff::Timestamp;
use webaccel_api::agent::AgentStats;

use super::browser::BrowserView;

/// Why a browser pod goes away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Broken: replaced (an Event, the heal backoff, `Degraded`).
    Heal(String),
    /// The pool is smaller now.
    ScaleDown,
    /// Built from an older spec.
    OutOfDate,
    /// Served its requests or lived its lifetime.
    Recycle(String),
    /// Built from a spec whose roll stopped (its browsers restart or break): why.
    RollStopped(String),
}

impl Removal {
    /// As a drain mark keeps it (`scale-down`, `roll`, `recycle: why`), for the deletion
    /// after the drain.
    pub fn mark(&self) -> String {
        match self {
            Self::Heal(why) => format!("heal: {why}"),
            Self::ScaleDown => "scale-down".into(),
            Self::OutOfDate => "roll".into(),
            Self::Recycle(why) => format!("recycle: {why}"),
            Self::RollStopped(why) => format!("roll-stopped: {why}"),
        }
    }

    /// Read back from [`Self::mark`]; anything else is a scale-down.
    pub fn from_mark(mark: &str) -> Self {
        match mark.split_once(": ") {
            Some(("heal", why)) => Self::Heal(why.into()),
            Some(("recycle", why)) => Self::Recycle(why.into()),
            Some(("roll-stopped", why)) => Self::RollStopped(why.into()),
            _ if mark == "roll" => Self::OutOfDate,
            _ => Self::ScaleDown,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Heal(why) => format!("replacing: {why}"),
            Self::ScaleDown => "scaling down".into(),
            Self::OutOfDate => "rolling to the new spec".into(),
            Self::Recycle(why) => format!("recycling: {why}"),
            Self::RollStopped(why) => format!("the roll to the new spec stopped: {why}"),
        }
    }
}

/// What to do to the pods this round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// New pods to create from the current spec.
    pub create: usize,
    /// Ask these agents to stop taking work; they are deleted once idle.
    pub drain: Vec<(String, Removal)>,
    /// Scale-down chose these, but each holds the only loaded replica of some model:
    /// they serve on and take no new replica while placement loads those models
    /// elsewhere, then drain (or after the drain timeout, whatever they hold).
    pub cordon: Vec<String>,
    /// Cordoned browsers the pool needs again (its load came back): they take replicas
    /// again.
    pub uncordon: Vec<String>,
    /// Delete these now (broken, or drained and idle, or never served anything).
    pub delete: Vec<(String, Removal)>,
    /// Broken pods left in place because the heal backoff has not passed.
    pub heal_deferred: Vec<String>,
    /// The roll to the current spec stopped because a browser built from it restarted or
    /// broke: why. No old browser goes and no more new ones come until the spec changes.
    pub roll_stopped: Option<String>,
}

impl Plan {
    /// Whether it replaces a broken browser.
    pub fn heals(&self) -> bool {
        self.delete
            .iter()
            .any(|(_, r)| matches!(r, Removal::Heal(_)))
    }
}

/// Everything [`plan`] needs besides the pods.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub desired: i32,
    pub template_hash: &'a str,
    pub healing: &'a HealingSpec,
    pub recycle: Option<&'a RecycleSpec>,
    pub now: Timestamp,
    /// Whether the per-pool heal backoff allows replacing broken pods now.
    pub may_heal: bool,
    /// How long a drain may take before the pod is deleted anyway.
    pub drain_timeout_s: i64,
    pub rollout: &'a RolloutSpec,
    /// A roll to this spec stopped in an earlier round (the pool's memory): why.
    pub roll_stopped: Option<&'a str>,
}

fn seconds_since(t: Option<Timestamp>, now: Timestamp) -> i64 {
    t.map_or(0, |t| now.as_second() - t.as_second())
}

/// Why a pod counts as broken, if it does.
pub fn broken(b: &BrowserView, healing: &HealingSpec, now: Timestamp) -> Option<String> {
    if b.phase == "Failed" || b.phase == "Succeeded" {
        return Some(format!("pod phase {}", b.phase));
    }
    // No node can take it: a new pod would not fit either, and deleting it would only
    // start the wait again. It stays, and the status carries the scheduler's message.
    if b.unschedulable.is_some() {
        return None;
    }
    if b.crash_looping || b.restarts >= healing.max_container_restarts {
        return Some(format!("agent container restarted {} times", b.restarts));
    }
    if let Some(stats) = &b.stats
        && !stats.healthy
    {
        return Some("agent reports itself unhealthy (browser launches keep failing)".into());
    }
    let unready_s = seconds_since(b.unready_since, now);
    if !b.ready && unready_s >= i64::from(healing.unready_grace_seconds) {
        return Some(format!(
            "unready for {unready_s}s (grace {}s)",
            healing.unready_grace_seconds
        ));
    }
    None
}

fn recycle_due(b: &BrowserView, recycle: Option<&RecycleSpec>, now: Timestamp) -> Option<String> {
    let r = recycle?;
    if let (Some(max), Some(stats)) = (r.after_requests, &b.stats) {
        let served = stats.requests_served();
        if served >= max.max(0) as u64 {
            return Some(format!("served {served} requests (limit {max})"));
        }
    }
    if let Some(max) = r.max_lifetime_seconds {
        let age = seconds_since(b.created, now);
        if age >= max {
            return Some(format!("{age}s old (limit {max}s)"));
        }
    }
    None
}

/// Order for scale-down: unready first (no traffic), then least loaded, then the
/// emptiest (least memory in its browsers: the fewest and smallest models to place
/// elsewhere, which consolidates the models on the browsers that stay), then newest.
fn scale_down_order(a: &BrowserView, b: &BrowserView) -> std::cmp::Ordering {
    let memory = |v: &BrowserView| {
        v.stats
            .as_ref()
            .and_then(AgentStats::committed_bytes)
            .unwrap_or(u64::MAX)
    };
    (
        a.ready,
        a.load().unwrap_or(u64::MAX),
        memory(a),
        std::cmp::Reverse(a.created),
    )
        .cmp(&(
            b.ready,
            b.load().unwrap_or(u64::MAX),
            memory(b),
            std::cmp::Reverse(b.created),
        ))
}

pub fn plan(browsers: &[BrowserView], i: &Inputs<'_>) -> Plan {
    let mut p = Plan::default();
    let stale = |b: &BrowserView| b.template_hash.as_deref() != Some(i.template_hash);
    let present = || browsers.iter().filter(|b| !b.terminating);
    let rolling = present().any(stale);
    // A roll stops when a browser built from the new spec restarts or breaks (an OOM
    // kill under a lowered memory limit, a bad image): replacing more old browsers would
    // only take the pool down. It stays stopped until the spec changes.
    if rolling {
        p.roll_stopped = i.roll_stopped.map(str::to_owned).or_else(|| {
            present().filter(|b| !stale(b)).find_map(|b| {
                broken(b, i.healing, i.now)
                    .or_else(|| {
                        (b.restarts > 0)
                            .then(|| format!("agent container restarted {} times", b.restarts))
                    })
                    .map(|why| format!("{}: {why}", b.name))
            })
        });
    }
    let mut live: Vec<&BrowserView> = Vec::new();
    let mut draining = 0;
    for b in browsers.iter().filter(|b| !b.terminating) {
        if let Some(why) = broken(b, i.healing, i.now) {
            if rolling && !stale(b) {
                // A broken browser of the new spec stops the roll; it is not replaced.
                let stopped = p.roll_stopped.clone().unwrap_or(why);
                p.delete
                    .push((b.name.clone(), Removal::RollStopped(stopped)));
            } else if i.may_heal {
                p.delete.push((b.name.clone(), Removal::Heal(why)));
            } else {
                // Left in place and counted, so the pool does not grow past its size while
                // it waits to replace it.
                p.heal_deferred.push(b.name.clone());
                live.push(b);
            }
        } else if b.is_draining() {
            let idle = b.load() == Some(0);
            let unreachable = b.stats.is_none();
            let overdue = seconds_since(b.draining_since, i.now) >= i.drain_timeout_s;
            if idle || unreachable || overdue {
                let why = b.drained_for.clone().unwrap_or(Removal::ScaleDown);
                p.delete.push((b.name.clone(), why));
            } else {
                draining += 1;
            }
        } else {
            live.push(b);
        }
    }

    let desired = i.desired.max(0) as usize;
    // A roll creates its new browsers first, above the desired size.
    let surge = if rolling && p.roll_stopped.is_none() {
        i.rollout.max_surge.max(0) as usize
    } else {
        0
    };
    let capacity = desired + surge;
    let mut leaving: Vec<&str> = Vec::new();
    let mut waiting_for_models = false;
    if live.len() > capacity {
        let mut candidates: Vec<&BrowserView> = live
            .iter()
            .copied()
            .filter(|b| !p.heal_deferred.contains(&b.name))
            .collect();
        // A browser cordoned already goes first: its models are moving away; then old
        // ones, which a roll would replace anyway.
        candidates.sort_by(|a, b| {
            b.is_cordoned()
                .cmp(&a.is_cordoned())
                .then_with(|| {
                    // A stopped roll takes its new (failing) browsers back first.
                    if p.roll_stopped.is_some() {
                        stale(a).cmp(&stale(b))
                    } else {
                        stale(b).cmp(&stale(a))
                    }
                })
                .then_with(|| scale_down_order(a, b))
        });
        for b in candidates.into_iter().take(live.len() - capacity) {
            leaving.push(&b.name);
            // A new browser of a stopped roll goes for that reason, not as a scale-down.
            let removal = match &p.roll_stopped {
                Some(why) if !stale(b) => Removal::RollStopped(why.clone()),
                _ => Removal::ScaleDown,
            };
            let cordon_overdue = seconds_since(b.cordoned_since, i.now) >= i.drain_timeout_s;
            if !b.ready {
                // A browser that never got ready has no traffic: delete it at once.
                p.delete.push((b.name.clone(), removal));
            } else if b.sole_copies > 0 && !(b.is_cordoned() && cordon_overdue) {
                // Load elsewhere first: it serves on until its models are loaded on the
                // browsers that stay.
                waiting_for_models = true;
                if !b.is_cordoned() {
                    p.cordon.push(b.name.clone());
                }
            } else {
                p.drain.push((b.name.clone(), removal));
            }
        }
    } else {
        p.create = capacity - live.len();
    }
    p.uncordon = live
        .iter()
        .filter(|b| b.is_cordoned() && !leaving.contains(&b.name.as_str()))
        .map(|b| b.name.clone())
        .collect();

    // Rolling and recycling: one browser at a time, only while the pool is whole and
    // settled. An old browser drains only if the browsers available without it (ready
    // for `minReadySeconds`) are still at least the desired size less `maxUnavailable`:
    // with the default surge of one, once its new replacement has stayed ready.
    let settled = p.create == 0
        && !waiting_for_models
        && p.drain.is_empty()
        && p.delete.is_empty()
        && draining == 0
        && live.iter().all(|b| b.ready);
    if settled {
        let available = live
            .iter()
            .filter(|b| b.available(i.rollout.min_ready_seconds, i.now))
            .count();
        let floor = desired.saturating_sub(i.rollout.max_unavailable.max(0) as usize);
        let may_roll = p.roll_stopped.is_none() && available > floor;
        let stale = live
            .iter()
            .filter(|b| stale(b))
            .filter(|_| may_roll)
            .min_by(|a, b| scale_down_order(a, b));
        let due = || {
            live.iter()
                .filter_map(|b| recycle_due(b, i.recycle, i.now).map(|why| (b, why)))
                .min_by(|(a, _), (b, _)| scale_down_order(a, b))
        };
        if let Some(b) = stale {
            p.drain.push((b.name.clone(), Removal::OutOfDate));
        } else if rolling {
            // Waiting for a new browser to be available, or stopped: no recycling meanwhile.
        } else if let Some((b, why)) = due() {
            p.drain.push((b.name.clone(), Removal::Recycle(why)));
        }
    }
    p
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
