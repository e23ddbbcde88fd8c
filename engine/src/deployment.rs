//! One round of a model deployment's placement, the same for pods and local processes:
//! ask every askable browser's agent about each model the deployment is made of (its own
//! file, each of its stages, or an ensemble of other deployments), decide where each goes
//! ([`place::plan`], or [`stages::plan_stages`], which keeps stages on browsers of their
//! own), start the loads and unloads through the agents, and report every replica.
//!
//! The host says which browsers there are ([`Seat`]) and what the deployment is
//! ([`Deployment`]); it keeps what the round reports (a status) and hands it back next
//! round, which is how a model that failed on a browser is not tried there again while
//! the spec is the same. Only ready browsers are asked anything (a pod is Running well
//! before its browser is up), and a load starts in the background on the agent
//! (`?wait=false`), so no round waits on a model download or compile.

use futures::future::join_all;
use webaccel_agent_client::{AgentApi, AgentError, AgentResult, Endpoint, ModelOnAgent};
use webaccel_api::Backend;
use webaccel_api::agent::{Capabilities, ModelSpec};

use crate::place::{self, Candidate, Placement};
use crate::replica::{ReplicaState, ReplicaStatus};
use crate::{ensemble, stages};

/// One model the agents load for a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// The name on the agents: the deployment's, or `<deployment>.stage<i>`.
    pub name: String,
    /// For an ensemble: the step models, which must be loaded on a browser before it.
    pub steps: Vec<String>,
}

/// What the deployment asks for.
#[derive(Debug, Clone)]
pub struct Deployment<'a> {
    /// The models, in order (one, or one per stage).
    pub units: &'a [Unit],
    /// Whether the units are the stages of one cut model (kept on browsers of their own).
    pub staged: bool,
    pub replicas: i32,
    /// The backends asked for, in order of preference.
    pub backends: &'a [Backend],
    /// The backends the pool allows.
    pub pool_backends: &'a [Backend],
    /// The size the pool steers to: with the browsers it has (draining and leaving ones
    /// left out), how many it has or is about to have, which says whether stages can
    /// wait for browsers of their own.
    pub pool_desired: i32,
    /// The replicas the last round reported, per unit (empty on the first).
    pub previous: &'a [Vec<ReplicaStatus>],
    /// Whether the spec is the one the previous replicas were reported for: only then
    /// does a model's failure on a browser keep it out.
    pub same_spec: bool,
}

/// One browser of the pool, as the host sees it.
#[derive(Debug, Clone)]
pub struct Seat<'a> {
    pub name: &'a str,
    /// How to reach its agent; `None` when the host cannot (no address or token yet).
    pub endpoint: Option<Endpoint>,
    /// Ready and reachable: its agent may be asked about models.
    pub askable: bool,
    /// Asked to stop taking work: keeps its copies until it goes, but takes no new one.
    pub draining: bool,
    /// Cordoned for scale-down (it also counts as `draining`): its copies still serve
    /// and are reported until copies elsewhere are loaded.
    pub cordoned: bool,
    /// On its way out (a pod being deleted, a process that exited).
    pub leaving: bool,
    pub capabilities: Option<&'a Capabilities>,
    /// Models of other deployments it holds, to spread them.
    pub models_held: usize,
    /// Room left in its memory budget (the pool's budget less what its browsers use
    /// now, as its agent said); `None`: no budget or unknown.
    pub room: Option<u64>,
}

/// What one round decided and did.
#[derive(Debug, Clone, Default)]
pub struct Placed {
    /// One placement per unit, in order, with each replica's state after the loads started.
    pub placements: Vec<Placement>,
    /// Why stages share browsers, when they do.
    pub shared: Option<String>,
    /// Some agent refused its token (rotated): the host should read it again.
    pub unauthorized: bool,
    /// A ready browser's capabilities are unknown yet: it may still take the model.
    pub capabilities_unknown: bool,
    /// Loads and unloads an agent did not take (model, browser, why), for the host's log;
    /// a load's outcome is also in its replica.
    pub failed_calls: Vec<(Call, String, String, AgentError)>,
}

/// A call the round made to an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Load,
    Unload,
}

impl Placed {
    /// Whether some replica is still on its way (loading, or waiting on its agent).
    pub fn busy(&self) -> bool {
        self.placements
            .iter()
            .flat_map(|p| &p.replicas)
            .any(|r| matches!(r.state, ReplicaState::Loading | ReplicaState::Pending))
    }

    /// The replicas of each unit that hold their model loaded, by browser name.
    pub fn holders(&self) -> Vec<Vec<&str>> {
        self.placements
            .iter()
            .map(|p| {
                p.replicas
                    .iter()
                    .filter(|r| r.state == ReplicaState::Loaded)
                    .map(|r| r.pod.as_str())
                    .collect()
            })
            .collect()
    }
}

/// What one askable browser said about each unit.
struct Seen {
    ep: Endpoint,
    /// One per unit, in order.
    candidates: Vec<Candidate>,
    /// Why its agent could not say (it is then not a candidate for anything this round).
    error: Option<AgentError>,
}

/// Whether the copy an agent holds is out of date for `wanted`: loaded with other serving
/// settings (a re-applied deployment with another batching, precision, generation or
/// ensemble), or from another file: another digest, or (without one in the spec) another
/// URI. Ensembles have no file of their own.
pub fn stale(held: &ModelOnAgent, wanted: &ModelSpec) -> bool {
    let ModelOnAgent::Loaded {
        uri,
        sha256,
        settings,
        ..
    } = held
    else {
        return false;
    };
    if settings.as_deref().is_some_and(|s| *s != wanted.serving()) {
        return true;
    }
    if wanted.ensemble.is_some() {
        return false;
    }
    match &wanted.sha256 {
        Some(want) => !sha256.is_empty() && !want.eq_ignore_ascii_case(sha256),
        None => !uri.is_empty() && *uri != wanted.uri,
    }
}

/// Runs one round for `d` over `seats`. `request(i, backend)` is what an agent is asked
/// to load for unit `i` on `backend` (the host says where the file is read from).
pub async fn place<A: AgentApi + ?Sized>(
    agents: &A,
    d: &Deployment<'_>,
    seats: &[Seat<'_>],
    request: &(dyn Fn(usize, Backend) -> ModelSpec + Sync),
) -> Placed {
    let seen = gather(agents, d, seats, request).await;
    let staying = seats.iter().filter(|s| !s.leaving && !s.draining).count();
    let pool_browsers = staying.max(usize::try_from(d.pool_desired).unwrap_or(0));
    let mut out = decide(d, &seen, pool_browsers);
    out.unauthorized = seen
        .iter()
        .any(|s| s.error.as_ref().is_some_and(AgentError::unauthorized));
    out.capabilities_unknown = seats.iter().any(|s| s.askable && s.capabilities.is_none());
    report_unanswered(d, &seen, &mut out.placements);
    act(agents, d, &seen, &mut out, request).await;
    out
}

/// Asks every askable seat about every unit.
async fn gather<A: AgentApi + ?Sized>(
    agents: &A,
    d: &Deployment<'_>,
    seats: &[Seat<'_>],
    request: &(dyn Fn(usize, Backend) -> ModelSpec + Sync),
) -> Vec<Seen> {
    let calls = seats.iter().filter(|s| s.askable).map(|seat| async move {
        let ep = seat.endpoint.clone()?;
        let answers = join_all(d.units.iter().map(|u| agents.model(&ep, &u.name))).await;
        let backends = seat.capabilities.map(|c| c.backends()).unwrap_or_default();
        let mut error = None;
        let mut candidates = Vec::with_capacity(d.units.len());
        for (i, answer) in answers.into_iter().enumerate() {
            let model = answer.unwrap_or_else(|e| {
                error.get_or_insert(e);
                ModelOnAgent::Absent
            });
            // Only the model's own failure, reported for this spec, keeps a browser out
            // (see `replica_after_load`).
            let failed_before = d
                .previous
                .get(i)
                .into_iter()
                .flatten()
                .find(|r| {
                    d.same_spec && r.pod == seat.name && r.state == ReplicaState::FailedToLoad
                })
                .and_then(|r| r.reason.clone());
            let stale = match &model {
                ModelOnAgent::Loaded { .. } => {
                    let backend = place::choose_backend(d.backends, d.pool_backends, &backends)
                        .unwrap_or(Backend::Auto);
                    stale(&model, &request(i, backend))
                }
                _ => false,
            };
            candidates.push(Candidate {
                pod: seat.name.to_owned(),
                usable: !seat.draining,
                cordoned: seat.cordoned,
                backends: backends.clone(),
                adapter: seat.capabilities.and_then(|c| c.adapter_label()),
                model,
                models_held: seat.models_held,
                failed_before,
                stale,
                room: seat.room,
                need: None,
            });
        }
        // An ensemble goes only where its steps are loaded.
        for (u, c) in d.units.iter().zip(candidates.iter_mut()) {
            if !u.steps.is_empty() {
                let missing = ensemble::missing_step(agents, &ep, &u.steps).await;
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
    });
    join_all(calls).await.into_iter().flatten().collect()
}

/// What unit `i` takes on a browser: the most any of its loads measured, now (`seen`)
/// or as the last round reported.
fn measured_need(d: &Deployment<'_>, seen: &[Seen], i: usize) -> Option<u64> {
    let now = seen.iter().filter_map(|s| match &s.candidates[i].model {
        ModelOnAgent::Loaded { memory_bytes, .. } => *memory_bytes,
        _ => None,
    });
    let before = d
        .previous
        .get(i)
        .into_iter()
        .flatten()
        .filter_map(|r| r.memory_bytes);
    now.chain(before).max()
}

/// Places every unit on the browsers `seen`.
fn decide(d: &Deployment<'_>, seen: &[Seen], pool_browsers: usize) -> Placed {
    let per_unit: Vec<Vec<Candidate>> = (0..d.units.len())
        .map(|i| {
            let need = measured_need(d, seen, i);
            seen.iter()
                .map(|s| Candidate {
                    need,
                    ..s.candidates[i].clone()
                })
                .collect()
        })
        .collect();
    if !d.staged {
        let placements = per_unit
            .iter()
            .zip(d.units)
            .map(|(c, u)| {
                let mut p = place::plan(d.replicas, d.backends, d.pool_backends, c);
                if !u.steps.is_empty() {
                    ensemble::explain_unplaced(&mut p, &u.steps);
                }
                p
            })
            .collect();
        return Placed {
            placements,
            ..Placed::default()
        };
    }
    let staged = stages::plan_stages(
        d.replicas,
        d.backends,
        d.pool_backends,
        &per_unit,
        pool_browsers,
    );
    Placed {
        placements: staged.stages,
        shared: staged.shared,
        ..Placed::default()
    }
}

/// A browser that held or was loading a unit and whose agent cannot answer now
/// (restarting its browser, refusing a rotated token) is reported, not forgotten.
fn report_unanswered(d: &Deployment<'_>, seen: &[Seen], placements: &mut [Placement]) {
    for (i, placement) in placements.iter_mut().enumerate() {
        for s in seen.iter().filter(|s| s.error.is_some()) {
            let held = d.previous.get(i).into_iter().flatten().any(|r| {
                r.pod == s.ep.pod && matches!(r.state, ReplicaState::Loaded | ReplicaState::Loading)
            });
            if held && !placement.replicas.iter().any(|r| r.pod == s.ep.pod) {
                let mut r = ReplicaStatus::new(&s.ep.pod, ReplicaState::Pending);
                r.reason = s.error.as_ref().map(agent_reason);
                placement.replicas.push(r);
            }
        }
    }
}

/// Starts the loads and unloads the placements ask for, and records what each load
/// brought in its replica.
async fn act<A: AgentApi + ?Sized>(
    agents: &A,
    d: &Deployment<'_>,
    seen: &[Seen],
    out: &mut Placed,
    request: &(dyn Fn(usize, Backend) -> ModelSpec + Sync),
) {
    let endpoint_of = |pod: &str| seen.iter().find(|s| s.ep.pod == pod).map(|s| &s.ep);
    let loads = out
        .placements
        .iter()
        .enumerate()
        .flat_map(|(i, placement)| {
            placement.load.iter().filter_map(move |(pod, backend)| {
                let ep = endpoint_of(pod)?;
                let spec = request(i, *backend);
                Some(async move { (i, ep.pod.clone(), agents.load(ep, &spec).await) })
            })
        });
    for (i, pod, result) in join_all(loads).await {
        out.unauthorized |= result.as_ref().is_err_and(AgentError::unauthorized);
        if let Err(e) = &result {
            out.failed_calls
                .push((Call::Load, d.units[i].name.clone(), pod.clone(), e.clone()));
        }
        if let Some(r) = out.placements[i].replicas.iter_mut().find(|r| r.pod == pod) {
            replica_after_load(r, result);
        }
    }
    let unloads = d
        .units
        .iter()
        .zip(&out.placements)
        .flat_map(|(u, placement)| {
            placement.unload.iter().filter_map(move |pod| {
                let ep = endpoint_of(pod)?;
                Some(async move { (u, ep, agents.unload(ep, &u.name).await) })
            })
        });
    for (u, ep, result) in join_all(unloads).await {
        if let Err(e) = result {
            out.unauthorized |= e.unauthorized();
            out.failed_calls
                .push((Call::Unload, u.name.clone(), ep.pod.clone(), e));
        }
    }
}

/// A replica's state from what a load request brought. Only the model's own failure (the
/// agent refused the model: not ONNX, bad digest, backend unavailable) is `FailedToLoad`,
/// which keeps that browser out for this spec. An agent that cannot be reached, refuses
/// the token (401/403: rotated) or is restarting its browser (503) leaves the replica
/// `Pending` with the reason, and the load is tried again.
pub fn replica_after_load(r: &mut ReplicaStatus, result: AgentResult<ModelOnAgent>) {
    match result {
        Ok(ModelOnAgent::Loaded {
            backend,
            init_ms,
            precision,
            memory_bytes,
            ..
        }) => {
            r.state = ReplicaState::Loaded;
            r.backend = Some(backend);
            r.init_ms = init_ms;
            r.precision = precision;
            r.memory_bytes = memory_bytes;
        }
        Ok(ModelOnAgent::Failed(why)) => {
            // As later looks report it (from the status): the agent's reason, no backend.
            r.state = ReplicaState::FailedToLoad;
            r.backend = None;
            r.reason = Some(why);
        }
        Ok(ModelOnAgent::Loading | ModelOnAgent::Absent) => r.state = ReplicaState::Loading,
        Err(e) => {
            r.state = ReplicaState::Pending;
            r.reason = Some(agent_reason(&e));
        }
    }
}

/// Why a replica waits on its agent, with the error's category first (`unauthorized`,
/// `browser_unavailable`, `unreachable`, ...).
pub fn agent_reason(e: &AgentError) -> String {
    format!("agent {}: {e}", e.label())
}

/// Unloads `models` from every browser in `endpoints` (a deleted deployment); an agent
/// that cannot be reached loses them when it goes anyway. Returns the failures.
pub async fn unload_everywhere<A: AgentApi + ?Sized>(
    agents: &A,
    endpoints: &[Endpoint],
    models: &[String],
) -> Vec<(String, String, AgentError)> {
    let calls = endpoints.iter().flat_map(|ep| {
        models.iter().map(move |m| async move {
            agents
                .unload(ep, m)
                .await
                .err()
                .map(|e| (ep.pod.clone(), m.clone(), e))
        })
    });
    join_all(calls).await.into_iter().flatten().collect()
}

#[cfg(test)]
#[path = "deployment_tests.rs"]
mod tests;
