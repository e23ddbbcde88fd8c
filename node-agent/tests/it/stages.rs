//! Where a request's time goes: a stock client asking for the stages gets each one,
//! they tile the agent's span (the page's tiling its own), and the agent keeps them as
//! histograms and as the slowest 1%'s breakdowns in `/v1/stats`; the request path was
//! warmed before the agent said ready, and its own warm-up requests are not counted.

use serde_json::Value;
use webaccel_api::timing::Stage;

use crate::common::{Agent, TOKEN, fixture, model_uri};

/// The agent's stages, in path order: what a request straight to an agent passes.
const AGENT_STAGES: [Stage; 8] = [
    Stage::Receive,
    Stage::AgentQueue,
    Stage::PageLink,
    Stage::PageQueue,
    Stage::Decode,
    Stage::Run,
    Stage::Encode,
    Stage::AgentReply,
];

/// `triton_stages.py`'s lines: the client's milliseconds and the answer's parameters.
async fn stages_from_tritonclient(base: &str, model: &str, n: usize) -> Vec<(f64, Value)> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/triton_stages.py"
    );
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(base)
        .arg(fixture(""))
        .arg(model)
        .arg(n.to_string())
        .args(["--token", TOKEN])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["client_ms"].as_f64().unwrap(), v["parameters"].clone())
        })
        .collect()
}

#[tokio::test]
async fn a_stock_client_gets_the_stages_and_the_agent_keeps_the_slowest() {
    let _machine = webaccel_testkit::beside().await;
    let agent = Agent::start(
        &[format!("mlp={},backend=wasm", model_uri("mlp.onnx"))],
        &[],
    )
    .await;
    // Before it said ready the agent sent the model requests through the page itself.
    let (_, described) = agent.get("/v1/repository/models/mlp").await;
    let warmed = &described["status"]["path_warmup"];
    assert_eq!(warmed["requests"], 200, "{described}");
    assert!(warmed["last_ms"].as_f64() > Some(0.0), "{described}");
    let answers = stages_from_tritonclient(&agent.base, "mlp", 40).await;
    assert_eq!(answers.len(), 40);
    for (client_ms, params) in &answers {
        let stage = |s: Stage| {
            params[format!("stage_{}_ms", s.as_str())]
                .as_f64()
                .unwrap_or_else(|| panic!("no {} in {params}", s.as_str()))
        };
        for s in AGENT_STAGES {
            assert!(stage(s) >= 0.0, "{params}");
        }
        // Stages the agent has no part in are not made up.
        assert!(params.get("stage_route_ms").is_none(), "{params}");
        assert!(params.get("stage_bridge_ms").is_none(), "{params}");
        // `run` is the page's compute time; the page's four stages are its whole span.
        assert_eq!(stage(Stage::Run), params["compute_ms"].as_f64().unwrap());
        let page: f64 = [Stage::PageQueue, Stage::Decode, Stage::Run, Stage::Encode]
            .into_iter()
            .map(stage)
            .sum();
        let page_ms = params["page_ms"].as_f64().unwrap();
        assert!(
            (page - page_ms).abs() < 1e-6,
            "page stages {page} vs page_ms {page_ms}"
        );
        // (The page's clock ticks in 5 µs steps, so its own shortest stages may read 0.)
        assert!(stage(Stage::PageLink) > 0.0, "{params}");
        // Together they are the agent's span, inside what the client waited.
        let total: f64 = AGENT_STAGES.into_iter().map(stage).sum();
        assert!(
            total < *client_ms,
            "stages {total} ms, client {client_ms} ms: {params}"
        );
    }
    // The slowest 1% (here the slowest of 40), whole, with the front's `send` too. (A
    // report is worked out at most once a second.)
    let started = std::time::Instant::now();
    let tail = loop {
        let tail = agent.stats().await.tail.expect("a tail section");
        if tail.requests == 40 || started.elapsed() > std::time::Duration::from_secs(5) {
            break tail;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(tail.requests, 40);
    assert_eq!(tail.tail_requests, 1);
    let slowest = &tail.slowest[0];
    assert_eq!(slowest.model, "mlp");
    assert!(
        slowest.total_ms >= tail.p99_ms && tail.p99_ms >= tail.p50_ms,
        "{tail:?}"
    );
    assert!(slowest.stages.send.is_some(), "{slowest:?}");
    assert!(
        slowest.stages.total() <= slowest.total_ms + 1e-6,
        "{slowest:?}"
    );
    let names: Vec<&str> = tail.stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(
        names,
        [
            "receive",
            "agent_queue",
            "page_link",
            "page_queue",
            "decode",
            "run",
            "encode",
            "agent_reply",
            "send"
        ]
    );
    assert!(tail.dominant.is_some());
    // One histogram per stage, each with every request.
    let metrics = agent.metrics().await;
    for s in ["receive", "run", "page_link", "send"] {
        let line =
            format!("webaccel_agent_request_stage_seconds_count{{model=\"mlp\",stage=\"{s}\"}} 40");
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }
}
