//! One browser of a pool as the engine sees it: what its host (a pod, a local process)
//! says about it, and what its agent says.

use jiff::Timestamp;
use webaccel_api::agent::{AgentStats, Capabilities};

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
    pub template_hash: Option<String>,
    pub created: Option<Timestamp>,
    /// Since when it has been unready (its creation, or when Ready last turned false).
    pub unready_since: Option<Timestamp>,
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
}
