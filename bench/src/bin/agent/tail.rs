//! `tail`: where the slowest requests' time goes, and the tail beside a native peer.
//!
//! One agent (its page as it starts: no warm-up here beyond its own), a gateway in front
//! of it, and KServe's own Python model server (PyPI `kserve`, native onnxruntime, as
//! many intra-op threads as the agent's page) on the same model files, all driven by the
//! stock `tritonclient.http` (`bench/peer/drive.py`) in alternating blocks, so every
//! target sees the machine at nearly the same time. Printed per model and concurrency:
//! p50/p99/p99.9 of what the client waited, for each target, and the ratios the issue
//! sets targets for; then, per stage of webaccel's answers, p50/p99/p99.9 and the mean
//! over the slowest 1% (with `outside`: the client's wait less every stage, i.e. the
//! client library and the HTTP transport).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio_util::sync::CancellationToken;
use webaccel_api::timing::Stage;
use webaccel_bench::{pct, start_gateway, start_gateway_hedging};
use webaccel_gateway::discovery::static_list::AgentRef;
use webaccel_gateway::hedge::HedgePolicy;

use crate::agent_process;

mod print;
pub use print::print;

/// What `tail` is told.
#[derive(Debug)]
pub struct TailOptions {
    pub models: Vec<String>,
    pub concurrency: Vec<usize>,
    pub blocks: usize,
    pub requests: usize,
    /// The Python with `kserve` installed (it need not be the tests' Python).
    pub kserve_python: PathBuf,
    /// Intra-op threads of the peer's onnxruntime sessions.
    pub peer_threads: u32,
    /// Extra arguments for the agent.
    pub agent_args: Vec<String>,
    /// When given, a second agent (target `agent_b`) with these extra arguments instead,
    /// driven in the same alternation: an A/B comparison on one noisy machine.
    pub b_args: Vec<String>,
    /// When given, a second agent joins, the gateway fronts both, and a second gateway
    /// (target `gateway_hedged`) over the same two hedges after this quantile.
    pub hedge_quantile: Option<f64>,
}

/// One line of `drive.py`.
#[derive(Debug, Deserialize)]
struct Answer {
    target: String,
    model: String,
    concurrency: usize,
    block: usize,
    client_ms: f64,
    stages: BTreeMap<String, f64>,
}

/// A free port on loopback.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// CPU milliseconds of the agent `root` and its browsers' processes, by what each is
/// (`agent`, `browser`, and Chromium's `--type`: `renderer`, `utility`, `gpu-process`).
fn cpu_by_kind(root: i32) -> BTreeMap<String, f64> {
    let mut by = BTreeMap::new();
    by.insert("agent".to_owned(), webaccel_testkit::procs::cpu_ms(root));
    for p in webaccel_testkit::procs::descendants(root) {
        let kind = if p.kind.is_empty() {
            "browser".to_owned()
        } else {
            p.kind.clone()
        };
        *by.entry(kind).or_insert(0.0) += webaccel_testkit::procs::cpu_ms(p.pid);
    }
    by
}

/// KServe's Python server on `port`, once it answers ready.
async fn start_peer(
    options: &TailOptions,
    models_dir: &Path,
    port: u16,
) -> anyhow::Result<tokio::process::Child> {
    let script = webaccel_testkit::fixtures::repo().join("bench/peer/kserve_server.py");
    let mut cmd = tokio::process::Command::new(&options.kserve_python);
    cmd.arg(script)
        .args(["--http-port", &port.to_string()])
        .args(["--threads", &options.peer_threads.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for m in &options.models {
        cmd.arg("--model").arg(format!(
            "{m}={}",
            models_dir.join(format!("{m}.onnx")).display()
        ));
    }
    let child = cmd.spawn().with_context(|| {
        format!(
            "starting {} (a Python with `pip install kserve`; --kserve-python)",
            options.kserve_python.display()
        )
    })?;
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{port}/v2/health/ready");
    while reqwest::get(&url).await.map_or(true, |r| r.status() != 200) {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("KServe's server did not get ready on port {port} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(child)
}

/// Runs `drive.py` over `targets`; every answer.
async fn drive(
    options: &TailOptions,
    models_dir: &Path,
    targets: &[(&str, String)],
) -> anyhow::Result<Vec<Answer>> {
    let script = webaccel_testkit::fixtures::repo().join("bench/peer/drive.py");
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(script)
        .arg("--models-dir")
        .arg(models_dir)
        .args([
            "--concurrency",
            &options
                .concurrency
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ])
        .args(["--blocks", &options.blocks.to_string()])
        .args(["--requests", &options.requests.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (name, addr) in targets {
        cmd.arg("--target").arg(format!("{name}={addr}"));
    }
    for m in &options.models {
        cmd.args(["--model", m]);
    }
    let mut child = cmd.spawn().context("starting bench/peer/drive.py")?;
    let stdout = child.stdout.take().context("drive.py's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut answers = Vec::new();
    while let Some(line) = lines.next_line().await? {
        answers.push(serde_json::from_str::<Answer>(&line).with_context(|| line.clone())?);
    }
    let status = child.wait().await?;
    if !status.success() {
        bail!("drive.py failed ({status}): a wrong answer or a failed request");
    }
    Ok(answers)
}

fn percentiles(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({
        "n": v.len(),
        "p50_ms": pct(&v, 0.5),
        "p99_ms": pct(&v, 0.99),
        "p999_ms": pct(&v, 0.999),
    })
}

/// One target's figures for one model and concurrency.
fn summarize(answers: &[&Answer]) -> Value {
    let client: Vec<f64> = answers.iter().map(|a| a.client_ms).collect();
    let first_block: Vec<f64> = answers
        .iter()
        .filter(|a| a.block == 0)
        .map(|a| a.client_ms)
        .collect();
    let mut summary = percentiles(client);
    summary["first_block"] = percentiles(first_block);
    if answers.iter().all(|a| a.stages.is_empty()) {
        return summary;
    }
    // Each stage over all answers, and its mean over the slowest 1% by the client's wait.
    let mut slowest: Vec<&&Answer> = answers.iter().collect();
    slowest.sort_by(|a, b| b.client_ms.total_cmp(&a.client_ms));
    slowest.truncate(answers.len().div_ceil(100));
    let mean = |f: &dyn Fn(&Answer) -> f64| {
        slowest.iter().map(|a| f(a)).sum::<f64>() / slowest.len().max(1) as f64
    };
    let mut stages = serde_json::Map::new();
    for stage in Stage::ALL {
        let name = stage.as_str();
        let all: Vec<f64> = answers
            .iter()
            .filter_map(|a| a.stages.get(name).copied())
            .collect();
        if all.is_empty() {
            continue;
        }
        let mut s = percentiles(all);
        s["tail_mean_ms"] = json!(mean(&|a| a.stages.get(name).copied().unwrap_or(0.0)));
        stages.insert(name.to_owned(), s);
    }
    let outside = |a: &Answer| a.client_ms - a.stages.values().sum::<f64>();
    let mut s = percentiles(answers.iter().map(|a| outside(a)).collect());
    s["tail_mean_ms"] = json!(mean(&outside));
    stages.insert("outside".to_owned(), s);
    summary["stages"] = Value::Object(stages);
    summary["tail_mean_ms"] = json!(mean(&|a| a.client_ms));
    summary
}

/// Starts everything, drives it, and sums it up.
pub async fn run(bin: &Path, models_dir: &Path, options: &TailOptions) -> anyhow::Result<Value> {
    let specs: Vec<String> = options
        .models
        .iter()
        .map(|m| {
            format!(
                "{m}=file://{},backend=wasm",
                models_dir.join(format!("{m}.onnx")).display()
            )
        })
        .collect();
    let extra: Vec<&str> = options.agent_args.iter().map(String::as_str).collect();
    let (agent, start_to_ready) = agent_process::start(bin, &specs, &extra).await?;
    let stop = CancellationToken::new();
    let agent_ref = AgentRef {
        url: agent.base.clone(),
        token: None,
        pool: Some("bench".into()),
    };
    let first = options.models.first().context("no model")?;
    let agent_b = if options.b_args.is_empty() && options.hedge_quantile.is_none() {
        None
    } else {
        let extra: Vec<&str> = options.b_args.iter().map(String::as_str).collect();
        Some(agent_process::start(bin, &specs, &extra).await?.0)
    };
    let mut fronted = vec![agent_ref];
    if let (Some(b), Some(_)) = (&agent_b, options.hedge_quantile) {
        fronted.push(AgentRef {
            url: b.base.clone(),
            token: None,
            pool: Some("bench".into()),
        });
    }
    let gateway = start_gateway(fronted.clone(), &stop, first).await?;
    let hedged = match options.hedge_quantile {
        Some(quantile) => Some(
            start_gateway_hedging(
                fronted,
                &stop,
                first,
                Some(HedgePolicy {
                    quantile,
                    min_delay: Duration::from_millis(1),
                }),
            )
            .await?,
        ),
        None => None,
    };
    let port = free_port()?;
    let peer = start_peer(options, models_dir, port).await?;
    let mut targets = vec![
        ("kserve", format!("127.0.0.1:{port}")),
        ("agent", agent.base.trim_start_matches("http://").to_owned()),
        ("gateway", gateway.http.to_string()),
    ];
    if let Some(b) = &agent_b {
        targets.push(("agent_b", b.base.trim_start_matches("http://").to_owned()));
    }
    if let Some(h) = &hedged {
        targets.push(("gateway_hedged", h.http.to_string()));
    }
    // CPU used by each server while the clients drive it: on two cores what one request
    // costs decides the latency at concurrency 8 as much as anything in its path.
    let peer_pid = i32::try_from(peer.id().unwrap_or(0)).unwrap_or(0);
    let cpu = |pid: i32| webaccel_testkit::procs::tree_cpu_ms(pid);
    let own = i32::try_from(std::process::id()).unwrap_or(0);
    let before = (
        cpu(agent.pid()),
        cpu(peer_pid),
        webaccel_testkit::procs::cpu_ms(own),
    );
    let by_kind_before = cpu_by_kind(agent.pid());
    let answers = drive(options, models_dir, &targets).await?;
    let after = (
        cpu(agent.pid()),
        cpu(peer_pid),
        webaccel_testkit::procs::cpu_ms(own),
    );
    let by_kind_after = cpu_by_kind(agent.pid());
    let served = |target: &str| answers.iter().filter(|a| a.target == target).count() as f64;
    let cpu_per_request = json!({
        "agent_and_browser_ms": (after.0 - before.0) / (served("agent") + served("gateway")),
        "gateway_ms": (after.2 - before.2) / served("gateway"),
        "kserve_ms": (after.1 - before.1) / served("kserve"),
        "agent_by_process_ms": by_kind_after
            .iter()
            .map(|(kind, ms)| {
                let was = by_kind_before.get(kind).copied().unwrap_or(0.0);
                (kind.clone(), json!((ms - was) / (served("agent") + served("gateway"))))
            })
            .collect::<serde_json::Map<_, _>>(),
    });
    let agent_tail = agent.get("/v1/stats").await.1["tail"].clone();
    let gateway_tail: Value = match gateway.admin {
        Some(admin) => reqwest::get(format!("http://{admin}/v1/stats"))
            .await?
            .json::<Value>()
            .await?["tail"]
            .clone(),
        None => Value::Null,
    };
    let hedges = match &hedged {
        Some(h) => match h.admin {
            Some(admin) => {
                let text = reqwest::get(format!("http://{admin}/metrics"))
                    .await?
                    .text()
                    .await?;
                text.lines()
                    .filter(|l| l.starts_with("webaccel_gateway_hedges_total"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            }
            None => Vec::new(),
        },
        None => Vec::new(),
    };
    let capabilities = agent.get("/v1/capabilities").await.1;
    stop.cancel();
    gateway.shutdown().await;
    if let Some(h) = hedged {
        h.shutdown().await;
    }

    let mut rows = Vec::new();
    for model in &options.models {
        for &c in &options.concurrency {
            let of = |target: &str| -> Vec<&Answer> {
                answers
                    .iter()
                    .filter(|a| &a.model == model && a.concurrency == c && a.target == target)
                    .collect()
            };
            let kserve = summarize(&of("kserve"));
            let agent = summarize(&of("agent"));
            let gateway = summarize(&of("gateway"));
            let agent_b = agent_b.as_ref().map(|_| summarize(&of("agent_b")));
            let gateway_hedged = options
                .hedge_quantile
                .map(|_| summarize(&of("gateway_hedged")));
            let ratio = |a: &Value, key: &str| {
                a[key].as_f64().unwrap_or(f64::NAN) / kserve[key].as_f64().unwrap_or(f64::NAN)
            };
            let minus = |a: &Value, b: &Value, key: &str| {
                a[key].as_f64().unwrap_or(f64::NAN) - b[key].as_f64().unwrap_or(f64::NAN)
            };
            rows.push(json!({
                "model": model,
                "concurrency": c,
                "kserve": kserve,
                "agent": agent,
                "gateway": gateway,
                "agent_b": agent_b,
                "gateway_hedged": gateway_hedged,
                "agent_vs_kserve": {
                    "p50": ratio(&agent, "p50_ms"),
                    "p99": ratio(&agent, "p99_ms"),
                    "p999": ratio(&agent, "p999_ms"),
                },
                "gateway_minus_agent_ms": {
                    "p50": minus(&gateway, &agent, "p50_ms"),
                    "p99": minus(&gateway, &agent, "p99_ms"),
                    "p999": minus(&gateway, &agent, "p999_ms"),
                },
            }));
        }
    }
    Ok(json!({
        "browser": capabilities["browser"]["version"],
        "page_workers": capabilities["page_workers"],
        "agent_start_to_ready_ms": start_to_ready.as_secs_f64() * 1e3,
        "peer": {"server": "kserve (PyPI) ModelServer, native onnxruntime CPU", "threads": options.peer_threads},
        "client": "tritonclient.http (PyPI), default settings, one client per thread",
        "agent_args": options.agent_args,
        "agent_b_args": options.b_args,
        "hedge_quantile": options.hedge_quantile,
        "hedges": hedges,
        "blocks": options.blocks,
        "requests_per_block": options.requests,
        "cpu_per_request": cpu_per_request,
        "rows": rows,
        "agent_tail": agent_tail,
        "gateway_tail": gateway_tail,
    }))
}
