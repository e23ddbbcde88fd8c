//! `webaccel-agent-bench`: measures a real agent (and its Chromium) from the outside and
//! prints a table plus a JSON file. Not a test: the figures are for reading and
//! comparing, never asserted.
//!
//! Measured: latency p50/p99 end to end, the page's own compute time and their
//! difference (the agent's overhead) over the bridge and HTTP at several concurrencies;
//! throughput; browser cold start; model init with and without warm-up; crash-to-ready
//! recovery; the agent's RSS (the browser's processes not counted).
//!
//! `faults` runs the browser fault classes under load instead (see `faults.rs`);
//! `batching` compares dynamic batching off and on (see `batching.rs`); `generate`
//! measures text generation (see `generate.rs`); `tail` takes the tail apart stage by
//! stage beside KServe's own server (see `tail.rs`).

mod agent_process;
mod batching;
mod compute;
mod ensemble;
mod faults;
mod generate;
mod large;
mod measure;

mod quantized;
mod samples;
mod tail;
mod workers;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};
use webaccel_api::wire;

use measure::{bench_bridge, bench_http, crash_recovery, init_times, mlp_inputs};
use samples::pct;

#[derive(Debug, Parser)]
#[command(
    name = "webaccel-agent-bench",
    about = "Benchmarks webaccel-agent with a real Chromium"
)]
struct Args {
    #[command(subcommand)]
    suite: Option<Suite>,
    /// The agent binary (default: `webaccel-agent` beside this one).
    #[arg(long, global = true)]
    agent: Option<PathBuf>,
    /// Folder with the test models (`mlp.onnx`, `mlp.json`).
    #[arg(long, global = true, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../node-agent/tests/fixtures/models"))]
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
    #[arg(long, global = true, default_value = "webaccel-agent-bench.json")]
    json: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
enum Suite {
    /// Dynamic batching off and on: throughput and latency of the mlp and the
    /// transformer block at several concurrencies.
    Batching {
        /// Concurrency levels (requests outstanding on one bridge connection).
        #[arg(long = "concurrency", value_delimiter = ',', default_value = "1,16,64")]
        levels: Vec<usize>,
        /// Requests per row (after a tenth as many for warm-up).
        #[arg(long = "requests", default_value_t = 2000)]
        count: usize,
    },
    /// Latency, throughput, init and recovery (the default).
    Latency,
    /// The encoder in fp32, fp16, int8 and int4: bytes, load time, memory, latency and
    /// error, on wasm.
    Quantized {
        /// Timed requests per model.
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Two chained models as one ensemble request against two requests.
    Ensemble {
        /// Rows and width of the intermediate tensor (float32).
        #[arg(long, default_value_t = 64)]
        rows: usize,
        #[arg(long, default_value_t = 4096)]
        width: usize,
        /// Requests of each kind.
        #[arg(long = "requests", default_value_t = 200)]
        count: usize,
    },
    /// One browser's throughput and memory with several page workers.
    Workers {
        /// Page worker counts compared.
        #[arg(long = "workers", value_delimiter = ',', default_value = "1,2,4")]
        workers: Vec<u32>,
        /// The high concurrency (requests outstanding on one bridge connection);
        /// concurrency 1 is measured too.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Requests per row at the high concurrency (half as many at 1).
        #[arg(long = "requests", default_value_t = 2000)]
        count: usize,
    },
    /// Text generation: time to first token, inter-token latency, tokens/s with and
    /// without continuous batching, the page's decode step against native onnxruntime,
    /// the quantized KV cache, and WebGPU.
    Generate {
        /// Concurrent streams compared.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
        streams: Vec<usize>,
        /// Tokens per stream.
        #[arg(long, default_value_t = 128)]
        tokens: u32,
    },
    /// The tail stage by stage, beside KServe's Python server on the same models, all
    /// driven by tritonclient in alternating blocks: p50/p99/p99.9 per target and per
    /// stage, at each concurrency.
    Tail {
        /// Fixture models compared.
        #[arg(
            long = "model",
            value_delimiter = ',',
            default_value = "mlp,cnn,transformer"
        )]
        names: Vec<String>,
        #[arg(long = "concurrency", value_delimiter = ',', default_value = "1,8")]
        levels: Vec<usize>,
        /// Blocks per target, model and concurrency (the targets take turns).
        #[arg(long, default_value_t = 10)]
        blocks: usize,
        /// Requests per block.
        #[arg(long = "requests", default_value_t = 500)]
        count: usize,
        /// A Python with PyPI `kserve` installed.
        #[arg(long, default_value = "/var/tmp/kserve-venv/bin/python")]
        kserve_python: PathBuf,
        /// Intra-op threads of KServe's onnxruntime sessions (the agent's page runs 2
        /// wasm threads on a 2-core machine).
        #[arg(long, default_value_t = 2)]
        peer_threads: u32,
        /// An extra argument for the agent (repeatable), e.g. `--agent-arg=--wasm-threads=1`.
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
        /// Start a second agent (`agent_b`) with this extra argument (repeatable) and
        /// drive it in the same alternation: an A/B comparison.
        #[arg(long = "b-arg", allow_hyphen_values = true)]
        b_args: Vec<String>,
        /// Compare hedging: a second agent joins, and a second gateway over both
        /// (`gateway_hedged`) hedges after this quantile of each model's round trips.
        #[arg(long)]
        hedge_quantile: Option<f64>,
    },
    /// Browser faults under load: time to serving again, failed and hung requests.
    Faults {
        /// Scenarios to run (default: all): active-kill, all-kill, renderer-kill,
        /// active-stop, gpu-kill, standby-kill, kill-loop.
        #[arg(long = "scenario", value_delimiter = ',')]
        scenarios: Vec<String>,
    },
    /// In-page compute of a 6-layer transformer encoder against native onnxruntime at
    /// the same thread count, for each onnxruntime-web build.
    Compute {
        /// Thread counts (wasm threads in the page, intra-op threads natively).
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        threads: Vec<u32>,
        /// Timed runs per configuration.
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
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
    if let Some(Suite::Batching { levels, count }) = &args.suite {
        let report = batching::run(&bin, &args.models, levels, *count).await?;
        batching::print(&report);
        std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
        println!("\nJSON written to {}", args.json.display());
        return Ok(());
    }
    if let Some(Suite::Workers {
        workers: counts,
        concurrency,
        count,
    }) = &args.suite
    {
        let script =
            webaccel_testkit::fixtures::repo().join("node-agent/tests/fixtures/make_encoder.py");
        let report =
            workers::run(&bin, &args.models, &script, counts, *concurrency, *count).await?;
        workers::print(&report);
        std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
        println!("\nJSON written to {}", args.json.display());
        return Ok(());
    }
    if let Some(Suite::Ensemble { rows, width, count }) = &args.suite {
        let fixtures = webaccel_testkit::fixtures::repo().join("node-agent/tests/fixtures");
        let report = ensemble::run(&bin, &fixtures, *rows, *width, *count).await?;
        ensemble::print(&report);
        std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
        println!("\nJSON written to {}", args.json.display());
        return Ok(());
    }
    if let Some(Suite::Quantized { runs }) = &args.suite {
        let fixtures = webaccel_testkit::fixtures::repo().join("node-agent/tests/fixtures");
        let report = quantized::run(&bin, &fixtures, *runs).await?;
        quantized::print(&report);
        std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
        println!("\nJSON written to {}", args.json.display());
        return Ok(());
    }
    if let Some(Suite::Generate { streams, tokens }) = &args.suite {
        let fixtures = webaccel_testkit::fixtures::repo().join("node-agent/tests/fixtures");
        let report = generate::run(&bin, &fixtures, streams, *tokens).await?;
        generate::print(&report);
        std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
        println!("\nJSON written to {}", args.json.display());
        return Ok(());
    }
    if let Some(Suite::Tail {
        names,
        levels,
        blocks,
        count,
        kserve_python,
        peer_threads,
        agent_args,
        b_args,
        hedge_quantile,
    }) = &args.suite
    {
        let options = tail::TailOptions {
            models: names.clone(),
            concurrency: levels.clone(),
            blocks: *blocks,
            requests: *count,
            kserve_python: kserve_python.clone(),
            peer_threads: *peer_threads,
            agent_args: agent_args.clone(),
            b_args: b_args.clone(),
            hedge_quantile: *hedge_quantile,
        };
        let report = tail::run(&bin, &args.models, &options).await?;
        tail::print(&report);
        std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
        println!("\nJSON written to {}", args.json.display());
        return Ok(());
    }
    if let Some(Suite::Faults { scenarios }) = &args.suite {
        return run_faults(&bin, &args, scenarios).await;
    }
    if let Some(Suite::Compute { threads, runs }) = &args.suite {
        return run_compute(&bin, &args, threads, *runs).await;
    }
    let (inputs, tensors) = mlp_inputs(&args.models)?;
    let model = format!(
        "mlp=file://{},backend=wasm",
        args.models.join("mlp.onnx").display()
    );
    let (agent, start_to_ready) =
        agent_process::start(&bin, std::slice::from_ref(&model), &[]).await?;
    agent.wait_standby(Duration::from_secs(60)).await;
    let stats = agent.get("/v1/stats").await.1;
    let cold_start_ms = stats["browser"]["cold_start_ms"].clone();

    let mut rows = Vec::new();
    for &c in &args.concurrency {
        // The floor first: the same tensors through agent and page WebSocket, no model.
        rows.push(bench_bridge(&agent, wire::ECHO_MODEL, &tensors, c, args.requests).await?);
        rows.push(bench_bridge(&agent, "mlp", &tensors, c, args.requests).await?);
        rows.push(bench_http(&agent, &inputs, c, args.requests).await);
    }
    let large_tensor = large::compare(&agent, 30).await?;
    let (rss_kib, hwm_kib) = agent.rss_kib();
    // The heartbeat's round trip through the idle page: Chromium's share of the overhead.
    let mut rtts = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(r) = agent.get("/v1/stats").await.1["heartbeat_rtt_ms"].as_f64() {
            rtts.push(r);
        }
    }
    rtts.sort_by(f64::total_cmp);
    let heartbeat_rtt_ms = pct(&rtts, 0.5);
    let init = init_times(&agent, &args.models, &inputs).await?;
    let mut recoveries = Vec::new();
    for _ in 0..args.crashes {
        agent.wait_standby(Duration::from_secs(60)).await;
        recoveries.push(crash_recovery(&agent, &inputs).await?);
    }
    let version = agent.get("/v1/capabilities").await.1["browser"]["version"].clone();
    drop(agent);
    // The same without a standby browser: a cold restart.
    let (cold_agent, _) =
        agent_process::start(&bin, &[model], &["--standby-browser", "false"]).await?;
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
    println!("one 1 MiB input tensor (mlp, batch 16384; output 256 KiB), 30 requests each:");
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "via", "req bytes", "resp bytes", "e2e p50", "e2e p99", "compute p50"
    );
    for r in &large_tensor {
        println!(
            "{:<12} {:>10} {:>10} {:>10} {:>10} {:>12}",
            r["via"].as_str().unwrap_or_default(),
            r["request_bytes"],
            r["response_bytes"],
            f(&r["e2e_p50_ms"]),
            f(&r["e2e_p99_ms"]),
            f(&r["compute_p50_ms"]),
        );
    }
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
        "large_tensor_1mib": large_tensor,
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

#[allow(clippy::print_stdout)]
async fn run_compute(
    bin: &std::path::Path,
    args: &Args,
    threads: &[u32],
    runs: usize,
) -> anyhow::Result<()> {
    let script =
        webaccel_testkit::fixtures::repo().join("node-agent/tests/fixtures/make_encoder.py");
    let report = compute::run(bin, &script, threads, runs).await?;
    println!(
        "in-page compute vs native onnxruntime: encoder {} parameters, {} runs each",
        report["model"]["parameters"], runs
    );
    println!(
        "{:<8} {:>7} {:>6} {:>12} {:>12} {:>14} {:>8} {:>10}",
        "model",
        "threads",
        "build",
        "page p50 ms",
        "page p10 ms",
        "native p50 ms",
        "ratio",
        "max err"
    );
    for r in report["rows"].as_array().into_iter().flatten() {
        println!(
            "{:<8} {:>7} {:>6} {:>12.2} {:>12.2} {:>14.2} {:>8.2} {:>10.1e}",
            r["model"].as_str().unwrap_or(""),
            r["threads"],
            r["build"].as_str().unwrap_or(""),
            r["page_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["page_p10_ms"].as_f64().unwrap_or(f64::NAN),
            r["native_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["ratio"].as_f64().unwrap_or(f64::NAN),
            r["max_abs_error"].as_f64().unwrap_or(f64::NAN),
        );
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    println!("\nJSON written to {}", args.json.display());
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn run_faults(
    bin: &std::path::Path,
    args: &Args,
    scenarios: &[String],
) -> anyhow::Result<()> {
    let names: Vec<String> = if scenarios.is_empty() {
        faults::SCENARIOS
            .iter()
            .map(|(n, _)| (*n).to_owned())
            .collect()
    } else {
        scenarios.to_vec()
    };
    let mut reports = Vec::new();
    for name in &names {
        eprintln!("fault scenario {name} ...");
        reports.push(faults::run(bin, &args.models, name).await?);
    }
    faults::print(&reports);
    std::fs::write(&args.json, serde_json::to_string_pretty(&reports)?)?;
    println!("\nJSON written to {}", args.json.display());
    Ok(())
}
