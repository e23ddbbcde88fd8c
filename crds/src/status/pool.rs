//! A `BrowserPool`'s status from a round, pure: counts, per-browser summaries and the
//! Ready, Progressing and Degraded conditions, keeping each condition's transition time
//! while it holds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use webaccel_engine::pool::browser::BrowserView;
use webaccel_engine::pool::decide::{Plan, Removal};

use super::condition;
use crate::labels::condition as kind;
use crate::v1alpha1::{BrowserPool, BrowserPoolStatus, BrowserSummary};

/// What the round decided, for the status.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    pub desired: i32,
    pub template_hash: &'a str,
    pub selector: String,
    pub plan: &'a Plan,
    /// Set when the size changed this round.
    pub scaled: Option<String>,
}

/// The status from `browsers` and the round's outcome; `old` is the status the API server
/// holds (conditions keep their transition times, the last scale is carried over).
pub fn build(
    pool: &BrowserPool,
    old: Option<&BrowserPoolStatus>,
    browsers: &[BrowserView],
    o: &Outcome<'_>,
    now: Timestamp,
) -> BrowserPoolStatus {
    let old = old.cloned().unwrap_or_default();
    let generation = pool.metadata.generation;
    let present: Vec<&BrowserView> = browsers.iter().filter(|b| !b.terminating).collect();
    let ready = present
        .iter()
        .filter(|b| b.ready && !b.is_draining())
        .count() as i32;
    let updated = present
        .iter()
        .filter(|b| b.template_hash.as_deref() == Some(o.template_hash))
        .count() as i32;
    let draining = present.iter().filter(|b| b.is_draining()).count();

    let mut backends: Vec<String> = present
        .iter()
        .filter(|b| b.ready)
        .filter_map(|b| b.capabilities.as_ref())
        .flat_map(|c| c.backend_summary())
        .collect();
    backends.sort();
    backends.dedup();

    let browsers_summary = present
        .iter()
        .map(|b| {
            let note = o
                .plan
                .delete
                .iter()
                .chain(&o.plan.drain)
                .find(|(n, _)| *n == b.name)
                .map(|(_, r)| r.describe())
                .or_else(|| b.is_draining().then(|| "draining".to_owned()));
            BrowserSummary {
                pod: b.name.clone(),
                phase: b.phase.clone(),
                ready: b.ready,
                backends: b
                    .capabilities
                    .as_ref()
                    .map(|c| c.backend_summary())
                    .unwrap_or_default(),
                adapter: b.capabilities.as_ref().and_then(|c| c.adapter_label()),
                load: b.load().map(|l| l as i64),
                note,
            }
        })
        .collect();

    let p = o.plan;
    let heals = p
        .delete
        .iter()
        .filter(|(_, r)| matches!(r, Removal::Heal(_)))
        .count();
    let starting = present
        .iter()
        .filter(|b| !b.ready && !b.is_draining())
        .count();
    let (progressing, progress_reason, progress_msg) = if p.create > 0 {
        (
            true,
            "ScalingUp",
            format!("creating {} browser pods", p.create),
        )
    } else if !p.drain.is_empty() || draining > 0 {
        let marked = present.iter().filter(|b| b.is_draining()).map(|b| &b.name);
        let mut names: Vec<&String> = p.drain.iter().map(|(n, _)| n).chain(marked).collect();
        names.sort();
        names.dedup();
        (
            true,
            "Draining",
            format!("{} browser pods draining", names.len()),
        )
    } else if starting > 0 {
        (
            true,
            "Starting",
            format!("{starting} browser pods starting"),
        )
    } else if updated < present.len() as i32 {
        (
            true,
            "Rolling",
            format!(
                "{updated}/{} browser pods on the current spec",
                present.len()
            ),
        )
    } else {
        (false, "Stable", "nothing to change".to_owned())
    };
    let below = ready < o.desired;
    let unschedulable = present
        .iter()
        .find_map(|b| b.unschedulable.as_ref().map(|m| (&b.name, m)));
    let (degraded, degraded_reason, degraded_msg) = if let Some(why) = &p.roll_stopped {
        (
            true,
            "RollStopped",
            format!(
                "the roll to the current spec stopped: {why}; the browsers on the previous spec serve on until the spec changes"
            ),
        )
    } else if let Some((pod, message)) = unschedulable {
        (
            true,
            "Unschedulable",
            format!("{pod} cannot be scheduled: {message}"),
        )
    } else if !p.heal_deferred.is_empty() {
        (
            true,
            "HealBackoff",
            format!(
                "{} broken browser pods wait for the heal backoff",
                p.heal_deferred.len()
            ),
        )
    } else if heals > 0 {
        (
            true,
            "Healing",
            format!("replacing {heals} broken browser pods"),
        )
    } else if below {
        (
            true,
            "BelowDesiredSize",
            format!("{ready}/{} browsers ready", o.desired),
        )
    } else {
        (
            false,
            "AtDesiredSize",
            format!("{ready}/{} browsers ready", o.desired),
        )
    };
    let (ready_reason, ready_msg) = if o.desired == 0 {
        ("ScaledToZero", "no browsers wanted".to_owned())
    } else if below {
        (
            "BrowsersNotReady",
            format!("{ready}/{} browsers ready", o.desired),
        )
    } else {
        (
            "AllBrowsersReady",
            format!("{ready}/{} browsers ready", o.desired),
        )
    };
    let c = &old.conditions;
    let conditions = vec![
        condition(
            c,
            kind::READY,
            !below,
            ready_reason,
            ready_msg,
            generation,
            now,
        ),
        condition(
            c,
            kind::PROGRESSING,
            progressing,
            progress_reason,
            progress_msg,
            generation,
            now,
        ),
        condition(
            c,
            kind::DEGRADED,
            degraded,
            degraded_reason,
            degraded_msg,
            generation,
            now,
        ),
    ];

    BrowserPoolStatus {
        observed_generation: generation,
        replicas: present.len() as i32,
        ready_replicas: ready,
        updated_replicas: updated,
        desired_replicas: o.desired,
        selector: Some(o.selector.clone()),
        backends: (!backends.is_empty()).then(|| backends.join(",")),
        conditions,
        browsers: browsers_summary,
        last_scale_time: if o.scaled.is_some() {
            Some(Time(now))
        } else {
            old.last_scale_time
        },
        last_scale_reason: o.scaled.clone().or(old.last_scale_reason),
    }
}

/// The status of a pool whose spec the operator refuses (what the schema cannot check).
pub fn invalid(pool: &BrowserPool, reason: &str, now: Timestamp) -> BrowserPoolStatus {
    let old = pool.status.clone().unwrap_or_default();
    let g = pool.metadata.generation;
    let c = &old.conditions;
    BrowserPoolStatus {
        observed_generation: g,
        conditions: vec![
            condition(c, kind::READY, false, "InvalidSpec", reason.into(), g, now),
            condition(
                c,
                kind::PROGRESSING,
                false,
                "InvalidSpec",
                reason.into(),
                g,
                now,
            ),
            condition(
                c,
                kind::DEGRADED,
                true,
                "InvalidSpec",
                reason.into(),
                g,
                now,
            ),
        ],
        ..old
    }
}
