//! A ModelDeployment's autoscaler decision made visible: a log line, the
//! `webaccel_operator_model_scale_decisions` metric with its bounded cause, a
//! `model_scale` row in ClickHouse's `pool_events`, and a `ScaledModel` Event on the
//! deployment, each only when the replicas wanted change.

use kube::Resource as _;
use kube::runtime::events::EventType;
use webaccel_crds::scale::Wanted;
use webaccel_crds::v1alpha1::ModelDeployment;

use crate::context::Context;
use crate::pool::apply::publish;

/// Reports a change from `from` replicas to what `wanted` says, if autoscaled and changed.
pub async fn report(ctx: &Context, md: &ModelDeployment, ns: &str, from: i32, wanted: &Wanted) {
    let (Some(status), Some(cause)) = (&wanted.autoscaler, wanted.cause) else {
        return;
    };
    let to = wanted.desired;
    // A new deployment's first decision is its starting size, not a change.
    if to == from || md.status.is_none() {
        return;
    }
    let name = md.metadata.name.clone().unwrap_or_default();
    tracing::info!(model = %format!("{ns}/{name}"), from, to, reason = %status.reason, "scaling the model");
    ctx.metrics.model_scaled(ns, &name, to > from, cause);
    ctx.history
        .record_model(ns, &md.spec.pool_ref.name, &name, from, to, &status.reason);
    publish(
        ctx,
        &md.object_ref(&()),
        None,
        EventType::Normal,
        "ScaledModel",
        "Scale",
        format!("{to} replicas: {}", status.reason),
    )
    .await;
}
