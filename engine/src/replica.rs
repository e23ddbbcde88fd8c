//! A model's replica on one browser: what placement decides and both hosts report (the
//! operator in `ModelDeployment.status`, local mode in `webaccel status`).

use serde::{Deserialize, Serialize};
use webaccel_api::Precision;

/// The model on one browser pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    pub pod: String,
    pub state: ReplicaState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// Session creation plus warm-up, as the agent measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_ms: Option<f64>,
    /// The precision the agent detected from the model's graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What loading it added to the browser's memory, as the agent measured it: kept,
    /// so placement knows the model's size before its next load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

impl ReplicaStatus {
    /// A replica on `pod` in `state`, with nothing else known yet.
    pub fn new(pod: &str, state: ReplicaState) -> Self {
        Self {
            pod: pod.to_owned(),
            state,
            backend: None,
            adapter: None,
            init_ms: None,
            precision: None,
            reason: None,
            memory_bytes: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ReplicaState {
    Pending,
    Loading,
    Loaded,
    FailedToLoad,
}
