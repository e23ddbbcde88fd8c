//! Agents given by URL (`--agent`, `--agents-file`, or local mode's engine): the gateway
//! asks each for its state (`/v1/stats`) and models (`/v1/models`) every refresh, and
//! publishes the fleet when something changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use webaccel_api::agent::{AgentStats, ModelList};

use super::{Endpoint, Endpoints, Fleet};

/// An agent to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRef {
    pub url: String,
    pub token: Option<String>,
    /// The pool it belongs to, when the caller knows (else what the agent says).
    pub pool: Option<String>,
}

/// What one agent said, or that it did not answer.
async fn probe(http: &reqwest::Client, agent: &AgentRef) -> Endpoint {
    let get = |path: &str| {
        let mut req = http.get(format!("{}{path}", agent.url));
        if let Some(t) = &agent.token {
            req = req.bearer_auth(t);
        }
        req
    };
    let stats = async {
        get("/v1/stats")
            .send()
            .await
            .ok()?
            .error_for_status()
            .ok()?
            .json::<AgentStats>()
            .await
            .ok()
    };
    let models = async {
        get("/v1/models")
            .send()
            .await
            .ok()?
            .error_for_status()
            .ok()?
            .json::<ModelList>()
            .await
            .ok()
    };
    let (stats, models) = tokio::join!(stats, models);
    let mut endpoint = Endpoint {
        id: agent.url.clone(),
        url: agent.url.clone(),
        token: agent.token.clone(),
        pool: agent.pool.clone().unwrap_or_default(),
        pod: String::new(),
        serving: false,
        models: Default::default(),
        backends: Default::default(),
        browser: String::new(),
    };
    if let (Some(stats), Some(models)) = (stats, models) {
        endpoint.serving = stats.ready && !stats.draining && stats.healthy;
        if endpoint.pool.is_empty() {
            endpoint.pool = stats.pool;
        }
        endpoint.pod = stats.pod;
        endpoint.browser = stats.browser.version;
        endpoint.models = models.loaded().map(str::to_owned).collect();
        endpoint.backends = models
            .models
            .iter()
            .filter_map(|m| match &m.status {
                webaccel_api::agent::ModelState::Loaded(l) => {
                    Some((m.name.clone(), l.backend.clone()))
                }
                _ => None,
            })
            .collect();
    }
    endpoint
}

/// Starts asking `agents` (which the caller may change at any time) every `refresh`;
/// the returned fleet follows.
pub fn start(
    mut agents: watch::Receiver<Vec<AgentRef>>,
    refresh: Duration,
    stop: CancellationToken,
) -> Fleet {
    let (tx, rx) = watch::channel(Arc::new(Endpoints::new()));
    let http = reqwest::Client::builder()
        .timeout(refresh.max(Duration::from_millis(500)))
        .build()
        .unwrap_or_default();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let list = agents.borrow_and_update().clone();
            let probes = list.iter().map(|a| probe(&http, a));
            let found: Endpoints = futures::future::join_all(probes)
                .await
                .into_iter()
                .map(|e| (e.id.clone(), e))
                .collect();
            tx.send_if_modified(|current| {
                if **current == found {
                    false
                } else {
                    *current = Arc::new(found);
                    true
                }
            });
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {},
                r = agents.changed() => if r.is_err() { return },
            }
        }
    });
    Fleet::new(rx)
}

/// A list that never changes (the command line's): asked every `refresh` until `stop`.
pub fn fixed(agents: Vec<AgentRef>, refresh: Duration, stop: CancellationToken) -> Fleet {
    let (tx, rx) = watch::channel(agents);
    let keep = stop.clone();
    // The sender lives as long as the discovery does.
    tokio::spawn(async move {
        keep.cancelled().await;
        drop(tx);
    });
    start(rx, refresh, stop)
}

/// The agents of `--agent` and `--agents-file`, with their tokens read.
pub fn from_args(args: &crate::GatewayArgs) -> Result<Vec<AgentRef>, String> {
    let mut list = args.agents.clone();
    if let Some(path) = &args.agents_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        list.extend(crate::config::StaticAgent::parse_file(&text)?);
    }
    let mut seen = BTreeMap::new();
    for a in list {
        let token = a.token()?;
        seen.insert(
            a.url.clone(),
            AgentRef {
                url: a.url,
                token,
                pool: None,
            },
        );
    }
    Ok(seen.into_values().collect())
}
