//! Agents given by URL (`--agent`, `--agents-file`, or local mode's engine): the gateway
//! asks each for its state (`/v1/stats`) and models (`/v1/repository/models`) every refresh, and
//! publishes the fleet when something changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use webaccel_agent_client::{AgentApi as _, AgentError, HttpAgents};
use webaccel_api::agent::ModelState;

use super::{Endpoint, Endpoints, Fleet};
use crate::config::StaticAgentError;

/// An agent to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRef {
    pub url: String,
    pub token: Option<String>,
    /// The pool it belongs to, when the caller knows (else what the agent says).
    pub pool: Option<String>,
}

/// What one agent said, or that it did not answer (and why, which the caller logs).
async fn probe(agents: &HttpAgents, agent: &AgentRef) -> (Endpoint, Option<AgentError>) {
    let ep = webaccel_agent_client::Endpoint {
        pod: agent.url.clone(),
        base_url: agent.url.clone(),
        token: agent.token.clone(),
    };
    let (stats, models) = tokio::join!(agents.stats(&ep), agents.models(&ep));
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
    let (stats, models) = match (stats, models) {
        (Ok(stats), Ok(models)) => (stats, models),
        (Err(e), _) | (_, Err(e)) => return (endpoint, Some(e)),
    };
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
            ModelState::Loaded(l) => Some((m.name.clone(), l.backend.clone())),
            _ => None,
        })
        .collect();
    (endpoint, None)
}

/// Logs an agent that stopped answering (once, not every refresh) and one that answers
/// again; `failing` holds the URLs failing at the last look.
fn note_failures(failing: &mut BTreeSet<String>, probes: &[(Endpoint, Option<AgentError>)]) {
    for (ep, error) in probes {
        match error {
            Some(e) if failing.insert(ep.id.clone()) => {
                tracing::warn!(agent = %ep.id, error = %e, "agent does not answer; not routing to it");
            }
            Some(e) => tracing::debug!(agent = %ep.id, error = %e, "agent still does not answer"),
            None if failing.remove(&ep.id) => {
                tracing::info!(agent = %ep.id, "agent answers again");
            }
            None => {}
        }
    }
    failing.retain(|id| probes.iter().any(|(ep, _)| &ep.id == id));
}

/// Starts asking the agents `refs` lists (which the caller may change at any time) every `refresh`;
/// the returned fleet follows.
pub fn start(
    mut refs: watch::Receiver<Vec<AgentRef>>,
    refresh: Duration,
    stop: CancellationToken,
) -> Fleet {
    let (tx, rx) = watch::channel(Arc::new(Endpoints::new()));
    let agents = HttpAgents::new(refresh.max(Duration::from_millis(500)));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = BTreeSet::new();
        loop {
            let list = refs.borrow_and_update().clone();
            let probes = futures::future::join_all(list.iter().map(|a| probe(&agents, a))).await;
            note_failures(&mut failing, &probes);
            let found: Endpoints = probes.into_iter().map(|(e, _)| (e.id.clone(), e)).collect();
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
                r = refs.changed() => if r.is_err() { return },
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
pub fn from_args(args: &crate::GatewayArgs) -> Result<Vec<AgentRef>, StaticAgentError> {
    let mut list = args.agents.clone();
    if let Some(path) = &args.agents_file {
        let text = std::fs::read_to_string(path).map_err(|source| StaticAgentError::ReadList {
            path: path.clone(),
            source,
        })?;
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
