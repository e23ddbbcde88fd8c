//! Per-model autoscaling against a mocked API server and stand-in agents: a model at zero
//! replicas is woken by the gateway's waiting count on its ModelDeployment, its replicas
//! follow what its agents report in flight, and the pool's browsers follow the replicas.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use serde_json::Value;
use webaccel_agent_client::ModelOnAgent;
use webaccel_api::agent::{AgentStats, ModelStats};
use webaccel_crds::v1alpha1::ModelDeployment;
use webaccel_operator::model::reconcile::reconcile;
use webaccel_operator::pool::build::template_hash;
use webaccel_operator::pool::{observe, round};

fn autoscaled() -> ModelDeployment {
    serde_yaml_ng::from_str(
        "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: minilm, namespace: ml, uid: m-1, generation: 1, finalizers: [webaccel.dev/unload-model]}\nspec:\n  poolRef: {name: web}\n  model: {uri: 'https://h/m.onnx', task: text-embedding}\n  backends: [wasm]\n  autoscaling: {minReplicas: 0, maxReplicas: 2, targetPerReplica: 2}\n",
    )
    .unwrap()
}

/// `md` as the gateway leaves it while `n` of its requests wait: the annotation, fresh.
fn held_at_gateway(mut md: ModelDeployment, n: u64) -> ModelDeployment {
    md.metadata.annotations = Some(
        [
            ("webaccel.dev/waiting-requests".to_owned(), n.to_string()),
            (
                "webaccel.dev/waiting-requests-at".to_owned(),
                Timestamp::now().to_string(),
            ),
        ]
        .into(),
    );
    md
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
    let written = StatusSink::default();
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
    let woken = held_at_gateway(written.applied(&md), 3);
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

fn deployment(name: &str, min: i32, max: i32, status: Value) -> ModelDeployment {
    let mut md: ModelDeployment = serde_yaml_ng::from_str(&format!(
        "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {{name: {name}, namespace: ml, uid: {name}-1, generation: 1, finalizers: [webaccel.dev/unload-model]}}\nspec:\n  poolRef: {{name: web}}\n  model: {{uri: 'https://h/{name}.onnx', task: vision}}\n  backends: [wasm]\n  autoscaling: {{minReplicas: {min}, maxReplicas: {max}, targetPerReplica: 2, stableWindowSeconds: 6, panicWindowSeconds: 2, scaleToZeroGraceSeconds: 0}}\n"
    ))
    .unwrap();
    md.status = Some(serde_json::from_value(status).unwrap());
    md
}

fn loaded_on(pod: &str) -> Value {
    serde_json::json!({"pod": pod, "state": "Loaded", "backend": "wasm"})
}

fn event(check: impl Fn(&str) + Send + 'static) -> Step {
    step_checked("POST", EVENTS, echo(), move |b| {
        assert_eq!(b["reason"], "ScaledModel");
        check(b["note"].as_str().unwrap());
    })
}

/// Two autoscaled models share a pool of two browsers: the busy one grows (and the pool
/// with it), the idle one goes to zero and gives its browser back, and when the load moves
/// to it, it comes back from zero on the requests the gateway holds.
#[tokio::test]
async fn two_models_share_a_pool_the_busy_one_grows_and_the_idle_one_goes_to_zero_and_back() {
    let p = pool(
        "  image: reg/browser:1\n  backends: [wasm]\n  autoscaling: {enabled: true, minReplicas: 1, maxReplicas: 3, targetInFlightPerBrowser: 64, scaleUpStabilizationSeconds: 0}\n",
    );
    let hash = template_hash(&p);
    let hot = deployment(
        "hot",
        1,
        3,
        serde_json::json!({"desiredReplicas": 1, "loadedReplicas": 1, "replicas": [loaded_on("web-a")]}),
    );
    let idle = deployment(
        "idle",
        0,
        2,
        serde_json::json!({"desiredReplicas": 1, "loadedReplicas": 1, "replicas": [loaded_on("web-b")]}),
    );
    let agents = FakeAgents::with_loads(&[]);
    agents
        .stats
        .lock()
        .unwrap()
        .insert("web-a".into(), busy("hot", 10));
    agents.set_load("web-b", 0);
    let was_loaded = |m: &str| ModelOnAgent::Loaded {
        backend: "wasm".into(),
        init_ms: Some(40.0),
        precision: None,
        uri: format!("https://h/{m}.onnx"),
        sha256: String::new(),
        memory_bytes: Some(20 << 20),
        settings: None,
    };
    agents
        .models
        .lock()
        .unwrap()
        .insert(("web-a".into(), "hot".into()), was_loaded("hot"));
    agents
        .models
        .lock()
        .unwrap()
        .insert(("web-b".into(), "idle".into()), was_loaded("idle"));
    let labelled = |name: &str, model: &str| {
        let mut pod = pod(
            name,
            &hash,
            "Running",
            true,
            if name == "web-a" {
                "10.0.0.1"
            } else {
                "10.0.0.2"
            },
        );
        pod.metadata
            .labels
            .get_or_insert_default()
            .insert(format!("webaccel.dev/model.{model}"), "loaded".into());
        pod
    };

    let steps = vec![
        // hot: 10 in flight on one replica, 2 per replica: panic, up to its maximum of 3.
        event(|note| {
            assert!(
                note.starts_with("3 replicas: panic: 10.0 in flight"),
                "{note}"
            )
        }),
        status_step(&hot, |b| {
            let s = &b["status"];
            assert_eq!(s["desiredReplicas"], 3, "{s:#}");
            assert_eq!(s["autoscaler"]["panicking"], true);
            assert_eq!(s["autoscaler"]["inFlight"], 10);
            // web-b takes the second; the third waits for a browser the pool adds.
            assert_eq!(s["replicas"][1]["pod"], "web-b");
            assert_eq!(s["replicas"][1]["state"], "Loading");
            assert_eq!(cond(s, "Degraded")["reason"], "Unplaceable");
        }),
        // idle: nothing in flight or waiting, no grace: to zero, unloaded, unlabelled.
        event(|note| assert!(note.starts_with("0 replicas: "), "{note}")),
        step_checked(
            "PATCH",
            &format!("{PODS}/web-b"),
            (
                200,
                serde_json::to_value(pod("web-b", &hash, "Running", true, "")).unwrap(),
            ),
            |b| {
                assert_eq!(
                    b["metadata"]["labels"]["webaccel.dev/model.idle"],
                    Value::Null
                );
            },
        ),
        status_step(&idle, |b| {
            let s = &b["status"];
            assert_eq!(s["desiredReplicas"], 0, "{s:#}");
            assert_eq!(s["loadedReplicas"], 0);
            assert_eq!(cond(s, "Ready")["status"], "True");
        }),
        // The load moves: 4 requests for idle wait at the gateway: back from zero to 2
        // (kube's recorder folds a second ScaledModel on idle into the first's series).
        step("PATCH", &format!("{EVENTS}/*"), echo()),
        status_step(&idle, |b| {
            let s = &b["status"];
            assert_eq!(s["desiredReplicas"], 2, "{s:#}");
            assert_eq!(s["autoscaler"]["waiting"], 4);
        }),
    ];
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(labelled("web-a", "hot"));
    world.pod(labelled("web-b", "idle"));

    reconcile(Arc::new(hot.clone()), world.ctx.clone())
        .await
        .unwrap();
    reconcile(Arc::new(idle.clone()), world.ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        agents.load_calls(),
        ["load web-b hot wasm", "unload web-b idle"]
    );

    // The pool follows the busy model: three browsers for its three replicas.
    let mut hot_now = hot.clone();
    hot_now.status.as_mut().unwrap().desired_replicas = 3;
    let mut idle_now = idle.clone();
    idle_now.status =
        Some(serde_json::from_value(serde_json::json!({"desiredReplicas": 0})).unwrap());
    world.model(&hot_now);
    world.model(&idle_now);
    // The watch brings web-b without idle's label.
    world.pod(pod("web-b", &hash, "Running", true, "10.0.0.2"));
    let now = Timestamp::now();
    let view = observe::view(&world.ctx, &p, &hash, now);
    let decided = round::build(&world.ctx, &p, &view, now);
    assert_eq!(decided.desired(), 3, "{:?}", decided.decided.size);
    assert_eq!(decided.plan().create, 1);

    // The load moves to idle: the gateway holds its requests and says so on it.
    agents.clear_calls();
    agents
        .models
        .lock()
        .unwrap()
        .remove(&("web-b".into(), "idle".into()));
    let woken = held_at_gateway(idle_now.clone(), 4);
    reconcile(Arc::new(woken), world.ctx.clone()).await.unwrap();
    let mut loads = agents.load_calls();
    loads.sort();
    assert_eq!(loads, ["load web-a idle wasm", "load web-b idle wasm"]);
    api.await.unwrap();
}

/// Scale-down loads elsewhere first: an idle browser that holds a model's only loaded
/// replica is cordoned (it serves on, takes no new replica), and drained only once the
/// model is loaded on a browser that stays.
#[tokio::test]
async fn a_browser_holding_a_models_only_copy_is_cordoned_before_it_drains() {
    let p = pool("  image: reg/browser:1\n  backends: [wasm]\n  replicas: 1\n");
    let hash = template_hash(&p);
    let only_on_a = deployment(
        "hot",
        1,
        1,
        serde_json::json!({"desiredReplicas": 1, "loadedReplicas": 1, "replicas": [loaded_on("web-a")]}),
    );
    let (client, _api) = mock_api(vec![]);
    let agents = FakeAgents::with_loads(&[("web-a", 0), ("web-b", 3)]);
    let mut world = World::new(client, agents);
    world.pool_with_owned(&p);
    world.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));
    world.pod(pod("web-b", &hash, "Running", true, "10.0.0.2"));
    world.model(&only_on_a);
    let decide = |world: &World| {
        let now = Timestamp::now();
        let mut view = observe::view(&world.ctx, &p, &hash, now);
        for b in &mut view.browsers {
            b.view.stats = Some(busy("hot", if b.view.name == "web-a" { 0 } else { 3 }));
        }
        round::build(&world.ctx, &p, &view, now)
    };
    let r = decide(&world);
    assert_eq!(r.plan().cordon, ["web-a"], "{:?}", r.plan());
    assert!(r.plan().drain.is_empty());
    // Cordoned (the mark the reconcile writes), the model loads on web-b: still waiting
    // while that copy loads, drained once it is loaded.
    let mut cordoned = pod("web-a", &hash, "Running", true, "10.0.0.1");
    cordoned.metadata.annotations = Some(
        [(
            "webaccel.dev/cordoned".to_owned(),
            Timestamp::now().to_string(),
        )]
        .into(),
    );
    world.pod(cordoned);
    let r = decide(&world);
    assert!(
        r.plan().cordon.is_empty() && r.plan().drain.is_empty(),
        "{:?}",
        r.plan()
    );
    let mut moved = only_on_a.clone();
    moved.status = Some(
        serde_json::from_value(
            serde_json::json!({"desiredReplicas": 1, "loadedReplicas": 2,
            "replicas": [loaded_on("web-b"), loaded_on("web-a")]}),
        )
        .unwrap(),
    );
    world.model(&moved);
    let r = decide(&world);
    let drained: Vec<&str> = r.plan().drain.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(drained, ["web-a"]);
}
