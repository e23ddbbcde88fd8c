//! One browser of a pool as the engine sees it: what its host (a pod, a local process)
//! says about it, and what its agent says.

use jiff::Timestamp;
use webaccel_api::agent::{AgentStats, Capabilities};

use super::decide::Removal;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrowserView {
    pub name: String,
    pub ip: Option<String>,
    /// `Pending`, `Running`, `Failed` or `Succeeded` (a pod's phase; a local process is
    /// `Running` while it runs and `Failed` once it exited).
    pub phase: String,
    pub ready: bool,
    /// Being deleted already.
    pub terminating: bool,
    /// Since when its agent has been draining (asked to stop taking work).
    pub draining_since: Option<Timestamp>,
    /// Why it drains (so its deletion says so); unknown counts as scaling down.
    pub drained_for: Option<Removal>,
    /// Since when it has been cordoned: chosen for scale-down while it held the only
    /// loaded replica of some model, so it serves on, takes no new replica, and drains once
    /// placement has loaded those models elsewhere.
    pub cordoned_since: Option<Timestamp>,
    /// Models whose only loaded replica is on it (its host counts them from the
    /// deployments' statuses).
    pub sole_copies: u32,
    pub template_hash: Option<String>,
    pub created: Option<Timestamp>,
    /// Since when it has been unready (its creation, or when Ready last turned false).
    pub unready_since: Option<Timestamp>,
    /// Since when it has been ready (when Ready last turned true).
    pub ready_since: Option<Timestamp>,
    /// The scheduler's message while no node can take the pod (`PodScheduled` false,
    /// `Unschedulable`): not broken, since a new pod would not fit either.
    pub unschedulable: Option<String>,
    /// Times its agent restarted.
    pub restarts: i32,
    /// Its agent keeps dying right after starting (Kubernetes' CrashLoopBackOff).
    pub crash_looping: bool,
    /// The agent's `/v1/stats`, when it answered.
    pub stats: Option<AgentStats>,
    pub capabilities: Option<Capabilities>,
}

impl BrowserView {
    /// In-flight plus queued requests, if the agent answered.
    pub fn load(&self) -> Option<u64> {
        self.stats.as_ref().map(AgentStats::load)
    }

    pub fn is_draining(&self) -> bool {
        self.draining_since.is_some()
    }

    pub fn is_cordoned(&self) -> bool {
        self.cordoned_since.is_some()
    }

    /// Ready for at least `seconds` at `now`: available, in a roll's terms.
    pub fn available(&self, seconds: i32, now: Timestamp) -> bool {
        self.ready
            && (seconds <= 0
                || self
                    .ready_since
                    .is_none_or(|t| now.as_second() - t.as_second() >= i64::from(seconds)))
    }

    /// Whether placement may put a new replica on it: not on its way out.
    pub fn takes_new_replicas(&self) -> bool {
        !self.is_draining() && !self.is_cordoned() && !self.terminating
    }
}
