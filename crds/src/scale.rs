//! The replicas a `ModelDeployment` wants this round, the same for pods and local
//! processes: `spec.replicas`, or the engine's per-model autoscaler
//! ([`webaccel_engine::model_scale`]) fed with what the pool's agents report for the
//! deployment's models and what the gateway holds for it; and what the pool's browsers
//! must be to hold every deployment's replicas ([`browsers_needed`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use webaccel_api::agent::AgentStats;
use webaccel_engine::model_scale::{ModelLoad, ModelScaler};

use crate::labels;
use crate::v1alpha1::{ModelAutoscalerStatus, ModelDeployment, ReplicaState};

/// The replicas wanted, and with autoscaling the autoscaler's status to report.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Wanted {
    pub desired: i32,
    pub autoscaler: Option<ModelAutoscalerStatus>,
    /// With autoscaling: the decision's bounded cause, for metrics (see
    /// [`webaccel_engine::model_scale::ModelScale::cause`]).
    pub cause: Option<&'static str>,
}

/// One browser of the pool as the autoscaler reads it: its name and what its agent
/// answered (`None`: it did not).
pub type Answer<'a> = (&'a str, Option<&'a AgentStats>);

/// Requests of the deployment's models (`units`: its file, or each stage) in flight and
/// queued over the agents that answered. A request passes every stage of a cut model,
/// so the busiest stage counts.
pub fn in_flight(units: &[String], answers: &[Answer<'_>]) -> u64 {
    units
        .iter()
        .map(|u| {
            answers
                .iter()
                .filter_map(|(_, s)| s.and_then(|s| s.models.get(u)))
                .map(|m| m.outstanding)
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0)
}

/// Decides `md`'s replicas at `now`. `answers` are the pool's browsers; `waiting` the
/// requests the gateway holds for the deployment; `scaler` its autoscaler's memory.
pub fn wanted(
    md: &ModelDeployment,
    scaler: &mut ModelScaler,
    answers: &[Answer<'_>],
    waiting: u64,
    now: Timestamp,
) -> Wanted {
    let Some(policy) = &md.spec.autoscaling else {
        return Wanted {
            desired: md.spec.fixed_replicas().unwrap_or(1),
            autoscaler: None,
            cause: None,
        };
    };
    let old = md.status.clone().unwrap_or_default();
    let name = md.metadata.name.clone().unwrap_or_default();
    let units: Vec<String> = md
        .spec
        .agent_models(&name)
        .into_iter()
        .map(|m| m.name)
        .collect();
    // Replicas the last round saw loaded whose agent did not answer now.
    let loaded: Vec<&str> = old
        .replicas
        .iter()
        .chain(old.stages.iter().flat_map(|s| &s.replicas))
        .filter(|r| r.state == ReplicaState::Loaded)
        .map(|r| r.pod.as_str())
        .collect();
    let silent = loaded
        .iter()
        .filter(|pod| !answers.iter().any(|(b, s)| b == *pod && s.is_some()))
        .count();
    let load = ModelLoad {
        in_flight: in_flight(&units, answers),
        waiting,
        ready: old.loaded_replicas,
        silent: i32::try_from(silent).unwrap_or(i32::MAX),
    };
    #[allow(clippy::cast_precision_loss)]
    let now_s = now.as_millisecond() as f64 / 1000.0;
    let current = old.desired_replicas;
    let d = scaler.decide(policy, md.spec.target_per_replica(), now_s, current, load);
    let previous = old.autoscaler.unwrap_or_default();
    let changed = d.desired != current || md.status.is_none();
    Wanted {
        desired: d.desired,
        cause: Some(d.cause),
        autoscaler: Some(ModelAutoscalerStatus {
            in_flight: load.in_flight,
            waiting,
            panicking: d.panicking,
            last_scale_time: if changed {
                Some(Time(now))
            } else {
                previous.last_scale_time
            },
            last_scale_reason: if changed {
                Some(d.reason.clone())
            } else {
                previous.last_scale_reason
            },
            reason: d.reason,
        }),
    }
}

/// Requests waiting at the gateway, from an object's `webaccel.dev/waiting-requests`
/// annotation if still fresh: on a pool, for any of its models while it has no ready
/// browser; on a ModelDeployment, for that model while no replica serves it.
pub fn waiting_requests(
    annotations: &std::collections::BTreeMap<String, String>,
    now: Timestamp,
) -> u64 {
    let Some(n) = annotations
        .get(labels::WAITING_REQUESTS)
        .and_then(|v| v.trim().parse::<u64>().ok())
    else {
        return 0;
    };
    let fresh = annotations
        .get(labels::WAITING_REQUESTS_AT)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .is_none_or(|t| now.as_second() - t.as_second() <= labels::WAITING_REQUESTS_TTL_SECONDS);
    if fresh { n } else { 0 }
}

/// Room left on a browser for models: the pool's memory `budget` less what its browsers
/// use now and what its decoders' KV caches may still take (its agent's last answer);
/// `None` with no budget or no answer.
pub fn room(budget: Option<u64>, stats: Option<&AgentStats>) -> Option<u64> {
    Some(budget?.saturating_sub(stats?.committed_bytes()?))
}

/// What a pool's deployments ask of its browsers (as their last rounds reported): a
/// browser holds one replica of a model, and each stage of a cut model wants browsers of
/// its own, so at least the most any one deployment wants (its desired replicas times its
/// stages); and, beyond the browsers it has, one more for each replica that fits on none
/// for memory (the most of any deployment: one new browser takes a replica of each).
pub fn pool_demand<'a>(deployments: impl IntoIterator<Item = &'a ModelDeployment>) -> ModelDemand {
    let mut demand = ModelDemand::default();
    for md in deployments
        .into_iter()
        .filter(|md| md.metadata.deletion_timestamp.is_none())
    {
        let Some(s) = md.status.as_ref() else {
            continue;
        };
        let stages = md.spec.stages.as_ref().map_or(1, Vec::len);
        let browsers = s
            .desired_replicas
            .saturating_mul(i32::try_from(stages).unwrap_or(i32::MAX));
        demand.browsers = demand.browsers.max(browsers);
        demand.without_room = demand.without_room.max(s.replicas_without_room);
    }
    demand
}

/// Per browser, the models (or stages) whose only loaded replica is on it, from the
/// deployments' last statuses: a scale-down cordons such a browser until they are
/// loaded elsewhere.
pub fn sole_copies<'a>(
    deployments: impl IntoIterator<Item = &'a ModelDeployment>,
) -> std::collections::BTreeMap<String, u32> {
    let mut out = std::collections::BTreeMap::new();
    for s in deployments.into_iter().filter_map(|md| md.status.as_ref()) {
        let units = std::iter::once(&s.replicas).chain(s.stages.iter().map(|st| &st.replicas));
        for replicas in units {
            let mut loaded = replicas.iter().filter(|r| r.state == ReplicaState::Loaded);
            if let (Some(only), None) = (loaded.next(), loaded.next()) {
                *out.entry(only.pod.clone()).or_insert(0) += 1;
            }
        }
    }
    out
}

/// See [`pool_demand`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelDemand {
    /// Browsers the replicas need, one replica of a model per browser.
    pub browsers: i32,
    /// Browsers to add for replicas that fit on none for memory.
    pub without_room: i32,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;
    use webaccel_api::agent::ModelStats;

    fn md(spec: serde_json::Value, status: serde_json::Value) -> ModelDeployment {
        serde_json::from_value(json!({
            "apiVersion": "webaccel.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": "ns", "generation": 1},
            "spec": spec, "status": status,
        }))
        .unwrap()
    }

    fn stats(model: &str, outstanding: u64) -> AgentStats {
        let mut s = AgentStats::default();
        s.models.insert(
            model.into(),
            ModelStats {
                outstanding,
                ..ModelStats::default()
            },
        );
        s
    }

    #[test]
    fn fixed_replicas_are_the_spec_and_autoscaled_ones_follow_the_agents_and_the_gateway() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let fixed = md(
            json!({"poolRef": {"name": "p"}, "model": {"uri": "https://m/x.onnx", "task": "vision"}, "replicas": 3}),
            json!({}),
        );
        let mut scaler = ModelScaler::default();
        assert_eq!(wanted(&fixed, &mut scaler, &[], 0, now).desired, 3);
        let auto = md(
            json!({"poolRef": {"name": "p"}, "model": {"uri": "https://m/x.onnx", "task": "vision"},
                   "autoscaling": {"minReplicas": 0, "maxReplicas": 5, "targetPerReplica": 2}}),
            json!({"desiredReplicas": 1, "loadedReplicas": 1,
                   "replicas": [{"pod": "a", "state": "Loaded"}, {"pod": "b", "state": "Loaded"}]}),
        );
        let (a, b) = (stats("m", 5), stats("other", 9));
        let answers = [("a", Some(&a)), ("b", Some(&b))];
        let w = wanted(&auto, &mut ModelScaler::default(), &answers, 2, now);
        // 5 in flight on a plus 2 waiting at the gateway, 2 per replica: 4.
        assert_eq!(w.desired, 4);
        let status = w.autoscaler.unwrap();
        assert_eq!((status.in_flight, status.waiting), (5, 2));
        assert_eq!(status.last_scale_time, Some(Time(now)));
        // b did not answer: its replica's load is unknown, so nothing goes down.
        let idle = [("a", Some(&a)), ("b", None)];
        let mut held = auto.clone();
        held.status.as_mut().unwrap().desired_replicas = 2;
        let w = wanted(&held, &mut ModelScaler::default(), &idle, 0, now);
        assert_eq!(w.desired, 3, "{:?}", w.autoscaler);
    }

    #[test]
    fn a_browsers_room_is_its_budget_less_what_it_uses_and_its_decoders_may_take() {
        let mut s = AgentStats {
            browser_memory_bytes: Some(300),
            ..AgentStats::default()
        };
        assert_eq!(room(Some(1000), Some(&s)), Some(700));
        s.reserved_bytes = 500;
        assert_eq!(room(Some(1000), Some(&s)), Some(200));
        s.reserved_bytes = 900;
        assert_eq!(room(Some(1000), Some(&s)), Some(0));
        assert_eq!(room(None, Some(&s)), None);
        s.browser_memory_bytes = None;
        assert_eq!(room(Some(1000), Some(&s)), None, "use unknown");
    }

    #[test]
    fn a_pool_needs_the_most_any_deployment_wants_times_its_stages() {
        let one = md(
            json!({"poolRef": {"name": "p"}, "model": {"uri": "https://m/x.onnx", "task": "vision"}}),
            json!({"desiredReplicas": 3}),
        );
        let staged = md(
            json!({"poolRef": {"name": "p"}, "stages": [{"uri": "https://m/0.onnx", "task": "vision"}, {"uri": "https://m/1.onnx", "task": "vision"}]}),
            json!({"desiredReplicas": 2}),
        );
        assert_eq!(pool_demand([&one]).browsers, 3);
        assert_eq!(pool_demand([&one, &staged]).browsers, 4);
        assert_eq!(pool_demand([]), ModelDemand::default());
        let mut full = one.clone();
        full.status.as_mut().unwrap().replicas_without_room = 2;
        assert_eq!(
            pool_demand([&one, &full]),
            ModelDemand {
                browsers: 3,
                without_room: 2
            }
        );
    }

    #[test]
    fn a_browser_with_a_models_only_loaded_replica_is_known() {
        let one = md(
            json!({"poolRef": {"name": "p"}, "model": {"uri": "https://m/x.onnx", "task": "vision"}}),
            json!({"replicas": [{"pod": "a", "state": "Loaded"}, {"pod": "b", "state": "Loading"}]}),
        );
        let two = md(
            json!({"poolRef": {"name": "p"}, "model": {"uri": "https://m/y.onnx", "task": "vision"}}),
            json!({"replicas": [{"pod": "a", "state": "Loaded"}, {"pod": "b", "state": "Loaded"}]}),
        );
        assert_eq!(
            sole_copies([&one, &two]),
            std::collections::BTreeMap::from([("a".to_owned(), 1)])
        );
    }

    #[test]
    fn the_gateways_waiting_count_counts_only_while_fresh() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let at = |s: i64| Timestamp::from_second(s).unwrap().to_string();
        let a = |at: String| {
            std::collections::BTreeMap::from([
                (labels::WAITING_REQUESTS.to_owned(), "7".to_owned()),
                (labels::WAITING_REQUESTS_AT.to_owned(), at),
            ])
        };
        assert_eq!(waiting_requests(&a(at(1_800_000_000 - 10)), now), 7);
        assert_eq!(waiting_requests(&a(at(1_800_000_000 - 600)), now), 0);
    }
}
