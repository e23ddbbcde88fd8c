//! Kubernetes discovery of models cut into stages, against the mocked API server
//! (`webaccel_testkit::kube`): a ModelDeployment with `spec.stages` is published as a pipeline of its
//! stages' model names, the pods the operator labelled with each stage serve it, and the
//! pipeline goes with its deployment. Every request is checked against the chart's RBAC.

use std::collections::BTreeSet;
use std::time::Duration;

use webaccel_testkit::kube::*;

use crate::support::GATEWAY_RBAC;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use webaccel_gateway::discovery::kubernetes;

const LIMIT: Duration = Duration::from_secs(60);

fn staged(ns: &str, name: &str, pool: &str, stages: usize) -> Value {
    let list: Vec<Value> = (0..stages)
        .map(|i| json!({"uri": format!("https://models.example/{name}/stage{i}.onnx"), "task": "text-embedding"}))
        .collect();
    json!({"apiVersion": "webaccel.dev/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-m-{name}"), "generation": 1},
           "spec": {"poolRef": {"name": pool}, "stages": list}})
}

#[tokio::test(start_paused = true)]
async fn a_staged_deployment_is_a_pipeline_of_its_stages_held_by_their_pods() {
    let a = with_model(
        pod("ml", "web", "web-a", "Running", true, "10.0.0.1"),
        "enc.stage0",
        Some("loaded"),
    );
    let b = with_model(
        pod("ml", "web", "web-b", "Running", true, "10.0.0.2"),
        "enc.stage1",
        Some("loaded"),
    );
    let (client, api) = ApiServer::start(
        vec![
            pool("ml", "web", None),
            operator_secret("ml", "web", "t"),
            model("ml", "bert", "web"),
            staged("ml", "enc", "web", 2),
            a,
            b,
        ],
        GATEWAY_RBAC,
        Some("ml"),
    );
    let stop = CancellationToken::new();
    let (mut fleet, _sink) = kubernetes::start(client, Some("ml".to_owned()), stop.clone());
    let wait = async {
        while fleet.current().len() < 2 || fleet.pipelines().is_none_or(|p| p.is_empty()) {
            assert!(fleet.changed().await);
        }
    };
    tokio::time::timeout(LIMIT, wait).await.unwrap();
    let pipelines = fleet.pipelines().unwrap();
    assert_eq!(
        pipelines.iter().collect::<Vec<_>>(),
        [(
            &"enc".to_owned(),
            &vec!["enc.stage0".to_owned(), "enc.stage1".to_owned()]
        )],
        "only the staged deployment is a pipeline"
    );
    assert_eq!(
        fleet.deployed().unwrap().iter().collect::<Vec<_>>(),
        ["bert", "enc"]
    );
    let current = fleet.current();
    assert_eq!(
        current["ml/web-a"].models,
        BTreeSet::from(["enc.stage0".to_owned()])
    );
    assert_eq!(
        current["ml/web-b"].models,
        BTreeSet::from(["enc.stage1".to_owned()])
    );

    // Deleted: no pipeline any more.
    api.delete(&staged("ml", "enc", "web", 2));
    let wait = async {
        while fleet.pipelines().is_some_and(|p| !p.is_empty()) {
            assert!(fleet.changed().await);
        }
    };
    tokio::time::timeout(LIMIT, wait).await.unwrap();
    api.assert_rbac_allowed_all();
    stop.cancel();
}
