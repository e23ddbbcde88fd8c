//! The write steps of a `BrowserPool` reconcile: the owned objects (token Secret, Service,
//! PDB), the plan (deletes, drains, new pods), the status, and Events. Nothing else in the
//! pool controller writes to the API.

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::json;
use tracing::warn;
use webaccel_api::labels;
use webaccel_api::v1alpha1::BrowserPool;

use super::build;
use super::observe::BrowserView;
use super::reconcile::endpoint;
use crate::context::Context;
use crate::error::Result;
use crate::history::PoolEvent;
use webaccel_engine::pool::decide::{Plan, Removal};

/// The token Secret (created once, never rotated by reconciles), the headless Service and
/// the PDB. Returns the agents' token, if the Secret exists yet.
pub async fn apply_owned(pool: &BrowserPool, ctx: &Context, ns: &str) -> Result<Option<String>> {
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
pub async fn apply_plan(
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

pub async fn patch_status(
    api: &Api<BrowserPool>,
    name: &str,
    status: &webaccel_api::v1alpha1::BrowserPoolStatus,
) -> Result<()> {
    // Server-side apply of the whole status: a field this manager no longer sets (say
    // `backends` once no browser is ready) is removed, which a merge patch would leave.
    let body =
        json!({"apiVersion": "webaccel.dev/v1alpha1", "kind": "BrowserPool", "status": status});
    let ssa = PatchParams::apply(labels::FIELD_MANAGER).force();
    api.patch_status(name, &ssa, &Patch::Apply(&body)).await?;
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
    fn pod_names_stay_valid_hostnames() {
        let name = new_pod_name(&"p".repeat(80));
        assert!(name.len() <= 63, "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}
