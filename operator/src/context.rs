//! What every reconcile shares: the API client, the watch caches, the agents, metrics,
//! Events, settings, and what lives only in this process: the per-pool memory (autoscaler
//! history, heal backoff, writes not yet seen in the caches) and what the agents last said.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::ResourceExt;
use kube::runtime::events::{Recorder, Reporter};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::stores::Stores;
use webaccel_agent_client::{AgentApi, Endpoint};
use webaccel_analytics::history::PoolHistory;
use webaccel_api::agent::{AgentStats, Capabilities};
use webaccel_crds::v1alpha1::{BrowserPool, BrowserPoolStatus};
use webaccel_engine::model_scale::ModelScaler;
use webaccel_engine::pool::browser::BrowserView;
pub use webaccel_engine::pool::memory::PoolMemory;
use webaccel_engine::pool::round::Pacing;

/// How the operator reaches the agents in the browser pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentAccess {
    /// Straight to each pod's IP (the operator runs in the cluster).
    #[default]
    Direct,
    /// Through the API server's pod proxy (`/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy`),
    /// for an operator run outside the cluster (kind, minikube) where pod IPs cannot be
    /// reached; the token travels in `x-webaccel-token`, which the proxy passes on.
    ApiserverProxy,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a draining browser may take to finish its requests before it is deleted.
    pub drain_timeout: Duration,
    /// How often the agents of autoscaled pools (and of pools that are changing) are asked
    /// for their load.
    pub load_poll_interval: Duration,
    /// How often the agents of a settled pool of fixed size are asked how they are.
    pub idle_poll_interval: Duration,
    /// How often a settled pool is looked at anyway.
    pub resync: Duration,
    /// First wait between heals of one pool; doubles per consecutive heal up to `heal_backoff_max`.
    pub heal_backoff: Duration,
    pub heal_backoff_max: Duration,
    /// Reconciles running at once per controller; bounds memory and the load on the API
    /// server when thousands of objects need work at the same time (start-up, resync).
    pub concurrency: u16,
    /// The per-browser load in a pool's status moves all the time: a change of it alone is
    /// written at most this often.
    pub status_load_refresh: Duration,
    pub agent_access: AgentAccess,
    /// The log format of the agents' pods: the operator's own, so that the chart's
    /// `logFormat` reaches every component.
    pub agent_log_format: webaccel_logs::LogFormat,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(60),
            load_poll_interval: Duration::from_secs(1),
            idle_poll_interval: Duration::from_secs(10),
            resync: Duration::from_secs(300),
            heal_backoff: Duration::from_secs(5),
            heal_backoff_max: Duration::from_secs(300),
            concurrency: 16,
            status_load_refresh: Duration::from_secs(60),
            agent_access: AgentAccess::Direct,
            agent_log_format: webaccel_logs::LogFormat::default(),
        }
    }
}

impl Settings {
    /// How old an agent's answer may be and still stand in for asking it again.
    pub fn observation_ttl(&self) -> Duration {
        self.idle_poll_interval + self.load_poll_interval * 2
    }
}

/// Writes this process made that the watch caches may not show yet. Without them a
/// reconcile that runs before the watch event arrives would create the same pods again.
#[derive(Debug, Default)]
pub struct Expectations {
    /// Pods created, by name.
    pub created: HashMap<String, Instant>,
    /// Pods deleted.
    pub deleted: HashMap<String, Instant>,
    /// Pods marked draining, with the mark.
    pub drained: HashMap<String, (Timestamp, Instant)>,
}

/// A watch event normally follows its write within milliseconds; past this an expectation
/// is dropped and the cache is believed again.
pub const EXPECTATION_TTL: Duration = Duration::from_secs(30);

impl Expectations {
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.deleted.is_empty() && self.drained.is_empty()
    }
}

/// Everything this process remembers about one pool.
#[derive(Debug, Default)]
pub struct PoolState {
    pub memory: PoolMemory,
    pub expect: Expectations,
    /// The last status written, and the pool's resourceVersion it was built from: while the
    /// cache still shows that version, the write is not in it yet.
    pub status_written: Option<(Option<String>, BrowserPoolStatus)>,
    pub last_status_write: Option<Instant>,
    /// When the poller looks at this pool's agents next.
    pub next_poll: Option<Instant>,
    /// Owned objects applied (`service`, `pdb`) as sent, until the cache shows them.
    pub applied: HashMap<&'static str, (serde_json::Value, Instant)>,
}

/// An agent's last answer to `/v1/stats` (None: it did not answer).
#[derive(Debug, Clone)]
pub struct Seen {
    pub stats: Option<AgentStats>,
    pub at: Instant,
}

/// A token read from a Secret the caches do not hold (one the user named).
#[derive(Debug, Clone)]
struct FetchedToken {
    token: String,
    at: Instant,
}

/// How long a token read by GET is used before it is read again.
const TOKEN_TTL: Duration = Duration::from_secs(600);

pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub agents: Arc<dyn AgentApi>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub settings: Settings,
    /// Scale, heal, drain, roll and recycle rows for ClickHouse (disabled by default).
    pub history: PoolHistory,
    pools: Mutex<HashMap<String, PoolState>>,
    /// Each autoscaled ModelDeployment's autoscaler memory, by `namespace/name`.
    model_scalers: Mutex<HashMap<String, ModelScaler>>,
    /// Capabilities never change for a running browser pod; keyed by pod UID. Only real
    /// answers are kept: an agent still starting its browser answers 503 and is asked again.
    capabilities: Mutex<HashMap<String, Capabilities>>,
    /// What each agent last said, by pod UID.
    seen: Mutex<HashMap<String, Seen>>,
    /// Tokens of user-named Secrets, by `namespace/name`.
    tokens: Mutex<HashMap<String, FetchedToken>>,
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
        stores: Stores,
        agents: Arc<dyn AgentApi>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        // The instance is the host name, which in a pod is the pod's name.
        let reporter = Reporter::from(webaccel_crds::labels::FIELD_MANAGER);
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            stores,
            agents,
            metrics,
            settings,
            history: PoolHistory::disabled(),
            pools: Mutex::default(),
            model_scalers: Mutex::default(),
            capabilities: Mutex::default(),
            seen: Mutex::default(),
            tokens: Mutex::default(),
        }
    }

    /// Records the pools' history in ClickHouse through `history`.
    pub fn with_history(mut self, history: PoolHistory) -> Self {
        self.history = history;
        self
    }

    /// Runs `f` on the memory of pool `key` (`namespace/name`).
    /// Runs `f` with the autoscaler memory of the ModelDeployment `key`.
    pub fn with_model_scaler<T>(&self, key: &str, f: impl FnOnce(&mut ModelScaler) -> T) -> T {
        f(self.model_scalers.lock().entry(key.to_owned()).or_default())
    }

    /// Forgets the autoscaler memory of a deleted ModelDeployment.
    pub fn forget_model(&self, key: &str) {
        self.model_scalers.lock().remove(key);
    }

    pub fn with_pool<T>(&self, key: &str, f: impl FnOnce(&mut PoolMemory) -> T) -> T {
        self.with_state(key, |s| f(&mut s.memory))
    }

    /// Runs `f` on everything remembered about pool `key`.
    pub fn with_state<T>(&self, key: &str, f: impl FnOnce(&mut PoolState) -> T) -> T {
        let mut pools = self.pools.lock();
        f(pools.entry(key.to_owned()).or_default())
    }

    /// Drops the memory and the metric series of pools that no longer exist; `exists` gets
    /// `namespace/name`. Without this a deleted pool's gauges would stay at their last value.
    pub fn forget_pools_except(&self, exists: impl Fn(&str) -> bool) {
        let mut pools = self.pools.lock();
        pools.retain(|key, _| {
            let keep = exists(key);
            if !keep && let Some((ns, name)) = key.split_once('/') {
                self.metrics.forget_pool(ns, name);
            }
            keep
        });
    }

    /// Drops what agents said of pods that no longer exist (`live` has their UIDs).
    pub fn forget_pods_except(&self, live: impl Fn(&str) -> bool) {
        self.seen.lock().retain(|uid, _| live(uid));
        self.capabilities.lock().retain(|uid, _| live(uid));
    }

    pub fn cached_capabilities(&self, uid: &str) -> Option<Capabilities> {
        self.capabilities.lock().get(uid).cloned()
    }

    pub fn cache_capabilities(&self, uid: &str, caps: Capabilities) {
        self.capabilities.lock().insert(uid.to_owned(), caps);
    }

    /// What the agent of pod `uid` said last, if recent enough to stand in for asking.
    pub fn fresh_seen(&self, uid: &str) -> Option<Seen> {
        let ttl = self.settings.observation_ttl();
        self.seen
            .lock()
            .get(uid)
            .filter(|s| s.at.elapsed() <= ttl)
            .cloned()
    }

    pub fn record_seen(&self, uid: &str, stats: Option<AgentStats>) {
        self.seen.lock().insert(
            uid.to_owned(),
            Seen {
                stats,
                at: Instant::now(),
            },
        );
    }

    /// The agents' token of `pool`: from the Secret's watch cache, else as last read.
    pub fn token_of(&self, pool: &BrowserPool) -> Option<String> {
        let ns = pool.namespace()?;
        let name = webaccel_crds::pods::token_secret_name(pool);
        if let Some(s) = self.stores.secret(&ns, &name) {
            return webaccel_crds::pods::token_in(&s);
        }
        self.tokens
            .lock()
            .get(&format!("{ns}/{name}"))
            .filter(|t| t.at.elapsed() <= TOKEN_TTL)
            .map(|t| t.token.clone())
    }

    /// Remembers a token read from Secret `ns/name`.
    pub fn remember_token(&self, ns: &str, name: &str, token: String) {
        self.tokens.lock().insert(
            format!("{ns}/{name}"),
            FetchedToken {
                token,
                at: Instant::now(),
            },
        );
    }

    /// Forgets a token an agent refused, unless it was read less than a minute ago (a
    /// Secret the agents disagree with is then not read again every second). True if it
    /// was forgotten, so that a reconcile reads it again.
    pub fn forget_refused_token(&self, ns: &str, name: &str) -> bool {
        let mut tokens = self.tokens.lock();
        let key = format!("{ns}/{name}");
        match tokens.get(&key) {
            Some(t) if t.at.elapsed() >= Duration::from_secs(60) => {
                tokens.remove(&key);
                true
            }
            _ => false,
        }
    }

    /// How pool changes are paced: the engine's view of the settings.
    pub fn pacing(&self) -> Pacing {
        Pacing {
            drain_timeout: self.settings.drain_timeout,
            heal_backoff: self.settings.heal_backoff,
            heal_backoff_max: self.settings.heal_backoff_max,
        }
    }

    /// Where the agent of pod `pod` in `ns` is reached, with `token`.
    pub fn endpoint(&self, ns: &str, pod: &BrowserView, token: &str) -> Option<Endpoint> {
        endpoint(self.settings.agent_access, ns, pod, token)
    }
}

/// Where the agent of a browser pod is reached.
pub fn endpoint(access: AgentAccess, ns: &str, pod: &BrowserView, token: &str) -> Option<Endpoint> {
    let ip = pod.ip.as_ref()?;
    let base_url = match access {
        AgentAccess::Direct => webaccel_crds::pods::agent_url(ip),
        // The kube client adds the API server's address; the pod needs an IP all the same
        // (the proxy forwards to it).
        AgentAccess::ApiserverProxy => webaccel_crds::pods::agent_proxy_path(ns, &pod.name),
    };
    Some(Endpoint {
        pod: pod.name.clone(),
        base_url,
        token: Some(token.to_owned()),
    })
}
