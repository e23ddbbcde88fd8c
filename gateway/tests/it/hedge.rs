//! Hedged requests over real agents: a browser that stops answering costs a client the
//! hedge delay (a quantile of the model's recent round trips), not a timeout, and the
//! hedges are counted.

use std::time::{Duration, Instant};

use serde_json::Value;
use webaccel_gateway::hedge::HedgePolicy;
use webaccel_testkit::TOKEN;
use webaccel_testkit::fixtures::matches_reference;

use crate::support::{
    READY, agent_ref, gateway, mlp_body, mlp_expected, settings, spawn_agent, wait_model,
};

/// The value of counter `name` with `labels` in a Prometheus exposition (0 if absent).
fn counter(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{{labels}}}")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_frozen_page_costs_the_hedge_delay_not_a_timeout() {
    let _machine = webaccel_testkit::alone().await;
    // Agent a's page will hang; its agent is told not to notice for 20 s.
    let a = spawn_agent(
        &["mlp"],
        &["--enable-debug-endpoints", "--hang-timeout", "20s"],
    );
    let b = spawn_agent(&["mlp"], &[]);
    a.wait_standby(READY).await;
    b.wait_standby(READY).await;
    let gw = gateway(
        vec![agent_ref(&a), agent_ref(&b)],
        settings(|s| {
            s.policy.hedge = Some(HedgePolicy {
                quantile: 0.95,
                min_delay: Duration::from_millis(1),
            });
            s.backends.slow_start = Duration::ZERO;
            // Nor may the gateway's stall detection take the browser out: only the
            // hedges can save the requests sent to it.
            s.backends.stall_after = Duration::from_secs(60);
        }),
    )
    .await;
    wait_model(&gw, "mlp").await;
    let url = format!("{}/v2/models/mlp/infer", gw.http());
    let http = reqwest::Client::new();
    let (body, want) = (mlp_body(), mlp_expected());
    let infer = || async {
        let t = Instant::now();
        let r = http
            .post(&url)
            .header("webaccel-timeout", "15s")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert!(matches_reference(&v["outputs"], &want), "{v}");
        (
            t.elapsed(),
            v["parameters"]["browser"].as_str().unwrap_or("").to_owned(),
        )
    };
    // Enough answers for each model's delay to be known.
    for _ in 0..200 {
        infer().await;
    }
    let admin = format!("http://{}", gw.running.admin.unwrap());
    let metrics = || async {
        reqwest::get(format!("{admin}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = metrics().await;
    // Freeze a's page: whatever reaches it is never answered.
    reqwest::Client::new()
        .post(format!("{}/v1/debug/hang", a.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Four at a time, so that the frozen browser is picked whichever is faster.
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let round = futures::future::join_all((0..4).map(|_| infer())).await;
        for (took, _) in round {
            slowest = slowest.max(took);
        }
    }
    let after = metrics().await;
    let delta = |reason: &str| {
        let labels = format!("model=\"mlp\",reason=\"{reason}\"");
        counter(&after, "webaccel_gateway_hedges_total", &labels)
            - counter(&before, "webaccel_gateway_hedges_total", &labels)
    };
    println!(
        "slowest {slowest:?}; hedges sent {}, won {}",
        delta("sent"),
        delta("won")
    );
    assert!(delta("won") >= 1.0, "no hedge answered:\n{after}");
    assert!(delta("sent") >= delta("won"));
    // Without hedges a request sent to a would have waited for its 15 s deadline.
    assert!(
        slowest < Duration::from_secs(2),
        "slowest request {slowest:?}"
    );
    gw.shutdown().await;
}
