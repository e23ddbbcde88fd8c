//! The operator's Prometheus metrics: reconciles, their duration and errors, pool sizes and
//! scale decisions.

use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    controller: &'static str,
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    namespace: String,
    pool: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScaleLabel {
    namespace: String,
    pool: String,
    direction: &'static str,
    /// Bounded: `spec`, `load`, `idle`, `waiting_requests`, `silent_browsers`.
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    namespace: String,
    model: String,
    /// `desired` or `loaded`.
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelScaleLabel {
    namespace: String,
    model: String,
    direction: &'static str,
    /// Bounded: `load`, `panic`, `waiting_requests`, `idle`, `scale_to_zero_grace`,
    /// `silent_replicas`.
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealLabel {
    namespace: String,
    pool: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    reconciles: Family<ControllerLabel, Counter>,
    durations: Family<ControllerLabel, Histogram>,
    errors: Family<ErrorLabel, Counter>,
    pool_size: Family<PoolLabel, Gauge>,
    scale_decisions: Family<ScaleLabel, Counter>,
    heals: Family<HealLabel, Counter>,
    model_replicas: Family<ModelLabel, Gauge>,
    model_scale_decisions: Family<ModelScaleLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("webaccel_operator");
        let reconciles = Family::default();
        let durations = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ])
        });
        let errors = Family::default();
        let pool_size = Family::default();
        let scale_decisions = Family::default();
        let heals = Family::default();
        let model_replicas = Family::default();
        let model_scale_decisions = Family::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Time per reconcile",
            durations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error kind",
            errors.clone(),
        );
        registry.register(
            "pool_browsers",
            "Browser pods per pool (desired, current, ready)",
            pool_size.clone(),
        );
        registry.register(
            "scale_decisions",
            "Pool size changes, by direction and cause",
            scale_decisions.clone(),
        );
        registry.register("heals", "Broken browser pods replaced", heals.clone());
        registry.register(
            "model_replicas",
            "Replicas per ModelDeployment (desired, loaded)",
            model_replicas.clone(),
        );
        registry.register(
            "model_scale_decisions",
            "ModelDeployment replica changes by its autoscaler, by direction and cause",
            model_scale_decisions.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            reconciles,
            durations,
            errors,
            pool_size,
            scale_decisions,
            heals,
            model_replicas,
            model_scale_decisions,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, controller: &'static str, took: Duration) {
        let l = ControllerLabel { controller };
        self.reconciles.get_or_create(&l).inc();
        self.durations.get_or_create(&l).observe(took.as_secs_f64());
    }

    pub fn failed(&self, controller: &'static str, error: &'static str) {
        self.errors
            .get_or_create(&ErrorLabel { controller, error })
            .inc();
    }

    pub fn pool_sizes(&self, namespace: &str, pool: &str, desired: i32, current: i32, ready: i32) {
        for (kind, v) in [("desired", desired), ("current", current), ("ready", ready)] {
            let l = PoolLabel {
                namespace: namespace.into(),
                pool: pool.into(),
                kind,
            };
            self.pool_size.get_or_create(&l).set(i64::from(v));
        }
    }

    pub fn scaled(&self, namespace: &str, pool: &str, up: bool, cause: &'static str) {
        let direction = if up { "up" } else { "down" };
        let l = ScaleLabel {
            namespace: namespace.into(),
            pool: pool.into(),
            direction,
            cause,
        };
        self.scale_decisions.get_or_create(&l).inc();
    }

    pub fn model_replicas(&self, namespace: &str, model: &str, desired: i32, loaded: i32) {
        for (kind, v) in [("desired", desired), ("loaded", loaded)] {
            let l = ModelLabel {
                namespace: namespace.into(),
                model: model.into(),
                kind,
            };
            self.model_replicas.get_or_create(&l).set(i64::from(v));
        }
    }

    pub fn model_scaled(&self, namespace: &str, model: &str, up: bool, cause: &'static str) {
        let l = ModelScaleLabel {
            namespace: namespace.into(),
            model: model.into(),
            direction: if up { "up" } else { "down" },
            cause,
        };
        self.model_scale_decisions.get_or_create(&l).inc();
    }

    /// Drops the gauges of a deleted ModelDeployment.
    pub fn forget_model(&self, namespace: &str, model: &str) {
        for kind in ["desired", "loaded"] {
            self.model_replicas.remove(&ModelLabel {
                namespace: namespace.into(),
                model: model.into(),
                kind,
            });
        }
    }

    pub fn healed(&self, namespace: &str, pool: &str) {
        self.heals
            .get_or_create(&HealLabel {
                namespace: namespace.into(),
                pool: pool.into(),
            })
            .inc();
    }

    /// Drops the gauges of a deleted pool so they do not linger at their last value.
    pub fn forget_pool(&self, namespace: &str, pool: &str) {
        for kind in ["desired", "current", "ready"] {
            self.pool_size.remove(&PoolLabel {
                namespace: namespace.into(),
                pool: pool.into(),
                kind,
            });
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
