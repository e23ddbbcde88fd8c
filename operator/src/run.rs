//! Wires the controllers to the API: one watch per kind feeds a shared cache (reflector
//! store) that both controllers and the agent poller read; the controllers are woken by the
//! watch events of their objects, their children and related objects, and by the poller.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use futures::future::{BoxFuture, FutureExt};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};
use webaccel_crds::labels;
use webaccel_crds::v1alpha1::{BrowserPool, ModelDeployment};

use crate::context::Context;
use crate::error::Error;
use crate::poll::{self, Triggers};
use crate::stores::{self, Kind, Stores, Synced, Writers};
use crate::{model, pool};

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
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

/// A watch of `api` (slimmed by `slim`) into the shared store `writer`, marking `kind`
/// synced after its first full list. Runs until dropped.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    synced: Arc<Synced>,
    kind: Kind,
    slim: fn(&mut K),
) -> BoxFuture<'static, ()>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(api, config)
        .default_backoff()
        .modify(slim)
        .inspect(move |ev| {
            if let Ok(watcher::Event::InitDone) = ev {
                synced.mark(kind);
            }
        })
        .reflect_shared(writer)
        .for_each(|ev| async move {
            if let Err(e) = ev {
                tracing::debug!(error = %e, "watch");
            }
        })
        .boxed()
}

/// The objects a change of which concerns pool `name` in `ns`'s models.
fn models_of(
    stores: &Stores,
    ns: Option<String>,
    pool: Option<&String>,
) -> Vec<ObjectRef<ModelDeployment>> {
    match (ns, pool) {
        (Some(ns), Some(pool)) => stores.models_of(&ns, pool),
        _ => Vec::new(),
    }
}

fn subscribe<K>(w: &Writer<K>) -> impl Stream<Item = Arc<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    // Shared stores always hand out subscribers; an empty stream is never used.
    match w.subscribe() {
        Some(s) => s.boxed(),
        None => futures::stream::pending().boxed(),
    }
}

/// Runs both controllers and the agent poller until `stop` resolves. `namespace: None`
/// watches all namespaces. `writers` are those of `ctx.stores` (from [`Stores::shared`]).
pub async fn controllers(
    ctx: Arc<Context>,
    writers: Writers,
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

    // Subscriptions first: every watch event reaches each of them.
    let w = &writers;
    let (pools_for_pools, pools_for_models) = (subscribe(&w.pools), subscribe(&w.pools));
    let models_for_models = subscribe(&w.models);
    let (pods_for_pools, pods_for_models) = (subscribe(&w.pods), subscribe(&w.pods));
    let (secrets_for_pools, secrets_for_models) = (subscribe(&w.secrets), subscribe(&w.secrets));
    let services_for_pools = subscribe(&w.services);
    let pdbs_for_pools = subscribe(&w.pdbs);

    let Writers {
        pools: pools_w,
        models: models_w,
        pods: pods_w,
        secrets: secrets_w,
        services: services_w,
        pdbs: pdbs_w,
        synced,
    } = writers;
    // Children are watched by the operator's label only: never all Secrets, Services or
    // pods of the cluster.
    let reflectors = vec![
        reflect(
            api::<BrowserPool>(&client, namespace),
            watcher::Config::default(),
            pools_w,
            synced.clone(),
            Kind::Pools,
            stores::slim,
        ),
        reflect(
            api::<ModelDeployment>(&client, namespace),
            watcher::Config::default(),
            models_w,
            synced.clone(),
            Kind::Models,
            stores::slim,
        ),
        reflect(
            api::<Pod>(&client, namespace),
            managed.clone(),
            pods_w,
            synced.clone(),
            Kind::Pods,
            stores::slim_pod,
        ),
        reflect(
            api::<Secret>(&client, namespace),
            managed.clone(),
            secrets_w,
            synced.clone(),
            Kind::Secrets,
            stores::slim,
        ),
        reflect(
            api::<Service>(&client, namespace),
            managed.clone(),
            services_w,
            synced.clone(),
            Kind::Services,
            stores::slim,
        ),
        reflect(
            api::<PodDisruptionBudget>(&client, namespace),
            managed,
            pdbs_w,
            synced,
            Kind::Pdbs,
            stores::slim,
        ),
    ];

    // The poller's wake-ups.
    let (pool_tx, pool_rx) = mpsc::unbounded();
    let (model_tx, model_rx) = mpsc::unbounded();
    let triggers = Triggers {
        pools: pool_tx,
        models: model_tx,
    };

    // Forget deleted pools (their autoscaler memory and metric series) once a minute.
    let janitor_ctx = ctx.clone();
    let janitor = async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let live: HashSet<String> = janitor_ctx
                .stores
                .pools
                .state()
                .iter()
                .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
                .collect();
            janitor_ctx.forget_pools_except(|key| live.contains(key));
        }
    }
    .boxed();

    let stores = ctx.stores.clone();
    let pools = Controller::for_shared_stream(pools_for_pools, stores.pools.clone())
        .owns_shared_stream(pods_for_pools)
        .owns_shared_stream(services_for_pools)
        .owns_shared_stream(pdbs_for_pools)
        .owns_shared_stream(secrets_for_pools)
        .reconcile_on(pool_rx)
        .with_config(config.clone())
        .graceful_shutdown_on(shutdown(stop_rx.clone()))
        .run(pool::reconcile::reconcile, pool_error, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "pool controller");
            }
        });

    // A model follows its pool, the pool's pods and its token: any change to them re-runs
    // the models of that pool.
    let (s1, s2, s3) = (stores.clone(), stores.clone(), stores.clone());
    let models = Controller::for_shared_stream(models_for_models, stores.models.clone())
        .watches_shared_stream(pods_for_models, move |pod: Arc<Pod>| {
            models_of(&s1, pod.namespace(), pod.labels().get(labels::POOL))
        })
        .watches_shared_stream(pools_for_models, move |p: Arc<BrowserPool>| {
            models_of(&s2, p.namespace(), Some(&p.name_any()))
        })
        .watches_shared_stream(secrets_for_models, move |s: Arc<Secret>| {
            models_of(&s3, s.namespace(), s.labels().get(labels::POOL))
        })
        .reconcile_on(model_rx)
        .with_config(config)
        .graceful_shutdown_on(shutdown(stop_rx))
        .run(model::reconcile::reconcile, model_error, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "model controller");
            }
        });

    let background = futures::future::join3(
        futures::future::join_all(reflectors),
        poll::run(ctx.clone(), triggers),
        janitor,
    );
    info!(
        namespace = namespace.unwrap_or("(all)"),
        "controllers running"
    );
    // The controllers end on `stop` (after their running reconciles); the watches, the
    // poller and the janitor end with them.
    let controllers = futures::future::join(pools, models);
    futures::pin_mut!(controllers, background);
    futures::future::select(controllers, background).await;
}
