//! `webaccel-agent-bench`: measures a real agent (and its Chromium) from the outside and
//! prints a table plus a JSON file. Not a test: the figures are for reading and
//! comparing, never asserted.
//!
//! Measured: latency p50/p99 end to end, the page's own compute time and their
//! difference (the agent's overhead) over the bridge and HTTP at several concurrencies;
//! throughput; browser cold start; model init with and without warm-up; crash-to-ready
//! recovery; the agent's RSS (the browser's processes not counted).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use webaccel_api::wire::{self, InferRequest, Message};
use webaccel_api::{DataType, Tensor};

#[derive(Debug, Parser)]
#[command(
    name = "webaccel-agent-bench",
    about = "Benchmarks webaccel-agent with a real Chromium"
)]
struct Args {
    /// The agent binary (default: `webaccel-agent` beside this one).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Folder with the test models (`mlp.onnx`, `mlp.json`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models"))]
    models: PathBuf,
    /// Requests per configuration (after warm-up).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    concurrency: Vec<usize>,
    /// Crash-recovery repetitions.
    #[arg(long, default_value_t = 5)]
    crashes: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "webaccel-agent-bench.json")]
    json: PathBuf,
}

struct AgentProcess {
    child: Child,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl AgentProcess {
    async fn start(
        bin: &PathBuf,
        models: &[String],
        extra: &[&str],
    ) -> anyhow::Result<(Self, Duration)> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = Command::new(bin);
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--cache-dir")
            .arg(dir.path())
            .arg("--enable-debug-endpoints")
            .env("RUST_LOG", "warn,chromiumoxide=off")
            .stdout(Stdio::null());
        for m in models {
            cmd.arg("--model").arg(m);
        }
        cmd.args(extra);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let agent = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()?,
            _dir: dir,
        };
        agent.wait_ready(Duration::from_secs(120)).await?;
        Ok((agent, started.elapsed()))
    }

    async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await
                && r.status() == 200
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bail!("agent not ready within {limit:?}")
    }

    /// Waits until the standby browser is up (with models), so it neither competes for
    /// the CPU during a measurement nor is missing when a crash is measured.
    async fn wait_standby(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if !self.get("/v1/stats").await?["browser"]["standby_pid"].is_null() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("no standby browser within 60 s")
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await?
            .json()
            .await?)
    }

    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// Nearest-rank percentile of sorted data.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[derive(Default)]
struct Samples {
    e2e_ms: Vec<f64>,
    compute_ms: Vec<f64>,
    overhead_ms: Vec<f64>,
    /// End to end minus the page's whole handling: agent and transport only.
    outside_page_ms: Vec<f64>,
    errors: usize,
}

impl Samples {
    fn push(&mut self, e2e: f64, compute: f64, page: Option<f64>) {
        self.e2e_ms.push(e2e);
        self.compute_ms.push(compute);
        self.overhead_ms.push(e2e - compute);
        if let Some(p) = page {
            self.outside_page_ms.push(e2e - p);
        }
    }

    fn summary(mut self, transport: &str, concurrency: usize, wall: Duration) -> Value {
        for v in [
            &mut self.e2e_ms,
            &mut self.compute_ms,
            &mut self.overhead_ms,
            &mut self.outside_page_ms,
        ] {
            v.sort_by(f64::total_cmp);
        }
        #[allow(clippy::cast_precision_loss)]
        let throughput = self.e2e_ms.len() as f64 / wall.as_secs_f64();
        json!({
            "transport": transport,
            "concurrency": concurrency,
            "requests": self.e2e_ms.len(),
            "errors": self.errors,
            "e2e_p50_ms": pct(&self.e2e_ms, 0.5),
            "e2e_p99_ms": pct(&self.e2e_ms, 0.99),
            "compute_p50_ms": pct(&self.compute_ms, 0.5),
            "compute_p99_ms": pct(&self.compute_ms, 0.99),
            "overhead_p50_ms": pct(&self.overhead_ms, 0.5),
            "overhead_p99_ms": pct(&self.overhead_ms, 0.99),
            "outside_page_p50_ms": pct(&self.outside_page_ms, 0.5),
            "outside_page_p99_ms": pct(&self.outside_page_ms, 0.99),
            "throughput_rps": throughput,
        })
    }
}

fn mlp_inputs(models: &std::path::Path) -> anyhow::Result<(Value, Vec<Tensor>)> {
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(models.join("mlp.json"))?)?;
    let inputs = fixture["inputs"].clone();
    let tensors = inputs
        .as_array()
        .context("inputs")?
        .iter()
        .map(|i| {
            let shape = serde_json::from_value(i["shape"].clone())?;
            let dt =
                DataType::parse(i["datatype"].as_str().unwrap_or_default()).context("datatype")?;
            Ok(Tensor::from_json(
                i["name"].as_str().unwrap_or_default(),
                dt,
                shape,
                &i["data"],
            )?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((inputs, tensors))
}

async fn bench_http(agent: &AgentProcess, inputs: &Value, concurrency: usize, n: usize) -> Value {
    let url = format!("{}/v2/models/mlp/infer", agent.base);
    let body = Arc::new(serde_json::to_vec(&json!({"inputs": inputs})).unwrap_or_default());
    let samples = Arc::new(Mutex::new(Samples::default()));
    let run = |count: usize, record: bool| {
        let (url, body, samples, http) = (
            url.clone(),
            body.clone(),
            samples.clone(),
            agent.http.clone(),
        );
        async move {
            let mut tasks = Vec::new();
            for w in 0..concurrency {
                let (url, body, samples, http) =
                    (url.clone(), body.clone(), samples.clone(), http.clone());
                let share = count / concurrency + usize::from(w < count % concurrency);
                tasks.push(tokio::spawn(async move {
                    for _ in 0..share {
                        let t = Instant::now();
                        let resp = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body.as_ref().clone())
                            .send()
                            .await;
                        let value = match resp {
                            Ok(r) if r.status() == 200 => r.json::<Value>().await.ok(),
                            _ => None,
                        };
                        let e2e = t.elapsed().as_secs_f64() * 1e3;
                        let mut s = samples.lock().await;
                        let params = value.map(|v| v["parameters"].clone()).unwrap_or_default();
                        match params["compute_ms"].as_f64() {
                            Some(c) if record => s.push(e2e, c, params["page_ms"].as_f64()),
                            Some(_) => {}
                            None => s.errors += 1,
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    };
    run(n / 10, false).await;
    let start = Instant::now();
    run(n, true).await;
    let wall = start.elapsed();
    let s = std::mem::take(&mut *samples.lock().await);
    s.summary("http", concurrency, wall)
}

async fn bench_bridge(
    agent: &AgentProcess,
    tensors: &[Tensor],
    concurrency: usize,
    n: usize,
) -> anyhow::Result<Value> {
    let url = format!("{}/v1/bridge", agent.base.replace("http://", "ws://"));
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    let (mut tx, mut rx) = ws.split();
    let frame = |id: u64| {
        wire::encode(
            id,
            &Message::Request(InferRequest {
                model: "mlp".into(),
                inputs: tensors.to_vec(),
                outputs: vec![],
            }),
        )
    };
    let mut samples = Samples::default();
    let mut wall = Duration::ZERO;
    for (count, record) in [(n / 10, false), (n, true)] {
        let mut sent_at = vec![Instant::now(); count];
        let start = Instant::now();
        let mut next = 0usize;
        let mut done = 0usize;
        while next < count.min(concurrency) {
            sent_at[next] = Instant::now();
            tx.send(WsMessage::Binary(frame(next as u64).into()))
                .await?;
            next += 1;
        }
        while done < count {
            let Some(msg) = rx.next().await else {
                bail!("bridge closed")
            };
            let WsMessage::Binary(buf) = msg? else {
                continue;
            };
            let (id, reply) = wire::decode(bytes::Bytes::from(buf.to_vec()))?;
            let e2e = sent_at[usize::try_from(id)?].elapsed().as_secs_f64() * 1e3;
            done += 1;
            match reply {
                Message::Response(r) if record => samples.push(e2e, r.compute_ms, r.page_ms),
                Message::Response(_) => {}
                _ => samples.errors += 1,
            }
            if next < count {
                sent_at[next] = Instant::now();
                tx.send(WsMessage::Binary(frame(next as u64).into()))
                    .await?;
                next += 1;
            }
        }
        if record {
            wall = start.elapsed();
        }
    }
    Ok(samples.summary("bridge", concurrency, wall))
}

/// Kills the browser and times how long until an inference succeeds again.
async fn crash_recovery(agent: &AgentProcess, inputs: &Value) -> anyhow::Result<(f64, f64)> {
    let pid = agent.get("/v1/stats").await?["browser"]["pid"]
        .as_i64()
        .context("browser pid")?;
    let body = json!({"inputs": inputs});
    let url = format!("{}/v2/models/mlp/infer", agent.base);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let killed = Instant::now();
    // Wait for the agent to notice, so a request answered by the dying page does not count.
    while agent.get("/v1/stats").await?["browser"]["pid"].as_i64() == Some(pid) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    loop {
        let r = agent.http.post(&url).json(&body).send().await?;
        if r.status() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        if killed.elapsed() > Duration::from_secs(60) {
            bail!("no recovery within 60 s");
        }
    }
    let external = killed.elapsed().as_secs_f64() * 1e3;
    agent.wait_ready(Duration::from_secs(60)).await?;
    let internal = agent.get("/v1/stats").await?["browser"]["last_recovery_ms"]
        .as_f64()
        .unwrap_or(f64::NAN);
    Ok((external, internal))
}

/// Loads the model afresh, with and without warm-up, three times each, and reports
/// medians: session creation, the warm-up run, and the first request after loading.
async fn init_times(
    agent: &AgentProcess,
    models: &std::path::Path,
    inputs: &Value,
) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for warmup in [false, true] {
        let mut figures: [Vec<f64>; 5] = Default::default();
        for rep in 0..3 {
            let name = format!("mlp_warmup_{warmup}_{rep}");
            let spec = json!({"name": name, "uri": format!("file://{}", models.join("mlp.onnx").display()), "backend": "wasm", "warmup": warmup});
            let t = Instant::now();
            let r = agent
                .http
                .post(format!("{}/v1/models", agent.base))
                .json(&spec)
                .send()
                .await?;
            let load_ms = t.elapsed().as_secs_f64() * 1e3;
            let loaded: Value = r.json().await?;
            let t = Instant::now();
            let first: Value = agent
                .http
                .post(format!("{}/v2/models/{name}/infer", agent.base))
                .json(&json!({"inputs": inputs}))
                .send()
                .await?
                .json()
                .await?;
            let first_ms = t.elapsed().as_secs_f64() * 1e3;
            let status = &loaded["status"];
            for (k, v) in [
                load_ms,
                status["create_ms"].as_f64().unwrap_or(f64::NAN),
                status["warmup_ms"].as_f64().unwrap_or(f64::NAN),
                first_ms,
                first["parameters"]["compute_ms"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
            ]
            .into_iter()
            .enumerate()
            {
                figures[k].push(v);
            }
            agent
                .http
                .delete(format!("{}/v1/models/{name}", agent.base))
                .send()
                .await?;
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            pct(v, 0.5)
        };
        let [load, create, warm, first, compute] = &mut figures;
        out.insert(
            format!("warmup_{warmup}"),
            json!({
                "load_api_ms": median(load),
                "session_create_ms": median(create),
                "warmup_run_ms": if warmup { json!(median(warm)) } else { Value::Null },
                "first_request_e2e_ms": median(first),
                "first_request_compute_ms": median(compute),
            }),
        );
    }
    Ok(Value::Object(out))
}

fn f(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |x| format!("{x:.3}"))
}

#[tokio::main]
#[allow(clippy::print_stdout)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match &args.agent {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("webaccel-agent"),
    };
    let (inputs, tensors) = mlp_inputs(&args.models)?;
    let model = format!(
        "mlp=file://{},backend=wasm",
        args.models.join("mlp.onnx").display()
    );
    let (agent, start_to_ready) =
        AgentProcess::start(&bin, std::slice::from_ref(&model), &[]).await?;
    agent.wait_standby().await?;
    let stats = agent.get("/v1/stats").await?;
    let cold_start_ms = stats["browser"]["cold_start_ms"].clone();

    let mut rows = Vec::new();
    for &c in &args.concurrency {
        rows.push(bench_bridge(&agent, &tensors, c, args.requests).await?);
        rows.push(bench_http(&agent, &inputs, c, args.requests).await);
    }
    let (rss_kib, hwm_kib) = agent.rss_kib();
    // The heartbeat's round trip through the idle page: Chromium's share of the overhead.
    let mut rtts = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(r) = agent.get("/v1/stats").await?["heartbeat_rtt_ms"].as_f64() {
            rtts.push(r);
        }
    }
    rtts.sort_by(f64::total_cmp);
    let heartbeat_rtt_ms = pct(&rtts, 0.5);
    let init = init_times(&agent, &args.models, &inputs).await?;
    let mut recoveries = Vec::new();
    for _ in 0..args.crashes {
        agent.wait_standby().await?;
        recoveries.push(crash_recovery(&agent, &inputs).await?);
    }
    let version = agent.get("/v1/capabilities").await?["browser"]["version"].clone();
    drop(agent);
    // The same without a standby browser: a cold restart.
    let (cold_agent, _) =
        AgentProcess::start(&bin, &[model], &["--standby-browser", "false"]).await?;
    let mut cold_recoveries = Vec::new();
    for _ in 0..args.crashes.min(3) {
        cold_recoveries.push(crash_recovery(&cold_agent, &inputs).await?);
    }
    drop(cold_agent);

    println!(
        "webaccel-agent benchmark: model mlp (wasm), {} requests per row, {version}",
        args.requests
    );
    println!(
        "{:<8} {:>4} {:>10} {:>10} {:>12} {:>13} {:>13} {:>13} {:>13} {:>10} {:>6}",
        "via",
        "conc",
        "e2e p50",
        "e2e p99",
        "compute p50",
        "overhead p50",
        "overhead p99",
        "outside p50",
        "outside p99",
        "req/s",
        "errors"
    );
    for r in &rows {
        println!(
            "{:<8} {:>4} {:>10} {:>10} {:>12} {:>13} {:>13} {:>13} {:>13} {:>10.0} {:>6}",
            r["transport"].as_str().unwrap_or_default(),
            r["concurrency"],
            f(&r["e2e_p50_ms"]),
            f(&r["e2e_p99_ms"]),
            f(&r["compute_p50_ms"]),
            f(&r["overhead_p50_ms"]),
            f(&r["overhead_p99_ms"]),
            f(&r["outside_page_p50_ms"]),
            f(&r["outside_page_p99_ms"]),
            r["throughput_rps"].as_f64().unwrap_or(0.0),
            r["errors"],
        );
    }
    println!(
        "(milliseconds; overhead = end to end minus the model's compute time in the page; outside = end to end minus the page's whole handling, i.e. agent + transport)"
    );
    println!();
    println!(
        "page heartbeat round trip (agent -> page -> agent, idle): median {heartbeat_rtt_ms:.3} ms"
    );
    println!(
        "agent start to ready (browser launch + page + model): {:.0} ms",
        start_to_ready.as_secs_f64() * 1e3
    );
    println!(
        "browser cold start (launch to page connected):       {} ms",
        f(&cold_start_ms)
    );
    for (k, v) in init.as_object().into_iter().flatten() {
        println!(
            "model init, {k}: session {} ms, warm-up run {} ms, first request {} ms (compute {} ms)",
            f(&v["session_create_ms"]),
            f(&v["warmup_run_ms"]),
            f(&v["first_request_e2e_ms"]),
            f(&v["first_request_compute_ms"])
        );
    }
    for (label, runs) in [
        ("with standby", &recoveries),
        ("cold restart", &cold_recoveries),
    ] {
        let mut ext: Vec<f64> = runs.iter().map(|r| r.0).collect();
        ext.sort_by(f64::total_cmp);
        let internal: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.1)).collect();
        println!(
            "crash to serving again, {label}: {} runs, median {:.0} ms, max {:.0} ms (SIGKILL to first 200); agent-side detection to ready: {} ms",
            ext.len(),
            pct(&ext, 0.5),
            ext.last().copied().unwrap_or(f64::NAN),
            internal.join(", ")
        );
    }
    println!(
        "agent RSS: {:.1} MiB now, {:.1} MiB peak (browser processes not counted)",
        rss_kib as f64 / 1024.0,
        hwm_kib as f64 / 1024.0
    );

    let report = json!({
        "model": "mlp", "backend": "wasm", "browser": version, "requests_per_row": args.requests,
        "latency": rows,
        "agent_start_to_ready_ms": start_to_ready.as_secs_f64() * 1e3,
        "browser_cold_start_ms": cold_start_ms,
        "model_init": init,
        "crash_recovery_ms": recoveries.iter().map(|r| json!({"kill_to_first_success": r.0, "agent_detect_to_ready": r.1})).collect::<Vec<_>>(),
        "crash_recovery_cold_ms": cold_recoveries.iter().map(|r| json!({"kill_to_first_success": r.0, "agent_detect_to_ready": r.1})).collect::<Vec<_>>(),
        "heartbeat_rtt_ms": heartbeat_rtt_ms,
        "agent_rss_kib": rss_kib, "agent_peak_rss_kib": hwm_kib,
    });
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    println!("\nJSON written to {}", args.json.display());
    Ok(())
}
