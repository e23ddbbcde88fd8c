//! `webaccel-operator-bench`: reconcile latency and memory for many pools against an in-memory
//! API server, and the autoscaler's reaction time from a load step to the scale decision.
//! Prints the figures and writes them as JSON (`--out`).
#![allow(clippy::print_stdout)]

mod fake_api;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use fake_api::{Agents, FakeApi, client, fleet, pods, pool};
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use webaccel_operator::context::{Context, Settings};
use webaccel_operator::metrics::Metrics;
use webaccel_operator::pool::build::template_hash;
use webaccel_operator::pool::reconcile::reconcile;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    pools: usize,
    #[arg(long, default_value_t = 10)]
    browsers: usize,
    /// Load-step trials for the autoscaler reaction time.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    #[arg(long, default_value = "operator-bench.json")]
    out: String,
    /// Internal: run as the fake API server for the live-controller phase.
    #[arg(long, hide = true)]
    serve_fake_api: bool,
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.serve_fake_api {
        return fake_api::serve_http(fleet(args.pools, args.browsers).1).await;
    }
    let rss_start = rss_mib();

    // 1. The real controllers (watchers, stores, scheduler, concurrency limit) against the
    // fake API server in a child process over loopback HTTP: time until every pool's status
    // was written once, and this process's RSS with everything live.
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "--serve-fake-api",
            "--pools",
            &args.pools.to_string(),
            "--browsers",
            &args.browsers.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("fake API: no stdout"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let port: u16 = lines
        .next_line()
        .await?
        .ok_or_else(|| anyhow::anyhow!("fake API: no port"))?
        .parse()?;
    let base = format!("http://127.0.0.1:{port}");
    let live_client = kube::Client::try_from(kube::Config::new(base.parse()?))?;
    let agents = Arc::new(Agents::default());
    let live_ctx = Arc::new(Context::new(
        live_client,
        agents.clone(),
        Arc::new(Metrics::default()),
        Settings::default(),
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let live_started = Instant::now();
    let controllers = tokio::spawn(webaccel_operator::run::controllers(
        live_ctx,
        None,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let all = args.pools as u64;
    let http = reqwest::Client::new();
    let mut live_done = 0;
    while live_done < all && live_started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let text = http
            .get(format!("{base}/fake/status-patches"))
            .send()
            .await?
            .text()
            .await?;
        live_done = text.trim().parse().unwrap_or(0);
    }
    let live_s = live_started.elapsed().as_secs_f64();
    let rss_live = rss_mib();
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), controllers).await;
    drop(child);
    println!(
        "live controllers over HTTP: {}/{all} pools reconciled {live_s:.2} s after start (paged lists of {} pods' metadata + first reconciles); operator RSS {rss_live:.1} MiB",
        live_done.min(all),
        args.pools * args.browsers
    );

    // 2. Reconcile latency over many settled pools (nothing to change: the steady state),
    // in process against the same fake, so the figure is the operator's own work.
    let (pools, api) = fleet(args.pools, args.browsers);
    let api = Arc::new(api);
    let requests_before = api.requests.load(Ordering::Relaxed);
    let ctx = Arc::new(Context::new(
        client(api.clone()),
        agents.clone(),
        Arc::new(Metrics::default()),
        Settings::default(),
    ));
    let mut latencies = Vec::with_capacity(args.pools * 2);
    let started = Instant::now();
    for round in 0..2 {
        for p in &pools {
            let t = Instant::now();
            reconcile(Arc::new(p.clone()), ctx.clone())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            // The first round fills the capabilities cache; the second is the steady state.
            if round == 1 {
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    let total_s = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!(
        "reconcile ({} pools × {} browsers, steady state): p50 {p50:.3} ms, p99 {p99:.3} ms, max {:.3} ms",
        args.pools,
        args.browsers,
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "API requests: {}, {:.0} reconciles/s",
        api.requests.load(Ordering::Relaxed) - requests_before,
        (2 * args.pools) as f64 / total_s
    );

    // 3. Autoscaler reaction: load steps at spread-out moments of the poll interval; the
    // reconcile loop runs as the controller does (requeue after the poll interval).
    let scaled = pool("auto", 2, true);
    let hash = template_hash(&scaled);
    let api = Arc::new(FakeApi::new(
        HashMap::from([(
            "auto".to_owned(),
            serde_json::to_vec(&pods("auto", 2, &hash)).unwrap_or_default(),
        )]),
        HashMap::from([(
            "auto".to_owned(),
            serde_json::to_vec(&scaled).unwrap_or_default(),
        )]),
    ));
    let mut reactions = Vec::new();
    for trial in 0..args.trials {
        let agents = Arc::new(Agents::default());
        agents.load.store(4, Ordering::Relaxed);
        let settings = Settings {
            load_poll_interval: args.poll_interval,
            ..Settings::default()
        };
        let ctx = Arc::new(Context::new(
            client(api.clone()),
            agents.clone(),
            Arc::new(Metrics::default()),
            settings,
        ));
        let step_at: Arc<Mutex<Option<Instant>>> = Arc::default();
        let stepper = {
            let (agents, step_at) = (agents.clone(), step_at.clone());
            let delay = args
                .poll_interval
                .mul_f64(1.5 + trial as f64 / args.trials as f64);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                agents.load.store(40, Ordering::Relaxed);
                *step_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            })
        };
        let p = Arc::new(scaled.clone());
        loop {
            reconcile(p.clone(), ctx.clone())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let desired = ctx.with_pool("auto/web", |m| m.last_desired).unwrap_or(0);
            if desired > 2 {
                let at = step_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .unwrap_or_else(Instant::now);
                reactions.push(at.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            tokio::time::sleep(args.poll_interval).await;
        }
        stepper.abort();
    }
    reactions.sort_by(f64::total_cmp);
    let (r50, rmax) = (
        percentile(&reactions, 0.5),
        reactions.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "autoscaler reaction (load 4 → 40, poll every {:?}): median {r50:.0} ms, max {rmax:.0} ms over {} steps",
        args.poll_interval,
        reactions.len()
    );

    let figures = json!({
        "pools": args.pools, "browsers_per_pool": args.browsers,
        "reconcile_ms": {"p50": p50, "p99": p99, "max": latencies.last()},
        "reconciles_per_s": (2 * args.pools) as f64 / total_s,
        "operator_rss_mib": {"start": rss_start, "with_live_controllers": rss_live},
        "live_controllers_first_pass_s": live_s,
        "live_status_writes_seen": live_done,
        "autoscaler_reaction_ms": {"median": r50, "max": rmax, "poll_interval_ms": args.poll_interval.as_millis(), "trials": reactions.len()},
        "targets": {"reconcile_p99_ms": 20, "rss_mib_for_10000_pods": 100, "reaction_ms": 1000},
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&figures)?)?;
    println!("wrote {}", args.out);
    Ok(())
}
