//! The agent poller: a loop of its own that asks every pool's agents for their load
//! (`/v1/stats`) and, once their browsers are ready, their capabilities; feeds the
//! autoscaler; and wakes a pool's reconcile only when the decisions built from what it
//! heard would write something (a new size, a pod to drain or replace, a changed status),
//! and the pool's models when a browser's capabilities became known. Asking agents costs
//! no API request, so a settled pool costs none at all.
//!
//! Autoscaled pools, pools with an autoscaled model, and pools whose browsers are changing
//! are polled every `load_poll_interval`; settled pools of fixed size every
//! `idle_poll_interval`.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;
use webaccel_crds::pods;
use webaccel_crds::v1alpha1::{BrowserPool, ModelDeployment};

use crate::context::Context;
use crate::pool::observe::{self, AskStats};
use crate::pool::{build, round};

/// Pools polled at once.
const CONCURRENCY: usize = 64;

/// Where the poller sends wake-ups: the controllers' `reconcile_on` streams.
#[derive(Debug, Clone)]
pub struct Triggers {
    pub pools: UnboundedSender<ObjectRef<BrowserPool>>,
    pub models: UnboundedSender<ObjectRef<ModelDeployment>>,
}

/// What one poll of a pool found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wake {
    /// The reconcile has something to write.
    pub pool: bool,
    /// A browser's capabilities became known: its models may be placed now.
    pub models: bool,
}

/// Polls `pool`'s agents once and says whom to wake.
pub async fn poll_pool(ctx: &Context, pool: &BrowserPool) -> Wake {
    if pool.metadata.deletion_timestamp.is_some() || pool.spec.validate().is_err() {
        return Wake::default();
    }
    let ns = pool.namespace().unwrap_or_default();
    let now = Timestamp::now();
    let hash = build::template_hash(pool);
    let mut view = observe::view(ctx, pool, &hash, now);
    let asked = observe::ask_agents(ctx, &ns, &mut view, AskStats::All).await;
    let round = round::build(ctx, pool, &view, now);
    let work = round::work(ctx, pool, &view, &round);
    let refused =
        asked.refused_token && ctx.forget_refused_token(&ns, &pods::token_secret_name(pool));
    // A missing token is the reconcile's to fetch, on watch events and its own requeue:
    // waking it for that every poll would read the Secret every second.
    let pool_wake = refused || work.service || work.pdb || work.pods || work.status;
    // An autoscaled pool, or one with an autoscaled model (its reconcile reads the load
    // this poll hears), is polled often.
    let autoscaled_models = || {
        ctx.stores
            .deployments_in(&ns, &pool.name_any())
            .iter()
            .any(|m| m.spec.autoscaling.is_some())
    };
    let moving = pool.spec.autoscaling.as_ref().is_some_and(|a| a.enabled)
        || autoscaled_models()
        || work.pods
        || view
            .browsers
            .iter()
            .any(|b| !b.view.ready || b.view.is_draining() || b.view.terminating);
    let interval = if moving {
        ctx.settings.load_poll_interval
    } else {
        ctx.settings.idle_poll_interval
    };
    ctx.with_state(&round.key, |s| {
        s.next_poll = Some(Instant::now() + interval)
    });
    Wake {
        pool: pool_wake,
        models: asked.learned_capabilities,
    }
}

fn due(ctx: &Context, pool: &BrowserPool, now: Instant) -> bool {
    let key = format!(
        "{}/{}",
        pool.namespace().unwrap_or_default(),
        pool.name_any()
    );
    ctx.with_state(&key, |s| s.next_poll.is_none_or(|t| t <= now))
}

/// One pass over every pool that is due.
pub async fn poll_all(ctx: &Arc<Context>, triggers: &Triggers) {
    let now = Instant::now();
    let pools: Vec<Arc<BrowserPool>> = ctx
        .stores
        .pools
        .state()
        .into_iter()
        .filter(|p| due(ctx, p, now))
        .collect();
    futures::stream::iter(pools)
        .for_each_concurrent(CONCURRENCY, |pool| async move {
            let wake = poll_pool(ctx, &pool).await;
            if wake.pool {
                let _ = triggers.pools.unbounded_send(ObjectRef::from_obj(&*pool));
            }
            if wake.models {
                let ns = pool.namespace().unwrap_or_default();
                for m in ctx.stores.models_of(&ns, &pool.name_any()) {
                    let _ = triggers.models.unbounded_send(m);
                }
            }
        })
        .await;
}

/// Polls until dropped. Every minute it forgets what agents of deleted pods said.
pub async fn run(ctx: Arc<Context>, triggers: Triggers) {
    let mut tick = tokio::time::interval(ctx.settings.load_poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_gc = Instant::now();
    loop {
        tick.tick().await;
        if !ctx.stores.synced() {
            continue;
        }
        poll_all(&ctx, &triggers).await;
        if last_gc.elapsed() >= std::time::Duration::from_secs(60) {
            last_gc = Instant::now();
            let live: HashSet<String> = ctx
                .stores
                .pods
                .state()
                .iter()
                .filter_map(|p| p.uid())
                .collect();
            ctx.forget_pods_except(|uid| live.contains(uid));
        }
    }
}
