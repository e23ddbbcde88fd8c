use super::*;
use serde_json::json;

/// A capability report exactly as the page sends it (Chromium with SwiftShader, no WebNN).
fn swiftshader_report() -> serde_json::Value {
    json!({
        "user_agent": "Mozilla/5.0 HeadlessChrome/156",
        "webgpu": {"available": true, "adapter": {
            "vendor": "google", "architecture": "swiftshader", "device": "", "description": "",
            "is_fallback_adapter": true, "kind": "software", "features": ["shader-f16"],
            "max_buffer_size": 268435456.0, "max_storage_buffer_binding_size": 134217728.0}},
        "webnn": {
            "cpu": {"available": false, "reason": "navigator.ml is not exposed"},
            "gpu": {"available": false, "reason": "navigator.ml is not exposed"},
            "npu": {"available": false, "reason": "navigator.ml is not exposed"}},
        "wasm": {"simd": true, "threads": true, "cross_origin_isolated": true, "hardware_concurrency": 2},
        "ort_version": "1.30.0",
        "runtime": {"start_ms": 812.5, "error": null},
    })
}

#[test]
fn a_page_report_reads_into_backends_and_one_adapter_label() {
    let caps: Capabilities = serde_json::from_value(swiftshader_report()).unwrap();
    assert_eq!(caps.backends(), [Backend::Webgpu, Backend::Wasm]);
    assert_eq!(
        caps.adapter_label().as_deref(),
        Some("google swiftshader (software)")
    );
    assert_eq!(caps.backend_summary(), ["webgpu(software)", "wasm"]);
}

#[test]
fn an_unnamed_fallback_adapter_and_a_failed_runtime() {
    let mut report = swiftshader_report();
    report["webgpu"]["adapter"]["vendor"] = json!("");
    report["webgpu"]["adapter"]["architecture"] = json!("");
    report["webgpu"]["adapter"]["kind"] = json!("hardware");
    report["runtime"]["error"] = json!("wasm failed to compile");
    let caps: Capabilities = serde_json::from_value(report).unwrap();
    assert_eq!(
        caps.adapter_label().as_deref(),
        Some("unnamed (software)"),
        "fallback wins over kind"
    );
    assert_eq!(caps.backends(), [Backend::Webgpu]);
}

#[test]
fn stats_count_requests_per_model() {
    let stats = AgentStats {
        healthy: true,
        unhealthy_reason: None,
        ready: true,
        draining: false,
        pool: "p".into(),
        pod: "p-0".into(),
        outstanding: 3,
        browser_memory_bytes: None,
        reserved_bytes: 0,
        tail: None,
        in_flight: 1,
        queued: 1,
        max_in_flight: 64,
        heartbeat_rtt_ms: None,
        models: BTreeMap::from([
            (
                "a".to_owned(),
                ModelStats {
                    requests: 5,
                    ..Default::default()
                },
            ),
            (
                "b".to_owned(),
                ModelStats {
                    requests: 7,
                    ..Default::default()
                },
            ),
        ]),
        errors_by_category: BTreeMap::new(),
        browser: BrowserStatus {
            state: BrowserState::Ready,
            generation: 1,
            pid: Some(7),
            version: "Chrome/156".into(),
            restarts: 0,
            last_restart_reason: None,
            last_recovery_ms: None,
            cold_start_ms: None,
            failed_launches: 0,
            last_launch_error: None,
            standby_pid: None,
            standby_replacements: 0,
        },
        metrics: serde_json::Value::Null,
        page_workers: vec![PageWorker::default(); 2],
    };
    assert_eq!(stats.requests_served(), 12);
    assert_eq!(stats.parallelism(), 2);
    assert_eq!(stats.load(), 3);
    let back: AgentStats = serde_json::from_value(serde_json::to_value(&stats).unwrap()).unwrap();
    assert_eq!(back, stats);
}

#[test]
fn model_states_are_tagged_and_backend_labels_parse() {
    let failed = ModelState::Failed {
        reason: "bad digest".into(),
    };
    assert_eq!(
        serde_json::to_value(&failed).unwrap(),
        json!({"state": "failed", "reason": "bad digest"})
    );
    assert_eq!(
        backend_of("webnn:gpu"),
        Some((Backend::Webnn, Some(WebNnDevice::Gpu)))
    );
    assert_eq!(backend_of("wasm"), Some((Backend::Wasm, None)));
    assert_eq!(backend_of("cuda"), None);
}
