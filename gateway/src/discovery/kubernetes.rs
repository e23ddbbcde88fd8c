//! Agents from the Kubernetes API: the browser pods the operator manages, watched (never
//! polled) through kube-runtime watchers and reflector caches.
//!
//! What is watched, and why each watch exists:
//!
//! - **Pods** labelled `app.kubernetes.io/managed-by=webaccel-operator` that carry a
//!   `webaccel.dev/pool` label (one label-selected watch). A pod is an
//!   [`Endpoint`](super::Endpoint) while it
//!   is `Running`, has a pod IP, its `Ready` condition is `True` (a kubelet reports `Running`
//!   long before the agent is ready), it is not being deleted and not draining
//!   (`webaccel.dev/draining`, an annotation the operator sets; a label of that name counts
//!   too). Its models are its `webaccel.dev/model.<name>=loaded` labels: the operator sets
//!   them once it has loaded the model there, so the label is the authority.
//! - **BrowserPools**: the pool of a pod names its token Secret (`spec.tokenSecretName`,
//!   else `<pool>-agent-token`), and the waiting signal is written on them.
//! - **ModelDeployments**: their names are the models deployed ([`Fleet::deployed`]:
//!   requests for them wait for a browser instead of failing as unknown), those with
//!   `spec.stages` are served as pipelines of their stages ([`Fleet::pipelines`]), and a
//!   model's name leads to its pool(s) (`spec.poolRef`) for the waiting signal.
//! - **Secrets**, never all of them:
//!   - the Secrets the operator creates (`<pool>-agent-token`), by one watch with the label
//!     selector `app.kubernetes.io/managed-by=webaccel-operator,webaccel.dev/pool`: the
//!     operator labels the token Secrets it writes, and no other Secret;
//!   - a Secret a user named in `spec.tokenSecretName` carries no label of ours, so it is
//!     watched alone, by the field selector `metadata.name=<name>` in the pool's namespace,
//!     for as long as a pool names it. This needs the same verbs as the labelled watch
//!     (`list`, `watch`) where a `get` on each pool change would add the `get` verb and
//!     still miss a rotated token until the pool changed; a watch sees the rotation at once.
//!
//! At steady state that is four watches (pods, pools, models, labelled Secrets) plus one
//! per user-named token Secret, and no other call: each watch LISTs once at start and then
//! streams changes; when the server ends a watch (every 290 s, `timeoutSeconds`) it is
//! resumed from its resourceVersion (one WATCH request), and LISTed again only if the API
//! server no longer has that version (410 Gone) or after an error.
//!
//! The fleet (and the deployed models) are recomputed from the caches after a burst of
//! events has settled ([`COALESCE`]) and published only when they differ from the last.
//!
//! The waiting signal ([`PoolAnnotations`]) is written by a task of its own (module
//! `annotate`: one merge patch per pool when its count changes, at most one a second per
//! pool, refreshed every 20 s while requests wait, and a JSON Patch with a `test` back to
//! `0` when nothing waits any more).

mod annotate;
mod fleet;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use webaccel_crds::labels;
use webaccel_crds::v1alpha1::{BrowserPool, ModelDeployment};

use super::{Deployed, Endpoints, Fleet, Pipelines};
use crate::waiting::{WaitingByModel, WaitingSink};

pub use fleet::{endpoint, loaded_models};

/// How long the fleet waits after a watch event for more to come before it recomputes.
pub const COALESCE: Duration = Duration::from_millis(100);

/// The field manager of the gateway's writes (the waiting annotations).
pub const FIELD_MANAGER: &str = "webaccel-gateway";

/// `key=value,key` label selector of the operator's pods and token Secrets.
pub fn managed_selector() -> String {
    format!(
        "{}={},{}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE,
        labels::POOL
    )
}

/// Publishes waiting counts as BrowserPool annotations
/// (`webaccel.dev/waiting-requests` and `webaccel.dev/waiting-requests-at`) through a
/// task of its own: [`WaitingSink::publish`] only hands the counts over and returns.
#[derive(Debug)]
pub struct PoolAnnotations {
    tx: tokio::sync::watch::Sender<Arc<WaitingByModel>>,
}

impl WaitingSink for PoolAnnotations {
    fn publish(&self, waiting: &WaitingByModel) {
        // Never blocks: the task reads the latest counts when it gets to them.
        self.tx.send_replace(Arc::new(waiting.clone()));
    }
}

fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Starts watching (all namespaces, or `namespace`) until `stop`: the fleet of ready
/// browser pods, and the sink that writes the waiting signal on their pools.
pub fn start(
    client: kube::Client,
    namespace: Option<String>,
    stop: CancellationToken,
) -> (Fleet, PoolAnnotations) {
    let ns = namespace.as_deref();
    let dirty = Arc::new(Notify::new());
    let managed = watcher::Config::default().labels(&managed_selector());
    let pods = watch::reflect(
        api::<Pod>(&client, ns),
        managed.clone(),
        "pods",
        Some(dirty.clone()),
        stop.clone(),
    );
    let pools = watch::reflect(
        api::<BrowserPool>(&client, ns),
        watcher::Config::default(),
        "browserpools",
        Some(dirty.clone()),
        stop.clone(),
    );
    let models = watch::reflect(
        api::<ModelDeployment>(&client, ns),
        watcher::Config::default(),
        "modeldeployments",
        Some(dirty.clone()),
        stop.clone(),
    );
    let secrets = watch::reflect(
        api::<Secret>(&client, ns),
        managed,
        "token secrets",
        Some(dirty.clone()),
        stop.clone(),
    );

    let (tx, rx) = tokio::sync::watch::channel(Arc::new(Endpoints::new()));
    let (deployed_tx, deployed_rx) = tokio::sync::watch::channel(Arc::new(Deployed::new()));
    let (pipelines_tx, pipelines_rx) = tokio::sync::watch::channel(Arc::new(Pipelines::new()));
    let caches = fleet::Caches {
        client: client.clone(),
        pods,
        pools: pools.clone(),
        models: models.clone(),
        secrets,
        dirty,
    };
    tokio::spawn(fleet::run(
        caches,
        tx,
        deployed_tx,
        pipelines_tx,
        stop.clone(),
    ));

    let (waiting_tx, waiting_rx) = tokio::sync::watch::channel(Arc::new(WaitingByModel::new()));
    tokio::spawn(annotate::run(client, models, pools, waiting_rx, stop));
    (
        Fleet::new(rx)
            .with_deployed(deployed_rx)
            .with_pipelines(pipelines_rx),
        PoolAnnotations { tx: waiting_tx },
    )
}
