//! Where an ensemble deployment (`spec.ensemble`) can go: only on browsers that hold
//! every step model loaded, since the page runs the steps itself. Asked of the agents
//! (not read from pod labels), so the operator and local mode decide alike.

use futures::future::join_all;

use crate::place::{Candidate, Placement};
use webaccel_agent_client::{AgentApi, Endpoint, ModelOnAgent};

/// The first step model not loaded on the browser behind `ep`, or `None` when all are.
pub async fn missing_step<A: AgentApi + ?Sized>(
    agents: &A,
    ep: &Endpoint,
    steps: &[String],
) -> Option<String> {
    let answers = join_all(steps.iter().map(|s| agents.model(ep, s))).await;
    steps
        .iter()
        .zip(answers)
        .find(|(_, a)| !matches!(a, Ok(ModelOnAgent::Loaded { .. })))
        .map(|(s, _)| s.clone())
}

/// Takes a browser that lacks a step out of the ensemble's candidates (one that holds
/// the ensemble but lost a step gives it up, to be placed where the steps are).
pub fn require_steps(candidate: &mut Candidate, missing: Option<&str>) {
    if missing.is_some() {
        candidate.usable = false;
    }
}

/// Says why replicas of an ensemble could not be placed: no browser holds its steps.
pub fn explain_unplaced(placement: &mut Placement, steps: &[String]) {
    if placement.unplaced > 0 {
        placement.unplaced_reason = Some(format!(
            "{} replicas wait for browsers holding every step loaded ({})",
            placement.unplaced,
            steps.join(", ")
        ));
    }
}
