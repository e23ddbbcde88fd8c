//! One watched kind: a kube-runtime watcher feeding a reflector cache, on a task of its
//! own, that wakes the fleet after each event.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt as _;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Watches `api` with `config` until `stop` and returns the cache it fills. Each event
/// (once applied to the cache) wakes `dirty`, if given. Failed watches are retried with
/// kube-runtime's default backoff and logged.
pub(super) fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    dirty: Option<Arc<Notify>>,
    stop: CancellationToken,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        // Managed fields are most of an object's size and nothing here reads them.
        .modify(|o| o.managed_fields_mut().clear())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return,
                event = stream.next() => event,
            };
            match event {
                Some(Ok(_)) => {
                    if failing {
                        tracing::info!(what, "watch restored");
                        failing = false;
                    }
                    if let Some(d) = &dirty {
                        d.notify_one();
                    }
                }
                Some(Err(e)) => {
                    failing = true;
                    tracing::warn!(what, error = %e, "watch failed; retrying with backoff");
                }
                None => return,
            }
        }
    });
    reader
}
