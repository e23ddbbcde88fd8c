//! Text generation through the gateway over two real agents (each with its own
//! Chromium serving the fixture decoder): the stock OpenAI client gets onnxruntime's
//! generations streamed through; a client gone cancels its sequence in the page; a
//! browser killed mid-stream ends that stream with an error event, and the streams
//! after it go to the other browser.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use webaccel_testkit::fixtures::fixture;
use webaccel_testkit::generation::{decoder_prompt, last_event, long_stream};
use webaccel_testkit::{AgentProcess, Launch, procs};

use crate::support::{READY, agent_ref, gateway, settings, wait_model};

fn decoder_agent() -> AgentProcess {
    let spec = format!(
        "llm=file://{},tokenizer=file://{},backend=wasm",
        fixture("decoder/model.onnx").display(),
        fixture("decoder/tokenizer.json").display()
    );
    AgentProcess::spawn_with(Launch::new(&[spec]).quiet())
}

fn story() -> (String, String) {
    let p = decoder_prompt("story");
    (
        p["text"].as_str().unwrap().to_owned(),
        p["completion"].as_str().unwrap().to_owned(),
    )
}

async fn sequences(agent: &AgentProcess) -> (u64, u64) {
    let stats = agent.stats().await;
    let g = stats.models["llm"].generation.clone().unwrap_or_default();
    (g.sequences, g.cancelled)
}

#[tokio::test]
async fn generations_stream_through_the_gateway_and_fail_over_before_their_first_token() {
    let _machine = webaccel_testkit::alone().await;
    let (a, b) = (decoder_agent(), decoder_agent());
    a.wait_standby(READY).await;
    b.wait_standby(READY).await;
    let gw = gateway(vec![agent_ref(&a), agent_ref(&b)], settings(|_| {})).await;
    wait_model(&gw, "llm").await;

    // The stock OpenAI client, through the gateway, against onnxruntime.
    let out = webaccel_testkit::fixtures::python_client("openai_generate.py", &gw.http()).await;
    assert!(out.contains("all checks passed"), "{out}");
    // Both browsers generated (p2c spreads the streams).
    for agent in [&a, &b] {
        let g = agent.stats().await.models["llm"]
            .generation
            .clone()
            .unwrap();
        assert!(g.generations > 0, "{} generated nothing: {g:?}", agent.base);
    }
    let http = reqwest::Client::new();

    // A client gone mid-stream: the gateway cancels, the page frees the sequence.
    drop(long_stream(&http, &gw.http()).await);
    let start = Instant::now();
    loop {
        let (sa, ca) = sequences(&a).await;
        let (sb, cb) = sequences(&b).await;
        if sa + sb == 0 && ca + cb == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not cancelled: sequences {sa}+{sb}, cancelled {ca}+{cb}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A browser killed mid-stream (frozen first, so its stream cannot finish): that
    // stream ends with an error event; streams after it are answered by the other.
    let mut response = long_stream(&http, &gw.http()).await;
    let (sa, _) = sequences(&a).await;
    let (victim, survivor) = if sa == 1 { (&a, &b) } else { (&b, &a) };
    let pid = victim.browser_pid().await;
    procs::of_kind(pid, "renderer")
        .into_iter()
        .for_each(|r| procs::signal(r, Signal::SIGSTOP));
    procs::signal_group(pid, Signal::SIGKILL);
    let mut body = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), response.chunk())
        .await
        .expect("the stream hangs after its browser was killed")
        .unwrap()
    {
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).unwrap();
    assert_eq!(
        last_event(&text)["error"]["code"],
        "browser_crashed",
        "{text}"
    );

    let (prompt, want) = story();
    let before = survivor.stats().await.models["llm"]
        .generation
        .clone()
        .unwrap()
        .generations;
    for _ in 0..4 {
        let r = http
            .post(format!("{}/v2/models/llm/generate", gw.http()))
            .json(
                &json!({"text_input": prompt, "parameters": {"max_tokens": 24, "temperature": 0}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["text_output"], want.as_str(), "{answer}");
    }
    let after = survivor.stats().await.models["llm"]
        .generation
        .clone()
        .unwrap()
        .generations;
    assert!(after > before, "the survivor took none: {before} → {after}");

    let metrics = http
        .get(format!(
            "http://{}/metrics",
            gw.running.admin.expect("admin listener")
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "webaccel_gateway_generations_total{model=\"llm\",outcome=\"ok\"}",
        "webaccel_gateway_generations_total{model=\"llm\",outcome=\"cancelled\"} 1",
        "webaccel_gateway_generations_total{model=\"llm\",outcome=\"browser_crashed\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    gw.shutdown().await;
}
