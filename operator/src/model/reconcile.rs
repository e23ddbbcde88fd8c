//! One `ModelDeployment` reconcile: validate, build (the pool and its browsers from the watch
//! caches; what each ready browser's agent holds and can run; placement, see [`look`]),
//! apply (start loads, unload extras, label the pods that hold it), update the status if
//! it changed; unload on delete. A deployment with `stages` is several models to the
//! agents (`<name>.stage<i>`), each placed, labelled and reported on its own.
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
use webaccel_agent_client::{AgentError, AgentResult, ModelOnAgent};
use webaccel_crds::labels;
use webaccel_crds::v1alpha1::{
    BrowserPool, ModelDeployment, ModelDeploymentStatus, ReplicaState, ReplicaStatus,
};

use super::look;
use super::status::{not_ready, status_of};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::pool::build;
use crate::pool::observe::{self, AskStats, PoolView};

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

/// A replica's state from what a load request brought. Only the model's own failure (the
/// agent refused the model: not ONNX, bad digest, backend unavailable) is `FailedToLoad`,
/// which keeps that browser out for this generation. An agent that cannot be reached,
/// refuses the token (401/403: rotated) or is restarting its browser (503) leaves the
/// replica `Pending` with the reason, and the load is tried again.
pub fn replica_after_load(r: &mut ReplicaStatus, result: AgentResult<ModelOnAgent>) {
    match result {
        Ok(ModelOnAgent::Loaded {
            backend,
            init_ms,
            precision,
        }) => {
            r.state = ReplicaState::Loaded;
            r.backend = Some(backend);
            r.init_ms = init_ms;
            r.precision = precision;
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

/// A URI only local mode can read (relative to the manifest's folder).
fn relative(uri: &str) -> bool {
    uri.starts_with("file://") && !uri.starts_with("file:///")
}

async fn apply(md: &ModelDeployment, ctx: &Context, ns: &str) -> Result<Action> {
    let name = md.name_any();
    let now = Timestamp::now();
    let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), ns);
    let models = md.spec.agent_models(&name);

    // Validate: a model or stages (the schema says so; an object written before the
    // schema did is refused here), URIs a pod can read, the pool and its token. The
    // schema admits a relative file:// URI because local mode reads it from the
    // manifest's folder; a pod has no such folder.
    if models.is_empty() {
        let msg = "neither model nor stages is set".to_owned();
        patch_status(&api, md, not_ready(md, "InvalidSpec", msg, now)).await?;
        return Ok(Action::await_change());
    }
    if let Some(m) = models.iter().find(|m| relative(m.uri())) {
        let msg = format!(
            "{} uri {} is relative: only local mode (webaccel up) resolves it; on a cluster use file:///<path in the pod>, http:// or https://",
            m.stage
                .map_or("model".to_owned(), |i| format!("stages[{i}]")),
            m.uri()
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

    // Build: what every ready browser can run and holds, and where each model goes.
    let asked = observe::ask_agents(ctx, ns, &mut view, AskStats::Skip).await;
    if asked.refused_token {
        ctx.forget_refused_token(ns, &build::token_secret_name(&pool));
    }
    let old = md.status.clone().unwrap_or_default();
    let same_generation = old.observed_generation == md.metadata.generation;
    let seen = look::ask(ctx, ns, &view, &token, &models, &old, same_generation).await;
    if seen
        .iter()
        .any(|s| s.error.as_ref().is_some_and(AgentError::unauthorized))
    {
        ctx.forget_refused_token(ns, &build::token_secret_name(&pool));
    }
    let mut decided = look::decide(&md.spec, &pool, &view, &models, &seen);
    // A browser that held or was loading a model and whose agent cannot answer now
    // (restarting its browser, refusing a rotated token) is reported, not forgotten.
    for (m, placement) in models.iter().zip(&mut decided.placements) {
        for s in seen.iter().filter(|s| s.error.is_some()) {
            let held = look::old_replicas(&old, m).iter().any(|r| {
                r.pod == s.ep.pod && matches!(r.state, ReplicaState::Loaded | ReplicaState::Loading)
            });
            if held && !placement.replicas.iter().any(|r| r.pod == s.ep.pod) {
                placement.replicas.push(ReplicaStatus {
                    pod: s.ep.pod.clone(),
                    state: ReplicaState::Pending,
                    backend: None,
                    adapter: None,
                    init_ms: None,
                    precision: None,
                    reason: s.error.as_ref().map(agent_reason),
                });
            }
        }
    }

    // Apply: loads start in the background on the agents.
    let endpoint_of = |pod: &str| seen.iter().find(|s| s.ep.pod == pod).map(|s| &s.ep);
    let loads =
        models
            .iter()
            .zip(&decided.placements)
            .enumerate()
            .flat_map(|(i, (m, placement))| {
                placement.load.iter().filter_map(move |(pod, backend)| {
                    let ep = endpoint_of(pod)?;
                    let req = m.load_request(&md.spec, m.uri().to_owned(), *backend);
                    Some(async move { (i, ep.pod.clone(), ctx.agents.load(ep, &req).await) })
                })
            });
    for (i, pod, result) in join_all(loads).await {
        if result.as_ref().is_err_and(AgentError::unauthorized) {
            ctx.forget_refused_token(ns, &build::token_secret_name(&pool));
        }
        if let Some(r) = decided.placements[i]
            .replicas
            .iter_mut()
            .find(|r| r.pod == pod)
        {
            replica_after_load(r, result);
        }
    }
    for (m, placement) in models.iter().zip(&decided.placements) {
        for pod in &placement.unload {
            if let Some(ep) = endpoint_of(pod)
                && let Err(e) = ctx.agents.unload(ep, &m.name).await
            {
                warn!(model = %m.name, %pod, error = %e, "unload failed");
            }
        }
    }
    let holders: Vec<(String, Vec<&str>)> = models
        .iter()
        .zip(&decided.placements)
        .map(|(m, p)| {
            let loaded = p
                .replicas
                .iter()
                .filter(|r| r.state == ReplicaState::Loaded)
                .map(|r| r.pod.as_str())
                .collect();
            (labels::model_label(&m.name), loaded)
        })
        .collect();
    label_holders(ctx, ns, &view, &holders).await?;

    // Status.
    let status = status_of(
        md,
        &models,
        &decided.placements,
        decided.shared.as_deref(),
        now,
    );
    let busy = status
        .replicas
        .iter()
        .chain(status.stages.iter().flat_map(|s| &s.replicas))
        .any(|r| matches!(r.state, ReplicaState::Loading | ReplicaState::Pending));
    // A ready browser whose capabilities are still unknown may yet take the model.
    let unknown = view
        .browsers
        .iter()
        .any(|b| look::askable(b) && b.view.capabilities.is_none());
    patch_status(&api, md, status).await?;
    Ok(Action::requeue(if busy || unknown {
        LOADING_REQUEUE
    } else {
        ctx.settings.resync
    }))
}

/// Pods that hold a model carry its label; the others do not. `holders` lists, per label
/// of the deployment's models, the pods that hold it. Only differences are written, one
/// merge patch per pod whatever the number of labels.
async fn label_holders(
    ctx: &Context,
    ns: &str,
    view: &PoolView,
    holders: &[(String, Vec<&str>)],
) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    for pod in view.browsers.iter().filter_map(|b| b.pod.as_ref()) {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pod.name_any();
        let mut changes = serde_json::Map::new();
        for (label, pods_holding) in holders {
            let holds = pods_holding.contains(&name.as_str());
            let labelled = pod
                .labels()
                .get(label)
                .is_some_and(|v| v == labels::MODEL_LOADED);
            if holds != labelled {
                let value = if holds {
                    json!(labels::MODEL_LOADED)
                } else {
                    serde_json::Value::Null
                };
                changes.insert(label.clone(), value);
            }
        }
        if changes.is_empty() {
            continue;
        }
        let patch = json!({"metadata": {"labels": changes}});
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

/// Unloads every model of the deployment from every browser that holds it and removes
/// the pod labels.
async fn cleanup(md: &ModelDeployment, ctx: &Context, ns: &str) -> Result<Action> {
    let name = md.name_any();
    let models: Vec<String> = md
        .spec
        .agent_models(&name)
        .into_iter()
        .map(|m| m.name)
        .collect();
    if let Some((_, view)) = pool_view(ctx, ns, &md.spec.pool_ref.name) {
        for b in &view.browsers {
            let Some(ep) = view
                .token
                .as_deref()
                .and_then(|t| ctx.endpoint(ns, &b.view, t))
            else {
                continue;
            };
            if b.view.phase != "Running" || b.view.terminating {
                continue;
            }
            for model in &models {
                if let Err(e) = ctx.agents.unload(&ep, model).await {
                    // A browser that cannot be reached loses the model when it goes anyway.
                    warn!(%model, pod = %b.view.name, error = %e, "unload failed");
                }
            }
        }
        let none: Vec<(String, Vec<&str>)> = models
            .iter()
            .map(|m| (labels::model_label(m), Vec::new()))
            .collect();
        label_holders(ctx, ns, &view, &none).await?;
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
            precision: None,
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
