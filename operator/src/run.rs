//! Wires the controllers to the API: what each watches, and how errors requeue.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tracing::{info, warn};
use webaccel_api::labels;
use webaccel_api::v1alpha1::{BrowserPool, ModelDeployment};

use crate::context::Context;
use crate::error::Error;
use crate::{model, pool};

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn pool_error(p: Arc<BrowserPool>, e: &Error, ctx: Arc<Context>) -> Action {
    warn!(pool = %p.name_any(), error = %e, "reconcile failed");
    ctx.metrics
        .failed(pool::reconcile::CONTROLLER, e.metric_label());
    // A conflict means someone else wrote first: look again at once with fresh state.
    Action::requeue(if e.metric_label() == "conflict" {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(10)
    })
}

fn model_error(m: Arc<ModelDeployment>, e: &Error, ctx: Arc<Context>) -> Action {
    warn!(model = %m.name_any(), error = %e, "reconcile failed");
    ctx.metrics
        .failed(model::reconcile::CONTROLLER, e.metric_label());
    Action::requeue(Duration::from_secs(10))
}

/// Runs both controllers until `stop` resolves. `namespace: None` watches all namespaces.
pub async fn controllers(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let client = ctx.client.clone();
    let config = controller::Config::default().concurrency(ctx.settings.concurrency);
    let managed = watcher::Config::default().labels(&format!(
        "{}={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    let shutdown = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // Pods are watched as metadata only: owner references and labels are all a trigger
    // needs, and full pod objects would cost memory and bandwidth at thousands of pods.
    let pools = Controller::new(
        api::<BrowserPool>(&client, namespace),
        watcher::Config::default(),
    );
    // Forget deleted pools (their autoscaler memory and metric series) once a minute.
    let pool_store = pools.store();
    let janitor_ctx = ctx.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let live: std::collections::HashSet<String> = pool_store
                .state()
                .iter()
                .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
                .collect();
            janitor_ctx.forget_pools_except(|key| live.contains(key));
        }
    });
    let pools = pools
        .owns(
            api::<PartialObjectMeta<Pod>>(&client, namespace),
            managed.clone(),
        )
        .with_config(config.clone())
        .graceful_shutdown_on(shutdown(stop_rx.clone()))
        .run(pool::reconcile::reconcile, pool_error, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "pool controller");
            }
        });

    // A model follows its pool's pods: any change to them re-runs the models of that pool.
    let models = Controller::new(
        api::<ModelDeployment>(&client, namespace),
        watcher::Config::default(),
    );
    let store = models.store();
    let models = models
        .watches(
            api::<PartialObjectMeta<Pod>>(&client, namespace),
            managed,
            move |pod: PartialObjectMeta<Pod>| {
                let pool = pod.labels().get(labels::POOL).cloned();
                let ns = pod.namespace();
                store
                    .state()
                    .into_iter()
                    .filter(|m| Some(&m.spec.pool_ref.name) == pool.as_ref() && m.namespace() == ns)
                    .map(|m| ObjectRef::from_obj(&*m))
                    .collect::<Vec<_>>()
            },
        )
        .with_config(config)
        .graceful_shutdown_on(shutdown(stop_rx))
        .run(model::reconcile::reconcile, model_error, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "model controller");
            }
        });
    info!(
        namespace = namespace.unwrap_or("(all)"),
        "controllers running"
    );
    futures::join!(pools, models);
}
