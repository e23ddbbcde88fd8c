//! The build half of a `ModelDeployment` reconcile: what every ready browser's agent says
//! about each model the deployment is made of (its own file, or each of its stages), and
//! where each goes ([`webaccel_engine::place`] for one file, [`webaccel_engine::stages`]
//! for stages, which keeps them on browsers of their own).

use futures::future::join_all;
use kube::ResourceExt;
use webaccel_agent_client::{AgentError, Endpoint, ModelOnAgent};
use webaccel_crds::v1alpha1::{
    AgentModel, BrowserPool, ModelDeploymentSpec, ModelDeploymentStatus, ReplicaState,
    ReplicaStatus,
};
use webaccel_engine::place::{self, Candidate, Placement};
use webaccel_engine::{ensemble, stages};

use crate::context::Context;
use crate::pool::observe::{Browser, PoolView};

/// Whether a browser may be asked about models: ready, reachable and staying.
pub fn askable(b: &Browser) -> bool {
    let v = &b.view;
    v.ready && v.phase == "Running" && !v.terminating && v.ip.is_some() && !b.uid.is_empty()
}

/// What one browser said about each of the deployment's models.
#[derive(Debug)]
pub struct Seen {
    pub ep: Endpoint,
    /// One per model of the deployment, in the deployment's order.
    pub candidates: Vec<Candidate>,
    /// Why its agent could not say (it is then not a candidate for anything this round).
    pub error: Option<AgentError>,
}

/// The replicas the last status recorded for `model` (the deployment's own file, or one
/// of its stages).
pub fn old_replicas<'a>(
    old: &'a ModelDeploymentStatus,
    model: &AgentModel<'_>,
) -> &'a [ReplicaStatus] {
    match model.stage {
        None => &old.replicas,
        Some(_) => old
            .stages
            .iter()
            .find(|s| s.model == model.name)
            .map_or(&[], |s| &s.replicas),
    }
}

/// Asks every askable browser of the pool about every model of the deployment.
/// `deployment` names it; `same_generation` says whether failures in `old` still hold.
pub async fn ask(
    ctx: &Context,
    ns: &str,
    view: &PoolView,
    token: &str,
    models: &[AgentModel<'_>],
    old: &ModelDeploymentStatus,
    same_generation: bool,
) -> Vec<Seen> {
    let labels: Vec<String> = models
        .iter()
        .map(|m| webaccel_crds::labels::model_label(&m.name))
        .collect();
    let calls = view.browsers.iter().filter(|b| askable(b)).map(|b| {
        let labels = &labels;
        async move {
            let ep = ctx.endpoint(ns, &b.view, token)?;
            let answers = join_all(models.iter().map(|m| ctx.agents.model(&ep, &m.name))).await;
            // Models of other deployments the pod holds, to spread them.
            let models_held = b.pod.as_ref().map_or(0, |p| {
                p.labels()
                    .keys()
                    .filter(|k| k.starts_with("webaccel.dev/model.") && !labels.contains(k))
                    .count()
            });
            let caps = b.view.capabilities.as_ref();
            let mut error = None;
            let mut candidates = Vec::with_capacity(models.len());
            for (m, answer) in models.iter().zip(answers) {
                // Only the model's own failure, recorded for this generation, keeps a
                // browser out (see `replica_after_load`).
                let failed_before = old_replicas(old, m)
                    .iter()
                    .find(|r| {
                        same_generation
                            && r.pod == b.view.name
                            && r.state == ReplicaState::FailedToLoad
                    })
                    .and_then(|r| r.reason.clone());
                let model = match answer {
                    Ok(m) => m,
                    Err(e) => {
                        error.get_or_insert(e);
                        ModelOnAgent::Absent
                    }
                };
                candidates.push(Candidate {
                    pod: b.view.name.clone(),
                    usable: !b.view.is_draining(),
                    backends: caps.map(|c| c.backends()).unwrap_or_default(),
                    adapter: caps.and_then(|c| c.adapter_label()),
                    model,
                    models_held,
                    failed_before,
                });
            }
            for (m, c) in models.iter().zip(candidates.iter_mut()) {
                if let Some(e) = m.ensemble {
                    let missing =
                        ensemble::missing_step(ctx.agents.as_ref(), &ep, &e.step_models()).await;
                    ensemble::require_steps(c, missing.as_deref());
                }
            }
            if error.is_some() {
                for c in &mut candidates {
                    c.usable = false;
                }
            }
            Some(Seen {
                ep,
                candidates,
                error,
            })
        }
    });
    join_all(calls).await.into_iter().flatten().collect()
}

/// Where each model of the deployment goes (one placement per model, in order), and
/// why stages share browsers when they do.
#[derive(Debug, Default)]
pub struct Decided {
    pub placements: Vec<Placement>,
    pub shared: Option<String>,
}

/// How many browsers the pool has or is about to have, draining ones left out: whether
/// stages can wait for browsers of their own.
fn pool_browsers(pool: &BrowserPool, view: &PoolView) -> usize {
    let staying = view
        .browsers
        .iter()
        .filter(|b| !b.view.terminating && !b.view.is_draining())
        .count();
    let desired = pool.status.as_ref().map_or(0, |s| s.desired_replicas);
    staying.max(usize::try_from(desired).unwrap_or(0))
}

/// Places every model of the deployment on the browsers `seen`.
pub fn decide(
    spec: &ModelDeploymentSpec,
    pool: &BrowserPool,
    view: &PoolView,
    models: &[AgentModel<'_>],
    seen: &[Seen],
) -> Decided {
    let per_model: Vec<Vec<Candidate>> = (0..models.len())
        .map(|i| seen.iter().map(|s| s.candidates[i].clone()).collect())
        .collect();
    if spec.stages.is_none() {
        return Decided {
            placements: per_model
                .iter()
                .zip(models)
                .map(|(c, m)| {
                    let mut p = place::plan(spec.replicas, &spec.backends, &pool.spec.backends, c);
                    if let Some(e) = m.ensemble {
                        ensemble::explain_unplaced(&mut p, &e.step_models());
                    }
                    p
                })
                .collect(),
            shared: None,
        };
    }
    let staged = stages::plan_stages(
        spec.replicas,
        &spec.backends,
        &pool.spec.backends,
        &per_model,
        pool_browsers(pool, view),
    );
    Decided {
        placements: staged.stages,
        shared: staged.shared,
    }
}
