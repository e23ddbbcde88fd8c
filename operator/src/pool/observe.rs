//! What the operator knows about one browser pod: from the pod object, and from its agent.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use webaccel_api::labels;

pub use webaccel_engine::pool::browser::BrowserView;

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
    BrowserView {
        name: pod.name_any(),
        ip: status.pod_ip.clone().filter(|ip| !ip.is_empty()),
        phase: status.phase.clone().unwrap_or_else(|| "Pending".into()),
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        draining_since,
        template_hash: pod.labels().get(labels::TEMPLATE_HASH).cloned(),
        created,
        unready_since,
        restarts,
        crash_looping,
        stats: None,
        capabilities: None,
    }
}
