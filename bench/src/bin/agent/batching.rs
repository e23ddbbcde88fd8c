//! `batching`: throughput and latency with dynamic batching off and on, for the mlp and
//! the transformer block (its dynamic-batch build, `transformer_batch.onnx`: the same
//! weights as `transformer.onnx`, whose batch dimension is fixed at 1), one-row requests
//! over one bridge connection at several concurrencies.

use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};
use webaccel_api::{DataType, Tensor};

use crate::agent_process;
use crate::measure::bench_bridge;

/// Batching settings compared: (label, max_batch_size, max_queue_delay_us).
pub const MODES: [(&str, u32, u64); 3] = [("off", 0, 0), ("on", 64, 0), ("on+500us", 64, 500)];

/// (name, fixture file, what one request carries).
const MODELS: [(&str, &str); 2] = [("mlp", "mlp"), ("transformer", "transformer_batch")];

/// The first row of a fixture's reference inputs, as one-row tensors.
pub fn one_row(models: &Path, fixture: &str) -> anyhow::Result<Vec<Tensor>> {
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(
        models.join(format!("{fixture}.json")),
    )?)?;
    reference["inputs"]
        .as_array()
        .context("inputs")?
        .iter()
        .map(|i| {
            let mut shape: Vec<i64> = serde_json::from_value(i["shape"].clone())?;
            let data = i["data"].as_array().context("data")?;
            let per_row = data.len() / usize::try_from(shape[0].max(1))?;
            shape[0] = 1;
            let dt =
                DataType::parse(i["datatype"].as_str().unwrap_or_default()).context("datatype")?;
            Ok(Tensor::from_json(
                i["name"].as_str().unwrap_or_default(),
                dt,
                shape,
                &Value::from(data[..per_row].to_vec()),
            )?)
        })
        .collect()
}

fn model_name(model: &str, mode: &str) -> String {
    format!("{model}_{}", mode.replace('+', "_"))
}

/// Runs every model and mode at every concurrency; one JSON row each.
pub async fn run(
    bin: &Path,
    models: &Path,
    concurrency: &[usize],
    requests: usize,
) -> anyhow::Result<Value> {
    let mut specs = Vec::new();
    for (model, fixture) in MODELS {
        for (mode, max, delay) in MODES {
            specs.push(format!(
                "{}=file://{},backend=wasm,max_batch_size={max},max_queue_delay_us={delay}",
                model_name(model, mode),
                models.join(format!("{fixture}.onnx")).display()
            ));
        }
    }
    let (agent, _) = agent_process::start(
        bin,
        &specs,
        &["--max-in-flight", "512", "--bridge-window", "256"],
    )
    .await?;
    let version = agent.get("/v1/capabilities").await.1["browser"]["version"].clone();
    let mut rows = Vec::new();
    for (model, fixture) in MODELS {
        let tensors = one_row(models, fixture)?;
        for &c in concurrency {
            for (mode, max, delay) in MODES {
                let name = model_name(model, mode);
                let before = agent.get("/v1/stats").await.1["models"][&name].clone();
                let mut row = bench_bridge(&agent, &name, &tensors, c, requests).await?;
                let after = agent.get("/v1/stats").await.1["models"][&name].clone();
                let delta =
                    |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
                // Runs in the page: requests that ran alone plus batches.
                let runs = delta("requests") - delta("batched_requests") + delta("batches");
                #[allow(clippy::cast_precision_loss)]
                let mean_batch = delta("requests") as f64 / runs.max(1) as f64;
                row["model"] = model.into();
                row["batching"] = mode.into();
                row["max_batch_size"] = max.into();
                row["max_queue_delay_us"] = delay.into();
                row["mean_requests_per_run"] = mean_batch.into();
                row["max_requests_per_run"] = after["max_batch_requests"].clone();
                eprintln!(
                    "{model} {mode} c={c}: {:.0} req/s",
                    row["throughput_rps"].as_f64().unwrap_or(0.0)
                );
                rows.push(row);
            }
        }
    }
    Ok(
        json!({"browser": version, "requests_per_row": requests, "transport": "bridge", "rows": rows}),
    )
}

#[allow(clippy::print_stdout)]
pub fn print(report: &Value) {
    println!(
        "dynamic batching: one-row requests over one bridge connection, {} per row, wasm, {}",
        report["requests_per_row"],
        report["browser"].as_str().unwrap_or_default()
    );
    println!(
        "{:<12} {:<9} {:>4} {:>9} {:>9} {:>9} {:>12} {:>10} {:>6}",
        "model",
        "batching",
        "conc",
        "req/s",
        "p50 ms",
        "p99 ms",
        "compute p50",
        "req/run",
        "errors"
    );
    for r in report["rows"].as_array().into_iter().flatten() {
        println!(
            "{:<12} {:<9} {:>4} {:>9.0} {:>9.3} {:>9.3} {:>12.3} {:>10.2} {:>6}",
            r["model"].as_str().unwrap_or_default(),
            r["batching"].as_str().unwrap_or_default(),
            r["concurrency"],
            r["throughput_rps"].as_f64().unwrap_or(f64::NAN),
            r["e2e_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["e2e_p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["compute_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["mean_requests_per_run"].as_f64().unwrap_or(f64::NAN),
            r["errors"],
        );
    }
    println!(
        "(on: max_batch_size 64, queue delay 0; on+500us: the same waiting up to 500 us for a batch to fill; compute = the run's time in the page, shared by its requests; req/run = requests per run in the page, warm-up included)"
    );
}
