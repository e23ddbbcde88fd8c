//! The chaos soak, short: `webaccel-up-bench --suite chaos` for three minutes (two pools,
//! Chromium and Firefox, five deployments, HTTP and gRPC clients, a fault every 15 s from
//! a fixed seed), then its accounting must be clean: every answered request has exactly
//! one `ok` gateway row and one `ok` agent row, no request failed (but for one known race
//! and requests in flight at a gateway restart, both bounded below), and nothing `up`
//! started outlives it. Memory and open-file slopes are reported, not asserted (three
//! minutes are too short to tell growth from noise; the hour-long run is the figure).
#![allow(clippy::unwrap_used, clippy::print_stdout)] // test code: a panic is the failure report

use std::process::Command;

use serde_json::Value;

#[tokio::test]
async fn three_minutes_of_faults_lose_no_request_no_row_and_no_process() {
    let _machine = webaccel_testkit::alone().await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("chaos.json");
    let webaccel = webaccel_testkit::agent::agent_binary().with_file_name("webaccel");
    let out = Command::new(env!("CARGO_BIN_EXE_webaccel-up-bench"))
        .args([
            "--suite",
            "chaos",
            "--duration",
            "3m",
            "--seed",
            "1",
            "--out",
        ])
        .arg(&json)
        .arg("--webaccel")
        .arg(&webaccel)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert!(r["answered"].as_u64().unwrap() > 1000, "{r:#}");
    // One known race is open: a `model_not_ready` right at a browser's SIGKILL (3 in one
    // three-minute run, 1 in the hour-long one). Anything else, or more than that, fails.
    let answered = r["answered"].as_u64().unwrap();
    let mut failed = 0;
    for (cause, f) in r["failed"].as_object().unwrap() {
        assert!(
            cause.ends_with("http 503 model_not_ready"),
            "{cause}: {r:#}"
        );
        failed += f["count"].as_u64().unwrap();
    }
    assert!(
        failed * 10_000 <= answered,
        "{failed} failed of {answered}: {r:#}"
    );
    // Requests in flight on a connection the restarted gateway closed may fail (a client
    // cannot tell whether such a request ran); they are counted apart, and bounded: a
    // handful per restart, not a window of lost service.
    let restarts = r["faults"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["fault"] == "restarted the gateway")
        .count() as u64;
    let in_flight: u64 = r["failed_in_flight_at_gateway_restart"]
        .as_object()
        .unwrap()
        .values()
        .map(|f| f["count"].as_u64().unwrap())
        .sum();
    assert!(
        in_flight <= 20 * restarts,
        "{in_flight} failed at {restarts} gateway restarts: {r:#}"
    );
    for rows in ["gateway_rows", "agent_rows"] {
        assert_eq!(
            r[rows],
            serde_json::json!({"missing": {}, "duplicated": {}}),
            "{rows}: {r:#}"
        );
    }
    assert_eq!(r["survivors_after_stop"], serde_json::json!([]), "{r:#}");
    assert_eq!(r["zombies_after_stop"], 0, "{r:#}");
    assert_eq!(r["lingering_zombies_below_up"], 0, "{r:#}");
}
