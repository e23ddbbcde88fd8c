//! `webaccel-up-bench`: local mode's figures, each from a fresh `webaccel up` with real
//! agents and Chromium. Suite `pool` (the default): the time from `webaccel up` to the
//! first successful inference through the gateway (cold, one browser, a small model); the
//! scale-up reaction under a load step (step → decision → the new browser serving the
//! model); and a full roll of a 3-browser pool under load (time and failed requests).
//! Suite `sharded`: a 6-layer encoder whole on one browser against cut into two stages
//! on two browsers (memory per browser, latency, pipelined throughput; see [`sharded`]).
//! Suite `models`: per-model autoscaling (reaction to a load step, scale from zero, a
//! load shift between two models; see [`models`]).
//! Suite `chaos`: a soak under load with faults drawn from a seed, and the accounting of
//! every answered request's rows, memory, open files and processes (see [`chaos`]).
//! Prints the figures and writes them as JSON (`--out`).
#![allow(clippy::print_stdout, clippy::unwrap_used)] // a benchmark: a panic is the report

mod chaos;
mod models;
mod sharded;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};
use webaccel_testkit::up::{Load, Up, browser_names, loaded, model_yaml, pool, pool_yaml};

#[derive(Debug, Parser)]
struct Args {
    /// The `webaccel` binary (default: beside this one).
    #[arg(long)]
    webaccel: Option<PathBuf>,
    /// The model to serve (default: the repository's examples/local/mlp.onnx).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Clients sending back to back during the scale-up and roll phases.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    #[arg(long, default_value = "up-bench.json")]
    out: PathBuf,
    /// Which figures: `pool` (cold start, scale-up, roll), `sharded` (a model cut into
    /// stages against whole) or `models` (per-model autoscaling).
    #[arg(long, value_enum, default_value_t = Suite::Pool)]
    suite: Suite,
    /// `sharded`: requests timed one after another.
    #[arg(long, default_value_t = 40)]
    latency_requests: usize,
    /// `sharded`: how long eight clients send back to back.
    #[arg(long, default_value_t = 20)]
    throughput_seconds: u64,
    /// `chaos`: how long the load and the faults last.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// `chaos`: the seed the fault schedule is drawn from.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `chaos`: time between faults.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    fault_every: Duration,
    /// `chaos`: gRPC clients beside the `--clients` HTTP ones.
    #[arg(long, default_value_t = 2)]
    grpc_clients: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Suite {
    Pool,
    Sharded,
    Models,
    Chaos,
}

fn request() -> Value {
    json!({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": vec![0.25_f32; 16]}]})
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Cold start: `webaccel up` to the first 200 from the gateway.
async fn cold(binary: &Path, model: &Path) -> Value {
    let up = Up::start(
        binary,
        &[
            ("pool.yaml", pool_yaml("cold", "  replicas: 1\n")),
            ("mlp.yaml", model_yaml("mlp", "cold", model, 1)),
        ],
        &["--no-clickhouse".to_owned()],
    );
    let client = reqwest::Client::new();
    let url = format!("{}/v2/models/mlp/infer", up.http);
    loop {
        let ok = client
            .post(&url)
            .json(&request())
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            break;
        }
        assert!(
            up.started.elapsed() < Duration::from_secs(120),
            "no inference within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = up.started.elapsed();
    println!(
        "up → first inference through the gateway (cold, 1 browser, mlp): {:.2} s",
        first.as_secs_f64()
    );
    json!({"up_to_first_inference_s": secs(first)})
}

/// A load step on an autoscaled pool at its minimum of one browser.
async fn scale_up(binary: &Path, model: &Path, clients: usize) -> Value {
    let spec = "  autoscaling:\n    enabled: true\n    minReplicas: 1\n    maxReplicas: 2\n    targetInFlightPerBrowser: 2\n    scaleUpStabilizationSeconds: 0\n    scaleDownStabilizationSeconds: 300\n";
    let up = Up::start(
        binary,
        &[
            ("pool.yaml", pool_yaml("auto", spec)),
            ("mlp.yaml", model_yaml("mlp", "auto", model, 2)),
        ],
        &["--no-clickhouse".to_owned()],
    );
    up.until(
        "mlp loaded on the first browser",
        Duration::from_secs(120),
        |s| loaded(s, "mlp", 1),
    )
    .await;
    let step = Instant::now();
    let load = Load::start(&up.http, "mlp", &request(), clients);
    up.until("the decision", Duration::from_secs(60), |s| {
        pool(s, "auto")["status"]["desiredReplicas"] == 2
    })
    .await;
    let decided = step.elapsed();
    up.until(
        "the second browser serving",
        Duration::from_secs(120),
        |s| loaded(s, "mlp", 2),
    )
    .await;
    let serving = step.elapsed();
    let (served, failed) = load.finish().await;
    println!(
        "scale-up at {clients} clients: decision {:.2} s, new browser serving the model {:.2} s after the load step ({served} served, {} failed)",
        decided.as_secs_f64(),
        serving.as_secs_f64(),
        failed.len()
    );
    json!({"clients": clients, "decision_s": secs(decided), "serving_s": secs(serving), "served": served, "failed": failed.len()})
}

/// A changed pool of three browsers rolls, one at a time, under load.
async fn roll(binary: &Path, model: &Path, clients: usize) -> Value {
    let up = Up::start(
        binary,
        &[
            (
                "pool.yaml",
                pool_yaml("roll", "  replicas: 3\n  maxInFlightPerBrowser: 32\n"),
            ),
            ("mlp.yaml", model_yaml("mlp", "roll", model, 3)),
        ],
        &["--no-clickhouse".to_owned()],
    );
    let s = up
        .until("mlp on three browsers", Duration::from_secs(180), |s| {
            loaded(s, "mlp", 3)
        })
        .await;
    let before = browser_names(&s, "roll");
    let load = Load::start(&up.http, "mlp", &request(), clients);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let changed = up.manifests().join("changed.yaml");
    std::fs::write(
        &changed,
        pool_yaml("roll", "  replicas: 3\n  maxInFlightPerBrowser: 48\n"),
    )
    .unwrap();
    let applied = Instant::now();
    let (ok, out, err) = up.webaccel(&["apply", "-f", changed.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    up.until("the pool rolled", Duration::from_secs(300), |s| {
        let names = browser_names(s, "roll");
        names.len() == 3 && names.iter().all(|n| !before.contains(n)) && loaded(s, "mlp", 3)
    })
    .await;
    let rolled = applied.elapsed();
    let (served, failed) = load.finish().await;
    println!(
        "roll of 3 browsers under {clients} clients: {:.2} s, {served} requests served, {} failed{}",
        rolled.as_secs_f64(),
        failed.len(),
        failed
            .first()
            .map(|f| format!(" (first: {f})"))
            .unwrap_or_default()
    );
    json!({"browsers": 3, "clients": clients, "roll_s": secs(rolled), "served": served, "failed": failed.len()})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = match args.webaccel {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("webaccel"),
    };
    if args.suite == Suite::Chaos {
        let work = tempfile::tempdir()?;
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let settings = chaos::Settings {
            duration: args.duration,
            seed: args.seed,
            http_clients: args.clients,
            grpc_clients: args.grpc_clients,
            fault_every: args.fault_every,
        };
        let figures = chaos::run(&binary, &repo, work.path(), &settings).await;
        println!("{}", serde_json::to_string_pretty(&figures)?);
        std::fs::write(&args.out, serde_json::to_string_pretty(&figures)?)?;
        println!("written to {}", args.out.display());
        return Ok(());
    }
    if args.suite == Suite::Sharded {
        let work = tempfile::tempdir()?;
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let settings = sharded::Settings {
            latency_requests: args.latency_requests,
            throughput_seconds: args.throughput_seconds,
        };
        let figures = sharded::run_suite(&binary, &repo, work.path(), settings).await;
        print!("{}", sharded::table(&figures));
        std::fs::write(&args.out, serde_json::to_string_pretty(&figures)?)?;
        println!("written to {}", args.out.display());
        return Ok(());
    }
    let model = match args.model {
        Some(m) => m,
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/local/mlp.onnx")
            .canonicalize()?,
    };
    if args.suite == Suite::Models {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let chart = args.out.with_extension("fleet.svg");
        let figures = models::run_suite(&binary, &repo, &model, args.clients, &chart).await;
        std::fs::write(&args.out, serde_json::to_string_pretty(&figures)?)?;
        println!("written to {}", args.out.display());
        return Ok(());
    }
    let figures = json!({
        "cold": cold(&binary, &model).await,
        "scale_up": scale_up(&binary, &model, args.clients).await,
        "roll": roll(&binary, &model, args.clients).await,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&figures)?)?;
    println!("written to {}", args.out.display());
    Ok(())
}
