//! A ModelDeployment with `ensemble` against a mocked API server and stand-in agents: it
//! is loaded (as an ensemble naming its steps) only on the browser that holds every step
//! loaded, labelled and reported like any model; with no such browser the status says
//! what it waits for and nothing is loaded.

use crate::common::*;
use serde_json::json;
use webaccel_agent_client::ModelOnAgent;
use webaccel_crds::v1alpha1::ModelDeployment;
use webaccel_operator::model::reconcile::reconcile;
use webaccel_operator::pool::build::template_hash;

const MODEL: &str = "/apis/webaccel.dev/v1alpha1/namespaces/ml/modeldeployments/pipe";

fn ensemble() -> ModelDeployment {
    serde_yaml_ng::from_str(
        "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: pipe, namespace: ml, uid: m-3, generation: 1, finalizers: [webaccel.dev/unload-model]}\nspec:\n  poolRef: {name: web}\n  backends: [wasm]\n  replicas: 1\n  ensemble:\n    task: vision\n    outputs: [OUT]\n    steps:\n    - {model: first, inputMap: {x: IN}, outputMap: {h: H}}\n    - {model: second, inputMap: {h: H}, outputMap: {y: OUT}}\n",
    )
    .unwrap()
}

fn loaded() -> ModelOnAgent {
    ModelOnAgent::Loaded {
        backend: "wasm".into(),
        init_ms: Some(5.0),
        precision: None,
        uri: String::new(),
        sha256: String::new(),
        memory_bytes: None,
        settings: None,
    }
}

fn world_with(agents: &std::sync::Arc<FakeAgents>, client: kube::Client) -> World {
    let p = pool("  image: reg/browser:1\n  replicas: 2\n");
    let hash = template_hash(&p);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));
    world.pod(pod("web-b", &hash, "Running", true, "10.0.0.2"));
    world
}

#[tokio::test]
async fn an_ensemble_goes_only_where_every_step_is_loaded() {
    let md = ensemble();
    let agents = FakeAgents::with_loads(&[]);
    {
        let mut m = agents.models.lock().unwrap();
        // web-b holds both steps; web-a only the second.
        m.insert(("web-a".into(), "second".into()), loaded());
        m.insert(("web-b".into(), "first".into()), loaded());
        m.insert(("web-b".into(), "second".into()), loaded());
    }
    let steps = vec![step_checked(
        "PATCH",
        &format!("{MODEL}/status"),
        (200, serde_json::to_value(&md).unwrap()),
        |b| {
            let s = &b["status"];
            assert_eq!(s["replicas"][0]["pod"], "web-b", "{s}");
            assert_eq!(s["replicas"][0]["state"], "Loading", "{s}");
            assert_eq!(s["replicas"].as_array().unwrap().len(), 1, "{s}");
        },
    )];
    let (client, api) = mock_api(steps);
    let world = world_with(&agents, client);
    reconcile(std::sync::Arc::new(md), world.ctx.clone())
        .await
        .unwrap();
    api.await.unwrap();
    assert_eq!(
        agents.load_calls(),
        ["load web-b pipe wasm ensemble[first,second]"]
    );
}

#[tokio::test]
async fn without_a_browser_holding_every_step_it_waits_and_says_so() {
    let md = ensemble();
    let agents = FakeAgents::with_loads(&[]);
    agents
        .models
        .lock()
        .unwrap()
        .insert(("web-a".into(), "first".into()), loaded());
    let steps = vec![step_checked(
        "PATCH",
        &format!("{MODEL}/status"),
        (200, serde_json::to_value(&md).unwrap()),
        |b| {
            let s = &b["status"];
            assert_eq!(s["loadedReplicas"], 0, "{s}");
            let degraded = cond(s, "Degraded");
            assert_eq!(degraded["status"], "True", "{s}");
            assert_eq!(
                degraded["message"],
                json!("1 replicas wait for browsers holding every step loaded (first, second)"),
                "{s}"
            );
        },
    )];
    let (client, api) = mock_api(steps);
    let world = world_with(&agents, client);
    reconcile(std::sync::Arc::new(md), world.ctx.clone())
        .await
        .unwrap();
    api.await.unwrap();
    assert!(agents.load_calls().is_empty(), "{:?}", agents.calls());
}
