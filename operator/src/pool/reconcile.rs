//! One `BrowserPool` reconcile as a pipeline: validate, build (observe the pods from the
//! watch cache and their agents, decide: size, plan, owned objects, status), apply what the
//! API server does not hold yet, update the status if it changed. Only `apply` and the
//! status step talk to the API; a settled pool costs no request.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};
use webaccel_crds::v1alpha1::BrowserPool;

use super::apply::{apply_owned, apply_plan, patch_status, publish};
use super::observe::{self, PoolView};
use super::round::{self, Round, TokenWork};
use crate::context::Context;
use crate::error::{Error, Result};
use webaccel_analytics::history::PoolEvent;
use webaccel_crds::status::pool as status;

pub const CONTROLLER: &str = "browserpool";

pub async fn reconcile(pool: Arc<BrowserPool>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&pool, &ctx).await;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    result
}

/// The pool's view with every agent answer a decision needs: the poller's recent ones, and
/// for browsers it has not heard from lately (new pods, a restarted operator), asked now.
pub async fn observe(ctx: &Context, pool: &BrowserPool, now: Timestamp) -> PoolView {
    let ns = pool.namespace().unwrap_or_default();
    let hash = super::build::template_hash(pool);
    let mut view = observe::view(ctx, pool, &hash, now);
    observe::ask_agents(ctx, &ns, &mut view, observe::AskStats::Missing).await;
    view
}

async fn reconcile_inner(pool: &BrowserPool, ctx: &Context) -> Result<Action> {
    let ns = pool
        .namespace()
        .ok_or_else(|| Error::NoNamespace(pool.name_any()))?;
    let key = format!("{ns}/{}", pool.name_any());
    let now = Timestamp::now();
    // Before the caches hold their first full list, a missing pod may just not be listed
    // yet: decide nothing.
    if !ctx.stores.synced() {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }

    // Validate.
    if let Err(e) = pool.spec.validate() {
        let reason = e.to_string();
        let status = status::invalid(pool, &reason, now);
        if round::status_needs_write(ctx, pool, &key, &status) {
            warn!(pool = %key, %reason, "refusing spec");
            publish(
                ctx,
                &pool.object_ref(&()),
                None,
                EventType::Warning,
                "InvalidSpec",
                "Validate",
                reason.clone(),
            )
            .await;
            patch_status(ctx, pool, &key, &status).await?;
        }
        return Ok(Action::await_change());
    }

    // Build.
    let mut view = observe(ctx, pool, now).await;
    let round = round::build(ctx, pool, &view, now);
    let work = round::work(ctx, pool, &view, &round);

    // Apply.
    if let Some(token) = apply_owned(ctx, pool, &round, &work).await? {
        view.token = Some(token);
    }
    remember_decisions(ctx, pool, &round, now).await;
    if work.pods {
        apply_plan(ctx, pool, &view, &round, now).await?;
    }

    // Status.
    let status = if work.pods {
        round::status_after(ctx, pool, &round, now)
    } else {
        round.status.clone()
    };
    ctx.metrics.pool_sizes(
        &round.ns,
        &round.name,
        round.desired(),
        status.replicas,
        status.ready_replicas,
    );
    if round::status_needs_write(ctx, pool, &key, &status) {
        patch_status(ctx, pool, &key, &status).await?;
    }
    let token_missing = work.token == TokenWork::Read && view.token.is_none();
    Ok(requeue(ctx, &round, &view, token_missing))
}

/// The size decision and the heal round, in this process's memory, and a size change as a
/// metric, a history row and an Event.
async fn remember_decisions(ctx: &Context, pool: &BrowserPool, round: &Round, now: Timestamp) {
    let desired = round.desired();
    let pacing = ctx.pacing();
    ctx.with_pool(&round.key, |m| {
        webaccel_engine::pool::round::remember(m, &round.decided, &pacing, now);
    });
    if let Some(reason) = round.decided.scaled() {
        let from = round.decided.previous.unwrap_or_default();
        info!(pool = %round.key, from, desired, %reason, "scaling");
        ctx.metrics.scaled(
            &round.ns,
            &round.name,
            desired > from,
            round.decided.size.cause,
        );
        ctx.history.record(
            &round.ns,
            &round.name,
            PoolEvent::Scale,
            "",
            from,
            desired,
            reason,
        );
        publish(
            ctx,
            &pool.object_ref(&()),
            None,
            EventType::Normal,
            "Scaled",
            "Scale",
            format!("{desired} browsers: {reason}"),
        )
        .await;
    }
}

/// When to look again. The agent poller wakes the reconcile when a decision changes and
/// watch events wake it when an object does, so a settled pool is only looked at every
/// `resync`; a changing one sooner.
fn requeue(ctx: &Context, round: &Round, view: &PoolView, token_missing: bool) -> Action {
    let p = round.plan();
    let moving = p.create > 0
        || !p.drain.is_empty()
        || !p.delete.is_empty()
        || !p.heal_deferred.is_empty()
        || view
            .browsers
            .iter()
            .any(|b| !b.view.ready || b.view.is_draining());
    Action::requeue(if token_missing {
        // The user's Secret does not exist (yet): nothing watches it for us.
        Duration::from_secs(30)
    } else if moving {
        Duration::from_secs(5)
    } else {
        ctx.settings.resync
    })
}
