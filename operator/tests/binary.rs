//! The `webaccel-operator` binary end to end: it reads a kubeconfig, lists and watches
//! through a fake API server over HTTP (the bench's, in its own process), reconciles every
//! pool once it holds the Lease, serves its metrics, and exits cleanly on SIGTERM.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(url: &str) -> Option<String> {
    reqwest::get(url).await.ok()?.text().await.ok()
}

#[tokio::test]
async fn the_operator_reconciles_through_a_kubeconfig_serves_metrics_and_stops_on_sigterm() {
    let mut fake = Command::new(env!("CARGO_BIN_EXE_webaccel-operator-bench"))
        .args(["--serve-fake-api", "--pools", "20", "--browsers", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(fake.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _fake = Killed(fake);
    let api = format!("http://127.0.0.1:{}", line.trim());

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: '{api}'}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: nobody, namespace: default}}}}]\n\
             users: [{{name: nobody, user: {{}}}}]\n"
        ),
    )
    .unwrap();
    let metrics_port = free_port();
    let operator = Command::new(env!("CARGO_BIN_EXE_webaccel-operator"))
        .args([
            // Leader election on, as deployed: the fake keeps one Lease.
            "--lease-namespace=webaccel-system",
            "--identity=op-1",
            &format!("--metrics-addr=127.0.0.1:{metrics_port}"),
            // The fake pods' IPs lead nowhere; do not wait long for their agents.
            "--agent-timeout=200ms",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let mut operator = Killed(operator);

    // Every pool's status gets written, and the metrics say so.
    let started = Instant::now();
    let mut writes = 0;
    while writes < 20 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        writes = get(&format!("{api}/fake/status-patches"))
            .await
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
    }
    assert!(writes >= 20, "only {writes} status writes");
    let metrics = get(&format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap();
    let reconciles: f64 = metrics
        .lines()
        .find(|l| l.starts_with("webaccel_operator_reconciles_total{controller=\"browserpool\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no reconcile counter in:\n{metrics}"));
    assert!(reconciles >= 20.0, "{reconciles} reconciles");
    assert!(
        metrics.contains(
            r#"webaccel_operator_pool_browsers{namespace="ns7",pool="web",kind="desired"} 3"#
        ),
        "{metrics}"
    );

    let lease = get(&format!(
        "{api}/apis/coordination.k8s.io/v1/namespaces/webaccel-system/leases/webaccel-operator"
    ))
    .await
    .unwrap();
    assert!(lease.contains(r#""holderIdentity":"op-1""#), "{lease}");

    // SIGTERM: finish and exit 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(operator.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = operator.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the operator did not stop within 15 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");
}
