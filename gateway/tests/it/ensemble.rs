//! An ensemble (two models chained in the page) served through the gateway like any
//! model: the stock tritonclient over HTTP (binary tensors) and gRPC gets what native
//! onnxruntime gives running the two models one after the other, and the metadata shows
//! the ensemble's own input and output.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // test code: a panic is the failure report

use serde_json::json;
use webaccel_testkit::TOKEN;
use webaccel_testkit::fixtures::repo;

use crate::support::{READY, agent_ref, gateway, settings, spawn_agent, wait_model};

#[tokio::test]
async fn stock_clients_call_an_ensemble_through_the_gateway() {
    let _machine = webaccel_testkit::beside().await;
    let dir = tempfile::tempdir().unwrap();
    let made = std::process::Command::new("python3")
        .arg(repo().join("node-agent/tests/fixtures/make_ensemble.py"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let agent = spawn_agent(&[], &[]);
    agent.wait_standby(READY).await;
    let http = reqwest::Client::new();
    let load = |body: serde_json::Value| {
        let req = http
            .post(format!("{}/v1/repository/models", agent.base))
            .bearer_auth(TOKEN)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status();
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(status, 201, "{body}");
        }
    };
    for (name, file) in [("first", "first.onnx"), ("second", "second.onnx")] {
        let uri = format!("file://{}", dir.path().join(file).display());
        load(json!({"name": name, "uri": uri, "backend": "wasm"})).await;
    }
    load(json!({"name": "pipe", "ensemble": {
        "steps": [
            {"model": "first", "input_map": {"x": "INPUT"}, "output_map": {"hidden": "hidden"}},
            {"model": "second", "input_map": {"hidden": "hidden"}, "output_map": {"y": "OUTPUT"}},
        ],
        "outputs": ["OUTPUT"],
    }}))
    .await;

    let gw = gateway(vec![agent_ref(&agent)], settings(|_| {})).await;
    wait_model(&gw, "pipe").await;
    let out = tokio::process::Command::new("python3")
        .arg(repo().join("gateway/tests/ensemble_client.py"))
        .arg(gw.http())
        .arg(gw.grpc())
        .arg("pipe")
        .arg(dir.path().join("ensemble.json"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok http binary") && stdout.contains("ok grpc"),
        "{stdout}"
    );
    // The intermediate never crossed the gateway: one request per call reached the
    // agent, for the ensemble, and none for its steps.
    let stats = agent.get("/v1/stats").await.1;
    assert_eq!(stats["models"]["pipe"]["requests"], 2, "{stats}");
    assert!(
        stats["models"]["first"]["requests"].as_u64().unwrap_or(0) == 0,
        "{stats}"
    );
    gw.shutdown().await;
}
