//! What a running `webaccel up` shows: its `BrowserPool` and `ModelDeployment` objects with
//! the statuses the operator would write for them (built by the same code,
//! `webaccel_crds::status`), the local processes behind the browsers, and where the
//! gateway and the metrics are. `webaccel status --json` prints it; `webaccel status` and
//! the `up` terminal render it as tables, as `kubectl get bpool,mdep` would.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::{Deserialize, Serialize};
use webaccel_crds::labels::condition;
use webaccel_crds::v1alpha1::{BrowserPool, ModelDeployment, ReplicaStatus};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The pools, each with its status.
    pub pools: Vec<BrowserPool>,
    /// The deployments, each with its status.
    pub models: Vec<ModelDeployment>,
    /// The processes behind the browsers (the statuses name them as pods).
    pub browsers: Vec<Process>,
    pub gateway: Gateway,
    /// Where metric rows go (or why nowhere).
    pub clickhouse: String,
    /// The ClickHouse server `up` started and keeps running, if it started one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clickhouse_server: Option<LocalServer>,
}

/// The local ClickHouse server as its supervisor sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalServer {
    /// `running`, `restarting` (it exited; started again after a backoff) or `down` (the
    /// last start failed; tried again).
    pub state: String,
    pub pid: Option<u32>,
    /// Times it was started again after exiting.
    pub restarts: u32,
    /// How it last ended, or why the last start failed.
    pub last_exit: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Gateway {
    pub http: String,
    pub grpc: String,
}

/// One browser's agent process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub name: String,
    pub pool: String,
    /// `starting`, `ready`, `draining` or `exited`.
    pub state: String,
    pub url: String,
    pub pid: i32,
    /// The agent's log file.
    pub log: String,
}

/// What is wrong, as the `Degraded` condition says it; empty when nothing is.
fn trouble(conditions: &[Condition]) -> String {
    conditions
        .iter()
        .find(|c| c.type_ == condition::DEGRADED && c.status == "True")
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

fn replica_cells(list: &[ReplicaStatus]) -> String {
    let cells: Vec<String> = list
        .iter()
        .map(|r| {
            format!(
                "{}:{:?}{}",
                r.pod,
                r.state,
                r.backend
                    .as_ref()
                    .map(|b| format!("/{b}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    cells.join(" ")
}

impl Status {
    /// The processes of pool `pool`.
    pub fn browsers_of<'a>(&'a self, pool: &'a str) -> impl Iterator<Item = &'a Process> {
        self.browsers.iter().filter(move |b| b.pool == pool)
    }

    /// The tables, as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<16} {:<9} {:>7} {:>5} {:<22} {}\n",
            "BROWSERPOOL", "BROWSER", "DESIRED", "READY", "BACKENDS", "BROWSERS"
        ));
        for p in &self.pools {
            let name = p.metadata.name.clone().unwrap_or_default();
            let status = p.status.clone().unwrap_or_default();
            let browsers: Vec<String> = self
                .browsers_of(&name)
                .map(|b| format!("{}({})", b.name, b.state))
                .collect();
            out.push_str(&format!(
                "{:<16} {:<9} {:>7} {:>5} {:<22} {}\n",
                name,
                p.spec.browser,
                status.desired_replicas,
                status.ready_replicas,
                status.backends.as_deref().unwrap_or("-"),
                browsers.join(" ")
            ));
        }
        out.push('\n');
        out.push_str(&format!(
            "{:<16} {:<16} {:>7} {:>6} {}\n",
            "MODELDEPLOYMENT", "POOL", "DESIRED", "LOADED", "REPLICAS"
        ));
        for m in &self.models {
            let status = m.status.clone().unwrap_or_default();
            let mut tail = if status.stages.is_empty() {
                replica_cells(&status.replicas)
            } else {
                // stage0[a:Loaded/wasm] stage1[b:Loading/wasm] ...
                let stages: Vec<String> = status
                    .stages
                    .iter()
                    .map(|s| {
                        let short = s.model.rsplit('.').next().unwrap_or(&s.model);
                        format!("{short}[{}]", replica_cells(&s.replicas))
                    })
                    .collect();
                stages.join(" ")
            };
            let note = trouble(&status.conditions);
            if !note.is_empty() {
                tail = format!("{tail} ({note})");
            }
            if let Some(a) = &status.autoscaler {
                tail = format!("{tail} [autoscaler: {}]", a.reason);
            }
            out.push_str(&format!(
                "{:<16} {:<16} {:>7} {:>6} {}\n",
                m.metadata.name.as_deref().unwrap_or_default(),
                m.spec.pool_ref.name,
                status.desired_replicas,
                status.loaded_replicas,
                tail
            ));
        }
        if !self.gateway.http.is_empty() {
            out.push_str(&format!(
                "\ngateway: http://{} (KServe v2 HTTP), {} (gRPC); metrics: {}\n",
                self.gateway.http, self.gateway.grpc, self.clickhouse
            ));
            if let Some(server) = &self.clickhouse_server {
                out.push_str(&format!(
                    "clickhouse server: {}{}{}\n",
                    server.state,
                    if server.restarts > 0 {
                        format!(", restarted {} times", server.restarts)
                    } else {
                        String::new()
                    },
                    server
                        .last_exit
                        .as_ref()
                        .map(|e| format!(" (last: {e})"))
                        .unwrap_or_default()
                ));
            }
        }
        out
    }
}
