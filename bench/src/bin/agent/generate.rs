//! The `generate` suite: text generation on one agent's browser, driven over the bridge
//! (the gateway's path; each token event carries the page's step time and the moment
//! the page produced it) and over the OpenAI API (what an HTTP client sees).
//!
//! The model is the test fixture's Llama-architecture decoder (`make_decoder.py`: GQA,
//! RoPE, RMSNorm, SwiGLU, hidden 64, 2 layers) made with a 1024-position context for
//! the long prompts. It is tiny: its decode step is mostly per-run overhead, which is
//! what the per-token figures are about; tokens/s of a real model are its compute.
//!
//! Figures: time to first token at prompt lengths 16/128/512; inter-token p50/p99;
//! tokens/s for 1, 4 and 16 streams with continuous batching and without; the page's
//! decode step beside native onnxruntime on the same model and threads; per-token
//! overhead (client inter-token minus page step) and the page-to-client delay; the KV
//! cache's bytes per token in fp32/int8/int4 with greedy agreement against fp32 over
//! 128 tokens, and the perplexity of a fixed text with each cache against onnxruntime's
//! (`perplexity.rs`); the WebGPU backend (software adapter here) as a row of its own.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use webaccel_api::generate::{
    GenerateInput, GenerateParams, GenerateRequest, GenerationEnd, GenerationEvent,
};
use webaccel_api::wire::{self, Message};

use crate::agent_process::{self, AgentProcess};
use crate::samples::pct;

mod perplexity;
mod print;
pub use print::print;

/// Positions of the benchmark's decoder.
const CONTEXT: u32 = 1024;

/// Makes the decoder (with `CONTEXT` positions) in `dir` with `script`.
fn make_decoder(script: &Path, dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("python3")
        .arg(script)
        .arg(dir)
        .env("WEBACCEL_DECODER_POSITIONS", CONTEXT.to_string())
        .output()
        .context("running python3")?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// What onnxruntime's reference (`decoder_reference.py`) answers to `job`.
fn reference_job(reference: &Path, job: &Value) -> anyhow::Result<Value> {
    let mut child = Command::new("python3")
        .arg(reference)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(
        child.stdin.as_mut().context("stdin")?,
        job.to_string().as_bytes(),
    )?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{} failed on {job}", reference.display());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Native onnxruntime's decode steps (ms, sorted) on `model` at `threads` threads.
fn native_steps(
    reference: &Path,
    model: &Path,
    threads: u32,
    batch: usize,
) -> anyhow::Result<Vec<f64>> {
    let job = json!({"model": model, "time": {"threads": threads, "prompt_len": 16, "steps": 200, "batch": batch}});
    let v = reference_job(reference, &job)?;
    let mut steps: Vec<f64> = v["step_ms"]
        .as_array()
        .context("step_ms")?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    steps.sort_by(f64::total_cmp);
    Ok(steps)
}

fn epoch_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// What one generation gave the client.
#[derive(Debug, Default, Clone)]
struct Stream {
    sent: Option<Instant>,
    /// Client time of each token event, from the send.
    arrivals_ms: Vec<f64>,
    /// The page's step time of each token event.
    step_ms: Vec<f64>,
    /// Client receipt minus the page's production, per event (same clock).
    delay_ms: Vec<f64>,
    tokens: Vec<u32>,
    logprobs: Vec<f64>,
    /// How far the chosen token's log-probability is above the runner-up's, per token
    /// (when asked for alternatives).
    margins: Vec<f64>,
    /// With `echo` and logprobs: the prompt's ids and the model's score of each (the
    /// first has none).
    prompt: Vec<(u32, Option<f64>)>,
    end: Option<GenerationEnd>,
    error: Option<String>,
}

impl Stream {
    fn gaps(&self) -> Vec<f64> {
        self.arrivals_ms.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

fn request(model: &str, prompt: Vec<u32>, tokens: u32, logprobs: bool) -> GenerateRequest {
    GenerateRequest {
        model: model.to_owned(),
        input: GenerateInput::Tokens { ids: prompt },
        params: GenerateParams {
            max_tokens: Some(tokens),
            temperature: Some(0.0),
            ignore_eos: true,
            logprobs: logprobs.then_some(2),
            ..GenerateParams::default()
        },
        timeout_ms: Some(300_000),
        request_id: None,
    }
}

/// Runs `requests` at once over one bridge connection; each one's stream, and the wall
/// time until the last ended.
async fn generate_all(
    agent: &AgentProcess,
    requests: Vec<GenerateRequest>,
) -> anyhow::Result<(Vec<Stream>, Duration)> {
    let mut bridge = agent.bridge().await;
    let n = requests.len();
    let mut streams: HashMap<u64, Stream> = HashMap::new();
    let started = Instant::now();
    for (i, req) in requests.into_iter().enumerate() {
        let id = i as u64 + 1;
        let frame = wire::encode(id, &Message::Generate(req));
        streams.insert(
            id,
            Stream {
                sent: Some(Instant::now()),
                ..Stream::default()
            },
        );
        bridge.send_raw(WsMessage::Binary(frame.into())).await;
    }
    let mut ended = 0;
    while ended < n {
        let (id, msg) = bridge.recv().await;
        let now = Instant::now();
        let received = epoch_ms();
        let s = streams.get_mut(&id).context("an event for no stream")?;
        match msg {
            Message::Generation(GenerationEvent::Tokens(chunk)) => {
                let since = s.sent.map_or(0.0, |t| (now - t).as_secs_f64() * 1e3);
                s.arrivals_ms.push(since);
                s.step_ms.push(chunk.step_ms);
                s.delay_ms.push(received - chunk.produced_at_ms);
                s.prompt
                    .extend(chunk.prompt.iter().map(|t| (t.id, t.logprob)));
                for t in chunk.tokens {
                    s.tokens.push(t.id);
                    s.logprobs.push(t.logprob.unwrap_or(f64::NAN));
                    let mut top: Vec<f64> = t.top_logprobs.iter().map(|l| l.logprob).collect();
                    top.sort_by(|a, b| b.total_cmp(a));
                    s.margins
                        .push(top.get(1).map_or(f64::NAN, |second| top[0] - second));
                }
            }
            Message::Generation(GenerationEvent::End(end)) => {
                s.end = Some(end);
                ended += 1;
            }
            Message::Error(e) => {
                s.error = Some(e.message);
                ended += 1;
            }
            other => bail!("unexpected frame {other:?}"),
        }
    }
    let wall = started.elapsed();
    let mut out: Vec<(u64, Stream)> = streams.into_iter().collect();
    out.sort_by_key(|(id, _)| *id);
    Ok((out.into_iter().map(|(_, s)| s).collect(), wall))
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    v
}

/// A prompt of `len` token ids (the tokenizer's ordinary tokens, after its BOS).
fn prompt(len: usize) -> Vec<u32> {
    std::iter::once(0)
        .chain((0..len.saturating_sub(1)).map(|i| 5 + (i as u32 * 7) % 300))
        .collect()
}

fn first_error(streams: &[Stream]) -> anyhow::Result<()> {
    match streams.iter().find_map(|s| s.error.clone()) {
        Some(e) => bail!("a generation failed: {e}"),
        None => Ok(()),
    }
}

/// Streams of `tokens` tokens each, `n` at once: tokens/s and the per-token figures.
async fn throughput(
    agent: &AgentProcess,
    model: &str,
    n: usize,
    tokens: u32,
) -> anyhow::Result<Value> {
    let requests = (0..n)
        .map(|i| request(model, prompt(16 + i), tokens, false))
        .collect();
    let (streams, wall) = generate_all(agent, requests).await?;
    first_error(&streams)?;
    let total: usize = streams.iter().map(|s| s.tokens.len()).sum();
    let gaps = sorted(streams.iter().flat_map(Stream::gaps).collect());
    let steps = sorted(streams.iter().flat_map(|s| s.step_ms.clone()).collect());
    let delays = sorted(streams.iter().flat_map(|s| s.delay_ms.clone()).collect());
    let max_batch = streams
        .iter()
        .filter_map(|s| s.end.as_ref().map(|e| e.timings.max_batch))
        .max()
        .unwrap_or(0);
    #[allow(clippy::cast_precision_loss)]
    let tps = total as f64 / wall.as_secs_f64();
    Ok(json!({
        "model": model,
        "streams": n,
        "tokens": total,
        "tokens_per_s": tps,
        "inter_token_p50_ms": pct(&gaps, 0.5),
        "inter_token_p99_ms": pct(&gaps, 0.99),
        "page_step_p50_ms": pct(&steps, 0.5),
        "per_token_overhead_p50_ms": pct(&gaps, 0.5) - pct(&steps, 0.5),
        "page_to_client_p50_ms": pct(&delays, 0.5),
        "page_to_client_p99_ms": pct(&delays, 0.99),
        "max_batch": max_batch,
    }))
}

/// Time to first token for prompts of `len` tokens, `runs` times one after another.
async fn ttft(agent: &AgentProcess, len: usize, runs: usize) -> anyhow::Result<Value> {
    let mut client = Vec::new();
    let mut agent_ttft = Vec::new();
    let mut prefill = Vec::new();
    for _ in 0..runs {
        let (streams, _) = generate_all(agent, vec![request("llm", prompt(len), 4, false)]).await?;
        first_error(&streams)?;
        let s = &streams[0];
        client.push(s.arrivals_ms.first().copied().unwrap_or(f64::NAN));
        if let Some(end) = &s.end {
            agent_ttft.push(end.timings.ttft_ms);
            prefill.push(end.timings.prefill_ms);
        }
    }
    let (client, agent_ttft, prefill) = (sorted(client), sorted(agent_ttft), sorted(prefill));
    Ok(json!({
        "prompt_tokens": len,
        "ttft_p50_ms": pct(&client, 0.5),
        "ttft_p99_ms": pct(&client, 0.99),
        "agent_ttft_p50_ms": pct(&agent_ttft, 0.5),
        "prefill_p50_ms": pct(&prefill, 0.5),
    }))
}

/// The KV cache in `precision` (model `llm-<precision>`) against fp32 on the same
/// prompts: bytes per token, greedy agreement over `tokens` tokens, and the largest
/// difference in the chosen tokens' log-probabilities while both agree.
async fn kv_cache(
    agent: &AgentProcess,
    tokens: u32,
    prompts: &[Vec<u32>],
) -> anyhow::Result<Vec<Value>> {
    let run = |model: &str| {
        prompts
            .iter()
            .map(|p| request(model, p.clone(), tokens, true))
            .collect::<Vec<_>>()
    };
    // One at a time: each sequence alone, as the agreement is about the cache only.
    let mut by_model: HashMap<&str, Vec<Stream>> = HashMap::new();
    for model in ["llm", "llm-int8", "llm-int4"] {
        let mut all = Vec::new();
        for req in run(model) {
            let (mut s, _) = generate_all(agent, vec![req]).await?;
            first_error(&s)?;
            all.push(s.remove(0));
        }
        by_model.insert(model, all);
    }
    let reference = &by_model["llm"];
    let mut rows = Vec::new();
    for (model, precision) in [("llm", "fp32"), ("llm-int8", "int8"), ("llm-int4", "int4")] {
        let streams = &by_model[model];
        let (mut same, mut total, mut max_dlp) = (0usize, 0usize, 0.0f64);
        // Where the greedy paths part: the step, and fp32's margin between its top two
        // tokens there (a near tie is flipped by the smallest error).
        let mut parted = Vec::new();
        for (s, r) in streams.iter().zip(reference) {
            let agree = s
                .tokens
                .iter()
                .zip(&r.tokens)
                .take_while(|(a, b)| a == b)
                .count();
            for i in 0..agree {
                max_dlp = max_dlp.max((s.logprobs[i] - r.logprobs[i]).abs());
            }
            if agree < r.tokens.len() {
                parted.push(json!({"step": agree, "fp32_margin": r.margins.get(agree)}));
            }
            same += s
                .tokens
                .iter()
                .zip(&r.tokens)
                .filter(|(a, b)| a == b)
                .count();
            total += r.tokens.len();
        }
        let per_token = streams
            .iter()
            .filter_map(|s| s.end.as_ref().map(|e| e.timings.kv_bytes_per_token))
            .fold(0.0f64, f64::max);
        #[allow(clippy::cast_precision_loss)]
        let agreement = same as f64 / total.max(1) as f64;
        rows.push(json!({
            "kv_cache": precision,
            "bytes_per_token": per_token,
            "tokens_per_gib": if per_token > 0.0 { (1u64 << 30) as f64 / per_token } else { 0.0 },
            "greedy_agreement": agreement,
            "max_logprob_diff": max_dlp,
            "parted": parted,
        }));
    }
    Ok(rows)
}

/// Client inter-token gaps of one streamed completion over the OpenAI API (SSE).
async fn openai_stream(agent: &AgentProcess, tokens: u32, runs: usize) -> anyhow::Result<Value> {
    let mut gaps = Vec::new();
    for _ in 0..runs {
        let mut r = agent
            .http
            .post(format!("{}/v1/completions", agent.base))
            .json(&json!({"model": "llm", "prompt": "A browser is a program that", "max_tokens": tokens,
                          "temperature": 0, "stream": true, "ignore_eos": true}))
            .send()
            .await?;
        let mut last: Option<Instant> = None;
        while let Some(chunk) = r.chunk().await? {
            let now = Instant::now();
            // One event per chunk here (the agent flushes each one).
            if let Some(t) = last {
                gaps.push((now - t).as_secs_f64() * 1e3);
            }
            last = Some(now);
            if chunk.ends_with(b"[DONE]\n\n") {
                break;
            }
        }
    }
    let gaps = sorted(gaps);
    Ok(
        json!({"inter_token_p50_ms": pct(&gaps, 0.5), "inter_token_p99_ms": pct(&gaps, 0.99), "gaps": gaps.len()}),
    )
}

pub async fn run(
    bin: &Path,
    fixtures: &Path,
    streams: &[usize],
    tokens: u32,
) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    make_decoder(&fixtures.join("make_decoder.py"), dir.path())?;
    let dec = dir.path().join("decoder");
    let spec = |name: &str, extra: &str| {
        format!(
            "{name}=file://{},tokenizer=file://{},backend=wasm{extra}",
            dec.join("model.onnx").display(),
            dec.join("tokenizer.json").display()
        )
    };
    let models = [
        spec("llm", ",max_sequences=16"),
        spec("llm-serial", ",max_sequences=16,continuous_batching=false"),
        spec("llm-int8", ",kv_cache=int8"),
        spec("llm-int4", ",kv_cache=int4"),
        // Perplexity with each cache: the text fed 32 positions a run, so its later
        // positions see the cache as generated tokens do.
        spec("llm-chunked", ",prefill_chunk=32"),
        spec("llm-int8-chunked", ",kv_cache=int8,prefill_chunk=32"),
        spec("llm-int4-chunked", ",kv_cache=int4,prefill_chunk=32"),
    ];
    let (agent, _) = agent_process::start(bin, &models, &[]).await?;
    agent.wait_standby(Duration::from_secs(60)).await;
    let threads = agent.stats().await.page_workers.len().max(1);
    // Warm-up: JIT and first-run costs out of the figures.
    throughput(&agent, "llm", 4, 32).await?;

    let mut batching = Vec::new();
    for &n in streams {
        for model in ["llm", "llm-serial"] {
            batching.push(throughput(&agent, model, n, tokens).await?);
        }
    }
    let mut ttfts = Vec::new();
    for len in [16, 128, 512] {
        ttfts.push(ttft(&agent, len, 10).await?);
    }
    let single = batching
        .iter()
        .find(|r| r["streams"] == 1 && r["model"] == "llm")
        .cloned()
        .unwrap_or(Value::Null);
    let page_threads = agent.get("/v1/capabilities").await.1["page_workers"]["threads_per_worker"]
        .as_u64()
        .unwrap_or(1);
    let native = native_steps(
        &fixtures.join("decoder_reference.py"),
        &dec.join("model.onnx"),
        u32::try_from(page_threads).unwrap_or(1),
        1,
    )?;
    let native_p50 = pct(&native, 0.5);
    let page_p50 = single["page_step_p50_ms"].as_f64().unwrap_or(f64::NAN);
    // The cache's accuracy on the reference's own prompts (text through the tokenizer,
    // a chat through its template), where make_decoder.py measured its scheme too.
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dec.join("reference.json"))?)?;
    let prompts: Vec<Vec<u32>> = reference["prompts"]
        .as_array()
        .context("reference prompts")?
        .iter()
        .map(|p| {
            p["input_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()))
                .collect()
        })
        .collect();
    let kv = kv_cache(&agent, 128, &prompts).await?;
    let perplexity = perplexity::measure(
        &agent,
        &fixtures.join("decoder_reference.py"),
        &dec.join("model.onnx"),
    )
    .await?;
    let sse = openai_stream(&agent, tokens, 5).await?;
    drop(agent);

    // WebGPU (here the software adapter) in an agent of its own: a row, or why not.
    let (gpu_agent, _) = agent_process::start(bin, &[], &[]).await?;
    let webgpu = match agent_process::load(
        &gpu_agent,
        &json!({"name": "llm", "uri": format!("file://{}", dec.join("model.onnx").display()), "backend": "webgpu",
                "generation": {"tokenizer": {"uri": format!("file://{}", dec.join("tokenizer.json").display())}}}),
    )
    .await
    {
        Ok(_) => throughput(&gpu_agent, "llm", 1, tokens)
            .await
            .unwrap_or_else(|e| json!({"error": e.to_string()})),
        Err(e) => json!({"error": e.to_string()}),
    };
    let adapter = gpu_agent.get("/v1/capabilities").await.1["webgpu"]["adapter"].clone();
    drop(gpu_agent);

    Ok(json!({
        "model": {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "context": CONTEXT, "page_workers": threads},
        "continuous_batching": batching,
        "ttft": ttfts,
        "decode_step": {
            "page_p50_ms": page_p50,
            "native_p50_ms": native_p50,
            "threads": page_threads,
            "ratio": page_p50 / native_p50,
        },
        "kv_cache": kv,
        "perplexity": perplexity,
        "openai_sse": sse,
        "webgpu": {"adapter": adapter, "row": webgpu},
    }))
}
