//! `webaccel up` keeps the ClickHouse server it started running: SIGKILLed under load it
//! comes back on the same data, `webaccel status` shows it, and every request answered
//! meanwhile has its row once the spools replay (it used to stay down for good, with
//! every row from then on waiting in spools). An agent SIGKILLed with rows in memory
//! loses none of them: `up` writes what its journal kept.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use webaccel_testkit::fixtures::fixture;
use webaccel_testkit::up::{Up, clickhouse_query, clickhouse_url, model_yaml, pool_yaml};

async fn send(up: &Up, body: &Value, n: usize) {
    let client = reqwest::Client::new();
    for _ in 0..n {
        let r = client
            .post(format!("{}/v2/models/mlp/infer", up.http))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    }
}

#[tokio::test]
async fn the_local_clickhouse_comes_back_after_sigkill_and_no_row_is_lost() {
    let _machine = webaccel_testkit::alone().await;
    let (up, s, url, body) = one_model_served().await;
    send(&up, &body, 40).await;

    let pid = i32::try_from(s["clickhouse_server"]["pid"].as_u64().unwrap()).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    // Served while the server is down: the rows spool.
    send(&up, &body, 40).await;
    let s = up
        .until("ClickHouse restarted", Duration::from_secs(90), |s| {
            s["clickhouse_server"]["state"] == "running" && s["clickhouse_server"]["restarts"] == 1
        })
        .await;
    assert_ne!(s["clickhouse_server"]["pid"], pid);
    assert!(
        s["clickhouse_server"]["last_exit"]
            .as_str()
            .unwrap()
            .contains('9'),
        "{s:#}"
    );
    let (ok, text, _) = up.webaccel(&["status"]);
    assert!(
        ok && text.contains("clickhouse server: running, restarted 1 times"),
        "{text}"
    );
    send(&up, &body, 20).await;

    // Every answered request has its gateway row and its agent row, once.
    wait_rows(&url, 100, Duration::from_secs(60)).await;
}

/// `up` with one pool and the MLP on it, served, with its ClickHouse running: `up`, its
/// status, its ClickHouse URL and a request body.
async fn one_model_served() -> (Up, Value, String, Value) {
    let up = Up::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_webaccel")),
        &[
            ("pool.yaml", pool_yaml("p", "  replicas: 1\n")),
            ("mlp.yaml", model_yaml("mlp", "p", &fixture("mlp.onnx"), 1)),
        ],
        &[],
    );
    let s = up
        .until(
            "the model served and ClickHouse running",
            Duration::from_secs(120),
            |s| {
                s["clickhouse_server"]["state"] == "running"
                    && webaccel_testkit::up::model(s, "mlp")["status"]["loadedReplicas"] == 1
            },
        )
        .await;
    let url = clickhouse_url(&s);
    let fixture_json: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("mlp.json")).unwrap()).unwrap();
    let body = serde_json::json!({"inputs": fixture_json["inputs"]});
    (up, s, url, body)
}

/// Waits until the ClickHouse at `url` holds `n` gateway rows and `n` agent rows, each
/// once (distinct row ids; the gateway's also counted after merging).
async fn wait_rows(url: &str, n: u64, limit: Duration) {
    let started = Instant::now();
    loop {
        let gateway = clickhouse_query(
            url,
            "SELECT uniqExact(row_id), count() FROM webaccel.gateway_requests FINAL",
        )
        .await;
        let agent = clickhouse_query(
            url,
            "SELECT uniqExact(row_id) FROM webaccel.inference_performance FINAL",
        )
        .await;
        if gateway == Some(format!("{n}\t{n}")) && agent == Some(n.to_string()) {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "rows: gateway {gateway:?}, agent {agent:?}, want {n} of each"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn an_agent_killed_with_rows_in_memory_loses_none_of_them() {
    let _machine = webaccel_testkit::alone().await;
    let (up, s, url, body) = one_model_served().await;
    send(&up, &body, 20).await;
    wait_rows(&url, 20, Duration::from_secs(60)).await;

    // 30 more, then the agent is killed at once: its writer commits once a second, so
    // their rows are still in its memory.
    let agent = s["browsers"][0]["pid"].as_i64().unwrap();
    send(&up, &body, 30).await;
    kill(
        Pid::from_raw(i32::try_from(agent).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    wait_rows(&url, 50, Duration::from_secs(90)).await;
}
