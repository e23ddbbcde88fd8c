//! Per-model autoscaling against a mocked API server and stand-in agents: a model at zero
//! replicas is woken by the gateway's waiting count on its ModelDeployment, its replicas
//! follow what its agents report in flight, and the pool's browsers follow the replicas.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use serde_json::Value;
use webaccel_api::agent::{AgentStats, ModelStats};
use webaccel_crds::v1alpha1::{ModelDeployment, ModelDeploymentStatus};
use webaccel_operator::model::reconcile::reconcile;
use webaccel_operator::pool::build::template_hash;
use webaccel_operator::pool::{observe, round};

const MODEL: &str = "/apis/webaccel.dev/v1alpha1/namespaces/ml/modeldeployments/minilm";

fn autoscaled() -> ModelDeployment {
    serde_yaml_ng::from_str(
        "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: minilm, namespace: ml, uid: m-1, generation: 1, finalizers: [webaccel.dev/unload-model]}\nspec:\n  poolRef: {name: web}\n  model: {uri: 'https://h/m.onnx', task: text-embedding}\n  backends: [wasm]\n  autoscaling: {minReplicas: 0, maxReplicas: 2, targetPerReplica: 2}\n",
    )
    .unwrap()
}

/// The status a PATCH of `MODEL/status` carried, kept so the next look starts from it.
#[derive(Clone, Default)]
struct Written(Arc<std::sync::Mutex<Vec<Value>>>);

impl Written {
    fn step(&self, md: &ModelDeployment, check: impl Fn(&Value) + Send + 'static) -> Step {
        let written = self.clone();
        step_checked(
            "PATCH",
            &format!("{MODEL}/status"),
            (200, serde_json::to_value(md).unwrap()),
            move |b| {
                check(b);
                written.0.lock().unwrap().push(b.clone());
            },
        )
    }

    /// `md` as the watch cache shows it after the last status write.
    fn applied(&self, md: &ModelDeployment) -> ModelDeployment {
        let mut md = md.clone();
        if let Some(b) = self.0.lock().unwrap().last() {
            md.status =
                Some(serde_json::from_value::<ModelDeploymentStatus>(b["status"].clone()).unwrap());
        }
        md
    }
}

fn busy(model: &str, outstanding: u64) -> AgentStats {
    let mut s = AgentStats {
        healthy: true,
        ready: true,
        outstanding,
        ..AgentStats::default()
    };
    s.models.insert(
        model.to_owned(),
        ModelStats {
            outstanding,
            ..ModelStats::default()
        },
    );
    s
}

#[tokio::test]
async fn a_model_at_zero_is_woken_by_waiting_requests_and_the_pool_follows_its_replicas() {
    let p = pool(
        "  image: reg/browser:1\n  backends: [wasm]\n  autoscaling: {enabled: true, minReplicas: 0, maxReplicas: 4, scaleUpStabilizationSeconds: 0}\n",
    );
    let hash = template_hash(&p);
    let md = autoscaled();
    let written = Written::default();
    let steps = vec![
        // Nothing waits and nothing runs: the model stays at zero, and is Ready at 0/0.
        written.step(&md, |b| {
            let s = &b["status"];
            assert_eq!(s["desiredReplicas"], 0, "{s:#}");
            assert_eq!(s["autoscaler"]["inFlight"], 0);
            assert!(s.get("replicas").is_none(), "{s:#}");
            assert_eq!(cond(s, "Ready")["status"], "True");
        }),
        // Three requests wait at the gateway: two replicas at once (2 per replica), an
        // Event says so...
        step_checked("POST", EVENTS, echo(), |b| {
            assert_eq!(b["reason"], "ScaledModel");
            assert_eq!(b["regarding"]["kind"], "ModelDeployment");
            let note = b["note"].as_str().unwrap();
            assert!(
                note.starts_with("2 replicas: 3 requests waiting and no replica"),
                "{note}"
            );
        }),
        // ...and the status.
        written.step(&md, |b| {
            let s = &b["status"];
            assert_eq!(s["desiredReplicas"], 2, "{s:#}");
            assert_eq!(s["autoscaler"]["waiting"], 3);
            let reason = s["autoscaler"]["lastScaleReason"].as_str().unwrap();
            assert!(reason.contains("3 requests waiting"), "{reason}");
            assert_eq!(s["replicas"].as_array().unwrap().len(), 1, "{s:#}");
            assert_eq!(s["replicas"][0]["state"], "Loading");
            assert_eq!(cond(s, "Ready")["status"], "False");
        }),
    ];
    let agents = FakeAgents::with_loads(&[("web-a", 0)]);
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));

    let action = reconcile(Arc::new(md.clone()), world.ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(2)),
        "an autoscaled model samples its demand every 2 s"
    );
    assert!(agents.load_calls().is_empty(), "{:?}", agents.load_calls());

    // The gateway writes the waiting count on the deployment.
    let mut woken = written.applied(&md);
    woken.metadata.annotations = Some(
        [
            ("webaccel.dev/waiting-requests".to_owned(), "3".to_owned()),
            (
                "webaccel.dev/waiting-requests-at".to_owned(),
                Timestamp::now().to_string(),
            ),
        ]
        .into(),
    );
    reconcile(Arc::new(woken.clone()), world.ctx.clone())
        .await
        .unwrap();
    // One browser: one replica loads, the other cannot be placed yet.
    assert_eq!(agents.load_calls(), ["load web-a minilm wasm"]);
    api.await.unwrap();
    let metrics = world.ctx.metrics.encode();
    assert!(
        metrics.contains(
            r#"webaccel_operator_model_scale_decisions_total{namespace="ml",model="minilm",direction="up",cause="waiting_requests"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"webaccel_operator_model_replicas{namespace="ml",model="minilm",kind="desired"} 2"#
        ),
        "{metrics}"
    );

    // The pool follows: the model wants two replicas, one per browser, so two browsers,
    // though the one it has is idle.
    world.model(&written.applied(&woken));
    let now = Timestamp::now();
    let view = observe::view(&world.ctx, &p, &hash, now);
    let decided = round::build(&world.ctx, &p, &view, now);
    assert_eq!(decided.desired(), 2, "{:?}", decided.decided.size);
    assert_eq!(decided.decided.size.cause, "model_replicas");
    assert_eq!(decided.plan().create, 1);

    // Requests in flight on the model's replica are its demand (4 in flight: 2 replicas).
    agents
        .stats
        .lock()
        .unwrap()
        .insert("web-a".into(), busy("minilm", 4));
    let loaded = written.applied(&woken);
    let labelled = step(
        "PATCH",
        &format!("{PODS}/web-a"),
        (
            200,
            serde_json::to_value(pod("web-a", &hash, "Running", true, "")).unwrap(),
        ),
    );
    let (client, api) = mock_api(vec![
        labelled,
        written.step(&md, |b| {
            let s = &b["status"];
            assert_eq!(s["autoscaler"]["inFlight"], 4, "{s:#}");
            assert_eq!(s["desiredReplicas"], 2);
            assert_eq!(s["loadedReplicas"], 1);
        }),
    ]);
    let mut world2 = World::new(client, agents.clone());
    world2.pool_with_owned(&p);
    world2.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));
    reconcile(Arc::new(loaded), world2.ctx.clone())
        .await
        .unwrap();
    api.await.unwrap();
}
