//! The pool engine's agent client (`webaccel_agent_client::HttpAgents`, which the
//! operator and local mode use) against a real agent and Chromium: what they read (stats,
//! capabilities, model state) and what they ask (load in the background, unload, drain)
//! mean the same on both sides, and the agent's refusals keep their category.

use std::time::{Duration, Instant};

use crate::common::{Agent, TOKEN, model_uri};
use webaccel_agent_client::{AgentApi, AgentError, Endpoint, HttpAgents, ModelOnAgent};
use webaccel_api::agent::ModelSpec;
use webaccel_api::{Backend, ErrorCategory};

fn spec(name: &str, file: &str) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        uri: model_uri(file),
        ensemble: None,
        sha256: None,
        backend: Backend::Wasm,
        webnn_device: Default::default(),
        warmup: true,
        task: "vision".into(),
        precision: Some(webaccel_api::Precision::Fp32),
        max_batch_size: 0,
        max_queue_delay_us: 0,
        generation: None,
    }
}

/// Polls the model's state until it settles (loaded or failed).
async fn settled(agents: &HttpAgents, ep: &Endpoint, name: &str) -> ModelOnAgent {
    let started = Instant::now();
    loop {
        match agents.model(ep, name).await.unwrap() {
            ModelOnAgent::Loading => {}
            other => return other,
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{name} never settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_engine_reads_and_drives_a_real_agent() {
    let _machine = webaccel_testkit::beside().await;
    let agent = Agent::start(&[], &[]).await;
    let agents = HttpAgents::new(Duration::from_secs(5));
    let ep = Endpoint {
        pod: "p".into(),
        base_url: agent.base.clone(),
        token: Some(TOKEN.into()),
    };

    let caps = agents.capabilities(&ep).await.unwrap();
    assert!(caps.backends().contains(&Backend::Wasm), "{caps:?}");
    assert!(
        !caps.backends().contains(&Backend::Webnn),
        "Debian's Chromium has no WebNN: {caps:?}"
    );
    if caps.backends().contains(&Backend::Webgpu) {
        // SwiftShader here: it must be reported as software, never as a GPU.
        assert!(
            caps.adapter_label().unwrap().ends_with("(software)"),
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
    // The load answers at once; the model is then loading, then loaded.
    let started = Instant::now();
    let first = agents.load(&ep, &spec("mlp", "mlp.onnx")).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the load blocked"
    );
    assert!(
        matches!(first, ModelOnAgent::Loading | ModelOnAgent::Loaded { .. }),
        "{first:?}"
    );
    match settled(&agents, &ep, "mlp").await {
        ModelOnAgent::Loaded {
            backend,
            init_ms,
            precision,
            uri,
            sha256,
            memory_bytes,
            settings,
        } => {
            assert_eq!(backend, "wasm");
            // How it serves, as loaded: a host compares it with the spec it wants.
            assert!(settings.is_some_and(|s| s.ensemble.is_none()));
            // Measured from the browsers' processes across the load (Linux: always).
            assert!(memory_bytes.is_some(), "no memory figure for the load");
            assert_eq!(precision, Some(webaccel_api::Precision::Fp32));
            assert!(init_ms.unwrap() > 0.0);
            // What it was loaded from, so a changed file can be told apart.
            assert_eq!(uri, spec("mlp", "mlp.onnx").uri);
            assert_eq!(sha256.len(), 64, "{sha256}");
        }
        other => panic!("mlp did not load: {other:?}"),
    }

    // A file that is not ONNX is the model's fault: it fails with the agent's reason.
    agents
        .load(&ep, &spec("broken", "invalid.onnx"))
        .await
        .unwrap();
    match settled(&agents, &ep, "broken").await {
        ModelOnAgent::Failed(reason) => assert!(reason.contains("refused"), "{reason}"),
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

    // A rotated token is the agent refusing us, not a broken model: its category stays.
    let wrong = Endpoint {
        token: Some("wrong".into()),
        ..ep
    };
    let err = agents
        .load(&wrong, &spec("mlp", "mlp.onnx"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Refused {
                status: 401,
                category: ErrorCategory::Unauthorized,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.retryable());
}
