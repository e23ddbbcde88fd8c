//! Label, annotation and condition names shared by the operator, the gateway and the agent.

/// Marks every object the operator creates.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "webaccel-operator";
/// The `BrowserPool` a pod, Service, PDB or Secret belongs to.
pub const POOL: &str = "webaccel.dev/pool";
/// Hash of the pod template a browser pod was built from; a pod whose hash differs from the
/// pool's current one is out of date and gets replaced (one at a time).
pub const TEMPLATE_HASH: &str = "webaccel.dev/template-hash";
/// Set on a pod the operator is draining before it deletes it (scale-down, roll, recycle).
pub const DRAINING: &str = "webaccel.dev/draining";
/// Why a draining pod drains (`scale-down`, `roll`, `recycle: why`): its deletion says so.
pub const DRAIN_REASON: &str = "webaccel.dev/drain-reason";
/// Set on a pod chosen for scale-down while it holds the only loaded replica of some
/// model: it serves on and takes no new replica until that model is loaded elsewhere,
/// then it is drained.
pub const CORDONED: &str = "webaccel.dev/cordoned";
/// Field manager for server-side apply.
pub const FIELD_MANAGER: &str = "webaccel-operator";
/// The signal to scale a pool up from zero: requests waiting for a browser. Whoever holds the
/// requests (the gateway, a batch job, or a person with `kubectl annotate`) sets it to the
/// number waiting on the `BrowserPool`; the operator reads it only while the pool has no ready
/// browser to ask, and ignores it once it is older than [`WAITING_REQUESTS_TTL_SECONDS`].
pub const WAITING_REQUESTS: &str = "webaccel.dev/waiting-requests";
/// RFC 3339 time at which [`WAITING_REQUESTS`] was set; without it the count is taken as current.
pub const WAITING_REQUESTS_AT: &str = "webaccel.dev/waiting-requests-at";
pub const WAITING_REQUESTS_TTL_SECONDS: i64 = 120;
/// Finalizer that unloads a model from its browsers before its `ModelDeployment` goes away.
pub const MODEL_FINALIZER: &str = "webaccel.dev/unload-model";

/// The label a pod carries while it holds the model of the `ModelDeployment` named `name`.
pub fn model_label(name: &str) -> String {
    format!("webaccel.dev/model.{name}")
}
pub const MODEL_LOADED: &str = "loaded";

/// Condition types on `BrowserPool` and `ModelDeployment`.
pub mod condition {
    pub const READY: &str = "Ready";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_labels_are_valid_label_keys() {
        // Kubernetes label names: prefix '/' name, name ≤ 63 chars of [A-Za-z0-9._-].
        let key = model_label("bert-base");
        let (prefix, name) = key.split_once('/').unwrap();
        assert_eq!(prefix, "webaccel.dev");
        assert!(name.len() <= 63);
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        );
    }
}
