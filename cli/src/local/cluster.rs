//! Local mode's control loop: every second (and at once when the manifests change), for
//! each pool, observe its browser processes and their agents, let the engine decide the
//! size and the plan (the same decisions as the operator's), carry them out with
//! processes, place the pool's models through the agents, and publish what happened:
//! the agent list to the gateway, a status to `webaccel status` and the terminal.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use webaccel_agent_client::{AgentApi, HttpAgents};
use webaccel_crds::v1alpha1::{BrowserPool, ModelDeployment};
use webaccel_engine::pool::decide;
use webaccel_engine::pool::memory::PoolMemory;
use webaccel_engine::pool::size;
use webaccel_gateway::discovery::Pipelines;
use webaccel_gateway::discovery::static_list::AgentRef;
use webaccel_gateway::waiting::{WaitingByModel, WaitingSink};

use super::process::{Launcher, LocalBrowser};
use super::status::{BrowserLine, PoolLine, Status};

mod models;

/// The resources `up` runs, by name, with the folder each manifest came from (relative
/// `file://` model URIs resolve against it).
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
}

impl Shared {
    pub fn new(desired: Desired) -> Arc<Self> {
        Arc::new(Self {
            desired: Mutex::new(desired),
            changed: Notify::new(),
            status: watch::channel(Arc::new(Status::default())).0,
            waiting: Mutex::default(),
        })
    }

    pub fn desired(&self) -> Desired {
        self.desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut Desired)) {
        f(&mut self.desired.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_one();
    }
}

/// The gateway's waiting counts land in the shared state.
#[derive(Debug)]
pub struct WaitingToEngine(pub Arc<Shared>);

impl WaitingSink for WaitingToEngine {
    fn publish(&self, waiting: &WaitingByModel) {
        *self.0.waiting.lock().unwrap_or_else(|p| p.into_inner()) = waiting.clone();
        self.0.changed.notify_one();
    }
}

/// Loop settings.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    pub drain_timeout: Duration,
    pub heal_backoff: Duration,
    pub heal_backoff_max: Duration,
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

struct PoolState {
    browsers: Vec<LocalBrowser>,
    memory: PoolMemory,
    last_reason: String,
}

/// Models whose load failed on a browser, for the spec that failed: not retried there.
type Failures = HashMap<(String, String), (String, String)>;

pub struct Engine {
    shared: Arc<Shared>,
    launcher: Launcher,
    agents: HttpAgents,
    settings: LoopSettings,
    pools: BTreeMap<String, PoolState>,
    failures: Failures,
    to_gateway: watch::Sender<Vec<AgentRef>>,
    stopping: Vec<tokio::task::JoinHandle<()>>,
}

impl Engine {
    pub fn new(
        shared: Arc<Shared>,
        launcher: Launcher,
        settings: LoopSettings,
        to_gateway: watch::Sender<Vec<AgentRef>>,
    ) -> Self {
        Self {
            shared,
            launcher,
            agents: HttpAgents::new(Duration::from_secs(2)),
            settings,
            pools: BTreeMap::new(),
            failures: HashMap::new(),
            to_gateway,
            stopping: Vec::new(),
        }
    }

    /// Runs until `stop`; then stops every browser (drained first) and returns.
    pub async fn run(mut self, stop: CancellationToken, kill_now: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
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
        let grace = self.settings.drain_timeout;
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
    }

    async fn round(&mut self) {
        let desired = self.shared.desired();
        let now = Timestamp::now();
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
        let waiting = self
            .shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut pool_lines = Vec::new();
        for (name, pool) in &desired.pools {
            let line = self
                .reconcile_pool(name, pool, &desired, &waiting, now)
                .await;
            pool_lines.push(line);
        }
        let mut model_lines = Vec::new();
        for (name, (md, base)) in &desired.models {
            model_lines.push(self.reconcile_model(name, md, base, &desired).await);
        }
        // The gateway asks these agents itself for readiness and models.
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
        let status = Status {
            pools: pool_lines,
            models: model_lines,
            ..Status::default()
        };
        self.shared.status.send_if_modified(|current| {
            if current.pools == status.pools && current.models == status.models {
                false
            } else {
                let mut s = status;
                s.gateway.clone_from(&current.gateway);
                s.clickhouse.clone_from(&current.clickhouse);
                *current = Arc::new(s);
                true
            }
        });
        self.stopping.retain(|t| !t.is_finished());
    }

    fn stop_later(&mut self, b: LocalBrowser) {
        let grace = self.settings.drain_timeout;
        self.stopping
            .push(tokio::spawn(async move { b.stop(grace).await }));
    }

    async fn reconcile_pool(
        &mut self,
        name: &str,
        pool: &BrowserPool,
        desired: &Desired,
        waiting: &WaitingByModel,
        now: Timestamp,
    ) -> PoolLine {
        let state = self
            .pools
            .entry(name.to_owned())
            .or_insert_with(|| PoolState {
                browsers: Vec::new(),
                memory: PoolMemory::default(),
                last_reason: String::new(),
            });
        // Observe: processes, then their agents (all at once).
        for b in &mut state.browsers {
            b.poll_exit();
        }
        let agents = &self.agents;
        let asked = join_all(state.browsers.iter().map(|b| async move {
            if b.exited.is_some() {
                return (None, None);
            }
            let stats = agents.stats(&b.endpoint).await.ok();
            let caps = match (&b.capabilities, stats.as_ref().is_some_and(|s| s.ready)) {
                (None, true) => agents.capabilities(&b.endpoint).await.ok(),
                _ => None,
            };
            (stats, caps)
        }))
        .await;
        for (b, (stats, caps)) in state.browsers.iter_mut().zip(asked) {
            b.observed(stats);
            if caps.is_some() {
                b.capabilities = caps;
            }
        }
        let views: Vec<_> = state.browsers.iter().map(LocalBrowser::view).collect();
        // Decide: the engine, as for pods.
        let pool_waiting: u64 = desired
            .models
            .values()
            .filter(|(md, _)| md.spec.pool_ref.name == name)
            .filter_map(|(md, _)| waiting.get(&md.metadata.name.clone().unwrap_or_default()))
            .map(|&n| n as u64)
            .sum();
        let size = size::desired(
            &pool.spec.policy(),
            &views,
            &mut state.memory,
            pool_waiting,
            now,
        );
        let previous = state.memory.last_desired.replace(size.desired);
        if previous.is_some_and(|p| p != size.desired) {
            tracing::info!(pool = %name, from = previous.unwrap_or_default(), to = size.desired, reason = %size.reason, "scaling");
        }
        let hash = template_hash(pool);
        let healing = pool.spec.healing.clone().unwrap_or_default();
        let plan = decide::plan(
            &views,
            &decide::Inputs {
                desired: size.desired,
                template_hash: &hash,
                healing: &healing,
                recycle: pool.spec.recycle.as_ref(),
                now,
                may_heal: state.memory.may_heal(now),
                drain_timeout_s: i64::try_from(self.settings.drain_timeout.as_secs()).unwrap_or(60),
            },
        );
        state.memory.record_heals(
            &plan,
            now,
            self.settings.heal_backoff,
            self.settings.heal_backoff_max,
        );
        // Act: with processes.
        let mut stopped = Vec::new();
        for (browser, why) in &plan.delete {
            if let Some(i) = state.browsers.iter().position(|b| &b.name == browser) {
                let b = state.browsers.swap_remove(i);
                tracing::info!(pool = %name, browser = %b.name, reason = %why.describe(), log = %b.log.display(), "removing a browser");
                stopped.push(b);
            }
        }
        for (browser, why) in &plan.drain {
            if let Some(b) = state.browsers.iter_mut().find(|b| &b.name == browser) {
                tracing::info!(pool = %name, browser = %b.name, reason = %why.describe(), "draining a browser");
                if let Err(e) = agents.drain(&b.endpoint).await {
                    tracing::warn!(browser = %b.name, error = %e, "drain refused; removing it anyway");
                }
                b.draining_since = Some(now);
            }
        }
        for _ in 0..plan.create {
            match self.launcher.start(name, &pool.spec, &hash) {
                Ok(b) => {
                    tracing::info!(pool = %name, browser = %b.name, url = %b.endpoint.base_url, "starting a browser");
                    state.browsers.push(b);
                }
                Err(e) => tracing::error!(pool = %name, error = %e, "cannot start a browser"),
            }
        }
        if !size.reason.is_empty() {
            state.last_reason.clone_from(&size.reason);
        }
        let line = PoolLine {
            name: name.to_owned(),
            browser: format!("{:?}", pool.spec.browser).to_lowercase(),
            desired: size.desired,
            ready: i32::try_from(
                state
                    .browsers
                    .iter()
                    .filter(|b| b.is_ready() && b.draining_since.is_none())
                    .count(),
            )
            .unwrap_or(0),
            current: i32::try_from(state.browsers.len()).unwrap_or(0),
            backends: state
                .browsers
                .iter()
                .filter_map(|b| b.capabilities.as_ref())
                .flat_map(|c| c.backend_summary())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            reason: state.last_reason.clone(),
            browsers: state
                .browsers
                .iter()
                .map(|b| BrowserLine {
                    name: b.name.clone(),
                    state: if b.exited.is_some() {
                        "exited".into()
                    } else if b.draining_since.is_some() {
                        "draining".into()
                    } else if b.is_ready() {
                        "ready".into()
                    } else {
                        "starting".into()
                    },
                    url: b.endpoint.base_url.clone(),
                    pid: b.pid(),
                    load: b.stats.as_ref().map(webaccel_api::agent::AgentStats::load),
                })
                .collect(),
        };
        for b in stopped {
            self.stop_later(b);
        }
        line
    }
}
