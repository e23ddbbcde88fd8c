//! The agent while its browser starts, and when it cannot: capabilities are a retryable
//! 503 until known (never a 200 with nothing in it), and a browser that keeps failing to
//! launch makes `/healthz` fail with the reason, so the kubelet restarts the pod.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use crate::common::{Agent, model_uri};

#[tokio::test]
async fn capabilities_are_a_retryable_503_until_the_browser_reports_them() {
    let _machine = webaccel_testkit::beside().await;
    let agent = Agent::spawn(
        &[format!("mlp={},backend=wasm", model_uri("mlp.onnx"))],
        &[],
    );
    let started = Instant::now();
    let mut unavailable = 0;
    let caps = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no capabilities"
        );
        let Ok(r) = agent
            .http
            .get(format!("{}/v1/capabilities", agent.base))
            .send()
            .await
        else {
            // Not listening yet.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        if status == 200 {
            break body;
        }
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["category"], "browser_unavailable", "{body}");
        assert_eq!(body["retryable"], true, "{body}");
        unavailable += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        unavailable > 0,
        "the first answers came before the browser started"
    );
    assert!(caps["wasm"].is_object(), "{caps}");
    assert!(caps["webgpu"].is_object(), "{caps}");
}

#[tokio::test]
async fn a_browser_that_cannot_start_makes_the_agent_unhealthy_with_the_reason() {
    let _machine = webaccel_testkit::beside().await;
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("chromium");
    std::fs::write(&fake, "#!/bin/sh\necho 'cannot open display' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = Agent::spawn(
        &[format!("mlp={},backend=wasm", model_uri("mlp.onnx"))],
        &["--chromium", fake.to_str().unwrap()],
    );
    let started = Instant::now();
    let reason = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "/healthz never failed"
        );
        if let Ok(r) = agent
            .http
            .get(format!("{}/healthz", agent.base))
            .send()
            .await
            && r.status() == 503
        {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["live"], false);
            break body["reason"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reason.contains("launches failed in a row"), "{reason}");
    assert!(reason.contains("exit code 3"), "{reason}");
    assert!(reason.contains("cannot open display"), "{reason}");
    let (status, body) = agent.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = agent.get("/v1/capabilities").await;
    assert_eq!(status, 503, "{body}");
}
