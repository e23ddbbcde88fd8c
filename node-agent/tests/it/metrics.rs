//! The agent's rows in a real ClickHouse server: one per request with its outcome, one
//! per browser start and stop; and an agent started while ClickHouse is unreachable
//! serves anyway, spools, says so in /readyz, and delivers every row once it is back.

use std::time::{Duration, Instant};

use crate::common::{Agent, model_uri};
use serde_json::json;
use webaccel_analytics::local::LocalClickHouse;

async fn rows(ch: &LocalClickHouse, sql: &str) -> Vec<String> {
    ch.query(sql)
        .await
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_request_and_browser_event_becomes_a_row() {
    let _machine = webaccel_testkit::beside().await;
    let ch = LocalClickHouse::start().await.unwrap();
    let url = ch.url();
    let mut agent = Agent::start(
        &[format!(
            "mlp={},backend=wasm,task=vision",
            model_uri("mlp.onnx")
        )],
        &[
            "--clickhouse-url",
            &url,
            "--clickhouse-database",
            "agent_metrics",
            "--pool",
            "p1",
            "--pod-name",
            "pod-x",
        ],
    )
    .await;
    for _ in 0..10 {
        assert_eq!(agent.infer_reference("mlp", "mlp").await.0, 200);
    }
    let bad =
        json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    for _ in 0..2 {
        assert_eq!(agent.post("/v2/models/mlp/infer", &bad).await.0, 400);
    }
    let (_, ready) = agent.get("/readyz").await;
    assert_eq!(ready["metrics"]["enabled"], true, "{ready}");
    // The writer's totals are Prometheus counters too.
    let want =
        r#"webaccel_agent_metric_rows_total{table="inference_performance",state="written"} 12"#;
    let start = Instant::now();
    loop {
        let text = agent.metrics().await;
        if text.contains(want) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{want} not in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(agent.terminate(Duration::from_secs(30)).unwrap().success());

    let by_outcome = rows(
        &ch,
        "SELECT outcome, error_category, count() FROM agent_metrics.inference_performance FINAL \
         GROUP BY outcome, error_category ORDER BY outcome",
    )
    .await;
    assert_eq!(by_outcome, ["error\tbad_request\t2", "ok\t\t10"]);
    let labels = rows(
        &ch,
        "SELECT DISTINCT pool, pod, model, task, precision, backend, adapter_kind, browser \
         FROM agent_metrics.inference_performance",
    )
    .await;
    assert_eq!(
        labels,
        ["p1\tpod-x\tmlp\tvision\tfp32\twasm\tnone\tchromium"]
    );
    let timings = rows(
        &ch,
        "SELECT min(latency_ms) > 0, min(inference_ms) > 0, min(init_ms) > 0, min(bytes_in), max(batch_size), \
         min(dynamic_batch_size), max(dynamic_batch_size) \
         FROM agent_metrics.inference_performance WHERE outcome = 'ok'",
    )
    .await;
    // Unbatched: each request ran alone, with its own 2 rows.
    assert_eq!(timings, ["1\t1\t1\t128\t2\t2\t2"]);
    // Each success carries its stages: the page's tile its span (its `run` being
    // `inference_ms`), the agent's around them, inside the row's latency; a failure none.
    // (The page's clock ticks in 5 µs steps: its shortest stages may read 0 on a row.)
    let stages = rows(
        &ch,
        "SELECT outcome, min(receive_ms) > 0, min(agent_queue_ms) > 0, min(page_link_ms) > 0, \
         max(decode_ms) > 0, max(encode_ms) > 0, min(agent_reply_ms) > 0, \
         max(abs(agent_queue_ms + page_link_ms + page_queue_ms + decode_ms + inference_ms \
             + encode_ms + agent_reply_ms - latency_ms)) < 0.05 \
         FROM agent_metrics.inference_performance GROUP BY outcome ORDER BY outcome",
    )
    .await;
    assert_eq!(stages[1], "ok\t1\t1\t1\t1\t1\t1\t1", "{stages:?}");
    assert!(
        stages[0].starts_with("error\t0\t0\t0\t0\t0\t0\t"),
        "{stages:?}"
    );
    let events = rows(&ch, "SELECT event, count() FROM agent_metrics.browser_connections GROUP BY event ORDER BY event").await;
    assert_eq!(events, ["started\t1", "stopped\t1"]);
}

#[tokio::test]
async fn clickhouse_down_at_start_spools_and_delivers_later() {
    let _machine = webaccel_testkit::beside().await;
    let port = crate::common::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut agent = Agent::start(
        &[format!("mlp={},backend=wasm", model_uri("mlp.onnx"))],
        &["--clickhouse-url", &url, "--clickhouse-database", "late"],
    )
    .await;
    for _ in 0..5 {
        assert_eq!(
            agent.infer_reference("mlp", "mlp").await.0,
            200,
            "the agent serves without ClickHouse"
        );
    }
    // The writer tries, fails, spools; /readyz says so while staying ready.
    let start = Instant::now();
    let metrics = loop {
        let (code, ready) = agent.get("/readyz").await;
        assert_eq!(code, 200);
        let m = ready["metrics"].clone();
        if m["inference_performance"]["spooled"].as_u64() >= Some(5) {
            break m;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(metrics["healthy"], false, "{metrics}");
    assert!(
        metrics["schema"].as_str().unwrap().contains(&url),
        "{metrics}"
    );

    let ch = LocalClickHouse::start_on(port).await.unwrap();
    let start = Instant::now();
    loop {
        let (_, stats) = agent.get("/v1/stats").await;
        let m = &stats["metrics"];
        if m["schema"] == "ready" && m["inference_performance"]["replayed"].as_u64() >= Some(5) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(agent.terminate(Duration::from_secs(30)).unwrap().success());
    assert_eq!(
        rows(&ch, "SELECT count() FROM late.inference_performance FINAL").await,
        ["5"]
    );
}
