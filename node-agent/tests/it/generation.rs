//! Text generation in a real Chromium: the fixture decoder (a Llama-architecture graph
//! with grouped-query attention and its BPE tokenizer, `fixtures/make_decoder.py`)
//! served by an agent generates onnxruntime's tokens (`decoder/reference.json`) to the
//! stock OpenAI client and to Triton's generate extension, from one file or with an
//! external data file; graphs and tokenizers that cannot generate are refused at load
//! with the reason; a client that goes away frees its sequence; a browser killed
//! mid-stream ends the stream with a retryable error, and the next generation works.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use webaccel_api::agent::GenerationStats;
use webaccel_testkit::fixtures::python_client_with;
use webaccel_testkit::generation::{decoder_prompt, decoder_reference, last_event, long_stream};
use webaccel_testkit::procs;

use crate::common::{Agent, TOKEN, fixture, signal};

fn decoder_spec(name: &str, dir: &str) -> String {
    decoder_on(name, dir, "wasm")
}

fn decoder_on(name: &str, dir: &str, backend: &str) -> String {
    format!(
        "{name}=file://{},tokenizer=file://{},backend={backend}",
        fixture(&format!("{dir}/model.onnx")).display(),
        fixture("decoder/tokenizer.json").display()
    )
}

async fn generation_stats(agent: &Agent, model: &str) -> GenerationStats {
    agent.stats().await.models[model]
        .generation
        .clone()
        .unwrap_or_else(|| panic!("{model} reports no generation figures"))
}

/// The `data:` payloads of a server-sent event stream, read to its end.
async fn sse_events(response: reqwest::Response) -> Vec<Value> {
    let body = response.text().await.unwrap();
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn openai_and_triton_clients_get_onnxruntimes_generations() {
    let _machine = webaccel_testkit::beside().await;
    let agent = Agent::start(
        &[
            decoder_spec("llm", "decoder"),
            decoder_spec("llm-external", "decoder_external"),
            // WebGPU (SwiftShader here): the KV cache stays in GPU buffers between steps.
            decoder_on("llm-gpu", "decoder", "webgpu"),
            // The int8 cache, quantized in the page, on wasm and on WebGPU.
            format!(
                "{},kv_cache=int8",
                decoder_on("llm-int8", "decoder", "wasm")
            ),
            format!(
                "{},kv_cache=int8",
                decoder_on("llm-gpu-int8", "decoder", "webgpu")
            ),
        ],
        &[],
    )
    .await;
    let (_, gpu) = agent.get("/v1/repository/models/llm-gpu").await;
    assert_eq!(gpu["status"]["backend"], "webgpu", "{gpu}");

    // What each decoder's cache may grow to, which placement counts as taken: 16
    // sequences (the default) of 256 positions; a position is 512 bytes as float32 (2
    // layers, key and value, 2 kv heads of 16), twice at a step's peak, and 129 more as
    // int8 (16 bytes and a 4-byte scale per 32 positions, for each of the 8 vectors).
    let positions = 16 * 256;
    let mut reserved = 0;
    for (model, per_position) in [
        ("llm", 1024),
        ("llm-external", 1024),
        ("llm-gpu", 1024),
        ("llm-int8", 1024 + 129),
        ("llm-gpu-int8", 1024 + 129),
    ] {
        let (_, d) = agent.get(&format!("/v1/repository/models/{model}")).await;
        assert_eq!(
            d["status"]["kv_reserve_bytes"],
            positions * per_position,
            "{model}: {d}"
        );
        reserved += positions * per_position;
    }
    assert_eq!(agent.stats().await.reserved_bytes, reserved);

    // The stock OpenAI client: greedy, streamed, chat, logprobs, seeds, stop strings,
    // concurrent streams and refusals, against onnxruntime's generations; on wasm and
    // on WebGPU.
    for model in ["llm", "llm-gpu"] {
        let out = python_client_with(
            "openai_generate.py",
            &agent.base,
            &["--token", TOKEN, "--model", model],
        )
        .await;
        assert!(out.contains("all checks passed"), "{model}: {out}");
    }

    // Triton's generate extension (tritonclient has no client for it: plain HTTP, as
    // Triton's own documentation drives it), from the one-file graph and from the graph
    // with its weights in an external data file.
    let story = decoder_prompt("story");
    let want = story["completion"].as_str().unwrap();
    let n = decoder_reference()["max_new_tokens"].as_u64().unwrap();
    for model in ["llm", "llm-external"] {
        let body =
            json!({"text_input": story["text"], "parameters": {"max_tokens": n, "temperature": 0}});
        let (status, answer) = agent
            .post(&format!("/v2/models/{model}/generate"), &body)
            .await;
        assert_eq!(status, 200, "{model}: {answer}");
        assert_eq!(answer["text_output"], want, "{model}: {answer}");
        assert_eq!(answer["finish_reason"], "length", "{answer}");
        assert_eq!(answer["completion_tokens"], n, "{answer}");

        let response = agent
            .http
            .post(format!("{}/v2/models/{model}/generate_stream", agent.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let events = sse_events(response).await;
        let text: String = events
            .iter()
            .map(|e| e["text_output"].as_str().unwrap())
            .collect();
        assert_eq!(text, want, "{model}: {events:?}");
        assert!(events.len() as u64 >= n, "one event per token: {events:?}");
        assert_eq!(events.last().unwrap()["finish_reason"], "length");
    }

    // The int8 cache gives the same tokens on WebGPU as on wasm (the node tests hold
    // the wasm one token-exact against onnxruntime's reference running the scheme).
    let long = json!({"text_input": story["text"], "parameters": {"max_tokens": 96, "temperature": 0, "ignore_eos": true}});
    let mut texts = Vec::new();
    for model in ["llm-int8", "llm-gpu-int8"] {
        let (status, answer) = agent
            .post(&format!("/v2/models/{model}/generate"), &long)
            .await;
        assert_eq!(status, 200, "{model}: {answer}");
        assert_eq!(answer["completion_tokens"], 96, "{answer}");
        texts.push(answer["text_output"].as_str().unwrap().to_owned());
    }
    assert_eq!(texts[0], texts[1], "int8 cache: wasm and WebGPU differ");

    // The figures: every sequence has ended, and the tokens were counted.
    let stats = generation_stats(&agent, "llm").await;
    assert_eq!(stats.sequences, 0, "{stats:?}");
    assert!(stats.generations >= 20, "{stats:?}");
    assert!(stats.completion_tokens >= 20 * n / 2, "{stats:?}");
    assert!(
        stats.ttft_p50_ms.is_some() && stats.inter_token_p50_ms.is_some(),
        "{stats:?}"
    );
    assert_eq!(
        generation_stats(&agent, "llm-external").await.generations,
        2
    );
    let metrics = agent.metrics().await;
    for family in [
        "webaccel_agent_generated_tokens_total",
        "webaccel_agent_time_to_first_token_seconds",
    ] {
        assert!(metrics.contains(family), "{family} missing from /metrics");
    }
}

#[tokio::test]
async fn graphs_and_tokenizers_that_cannot_generate_are_refused_with_the_reason() {
    let _machine = webaccel_testkit::beside().await;
    let agent = Agent::start(&[], &[]).await;
    let tokenizer = format!("file://{}", fixture("decoder/tokenizer.json").display());
    let load = |name: &str, uri: String, tokenizer: &str| {
        json!({
            "name": name, "uri": uri, "backend": "wasm",
            "generation": {"tokenizer": {"uri": tokenizer}},
        })
    };

    // A graph that is not a decoder names the input it lacks.
    let (status, body) = agent
        .post(
            "/v1/repository/models",
            &load("mlp-llm", crate::common::model_uri("mlp.onnx"), &tokenizer),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("the graph has no input 'input_ids'"),
        "{body}"
    );

    // A tokenizer whose ids go past the model's vocabulary is refused: its tokens would
    // index logits the model does not have.
    let dir = tempfile::tempdir().unwrap();
    let mut wide: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("decoder/tokenizer.json")).unwrap())
            .unwrap();
    // (In the BPE model's own vocabulary: tokenizers renumbers an added token past the
    // last id instead.)
    wide["model"]["vocab"]["far"] = json!(500);
    let wide_path = dir.path().join("tokenizer.json");
    std::fs::write(&wide_path, wide.to_string()).unwrap();
    let (status, body) = agent
        .post(
            "/v1/repository/models",
            &load(
                "wide",
                format!("file://{}", fixture("decoder/model.onnx").display()),
                &format!("file://{}", wide_path.display()),
            ),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("384") && error.contains("501"), "{error}");

    // A model served without a tokenizer does not generate, and says why.
    let (status, _) = agent
        .post(
            "/v1/repository/models",
            &json!({"name": "mlp", "uri": crate::common::model_uri("mlp.onnx"), "backend": "wasm"}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = agent
        .post("/v2/models/mlp/generate", &json!({"text_input": "hi"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("does not generate text"),
        "{body}"
    );
    let (status, body) = agent
        .post("/v2/models/ghost/generate", &json!({"text_input": "hi"}))
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn a_client_gone_frees_its_sequence_and_a_killed_browser_ends_the_stream() {
    let _machine = webaccel_testkit::beside().await;
    let agent = Agent::start(&[decoder_spec("llm", "decoder")], &[]).await;
    agent.wait_standby(Duration::from_secs(60)).await;

    // The browser frozen after the first token, the client goes away: the agent cancels
    // the sequence in the page, which frees it once the page runs again.
    let pid = agent.browser_pid().await;
    let response = long_stream(&agent.http, &agent.base).await;
    let renderers = procs::of_kind(pid, "renderer");
    assert!(!renderers.is_empty(), "no renderer under browser {pid}");
    renderers.iter().for_each(|r| signal(*r, Signal::SIGSTOP));
    drop(response);
    tokio::time::sleep(Duration::from_millis(300)).await;
    renderers.iter().for_each(|r| signal(*r, Signal::SIGCONT));
    let start = Instant::now();
    loop {
        let stats = generation_stats(&agent, "llm").await;
        if stats.sequences == 0 && stats.cancelled == 1 {
            assert!(stats.completion_tokens < 240, "{stats:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the sequence is not freed: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The browser killed mid-stream (frozen first, so the stream is surely unfinished):
    // the stream ends, soon, with an error that says to retry; nothing hangs.
    let mut response = long_stream(&agent.http, &agent.base).await;
    let renderers = procs::of_kind(pid, "renderer");
    renderers.iter().for_each(|r| signal(*r, Signal::SIGSTOP));
    procs::signal_group(pid, Signal::SIGKILL);
    let start = Instant::now();
    let mut body = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), response.chunk())
        .await
        .expect("the stream hangs after its browser was killed")
        .unwrap()
    {
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).unwrap();
    let error = last_event(&text);
    assert!(error["error"]["message"].is_string(), "{text}");
    assert_eq!(error["error"]["code"], "browser_crashed", "{text}");
    println!("stream ended {:?} after the kill: {error}", start.elapsed());

    // The agent's next browser takes the model, and generation goes on.
    agent.wait_ready(Duration::from_secs(60)).await;
    let story = decoder_prompt("story");
    let (status, answer) = agent
        .post(
            "/v2/models/llm/generate",
            &json!({"text_input": story["text"], "parameters": {"max_tokens": 24, "temperature": 0}}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["text_output"], story["completion"]);
    assert_eq!(generation_stats(&agent, "llm").await.sequences, 0);
}

#[tokio::test]
async fn with_page_workers_sequences_spread_over_them_and_keep_their_tokens() {
    let _machine = webaccel_testkit::beside().await;
    let agent = Agent::start(
        &[decoder_spec("llm", "decoder")],
        // Frequent pings: /v1/stats shows each worker's sequences as of the last pong.
        &[
            "--page-workers=2",
            "--wasm-threads=1",
            "--heartbeat-interval=20ms",
        ],
    )
    .await;
    let body = json!({"model": "llm", "prompt": "A browser", "max_tokens": 200,
                      "temperature": 0, "ignore_eos": true});
    let complete = |body: Value| {
        let (http, base) = (agent.http.clone(), agent.base.clone());
        async move {
            let r: Value = http
                .post(format!("{base}/v1/completions"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["choices"][0]["text"]
                .as_str()
                .unwrap_or_else(|| panic!("{r}"))
                .to_owned()
        }
    };
    let alone = complete(body.clone()).await;
    // Six at once: while they run, both workers hold some.
    let runs: Vec<_> = (0..6)
        .map(|_| tokio::spawn(complete(body.clone())))
        .collect();
    let mut seen = [false, false];
    while !runs.iter().all(tokio::task::JoinHandle::is_finished) {
        for (i, w) in agent.stats().await.page_workers.iter().enumerate().take(2) {
            seen[i] |= w.sequences > 0;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for run in runs {
        assert_eq!(
            run.await.unwrap(),
            alone,
            "a sequence's tokens changed in company"
        );
    }
    assert_eq!(
        seen,
        [true, true],
        "the sequences did not spread over both workers"
    );
}
