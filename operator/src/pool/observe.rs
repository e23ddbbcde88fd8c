//! What the operator knows about a pool's browser pods: the pod objects from the watch
//! cache (with this process's writes the cache may not show yet), and what their agents
//! said. Reading costs no API request; asking agents costs no API request either.

use std::sync::Arc;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use webaccel_crds::labels;
use webaccel_crds::v1alpha1::BrowserPool;

use crate::context::{Context, EXPECTATION_TTL};
pub use webaccel_engine::pool::browser::BrowserView;
use webaccel_engine::pool::decide::Removal;

/// A browser pod as the pool engine sees it (its agent's answers are added later).
pub fn from_pod(pod: &Pod) -> BrowserView {
    let status = pod.status.clone().unwrap_or_default();
    let ready_condition = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready");
    let ready = ready_condition.is_some_and(|c| c.status == "True");
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let unready_since = if ready {
        None
    } else {
        ready_condition
            .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
            .or(created)
    };
    let ready_since = if ready {
        ready_condition.and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
    } else {
        None
    };
    // The scheduler says so on `PodScheduled`; its message names what is short.
    let unschedulable = status
        .conditions
        .iter()
        .flatten()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        })
        .map(|c| {
            c.message
                .clone()
                .unwrap_or_else(|| "no node can take it".to_owned())
        });
    let containers = status.container_statuses.clone().unwrap_or_default();
    let restarts = containers
        .iter()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    let crash_looping = containers.iter().any(|c| {
        c.state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            == Some("CrashLoopBackOff")
    });
    let draining_since = pod
        .annotations()
        .get(labels::DRAINING)
        .and_then(|v| v.parse::<Timestamp>().ok());
    let drained_for = pod
        .annotations()
        .get(labels::DRAIN_REASON)
        .map(|v| Removal::from_mark(v));
    let cordoned_since = pod
        .annotations()
        .get(labels::CORDONED)
        .and_then(|v| v.parse::<Timestamp>().ok());
    BrowserView {
        name: pod.name_any(),
        ip: status.pod_ip.clone().filter(|ip| !ip.is_empty()),
        phase: status.phase.clone().unwrap_or_else(|| "Pending".into()),
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        draining_since,
        drained_for,
        cordoned_since,
        sole_copies: 0,
        template_hash: pod.labels().get(labels::TEMPLATE_HASH).cloned(),
        created,
        unready_since,
        ready_since,
        unschedulable,
        restarts,
        crash_looping,
        stats: None,
        capabilities: None,
    }
}

/// One browser: its pod (None for one created a moment ago that the cache does not
/// hold yet) and how the engine sees it.
#[derive(Debug, Clone)]
pub struct Browser {
    pub pod: Option<Arc<Pod>>,
    pub uid: String,
    pub view: BrowserView,
    /// Whether its agent was asked (or its answer was fresh): `view.stats` is then what it
    /// said, None meaning it did not answer.
    pub observed: bool,
}

/// A pool's browsers and the agents' token.
#[derive(Debug, Clone, Default)]
pub struct PoolView {
    pub browsers: Vec<Browser>,
    pub token: Option<String>,
}

impl PoolView {
    pub fn views(&self) -> Vec<BrowserView> {
        self.browsers.iter().map(|b| b.view.clone()).collect()
    }
}

/// Whether a browser's agent can be asked anything: its pod runs, is not going away, and
/// has an address.
fn reachable(b: &BrowserView) -> bool {
    b.phase == "Running" && !b.terminating && b.ip.is_some()
}

/// The pool's browsers from the pod cache, corrected by this process's writes the cache
/// does not show yet, with the agents' recent answers.
pub fn view(ctx: &Context, pool: &BrowserPool, hash: &str, now: Timestamp) -> PoolView {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let key = format!("{ns}/{name}");
    let pods = ctx.stores.pods_of(&ns, &name);
    let sole = webaccel_crds::scale::sole_copies(
        ctx.stores.deployments_in(&ns, &name).iter().map(|m| &**m),
    );
    let mut browsers: Vec<Browser> = pods
        .iter()
        .map(|p| {
            let mut view = from_pod(p);
            view.sole_copies = sole.get(&view.name).copied().unwrap_or(0);
            Browser {
                pod: Some(p.clone()),
                uid: p.uid().unwrap_or_default(),
                view,
                observed: false,
            }
        })
        .collect();
    ctx.with_state(&key, |s| {
        let e = &mut s.expect;
        // Expectations the cache now shows, or that are too old to wait for, go.
        e.created.retain(|n, at| {
            at.elapsed() < EXPECTATION_TTL && !browsers.iter().any(|b| &b.view.name == n)
        });
        e.deleted.retain(|n, at| {
            at.elapsed() < EXPECTATION_TTL
                && browsers
                    .iter()
                    .any(|b| &b.view.name == n && !b.view.terminating)
        });
        e.drained.retain(|n, (_, at)| {
            at.elapsed() < EXPECTATION_TTL
                && browsers
                    .iter()
                    .any(|b| &b.view.name == n && !b.view.is_draining())
        });
        for b in &mut browsers {
            if e.deleted.contains_key(&b.view.name) {
                b.view.terminating = true;
            }
            if let Some((since, _)) = e.drained.get(&b.view.name) {
                b.view.draining_since = Some(*since);
            }
        }
        for n in e.created.keys() {
            browsers.push(Browser {
                pod: None,
                uid: String::new(),
                view: BrowserView {
                    name: n.clone(),
                    phase: "Pending".into(),
                    template_hash: Some(hash.to_owned()),
                    created: Some(now),
                    unready_since: Some(now),
                    ..BrowserView::default()
                },
                observed: false,
            });
        }
    });
    for b in &mut browsers {
        if b.uid.is_empty() {
            continue;
        }
        if b.view.ready {
            b.view.capabilities = ctx.cached_capabilities(&b.uid);
        }
        if reachable(&b.view)
            && let Some(seen) = ctx.fresh_seen(&b.uid)
        {
            b.view.stats = seen.stats;
            b.observed = true;
        }
    }
    PoolView {
        token: ctx.token_of(pool),
        browsers,
    }
}

/// What asking the agents brought.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asked {
    /// A ready browser's capabilities became known.
    pub learned_capabilities: bool,
    /// An agent refused the token.
    pub refused_token: bool,
}

/// Which agents to ask for their load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskStats {
    /// Every reachable one (the poller).
    All,
    /// Those without a recent answer (a reconcile).
    Missing,
    /// None (capabilities only).
    Skip,
}

/// Asks the agents of the reachable browsers for their load (as `stats` says) and the
/// ready ones for their capabilities where unknown, all at once. Only ready browsers are
/// asked for capabilities: an agent whose browser is still starting does not know them
/// yet (it answers 503). Only real answers are cached.
pub async fn ask_agents(ctx: &Context, ns: &str, view: &mut PoolView, stats: AskStats) -> Asked {
    let Some(token) = view.token.clone() else {
        return Asked::default();
    };
    let calls = view.browsers.iter().map(|b| {
        let token = token.clone();
        async move {
            let ep = ctx
                .endpoint(ns, &b.view, &token)
                .filter(|_| reachable(&b.view) && !b.uid.is_empty())?;
            let mut refused = false;
            let ask = match stats {
                AskStats::All => true,
                AskStats::Missing => !b.observed,
                AskStats::Skip => false,
            };
            let stats = if ask {
                let r = ctx.agents.stats(&ep).await;
                refused |= r.as_ref().is_err_and(|e| e.unauthorized());
                let stats = r.ok();
                ctx.record_seen(&b.uid, stats.clone());
                Some(stats)
            } else {
                None
            };
            let caps = if b.view.ready && b.view.capabilities.is_none() {
                match ctx.agents.capabilities(&ep).await {
                    Ok(c) => {
                        ctx.cache_capabilities(&b.uid, c.clone());
                        Some(c)
                    }
                    Err(e) => {
                        refused |= e.unauthorized();
                        tracing::debug!(pod = %b.view.name, error = %e, "capabilities not known yet");
                        None
                    }
                }
            } else {
                None
            };
            Some((stats, caps, refused))
        }
    });
    let answers = join_all(calls).await;
    let mut asked = Asked::default();
    for (b, a) in view.browsers.iter_mut().zip(answers) {
        let Some((stats, caps, refused)) = a else {
            continue;
        };
        if let Some(stats) = stats {
            b.view.stats = stats;
            b.observed = true;
        }
        if caps.is_some() {
            asked.learned_capabilities = true;
            b.view.capabilities = caps;
        }
        asked.refused_token |= refused;
    }
    asked
}
