//! The pool's decisions, pure: which browsers to create, drain, delete or replace, given
//! the desired size and what the pods and their agents report.

use crate::policy::{HealingSpec, RecycleSpec};
use jiff::Timestamp;

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
}

impl Removal {
    pub fn describe(&self) -> String {
        match self {
            Self::Heal(why) => format!("replacing: {why}"),
            Self::ScaleDown => "scaling down".into(),
            Self::OutOfDate => "rolling to the new spec".into(),
            Self::Recycle(why) => format!("recycling: {why}"),
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
}

fn seconds_since(t: Option<Timestamp>, now: Timestamp) -> i64 {
    t.map_or(0, |t| now.as_second() - t.as_second())
}

/// Why a pod counts as broken, if it does.
pub fn broken(b: &BrowserView, healing: &HealingSpec, now: Timestamp) -> Option<String> {
    if b.phase == "Failed" || b.phase == "Succeeded" {
        return Some(format!("pod phase {}", b.phase));
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
            .and_then(|s| s.browser_memory_bytes)
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
    let mut live: Vec<&BrowserView> = Vec::new();
    let mut draining = 0;
    for b in browsers.iter().filter(|b| !b.terminating) {
        if let Some(why) = broken(b, i.healing, i.now) {
            if i.may_heal {
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
                p.delete.push((b.name.clone(), Removal::ScaleDown));
            } else {
                draining += 1;
            }
        } else {
            live.push(b);
        }
    }

    let desired = i.desired.max(0) as usize;
    let mut leaving: Vec<&str> = Vec::new();
    let mut waiting_for_models = false;
    if live.len() > desired {
        let mut candidates: Vec<&BrowserView> = live
            .iter()
            .copied()
            .filter(|b| !p.heal_deferred.contains(&b.name))
            .collect();
        // A browser cordoned already goes first: its models are moving away.
        candidates.sort_by(|a, b| {
            b.is_cordoned()
                .cmp(&a.is_cordoned())
                .then_with(|| scale_down_order(a, b))
        });
        for b in candidates.into_iter().take(live.len() - desired) {
            leaving.push(&b.name);
            let cordon_overdue = seconds_since(b.cordoned_since, i.now) >= i.drain_timeout_s;
            if !b.ready {
                // A browser that never got ready has no traffic: delete it at once.
                p.delete.push((b.name.clone(), Removal::ScaleDown));
            } else if b.sole_copies > 0 && !(b.is_cordoned() && cordon_overdue) {
                // Load elsewhere first: it serves on until its models are loaded on the
                // browsers that stay.
                waiting_for_models = true;
                if !b.is_cordoned() {
                    p.cordon.push(b.name.clone());
                }
            } else {
                p.drain.push((b.name.clone(), Removal::ScaleDown));
            }
        }
    } else {
        p.create = desired - live.len();
    }
    p.uncordon = live
        .iter()
        .filter(|b| b.is_cordoned() && !leaving.contains(&b.name.as_str()))
        .map(|b| b.name.clone())
        .collect();

    // Rolling and recycling: one browser at a time, only while the pool is whole and
    // settled, so capacity never drops by more than one.
    let settled = p.create == 0
        && !waiting_for_models
        && p.drain.is_empty()
        && p.delete.is_empty()
        && draining == 0
        && live.iter().all(|b| b.ready);
    if settled {
        let stale = live
            .iter()
            .filter(|b| b.template_hash.as_deref() != Some(i.template_hash))
            .min_by(|a, b| scale_down_order(a, b));
        let due = || {
            live.iter()
                .filter_map(|b| recycle_due(b, i.recycle, i.now).map(|why| (b, why)))
                .min_by(|(a, _), (b, _)| scale_down_order(a, b))
        };
        if let Some(b) = stale {
            p.drain.push((b.name.clone(), Removal::OutOfDate));
        } else if let Some((b, why)) = due() {
            p.drain.push((b.name.clone(), Removal::Recycle(why)));
        }
    }
    p
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
