//! The scale-from-zero signal: `webaccel.dev/waiting-requests=<n>` and
//! `webaccel.dev/waiting-requests-at=<RFC 3339>` on each ModelDeployment named after a
//! model with waiting requests (in every watched namespace), and on each BrowserPool such
//! a deployment is placed on, written by a task of its own. The deployment's count wakes
//! that model from zero replicas (its autoscaler); the pool's, the pool from zero
//! browsers.
//!
//! - A deployment's count is its model's; a pool's is the sum over the waiting models
//!   deployed to it. Each is written when it changes, and rewritten every [`REFRESH`]
//!   while requests wait, so that the operator (which ignores a signal older than two
//!   minutes) keeps seeing it.
//! - When nothing waits for an object any more, its count is set to `0` (the operator reads
//!   `0` and an absent annotation alike). That write is a JSON Patch that first tests that
//!   `waiting-requests-at` is still the time this gateway wrote: with several gateway
//!   replicas, one replica never clears a count another replica has written since (the
//!   test fails, and the other replica clears its own count in turn).
//! - Each object is written at most once per [`MIN_INTERVAL`]; a failed write is retried
//!   after [`RETRY`] and logged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use futures::FutureExt as _;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource as _, ResourceExt as _};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use webaccel_crds::labels;
use webaccel_crds::v1alpha1::{BrowserPool, ModelDeployment};

use super::FIELD_MANAGER;
use crate::waiting::WaitingByModel;

/// Least time between two writes to one object.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// A count that has not changed is written again after this long while requests wait
/// (the operator's TTL is two minutes).
pub const REFRESH: Duration = Duration::from_secs(20);
/// After a failed write.
pub const RETRY: Duration = Duration::from_secs(5);
/// How often the mapping from models to pools is looked at again while requests wait (a
/// ModelDeployment may appear after its first request).
const TICK: Duration = Duration::from_secs(1);

/// An object the signal is written on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// `(namespace, name)` of a BrowserPool.
    Pool(String, String),
    /// `(namespace, name)` of a ModelDeployment.
    Model(String, String),
}

impl Target {
    fn ns_name(&self) -> (&str, &str) {
        match self {
            Self::Pool(ns, name) | Self::Model(ns, name) => (ns, name),
        }
    }

    fn url_path(&self) -> String {
        let (ns, _) = self.ns_name();
        match self {
            Self::Pool(..) => BrowserPool::url_path(&(), Some(ns)),
            Self::Model(..) => ModelDeployment::url_path(&(), Some(ns)),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::Pool(..) => "browserpool",
            Self::Model(..) => "modeldeployment",
        };
        let (ns, name) = self.ns_name();
        write!(f, "{kind} {ns}/{name}")
    }
}

/// Requests waiting per object: each waiting model's count on every ModelDeployment of
/// that name (any namespace), and added to every pool one of them points to.
/// ModelDeployments being deleted do not count.
pub fn waiting_targets(
    waiting: &WaitingByModel,
    models: &[Arc<ModelDeployment>],
) -> BTreeMap<Target, usize> {
    let mut out = BTreeMap::new();
    for m in models {
        if m.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let (Some(&n), Some(ns)) = (waiting.get(&m.name_any()), m.namespace()) else {
            continue;
        };
        out.insert(Target::Model(ns.clone(), m.name_any()), n);
        *out.entry(Target::Pool(ns, m.spec.pool_ref.name.clone()))
            .or_insert(0) += n;
    }
    out
}

/// What this gateway last wrote on a pool.
#[derive(Debug, Clone)]
struct Written {
    count: usize,
    /// The `waiting-requests-at` value written with it.
    at: String,
    when: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Set(usize),
    /// Back to 0, if `waiting-requests-at` is still this.
    Clear {
        at: String,
    },
}

enum Failure {
    /// The pool is gone, or someone else has written the signal since: nothing to do.
    Moot(String),
    Retry(kube::Error),
}

/// JSON Pointer of an annotation.
fn pointer(key: &str) -> String {
    format!(
        "/metadata/annotations/{}",
        key.replace('~', "~0").replace('/', "~1")
    )
}

/// The body and content type of a write at time `at`.
pub fn patch_body(write: &Write, at: &str) -> (Value, &'static str) {
    match write {
        Write::Set(n) => (
            json!({"metadata": {"annotations": {
                labels::WAITING_REQUESTS: n.to_string(),
                labels::WAITING_REQUESTS_AT: at,
            }}}),
            "application/merge-patch+json",
        ),
        Write::Clear { at: written } => (
            json!([
                {"op": "test", "path": pointer(labels::WAITING_REQUESTS_AT), "value": written},
                {"op": "replace", "path": pointer(labels::WAITING_REQUESTS), "value": "0"},
                {"op": "replace", "path": pointer(labels::WAITING_REQUESTS_AT), "value": at},
            ]),
            "application/json-patch+json",
        ),
    }
}

async fn send(
    client: &kube::Client,
    target: &Target,
    write: &Write,
    at: &str,
) -> Result<(), Failure> {
    let (_, name) = target.ns_name();
    let (body, content_type) = patch_body(write, at);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let request = kube::core::Request::new(target.url_path())
        .patch(name, &params, &Patch::Merge(&body))
        .map(|mut r| {
            // kube builds merge patches; a JSON Patch differs only in its content type.
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            r
        })
        .map_err(|e| Failure::Retry(kube::Error::BuildRequest(e)))?;
    match client.request_text(request).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(Failure::Moot("it is gone".into())),
        // A failed JSON Patch test (422), or a conflict: another writer came first.
        Err(kube::Error::Api(s))
            if matches!(write, Write::Clear { .. }) && (s.code == 422 || s.code == 409) =>
        {
            Err(Failure::Moot(format!(
                "another writer set it since ({})",
                s.message
            )))
        }
        Err(e) => Err(Failure::Retry(e)),
    }
}

/// Writes the waiting counts `rx` receives on the deployments and pools until `stop`.
pub(super) async fn run(
    client: kube::Client,
    models: Store<ModelDeployment>,
    pools: Store<BrowserPool>,
    mut rx: tokio::sync::watch::Receiver<Arc<WaitingByModel>>,
    stop: CancellationToken,
) {
    let mut written: HashMap<Target, Written> = HashMap::new();
    let mut not_before: HashMap<Target, Instant> = HashMap::new();
    let mut unknown_before: BTreeSet<String> = BTreeSet::new();
    loop {
        let waiting = rx.borrow_and_update().clone();
        let deployed = models.state();
        let desired = waiting_targets(&waiting, &deployed);

        let known: BTreeSet<String> = deployed.iter().map(|m| m.name_any()).collect();
        let unknown: BTreeSet<String> = waiting
            .keys()
            .filter(|m| !known.contains(*m))
            .cloned()
            .collect();
        for m in unknown.difference(&unknown_before) {
            tracing::info!(model = %m, "requests wait for a model no ModelDeployment names: no pool to scale");
        }
        unknown_before = unknown;

        let now = Instant::now();
        not_before.retain(|_, t| *t > now);
        let mut due = Vec::new();
        let mut wake: Option<Instant> = None;
        let keys: BTreeSet<Target> = desired.keys().chain(written.keys()).cloned().collect();
        for key in keys {
            let want = desired.get(&key).copied().unwrap_or(0);
            let write = match (want, written.get(&key)) {
                (0, None) => continue,
                (0, Some(w)) => Write::Clear { at: w.at.clone() },
                (n, Some(w)) if w.count == n && now.duration_since(w.when) < REFRESH => continue,
                (n, _) => Write::Set(n),
            };
            let exists = match &key {
                Target::Pool(ns, name) => {
                    pools
                        .get(&ObjectRef::<BrowserPool>::new(name).within(ns))
                        .is_some()
                        || pools.wait_until_ready().now_or_never().is_none()
                }
                Target::Model(ns, name) => {
                    models
                        .get(&ObjectRef::<ModelDeployment>::new(name).within(ns))
                        .is_some()
                        || models.wait_until_ready().now_or_never().is_none()
                }
            };
            if !exists {
                // No such object (any more): nothing to scale, nothing to clear.
                if written.remove(&key).is_none() {
                    tracing::debug!(target = %key, "requests wait for an object that does not exist");
                }
                continue;
            }
            if let Some(t) = not_before.get(&key) {
                wake = Some(wake.map_or(*t, |w: Instant| w.min(*t)));
                continue;
            }
            due.push((key, write));
        }

        let at = Timestamp::now().to_string();
        let results = futures::future::join_all(
            due.iter()
                .map(|(key, write)| send(&client, key, write, &at)),
        )
        .await;
        let now = Instant::now();
        for ((key, write), result) in due.into_iter().zip(results) {
            not_before.insert(key.clone(), now + MIN_INTERVAL);
            let object = key.to_string();
            match (result, write) {
                (Ok(()), Write::Set(count)) => {
                    tracing::debug!(%object, count, "waiting requests written");
                    written.insert(
                        key,
                        Written {
                            count,
                            at: at.clone(),
                            when: now,
                        },
                    );
                }
                (Ok(()), Write::Clear { .. }) => {
                    tracing::debug!(%object, "waiting requests cleared");
                    written.remove(&key);
                }
                (Err(Failure::Moot(why)), _) => {
                    tracing::debug!(%object, %why, "waiting requests: nothing to write");
                    written.remove(&key);
                }
                (Err(Failure::Retry(e)), _) => {
                    tracing::warn!(%object, error = %e, "writing the waiting requests failed; retrying");
                    let t = now + RETRY;
                    not_before.insert(key, t);
                    wake = Some(wake.map_or(t, |w| w.min(t)));
                }
            }
        }

        let ticking = !waiting.is_empty();
        tokio::select! {
            () = stop.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(wake.unwrap_or(now)), if wake.is_some() => {},
            () = tokio::time::sleep(TICK), if ticking => {},
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn mdep(ns: &str, name: &str, pool: &str) -> Arc<ModelDeployment> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "webaccel.dev/v1alpha1", "kind": "ModelDeployment",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"poolRef": {"name": pool}, "model": {"uri": "https://m/x.onnx", "task": "text-embedding"}}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn waiting_models_lead_to_their_pools() {
        let models = vec![
            mdep("a", "bert", "cpu"),
            mdep("b", "bert", "gpu"),
            mdep("a", "clip", "cpu"),
            mdep("a", "idle", "other"),
        ];
        let waiting =
            WaitingByModel::from([("bert".into(), 3), ("clip".into(), 2), ("nope".into(), 9)]);
        let per_target = waiting_targets(&waiting, &models);
        let pool = |ns: &str, name: &str| Target::Pool(ns.into(), name.into());
        let model = |ns: &str, name: &str| Target::Model(ns.into(), name.into());
        assert_eq!(
            per_target,
            BTreeMap::from([
                (pool("a", "cpu"), 5),
                (pool("b", "gpu"), 3),
                (model("a", "bert"), 3),
                (model("b", "bert"), 3),
                (model("a", "clip"), 2),
            ])
        );
    }

    #[test]
    fn the_clear_tests_what_was_written() {
        let (body, ct) = patch_body(&Write::Clear { at: "T1".into() }, "T2");
        assert_eq!(ct, "application/json-patch+json");
        assert_eq!(body[0]["op"], "test");
        assert_eq!(
            body[0]["path"],
            "/metadata/annotations/webaccel.dev~1waiting-requests-at"
        );
        assert_eq!(body[0]["value"], "T1");
        assert_eq!(body[1]["value"], "0");
        assert_eq!(body[2]["value"], "T2");
        let (body, ct) = patch_body(&Write::Set(4), "T3");
        assert_eq!(ct, "application/merge-patch+json");
        assert_eq!(
            body["metadata"]["annotations"]["webaccel.dev/waiting-requests"],
            "4"
        );
        assert_eq!(
            body["metadata"]["annotations"]["webaccel.dev/waiting-requests-at"],
            "T3"
        );
    }
}
