//! One `BrowserPool` reconcile as a pipeline: validate, ensure the owned objects, observe the
//! pods and their agents, decide, apply, report. Only `apply_*` and `patch_status` write.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::json;
use tracing::{info, warn};
use webaccel_api::labels;
use webaccel_api::v1alpha1::{BrowserKind, BrowserPool, BrowserPoolSpec, HealingSpec};

use super::build::{self, AGENT_PORT};
use super::decide::{self, Plan, Removal};
use super::observe::BrowserView;
use super::status::{self, Outcome};
use crate::agent::Endpoint;
use crate::autoscale::LoadSample;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::history::PoolEvent;

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
    let mut browsers: Vec<BrowserView> = listed.items.iter().map(BrowserView::from_pod).collect();
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

/// The token Secret (created once, never rotated by reconciles), the headless Service and
/// the PDB. Returns the agents' token, if the Secret exists yet.
async fn apply_owned(pool: &BrowserPool, ctx: &Context, ns: &str) -> Result<Option<String>> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret_name = build::token_secret_name(pool);
    let mut secret = secrets.get_opt(&secret_name).await?;
    if secret.is_none() && build::owns_token_secret(pool) {
        let token = Alphanumeric.sample_string(&mut rand::rng(), 40);
        match secrets
            .create(&PostParams::default(), &build::token_secret(pool, &token))
            .await
        {
            Ok(s) => secret = Some(s),
            // Another reconcile made it first: use theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                secret = secrets.get_opt(&secret_name).await?
            }
            Err(e) => return Err(e.into()),
        }
    }
    let ssa = PatchParams::apply(labels::FIELD_MANAGER).force();
    let name = pool.name_any();
    Api::<Service>::namespaced(ctx.client.clone(), ns)
        .patch(&name, &ssa, &Patch::Apply(build::service(pool)))
        .await?;
    Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), ns)
        .patch(&name, &ssa, &Patch::Apply(build::pdb(pool)))
        .await?;
    Ok(secret.and_then(|s| token_of(&s)))
}

fn token_of(secret: &Secret) -> Option<String> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get("token")) {
        return String::from_utf8(v.0.clone())
            .ok()
            .map(|t| t.trim().to_owned());
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get("token"))
        .map(|t| t.trim().to_owned())
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

/// The size to steer to and why: `spec.replicas`, or the autoscaler's decision.
fn desired_size(
    pool: &BrowserPool,
    ctx: &Context,
    key: &str,
    browsers: &[BrowserView],
    now: Timestamp,
) -> (i32, String, &'static str) {
    let Some(policy) = pool.spec.autoscaling.as_ref().filter(|a| a.enabled) else {
        return (
            pool.spec.replicas,
            format!("spec.replicas is {}", pool.spec.replicas),
            "spec",
        );
    };
    let serving: Vec<&BrowserView> = browsers
        .iter()
        .filter(|b| !b.terminating && !b.is_draining() && b.ready)
        .collect();
    let sample = LoadSample {
        load: serving.iter().filter_map(|b| b.load()).sum(),
        reporting: serving.iter().filter(|b| b.stats.is_some()).count() as i32,
        silent: serving.iter().filter(|b| b.stats.is_none()).count() as i32,
        waiting: if serving.is_empty() {
            waiting_requests(pool, now)
        } else {
            0
        },
    };
    let current = browsers
        .iter()
        .filter(|b| !b.terminating && !b.is_draining())
        .count() as i32;
    let current = ctx.with_pool(key, |m| m.last_desired).unwrap_or(current);
    let now_s = now.as_millisecond() as f64 / 1000.0;
    let d = ctx.with_pool(key, |m| m.autoscaler.decide(policy, now_s, current, sample));
    (d.desired, d.reason, d.cause)
}

/// Pod names: the pool's name (cut so the pod name stays a valid hostname) and 5 random
/// characters.
fn new_pod_name(pool: &str) -> String {
    let suffix = Alphanumeric
        .sample_string(&mut rand::rng(), 5)
        .to_lowercase();
    let base: String = pool.chars().take(57).collect();
    format!("{}-{suffix}", base.trim_end_matches('-'))
}

#[allow(clippy::too_many_arguments)]
async fn apply_plan(
    pool: &BrowserPool,
    ctx: &Context,
    pods: &Api<Pod>,
    browsers: &[BrowserView],
    plan: &Plan,
    hash: &str,
    token: Option<&str>,
    now: Timestamp,
    desired: i32,
) -> Result<()> {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    for (pod, removal) in &plan.delete {
        if let Removal::Heal(why) = removal {
            warn!(pool = %name, %pod, %why, "replacing broken browser");
            ctx.metrics.healed(&ns, &name);
            ctx.history
                .record(&ns, &name, PoolEvent::Heal, pod, desired, desired, why);
            publish(
                ctx,
                pool,
                EventType::Warning,
                "BrowserReplaced",
                "Heal",
                format!("{pod}: {why}"),
            )
            .await;
        }
        match pods.delete(pod, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    for (pod, removal) in &plan.drain {
        let view = browsers.iter().find(|b| &b.name == pod);
        if let (Some(ep), Some(_)) = (view.and_then(|b| token.and_then(|t| endpoint(b, t))), view) {
            // If the agent cannot be told, the pod is marked anyway; the next round sees an
            // unreachable draining pod and deletes it (its requests fail as retryable).
            if let Err(e) = ctx.agents.drain(&ep).await {
                warn!(pool = %name, %pod, error = %e, "drain request failed");
            }
        }
        let (event, why) = match removal {
            Removal::OutOfDate => (PoolEvent::Roll, "built from an older spec".to_owned()),
            Removal::Recycle(why) => (PoolEvent::Recycle, why.clone()),
            Removal::ScaleDown | Removal::Heal(_) => (PoolEvent::Drain, removal.describe()),
        };
        ctx.history
            .record(&ns, &name, event, pod, desired, desired, &why);
        let mark = json!({"metadata": {"annotations": {labels::DRAINING: now.to_string()}}});
        pods.patch(pod, &PatchParams::default(), &Patch::Merge(&mark))
            .await?;
        publish(
            ctx,
            pool,
            EventType::Normal,
            "Draining",
            "Drain",
            format!("{pod}: {}", removal.describe()),
        )
        .await;
    }
    let ssa = PatchParams::apply(labels::FIELD_MANAGER).force();
    for _ in 0..plan.create {
        let pod_name = new_pod_name(&name);
        pods.patch(
            &pod_name,
            &ssa,
            &Patch::Apply(build::pod(pool, &pod_name, hash)),
        )
        .await?;
    }
    Ok(())
}

async fn patch_status(
    api: &Api<BrowserPool>,
    name: &str,
    status: &webaccel_api::v1alpha1::BrowserPoolStatus,
) -> Result<()> {
    let body = json!({"status": status});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

/// `s` cut to at most `max` bytes at a character boundary (an Event note may hold 1 kB).
fn truncate_bytes(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Publishes an Event on the pool; a failure to do so is logged, never fatal.
pub async fn publish(
    ctx: &Context,
    pool: &BrowserPool,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(truncate_bytes(note, 1000)),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &pool.object_ref(&())).await {
        warn!(error = %e, reason, "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_to_bytes_not_characters() {
        let note = "→".repeat(400); // 3 bytes each
        let cut = truncate_bytes(note, 1000);
        assert_eq!(cut.len(), 999);
        assert_eq!(truncate_bytes("short".into(), 1000), "short");
    }

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

    #[test]
    fn pod_names_stay_valid_hostnames() {
        let name = new_pod_name(&"p".repeat(80));
        assert!(name.len() <= 63, "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}
