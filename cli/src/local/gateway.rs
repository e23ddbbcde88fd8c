//! `up`'s gateway: the gateway library over the engine's browsers, and restarting it as a
//! rollout of the cluster's gateway would (`POST /v1/gateway/restart` on up's API): not
//! ready and answers closing their connections for a drain period, then the ports close
//! once the requests in flight are answered and its rows are flushed, and a new gateway
//! binds the same ports. Clients see refused connections for that moment (and retry
//! them); no request in flight is lost. The chaos soak restarts it this way.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use webaccel_analytics::ClickHouseSettings;
use webaccel_gateway::discovery::Pipelines;
use webaccel_gateway::discovery::static_list::{self, AgentRef};
use webaccel_gateway::record::Recorder;
use webaccel_gateway::service::Preferences;
use webaccel_gateway::waiting::WaitingSink;

use super::cluster::Shared;

/// How long a restarting gateway drains before its ports close. Local clients connect
/// to it directly (no endpoints to converge), so a short one: long enough for
/// keep-alive connections to be told to close.
const RESTART_DRAIN: Duration = Duration::from_secs(1);
/// How often the engine's browsers are looked at for readiness and models.
const DISCOVERY_REFRESH: Duration = Duration::from_millis(500);

/// What every generation of the gateway is made from.
pub struct Parts {
    pub settings: webaccel_gateway::Settings,
    pub agents: watch::Receiver<Vec<AgentRef>>,
    pub deployed: watch::Receiver<Arc<BTreeSet<String>>>,
    pub pipelines: watch::Receiver<Arc<Pipelines>>,
    pub waiting: Arc<dyn WaitingSink>,
    pub preferences: Preferences,
    /// Where its rows go: ClickHouse, the spool folder and its bound; `None` without
    /// ClickHouse.
    pub rows: Option<(ClickHouseSettings, PathBuf, u64)>,
}

/// A running gateway with what stops its discovery.
pub struct Generation {
    pub running: webaccel_gateway::Running,
    discovery: CancellationToken,
}

impl Parts {
    /// Starts a gateway; its discovery stops with it.
    pub async fn start(&self, stop: &CancellationToken) -> anyhow::Result<Generation> {
        let discovery = stop.child_token();
        let fleet = static_list::start(self.agents.clone(), DISCOVERY_REFRESH, discovery.clone())
            .with_deployed(self.deployed.clone())
            .with_pipelines(self.pipelines.clone());
        let recorder = match &self.rows {
            Some((settings, spool, bound)) => {
                Recorder::start(settings.clone(), spool.clone(), *bound)?
            }
            None => Recorder::disabled(),
        };
        let running = webaccel_gateway::start(
            self.settings.clone(),
            fleet,
            self.waiting.clone(),
            recorder,
            self.preferences.clone(),
        )
        .await
        .context("starting the gateway")?;
        Ok(Generation { running, discovery })
    }
}

impl Generation {
    async fn shutdown(self) {
        self.running.shutdown().await;
        self.discovery.cancel();
    }
}

/// Keeps the gateway running until `stop`, restarting it when asked (see the module).
/// The first generation is already started; later ones bind its addresses.
pub async fn supervise(
    mut parts: Parts,
    first: Generation,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    parts.settings.http = first.running.http;
    parts.settings.grpc = first.running.grpc;
    let mut current = Some(first);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = shared.restart_gateway.notified() => {}
        }
        if let Some(gateway) = current.take() {
            tracing::info!(drain = ?RESTART_DRAIN, "restarting the gateway: draining");
            gateway.running.drain(RESTART_DRAIN, stop.cancelled()).await;
            gateway.shutdown().await;
        }
        // The ports were just closed; binding them again is retried until it works.
        while current.is_none() && !stop.is_cancelled() {
            match parts.start(&stop).await {
                Ok(g) => {
                    tracing::info!(http = %g.running.http, grpc = %g.running.grpc, "gateway restarted");
                    current = Some(g);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the restarted gateway could not start; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    if let Some(gateway) = current {
        gateway.shutdown().await;
    }
}
