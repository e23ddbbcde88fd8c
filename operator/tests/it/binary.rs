//! The `webaccel-operator` binary end to end: it reads a kubeconfig, lists and watches
//! through the test kit's fake API server over HTTP (20 settled pools of 3 browsers),
//! reconciles every
//! pool once it holds the Lease, and serves its metrics. Leader election with three
//! replicas: after SIGKILL of the holder the next takes over once the Lease has gone
//! unrenewed for its duration; after SIGTERM the holder releases it and exits 0, and the
//! next leads at once. Both takeover times are printed.

use std::process::Command;
use std::time::{Duration, Instant};

use webaccel_testkit::free_port;
use webaccel_testkit::kube::{FleetShape, Options, fleet};

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn get(url: &str) -> Option<String> {
    reqwest::get(url).await.ok()?.text().await.ok()
}

fn kubeconfig(dir: &std::path::Path, api: &str) -> std::path::PathBuf {
    let path = dir.join("config");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: '{api}'}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: nobody, namespace: default}}}}]\n\
             users: [{{name: nobody, user: {{}}}}]\n"
        ),
    )
    .unwrap();
    path
}

/// One operator replica, leader election on as deployed (default Lease timings).
fn operator(kubeconfig: &std::path::Path, identity: &str, metrics_port: u16) -> Killed {
    let child = Command::new(env!("CARGO_BIN_EXE_webaccel-operator"))
        .args([
            "--lease-namespace=webaccel-system",
            &format!("--identity={identity}"),
            &format!("--metrics-addr=127.0.0.1:{metrics_port}"),
            // The fake pods' IPs lead nowhere; do not wait long for their agents.
            "--agent-timeout=200ms",
        ])
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    Killed(child)
}

async fn holder(api: &str) -> Option<String> {
    let lease = get(&format!(
        "{api}/apis/coordination.k8s.io/v1/namespaces/webaccel-system/leases/webaccel-operator"
    ))
    .await?;
    let v: serde_json::Value = serde_json::from_str(&lease).ok()?;
    v["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

/// Waits until `who` holds the Lease; how long that took.
async fn until_holder(api: &str, who: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    while holder(api).await.as_deref() != Some(who) {
        assert!(
            started.elapsed() < limit,
            "{who} did not take the lease within {limit:?} (holder: {:?})",
            holder(api).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

fn signal(p: &Killed, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.0.id() as i32), sig).unwrap();
}

#[tokio::test]
async fn the_operator_reconciles_through_a_kubeconfig_and_hands_the_lease_over() {
    let shape = FleetShape {
        pools: 20,
        browsers: 3,
        autoscale: false,
        models: false,
    };
    let (_, fake) = fleet(
        shape,
        Options {
            log_calls: false,
            ..Options::default()
        },
    );
    let api = fake.spawn_http().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(dir.path(), &api);

    let metrics_port = free_port();
    let first = operator(&kubeconfig, "op-1", metrics_port);

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
    assert_eq!(holder(&api).await.as_deref(), Some("op-1"));

    // A second replica waits, watching the Lease. The holder is killed (SIGKILL: no
    // release): the second takes over once it has seen the Lease unrenewed for its
    // duration, by its own clock.
    let second = operator(&kubeconfig, "op-2", free_port());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        holder(&api).await.as_deref(),
        Some("op-1"),
        "op-1 still leads"
    );
    signal(&first, nix::sys::signal::Signal::SIGKILL);
    let after_kill = until_holder(&api, "op-2", Duration::from_secs(30)).await;

    // A third waits; the second is stopped as Kubernetes stops a pod (SIGTERM): it
    // finishes, releases the Lease, exits 0, and the third leads at once.
    let third = operator(&kubeconfig, "op-3", free_port());
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&second, nix::sys::signal::Signal::SIGTERM);
    let after_term = until_holder(&api, "op-3", Duration::from_secs(30)).await;
    let mut second = second;
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = second.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the operator did not stop within 15 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "lease takeover: {:.2} s after SIGKILL of the holder (target ≤ 15 s), {:.2} s after SIGTERM (target ≤ 2 s)",
            after_kill.as_secs_f64(),
            after_term.as_secs_f64()
        );
    }
    assert!(
        after_kill <= Duration::from_secs(15),
        "{after_kill:?} after SIGKILL"
    );
    assert!(
        after_term <= Duration::from_secs(2),
        "{after_term:?} after SIGTERM"
    );
    drop(third);
}
