//! An ensemble ModelDeployment end to end in local mode: two ModelDeployments (the
//! generated models of `make_ensemble.py`) and a third chaining them with `ensemble`, on
//! a pool of two real Chromium browsers. The ensemble is placed only where both steps
//! are loaded, and the stock tritonclient (HTTP binary and gRPC) through the gateway gets
//! what native onnxruntime gives running the two models one after the other.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use webaccel_testkit::fixtures::repo;
use webaccel_testkit::up::{Up, loaded, model, model_yaml, pool_yaml};

use crate::common::run;
use webaccel_api::agent::{ModelList, ModelState};

fn ensemble_yaml(name: &str, pool: &str, first: &str, second: &str) -> String {
    format!(
        "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata:\n  name: {name}\nspec:\n  poolRef: {{name: {pool}}}\n  backends: [wasm]\n  replicas: 1\n  ensemble:\n    task: vision\n    outputs: [OUTPUT]\n    steps:\n    - model: {first}\n      inputMap: {{x: INPUT}}\n      outputMap: {{hidden: hidden}}\n    - model: {second}\n      inputMap: {{hidden: hidden}}\n      outputMap: {{y: OUTPUT}}\n"
    )
}

#[tokio::test]
async fn an_ensemble_deployment_is_placed_with_its_steps_and_served_through_the_gateway() {
    let _machine = webaccel_testkit::alone().await;
    let dir = tempfile::tempdir().unwrap();
    run(
        Command::new("python3")
            .arg(repo().join("node-agent/tests/fixtures/make_ensemble.py"))
            .arg(dir.path()),
        "make_ensemble.py",
    );
    let up = Up::start(
        Path::new(env!("CARGO_BIN_EXE_webaccel")),
        &[
            ("pool.yaml", pool_yaml("duo", "  replicas: 2\n")),
            (
                "first.yaml",
                model_yaml("first", "duo", &dir.path().join("first.onnx"), 1),
            ),
            (
                "second.yaml",
                model_yaml("second", "duo", &dir.path().join("second.onnx"), 2),
            ),
            ("pipe.yaml", ensemble_yaml("pipe", "duo", "first", "second")),
        ],
        &["--no-clickhouse".to_owned()],
    );
    let status = up
        .until("the ensemble loaded", Duration::from_secs(75), |s| {
            loaded(s, "first", 1) && loaded(s, "second", 2) && loaded(s, "pipe", 1)
        })
        .await;
    // Placed where both steps are: the browser holding `first` (second is on both).
    let m = model(&status, "pipe");
    println!("{m:#}");
    let pipe_on: Vec<String> = m["status"]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pod"].as_str().unwrap_or_default().to_owned())
        .collect();
    let first_on: Vec<String> = model(&status, "first")["status"]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pod"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(pipe_on, first_on, "{status:#}");
    let list: ModelList = up
        .agent_get(&status, &pipe_on[0], "/v1/repository/models")
        .await;
    let pipe = list.models.iter().find(|d| d.name == "pipe").unwrap();
    assert!(pipe.spec.ensemble.is_some(), "{pipe:?}");
    assert!(
        matches!(&pipe.status, ModelState::Loaded(l) if l.backend == "wasm"),
        "{pipe:?}"
    );

    let out = run(
        Command::new("python3")
            .arg(repo().join("gateway/tests/ensemble_client.py"))
            .arg(&up.http)
            .arg(&up.grpc)
            .arg("pipe")
            .arg(dir.path().join("ensemble.json")),
        "ensemble_client.py",
    );
    println!("{out}");
    assert!(
        out.contains("ok http binary") && out.contains("ok grpc"),
        "{out}"
    );
}
