//! The `compute` suite: in-page compute time of a realistic transformer encoder
//! (`tests/fixtures/make_encoder.py`: 6 layers, hidden 384, seq 128) against native
//! onnxruntime on the CPU at the same thread count, measured in the same run, for each
//! onnxruntime-web build wasm sessions can use. The ratio is what the browser costs.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::agent_process::{self, AgentProcess};
use crate::samples::pct;

/// Makes the encoder and its onnxruntime reference in `dir`.
pub fn make_encoder(script: &Path, dir: &Path) -> anyhow::Result<Value> {
    let out = Command::new("python3")
        .arg(script)
        .arg(dir)
        .output()
        .context("running python3")?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Native onnxruntime's p50 on `model` (`encoder` or `matmul`) at `threads` threads.
fn native(
    script: &Path,
    dir: &Path,
    model: &str,
    threads: u32,
    runs: usize,
) -> anyhow::Result<Value> {
    let out = Command::new("python3")
        .arg(script)
        .arg(dir)
        .args(["--native", &threads.to_string(), &runs.to_string()])
        .args(["--model", model])
        .output()
        .context("running python3")?;
    if !out.status.success() {
        bail!("native timing: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The page's compute times (ms, sorted) over `runs` requests, and the largest error
/// against the reference.
async fn in_page(
    agent: &AgentProcess,
    model: &str,
    reference: &Value,
    runs: usize,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let body = json!({"inputs": reference["inputs"]});
    let expected: Vec<f64> = reference["outputs"][0]["data"]
        .as_array()
        .context("reference outputs")?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    let mut times = Vec::new();
    let mut max_err = 0.0_f64;
    for i in 0..runs + 3 {
        let r: Value = agent
            .http
            .post(format!("{}/v2/models/{model}/infer", agent.base))
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        let Some(compute) = r["parameters"]["compute_ms"].as_f64() else {
            bail!("inference failed: {r}");
        };
        if i == 0 {
            let got = r["outputs"][0]["data"].as_array().context("outputs")?;
            for (g, e) in got.iter().filter_map(Value::as_f64).zip(&expected) {
                max_err = max_err.max((g - e).abs());
            }
        }
        // The first three warm the page's caches, as native's warm-up does.
        if i >= 3 {
            times.push(compute);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((times, max_err))
}

/// The models compared: the encoder, and its largest kernel alone (the matrix
/// multiplication kernels' own ratio, the floor of the encoder's).
const MODELS: [&str; 2] = ["encoder", "matmul"];

/// Runs the suite: for each thread count, native, then the page with each build.
pub async fn run(bin: &Path, script: &Path, threads: &[u32], runs: usize) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let made = make_encoder(script, dir.path())?;
    let mut references = Vec::new();
    let mut specs = Vec::new();
    for m in MODELS {
        references.push(serde_json::from_str::<Value>(&std::fs::read_to_string(
            dir.path().join(format!("{m}.json")),
        )?)?);
        specs.push(format!(
            "{m}=file://{},backend=wasm",
            dir.path().join(format!("{m}.onnx")).display()
        ));
    }
    let mut rows = Vec::new();
    for &t in threads {
        let natives = MODELS
            .iter()
            .map(|m| native(script, dir.path(), m, t, runs))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for build in ["plain", "all"] {
            let extra = [
                "--wasm-threads",
                &t.to_string(),
                "--wasm-build",
                build,
                "--standby-browser",
                "false",
                "--page-workers",
                "1",
            ];
            let (agent, _) = agent_process::start(bin, &specs, &extra).await?;
            for ((m, reference), native) in MODELS.iter().zip(&references).zip(&natives) {
                let native_p50 = native["p50_ms"].as_f64().unwrap_or(f64::NAN);
                let (times, max_err) = in_page(&agent, m, reference, runs).await?;
                let p50 = pct(&times, 0.5);
                rows.push(json!({
                    "model": m,
                    "threads": t,
                    "build": build,
                    "page_p50_ms": p50,
                    "page_p10_ms": pct(&times, 0.1),
                    "native_p50_ms": native_p50,
                    "ratio": p50 / native_p50,
                    "max_abs_error": max_err,
                }));
            }
        }
    }
    Ok(json!({"model": made, "runs": runs, "rows": rows}))
}
