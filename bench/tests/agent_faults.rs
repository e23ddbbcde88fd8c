//! Every browser fault heals, with requests in flight at concurrency 4: each scenario
//! runs `webaccel-agent-bench faults` (a fresh agent, real Chromium, mlp on wasm and cnn
//! on webgpu, four clients sending back to back) and checks its outcome. Every request
//! either succeeded with the reference answer or failed with a retryable 503; none hung;
//! serving resumed. The timings it reports are benchmark figures, not asserted here.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // test code: a panic is the failure report

use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

/// The scenarios load the machine; run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn run(scenario: &str) -> Value {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("faults.json");
    let out = Command::new(env!("CARGO_BIN_EXE_webaccel-agent-bench"))
        .args(["faults", "--scenario", scenario, "--json"])
        .arg(&json)
        .arg("--agent")
        .arg(webaccel_testkit::agent::agent_binary())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{scenario}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{stdout}");
    let reports: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    reports[0].clone()
}

/// What must hold after every fault.
fn healed(r: &Value) {
    assert_eq!(r["hung"], 0, "requests hung: {r:#}");
    assert_eq!(r["failed_other"], 0, "non-retryable failures: {r:#}");
    assert_eq!(r["wrong"], 0, "wrong answers: {r:#}");
    assert!(
        r["serving_again_ms"].is_f64(),
        "serving never resumed: {r:#}"
    );
    assert!(r["succeeded"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(r["zombies"], 0, "orphaned processes left unreaped: {r:#}");
    assert_eq!(
        r["leaked"],
        serde_json::json!([]),
        "processes of killed browsers left running: {r:#}"
    );
}

fn replaced_because(r: &Value, reason: &str) {
    assert!(r["active_replaced_ms"].is_f64(), "not replaced: {r:#}");
    assert!(r["restarts"].as_u64().unwrap() >= 1, "{r:#}");
    assert_eq!(r["last_restart_reason"], reason, "{r:#}");
}

#[test]
fn active_browser_killed() {
    let r = run("active-kill");
    healed(&r);
    replaced_because(&r, "crashed");
}

/// The finding of the issue: active and standby killed at once left the agent stuck in
/// `restarting` while `/healthz` said live.
#[test]
fn every_browser_process_killed_at_once() {
    let r = run("all-kill");
    healed(&r);
    replaced_because(&r, "crashed");
}

#[test]
fn page_renderer_killed() {
    let r = run("renderer-kill");
    healed(&r);
    replaced_because(&r, "crashed");
}

#[test]
fn frozen_browser_process_is_detected_killed_and_replaced() {
    let r = run("active-stop");
    healed(&r);
    replaced_because(&r, "hung");
}

#[test]
fn gpu_process_killed() {
    let r = run("gpu-kill");
    healed(&r);
    replaced_because(&r, "gpu_lost");
}

#[test]
fn standby_killed_is_replaced_without_failing_a_request() {
    let r = run("standby-kill");
    healed(&r);
    assert_eq!(r["failed_retryable"], 0, "{r:#}");
    assert_eq!(r["restarts"], 0, "{r:#}");
    assert!(r["standby_replaced_ms"].is_f64(), "{r:#}");
}

#[test]
fn kill_every_two_seconds_then_resume() {
    let r = run("kill-loop");
    healed(&r);
    assert!(r["restarts"].as_u64().unwrap() >= 5, "{r:#}");
}
