//! The ModelDeployment controller against a mocked API server and stand-in agents.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use serde_json::json;
use webaccel_api::v1alpha1::ModelDeployment;
use webaccel_operator::model::reconcile::reconcile;
use webaccel_operator::pool::build::template_hash;

const MODEL: &str = "/apis/webaccel.dev/v1alpha1/namespaces/ml/modeldeployments/minilm";

fn model(backends: &str) -> ModelDeployment {
    serde_yaml_ng::from_str(&format!(
        "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {{name: minilm, namespace: ml, uid: m-1, generation: 2, finalizers: [webaccel.dev/unload-model]}}\nspec:\n  poolRef: {{name: web}}\n  model: {{uri: 'https://h/m.onnx', task: text-embedding}}\n  backends: {backends}\n  replicas: 1\n"
    ))
    .unwrap()
}

#[tokio::test]
async fn a_model_is_loaded_on_a_capable_browser_which_is_labelled_and_reported() {
    let p = pool("  image: reg/browser:1\n  replicas: 2\n  backends: [webgpu, wasm]\n");
    let md = model("[webnn, webgpu]");
    let hash = template_hash(&p);
    let pods = vec![
        pod("web-a", &hash, "Running", true, "10.0.0.1"),
        pod("web-b", &hash, "Running", true, "10.0.0.2"),
    ];
    let md_json = serde_json::to_value(&md).unwrap();
    let steps = vec![
        step("GET", POOL, (200, serde_json::to_value(&p).unwrap())),
        step("GET", PODS, (200, list(pods))),
        step(
            "GET",
            "/api/v1/namespaces/ml/secrets/web-agent-token",
            (200, token_secret()),
        ),
        step_checked(
            "PATCH",
            &format!("{MODEL}/status"),
            (200, md_json.clone()),
            |b| {
                assert_eq!(b["status"]["replicas"][0]["state"], "Loading");
                assert_eq!(b["status"]["replicas"][0]["backend"], "webgpu");
            },
        ),
        step_checked(
            "PATCH",
            &format!("{PODS}/web-a"),
            (
                200,
                serde_json::to_value(pod("web-a", &hash, "Running", true, "")).unwrap(),
            ),
            |b| {
                assert_eq!(
                    b,
                    &json!({"metadata": {"labels": {"webaccel.dev/model.minilm": "loaded"}}})
                );
            },
        ),
        step_checked("PATCH", &format!("{MODEL}/status"), (200, md_json), |b| {
            let s = &b["status"];
            assert_eq!(s["loadedReplicas"], 1);
            assert_eq!(s["backend"], "webgpu");
            assert_eq!(s["replicas"][0]["initMs"], 40.0);
            assert_eq!(s["conditions"][0]["type"], "Ready");
            assert_eq!(s["conditions"][0]["status"], "True");
        }),
    ];
    let agents = FakeAgents::with_loads(&[]);
    let (client, api) = mock_api(steps);
    reconcile(Arc::new(md), context(client, agents.clone()))
        .await
        .unwrap();
    api.await.unwrap();
    // WebNN is not in the pool's backends and not detected: WebGPU, the next choice, is asked for.
    assert!(
        agents
            .calls()
            .contains(&"load web-a minilm webgpu".to_owned()),
        "{:?}",
        agents.calls()
    );
}

#[tokio::test]
async fn a_missing_pool_is_reported_not_an_error() {
    let md = model("[auto]");
    let steps = vec![
        step("GET", POOL, not_found()),
        step_checked(
            "PATCH",
            &format!("{MODEL}/status"),
            (200, serde_json::to_value(&md).unwrap()),
            |b| {
                assert_eq!(b["status"]["conditions"][0]["reason"], "PoolNotFound");
                assert_eq!(
                    b["status"]["conditions"][0]["message"],
                    "BrowserPool web not found in ml"
                );
            },
        ),
    ];
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
    let steps = vec![
        step("GET", POOL, (200, serde_json::to_value(&p).unwrap())),
        step(
            "GET",
            PODS,
            (
                200,
                list(vec![pod("web-a", &hash, "Running", true, "10.0.0.1")]),
            ),
        ),
        step(
            "GET",
            "/api/v1/namespaces/ml/secrets/web-agent-token",
            (200, token_secret()),
        ),
        step_checked(
            "PATCH",
            &format!("{MODEL}/status"),
            (200, serde_json::to_value(&md).unwrap()),
            |b| {
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
            },
        ),
    ];
    let agents = FakeAgents::with_loads(&[]);
    let (client, api) = mock_api(steps);
    reconcile(Arc::new(md), context(client, agents.clone()))
        .await
        .unwrap();
    api.await.unwrap();
    assert!(
        !agents.calls().iter().any(|c| c.starts_with("load")),
        "{:?}",
        agents.calls()
    );
}

#[tokio::test]
async fn deleting_a_model_unloads_it_everywhere_then_releases_the_finalizer() {
    let p = pool("  image: reg/browser:1\n  replicas: 2\n");
    let mut md = model("[wasm]");
    md.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
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
        step("GET", POOL, (200, serde_json::to_value(&p).unwrap())),
        step(
            "GET",
            PODS,
            (
                200,
                list(vec![
                    holder.clone(),
                    pod("web-b", &hash, "Running", true, "10.0.0.2"),
                ]),
            ),
        ),
        step(
            "GET",
            "/api/v1/namespaces/ml/secrets/web-agent-token",
            (200, token_secret()),
        ),
        step_checked(
            "PATCH",
            &format!("{PODS}/web-a"),
            (200, serde_json::to_value(&holder).unwrap()),
            |b| {
                assert_eq!(
                    b,
                    &json!({"metadata": {"labels": {"webaccel.dev/model.minilm": null}}})
                );
            },
        ),
        step_checked("PATCH", MODEL, (200, md_json), |b| {
            // kube's finalizer helper: a JSON patch that tests, then removes, our finalizer.
            assert!(b.to_string().contains("/metadata/finalizers"), "{b}");
        }),
    ];
    let agents = FakeAgents::with_loads(&[]);
    let (client, api) = mock_api(steps);
    reconcile(Arc::new(md), context(client, agents.clone()))
        .await
        .unwrap();
    api.await.unwrap();
    assert_eq!(
        agents.calls(),
        ["unload web-a minilm", "unload web-b minilm"]
    );
}
