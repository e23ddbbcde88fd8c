//! From the caches to the fleet: which pods are endpoints, with what token and models.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures::FutureExt as _;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt as _;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};
use webaccel_crds::labels;
use webaccel_crds::pods::{self, token_in, token_secret_name};
use webaccel_crds::v1alpha1::{BrowserPool, ModelDeployment};

use super::{COALESCE, watch};
use crate::discovery::{Deployed, Endpoint, Endpoints, Pipelines};

/// The models a pod holds: its `webaccel.dev/model.<name>=loaded` labels.
pub fn loaded_models(pod: &Pod) -> BTreeSet<String> {
    let prefix = labels::model_label("");
    pod.labels()
        .iter()
        .filter(|(_, v)| v.as_str() == labels::MODEL_LOADED)
        .filter_map(|(k, _)| k.strip_prefix(&prefix))
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether the operator is draining the pod (annotation, or a label of that name).
fn draining(pod: &Pod) -> bool {
    pod.annotations().contains_key(labels::DRAINING) || pod.labels().contains_key(labels::DRAINING)
}

/// The pod's IP while it may take requests: Running, Ready, not being deleted, not
/// draining, with an IP.
fn serving_ip(pod: &Pod) -> Option<&str> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running")
        || !pods::pod_ready(pod)
        || pod.metadata.deletion_timestamp.is_some()
        || draining(pod)
    {
        return None;
    }
    status.pod_ip.as_deref().filter(|ip| !ip.is_empty())
}

/// The endpoint of a browser pod of `pool` whose agents take `token`, if the pod may take
/// requests now.
pub fn endpoint(pod: &Pod, pool: &str, token: &str) -> Option<Endpoint> {
    let ip = serving_ip(pod)?;
    let name = pod.name_any();
    Some(Endpoint {
        id: format!("{}/{name}", pod.namespace().unwrap_or_default()),
        url: pods::agent_url(ip),
        token: Some(token.to_owned()),
        pool: pool.to_owned(),
        pod: name,
        serving: true,
        models: loaded_models(pod),
        backends: BTreeMap::new(),
        browser: String::new(),
    })
}

/// `(namespace, name)` of a Secret.
type SecretKey = (String, String);

/// A watch on one Secret a user named in `spec.tokenSecretName`; stops when dropped.
struct NamedSecret {
    store: Store<Secret>,
    _stop: DropGuard,
}

/// What the fleet is computed from.
pub(super) struct Caches {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    pub pools: Store<BrowserPool>,
    pub models: Store<ModelDeployment>,
    /// The operator's token Secrets (label-selected).
    pub secrets: Store<Secret>,
    /// Woken by every watch event that may change the fleet.
    pub dirty: Arc<Notify>,
}

impl Caches {
    /// Starts and stops the watches of user-named token Secrets to follow the pools.
    fn follow_named_secrets(
        &self,
        named: &mut HashMap<SecretKey, NamedSecret>,
        stop: &CancellationToken,
    ) {
        let wanted: BTreeSet<SecretKey> = self
            .pools
            .state()
            .iter()
            .filter_map(|p| Some((p.namespace()?, p.spec.token_secret_name.clone()?)))
            .collect();
        named.retain(|key, _| wanted.contains(key));
        for key in wanted {
            if named.contains_key(&key) {
                continue;
            }
            let (ns, name) = &key;
            tracing::debug!(namespace = %ns, secret = %name, "watching a user-named token Secret");
            let child = stop.child_token();
            let store = watch::reflect(
                kube::Api::<Secret>::namespaced(self.client.clone(), ns),
                watcher::Config::default().fields(&format!("metadata.name={name}")),
                "user-named token secret",
                Some(self.dirty.clone()),
                child.clone(),
            );
            named.insert(
                key,
                NamedSecret {
                    store,
                    _stop: child.drop_guard(),
                },
            );
        }
    }

    /// The token of `pool` in namespace `ns`, if its Secret is known.
    fn token(
        &self,
        named: &HashMap<SecretKey, NamedSecret>,
        ns: &str,
        pool: &BrowserPool,
    ) -> Option<String> {
        let name = token_secret_name(pool);
        let key = ObjectRef::<Secret>::new(&name).within(ns);
        let store = match named.get(&(ns.to_owned(), name)) {
            Some(n) => &n.store,
            None => &self.secrets,
        };
        store.get(&key).as_deref().and_then(token_in)
    }

    /// The fleet now, and the pools (`namespace/pool`) with ready pods whose token is not
    /// known.
    fn endpoints(&self, named: &HashMap<SecretKey, NamedSecret>) -> (Endpoints, BTreeSet<String>) {
        let mut found = Endpoints::new();
        let mut no_token = BTreeSet::new();
        let mut tokens: HashMap<(String, String), Option<String>> = HashMap::new();
        for pod in self.pods.state() {
            let (Some(ns), Some(pool)) = (pod.namespace(), pod.labels().get(labels::POOL)) else {
                continue;
            };
            if serving_ip(&pod).is_none() {
                continue;
            }
            let token = tokens
                .entry((ns.clone(), pool.clone()))
                .or_insert_with(|| {
                    let p = self
                        .pools
                        .get(&ObjectRef::<BrowserPool>::new(pool).within(&ns))?;
                    self.token(named, &ns, &p)
                })
                .clone();
            let Some(token) = token else {
                no_token.insert(format!("{ns}/{pool}"));
                continue;
            };
            if let Some(ep) = endpoint(&pod, pool, &token) {
                found.insert(ep.id.clone(), ep);
            }
        }
        (found, no_token)
    }
}

/// The models deployed: the names of the ModelDeployments not being deleted.
fn deployed(models: &Store<ModelDeployment>) -> Deployed {
    models
        .state()
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .map(|m| m.name_any())
        .collect()
}

/// The models cut into stages: the ModelDeployments with `spec.stages` not being
/// deleted, each with its stages' model names. Deployments of the same name in two
/// namespaces are one model to the gateway (as for [`deployed`]); the first listed wins.
fn pipelines(models: &Store<ModelDeployment>) -> Pipelines {
    let mut out = Pipelines::new();
    for m in models.state() {
        if m.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = m.name_any();
        if let Some(stages) = m.spec.stage_names(&name) {
            out.entry(name).or_insert(stages);
        }
    }
    out
}

/// Publishes `value` on `tx` if it differs from what is there; whether it did.
fn publish<T: PartialEq>(tx: &tokio::sync::watch::Sender<Arc<T>>, value: T) -> bool {
    tx.send_if_modified(|current| {
        if **current == value {
            false
        } else {
            *current = Arc::new(value);
            true
        }
    })
}

/// Follows the caches until `stop`, publishing the fleet on `tx`, the deployed models on
/// `deployed_tx` and the models cut into stages on `pipelines_tx` when they change.
pub(super) async fn run(
    caches: Caches,
    tx: tokio::sync::watch::Sender<Arc<Endpoints>>,
    deployed_tx: tokio::sync::watch::Sender<Arc<Deployed>>,
    pipelines_tx: tokio::sync::watch::Sender<Arc<Pipelines>>,
    stop: CancellationToken,
) {
    // Nothing is published before every kind has been listed once: a fleet built from
    // half the picture would drop browsers that exist.
    let listed = async {
        let _ = tokio::join!(
            caches.pods.wait_until_ready(),
            caches.pools.wait_until_ready(),
            caches.models.wait_until_ready(),
            caches.secrets.wait_until_ready(),
        );
    };
    tokio::select! {
        () = stop.cancelled() => return,
        () = listed => {},
    }
    tracing::info!("Kubernetes discovery: pods, pools, models and token Secrets listed");
    let mut named = HashMap::new();
    let mut no_token_before = BTreeSet::new();
    loop {
        // Events that came while this round runs wake the next one.
        let _ = caches.dirty.notified().now_or_never();
        caches.follow_named_secrets(&mut named, &stop);
        let (found, no_token) = caches.endpoints(&named);
        for pool in no_token.difference(&no_token_before) {
            tracing::warn!(%pool, "ready browsers whose pool's token Secret is not known yet: not routed to");
        }
        for pool in no_token_before.difference(&no_token) {
            tracing::info!(%pool, "the pool's token Secret is known again");
        }
        no_token_before = no_token;
        // The models first: a fleet change wakes the gateway, which then reads both.
        publish(&deployed_tx, deployed(&caches.models));
        publish(&pipelines_tx, pipelines(&caches.models));
        if publish(&tx, found) {
            tracing::debug!(endpoints = tx.borrow().len(), "fleet changed");
        }
        if tx.is_closed() {
            return;
        }
        // The next change, then whatever else arrives with it.
        tokio::select! {
            () = stop.cancelled() => return,
            () = caches.dirty.notified() => {},
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(COALESCE) => {},
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn pod(phase: &str, ready: bool, extra_labels: serde_json::Value) -> Pod {
        let mut labels = json!({
            "app.kubernetes.io/managed-by": "webaccel-operator",
            "webaccel.dev/pool": "web",
        });
        for (k, v) in extra_labels.as_object().unwrap() {
            labels[k] = v.clone();
        }
        serde_json::from_value(json!({
            "metadata": {"name": "web-abcde", "namespace": "ml", "labels": labels},
            "status": {"phase": phase, "podIP": "10.0.0.7",
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    #[test]
    fn only_running_ready_pods_are_endpoints() {
        assert!(endpoint(&pod("Pending", false, json!({})), "web", "t").is_none());
        assert!(endpoint(&pod("Running", false, json!({})), "web", "t").is_none());
        let ep = endpoint(&pod("Running", true, json!({})), "web", "t").unwrap();
        assert_eq!(ep.id, "ml/web-abcde");
        assert_eq!(ep.url, "http://10.0.0.7:8700");
        assert_eq!(ep.token.as_deref(), Some("t"));
        assert!(ep.serving);
        let mut p = pod("Running", true, json!({}));
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert!(endpoint(&p, "web", "t").is_none());
        let mut p = pod("Running", true, json!({}));
        p.annotations_mut()
            .insert(labels::DRAINING.into(), "2026-01-01T00:00:00Z".into());
        assert!(endpoint(&p, "web", "t").is_none());
        let p = pod("Running", true, json!({"webaccel.dev/draining": "true"}));
        assert!(endpoint(&p, "web", "t").is_none());
        let mut p = pod("Running", true, json!({}));
        p.status.as_mut().unwrap().pod_ip = Some("fd00::7".into());
        assert_eq!(
            endpoint(&p, "web", "t").unwrap().url,
            "http://[fd00::7]:8700"
        );
        p.status.as_mut().unwrap().pod_ip = None;
        assert!(endpoint(&p, "web", "t").is_none());
    }

    #[test]
    fn models_are_the_loaded_model_labels() {
        let p = pod(
            "Running",
            true,
            json!({"webaccel.dev/model.bert": "loaded", "webaccel.dev/model.clip": "loading",
                   "webaccel.dev/model.": "loaded", "webaccel.dev/template-hash": "loaded"}),
        );
        assert_eq!(
            loaded_models(&p).into_iter().collect::<Vec<_>>(),
            vec!["bert".to_owned()]
        );
    }

    #[test]
    fn tokens_come_from_the_token_key() {
        let s: Secret = serde_json::from_value(
            json!({"metadata": {"name": "web-agent-token"}, "data": {"token": "IHNlY3JldAo="}}),
        )
        .unwrap();
        assert_eq!(token_in(&s).as_deref(), Some("secret"));
        let s: Secret = serde_json::from_value(
            json!({"metadata": {"name": "x"}, "data": {"other": "c2VjcmV0"}}),
        )
        .unwrap();
        assert_eq!(token_in(&s), None);
        let s: Secret =
            serde_json::from_value(json!({"metadata": {"name": "x"}, "data": {"token": ""}}))
                .unwrap();
        assert_eq!(token_in(&s), None);
    }
}
