//! The write steps of a `BrowserPool` reconcile: the owned objects (token Secret, Service,
//! PDB) where the cache shows them different, the plan (deletes, drains, new pods), the
//! status when it changed, and Events. Nothing else in the pool controller writes to the API.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::json;
use tokio::time::Instant;
use tracing::{info, warn};
use webaccel_crds::labels;
use webaccel_crds::pods;
use webaccel_crds::v1alpha1::{BrowserPool, BrowserPoolStatus};

use super::build;
use super::observe::PoolView;
use super::round::{Round, TokenWork, Work};
use crate::context::Context;
use crate::error::Result;
use webaccel_analytics::history::PoolEvent;
use webaccel_engine::pool::decide::Removal;

/// Writes the owned objects the cache shows missing or different; returns the agents'
/// token when it had to be created or read.
pub async fn apply_owned(
    ctx: &Context,
    pool: &BrowserPool,
    round: &Round,
    work: &Work,
) -> Result<Option<String>> {
    let ns = &round.ns;
    let mut token = None;
    if work.token != TokenWork::None {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        let secret_name = pods::token_secret_name(pool);
        let mut secret = None;
        if work.token == TokenWork::Create {
            let value = Alphanumeric.sample_string(&mut rand::rng(), 40);
            match secrets
                .create(&PostParams::default(), &build::token_secret(pool, &value))
                .await
            {
                Ok(_) => token = Some(value),
                // Made already (the cache is behind): read it below.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        if token.is_none() {
            secret = secrets.get_opt(&secret_name).await?;
        }
        if let Some(t) = secret.as_ref().and_then(pods::token_in) {
            token = Some(t);
        }
        if let Some(t) = &token {
            ctx.remember_token(ns, &secret_name, t.clone());
        }
    }
    let ssa = PatchParams::apply(labels::FIELD_MANAGER).force();
    if work.service {
        Api::<Service>::namespaced(ctx.client.clone(), ns)
            .patch(&round.name, &ssa, &Patch::Apply(&round.service))
            .await?;
        super::round::applied(ctx, &round.key, "service", &round.service);
    }
    if work.pdb {
        Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), ns)
            .patch(&round.name, &ssa, &Patch::Apply(&round.pdb))
            .await?;
        super::round::applied(ctx, &round.key, "pdb", &round.pdb);
    }
    Ok(token)
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

/// A reference to pod `name` of `view` for Events: the cached pod's, else one built from
/// the name.
fn pod_ref(view: &PoolView, ns: &str, name: &str) -> ObjectReference {
    view.browsers
        .iter()
        .find(|b| b.view.name == name)
        .and_then(|b| b.pod.as_ref())
        .map(|p: &Arc<Pod>| p.object_ref(&()))
        .unwrap_or_else(|| ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            ..ObjectReference::default()
        })
}

/// Carries out the plan: deletes, drains (the agent is told, the pod marked), cordons
/// (the pod marked) and creates,
/// each with an Event regarding the pod (the pool as the related object), so that each
/// pod's drain and deletion stays visible on its own.
pub async fn apply_plan(
    ctx: &Context,
    pool: &BrowserPool,
    view: &PoolView,
    round: &Round,
    now: Timestamp,
) -> Result<()> {
    let (ns, name, plan, desired) = (&round.ns, &round.name, round.plan(), round.desired());
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let pool_ref = pool.object_ref(&());
    for (pod, removal) in &plan.delete {
        let regarding = pod_ref(view, ns, pod);
        match pods.delete(pod, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        ctx.with_state(&round.key, |s| {
            s.expect.deleted.insert(pod.clone(), Instant::now());
        });
        let (type_, reason, why) = match removal {
            Removal::Heal(why) => {
                warn!(pool = %round.key, %pod, %why, "replaced broken browser");
                ctx.metrics.healed(ns, name);
                ctx.history
                    .record(ns, name, PoolEvent::Heal, pod, desired, desired, why);
                (EventType::Warning, "BrowserReplaced", why.clone())
            }
            other => {
                info!(pool = %round.key, %pod, why = %other.describe(), "deleted browser");
                // A roll's and a recycle's deletions say so; a scale-down's is plain.
                let (type_, reason) = match other {
                    Removal::OutOfDate => (EventType::Normal, "BrowserRolled"),
                    Removal::Recycle(_) => (EventType::Normal, "BrowserRecycled"),
                    Removal::RollStopped(_) => (EventType::Warning, "RollStopped"),
                    _ => (EventType::Normal, "BrowserDeleted"),
                };
                (type_, reason, other.describe())
            }
        };
        publish(
            ctx,
            &regarding,
            Some(pool_ref.clone()),
            type_,
            reason,
            "Delete",
            format!("{pod}: {why}"),
        )
        .await;
    }
    for (pod, removal) in &plan.drain {
        if let Some(b) = view.browsers.iter().find(|b| &b.view.name == pod)
            && let Some(ep) = view
                .token
                .as_deref()
                .and_then(|t| ctx.endpoint(ns, &b.view, t))
        {
            // If the agent cannot be told, the pod is marked anyway; a later round sees an
            // unreachable draining pod and deletes it (its requests fail as retryable).
            if let Err(e) = ctx.agents.drain(&ep).await {
                warn!(pool = %round.key, %pod, error = %e, "drain request failed");
            }
        }
        let (event, why) = match removal {
            Removal::OutOfDate => (PoolEvent::Roll, "built from an older spec".to_owned()),
            Removal::Recycle(why) => (PoolEvent::Recycle, why.clone()),
            Removal::ScaleDown | Removal::Heal(_) | Removal::RollStopped(_) => {
                (PoolEvent::Drain, removal.describe())
            }
        };
        ctx.history
            .record(ns, name, event, pod, desired, desired, &why);
        let mark = json!({"metadata": {"annotations": {
            labels::DRAINING: now.to_string(),
            labels::DRAIN_REASON: removal.mark(),
        }}});
        match pods
            .patch(pod, &PatchParams::default(), &Patch::Merge(&mark))
            .await
        {
            Ok(_) => {}
            // Gone meanwhile: nothing left to drain.
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e.into()),
        }
        ctx.with_state(&round.key, |s| {
            s.expect.drained.insert(pod.clone(), (now, Instant::now()));
        });
        publish(
            ctx,
            &pod_ref(view, ns, pod),
            Some(pool_ref.clone()),
            EventType::Normal,
            "Draining",
            "Drain",
            format!("{pod}: {}", removal.describe()),
        )
        .await;
    }
    // Cordon (load elsewhere first) and uncordon: a mark on the pod that placement reads.
    let marks = plan
        .cordon
        .iter()
        .map(|p| (p, json!(now.to_string())))
        .chain(plan.uncordon.iter().map(|p| (p, serde_json::Value::Null)));
    for (pod, value) in marks {
        let cordon = !value.is_null();
        let mark = json!({"metadata": {"annotations": {labels::CORDONED: value}}});
        match pods
            .patch(pod, &PatchParams::default(), &Patch::Merge(&mark))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e.into()),
        }
        let (reason, note) = if cordon {
            (
                "Cordoned",
                format!("{pod}: scaling down once the models only it holds are loaded elsewhere"),
            )
        } else {
            ("Uncordoned", format!("{pod}: needed again"))
        };
        info!(pool = %round.key, %pod, reason, "browser marked");
        publish(
            ctx,
            &pod_ref(view, ns, pod),
            Some(pool_ref.clone()),
            EventType::Normal,
            reason,
            "Scale",
            note,
        )
        .await;
    }
    let ssa = PatchParams::apply(labels::FIELD_MANAGER).force();
    for _ in 0..plan.create {
        let pod_name = new_pod_name(name);
        pods.patch(
            &pod_name,
            &ssa,
            &Patch::Apply(build::pod(
                pool,
                &pod_name,
                &round.hash,
                ctx.settings.agent_log_format,
            )),
        )
        .await?;
        ctx.with_state(&round.key, |s| {
            s.expect.created.insert(pod_name.clone(), Instant::now());
        });
    }
    Ok(())
}

/// Writes the status (a server-side apply of all of it: a field this manager no longer
/// sets, say `backends` once no browser is ready, is removed, which a merge patch would
/// leave) and remembers it until the cache shows it.
pub async fn patch_status(
    ctx: &Context,
    pool: &BrowserPool,
    key: &str,
    status: &BrowserPoolStatus,
) -> Result<()> {
    let api: Api<BrowserPool> =
        Api::namespaced(ctx.client.clone(), &pool.namespace().unwrap_or_default());
    let body =
        json!({"apiVersion": "webaccel.dev/v1alpha1", "kind": "BrowserPool", "status": status});
    let ssa = PatchParams::apply(labels::FIELD_MANAGER).force();
    api.patch_status(&pool.name_any(), &ssa, &Patch::Apply(&body))
        .await?;
    ctx.with_state(key, |s| {
        s.status_written = Some((pool.resource_version(), status.clone()));
        s.last_status_write = Some(Instant::now());
    });
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

/// Publishes an Event regarding `regarding` (with `related`); a failure to do so is logged,
/// never fatal. kube's recorder folds repeats of one reason on one object into a series.
pub async fn publish(
    ctx: &Context,
    regarding: &ObjectReference,
    related: Option<ObjectReference>,
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
        secondary: related,
    };
    if let Err(e) = ctx.recorder.publish(&ev, regarding).await {
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
