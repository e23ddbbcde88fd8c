//! A `ModelDeployment`'s status from what was decided: replicas (per stage for a model
//! cut into stages), the backends they run on, and the `Ready`, `Progressing` and
//! `Degraded` conditions.

use k8s_openapi::jiff::Timestamp;
use webaccel_engine::place::Placement;

use super::condition as make_condition;
use crate::labels::condition;
use crate::scale::Wanted;
use crate::v1alpha1::{
    AgentModel, ModelDeployment, ModelDeploymentStatus, ReplicaState, ReplicaStatus, StageStatus,
};

fn loaded_count(replicas: &[ReplicaStatus]) -> i32 {
    let n = replicas
        .iter()
        .filter(|r| r.state == ReplicaState::Loaded)
        .count();
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The status after a placement round: `placements` (with the replicas' states after the
/// loads started) are in the order of `models`; `shared` says why stages share browsers;
/// `wanted` is how many replicas the round placed for.
pub fn status_of(
    md: &ModelDeployment,
    wanted: Wanted,
    models: &[AgentModel<'_>],
    placements: &[Placement],
    shared: Option<&str>,
    now: Timestamp,
) -> ModelDeploymentStatus {
    let old = md.status.clone().unwrap_or_default();
    let g = md.metadata.generation;
    let all: Vec<&ReplicaStatus> = placements.iter().flat_map(|p| &p.replicas).collect();
    let count = |state| all.iter().filter(|r| r.state == state).count();
    let loading = count(ReplicaState::Loading) + count(ReplicaState::Pending);
    // Complete copies: for stages, the fewest loaded of any stage.
    let loaded = placements
        .iter()
        .map(|p| loaded_count(&p.replicas))
        .min()
        .unwrap_or(0);
    let mut backends: Vec<String> = all
        .iter()
        .filter(|r| r.state == ReplicaState::Loaded)
        .filter_map(|r| r.backend.clone())
        .collect();
    backends.sort();
    backends.dedup();
    let mut precisions: Vec<&str> = all
        .iter()
        .filter(|r| r.state == ReplicaState::Loaded)
        .filter_map(|r| r.precision.map(webaccel_api::Precision::as_str))
        .collect();
    precisions.sort_unstable();
    precisions.dedup();
    let want = wanted.desired;
    let msg = if models.len() > 1 {
        format!(
            "{loaded}/{want} replicas of every one of {} stages loaded",
            models.len()
        )
    } else {
        format!("{loaded}/{want} replicas loaded")
    };
    let failure = all
        .iter()
        .find(|r| r.state == ReplicaState::FailedToLoad)
        .and_then(|r| r.reason.clone());
    let unplaced = placements.iter().find_map(|p| p.unplaced_reason.clone());
    let ready = loaded >= want;
    let ready_reason = if ready {
        "Loaded"
    } else if loading > 0 {
        "Loading"
    } else if failure.is_some() || unplaced.is_none() {
        "FailedToLoad"
    } else {
        "Unplaceable"
    };
    let (degraded, degraded_reason, degraded_msg) = match (&failure, &unplaced, shared) {
        (Some(why), _, _) => (true, "FailedToLoad", why.clone()),
        (None, Some(why), _) => (true, "Unplaceable", why.clone()),
        (None, None, Some(why)) => (true, "StagesShareBrowsers", why.to_owned()),
        (None, None, None) => (false, "NoFailures", "no load failed".to_owned()),
    };
    let (replicas, stages) = match models.first() {
        Some(AgentModel { stage: None, .. }) => (
            placements
                .first()
                .map(|p| p.replicas.clone())
                .unwrap_or_default(),
            Vec::new(),
        ),
        _ => (
            Vec::new(),
            models
                .iter()
                .zip(placements)
                .map(|(m, p)| StageStatus {
                    model: m.name.clone(),
                    loaded_replicas: loaded_count(&p.replicas),
                    replicas: p.replicas.clone(),
                })
                .collect(),
        ),
    };
    let c = &old.conditions;
    ModelDeploymentStatus {
        observed_generation: g,
        loaded_replicas: loaded,
        desired_replicas: wanted.desired,
        autoscaler: wanted.autoscaler,
        replicas_without_room: placements
            .iter()
            .map(|p| i32::try_from(p.unplaced_for_room).unwrap_or(i32::MAX))
            .max()
            .unwrap_or(0),
        backend: (!backends.is_empty()).then(|| backends.join(",")),
        precision: (!precisions.is_empty()).then(|| precisions.join(",")),
        conditions: vec![
            make_condition(c, condition::READY, ready, ready_reason, msg, g, now),
            make_condition(
                c,
                condition::PROGRESSING,
                loading > 0,
                if loading > 0 { "Placing" } else { "Settled" },
                format!("{loading} replicas loading"),
                g,
                now,
            ),
            make_condition(
                c,
                condition::DEGRADED,
                degraded,
                degraded_reason,
                degraded_msg,
                g,
                now,
            ),
        ],
        replicas,
        stages,
    }
}

/// The status of a deployment that cannot be placed at all (`reason`, `message`), the
/// replicas last seen kept.
pub fn not_ready(
    md: &ModelDeployment,
    reason: &str,
    message: String,
    now: Timestamp,
) -> ModelDeploymentStatus {
    let old = md.status.clone().unwrap_or_default();
    let g = md.metadata.generation;
    ModelDeploymentStatus {
        observed_generation: g,
        conditions: vec![
            make_condition(
                &old.conditions,
                condition::READY,
                false,
                reason,
                message.clone(),
                g,
                now,
            ),
            make_condition(
                &old.conditions,
                condition::DEGRADED,
                true,
                reason,
                message,
                g,
                now,
            ),
        ],
        ..old
    }
}
