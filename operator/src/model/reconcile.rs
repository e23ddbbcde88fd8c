//! One `ModelDeployment` reconcile: validate, build (the pool and its browsers from the watch
//! caches; what each ready browser's agent holds and can run; placement), apply (start
//! loads, unload extras, label the pods that hold it), update the status if it changed;
//! unload on delete.
//!
//! Only ready browsers are asked anything: a pod is Running well before its agent's browser
//! is up. A load starts in the background on the agent (`?wait=false`) and is looked at
//! again a few seconds later, so no reconcile waits on a model download or compile.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Error as FinalizerError, Event as Finalizer, finalizer};
use serde_json::json;
use tracing::warn;
use webaccel_api::labels::{self, condition};
use webaccel_api::v1alpha1::{
    BrowserPool, ModelDeployment, ModelDeploymentStatus, ReplicaState, ReplicaStatus,
};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::pool::build;
use crate::pool::observe::{self, AskStats, PoolView};
use crate::pool::status::condition as make_condition;
use webaccel_engine::agent::{AgentError, AgentResult, Endpoint, ModelOnAgent};
use webaccel_engine::place::{self, Candidate, Placement};

pub const CONTROLLER: &str = "modeldeployment";

/// How soon a model is looked at again while a replica loads or waits for its agent.
const LOADING_REQUEUE: Duration = Duration::from_secs(2);

pub async fn reconcile(md: Arc<ModelDeployment>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let ns = md
        .namespace()
        .ok_or_else(|| Error::NoNamespace(md.name_any()))?;
    if !ctx.stores.synced() {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, labels::MODEL_FINALIZER, md, |event| async {
        match event {
            Finalizer::Apply(md) => apply(&md, &ctx, &ns).await,
            Finalizer::Cleanup(md) => cleanup(&md, &ctx, &ns).await,
        }
    })
    .await;
    let result = match result {
        Ok(action) => Ok(action),
        // The object is gone: a second cleanup queued before the first removed the
        // finalizer (or the object went before it got one). That is what was wanted.
        Err(FinalizerError::RemoveFinalizer(kube::Error::Api(e)))
        | Err(FinalizerError::AddFinalizer(kube::Error::Api(e)))
            if e.code == 404 =>
        {
            Ok(Action::await_change())
        }
        Err(FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e)) => Err(e),
        Err(other) => Err(Error::Finalizer(other.to_string())),
    };
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    result
}

/// The pool and its browsers, from the watch caches.
fn pool_view(ctx: &Context, ns: &str, pool_name: &str) -> Option<(Arc<BrowserPool>, PoolView)> {
    let pool = ctx.stores.pool(ns, pool_name)?;
    let hash = build::template_hash(&pool);
    let view = observe::view(ctx, &pool, &hash, Timestamp::now());
    Some((pool, view))
}

/// Whether a browser may be asked about models: ready, reachable and staying.
fn askable(b: &observe::Browser) -> bool {
    let v = &b.view;
    v.ready && v.phase == "Running" && !v.terminating && v.ip.is_some() && !b.uid.is_empty()
}

/// A replica's state from what a load request brought. Only the model's own failure (the
/// agent refused the model: not ONNX, bad digest, backend unavailable) is `FailedToLoad`,
/// which keeps that browser out for this generation. An agent that cannot be reached,
/// refuses the token (401/403: rotated) or is restarting its browser (503) leaves the
/// replica `Pending` with the reason, and the load is tried again.
pub fn replica_after_load(r: &mut ReplicaStatus, result: AgentResult<ModelOnAgent>) {
    match result {
        Ok(ModelOnAgent::Loaded { backend, init_ms }) => {
            r.state = ReplicaState::Loaded;
            r.backend = Some(backend);
            r.init_ms = init_ms;
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
fn agent_reason(e: &AgentError) -> String {
    format!("agent {}: {e}", e.label())
}

/// What one browser said about the model, for placement.
struct Seen {
    ep: Endpoint,
    candidate: Candidate,
    /// Why its agent could not say (it is then not a candidate for anything this round).
    error: Option<AgentError>,
}

async fn apply(md: &ModelDeployment, ctx: &Context, ns: &str) -> Result<Action> {
    let name = md.name_any();
    let now = Timestamp::now();
    let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), ns);

    // Validate: a URI a pod can read, the pool and its token. The schema admits a
    // relative file:// URI because local mode reads it from the manifest's folder; a pod
    // has no such folder.
    if md.spec.model.uri.starts_with("file://") && !md.spec.model.uri.starts_with("file:///") {
        let msg = format!(
            "model.uri {} is relative: only local mode (webaccel up) resolves it; on a cluster use file:///<path in the pod>, http:// or https://",
            md.spec.model.uri
        );
        patch_status(&api, md, not_ready(md, "InvalidModelURI", msg, now)).await?;
        return Ok(Action::await_change());
    }
    let Some((pool, mut view)) = pool_view(ctx, ns, &md.spec.pool_ref.name) else {
        let msg = format!("BrowserPool {} not found in {ns}", md.spec.pool_ref.name);
        patch_status(&api, md, not_ready(md, "PoolNotFound", msg, now)).await?;
        // The pool's creation wakes this model (the controller watches pools).
        return Ok(Action::requeue(ctx.settings.resync));
    };
    let Some(token) = view.token.clone() else {
        let msg = "the pool's agent token Secret does not exist yet".to_owned();
        patch_status(&api, md, not_ready(md, "PoolNotReady", msg, now)).await?;
        return Ok(Action::requeue(Duration::from_secs(10)));
    };

    // Build: what every ready browser can run and holds.
    let asked = observe::ask_agents(ctx, ns, &mut view, AskStats::Skip).await;
    if asked.refused_token {
        ctx.forget_refused_token(ns, &build::token_secret_name(&pool));
    }
    let old = md.status.clone().unwrap_or_default();
    let same_generation = old.observed_generation == md.metadata.generation;
    let label = labels::model_label(&name);
    let calls = view.browsers.iter().filter(|b| askable(b)).map(|b| {
        let (token, name, old, label) = (&token, &name, &old, &label);
        async move {
            let ep = ctx.endpoint(ns, &b.view, token)?;
            let answer = ctx.agents.model(&ep, name).await;
            // Only the model's own failure, recorded for this generation, keeps a browser
            // out (see `replica_after_load`).
            let failed_before = old
                .replicas
                .iter()
                .find(|r| {
                    same_generation && r.pod == b.view.name && r.state == ReplicaState::FailedToLoad
                })
                .and_then(|r| r.reason.clone());
            let models_held = b.pod.as_ref().map_or(0, |p| {
                p.labels()
                    .keys()
                    .filter(|k| k.starts_with("webaccel.dev/model.") && *k != label)
                    .count()
            });
            let caps = b.view.capabilities.as_ref();
            let (model, error) = match answer {
                Ok(m) => (m, None),
                Err(e) => (ModelOnAgent::Absent, Some(e)),
            };
            Some(Seen {
                candidate: Candidate {
                    pod: b.view.name.clone(),
                    usable: !b.view.is_draining() && error.is_none(),
                    backends: caps.map(|c| c.backends()).unwrap_or_default(),
                    adapter: caps.and_then(|c| c.adapter_label()),
                    model,
                    models_held,
                    failed_before,
                },
                ep,
                error,
            })
        }
    });
    let seen: Vec<Seen> = join_all(calls).await.into_iter().flatten().collect();
    if seen
        .iter()
        .any(|s| s.error.as_ref().is_some_and(AgentError::unauthorized))
    {
        ctx.forget_refused_token(ns, &build::token_secret_name(&pool));
    }
    let candidates: Vec<Candidate> = seen.iter().map(|s| s.candidate.clone()).collect();
    let mut placement = place::plan(
        md.spec.replicas,
        &md.spec.backends,
        &pool.spec.backends,
        &candidates,
    );
    // A browser that held or was loading the model and whose agent cannot answer now
    // (restarting its browser, refusing a rotated token) is reported, not forgotten.
    for s in seen.iter().filter(|s| s.error.is_some()) {
        let held = old.replicas.iter().any(|r| {
            r.pod == s.ep.pod && matches!(r.state, ReplicaState::Loaded | ReplicaState::Loading)
        });
        if held && !placement.replicas.iter().any(|r| r.pod == s.ep.pod) {
            placement.replicas.push(ReplicaStatus {
                pod: s.ep.pod.clone(),
                state: ReplicaState::Pending,
                backend: None,
                adapter: None,
                init_ms: None,
                reason: s.error.as_ref().map(agent_reason),
            });
        }
    }

    // Apply: loads start in the background on the agents.
    let endpoint_of = |pod: &str| seen.iter().find(|s| s.ep.pod == pod).map(|s| &s.ep);
    let loads = placement.load.iter().filter_map(|(pod, backend)| {
        let ep = endpoint_of(pod)?;
        let req = place::load_request(&name, &md.spec, md.spec.model.uri.clone(), *backend);
        Some(async move { (ep.pod.clone(), ctx.agents.load(ep, &req).await) })
    });
    for (pod, result) in join_all(loads).await {
        if result.as_ref().is_err_and(AgentError::unauthorized) {
            ctx.forget_refused_token(ns, &build::token_secret_name(&pool));
        }
        if let Some(r) = placement.replicas.iter_mut().find(|r| r.pod == pod) {
            replica_after_load(r, result);
        }
    }
    for pod in &placement.unload {
        if let Some(ep) = endpoint_of(pod)
            && let Err(e) = ctx.agents.unload(ep, &name).await
        {
            warn!(model = %name, %pod, error = %e, "unload failed");
        }
    }
    label_holders(ctx, ns, &view, &placement, &label).await?;

    // Status.
    let status = status_of(md, &placement, now);
    let busy = status
        .replicas
        .iter()
        .any(|r| matches!(r.state, ReplicaState::Loading | ReplicaState::Pending));
    // A ready browser whose capabilities are still unknown may yet take the model.
    let unknown = view
        .browsers
        .iter()
        .any(|b| askable(b) && b.view.capabilities.is_none());
    patch_status(&api, md, status).await?;
    Ok(Action::requeue(if busy || unknown {
        LOADING_REQUEUE
    } else {
        ctx.settings.resync
    }))
}

/// Pods that hold the model carry the label; the others do not. Only differences are
/// written.
async fn label_holders(
    ctx: &Context,
    ns: &str,
    view: &PoolView,
    placement: &Placement,
    label: &str,
) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    for pod in view.browsers.iter().filter_map(|b| b.pod.as_ref()) {
        let name = pod.name_any();
        let holds = placement
            .replicas
            .iter()
            .any(|r| r.pod == name && r.state == ReplicaState::Loaded);
        let labelled = pod
            .labels()
            .get(label)
            .is_some_and(|v| v == labels::MODEL_LOADED);
        if holds == labelled || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let value = if holds {
            json!(labels::MODEL_LOADED)
        } else {
            serde_json::Value::Null
        };
        let patch = json!({"metadata": {"labels": {label: value}}});
        match pods
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn status_of(md: &ModelDeployment, placement: &Placement, now: Timestamp) -> ModelDeploymentStatus {
    let replicas = &placement.replicas;
    let old = md.status.clone().unwrap_or_default();
    let g = md.metadata.generation;
    let count = |state| replicas.iter().filter(|r| r.state == state).count();
    let loaded = count(ReplicaState::Loaded) as i32;
    let loading = count(ReplicaState::Loading) + count(ReplicaState::Pending);
    let mut backends: Vec<String> = replicas
        .iter()
        .filter(|r| r.state == ReplicaState::Loaded)
        .filter_map(|r| r.backend.clone())
        .collect();
    backends.sort();
    backends.dedup();
    let want = md.spec.replicas;
    let msg = format!("{loaded}/{want} replicas loaded");
    let failure = replicas
        .iter()
        .find(|r| r.state == ReplicaState::FailedToLoad)
        .and_then(|r| r.reason.clone());
    let ready = loaded >= want;
    let ready_reason = if ready {
        "Loaded"
    } else if loading > 0 {
        "Loading"
    } else if failure.is_some() || placement.unplaced == 0 {
        "FailedToLoad"
    } else {
        "Unplaceable"
    };
    let (degraded, degraded_reason, degraded_msg) = match (&failure, &placement.unplaced_reason) {
        (Some(why), _) => (true, "FailedToLoad", why.clone()),
        (None, Some(why)) => (true, "Unplaceable", why.clone()),
        (None, None) => (false, "NoFailures", "no load failed".to_owned()),
    };
    let c = &old.conditions;
    ModelDeploymentStatus {
        observed_generation: g,
        loaded_replicas: loaded,
        backend: (!backends.is_empty()).then(|| backends.join(",")),
        conditions: vec![
            make_condition(
                c,
                condition::READY,
                ready,
                ready_reason,
                msg.clone(),
                g,
                now,
            ),
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
        replicas: replicas.to_vec(),
    }
}

fn not_ready(
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

/// Writes the status if it differs from what the API server holds (a server-side apply of
/// the whole status, so fields no longer set are removed).
async fn patch_status(
    api: &Api<ModelDeployment>,
    md: &ModelDeployment,
    status: ModelDeploymentStatus,
) -> Result<()> {
    if md.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let body =
        json!({"apiVersion": "webaccel.dev/v1alpha1", "kind": "ModelDeployment", "status": status});
    let ssa = PatchParams::apply(labels::FIELD_MANAGER).force();
    api.patch_status(&md.name_any(), &ssa, &Patch::Apply(&body))
        .await?;
    Ok(())
}

/// Unloads the model from every browser that holds it and removes the pod labels.
async fn cleanup(md: &ModelDeployment, ctx: &Context, ns: &str) -> Result<Action> {
    let name = md.name_any();
    let label = labels::model_label(&name);
    if let Some((_, view)) = pool_view(ctx, ns, &md.spec.pool_ref.name) {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
        for b in &view.browsers {
            if let Some(ep) = view
                .token
                .as_deref()
                .and_then(|t| ctx.endpoint(ns, &b.view, t))
                && b.view.phase == "Running"
                && !b.view.terminating
                && let Err(e) = ctx.agents.unload(&ep, &name).await
            {
                // A browser that cannot be reached loses the model when it goes anyway.
                warn!(model = %name, pod = %b.view.name, error = %e, "unload failed");
            }
            if b.pod
                .as_ref()
                .is_some_and(|p| p.labels().contains_key(&label))
            {
                let patch = json!({"metadata": {"labels": {label.clone(): null}}});
                match pods
                    .patch(&b.view.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use webaccel_api::ErrorCategory;

    fn replica() -> ReplicaStatus {
        ReplicaStatus {
            pod: "p".into(),
            state: ReplicaState::Loading,
            backend: None,
            adapter: None,
            init_ms: None,
            reason: None,
        }
    }

    #[test]
    fn only_the_models_own_failure_is_failed_to_load() {
        let refused = |status, category| AgentError::Refused {
            path: "/v1/models".into(),
            status,
            category,
            message: "no".into(),
        };
        for e in [
            refused(401, ErrorCategory::Unauthorized),
            refused(403, ErrorCategory::Unauthorized),
            refused(503, ErrorCategory::BrowserUnavailable),
            AgentError::Unreachable {
                path: "/v1/models".into(),
                message: "connection refused".into(),
            },
        ] {
            let mut r = replica();
            replica_after_load(&mut r, Err(e.clone()));
            assert_eq!(r.state, ReplicaState::Pending, "{e}");
            assert!(r.reason.unwrap().contains(e.label()));
        }
        let mut r = replica();
        replica_after_load(&mut r, Ok(ModelOnAgent::Failed("sha256 mismatch".into())));
        assert_eq!(r.state, ReplicaState::FailedToLoad);
    }
}
