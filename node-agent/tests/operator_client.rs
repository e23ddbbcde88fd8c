//! The operator's agent client (`webaccel_operator::agent::HttpAgents`) against a real
//! agent and Chromium: what the operator reads (stats, capabilities, model state) and what it
//! asks (load, unload, drain) mean the same on both sides.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::time::Duration;

use common::{Agent, TOKEN, model_uri};
use webaccel_api::Backend;
use webaccel_operator::agent::{AgentApi, Endpoint, HttpAgents, LoadRequest, ModelOnAgent};

fn load_request(name: &str, file: &str) -> LoadRequest {
    LoadRequest {
        name: name.into(),
        uri: model_uri(file),
        sha256: None,
        backend: Backend::Wasm,
        warmup: true,
        task: "vision".into(),
        precision: "fp32".into(),
    }
}

#[tokio::test]
async fn the_operator_reads_and_drives_a_real_agent() {
    let agent = Agent::start(&[], &[]).await;
    let agents = HttpAgents::new(Duration::from_secs(5), Duration::from_secs(120));
    let ep = Endpoint {
        pod: "p".into(),
        base_url: agent.base.clone(),
        token: TOKEN.into(),
    };

    let caps = agents.capabilities(&ep).await.unwrap();
    assert!(caps.backends.contains(&Backend::Wasm), "{caps:?}");
    assert!(
        !caps.backends.contains(&Backend::Webnn),
        "Debian's Chromium has no WebNN: {caps:?}"
    );
    if caps.backends.contains(&Backend::Webgpu) {
        // SwiftShader here: it must be reported as software, never as a GPU.
        assert!(
            caps.adapter.as_deref().unwrap().ends_with("(software)"),
            "{caps:?}"
        );
    }

    let stats = agents.stats(&ep).await.unwrap();
    assert!(stats.healthy && stats.ready && !stats.draining, "{stats:?}");
    assert_eq!(stats.load(), 0);

    assert_eq!(
        agents.model(&ep, "mlp").await.unwrap(),
        ModelOnAgent::Absent
    );
    match agents
        .load(&ep, &load_request("mlp", "mlp.onnx"))
        .await
        .unwrap()
    {
        ModelOnAgent::Loaded { backend, init_ms } => {
            assert_eq!(backend, "wasm");
            assert!(init_ms.unwrap() > 0.0);
        }
        other => panic!("mlp did not load: {other:?}"),
    }
    assert!(matches!(
        agents.model(&ep, "mlp").await.unwrap(),
        ModelOnAgent::Loaded { .. }
    ));

    // A file that is not ONNX is the model's fault: FailedToLoad with the agent's reason,
    // not an error about the agent.
    match agents
        .load(&ep, &load_request("broken", "invalid.onnx"))
        .await
        .unwrap()
    {
        ModelOnAgent::Failed(reason) => assert!(reason.contains("HTTP 4"), "{reason}"),
        other => panic!("invalid.onnx was not refused: {other:?}"),
    }

    agents.unload(&ep, "mlp").await.unwrap();
    assert_eq!(
        agents.model(&ep, "mlp").await.unwrap(),
        ModelOnAgent::Absent
    );

    agents.drain(&ep).await.unwrap();
    let stats = agents.stats(&ep).await.unwrap();
    assert!(stats.draining && !stats.ready, "{stats:?}");

    let wrong = Endpoint {
        token: "wrong".into(),
        ..ep
    };
    assert!(agents.stats(&wrong).await.unwrap_err().contains("HTTP 401"));
}
