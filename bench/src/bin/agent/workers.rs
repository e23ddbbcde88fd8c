//! `workers`: one browser's throughput with 1, 2 and 4 page workers (onnxruntime-web
//! instances, each in its own Web Worker) for the mlp and the transformer block (tiny:
//! their cost is the trip, not the compute) and the 6-layer encoder of
//! `make_encoder.py` (compute-bound) at a high concurrency, the latency at concurrency 1
//! (what the hop to a worker costs), and the browser's memory with each number of
//! workers.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use crate::agent_process;
use crate::batching::one_row;
use crate::compute::make_encoder;
use crate::measure::bench_bridge;
use webaccel_testkit::procs;

/// (name in the agent, fixture, backend, share of the requests per row: the encoder's
/// requests take ~100 ms each). The transformer on WebGPU shows whether requests in
/// different workers (each with its own onnxruntime-web and GPU device) overlap.
const MODELS: [(&str, &str, &str, usize); 4] = [
    ("mlp", "mlp", "wasm", 1),
    ("transformer", "transformer", "wasm", 1),
    ("transformer_gpu", "transformer", "webgpu", 4),
    ("encoder", "encoder", "wasm", 50),
];

/// One agent per worker count, both models loaded on wasm; one JSON row per
/// (workers, model, concurrency) and one memory figure per worker count.
pub async fn run(
    bin: &Path,
    models: &Path,
    encoder_script: &Path,
    workers: &[u32],
    concurrency: usize,
    requests: usize,
) -> anyhow::Result<Value> {
    let encoder_dir = tempfile::tempdir()?;
    make_encoder(encoder_script, encoder_dir.path())?;
    let dir_of = |fixture: &str| {
        if fixture == "encoder" {
            encoder_dir.path()
        } else {
            models
        }
    };
    let specs: Vec<String> = MODELS
        .iter()
        .map(|(name, fixture, backend, _)| {
            format!(
                "{name}=file://{},backend={backend}",
                dir_of(fixture).join(format!("{fixture}.onnx")).display()
            )
        })
        .collect();
    let mut rows = Vec::new();
    let mut memory = Vec::new();
    let mut version = Value::Null;
    for &w in workers {
        let (agent, _) = agent_process::start(
            bin,
            &specs,
            &[
                &format!("--page-workers={w}"),
                "--standby-browser=false",
                "--max-in-flight=512",
                "--bridge-window=256",
            ],
        )
        .await?;
        let caps = agent.get("/v1/capabilities").await.1;
        version = caps["browser"]["version"].clone();
        let threads = caps["page_workers"]["threads_per_worker"].clone();
        for (name, fixture, _, share) in MODELS {
            let tensors = one_row(dir_of(fixture), fixture)?;
            for c in [1, concurrency] {
                let n = if c == 1 { requests / 2 } else { requests } / share;
                let mut row = bench_bridge(&agent, name, &tensors, c, n).await?;
                row["workers"] = w.into();
                row["threads_per_worker"] = threads.clone();
                row["model"] = name.into();
                eprintln!(
                    "workers {w} {name} c={c}: {:.0} req/s",
                    row["throughput_rps"].as_f64().unwrap_or(0.0)
                );
                rows.push(row);
            }
        }
        // Memory once the load has settled (every worker holds both models).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = agent.get("/v1/stats").await.1["browser"]["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .context("the agent reports no browser pid")?;
        #[allow(clippy::cast_precision_loss)]
        let pss_mib = procs::browser_pss_kib(pid) as f64 / 1024.0;
        memory
            .push(json!({"workers": w, "threads_per_worker": threads, "browser_pss_mib": pss_mib}));
    }
    // Memory each worker beyond the first adds, against the one-worker browser.
    if let Some(base) = memory.first().and_then(|m| m["browser_pss_mib"].as_f64()) {
        for m in &mut memory {
            let w = m["workers"].as_f64().unwrap_or(1.0);
            if w > 1.0 {
                let pss = m["browser_pss_mib"].as_f64().unwrap_or(base);
                m["added_per_worker_mib"] = ((pss - base) / (w - 1.0)).into();
            }
        }
    }
    Ok(json!({
        "browser": version,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "requests_per_row": requests,
        "transport": "bridge",
        "rows": rows,
        "memory": memory,
    }))
}

#[allow(clippy::print_stdout)]
pub fn print(report: &Value) {
    println!(
        "page workers: one browser, wasm (transformer_gpu: webgpu), one-row requests over one bridge connection, {} CPUs, {}",
        report["cpus"],
        report["browser"].as_str().unwrap_or_default()
    );
    println!(
        "{:<12} {:>7} {:>7} {:>4} {:>9} {:>9} {:>9} {:>12} {:>6}",
        "model", "workers", "threads", "conc", "req/s", "p50 ms", "p99 ms", "compute p50", "errors"
    );
    for r in report["rows"].as_array().into_iter().flatten() {
        println!(
            "{:<12} {:>7} {:>7} {:>4} {:>9.0} {:>9.3} {:>9.3} {:>12.3} {:>6}",
            r["model"].as_str().unwrap_or_default(),
            r["workers"],
            r["threads_per_worker"],
            r["concurrency"],
            r["throughput_rps"].as_f64().unwrap_or(f64::NAN),
            r["e2e_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["e2e_p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["compute_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["errors"],
        );
    }
    println!(
        "\n{:>7} {:>16} {:>18}",
        "workers", "browser PSS MiB", "added/worker MiB"
    );
    for m in report["memory"].as_array().into_iter().flatten() {
        println!(
            "{:>7} {:>16.1} {:>18}",
            m["workers"],
            m["browser_pss_mib"].as_f64().unwrap_or(f64::NAN),
            m["added_per_worker_mib"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")),
        );
    }
}
