//! The gateway binary stopping as a kubelet stops it: SIGTERM while stock tritonclient
//! clients send through it. Endpoints take seconds to drop a pod that was told to stop,
//! so clients keep coming for a while (here 1.5 s); with the drain period the gateway
//! answers them (not ready, each answer closing its connection) and then exits 0. Without
//! one (`--drain-period 0s`, how it used to stop) the same schedule loses requests to
//! refused connections, as a rollout on a real cluster did.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use webaccel_testkit::triton::TritonLoad;
use webaccel_testkit::{TOKEN, free_port};

use crate::support::{READY, spawn_agent};

struct Stopped {
    load: serde_json::Value,
    /// `/readyz` after SIGTERM, while the clients still send.
    readyz: Option<u16>,
    /// The `Connection` header of an answer after SIGTERM.
    connection: Option<String>,
    exit_after: Duration,
    success: bool,
}

async fn stop_under_load(agent_url: &str, token_file: &std::path::Path, drain: &str) -> Stopped {
    let (http, admin) = (free_port(), free_port());
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_webaccel-gateway"))
        .args([
            format!("--http=127.0.0.1:{http}"),
            "--grpc=127.0.0.1:0".to_owned(),
            format!("--admin=127.0.0.1:{admin}"),
            format!("--agent={agent_url},token-file={}", token_file.display()),
            format!("--drain-period={drain}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{http}");
    let started = Instant::now();
    while !reqwest::get(format!("{base}/v2/models/mlp/ready"))
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "mlp never ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut load = TritonLoad::start(&base, 4);
    load.send("mlp").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let pid = Pid::from_raw(i32::try_from(gateway.id()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    let term = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let readyz = reqwest::get(format!("http://127.0.0.1:{admin}/readyz"))
        .await
        .ok()
        .map(|r| r.status().as_u16());
    let connection = reqwest::Client::new()
        .post(format!("{base}/v2/models/mlp/infer"))
        .json(&crate::support::mlp_body())
        .send()
        .await
        .ok()
        .and_then(|r| {
            r.headers()
                .get("connection")
                .map(|v| v.to_str().unwrap().to_owned())
        });
    // The endpoints converge: the clients stop coming 1.5 s after SIGTERM.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let load = load.finish().await;
    let status = tokio::task::spawn_blocking(move || gateway.wait().unwrap())
        .await
        .unwrap();
    Stopped {
        load,
        readyz,
        connection,
        exit_after: term.elapsed(),
        success: status.success(),
    }
}

#[tokio::test]
async fn sigterm_under_load_drains_before_closing_the_ports() {
    let _machine = webaccel_testkit::alone().await;
    let agent = spawn_agent(&["mlp"], &[]);
    agent.wait_ready(READY).await;
    let token = agent.dir.path().join("gateway-token");
    std::fs::write(&token, TOKEN).unwrap();

    let drained = stop_under_load(&agent.base, &token, "3s").await;
    let ok = drained.load["ok"]["mlp"].as_u64().unwrap_or(0);
    let failed = drained.load["failed"].as_array().unwrap();
    assert!(ok > 0, "{}", drained.load);
    assert!(failed.is_empty(), "failed while draining: {failed:?}");
    assert_eq!(drained.readyz, Some(503), "not ready once told to stop");
    assert_eq!(drained.connection.as_deref(), Some("close"));
    assert!(drained.success, "exit status");
    assert!(
        drained.exit_after >= Duration::from_secs(3)
            && drained.exit_after < Duration::from_secs(10),
        "exited {:?} after SIGTERM",
        drained.exit_after
    );

    // The control: no drain period, the same clients, the same schedule.
    let abrupt = stop_under_load(&agent.base, &token, "0s").await;
    let failed = abrupt.load["failed"].as_array().unwrap();
    assert!(
        !failed.is_empty(),
        "without a drain nothing failed: the test cannot tell: {}",
        abrupt.load
    );
    println!(
        "drain 3s: {ok} answered, 0 failed, exit after {:?}; no drain: {} answered, {} failed, e.g. {}",
        drained.exit_after,
        abrupt.load["ok"]["mlp"],
        failed.len(),
        failed[0]
    );
}
