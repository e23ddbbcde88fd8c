//! One `ModelDeployment` reconcile: find the pool's browsers, ask their agents what they hold
//! and can run, place the model, label the pods that hold it, report; unload on delete.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use serde_json::json;
use tracing::warn;
use webaccel_api::labels::{self, condition};
use webaccel_api::v1alpha1::{BrowserPool, ModelDeployment, ModelDeploymentStatus, ReplicaState};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::pool::build;
use crate::pool::observe::BrowserView;
use crate::pool::reconcile::endpoint;
use crate::pool::status::condition as make_condition;
use webaccel_api::agent::ModelSpec;
use webaccel_engine::agent::{Endpoint, ModelOnAgent};
use webaccel_engine::place::{self, Candidate, Placement};

pub const CONTROLLER: &str = "modeldeployment";

pub async fn reconcile(md: Arc<ModelDeployment>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let ns = md
        .namespace()
        .ok_or_else(|| Error::NoNamespace(md.name_any()))?;
    let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, labels::MODEL_FINALIZER, md, |event| async {
        match event {
            Finalizer::Apply(md) => apply(&md, &ctx, &ns).await,
            Finalizer::Cleanup(md) => cleanup(&md, &ctx, &ns).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    result
}

/// The pool's browsers with a way to reach each agent.
struct PoolView {
    pool: BrowserPool,
    pods: Vec<Pod>,
    browsers: Vec<BrowserView>,
    token: Option<String>,
}

async fn pool_view(ctx: &Context, ns: &str, pool_name: &str) -> Result<Option<PoolView>> {
    let Some(pool) = Api::<BrowserPool>::namespaced(ctx.client.clone(), ns)
        .get_opt(pool_name)
        .await?
    else {
        return Ok(None);
    };
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().labels(&build::selector_string(pool_name)))
        .await?
        .items;
    let browsers = pods.iter().map(crate::pool::observe::from_pod).collect();
    let token = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(&build::token_secret_name(&pool))
        .await?
        .and_then(|s| s.data)
        .and_then(|d| {
            d.get("token")
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
        })
        .map(|t| t.trim().to_owned());
    Ok(Some(PoolView {
        pool,
        pods,
        browsers,
        token,
    }))
}

async fn apply(md: &ModelDeployment, ctx: &Context, ns: &str) -> Result<Action> {
    let name = md.name_any();
    let now = Timestamp::now();
    let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), ns);
    let Some(view) = pool_view(ctx, ns, &md.spec.pool_ref.name).await? else {
        let msg = format!("BrowserPool {} not found in {ns}", md.spec.pool_ref.name);
        patch_status(&api, md, not_ready(md, "PoolNotFound", msg, now)).await?;
        return Ok(Action::requeue(Duration::from_secs(30)));
    };
    let Some(token) = view.token.clone() else {
        patch_status(
            &api,
            md,
            not_ready(
                md,
                "PoolNotReady",
                "the pool's agent token Secret does not exist yet".into(),
                now,
            ),
        )
        .await?;
        return Ok(Action::requeue(Duration::from_secs(10)));
    };

    // What every running browser holds and can run.
    let old = md.status.clone().unwrap_or_default();
    let same_generation = old.observed_generation == md.metadata.generation;
    let label = labels::model_label(&name);
    let calls = view.browsers.iter().zip(&view.pods).map(|(b, pod)| {
        let token = token.clone();
        let name = name.clone();
        let old = &old;
        let label = &label;
        async move {
            let ep = endpoint(b, &token).filter(|_| b.phase == "Running" && !b.terminating)?;
            let uid = pod.uid().unwrap_or_default();
            let caps = match ctx.cached_capabilities(&uid) {
                Some(c) => Some(c),
                None => ctx
                    .agents
                    .capabilities(&ep)
                    .await
                    .ok()
                    .inspect(|c| ctx.cache_capabilities(&uid, c.clone())),
            };
            let model = ctx.agents.model(&ep, &name).await.ok()?;
            let failed_before = old
                .replicas
                .iter()
                .find(|r| {
                    same_generation && r.pod == b.name && r.state == ReplicaState::FailedToLoad
                })
                .and_then(|r| r.reason.clone());
            let models_held = pod
                .labels()
                .keys()
                .filter(|k| k.starts_with("webaccel.dev/model.") && *k != label)
                .count();
            Some((
                ep,
                Candidate {
                    pod: b.name.clone(),
                    usable: b.ready && !b.is_draining(),
                    backends: caps.as_ref().map(|c| c.backends()).unwrap_or_default(),
                    adapter: caps.and_then(|c| c.adapter_label()),
                    model,
                    models_held,
                    failed_before,
                },
            ))
        }
    });
    let seen: Vec<(Endpoint, Candidate)> = join_all(calls).await.into_iter().flatten().collect();
    let candidates: Vec<Candidate> = seen.iter().map(|(_, c)| c.clone()).collect();
    let mut placement = place::plan(
        md.spec.replicas,
        &md.spec.backends,
        &view.pool.spec.backends,
        &candidates,
    );

    // Loading takes seconds (download, compile, warm-up): say so before waiting on it.
    if !placement.load.is_empty() {
        patch_status(&api, md, status_of(md, &placement, now)).await?;
    }
    let endpoint_of = |pod: &str| {
        seen.iter()
            .find(|(e, _)| e.pod == pod)
            .map(|(e, _)| e.clone())
    };
    let loads = placement.load.iter().filter_map(|(pod, backend)| {
        let ep = endpoint_of(pod)?;
        let req = ModelSpec {
            name: name.clone(),
            uri: md.spec.model.uri.clone(),
            sha256: md.spec.model.sha256.clone(),
            backend: *backend,
            webnn_device: Default::default(),
            warmup: md.spec.warmup,
            task: md.spec.model.task.as_str().into(),
            precision: md.spec.precision.as_str().into(),
        };
        Some(async move { (ep.pod.clone(), ctx.agents.load(&ep, &req).await) })
    });
    for (pod, result) in join_all(loads).await {
        let Some(r) = placement.replicas.iter_mut().find(|r| r.pod == pod) else {
            continue;
        };
        match result {
            Ok(ModelOnAgent::Loaded { backend, init_ms }) => {
                r.state = ReplicaState::Loaded;
                r.backend = Some(backend);
                r.init_ms = init_ms;
            }
            Ok(ModelOnAgent::Failed(why)) => {
                r.state = ReplicaState::FailedToLoad;
                r.reason = Some(why);
            }
            Ok(_) => r.state = ReplicaState::Loading,
            // The agent could not be reached or broke: try again next round.
            Err(e) => {
                r.state = ReplicaState::Pending;
                r.reason = Some(e.to_string());
            }
        }
    }
    for pod in &placement.unload {
        if let Some(ep) = endpoint_of(pod)
            && let Err(e) = ctx.agents.unload(&ep, &name).await
        {
            warn!(model = %name, %pod, error = %e, "unload failed");
        }
    }

    // Pods that hold the model carry the label; the others do not.
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    for pod in &view.pods {
        let holds = placement
            .replicas
            .iter()
            .any(|r| r.pod == pod.name_any() && r.state == ReplicaState::Loaded);
        let labelled = pod
            .labels()
            .get(&label)
            .is_some_and(|v| v == labels::MODEL_LOADED);
        if holds != labelled {
            let value = if holds {
                json!(labels::MODEL_LOADED)
            } else {
                serde_json::Value::Null
            };
            let patch = json!({"metadata": {"labels": {label.clone(): value}}});
            pods.patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        }
    }

    let status = status_of(md, &placement, now);
    let settled = status.loaded_replicas == md.spec.replicas;
    patch_status(&api, md, status).await?;
    Ok(Action::requeue(if settled {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(5)
    }))
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
    } else if placement.unplaced > 0 {
        "Unplaceable"
    } else {
        "FailedToLoad"
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

async fn patch_status(
    api: &Api<ModelDeployment>,
    md: &ModelDeployment,
    status: ModelDeploymentStatus,
) -> Result<()> {
    // Server-side apply of the whole status, so fields no longer set are removed.
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
    if let Some(view) = pool_view(ctx, ns, &md.spec.pool_ref.name).await? {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
        for (b, pod) in view.browsers.iter().zip(&view.pods) {
            if let Some(ep) = view.token.as_deref().and_then(|t| endpoint(b, t))
                && b.phase == "Running"
                && let Err(e) = ctx.agents.unload(&ep, &name).await
            {
                // A browser that cannot be reached loses the model when it goes anyway.
                warn!(model = %name, pod = %b.name, error = %e, "unload failed");
            }
            if pod.labels().contains_key(&label) {
                let patch = json!({"metadata": {"labels": {label.clone(): null}}});
                pods.patch(&b.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
        }
    }
    Ok(Action::await_change())
}
