//! What every reconcile shares: the API client, the agents, metrics, Events, settings, and
//! the per-pool memory (autoscaler history, heal backoff) that lives only in this process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::history::PoolHistory;
use crate::metrics::Metrics;
use webaccel_api::agent::Capabilities;
use webaccel_engine::agent::AgentApi;
pub use webaccel_engine::pool::memory::PoolMemory;

#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a draining browser may take to finish its requests before it is deleted.
    pub drain_timeout: Duration,
    /// How often an autoscaled pool's agents are polled for load.
    pub load_poll_interval: Duration,
    /// How often a settled pool is looked at anyway.
    pub resync: Duration,
    /// First wait between heals of one pool; doubles per consecutive heal up to `heal_backoff_max`.
    pub heal_backoff: Duration,
    pub heal_backoff_max: Duration,
    /// Reconciles running at once per controller; bounds memory and the load on the API
    /// server when thousands of objects need work at the same time (start-up, resync).
    pub concurrency: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(60),
            load_poll_interval: Duration::from_secs(1),
            resync: Duration::from_secs(60),
            heal_backoff: Duration::from_secs(5),
            heal_backoff_max: Duration::from_secs(300),
            concurrency: 16,
        }
    }
}

pub struct Context {
    pub client: Client,
    pub agents: Arc<dyn AgentApi>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub settings: Settings,
    /// Scale, heal, drain, roll and recycle rows for ClickHouse (disabled by default).
    pub history: PoolHistory,
    pools: Mutex<HashMap<String, PoolMemory>>,
    /// Capabilities never change for a running browser pod; keyed by pod UID.
    capabilities: Mutex<HashMap<String, Capabilities>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(
        client: Client,
        agents: Arc<dyn AgentApi>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        // The instance is the host name, which in a pod is the pod's name.
        let reporter = Reporter::from(webaccel_api::labels::FIELD_MANAGER);
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            agents,
            metrics,
            settings,
            history: PoolHistory::disabled(),
            pools: Mutex::default(),
            capabilities: Mutex::default(),
        }
    }

    /// Records the pools' history in ClickHouse through `history`.
    pub fn with_history(mut self, history: PoolHistory) -> Self {
        self.history = history;
        self
    }

    /// Runs `f` on the memory of pool `key` (`namespace/name`).
    pub fn with_pool<T>(&self, key: &str, f: impl FnOnce(&mut PoolMemory) -> T) -> T {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        f(pools.entry(key.to_owned()).or_default())
    }

    /// Drops the memory and the metric series of pools that no longer exist; `exists` gets
    /// `namespace/name`. Without this a deleted pool's gauges would stay at their last value.
    pub fn forget_pools_except(&self, exists: impl Fn(&str) -> bool) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|key, _| {
            let keep = exists(key);
            if !keep && let Some((ns, name)) = key.split_once('/') {
                self.metrics.forget_pool(ns, name);
            }
            keep
        });
    }

    pub fn cached_capabilities(&self, uid: &str) -> Option<Capabilities> {
        self.capabilities
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .cloned()
    }

    pub fn cache_capabilities(&self, uid: &str, caps: Capabilities) {
        let mut map = self.capabilities.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: dropping everything now and then costs one request per pod.
        if map.len() > 100_000 {
            map.clear();
        }
        map.insert(uid.to_owned(), caps);
    }

    /// Whether pool `key` may replace broken pods at `now`.
    pub fn may_heal(&self, key: &str, now: Timestamp) -> bool {
        self.with_pool(key, |m| m.may_heal(now))
    }

    /// Records the outcome of a heal round: backoff grows while rounds keep finding broken
    /// pods, and resets after a clean one.
    pub fn heal_round(&self, key: &str, now: Timestamp, healed: bool) {
        let (base, max) = (self.settings.heal_backoff, self.settings.heal_backoff_max);
        self.with_pool(key, |m| m.heal_round(now, healed, base, max));
    }
}
