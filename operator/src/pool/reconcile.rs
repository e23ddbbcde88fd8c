//! One `BrowserPool` reconcile as a pipeline: validate, ensure the owned objects, observe the
//! pods and their agents, decide, apply, report. Only the steps in `apply` write.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::{info, warn};
use webaccel_api::labels;
use webaccel_api::v1alpha1::{BrowserKind, BrowserPool, BrowserPoolSpec, HealingSpec};

use super::apply::{apply_owned, apply_plan, patch_status, publish};
use super::build::{self, AGENT_PORT};
use super::observe::{self, BrowserView};
use super::status::{self, Outcome};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::history::PoolEvent;
use webaccel_engine::agent::Endpoint;
use webaccel_engine::pool::decide::{self, Plan, Removal};
use webaccel_engine::pool::size;

pub const CONTROLLER: &str = "browserpool";

/// What the schema cannot refuse but the operator must.
pub fn validate(spec: &BrowserPoolSpec) -> Result<(), String> {
    if spec.browser == BrowserKind::Firefox {
        return Err(
            "browser firefox is not supported: webaccel-agent drives the browser over the \
                    Chrome DevTools Protocol, which Firefox no longer implements; use chromium, \
                    chrome or edge"
                .into(),
        );
    }
    Ok(())
}

pub async fn reconcile(pool: Arc<BrowserPool>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&pool, &ctx).await;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    result
}

async fn reconcile_inner(pool: &BrowserPool, ctx: &Context) -> Result<Action> {
    let ns = pool
        .namespace()
        .ok_or_else(|| Error::NoNamespace(pool.name_any()))?;
    let name = pool.name_any();
    let key = format!("{ns}/{name}");
    let now = Timestamp::now();
    let pools: Api<BrowserPool> = Api::namespaced(ctx.client.clone(), &ns);

    if let Err(reason) = validate(&pool.spec) {
        warn!(pool = %key, %reason, "refusing spec");
        publish(
            ctx,
            pool,
            EventType::Warning,
            "InvalidSpec",
            "Validate",
            reason.clone(),
        )
        .await;
        patch_status(&pools, &name, &status::invalid(pool, &reason, now)).await?;
        return Ok(Action::await_change());
    }

    let token = apply_owned(pool, ctx, &ns).await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let listed = pods
        .list(&ListParams::default().labels(&build::selector_string(&name)))
        .await?;
    let mut browsers: Vec<BrowserView> = listed.items.iter().map(observe::from_pod).collect();
    observe_agents(ctx, &listed.items, &mut browsers, token.as_deref()).await;

    let (desired, scale_reason, scale_cause) = desired_size(pool, ctx, &key, &browsers, now);
    // The size steered to before: this process's memory, else what the status said.
    let previous = ctx
        .with_pool(&key, |m| m.last_desired.replace(desired))
        .or(pool.status.as_ref().map(|s| s.desired_replicas));
    let scaled = previous
        .filter(|&p| p != desired)
        .map(|_| scale_reason.clone());

    let healing = pool.spec.healing.clone().unwrap_or_default();
    let hash = build::template_hash(pool);
    let may_heal = ctx.may_heal(&key, now);
    let plan = decide::plan(
        &browsers,
        &decide::Inputs {
            desired,
            template_hash: &hash,
            healing: &healing,
            recycle: pool.spec.recycle.as_ref(),
            now,
            may_heal,
            drain_timeout_s: ctx.settings.drain_timeout.as_secs() as i64,
        },
    );
    let healed = plan
        .delete
        .iter()
        .any(|(_, r)| matches!(r, Removal::Heal(_)));
    if healed || plan.heal_deferred.is_empty() {
        ctx.heal_round(&key, now, healed);
    }

    if let Some(reason) = &scaled {
        let from = previous.unwrap_or_default();
        info!(pool = %key, from, desired, %reason, "scaling");
        ctx.metrics.scaled(&ns, &name, desired > from, scale_cause);
        ctx.history
            .record(&ns, &name, PoolEvent::Scale, "", from, desired, reason);
        publish(
            ctx,
            pool,
            EventType::Normal,
            "Scaled",
            "Scale",
            format!("{desired} browsers: {reason}"),
        )
        .await;
    }
    apply_plan(
        pool,
        ctx,
        &pods,
        &browsers,
        &plan,
        &hash,
        token.as_deref(),
        now,
        desired,
    )
    .await?;

    let outcome = Outcome {
        desired,
        template_hash: &hash,
        selector: build::selector_string(&name),
        plan: &plan,
        scaled,
    };
    let status = status::build(pool, &browsers, &outcome, now);
    ctx.metrics
        .pool_sizes(&ns, &name, desired, status.replicas, status.ready_replicas);
    patch_status(&pools, &name, &status).await?;

    Ok(requeue(pool, ctx, &plan, &browsers, &healing))
}

/// When to look again: often while something moves or load decides the size, rarely when
/// settled (watch events wake the controller anyway).
fn requeue(
    pool: &BrowserPool,
    ctx: &Context,
    plan: &Plan,
    browsers: &[BrowserView],
    _h: &HealingSpec,
) -> Action {
    if pool.spec.autoscaling.as_ref().is_some_and(|a| a.enabled) {
        return Action::requeue(ctx.settings.load_poll_interval);
    }
    let moving = plan.create > 0
        || !plan.drain.is_empty()
        || !plan.delete.is_empty()
        || !plan.heal_deferred.is_empty()
        || browsers.iter().any(|b| !b.ready || b.is_draining());
    Action::requeue(if moving {
        Duration::from_secs(5)
    } else {
        ctx.settings.resync
    })
}

pub fn endpoint(pod: &BrowserView, token: &str) -> Option<Endpoint> {
    let ip = pod.ip.as_ref()?;
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.clone()
    };
    Some(Endpoint {
        pod: pod.name.clone(),
        base_url: format!("http://{host}:{AGENT_PORT}"),
        token: token.to_owned(),
    })
}

/// Asks every running agent for its load (and, once per pod, its capabilities), all at once.
async fn observe_agents(
    ctx: &Context,
    pods: &[Pod],
    browsers: &mut [BrowserView],
    token: Option<&str>,
) {
    let Some(token) = token else { return };
    let calls = browsers.iter().zip(pods).map(|(b, pod)| async move {
        let ep = endpoint(b, token).filter(|_| !b.terminating && b.phase == "Running")?;
        let uid = pod.uid().unwrap_or_default();
        let stats = ctx.agents.stats(&ep).await.ok();
        let caps = match ctx.cached_capabilities(&uid) {
            Some(c) => Some(c),
            None if stats.as_ref().is_some_and(|s| s.ready) => {
                let c = ctx.agents.capabilities(&ep).await.ok();
                if let Some(c) = &c {
                    ctx.cache_capabilities(&uid, c.clone());
                }
                c
            }
            None => None,
        };
        Some((stats, caps))
    });
    let seen_all = join_all(calls).await;
    for (b, seen) in browsers.iter_mut().zip(seen_all) {
        if let Some((stats, caps)) = seen {
            b.stats = stats;
            b.capabilities = caps;
        }
    }
}

/// Requests waiting for a pool with no ready browser, from the annotation, if still fresh.
fn waiting_requests(pool: &BrowserPool, now: Timestamp) -> u64 {
    let a = pool.annotations();
    let Some(n) = a
        .get(labels::WAITING_REQUESTS)
        .and_then(|v| v.trim().parse::<u64>().ok())
    else {
        return 0;
    };
    let fresh = a
        .get(labels::WAITING_REQUESTS_AT)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .is_none_or(|t| now.as_second() - t.as_second() <= labels::WAITING_REQUESTS_TTL_SECONDS);
    if fresh { n } else { 0 }
}

/// The size to steer to and why: the engine's decision, with this process's memory of
/// the pool and the waiting-requests annotation.
fn desired_size(
    pool: &BrowserPool,
    ctx: &Context,
    key: &str,
    browsers: &[BrowserView],
    now: Timestamp,
) -> (i32, String, &'static str) {
    let waiting = waiting_requests(pool, now);
    let s = ctx.with_pool(key, |m| {
        size::desired(&pool.spec, browsers, m, waiting, now)
    });
    (s.desired, s.reason, s.cause)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firefox_is_refused_with_the_reason() {
        let spec: BrowserPoolSpec =
            serde_json::from_value(serde_json::json!({"image": "i", "browser": "firefox"}))
                .unwrap();
        assert!(
            validate(&spec)
                .unwrap_err()
                .contains("Chrome DevTools Protocol")
        );
        let spec: BrowserPoolSpec =
            serde_json::from_value(serde_json::json!({"image": "i"})).unwrap();
        assert!(validate(&spec).is_ok());
    }
}
