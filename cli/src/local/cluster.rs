//! Local mode's control loop: twice a second (and at once when the manifests change), for
//! each pool, observe its browser processes and their agents and run the engine's pool
//! round with processes ([`pools`]); then run the engine's placement round for each
//! deployment and unload what was deleted ([`models`]); publish what happened: the agent
//! list to the gateway, and the objects with the statuses the operator would write to
//! `webaccel status` and the terminal. The host observes and acts; every decision is the
//! engine's, as on Kubernetes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use webaccel_agent_client::HttpAgents;
use webaccel_analytics::history::PoolHistory;
use webaccel_crds::v1alpha1::{
    BrowserPool, BrowserPoolStatus, ModelDeployment, ModelDeploymentStatus,
};
use webaccel_engine::model_scale::ModelScaler;
use webaccel_engine::pool::memory::PoolMemory;
use webaccel_engine::pool::round::Pacing;
use webaccel_gateway::discovery::Pipelines;
use webaccel_gateway::discovery::static_list::AgentRef;
use webaccel_gateway::waiting::{WaitingByModel, WaitingSink};

use super::process::{Launcher, LocalBrowser};
use super::status::{Process, Status};

mod digests;
mod models;
mod pools;

/// The resources `up` runs, by name, with the folder each manifest came from (relative
/// `file://` model URIs resolve against it). Each object's `metadata.generation` moves
/// when its spec changes, as the API server's does.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub pools: BTreeMap<String, BrowserPool>,
    pub models: BTreeMap<String, (ModelDeployment, std::path::PathBuf)>,
}

/// What the loop and the outside share.
#[derive(Debug)]
pub struct Shared {
    pub desired: Mutex<Desired>,
    pub changed: Notify,
    pub status: watch::Sender<Arc<Status>>,
    /// Requests the gateway holds for models no browser has: the scale-from-zero signal.
    pub waiting: Mutex<WaitingByModel>,
    /// Asks for the gateway to be restarted (see `super::gateway`).
    pub restart_gateway: Notify,
}

impl Shared {
    pub fn new(desired: Desired) -> Arc<Self> {
        Arc::new(Self {
            desired: Mutex::new(desired),
            changed: Notify::new(),
            status: watch::channel(Arc::new(Status::default())).0,
            waiting: Mutex::default(),
            restart_gateway: Notify::new(),
        })
    }

    pub fn desired(&self) -> Desired {
        self.desired.lock().clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut Desired)) {
        f(&mut self.desired.lock());
        self.changed.notify_one();
    }
}

/// The gateway's waiting counts land in the shared state.
#[derive(Debug)]
pub struct WaitingToEngine(pub Arc<Shared>);

impl WaitingSink for WaitingToEngine {
    fn publish(&self, waiting: &WaitingByModel) {
        *self.0.waiting.lock() = waiting.clone();
        self.0.changed.notify_one();
    }
}

/// The hash of what a pool's browsers are built from: a change rolls them.
pub fn template_hash(pool: &BrowserPool) -> String {
    webaccel_crds::template::template_hash(&pool.spec, "")
}

/// The models cut into stages among those `up` runs, with their stages' model names:
/// what the gateway serves as pipelines.
pub fn pipelines(desired: &Desired) -> Pipelines {
    desired
        .models
        .iter()
        .filter_map(|(name, (md, _))| Some((name.clone(), md.spec.stage_names(name)?)))
        .collect()
}

/// A model URI with a relative `file://` path resolved against the manifest's folder.
pub fn resolve_uri(uri: &str, base: &Path) -> String {
    match uri.strip_prefix("file://") {
        Some(path) if !path.starts_with('/') => {
            format!("file://{}", base.join(path).display())
        }
        _ => uri.to_owned(),
    }
}

/// One pool's browsers and what the engine remembers of it.
struct PoolState {
    browsers: Vec<LocalBrowser>,
    memory: PoolMemory,
    /// The status the last round reported (conditions keep their transition times).
    status: Option<BrowserPoolStatus>,
}

/// A deployment as the last round left it: where its models are (to unload them when it
/// is deleted) and the status it reported (to carry failures and conditions over).
struct DeploymentState {
    pool: String,
    models: Vec<String>,
    status: ModelDeploymentStatus,
    /// The per-model autoscaler's memory (with `spec.autoscaling`).
    scaler: ModelScaler,
}

pub struct Engine {
    shared: Arc<Shared>,
    launcher: Launcher,
    agents: HttpAgents,
    pacing: Pacing,
    pools: BTreeMap<String, PoolState>,
    deployments: HashMap<String, DeploymentState>,
    digests: digests::FileDigests,
    to_gateway: watch::Sender<Vec<AgentRef>>,
    stopping: Vec<tokio::task::JoinHandle<()>>,
    /// Scale decisions as `pool_events` rows in ClickHouse, as the operator writes them.
    history: PoolHistory,
}

/// How often the engine looks at the browsers and decides.
const ROUND: Duration = Duration::from_millis(500);

impl Engine {
    pub fn new(
        shared: Arc<Shared>,
        launcher: Launcher,
        pacing: Pacing,
        to_gateway: watch::Sender<Vec<AgentRef>>,
        history: PoolHistory,
    ) -> Self {
        Self {
            shared,
            launcher,
            agents: HttpAgents::new(Duration::from_secs(2)),
            pacing,
            pools: BTreeMap::new(),
            deployments: HashMap::new(),
            digests: digests::FileDigests::default(),
            to_gateway,
            stopping: Vec::new(),
            history,
        }
    }

    /// Runs until `stop`; then stops every browser (drained first) and returns.
    pub async fn run(mut self, stop: CancellationToken, kill_now: CancellationToken) {
        // Twice a second: a model's load step is judged on the round after it (its panic
        // window starts at the load), so this is most of the time to a scale decision.
        // A round is a stats call per agent and the placement's calls, all on loopback.
        let mut tick = tokio::time::interval(ROUND);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.round().await;
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {},
                () = self.shared.changed.notified() => {},
            }
        }
        self.to_gateway.send_replace(Vec::new());
        let all: Vec<LocalBrowser> = std::mem::take(&mut self.pools)
            .into_values()
            .flat_map(|p| p.browsers)
            .collect();
        tracing::info!(
            browsers = all.len(),
            "stopping every browser (a second Ctrl-C kills them)"
        );
        let grace = self.pacing.drain_timeout;
        let stops = all.into_iter().map(|b| async move {
            b.stop(grace).await;
        });
        tokio::select! {
            _ = join_all(stops) => {},
            () = kill_now.cancelled() => {}
        }
        for t in self.stopping.drain(..) {
            t.abort();
        }
        self.history.shutdown().await;
    }

    async fn round(&mut self) {
        let desired = self.shared.desired();
        // Pools no longer wanted: their browsers go (drained first).
        let gone: Vec<String> = self
            .pools
            .keys()
            .filter(|k| !desired.pools.contains_key(*k))
            .cloned()
            .collect();
        for name in gone {
            if let Some(p) = self.pools.remove(&name) {
                tracing::info!(pool = %name, "pool deleted: stopping its browsers");
                for b in p.browsers {
                    self.stop_later(b);
                }
            }
        }
        let waiting = self.shared.waiting.lock().clone();
        let mut pools = Vec::new();
        for (name, pool) in &desired.pools {
            let status = self.reconcile_pool(name, pool, &desired, &waiting).await;
            let mut shown = pool.clone();
            shown.status = Some(status);
            pools.push(shown);
        }
        self.unload_deleted(&desired).await;
        let mut models = Vec::new();
        for (name, (md, base)) in &desired.models {
            let waiting = waiting.get(name).map_or(0, |&n| n as u64);
            let status = self
                .reconcile_model(name, md, base, &desired, waiting)
                .await;
            let mut shown = md.clone();
            shown.status = Some(status);
            models.push(shown);
        }
        self.publish(pools, models);
        self.stopping.retain(|t| !t.is_finished());
    }

    /// The agents to the gateway (it asks them itself for readiness and models), the
    /// objects to `webaccel status`.
    fn publish(&self, pools: Vec<BrowserPool>, models: Vec<ModelDeployment>) {
        let agents: Vec<AgentRef> = self
            .pools
            .iter()
            .flat_map(|(pool, p)| {
                p.browsers
                    .iter()
                    .filter(|b| b.exited.is_none())
                    .map(|b| AgentRef {
                        url: b.endpoint.base_url.clone(),
                        token: b.endpoint.token.clone(),
                        pool: Some(pool.clone()),
                    })
            })
            .collect();
        self.to_gateway.send_if_modified(|current| {
            if *current == agents {
                false
            } else {
                *current = agents;
                true
            }
        });
        let browsers: Vec<Process> = self
            .pools
            .iter()
            .flat_map(|(pool, p)| p.browsers.iter().map(|b| b.process(pool)))
            .collect();
        self.shared.status.send_if_modified(|current| {
            if current.pools == pools && current.models == models && current.browsers == browsers {
                false
            } else {
                *current = Arc::new(Status {
                    pools,
                    models,
                    browsers,
                    gateway: current.gateway.clone(),
                    clickhouse: current.clickhouse.clone(),
                    clickhouse_server: current.clickhouse_server.clone(),
                });
                true
            }
        });
    }

    fn stop_later(&mut self, b: LocalBrowser) {
        let grace = self.pacing.drain_timeout;
        self.stopping
            .push(tokio::spawn(async move { b.stop(grace).await }));
    }
}
