//! What a running `webaccel up` shows: its pools and models, as `kubectl get bpool,mdep`
//! would (desired, ready, backends, each replica's state, per stage for a model cut into
//! stages), for `webaccel status` and the `up` terminal; JSON with `--json`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pools: Vec<PoolLine>,
    pub models: Vec<ModelLine>,
    pub gateway: Gateway,
    /// Where metric rows go (or why nowhere).
    pub clickhouse: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Gateway {
    pub http: String,
    pub grpc: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolLine {
    pub name: String,
    pub browser: String,
    pub desired: i32,
    pub current: i32,
    pub ready: i32,
    pub backends: Vec<String>,
    /// Why the size is what it is.
    pub reason: String,
    pub browsers: Vec<BrowserLine>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BrowserLine {
    pub name: String,
    /// `starting`, `ready`, `draining` or `exited`.
    pub state: String,
    pub url: String,
    pub pid: i32,
    pub load: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelLine {
    pub name: String,
    pub pool: String,
    pub desired: i32,
    /// Complete copies: for a model cut into stages, the fewest loaded of any stage.
    pub loaded: i32,
    pub replicas: Vec<ReplicaLine>,
    /// For a model cut into stages: each stage's replicas, in pipeline order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageLine>,
    /// Why replicas are missing (or stages share browsers), when they are.
    pub note: String,
}

/// One stage of a model cut into stages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageLine {
    /// Its model name on the agents: `<deployment>.stage<i>`.
    pub model: String,
    pub loaded: i32,
    pub replicas: Vec<ReplicaLine>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaLine {
    pub browser: String,
    /// `Pending`, `Loading`, `Loaded` or `FailedToLoad`.
    pub state: String,
    pub backend: Option<String>,
    pub reason: Option<String>,
}

impl Status {
    /// The tables, as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<16} {:<9} {:>7} {:>5} {:<22} {}\n",
            "BROWSERPOOL", "BROWSER", "DESIRED", "READY", "BACKENDS", "BROWSERS"
        ));
        for p in &self.pools {
            let browsers: Vec<String> = p
                .browsers
                .iter()
                .map(|b| format!("{}({})", b.name, b.state))
                .collect();
            out.push_str(&format!(
                "{:<16} {:<9} {:>7} {:>5} {:<22} {}\n",
                p.name,
                p.browser,
                p.desired,
                p.ready,
                if p.backends.is_empty() {
                    "-".to_owned()
                } else {
                    p.backends.join(",")
                },
                browsers.join(" ")
            ));
        }
        out.push('\n');
        out.push_str(&format!(
            "{:<16} {:<16} {:>7} {:>6} {}\n",
            "MODELDEPLOYMENT", "POOL", "DESIRED", "LOADED", "REPLICAS"
        ));
        for m in &self.models {
            let replicas = |list: &[ReplicaLine]| -> String {
                let cells: Vec<String> = list
                    .iter()
                    .map(|r| {
                        format!(
                            "{}:{}{}",
                            r.browser,
                            r.state,
                            r.backend
                                .as_ref()
                                .map(|b| format!("/{b}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                cells.join(" ")
            };
            let mut tail = if m.stages.is_empty() {
                replicas(&m.replicas)
            } else {
                // stage0[a:Loaded/wasm] stage1[b:Loading/wasm] ...
                let stages: Vec<String> = m
                    .stages
                    .iter()
                    .map(|s| {
                        let short = s.model.rsplit('.').next().unwrap_or(&s.model);
                        format!("{short}[{}]", replicas(&s.replicas))
                    })
                    .collect();
                stages.join(" ")
            };
            if !m.note.is_empty() {
                tail = format!("{tail} ({})", m.note);
            }
            out.push_str(&format!(
                "{:<16} {:<16} {:>7} {:>6} {}\n",
                m.name, m.pool, m.desired, m.loaded, tail
            ));
        }
        if !self.gateway.http.is_empty() {
            out.push_str(&format!(
                "\ngateway: http://{} (KServe v2 HTTP), {} (gRPC); metrics: {}\n",
                self.gateway.http, self.gateway.grpc, self.clickhouse
            ));
        }
        out
    }
}
