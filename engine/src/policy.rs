//! The policies a `BrowserPool` gives the engine, as the resource spells them (the CRD
//! embeds these types, so the engine decides with exactly what the user wrote): how the
//! pool sizes itself by load, when a browser counts as broken, when one is recycled.
//! Schemas (feature `schema`) are for the CRD; the rule that `minReplicas` may not pass
//! `maxReplicas` sits on the CRD's field.

use serde::{Deserialize, Serialize};

/// Size the pool by load: in-flight plus queued requests per browser, read from each agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    #[serde(default)]
    pub enabled: bool,
    /// 0 lets the pool scale to zero when idle; it scales from zero when requests wait (see
    /// the `webaccel.dev/waiting-requests` annotation).
    #[serde(default = "one")]
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 1000)))]
    pub min_replicas: i32,
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1000)))]
    pub max_replicas: i32,
    /// In-flight plus queued requests per browser the autoscaler aims for.
    #[serde(default = "default_target")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 10000)))]
    pub target_in_flight_per_browser: i32,
    /// Scale up only to the lowest size recommended over this window (0: at once).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 3600)))]
    pub scale_up_stabilization_seconds: i32,
    /// Scale down only to the highest size recommended over this window.
    #[serde(default = "default_scale_down_window")]
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 3600)))]
    pub scale_down_stabilization_seconds: i32,
}

fn one() -> i32 {
    1
}

fn default_target() -> i32 {
    4
}

fn default_scale_down_window() -> i32 {
    300
}

/// Browsers are replaced after serving this many requests or living this long, whichever comes
/// first; always drained before they go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RecycleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub after_requests: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 60)))]
    pub max_lifetime_seconds: Option<i64>,
}

/// When a browser pod counts as broken and is replaced.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HealingSpec {
    /// A pod that stays unready this long after it started is replaced.
    #[serde(default = "default_unready_grace")]
    #[cfg_attr(feature = "schema", schemars(range(min = 10, max = 3600)))]
    pub unready_grace_seconds: i32,
    /// A container that restarted this many times is crash-looping and its pod is replaced.
    #[serde(default = "default_max_restarts")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 100)))]
    pub max_container_restarts: i32,
}

impl Default for HealingSpec {
    fn default() -> Self {
        Self {
            unready_grace_seconds: default_unready_grace(),
            max_container_restarts: default_max_restarts(),
        }
    }
}

/// How a spec change replaces a pool's browsers, as a Deployment's rolling update does:
/// new browsers first, an old one drains only once a new one has stayed ready for
/// `minReadySeconds`, and a roll whose new browsers crash stops (the old ones serve on).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Browsers a roll may run above the desired size (the new ones, before old ones go).
    #[serde(default = "one")]
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 100)))]
    pub max_surge: i32,
    /// Browsers a roll may leave unavailable below the desired size.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 100)))]
    pub max_unavailable: i32,
    /// A new browser counts as available once it has stayed ready this long: one that is
    /// ready for a moment and then OOM-killed does not let an old one go.
    #[serde(default = "default_min_ready")]
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 3600)))]
    pub min_ready_seconds: i32,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            max_surge: one(),
            max_unavailable: 0,
            min_ready_seconds: default_min_ready(),
        }
    }
}

fn default_min_ready() -> i32 {
    10
}

fn default_unready_grace() -> i32 {
    180
}

fn default_max_restarts() -> i32 {
    3
}

/// What a pool's spec says to the engine's pool round: its size or how to find one, and
/// when its browsers are replaced. (`webaccel-crds` builds it from a `BrowserPool`.)
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolPolicy {
    /// The size wanted while autoscaling is off.
    pub replicas: i32,
    pub autoscaling: Option<Autoscaling>,
    /// Page workers per browser the spec asks for: a browser's capacity while no agent
    /// has reported its own.
    pub page_workers: Option<i32>,
    pub healing: HealingSpec,
    pub recycle: Option<RecycleSpec>,
    pub rollout: RolloutSpec,
}

/// Size a model's replicas by its own demand (`ModelDeployment.spec.autoscaling`), after
/// Knative's KPA: the average concurrency over a stable window sets the size; a burst
/// that the short panic window sees at twice what the ready replicas are meant to hold
/// scales up at once and holds off scale-down until the stable window has passed; an
/// idle model goes to zero after a grace period when `minReplicas` is 0, and the first
/// request held at the gateway brings it back.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ModelAutoscaling {
    /// 0 lets the model go to zero replicas while idle.
    #[serde(default = "one")]
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 1000)))]
    pub min_replicas: i32,
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1000)))]
    pub max_replicas: i32,
    /// The concurrency one replica is meant to hold: requests in flight and queued on
    /// it, for a text-generation model its active sequences. Unset: 4, or a generation
    /// model's `generation.maxSequences`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 10000)))]
    pub target_per_replica: Option<i32>,
    /// The average over this window sets the size.
    #[serde(default = "default_stable_window")]
    #[cfg_attr(feature = "schema", schemars(range(min = 6, max = 3600)))]
    pub stable_window_seconds: i32,
    /// A burst seen over this (shorter) window scales up at once.
    #[serde(default = "default_panic_window")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 600)))]
    pub panic_window_seconds: i32,
    /// Panic when the panic window asks for this percentage of the ready replicas.
    #[serde(default = "default_panic_threshold")]
    #[cfg_attr(feature = "schema", schemars(range(min = 110, max = 1000)))]
    pub panic_threshold_percent: i32,
    /// With `minReplicas: 0`, how long nothing must be in flight or waiting before the
    /// last replica goes.
    #[serde(default = "default_scale_to_zero_grace")]
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 3600)))]
    pub scale_to_zero_grace_seconds: i32,
}

fn default_stable_window() -> i32 {
    60
}

fn default_panic_window() -> i32 {
    6
}

fn default_panic_threshold() -> i32 {
    200
}

fn default_scale_to_zero_grace() -> i32 {
    30
}
