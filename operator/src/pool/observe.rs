//! What the operator knows about one browser pod: from the pod object, and from its agent.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use webaccel_api::labels;

use crate::agent::{AgentStats, Capabilities};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrowserView {
    pub name: String,
    pub ip: Option<String>,
    pub phase: String,
    pub ready: bool,
    /// Being deleted already (has a deletion timestamp).
    pub terminating: bool,
    /// Carries the draining label: the agent was asked to stop taking work.
    pub draining_since: Option<Timestamp>,
    pub template_hash: Option<String>,
    pub created: Option<Timestamp>,
    /// Since when the pod has been unready (its creation, or when Ready last turned false).
    pub unready_since: Option<Timestamp>,
    /// Highest restart count of its containers.
    pub restarts: i32,
    /// A container is waiting in CrashLoopBackOff.
    pub crash_looping: bool,
    /// The agent's `/v1/stats`, when it answered.
    pub stats: Option<AgentStats>,
    pub capabilities: Option<Capabilities>,
}

impl BrowserView {
    pub fn from_pod(pod: &Pod) -> Self {
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
        Self {
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

    /// In-flight plus queued requests, if the agent answered.
    pub fn load(&self) -> Option<u64> {
        self.stats.as_ref().map(AgentStats::load)
    }

    pub fn is_draining(&self) -> bool {
        self.draining_since.is_some()
    }
}
