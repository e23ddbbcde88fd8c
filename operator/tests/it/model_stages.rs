//! A ModelDeployment with `stages` against a mocked API server and stand-in agents: each
//! stage is loaded as a model of its own (`<name>.stage<i>`) on a browser holding no
//! other stage, the pods are labelled per stage and the status reports each stage; a
//! pool too small says so, and a stage sharing a browser moves once the pool grows.

use std::sync::Arc;

use crate::common::*;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use webaccel_crds::v1alpha1::ModelDeployment;
use webaccel_operator::model::reconcile::reconcile;
use webaccel_operator::pool::build::template_hash;

const MODEL: &str = "/apis/webaccel.dev/v1alpha1/namespaces/ml/modeldeployments/enc";

fn staged(stages: usize) -> ModelDeployment {
    let list: Vec<String> = (0..stages)
        .map(|i| format!("    - {{uri: 'https://h/enc/stage{i}.onnx', task: text-embedding}}\n"))
        .collect();
    serde_yaml_ng::from_str(&format!(
        "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {{name: enc, namespace: ml, uid: m-2, generation: 1, finalizers: [webaccel.dev/unload-model]}}\nspec:\n  poolRef: {{name: web}}\n  stages:\n{}  backends: [wasm]\n  replicas: 1\n",
        list.concat()
    ))
    .unwrap()
}

/// A label patch on `pod` that sets exactly `labels`.
fn labels_step(pod_name: &str, hash: &str, labels: Value) -> Step {
    step_checked(
        "PATCH",
        &format!("{PODS}/{pod_name}"),
        (
            200,
            serde_json::to_value(pod(pod_name, hash, "Running", true, "")).unwrap(),
        ),
        move |b| assert_eq!(b, &json!({"metadata": {"labels": labels}})),
    )
}

/// `stage`'s replicas as `(pod, state)`.
fn stage_replicas(b: &Value, stage: usize) -> Vec<(String, String)> {
    b["status"]["stages"][stage]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["pod"].as_str().unwrap().to_owned(),
                r["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(pod: &str, state: &str) -> (String, String) {
    (pod.to_owned(), state.to_owned())
}

fn labelled(mut p: Pod, labels: &[&str]) -> Pod {
    let l = p.metadata.labels.as_mut().unwrap();
    for key in labels {
        l.insert((*key).to_owned(), "loaded".to_owned());
    }
    p
}

#[tokio::test]
async fn each_stage_is_loaded_on_a_browser_of_its_own_and_reported_per_stage() {
    let p = pool("  image: reg/browser:1\n  replicas: 3\n");
    let md = staged(2);
    let hash = template_hash(&p);
    let sink = StatusSink::default();
    let steps = vec![
        sink.step(&md, |b| {
            let s = &b["status"];
            assert_eq!(stage_replicas(b, 0), [pair("web-a", "Loading")]);
            assert_eq!(stage_replicas(b, 1), [pair("web-b", "Loading")]);
            assert_eq!(s["stages"][0]["model"], "enc.stage0");
            assert_eq!(s["stages"][1]["model"], "enc.stage1");
            assert!(s["replicas"].is_null(), "per stage only: {s}");
            assert_eq!(cond(s, "Ready")["reason"], "Loading");
            assert_eq!(cond(s, "Degraded")["status"], "False");
        }),
        // Loaded: each pod is labelled with its own stage only.
        labels_step(
            "web-a",
            &hash,
            json!({"webaccel.dev/model.enc.stage0": "loaded"}),
        ),
        labels_step(
            "web-b",
            &hash,
            json!({"webaccel.dev/model.enc.stage1": "loaded"}),
        ),
        sink.step(&md, |b| {
            let s = &b["status"];
            assert_eq!(s["loadedReplicas"], 1);
            assert_eq!(s["stages"][0]["loadedReplicas"], 1);
            assert_eq!(s["stages"][1]["loadedReplicas"], 1);
            assert_eq!(s["backend"], "wasm");
            let ready = cond(s, "Ready");
            assert_eq!(ready["status"], "True");
            assert_eq!(
                ready["message"],
                "1/1 replicas of every one of 2 stages loaded"
            );
        }),
    ];
    let agents = FakeAgents::with_loads(&[]);
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    for (name, ip) in [
        ("web-a", "10.0.0.1"),
        ("web-b", "10.0.0.2"),
        ("web-c", "10.0.0.3"),
    ] {
        world.pod(pod(name, &hash, "Running", true, ip));
    }
    reconcile(Arc::new(sink.applied(&md)), world.ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        agents.load_calls(),
        ["load web-a enc.stage0 wasm", "load web-b enc.stage1 wasm"]
    );
    reconcile(Arc::new(sink.applied(&md)), world.ctx.clone())
        .await
        .unwrap();
    api.await.unwrap();
    assert_eq!(agents.load_calls().len(), 2, "nothing loaded twice");
}

#[tokio::test]
async fn a_pool_too_small_shares_a_browser_and_a_grown_one_moves_the_stage() {
    let p = pool("  image: reg/browser:1\n  replicas: 1\n");
    let md = staged(2);
    let hash = template_hash(&p);
    let both = [
        "webaccel.dev/model.enc.stage0",
        "webaccel.dev/model.enc.stage1",
    ];
    let sink = StatusSink::default();
    let steps = vec![
        // 1. One browser: both stages on it, and the status says why.
        sink.step(&md, |b| {
            assert_eq!(stage_replicas(b, 0), [pair("web-a", "Loading")]);
            assert_eq!(stage_replicas(b, 1), [pair("web-a", "Loading")]);
            let degraded = cond(&b["status"], "Degraded");
            assert_eq!(degraded["reason"], "StagesShareBrowsers");
            assert!(
                degraded["message"]
                    .as_str()
                    .unwrap()
                    .contains("the pool has 1 browsers for 2 stages × 1 replicas"),
                "{degraded}"
            );
        }),
        // 2. Loaded: one patch sets both labels; served, still degraded.
        labels_step(
            "web-a",
            &hash,
            json!({both[0]: "loaded", both[1]: "loaded"}),
        ),
        sink.step(&md, |b| {
            assert_eq!(cond(&b["status"], "Ready")["status"], "True");
            assert_eq!(
                cond(&b["status"], "Degraded")["reason"],
                "StagesShareBrowsers"
            );
        }),
        // 3. A second browser: stage 1 loads there, its copy on web-a keeps serving.
        sink.step(&md, |b| {
            assert_eq!(
                stage_replicas(b, 1),
                [pair("web-b", "Loading"), pair("web-a", "Loaded")]
            );
            let shared = &b["status"]["stages"][1]["replicas"][1]["reason"];
            assert!(
                shared
                    .as_str()
                    .unwrap()
                    .contains("shares the browser with stage 0"),
                "{shared}"
            );
            assert_eq!(cond(&b["status"], "Ready")["status"], "True");
            assert_eq!(cond(&b["status"], "Degraded")["status"], "False");
        }),
        // 4. Loaded on web-b: web-a gives it up; the labels follow.
        labels_step("web-a", &hash, json!({both[1]: null})),
        labels_step("web-b", &hash, json!({both[1]: "loaded"})),
        sink.step(&md, |b| {
            assert_eq!(stage_replicas(b, 0), [pair("web-a", "Loaded")]);
            assert_eq!(stage_replicas(b, 1), [pair("web-b", "Loaded")]);
        }),
    ];
    let agents = FakeAgents::with_loads(&[]);
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));

    reconcile(Arc::new(sink.applied(&md)), world.ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        agents.load_calls(),
        ["load web-a enc.stage0 wasm", "load web-a enc.stage1 wasm"]
    );
    reconcile(Arc::new(sink.applied(&md)), world.ctx.clone())
        .await
        .unwrap();
    // The watch shows the labels written; the pool grows by one browser.
    world.pod(labelled(
        pod("web-a", &hash, "Running", true, "10.0.0.1"),
        &both,
    ));
    world.pod(pod("web-b", &hash, "Running", true, "10.0.0.2"));
    agents.clear_calls();
    reconcile(Arc::new(sink.applied(&md)), world.ctx.clone())
        .await
        .unwrap();
    assert_eq!(agents.load_calls(), ["load web-b enc.stage1 wasm"]);
    agents.clear_calls();
    reconcile(Arc::new(sink.applied(&md)), world.ctx.clone())
        .await
        .unwrap();
    assert_eq!(agents.load_calls(), ["unload web-a enc.stage1"]);
    api.await.unwrap();
}

#[tokio::test]
async fn deleting_a_staged_model_unloads_every_stage_and_removes_every_label() {
    let p = pool("  image: reg/browser:1\n  replicas: 2\n");
    let mut md = staged(2);
    md.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let hash = template_hash(&p);
    let steps = vec![
        labels_step(
            "web-a",
            &hash,
            json!({"webaccel.dev/model.enc.stage0": null}),
        ),
        labels_step(
            "web-b",
            &hash,
            json!({"webaccel.dev/model.enc.stage1": null}),
        ),
        step_checked(
            "PATCH",
            MODEL,
            (200, serde_json::to_value(&md).unwrap()),
            |b| assert!(b.to_string().contains("/metadata/finalizers"), "{b}"),
        ),
    ];
    let agents = FakeAgents::with_loads(&[]);
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(labelled(
        pod("web-a", &hash, "Running", true, "10.0.0.1"),
        &["webaccel.dev/model.enc.stage0"],
    ));
    world.pod(labelled(
        pod("web-b", &hash, "Running", true, "10.0.0.2"),
        &["webaccel.dev/model.enc.stage1"],
    ));
    reconcile(Arc::new(md), world.ctx.clone()).await.unwrap();
    api.await.unwrap();
    assert_eq!(
        agents.calls(),
        [
            "unload web-a enc.stage0",
            "unload web-a enc.stage1",
            "unload web-b enc.stage0",
            "unload web-b enc.stage1"
        ]
    );
}
