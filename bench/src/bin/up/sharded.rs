//! The `sharded` suite: the 6-layer encoder of `make_encoder.py` served whole on one
//! browser, then cut by `webaccel shard` into 2 stages on two browsers (a ModelDeployment
//! with `stages`), each through a fresh `webaccel up` and its gateway: each browser's
//! memory (PSS of its processes), end-to-end latency at concurrency 1 (p50, p99), and
//! throughput at concurrency 8 (where the stages of consecutive requests overlap). The
//! whole setup keeps a second, idle browser for the memory of a browser without a model.
//! The split model's answer is checked against the whole one's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use webaccel_api::agent::{AgentStats, ModelList};

use webaccel_bench::pct;
use webaccel_testkit::procs;
use webaccel_testkit::up::{Up, browser_names, loaded, pool_yaml};

/// What one setup measured.
#[derive(Debug, Serialize)]
pub struct Setup {
    pub setup: String,
    /// Browsers holding the model (or its stages).
    pub browsers: Vec<BrowserMemory>,
    /// Browsers of the pool holding nothing (the whole setup keeps one idle beside the
    /// model, as the memory a browser costs without a model).
    pub idle_browsers: Vec<BrowserMemory>,
    pub latency_c1: Latency,
    pub throughput_c8: Throughput,
}

#[derive(Debug, Serialize)]
pub struct BrowserMemory {
    pub browser: String,
    /// The models it holds (the whole model, or its stage).
    pub models: Vec<String>,
    /// Proportional set size of the browser's processes, MiB.
    pub pss_mib: f64,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub requests: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub clients: usize,
    pub seconds: f64,
    pub requests: usize,
    pub failed: usize,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The suite's figures, as written to the JSON file.
#[derive(Debug, Serialize)]
pub struct Figures {
    pub model_bytes: u64,
    pub stage_bytes: Vec<u64>,
    pub whole: Setup,
    pub split: Setup,
    /// Largest difference between the split model's answer and the whole one's.
    pub max_abs_difference: f32,
}

/// How long each phase runs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub latency_requests: usize,
    pub throughput_seconds: u64,
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// One request: its latency and the first output's raw bytes (binary tensor extension).
async fn infer(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<(f64, Vec<u8>), String> {
    let started = Instant::now();
    let resp = client
        .post(url)
        .json(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let header_len: Option<usize> = resp
        .headers()
        .get("inference-header-content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if status != 200 {
        return Err(format!("{status} {}", String::from_utf8_lossy(&bytes)));
    }
    let raw = header_len
        .and_then(|n| bytes.get(n..))
        .map(<[u8]>::to_vec)
        .ok_or("no binary output in the answer")?;
    Ok((ms, raw))
}

/// Measures the deployment `model` of `manifests` through a fresh `webaccel up`.
async fn measure(
    binary: &Path,
    setup: &str,
    model: &str,
    manifests: &[(&str, String)],
    body: &Value,
    settings: Settings,
) -> (Setup, Vec<u8>) {
    let up = Up::start(binary, manifests, &["--no-clickhouse".to_owned()]);
    let status = up
        .until(
            &format!("{setup}: {model} loaded"),
            Duration::from_secs(300),
            |s| loaded(s, model, 1),
        )
        .await;
    let url = format!("{}/v2/models/{model}/infer", up.http);
    let client = reqwest::Client::new();
    let mut answer = Vec::new();
    for _ in 0..5 {
        answer = infer(&client, &url, body).await.unwrap().1;
    }
    let mut times = Vec::with_capacity(settings.latency_requests);
    for _ in 0..settings.latency_requests {
        times.push(infer(&client, &url, body).await.unwrap().0);
    }
    let times = sorted(times);
    let latency_c1 = Latency {
        requests: times.len(),
        p50_ms: hundredths(pct(&times, 0.5)),
        p99_ms: hundredths(pct(&times, 0.99)),
    };

    // Eight clients back to back for a fixed time.
    let clients = 8;
    let window = Duration::from_secs(settings.throughput_seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (Vec::new(), 0usize);
                while started.elapsed() < window {
                    match infer(&client, &url, &body).await {
                        Ok((ms, _)) => ok.push(ms),
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut all, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (ok, f) = t.await.unwrap();
        all.extend(ok);
        failed += f;
    }
    let seconds = started.elapsed().as_secs_f64();
    let all = sorted(all);
    #[allow(clippy::cast_precision_loss)]
    let per_second = ((all.len() as f64 / seconds) * 100.0).round() / 100.0;
    let throughput_c8 = Throughput {
        clients,
        seconds: (seconds * 10.0).round() / 10.0,
        requests: all.len(),
        failed,
        per_second,
        p50_ms: hundredths(pct(&all, 0.5)),
        p99_ms: hundredths(pct(&all, 0.99)),
    };

    // Memory after the runs: what serving the model costs each browser.
    let (mut browsers, mut idle_browsers) = (Vec::new(), Vec::new());
    for name in browser_names(&status, &format!("{setup}-pool")) {
        let stats: AgentStats = up.agent_get(&status, &name, "/v1/stats").await;
        let pid = stats
            .browser
            .pid
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or_else(|| panic!("{name}: its agent reports no browser process"));
        #[allow(clippy::cast_precision_loss)]
        let pss_mib = (procs::browser_pss_kib(pid) as f64 / 1024.0 * 10.0).round() / 10.0;
        let models: ModelList = up.agent_get(&status, &name, "/v1/repository/models").await;
        let memory = BrowserMemory {
            browser: name,
            models: models.loaded().map(str::to_owned).collect(),
            pss_mib,
        };
        if memory.models.is_empty() {
            idle_browsers.push(memory);
        } else {
            browsers.push(memory);
        }
    }
    drop(up);
    (
        Setup {
            setup: setup.to_owned(),
            browsers,
            idle_browsers,
            latency_c1,
            throughput_c8,
        },
        answer,
    )
}

fn floats(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Runs the suite in `work` (the encoder and its stages are written there).
pub async fn run_suite(binary: &Path, repo: &Path, work: &Path, settings: Settings) -> Figures {
    run(
        Command::new("python3")
            .arg(repo.join("node-agent/tests/fixtures/make_encoder.py"))
            .arg(work),
        "make_encoder.py",
    );
    let model = work.join("encoder.onnx");
    // Sharding needs the types of the tensors crossing a cut: shape inference first.
    run(
        Command::new("python3")
            .arg(repo.join("onnx/tests/run_stages.py"))
            .arg("infer")
            .arg(&model)
            .arg(&model),
        "shape inference",
    );
    let stages_dir = work.join("encoder.stages");
    run(
        Command::new(binary)
            .arg("shard")
            .arg(&model)
            .args(["--stages", "2", "--out"])
            .arg(&stages_dir),
        "webaccel shard",
    );
    let reference: Value =
        serde_json::from_slice(&std::fs::read(work.join("encoder.json")).unwrap()).unwrap();
    let body = serde_json::json!({
        "inputs": reference["inputs"],
        "outputs": [{"name": "hidden", "parameters": {"binary_data": true}}],
    });
    let stage_files: Vec<PathBuf> = (0..2)
        .map(|i| stages_dir.join(format!("stage{i}.onnx")))
        .collect();
    let model_yaml = format!(
        "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata:\n  name: encoder\nspec:\n  poolRef: {{name: whole-pool}}\n  model: {{uri: 'file://{}', task: text-embedding}}\n  backends: [wasm]\n",
        model.display()
    );
    let stages_yaml = format!(
        "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata:\n  name: encoder\nspec:\n  poolRef: {{name: split-pool}}\n  stages:\n{}  backends: [wasm]\n",
        stage_files
            .iter()
            .map(|f| format!(
                "  - {{uri: 'file://{}', task: text-embedding}}\n",
                f.display()
            ))
            .collect::<String>()
    );
    let (whole, whole_answer) = measure(
        binary,
        "whole",
        "encoder",
        &[
            // Two browsers, the model on one: the other is the idle baseline.
            ("pool.yaml", pool_yaml("whole-pool", "  replicas: 2\n")),
            ("encoder.yaml", model_yaml),
        ],
        &body,
        settings,
    )
    .await;
    let (split, split_answer) = measure(
        binary,
        "split",
        "encoder",
        &[
            ("pool.yaml", pool_yaml("split-pool", "  replicas: 2\n")),
            ("encoder.yaml", stages_yaml),
        ],
        &body,
        settings,
    )
    .await;
    let (a, b) = (floats(&whole_answer), floats(&split_answer));
    assert_eq!(a.len(), b.len(), "the answers differ in size");
    let max_abs_difference = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0_f32, f32::max);
    Figures {
        model_bytes: std::fs::metadata(&model).map(|m| m.len()).unwrap_or(0),
        stage_bytes: stage_files
            .iter()
            .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .collect(),
        whole,
        split,
        max_abs_difference,
    }
}

/// The figures as a table.
pub fn table(f: &Figures) -> String {
    let mut out = format!(
        "encoder ({:.1} MB) whole on 1 browser vs cut in 2 stages ({}) on 2 browsers; answers differ by at most {:.2e}\n",
        f.model_bytes as f64 / 1e6,
        f.stage_bytes
            .iter()
            .map(|b| format!("{:.1} MB", *b as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(" + "),
        f.max_abs_difference
    );
    out.push_str(&format!(
        "{:<7} {:<28} {:>10} {:>10} {:>10} {:>12} {:>10}\n",
        "SETUP",
        "PSS PER BROWSER (MiB)",
        "C1 P50 ms",
        "C1 P99 ms",
        "C8 req/s",
        "C8 P50 ms",
        "C8 P99 ms"
    ));
    for s in [&f.whole, &f.split] {
        let pss: Vec<String> = s
            .browsers
            .iter()
            .map(|b| format!("{:.0}", b.pss_mib))
            .collect();
        out.push_str(&format!(
            "{:<7} {:<28} {:>10.1} {:>10.1} {:>10.2} {:>12.1} {:>10.1}\n",
            s.setup,
            pss.join(" + "),
            s.latency_c1.p50_ms,
            s.latency_c1.p99_ms,
            s.throughput_c8.per_second,
            s.throughput_c8.p50_ms,
            s.throughput_c8.p99_ms
        ));
    }
    let idle: Vec<String> = f
        .whole
        .idle_browsers
        .iter()
        .chain(&f.split.idle_browsers)
        .map(|b| format!("{:.0}", b.pss_mib))
        .collect();
    if !idle.is_empty() {
        out.push_str(&format!(
            "a browser holding no model: {} MiB\n",
            idle.join(", ")
        ));
    }
    out
}

/// A figure rounded to hundredths, as the report shows it.
fn hundredths(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
