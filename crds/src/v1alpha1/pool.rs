//! `BrowserPool`: a set of browser pods, each running the node agent, that the operator
//! keeps at the right size and healthy.
// kube's printcolumn(...) attributes repeat keys such as `type_` by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use webaccel_api::Backend;
pub use webaccel_api::BrowserKind;
use webaccel_engine::policy::PoolPolicy;
pub use webaccel_engine::policy::{Autoscaling, HealingSpec, RecycleSpec, RolloutSpec};

/// A pool of browser pods that run models through WebGPU, WebNN or WebAssembly.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "webaccel.dev",
    version = "v1alpha1",
    kind = "BrowserPool",
    namespaced,
    shortname = "bpool",
    category = "webaccel",
    status = "BrowserPoolStatus",
    derive = "PartialEq",
    doc = "A pool of browser pods, each running webaccel-agent, kept at size and healthy by webaccel-operator.",
    // The pool's name becomes the headless Service's name (a DNS-1035 label) and the prefix
    // of its pods' names and hostnames.
    validation = kube::core::Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 50").message("a BrowserPool name is at most 50 lowercase letters, digits and '-', starting with a letter (it names the pool's Service and prefixes its pod names)"),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas"
    ),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Backends", type_ = "string", json_path = ".status.backends"),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BrowserPoolSpec {
    /// Which browser the pods run: chromium, chrome and edge (driven over the Chrome DevTools
    /// Protocol) or firefox (driven over WebDriver BiDi; it has no WebNN). The image must hold
    /// that browser.
    #[serde(default)]
    pub browser: BrowserKind,
    /// Container image with the browser and webaccel-agent.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Browser pods wanted. Set by hand, by `kubectl scale`, HPA or KEDA through `/scale`.
    /// Ignored while `autoscaling.enabled`: the operator then sizes the pool itself and shows
    /// its choice in `status.desiredReplicas` (it never writes the spec, so GitOps sees no drift).
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not be greater than autoscaling.maxReplicas"))]
    pub autoscaling: Option<Autoscaling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuSpec>,
    /// Backends the pool's browsers may run models on, in order of preference.
    #[serde(default = "all_backends")]
    #[schemars(length(max = 3))]
    #[x_kube(validation = kube::core::Rule::new("size(self) > 0").message("backends must list at least one of webgpu, webnn or wasm"))]
    #[x_kube(validation = kube::core::Rule::new("!self.exists(b, b == 'auto')").message("backends lists what the pool allows; 'auto' belongs in a ModelDeployment"))]
    pub backends: Vec<Backend>,
    /// Requests one browser runs or queues at once; more get a retryable 503.
    #[serde(default = "default_max_in_flight")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_in_flight_per_browser: i32,
    /// onnxruntime-web instances per browser page, each in its own Web Worker with its
    /// own sessions of every model, so one browser computes that many requests at once
    /// (the agent's `--page-workers`). Unset: from the CPUs the pod may use (one per two
    /// CPUs from four up, else one). Each worker holds its own copy of every model's
    /// weights. The autoscaler counts a browser's capacity as its workers times
    /// `autoscaling.targetInFlightPerBrowser`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub page_workers: Option<i32>,
    /// The memory one browser's processes may use (a quantity: `1536Mi`, `2Gi`): a model
    /// is placed on a browser only if what its loads measured fits in what is left, and a
    /// replica that fits nowhere asks the pool (when it autoscales) for another browser.
    /// Unset: 80% of the template's memory limit (the rest is the agent's and headroom),
    /// else unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycle: Option<RecycleSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healing: Option<HealingSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.maxSurge + self.maxUnavailable > 0").message("rollout.maxSurge and rollout.maxUnavailable cannot both be 0: a roll could replace nothing"))]
    pub rollout: Option<RolloutSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodOverrides>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSpec>,
    /// Secret whose `token` key is the agents' bearer token. Without it the operator creates
    /// `<pool>-agent-token` with a random token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_name: Option<String>,
}

fn one() -> i32 {
    1
}

/// What the schema cannot refuse in a `BrowserPool` but the hosts must.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolSpecError {
    #[error(
        "browser firefox has no WebNN (navigator.ml), the only backend this pool allows: \
         allow webgpu or wasm too, or use chromium, chrome or edge"
    )]
    FirefoxWithoutWebnn,
}

impl BrowserPoolSpec {
    /// Checks what the schema cannot. Every browser kind is accepted (the agent drives the
    /// Chromium family over the DevTools protocol and Firefox over WebDriver BiDi); only a
    /// pool whose browser can run none of the backends it allows is refused: Firefox has
    /// no WebNN.
    pub fn validate(&self) -> Result<(), PoolSpecError> {
        if self.browser == BrowserKind::Firefox
            && self.backends.iter().all(|b| *b == Backend::Webnn)
        {
            return Err(PoolSpecError::FirefoxWithoutWebnn);
        }
        Ok(())
    }

    /// A browser's memory budget in bytes: `memoryBudget`, else 80% of the template's
    /// memory limit, else none. A quantity that cannot be read counts as none.
    pub fn memory_budget_bytes(&self) -> Option<u64> {
        if let Some(q) = &self.memory_budget {
            return quantity_bytes(&q.0);
        }
        let limit = self
            .template
            .as_ref()?
            .resources
            .as_ref()?
            .limits
            .as_ref()?
            .get("memory")?;
        quantity_bytes(&limit.0).map(|b| b / 5 * 4)
    }

    /// What the engine's pool round decides with.
    pub fn policy(&self) -> PoolPolicy {
        PoolPolicy {
            replicas: self.replicas,
            autoscaling: self.autoscaling.clone(),
            page_workers: self.page_workers,
            healing: self.healing.clone().unwrap_or_default(),
            recycle: self.recycle.clone(),
            rollout: self.rollout.clone().unwrap_or_default(),
        }
    }
}

/// Bytes in a Kubernetes memory quantity (`2Gi`, `1536Mi`, `1G`, `500M`, `1e9`, `123`);
/// `None` for what is not one (fractions of a byte, other suffixes).
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let factor: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    let bytes = number.parse::<f64>().ok()? * factor;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (bytes.is_finite() && bytes >= 0.0).then_some(bytes as u64)
}

#[cfg(test)]
mod quantity_tests {
    use super::quantity_bytes;

    #[test]
    fn memory_quantities_read_as_kubernetes_reads_them() {
        assert_eq!(quantity_bytes("2Gi"), Some(2 << 30));
        assert_eq!(quantity_bytes("1536Mi"), Some(1536 << 20));
        assert_eq!(quantity_bytes("1G"), Some(1_000_000_000));
        assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity_bytes("1e9"), Some(1_000_000_000));
        assert_eq!(quantity_bytes("123"), Some(123));
        assert_eq!(quantity_bytes("2Zi"), None);
        assert_eq!(quantity_bytes("lots"), None);
    }
}

fn all_backends() -> Vec<Backend> {
    vec![Backend::Webgpu, Backend::Webnn, Backend::Wasm]
}

fn default_max_in_flight() -> i32 {
    64
}

/// GPUs for each browser pod: a resource request plus the node selector and tolerations that
/// land the pod where such GPUs are.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuSpec {
    pub vendor: GpuVendor,
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 8))]
    pub count: i32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GpuVendor {
    Nvidia,
    Amd,
    Intel,
}

impl GpuVendor {
    /// The extended resource the vendor's device plugin advertises.
    pub fn resource_name(self) -> &'static str {
        match self {
            Self::Nvidia => "nvidia.com/gpu",
            Self::Amd => "amd.com/gpu",
            Self::Intel => "gpu.intel.com/i915",
        }
    }
}

/// What of the browser pod a user may set; the rest the operator owns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Extra volumes, e.g. a ConfigMap or PersistentVolumeClaim with model files that a
    /// `ModelDeployment` then names as `file:///<mountPath>/<file>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    /// Extra webaccel-agent arguments, appended after the ones the operator sets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_args: Vec<String>,
}

/// Where the pool's agents write their per-request figures.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.url) != has(self.urlSecretRef)").message("metrics needs exactly one of url or urlSecretRef"))]
pub struct MetricsSpec {
    /// ClickHouse HTTP interface without credentials, e.g. `http://clickhouse:8123`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("metrics.url must start with http:// or https://"))]
    #[schemars(length(max = 2048))]
    pub url: Option<String>,
    /// A Secret key holding the whole URL, credentials included (`http://user:pass@host:8123`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
    #[serde(default = "default_database")]
    #[schemars(length(min = 1))]
    pub database: String,
}

fn default_database() -> String {
    "webaccel".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrowserPoolStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Browser pods that exist and are not being deleted.
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods built from the current spec.
    #[serde(default)]
    pub updated_replicas: i32,
    /// The size the operator is steering to (equals spec.replicas unless autoscaling).
    #[serde(default)]
    pub desired_replicas: i32,
    /// Label selector of the pool's pods, for `/scale` (HPA, KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Backends the ready browsers detected, e.g. `wasm,webgpu(software)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub browsers: Vec<BrowserSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
}

/// One browser pod as the operator last saw it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrowserSummary {
    pub pod: String,
    pub phase: String,
    pub ready: bool,
    /// Backends this browser detected as usable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
    /// The WebGPU adapter, with `(software)` for a fallback adapter such as SwiftShader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// In-flight plus queued requests at the last look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<i64>,
    /// Why the operator is draining or replacing it, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_browser_is_accepted_but_firefox_not_with_webnn_alone() {
        let spec = |v: serde_json::Value| -> BrowserPoolSpec { serde_json::from_value(v).unwrap() };
        for browser in ["chromium", "chrome", "edge", "firefox"] {
            assert!(
                spec(serde_json::json!({"image": "i", "browser": browser}))
                    .validate()
                    .is_ok()
            );
            let wasm = serde_json::json!({"image": "i", "browser": browser, "backends": ["wasm"]});
            assert!(spec(wasm).validate().is_ok());
        }
        let webnn = |browser: &str| {
            spec(serde_json::json!({"image": "i", "browser": browser, "backends": ["webnn"]}))
                .validate()
        };
        assert!(webnn("chromium").is_ok());
        assert!(
            webnn("firefox")
                .unwrap_err()
                .to_string()
                .contains("no WebNN")
        );
        let mixed =
            serde_json::json!({"image": "i", "browser": "firefox", "backends": ["webnn", "wasm"]});
        assert!(spec(mixed).validate().is_ok());
    }
}
