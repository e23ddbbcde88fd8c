//! `quantized`: the 6-layer encoder of `make_encoder.py` in fp32, fp16, int8 (dynamic
//! and QDQ) and int4 (MatMulNBits), each quantized by onnxruntime's own tools
//! (`make_quantized.py --encoder`), on wasm in one browser each: file bytes, load time,
//! the browser's memory for the model, in-page compute and end-to-end latency, and the
//! output's error against the fp32 model (native onnxruntime) and against native
//! onnxruntime on the same file.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::agent_process;
use crate::compute::make_encoder;
use crate::samples::pct;
use webaccel_testkit::procs;

/// The largest absolute difference between two lists of output tensors (protocol JSON).
fn max_error(got: &Value, want: &Value) -> f64 {
    let values = |v: &Value| -> Vec<f64> {
        v[0]["data"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let (g, w) = (values(got), values(want));
    if g.len() != w.len() {
        return f64::INFINITY;
    }
    g.iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    serde_json::from_str(
        &std::fs::read_to_string(path).with_context(|| path.display().to_string())?,
    )
    .with_context(|| path.display().to_string())
}

#[allow(clippy::cast_precision_loss)]
pub async fn run(bin: &Path, fixtures: &Path, runs: usize) -> anyhow::Result<Value> {
    let encoder = tempfile::tempdir()?;
    make_encoder(&fixtures.join("make_encoder.py"), encoder.path())?;
    let out = tempfile::tempdir()?;
    let made = Command::new("python3")
        .arg(fixtures.join("make_quantized.py"))
        .arg("--encoder")
        .arg(encoder.path())
        .arg(out.path())
        .output()
        .context("running python3")?;
    if !made.status.success() {
        bail!(
            "make_quantized.py: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    let summary = read_json(&out.path().join("quantized.json"))?;
    let fp32_reference = read_json(&out.path().join("encoder_fp32.json"))?;
    let mut rows = Vec::new();
    let mut version = Value::Null;
    for m in summary["models"].as_array().context("models")? {
        let file = m["file"].as_str().context("file")?;
        let stem = file.trim_end_matches(".onnx");
        let reference = read_json(&out.path().join(format!("{stem}.json")))?;
        let (agent, _) = agent_process::start(
            bin,
            &[],
            &[
                "--standby-browser=false",
                "--page-workers=1",
                "--load-timeout=10m",
            ],
        )
        .await?;
        version = agent.get("/v1/capabilities").await.1["browser"]["version"].clone();
        let pid = agent.get("/v1/stats").await.1["browser"]["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .context("no browser pid")?;
        let before = procs::browser_pss_kib(pid);
        let spec = json!({
            "name": stem,
            "uri": format!("file://{}", out.path().join(file).display()),
            "backend": "wasm",
        });
        let started = Instant::now();
        let loaded = agent_process::load(&agent, &spec).await?;
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        let status = &loaded["status"];
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = procs::browser_pss_kib(pid);
        let body = json!({"inputs": reference["inputs"]});
        let (mut e2e, mut compute) = (Vec::new(), Vec::new());
        let mut error_vs_fp32 = 0.0_f64;
        let mut error_vs_native = 0.0_f64;
        for i in 0..runs + 2 {
            let t0 = Instant::now();
            let r: Value = agent
                .http
                .post(format!("{}/v2/models/{stem}/infer", agent.base))
                .json(&body)
                .send()
                .await?
                .json()
                .await?;
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            let Some(c) = r["parameters"]["compute_ms"].as_f64() else {
                bail!("{stem}: inference failed: {r}");
            };
            if i == 0 {
                error_vs_fp32 = max_error(&r["outputs"], &fp32_reference["outputs"]);
                error_vs_native = max_error(&r["outputs"], &reference["outputs"]);
            }
            if i >= 2 {
                e2e.push(ms);
                compute.push(c);
            }
        }
        e2e.sort_by(f64::total_cmp);
        compute.sort_by(f64::total_cmp);
        let row = json!({
            "model": stem,
            "precision": status["precision"],
            "precision_reason": status["precision_reason"],
            "file_bytes": m["bytes"],
            "load_ms": load_ms,
            "create_ms": status["create_ms"],
            "warmup_ms": status["warmup_ms"],
            "browser_pss_added_mib": (after as f64 - before as f64) / 1024.0,
            "compute_p50_ms": pct(&compute, 0.5),
            "e2e_p50_ms": pct(&e2e, 0.5),
            "e2e_p99_ms": pct(&e2e, 0.99),
            "max_abs_error_vs_fp32": error_vs_fp32,
            "max_abs_error_vs_native_same_file": error_vs_native,
            "native_error_vs_fp32": m["max_abs_error"],
        });
        eprintln!("{stem}: {row}");
        rows.push(row);
    }
    Ok(json!({"browser": version, "runs": runs, "backend": "wasm", "rows": rows}))
}

#[allow(clippy::print_stdout)]
pub fn print(report: &Value) {
    println!(
        "quantized encoder (6 layers, hidden 384, seq 128) on wasm, one browser each, {} runs, {}",
        report["runs"],
        report["browser"].as_str().unwrap_or_default()
    );
    println!(
        "{:<22} {:>5} {:>10} {:>9} {:>9} {:>11} {:>11} {:>9} {:>10} {:>10}",
        "model",
        "prec",
        "file MB",
        "load ms",
        "PSS+ MiB",
        "compute p50",
        "e2e p50",
        "e2e p99",
        "err/fp32",
        "err/native"
    );
    for r in report["rows"].as_array().into_iter().flatten() {
        #[allow(clippy::cast_precision_loss)]
        let mb = r["file_bytes"].as_u64().unwrap_or(0) as f64 / 1e6;
        println!(
            "{:<22} {:>5} {:>10.1} {:>9.0} {:>9.1} {:>11.1} {:>11.1} {:>9.1} {:>10.2e} {:>10.2e}",
            r["model"].as_str().unwrap_or_default(),
            r["precision"].as_str().unwrap_or_default(),
            mb,
            r["load_ms"].as_f64().unwrap_or(f64::NAN),
            r["browser_pss_added_mib"].as_f64().unwrap_or(f64::NAN),
            r["compute_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["e2e_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["e2e_p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["max_abs_error_vs_fp32"].as_f64().unwrap_or(f64::NAN),
            r["max_abs_error_vs_native_same_file"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
    }
    println!(
        "(err/fp32: the browser's output against native onnxruntime on the fp32 model; err/native: against native onnxruntime on the same file)"
    );
}
