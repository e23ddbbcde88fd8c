//! `webaccel-operator-bench`: the operator against an API server in memory (in a child
//! process, over loopback HTTP): time to the first reconcile of every pool and the
//! operator's RSS; the steady-state API cost per pool (requests and writes per second, by
//! verb, counted by the fake API server); reconcile latency over settled pools; and the
//! autoscaler's reaction time from a load step to the wake-up of the pool's reconcile.
//! Prints the figures and writes them as JSON (`--out`).
#![allow(clippy::print_stdout)]

mod fleet;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use fleet::{Agents, bench_api, bench_options};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use webaccel_bench::pct;
use webaccel_crds::v1alpha1::{BrowserPool, ModelDeployment};
use webaccel_operator::context::{Context, Settings};
use webaccel_operator::metrics::Metrics;
use webaccel_operator::poll::poll_pool;
use webaccel_operator::pool::reconcile::reconcile;
use webaccel_operator::stores::{Stores, Writers};
use webaccel_testkit::kube::ApiServer;
use webaccel_testkit::kube::{FleetShape, fleet, pool_objects};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    pools: usize,
    /// Browsers per pool for the first-pass and latency phases (the steady-state phase has
    /// one browser and one model per autoscaled pool).
    #[arg(long, default_value_t = 10)]
    browsers: usize,
    /// Load-step trials for the autoscaler reaction time.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Steady state: how long to let the controllers settle, then how long to count.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Only the steady-state API cost.
    #[arg(long)]
    steady_only: bool,
    #[arg(long, default_value = "operator-bench.json")]
    out: String,
    /// Internal: run as the fake API server.
    #[arg(long, hide = true)]
    serve_fake_api: bool,
    /// Internal, with --serve-fake-api: autoscaled pools.
    #[arg(long, hide = true)]
    autoscale: bool,
    /// Internal, with --serve-fake-api: one ModelDeployment per pool.
    #[arg(long, hide = true)]
    models: bool,
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
/// The fake API server in a child process; its base URL.
async fn spawn_fake(shape: FleetShape) -> anyhow::Result<(tokio::process::Child, String)> {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args([
        "--serve-fake-api",
        "--pools",
        &shape.pools.to_string(),
        "--browsers",
        &shape.browsers.to_string(),
    ]);
    if shape.autoscale {
        cmd.arg("--autoscale");
    }
    if shape.models {
        cmd.arg("--models");
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("fake API: no stdout"))?;
    let port: u16 = tokio::io::BufReader::new(stdout)
        .lines()
        .next_line()
        .await?
        .ok_or_else(|| anyhow::anyhow!("fake API: no port"))?
        .parse()?;
    Ok((child, format!("http://127.0.0.1:{port}")))
}

/// The live controllers against the fake at `base`, until `stop` fires.
fn start_controllers(
    base: &str,
    agents: Arc<Agents>,
    settings: Settings,
) -> anyhow::Result<(
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
)> {
    let client = kube::Client::try_from(kube::Config::new(base.parse()?))?;
    let (stores, writers) = Stores::shared(1024);
    let ctx = Arc::new(Context::new(
        client,
        stores,
        agents,
        Arc::new(Metrics::default()),
        settings,
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        webaccel_operator::run::controllers(ctx, writers, None, async move {
            let _ = stop_rx.await;
        })
        .await;
    });
    Ok((handle, stop_tx))
}

async fn fake_counter(http: &reqwest::Client, base: &str, what: &str) -> anyhow::Result<String> {
    Ok(http
        .get(format!("{base}/fake/{what}"))
        .send()
        .await?
        .text()
        .await?)
}

async fn wait_for_status_writes(
    http: &reqwest::Client,
    base: &str,
    n: u64,
    limit: Duration,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    loop {
        let seen: u64 = fake_counter(http, base, "status-patches")
            .await?
            .trim()
            .parse()
            .unwrap_or(0);
        if seen >= n || started.elapsed() > limit {
            return Ok(seen);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests per second per pool, by `verb resource`, between two `/fake/requests`
/// answers `secs` apart, Lease requests aside; and the totals (all, writes).
fn per_pool(c0: &Value, c1: &Value, secs: f64, pools: usize) -> (Vec<(String, f64)>, f64, f64) {
    let mut rows = Vec::new();
    let (mut total, mut writes) = (0u64, 0u64);
    for (k, v) in c1["by"].as_object().into_iter().flatten() {
        if k.ends_with(" leases") {
            continue;
        }
        let d = v.as_u64().unwrap_or(0) - c0["by"][k].as_u64().unwrap_or(0);
        if d == 0 {
            continue;
        }
        rows.push((k.clone(), d as f64 / secs / pools as f64));
        total += d;
        if matches!(
            k.split(' ').next(),
            Some("create" | "patch" | "update" | "delete")
        ) {
            writes += d;
        }
    }
    let norm = |n: u64| n as f64 / secs / pools as f64;
    (rows, norm(total), norm(writes))
}

/// Phase: the steady-state API cost of `pools` autoscaled pools of one browser holding one
/// model, idle.
async fn steady_state(args: &Args) -> anyhow::Result<Value> {
    let shape = FleetShape {
        pools: args.pools,
        browsers: 1,
        autoscale: true,
        models: true,
    };
    let (child, base) = spawn_fake(shape).await?;
    let agents = Arc::new(Agents::default());
    let (controllers, stop) = start_controllers(&base, agents.clone(), Settings::default())?;
    let http = reqwest::Client::new();
    // Every pool's and every model's status written once.
    let seen = wait_for_status_writes(
        &http,
        &base,
        2 * args.pools as u64,
        Duration::from_secs(180),
    )
    .await?;
    tokio::time::sleep(args.warmup).await;
    let c0: Value = serde_json::from_str(&fake_counter(&http, &base, "requests").await?)?;
    let calls0 = agents.calls.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(args.window).await;
    let c1: Value = serde_json::from_str(&fake_counter(&http, &base, "requests").await?)?;
    let secs = t0.elapsed().as_secs_f64();
    let agent_calls =
        (agents.calls.load(Ordering::Relaxed) - calls0) as f64 / secs / args.pools as f64;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), controllers).await;
    drop(child);
    let (rows, total, writes) = per_pool(&c0, &c1, secs, args.pools);
    println!(
        "steady state, {} autoscaled pools × 1 browser × 1 loaded model, idle ({seen} status writes to settle, then {:.0} s counted): {total:.4} API requests/s and {writes:.4} writes/s per pool (Lease aside); agents asked {agent_calls:.2}/s per pool",
        args.pools, secs
    );
    for (k, v) in &rows {
        println!("  {k}: {v:.4}/s per pool");
    }
    Ok(json!({
        "pools": args.pools, "window_s": secs,
        "requests_per_s_per_pool": total, "writes_per_s_per_pool": writes,
        "by_verb_per_pool": rows.into_iter().map(|(k, v)| (k, json!(v))).collect::<serde_json::Map<String, Value>>(),
        "agent_calls_per_s_per_pool": agent_calls,
        "targets": {"requests_per_s_per_pool": 0.1, "writes_per_s_per_pool": 0.02},
    }))
}

fn put<K>(w: &mut kube::runtime::reflector::store::Writer<K>, v: &Value)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + 'static,
{
    if let Ok(obj) = serde_json::from_value::<K>(v.clone()) {
        w.apply_watcher_event(&Event::Apply(obj));
    }
}

/// What the watches would bring of pool `web` in `ns` after a reconcile wrote to `api`:
/// the pool (with its status), its Service and PDB.
fn refill(api: &ApiServer, w: &mut Writers, ns: &str) {
    if let Some(p) = api.object("apis/webaccel.dev/v1alpha1/browserpools", ns, "web") {
        put::<BrowserPool>(&mut w.pools, &p);
    }
    if let Some(s) = api.object("api/v1/services", ns, "web") {
        put::<k8s_openapi::api::core::v1::Service>(&mut w.services, &s);
    }
    if let Some(s) = api.object("apis/policy/v1/poddisruptionbudgets", ns, "web") {
        put::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(&mut w.pdbs, &s);
    }
}

/// Caches filled with `objects`, as the watches would fill them.
fn filled(objects: &[Value]) -> (Stores, Writers) {
    let (stores, mut w) = Stores::local();
    for o in objects {
        match o["kind"].as_str() {
            Some("BrowserPool") => put::<BrowserPool>(&mut w.pools, o),
            Some("ModelDeployment") => put::<ModelDeployment>(&mut w.models, o),
            Some("Pod") => put::<Pod>(&mut w.pods, o),
            Some("Secret") => put::<Secret>(&mut w.secrets, o),
            _ => {}
        }
    }
    (stores, w)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.serve_fake_api {
        let shape = FleetShape {
            pools: args.pools,
            browsers: args.browsers,
            autoscale: args.autoscale,
            models: args.models,
        };
        return Ok(fleet(shape, bench_options()).1.serve_http().await?);
    }
    if args.steady_only {
        let steady = steady_state(&args).await?;
        std::fs::write(&args.out, serde_json::to_string_pretty(&steady)?)?;
        return Ok(());
    }
    let rss_start = rss_mib();

    // 1. The real controllers (watches, caches, scheduler, poller) against the fake API
    // server in a child process: time until every pool's status was written once, and
    // this process's RSS with everything live.
    let shape = FleetShape {
        pools: args.pools,
        browsers: args.browsers,
        autoscale: false,
        models: false,
    };
    let (child, base) = spawn_fake(shape).await?;
    let agents = Arc::new(Agents::default());
    let live_started = Instant::now();
    let (controllers, stop) = start_controllers(&base, agents.clone(), Settings::default())?;
    let http = reqwest::Client::new();
    let all = args.pools as u64;
    let live_done = wait_for_status_writes(&http, &base, all, Duration::from_secs(120)).await?;
    let live_s = live_started.elapsed().as_secs_f64();
    let rss_live = rss_mib();
    let first_pass: Value = serde_json::from_str(&fake_counter(&http, &base, "requests").await?)?;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), controllers).await;
    drop(child);
    println!(
        "live controllers over HTTP: {}/{all} pools reconciled {live_s:.2} s after start ({} pods cached; {} API requests in all); operator RSS {rss_live:.1} MiB",
        live_done.min(all),
        args.pools * args.browsers,
        first_pass["total"]
    );

    // 2. The steady-state API cost.
    let steady = steady_state(&args).await?;

    // 3. Reconcile latency over many settled pools (the steady state), in process against
    // caches filled as the watches fill them, so the figure is the operator's own work.
    let objects: Vec<Value> = (0..args.pools)
        .flat_map(|i| pool_objects(&format!("ns{i}"), shape))
        .collect();
    let (stores, mut writers) = filled(&objects);
    let api = bench_api(objects);
    let ctx = Arc::new(Context::new(
        api.client(),
        stores,
        agents.clone(),
        Arc::new(Metrics::default()),
        Settings::default(),
    ));
    let mut latencies = Vec::with_capacity(args.pools);
    let mut requests_steady = 0;
    let started = Instant::now();
    for round in 0..2 {
        let before = api.requests();
        if round == 1 {
            for i in 0..args.pools {
                refill(&api, &mut writers, &format!("ns{i}"));
            }
        }
        for p in ctx.stores.pools.state() {
            let t = Instant::now();
            reconcile(p, ctx.clone())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            // The first round writes the Services, PDBs and statuses; the second is the
            // steady state.
            if round == 1 {
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        requests_steady = api.requests() - before;
    }
    let total_s = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (pct(&latencies, 0.5), pct(&latencies, 0.99));
    println!(
        "reconcile ({} pools × {} browsers, steady state): p50 {p50:.3} ms, p99 {p99:.3} ms, max {:.3} ms; {requests_steady} API requests for {} settled reconciles",
        args.pools,
        args.browsers,
        latencies.last().copied().unwrap_or(f64::NAN),
        args.pools
    );

    // 4. Autoscaler reaction: load steps at spread-out moments of the poll interval; the
    // poller asks the agents every interval and wakes the reconcile when the size changes.
    let scaled_shape = FleetShape {
        pools: 1,
        browsers: 2,
        autoscale: true,
        models: false,
    };
    let mut reactions = Vec::new();
    for trial in 0..args.trials {
        let objects = pool_objects("auto", scaled_shape);
        let (stores, mut w) = filled(&objects);
        let api = bench_api(objects);
        let agents = Arc::new(Agents::default());
        agents.load.store(4, Ordering::Relaxed);
        let settings = Settings {
            load_poll_interval: args.poll_interval,
            ..Settings::default()
        };
        let ctx = Arc::new(Context::new(
            api.client(),
            stores,
            agents.clone(),
            Arc::new(Metrics::default()),
            settings,
        ));
        // Settled first: one reconcile, and the watches bring what it wrote.
        let first = ctx
            .stores
            .pool("auto", "web")
            .ok_or_else(|| anyhow::anyhow!("no pool"))?;
        reconcile(first, ctx.clone())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        refill(&api, &mut w, "auto");
        let scaled = ctx
            .stores
            .pool("auto", "web")
            .ok_or_else(|| anyhow::anyhow!("no pool"))?;
        let step_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
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
        let mut tick = tokio::time::interval(args.poll_interval);
        loop {
            tick.tick().await;
            if poll_pool(&ctx, &scaled).await.pool {
                let at = *step_at.lock().unwrap_or_else(|p| p.into_inner());
                match at {
                    Some(at) => {
                        reactions.push(at.elapsed().as_secs_f64() * 1000.0);
                        break;
                    }
                    None => anyhow::bail!("the poller woke a settled pool before the load changed"),
                }
            }
        }
        stepper.abort();
    }
    reactions.sort_by(f64::total_cmp);
    let (r50, rmax) = (
        pct(&reactions, 0.5),
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
        "settled_reconcile_api_requests": requests_steady,
        "operator_rss_mib": {"start": rss_start, "with_live_controllers": rss_live},
        "live_controllers_first_pass_s": live_s,
        "live_status_writes_seen": live_done,
        "steady_state": steady,
        "autoscaler_reaction_ms": {"median": r50, "max": rmax, "poll_interval_ms": args.poll_interval.as_millis(), "trials": reactions.len()},
        "targets": {"reconcile_p99_ms": 20, "rss_mib_for_10000_pods": 100, "reaction_ms": 1000},
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&figures)?)?;
    println!("wrote {}", args.out);
    Ok(())
}
