//! One `ModelDeployment` reconcile: validate, build (the pool and its browsers from the watch
//! caches, as seats for the engine), place (the engine's round: what each ready browser's
//! agent holds and can run, where each model goes, the loads and unloads started), apply
//! (label the pods that hold it), update the status if it changed; unload on delete. A
//! deployment with `stages` is several models to the agents (`<name>.stage<i>`), each
//! placed, labelled and reported on its own.
//!
//! Only ready browsers are asked anything: a pod is Running well before its agent's browser
//! is up. A load starts in the background on the agent (`?wait=false`) and is looked at
//! again a few seconds later, so no reconcile waits on a model download or compile.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Error as FinalizerError, Event as Finalizer, finalizer};
use serde_json::json;
use tracing::warn;
use webaccel_crds::labels;
use webaccel_crds::pods;
use webaccel_crds::scale;
use webaccel_crds::status::model::{not_ready, status_of};
use webaccel_crds::v1alpha1::{
    AgentModel, BrowserPool, ModelDeployment, ModelDeploymentStatus, ReplicaStatus,
};
use webaccel_engine::deployment::{self, Call, Deployment, Seat, Unit};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::pool::build;
use crate::pool::observe::{self, AskStats, Browser, PoolView};

pub const CONTROLLER: &str = "modeldeployment";

/// How soon a model is looked at again while a replica loads or waits for its agent.
const LOADING_REQUEUE: Duration = Duration::from_secs(2);
/// How often an autoscaled model's demand is sampled (Knative's KPA ticks every 2 s).
const AUTOSCALE_TICK: Duration = Duration::from_secs(2);

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

    // Build: the pool's browsers as the engine's seats, with the room their memory budget
    // leaves; with autoscaling, what their agents report (the poller's recent answers,
    // or asked now) decides the replicas.
    let autoscaled = md.spec.autoscaling.is_some();
    let asked = observe::ask_agents(ctx, ns, &mut view, AskStats::Missing).await;
    if asked.refused_token {
        ctx.forget_refused_token(ns, &pods::token_secret_name(&pool));
    }
    let old = md.status.clone().unwrap_or_default();
    let units: Vec<Unit> = models.iter().map(AgentModel::unit).collect();
    let previous: Vec<Vec<ReplicaStatus>> =
        models.iter().map(|m| old.replicas_of(m).to_vec()).collect();
    let own_labels: Vec<String> = models
        .iter()
        .map(|m| labels::model_label(&m.name))
        .collect();
    let budget = pool.spec.memory_budget_bytes();
    let seats: Vec<Seat<'_>> = view
        .browsers
        .iter()
        .map(|b| Seat {
            name: &b.view.name,
            endpoint: ctx.endpoint(ns, &b.view, &token),
            askable: askable(b),
            // Cordoned: its models are being loaded elsewhere before it drains.
            draining: !b.view.takes_new_replicas(),
            cordoned: b.view.is_cordoned(),
            leaving: b.view.terminating,
            capabilities: b.view.capabilities.as_ref(),
            models_held: other_models_held(b, &own_labels),
            room: scale::room(budget, b.view.stats.as_ref()),
        })
        .collect();
    let answers: Vec<scale::Answer<'_>> = view
        .browsers
        .iter()
        .map(|b| (b.view.name.as_str(), b.view.stats.as_ref()))
        .collect();
    let waiting = scale::waiting_requests(md.annotations(), now);
    let wanted = ctx.with_model_scaler(&format!("{ns}/{name}"), |scaler| {
        scale::wanted(md, scaler, &answers, waiting, now)
    });
    super::scale::report(ctx, md, ns, old.desired_replicas, &wanted).await;
    let deployment = Deployment {
        units: &units,
        staged: md.spec.stages.is_some(),
        replicas: wanted.desired,
        backends: &md.spec.backends,
        pool_backends: &pool.spec.backends,
        pool_desired: pool.status.as_ref().map_or(0, |s| s.desired_replicas),
        previous: &previous,
        same_spec: old.observed_generation == md.metadata.generation,
    };

    // Place: the engine asks the agents, decides, and starts the loads and unloads.
    let request =
        |i: usize, backend| models[i].load_request(&md.spec, models[i].uri().to_owned(), backend);
    let placed = deployment::place(ctx.agents.as_ref(), &deployment, &seats, &request).await;
    if placed.unauthorized {
        ctx.forget_refused_token(ns, &pods::token_secret_name(&pool));
    }
    for (call, model, pod, e) in &placed.failed_calls {
        if *call == Call::Unload {
            warn!(%model, %pod, error = %e, "unload failed");
        }
    }

    // Apply: the pods that hold each model carry its label.
    let holders: Vec<(String, Vec<&str>)> = own_labels.into_iter().zip(placed.holders()).collect();
    label_holders(ctx, ns, &view, &holders).await?;

    // Status.
    let status = status_of(
        md,
        wanted,
        &models,
        &placed.placements,
        placed.shared.as_deref(),
        now,
    );
    ctx.metrics
        .model_replicas(ns, &name, status.desired_replicas, status.loaded_replicas);
    patch_status(&api, md, status).await?;
    Ok(Action::requeue(
        if placed.busy() || placed.capabilities_unknown {
            LOADING_REQUEUE
        } else if autoscaled {
            AUTOSCALE_TICK
        } else {
            ctx.settings.resync
        },
    ))
}

/// Whether a browser may be asked about models: ready, reachable and staying.
fn askable(b: &Browser) -> bool {
    let v = &b.view;
    v.ready && v.phase == "Running" && !v.terminating && v.ip.is_some() && !b.uid.is_empty()
}

/// How many models of other deployments the pod holds (its labels say), to spread them.
fn other_models_held(b: &Browser, own_labels: &[String]) -> usize {
    b.pod.as_ref().map_or(0, |p| {
        p.labels()
            .keys()
            .filter(|k| k.starts_with("webaccel.dev/model.") && !own_labels.contains(k))
            .count()
    })
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
    ctx.forget_model(&format!("{ns}/{name}"));
    ctx.metrics.forget_model(ns, &name);
    let models: Vec<String> = md
        .spec
        .agent_models(&name)
        .into_iter()
        .map(|m| m.name)
        .collect();
    if let Some((_, view)) = pool_view(ctx, ns, &md.spec.pool_ref.name) {
        let endpoints: Vec<_> = view
            .browsers
            .iter()
            .filter(|b| b.view.phase == "Running" && !b.view.terminating)
            .filter_map(|b| {
                let token = view.token.as_deref()?;
                ctx.endpoint(ns, &b.view, token)
            })
            .collect();
        for (pod, model, e) in
            deployment::unload_everywhere(ctx.agents.as_ref(), &endpoints, &models).await
        {
            // A browser that cannot be reached loses the model when it goes anyway.
            warn!(%model, %pod, error = %e, "unload failed");
        }
        let none: Vec<(String, Vec<&str>)> = models
            .iter()
            .map(|m| (labels::model_label(m), Vec::new()))
            .collect();
        label_holders(ctx, ns, &view, &none).await?;
    }
    Ok(Action::await_change())
}
