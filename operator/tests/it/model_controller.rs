//! The ModelDeployment controller against a mocked API server and stand-in agents; the
//! watch caches are filled by hand in the order a real kubelet and agent produce events.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use webaccel_agent_client::ModelOnAgent;
use webaccel_api::ErrorCategory;
use webaccel_crds::v1alpha1::ModelDeployment;
use webaccel_operator::model::reconcile::reconcile;
use webaccel_operator::pool::build::template_hash;

const MODEL: &str = "/apis/webaccel.dev/v1alpha1/namespaces/ml/modeldeployments/minilm";

fn model(backends: &str) -> ModelDeployment {
    serde_yaml_ng::from_str(&format!(
        "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {{name: minilm, namespace: ml, uid: m-1, generation: 2, finalizers: [webaccel.dev/unload-model]}}\nspec:\n  poolRef: {{name: web}}\n  model: {{uri: 'https://h/m.onnx', task: text-embedding}}\n  backends: {backends}\n  replicas: 1\n"
    ))
    .unwrap()
}

fn label_step(pod_name: &str, hash: &str, value: Value) -> Step {
    step_checked(
        "PATCH",
        &format!("{PODS}/{pod_name}"),
        (
            200,
            serde_json::to_value(pod(pod_name, hash, "Running", true, "")).unwrap(),
        ),
        move |b| {
            assert_eq!(
                b,
                &json!({"metadata": {"labels": {"webaccel.dev/model.minilm": value}}})
            );
        },
    )
}

#[tokio::test]
async fn a_model_loads_in_the_background_then_its_browser_is_labelled_and_reported() {
    let p = pool("  image: reg/browser:1\n  replicas: 2\n  backends: [webgpu, wasm]\n");
    let md = model("[webnn, webgpu]");
    let hash = template_hash(&p);
    let steps = vec![
        // First look: the load starts on the agent (which answers at once) and is reported.
        status_step(&md, |b| {
            assert_eq!(b["status"]["replicas"][0]["state"], "Loading");
            assert_eq!(b["status"]["replicas"][0]["backend"], "webgpu");
            assert_eq!(cond(&b["status"], "Ready")["reason"], "Loading");
        }),
        // Next look (a couple of seconds later): the agent has it loaded.
        label_step("web-a", &hash, json!("loaded")),
        status_step(&md, |b| {
            let s = &b["status"];
            assert_eq!(s["loadedReplicas"], 1);
            assert_eq!(s["backend"], "webgpu");
            assert_eq!(
                s["precision"], "fp32",
                "detected by the agent, shown in status"
            );
            assert_eq!(s["replicas"][0]["precision"], "fp32");
            assert_eq!(s["replicas"][0]["initMs"], 40.0);
            assert_eq!(cond(s, "Ready")["status"], "True");
        }),
    ];
    let agents = FakeAgents::with_loads(&[]);
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));
    world.pod(pod("web-b", &hash, "Running", true, "10.0.0.2"));
    let action = reconcile(Arc::new(md.clone()), world.ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(2)),
        "a loading model is looked at again soon"
    );
    // WebNN is not in the pool's backends and not detected: WebGPU, the next choice, is asked for.
    assert!(
        agents
            .calls()
            .contains(&"load web-a minilm webgpu".to_owned()),
        "{:?}",
        agents.calls()
    );
    let action = reconcile(Arc::new(md), world.ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    api.await.unwrap();
    assert_eq!(
        agents
            .calls()
            .iter()
            .filter(|c| c.starts_with("load"))
            .count(),
        1
    );
}

/// A text-generation deployment is placed like any other model; its load carries the
/// tokenizer and the generation settings of the spec.
#[tokio::test]
async fn a_text_generation_model_is_loaded_with_its_tokenizer_and_settings() {
    let p = pool("  image: reg/browser:1\n  replicas: 1\n  backends: [wasm]\n");
    let md: ModelDeployment = serde_yaml_ng::from_str(
        "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: minilm, namespace: ml, uid: m-1, generation: 2, finalizers: [webaccel.dev/unload-model]}\nspec:\n  poolRef: {name: web}\n  model: {uri: 'https://h/llm/model.onnx', task: text-generation}\n  tokenizer: {uri: 'https://h/llm/tokenizer.json'}\n  backends: [wasm]\n  replicas: 1\n  generation: {maxSequences: 8, kvCache: int8, contextLength: 1024, defaults: {maxTokens: 32}}\n",
    )
    .unwrap();
    let hash = template_hash(&p);
    let steps = vec![status_step(&md, |b| {
        assert_eq!(b["status"]["replicas"][0]["state"], "Loading");
    })];
    let agents = FakeAgents::with_loads(&[]);
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));
    reconcile(Arc::new(md), world.ctx.clone()).await.unwrap();
    api.await.unwrap();
    let specs = agents.load_specs.lock().unwrap().clone();
    assert_eq!(specs.len(), 1, "{specs:?}");
    let generation = specs[0].generation.as_ref().expect("a generation spec");
    assert_eq!(generation.tokenizer.uri, "https://h/llm/tokenizer.json");
    assert_eq!(generation.settings.max_sequences, 8);
    assert_eq!(generation.settings.kv_cache, webaccel_api::Precision::Int8);
    assert_eq!(generation.settings.context_length, Some(1024));
    assert_eq!(generation.settings.defaults.max_tokens, Some(32));
    assert_eq!(specs[0].task, "text-generation");
    assert_eq!(
        specs[0].max_batch_size, 0,
        "the page batches sequences itself"
    );
}

/// The finding from a real cluster: a model applied with its pool. The kubelet reports the
/// pod Running long before Ready; the agent answers 503 for its capabilities until its
/// browser is up. Nothing is asked of an unready pod, a failed answer is never cached, and
/// the model is placed once the capabilities are known.
#[tokio::test]
async fn a_model_applied_with_its_pool_is_placed_once_the_browser_is_ready() {
    let p = pool("  image: reg/browser:1\n  replicas: 1\n");
    let md = model("[wasm]");
    let hash = template_hash(&p);
    let agents = FakeAgents::with_loads(&[]);
    agents.capabilities.lock().unwrap().insert(
        "web-a".into(),
        vec![Err(refused(
            "/v1/capabilities",
            503,
            ErrorCategory::BrowserUnavailable,
        ))],
    );
    let unplaceable = |b: &Value| {
        assert_eq!(cond(&b["status"], "Ready")["reason"], "Unplaceable");
        assert!(b["status"]["replicas"].as_array().is_none_or(Vec::is_empty));
    };
    let sink = StatusSink::default();
    let steps = vec![
        // 1. Running, not Ready: nobody to place it on yet.
        sink.step(&md, unplaceable),
        // 2. Ready; capabilities 503: still unplaceable (status unchanged: no write).
        // 3. Capabilities known: placed and loading.
        sink.step(&md, |b| {
            assert_eq!(b["status"]["replicas"][0]["state"], "Loading");
            assert_eq!(b["status"]["replicas"][0]["backend"], "wasm");
        }),
        // 4. Loaded.
        label_step("web-a", &hash, json!("loaded")),
        sink.step(&md, |b| assert_eq!(b["status"]["loadedReplicas"], 1)),
    ];
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.model(&md);

    // 1. The kubelet: Running, not Ready.
    world.pod(pod("web-a", &hash, "Running", false, "10.0.0.1"));
    let action = reconcile(Arc::new(md.clone()), world.ctx.clone())
        .await
        .unwrap();
    assert!(
        agents.calls().is_empty(),
        "an unready pod's agent is not asked: {:?}",
        agents.calls()
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));

    // 2. Ready; its agent's browser is not up yet: 503, not cached.
    world.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));
    let action = reconcile(Arc::new(sink.applied(&md)), world.ctx.clone())
        .await
        .unwrap();
    assert_eq!(agents.calls(), ["capabilities web-a", "model web-a minilm"]);
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(2)),
        "a ready browser with unknown capabilities is asked again soon"
    );
    assert!(world.ctx.cached_capabilities("uid-web-a").is_none());

    // 3. Asked again: known now (and cached), the model is placed.
    agents.clear_calls();
    reconcile(Arc::new(sink.applied(&md)), world.ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        agents.calls(),
        [
            "capabilities web-a",
            "model web-a minilm",
            "load web-a minilm wasm"
        ]
    );
    assert!(world.ctx.cached_capabilities("uid-web-a").is_some());

    // 4. The agent finished loading.
    agents.clear_calls();
    reconcile(Arc::new(sink.applied(&md)), world.ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        agents.calls(),
        ["model web-a minilm"],
        "capabilities are cached"
    );
    api.await.unwrap();
}

#[tokio::test]
async fn a_refused_token_or_a_restarting_browser_is_pending_and_tried_again() {
    let p = pool("  image: reg/browser:1\n  replicas: 1\n");
    let md = model("[wasm]");
    let hash = template_hash(&p);
    let agents = FakeAgents::with_loads(&[]);
    agents.loads.lock().unwrap().insert(
        "web-a".into(),
        vec![
            Err(refused(
                "/v1/repository/models",
                401,
                ErrorCategory::Unauthorized,
            )),
            Err(refused(
                "/v1/repository/models",
                503,
                ErrorCategory::BrowserUnavailable,
            )),
        ],
    );
    let pending = |label: &'static str| {
        move |b: &Value| {
            let r = &b["status"]["replicas"][0];
            assert_eq!(r["state"], "Pending", "{b}");
            assert!(r["reason"].as_str().unwrap().contains(label), "{r}");
            assert_eq!(cond(&b["status"], "Degraded")["status"], "False");
        }
    };
    let sink = StatusSink::default();
    let steps = vec![
        sink.step(&md, pending("unauthorized")),
        sink.step(&md, pending("browser_unavailable")),
        sink.step(&md, |b| {
            assert_eq!(b["status"]["replicas"][0]["state"], "Loading")
        }),
    ];
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));
    for _ in 0..3 {
        // Each look starts from the status the last one wrote.
        let action = reconcile(Arc::new(sink.applied(&md)), world.ctx.clone())
            .await
            .unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(2)));
    }
    api.await.unwrap();
    // The browser was never excluded: every look tried the same browser again.
    assert_eq!(
        agents
            .calls()
            .iter()
            .filter(|c| c.starts_with("load"))
            .count(),
        3
    );
}

#[tokio::test]
async fn a_model_the_agent_refuses_is_failed_and_not_retried_on_that_browser() {
    let p = pool("  image: reg/browser:1\n  replicas: 1\n");
    let md = model("[wasm]");
    let hash = template_hash(&p);
    let agents = FakeAgents::with_loads(&[]);
    agents.loads.lock().unwrap().insert(
        "web-a".into(),
        vec![Ok(ModelOnAgent::Failed("sha256 mismatch".into()))],
    );
    let (client, api) = mock_api(vec![status_step(&md, |b| {
        assert_eq!(b["status"]["replicas"][0]["state"], "FailedToLoad");
        assert_eq!(cond(&b["status"], "Degraded")["reason"], "FailedToLoad");
    })]);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));
    reconcile(Arc::new(md.clone()), world.ctx.clone())
        .await
        .unwrap();
    let bodies = api.await.unwrap();
    // Looked at again with that status: no new load on the same browser, nothing to write.
    let failed = with_status(&md, &bodies[0]);
    let (client, api) = mock_api(vec![]);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));
    reconcile(Arc::new(failed), world.ctx.clone())
        .await
        .unwrap();
    api.await.unwrap();
    assert_eq!(
        agents
            .calls()
            .iter()
            .filter(|c| c.starts_with("load"))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_missing_pool_is_reported_not_an_error() {
    let md = model("[auto]");
    let steps = vec![status_step(&md, |b| {
        assert_eq!(b["status"]["conditions"][0]["reason"], "PoolNotFound");
        assert_eq!(
            b["status"]["conditions"][0]["message"],
            "BrowserPool web not found in ml"
        );
    })];
    let (client, api) = mock_api(steps);
    reconcile(Arc::new(md), context(client, FakeAgents::with_loads(&[])))
        .await
        .unwrap();
    api.await.unwrap();
}

#[tokio::test]
async fn a_model_no_browser_can_run_is_reported_unplaceable() {
    let p = pool("  image: reg/browser:1\n  replicas: 1\n  backends: [wasm]\n");
    let md = model("[webgpu]");
    let hash = template_hash(&p);
    let steps = vec![status_step(&md, |b| {
        let c = &b["status"]["conditions"];
        assert_eq!(
            (c[0]["type"].as_str(), c[0]["reason"].as_str()),
            (Some("Ready"), Some("Unplaceable"))
        );
        assert_eq!(
            (c[2]["type"].as_str(), c[2]["status"].as_str()),
            (Some("Degraded"), Some("True"))
        );
        assert!(
            c[2]["message"]
                .as_str()
                .unwrap()
                .contains("can run [webgpu]"),
            "{c}"
        );
        assert_eq!(b["status"]["loadedReplicas"], 0);
    })];
    let agents = FakeAgents::with_loads(&[]);
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));
    reconcile(Arc::new(md), world.ctx.clone()).await.unwrap();
    api.await.unwrap();
    assert!(
        !agents.calls().iter().any(|c| c.starts_with("load")),
        "{:?}",
        agents.calls()
    );
}

fn deleting(md: ModelDeployment) -> ModelDeployment {
    let mut md = md;
    md.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    md
}

#[tokio::test]
async fn deleting_a_model_unloads_it_everywhere_then_releases_the_finalizer() {
    let p = pool("  image: reg/browser:1\n  replicas: 2\n");
    let md = deleting(model("[wasm]"));
    let hash = template_hash(&p);
    let mut holder = pod("web-a", &hash, "Running", true, "10.0.0.1");
    holder
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("webaccel.dev/model.minilm".into(), "loaded".into());
    let md_json = serde_json::to_value(&md).unwrap();
    let steps = vec![
        label_step("web-a", &hash, Value::Null),
        step_checked("PATCH", MODEL, (200, md_json), |b| {
            // kube's finalizer helper: a JSON patch that tests, then removes, our finalizer.
            assert!(b.to_string().contains("/metadata/finalizers"), "{b}");
        }),
    ];
    let agents = FakeAgents::with_loads(&[]);
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(holder);
    world.pod(pod("web-b", &hash, "Running", true, "10.0.0.2"));
    reconcile(Arc::new(md), world.ctx.clone()).await.unwrap();
    api.await.unwrap();
    assert_eq!(
        agents.calls(),
        ["unload web-a minilm", "unload web-b minilm"]
    );
}

#[tokio::test]
async fn a_second_queued_cleanup_of_a_deleted_model_is_a_success() {
    let p = pool("  image: reg/browser:1\n  replicas: 0\n");
    let md = deleting(model("[wasm]"));
    // The first cleanup removed the finalizer and the object went; this one, queued
    // before that, finds it gone.
    let steps = vec![step("PATCH", MODEL, not_found())];
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, FakeAgents::with_loads(&[]));
    world.pool_with_owned(&p);
    let action = reconcile(Arc::new(md), world.ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    api.await.unwrap();
}

/// The deployment with `sha256` for its file (a new generation when it changes).
fn model_with_digest(sha256: &str, generation: i64) -> ModelDeployment {
    serde_yaml_ng::from_str(&format!(
        "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {{name: minilm, namespace: ml, uid: m-1, generation: {generation}, finalizers: [webaccel.dev/unload-model]}}\nspec:\n  poolRef: {{name: web}}\n  model: {{uri: 'https://h/m.onnx', sha256: '{sha256}', task: text-embedding}}\n  backends: [wasm]\n  replicas: 1\n"
    ))
    .unwrap()
}

#[tokio::test]
async fn a_new_digest_loads_a_copy_beside_the_old_one_which_goes_once_the_new_one_is_loaded() {
    let (old_sha, new_sha) = ("a".repeat(64), "b".repeat(64));
    let p = pool("  image: reg/browser:1\n  replicas: 2\n  backends: [wasm]\n");
    let hash = template_hash(&p);
    let md = model_with_digest(&new_sha, 3);
    let agents = FakeAgents::with_loads(&[]);
    // web-a holds the file of the previous generation.
    agents.models.lock().unwrap().insert(
        ("web-a".into(), "minilm".into()),
        ModelOnAgent::Loaded {
            backend: "wasm".into(),
            init_ms: Some(40.0),
            precision: None,
            uri: "https://h/m.onnx".into(),
            sha256: old_sha,
            memory_bytes: None,
            settings: None,
        },
    );
    let sink = StatusSink::default();
    let steps = vec![
        // The old copy serves (and is labelled) while the new one loads on web-b.
        label_step("web-a", &hash, json!("loaded")),
        sink.step(&md, |b| {
            let replicas = &b["status"]["replicas"];
            let states: Vec<(&str, &str)> = replicas
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r["pod"].as_str().unwrap(), r["state"].as_str().unwrap()))
                .collect();
            assert_eq!(states, [("web-a", "Loaded"), ("web-b", "Loading")], "{b}");
            assert_eq!(b["status"]["loadedReplicas"], 1, "still served");
        }),
        // The new copy is loaded: it is labelled, the old one is unloaded.
        label_step("web-b", &hash, json!("loaded")),
        sink.step(&md, |b| {
            let s = &b["status"];
            assert_eq!(s["replicas"].as_array().unwrap().len(), 1, "{b}");
            assert_eq!(s["replicas"][0]["pod"], "web-b");
            assert_eq!(s["replicas"][0]["state"], "Loaded");
        }),
    ];
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));
    world.pod(pod("web-b", &hash, "Running", true, "10.0.0.2"));
    reconcile(Arc::new(md.clone()), world.ctx.clone())
        .await
        .unwrap();
    assert_eq!(agents.load_calls(), ["load web-b minilm wasm"]);
    reconcile(Arc::new(sink.applied(&md)), world.ctx.clone())
        .await
        .unwrap();
    api.await.unwrap();
    assert_eq!(
        agents.load_calls(),
        ["load web-b minilm wasm", "unload web-a minilm"]
    );
}
