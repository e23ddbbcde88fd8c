//! The scale-from-zero signal on the pools: `webaccel.dev/waiting-requests=<n>` and
//! `webaccel.dev/waiting-requests-at=<RFC 3339>` on each BrowserPool that a model with
//! waiting requests is deployed to (through its ModelDeployments, in every watched
//! namespace, found by the model's name), written by a task of its own.
//!
//! - A pool's count is the sum over the waiting models deployed to it. It is written when
//!   it changes, and rewritten every [`REFRESH`] while requests wait, so that the operator
//!   (which ignores a signal older than two minutes) keeps seeing it.
//! - When nothing waits for a pool any more, its count is set to `0` (the operator reads
//!   `0` and an absent annotation alike). That write is a JSON Patch that first tests that
//!   `waiting-requests-at` is still the time this gateway wrote: with several gateway
//!   replicas, one replica never clears a count another replica has written since (the
//!   test fails, and the other replica clears its own count in turn).
//! - Each pool is written at most once per [`MIN_INTERVAL`]; a failed write is retried
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

/// Least time between two writes to one pool.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// A count that has not changed is written again after this long while requests wait
/// (the operator's TTL is two minutes).
pub const REFRESH: Duration = Duration::from_secs(20);
/// After a failed write.
pub const RETRY: Duration = Duration::from_secs(5);
/// How often the mapping from models to pools is looked at again while requests wait (a
/// ModelDeployment may appear after its first request).
const TICK: Duration = Duration::from_secs(1);

/// `(namespace, pool)`.
pub type PoolKey = (String, String);

/// Requests waiting per pool: each waiting model's count, added to every pool one of its
/// ModelDeployments (same name as the model, any namespace) points to. ModelDeployments
/// being deleted do not count.
pub fn waiting_per_pool(
    waiting: &WaitingByModel,
    models: &[Arc<ModelDeployment>],
) -> BTreeMap<PoolKey, usize> {
    let mut out = BTreeMap::new();
    for m in models {
        if m.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let (Some(n), Some(ns)) = (waiting.get(&m.name_any()), m.namespace()) else {
            continue;
        };
        *out.entry((ns, m.spec.pool_ref.name.clone())).or_insert(0) += n;
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
    pool: &PoolKey,
    write: &Write,
    at: &str,
) -> Result<(), Failure> {
    let (ns, name) = pool;
    let (body, content_type) = patch_body(write, at);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let request = kube::core::Request::new(BrowserPool::url_path(&(), Some(ns)))
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
        Err(kube::Error::Api(s)) if s.code == 404 => Err(Failure::Moot("the pool is gone".into())),
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

/// Writes the waiting counts `rx` receives on the pools until `stop`.
pub(super) async fn run(
    client: kube::Client,
    models: Store<ModelDeployment>,
    pools: Store<BrowserPool>,
    mut rx: tokio::sync::watch::Receiver<Arc<WaitingByModel>>,
    stop: CancellationToken,
) {
    let mut written: HashMap<PoolKey, Written> = HashMap::new();
    let mut not_before: HashMap<PoolKey, Instant> = HashMap::new();
    let mut unknown_before: BTreeSet<String> = BTreeSet::new();
    loop {
        let waiting = rx.borrow_and_update().clone();
        let deployed = models.state();
        let desired = waiting_per_pool(&waiting, &deployed);

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
        let keys: BTreeSet<PoolKey> = desired.keys().chain(written.keys()).cloned().collect();
        for key in keys {
            let want = desired.get(&key).copied().unwrap_or(0);
            let write = match (want, written.get(&key)) {
                (0, None) => continue,
                (0, Some(w)) => Write::Clear { at: w.at.clone() },
                (n, Some(w)) if w.count == n && now.duration_since(w.when) < REFRESH => continue,
                (n, _) => Write::Set(n),
            };
            if pools
                .get(&ObjectRef::<BrowserPool>::new(&key.1).within(&key.0))
                .is_none()
                && pools.wait_until_ready().now_or_never().is_some()
            {
                // No such pool (any more): nothing to scale, nothing to clear.
                if written.remove(&key).is_none() {
                    tracing::debug!(pool = %format!("{}/{}", key.0, key.1), "requests wait for a pool that does not exist");
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
            let pool = format!("{}/{}", key.0, key.1);
            match (result, write) {
                (Ok(()), Write::Set(count)) => {
                    tracing::debug!(%pool, count, "waiting requests written on the pool");
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
                    tracing::debug!(%pool, "waiting requests cleared on the pool");
                    written.remove(&key);
                }
                (Err(Failure::Moot(why)), _) => {
                    tracing::debug!(%pool, %why, "waiting requests: nothing to write");
                    written.remove(&key);
                }
                (Err(Failure::Retry(e)), _) => {
                    tracing::warn!(%pool, error = %e, "writing the waiting requests on the pool failed; retrying");
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
        let per_pool = waiting_per_pool(&waiting, &models);
        assert_eq!(
            per_pool,
            BTreeMap::from([
                (("a".into(), "cpu".into()), 5),
                (("b".into(), "gpu".into()), 3),
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
