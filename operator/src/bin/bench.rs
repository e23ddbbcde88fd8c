//! `webaccel-operator-bench`: reconcile latency and memory for many pools against an in-memory
//! API server, and the autoscaler's reaction time from a load step to the scale decision.
//! Prints the figures and writes them as JSON (`--out`).
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::future::BoxFuture;
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use webaccel_api::v1alpha1::BrowserPool;
use webaccel_operator::agent::{
    AgentApi, AgentResult, AgentStats, Capabilities, Endpoint, LoadRequest, ModelOnAgent,
};
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
}

/// An API server in memory: each pool's pods, the token Secret, and echoes for writes.
struct FakeApi {
    pods: HashMap<String, Vec<u8>>,
    pools: HashMap<String, Vec<u8>>,
    requests: AtomicU64,
}

impl FakeApi {
    fn answer(&self, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let ns = parts
            .iter()
            .position(|p| *p == "namespaces")
            .and_then(|i| parts.get(i + 1))
            .copied()
            .unwrap_or("");
        if method == "GET" && path.ends_with("/pods") {
            return self.pods.get(ns).cloned().unwrap_or_default();
        }
        if method == "GET" && path.contains("/secrets/") {
            return serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "t", "namespace": ns}, "data": {"token": "c2VjcmV0"}}))
            .unwrap_or_default();
        }
        if path.ends_with("/status") {
            return self.pools.get(ns).cloned().unwrap_or_default();
        }
        body.to_vec()
    }
}

fn pool(ns: &str, replicas: usize, autoscale: bool) -> BrowserPool {
    let mut spec = json!({"image": "reg/browser:1", "replicas": replicas});
    if autoscale {
        spec["autoscaling"] = json!({"enabled": true, "minReplicas": 1, "maxReplicas": 50,
            "targetInFlightPerBrowser": 4, "scaleDownStabilizationSeconds": 300});
    }
    serde_json::from_value(json!({"apiVersion": "webaccel.dev/v1alpha1", "kind": "BrowserPool",
        "metadata": {"name": "web", "namespace": ns, "uid": format!("uid-{ns}"), "generation": 1}, "spec": spec}))
    .unwrap_or_else(|e| panic!("bench pool: {e}"))
}

fn pods(ns: &str, n: usize, hash: &str) -> Value {
    let items: Vec<Value> = (0..n)
        .map(|i| json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("web-{i:05}"), "namespace": ns, "uid": format!("{ns}-{i}"),
                "creationTimestamp": "2026-11-26T09:00:00Z",
                "labels": {"app.kubernetes.io/managed-by": "webaccel-operator", "webaccel.dev/pool": "web",
                           "webaccel.dev/template-hash": hash}},
            "spec": {"containers": [{"name": "agent", "image": "reg/browser:1"}]},
            "status": {"phase": "Running", "podIP": format!("10.0.{}.{}", i / 250, i % 250),
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-26T09:00:00Z"}],
                "containerStatuses": [{"name": "agent", "image": "i", "imageID": "", "ready": true, "restartCount": 0}]}}))
        .collect();
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items})
}

/// Agents answering from memory: every browser reports the same load, which the trial sets.
#[derive(Default)]
struct Agents {
    load: AtomicU64,
}

impl AgentApi for Agents {
    fn stats<'a>(&'a self, _ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<AgentStats>> {
        let load = self.load.load(Ordering::Relaxed);
        Box::pin(async move {
            Ok(AgentStats {
                healthy: true,
                ready: true,
                outstanding: load,
                ..AgentStats::default()
            })
        })
    }
    fn capabilities<'a>(&'a self, _ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<Capabilities>> {
        Box::pin(async {
            Ok(Capabilities {
                backends: vec![webaccel_api::Backend::Wasm],
                adapter: None,
            })
        })
    }
    fn model<'a>(
        &'a self,
        _: &'a Endpoint,
        _: &'a str,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>> {
        Box::pin(async { Ok(ModelOnAgent::Absent) })
    }
    fn load<'a>(
        &'a self,
        _: &'a Endpoint,
        _: &'a LoadRequest,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>> {
        Box::pin(async { Ok(ModelOnAgent::Loading) })
    }
    fn unload<'a>(&'a self, _: &'a Endpoint, _: &'a str) -> BoxFuture<'a, AgentResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn drain<'a>(&'a self, _: &'a Endpoint) -> BoxFuture<'a, AgentResult<()>> {
        Box::pin(async { Ok(()) })
    }
}

fn client(api: Arc<FakeApi>) -> Client {
    let service = tower::service_fn(move |req: Request<Body>| {
        let api = api.clone();
        async move {
            let method = req.method().as_str().to_owned();
            let path = req.uri().path().to_owned();
            let body = req
                .into_body()
                .collect_bytes()
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default();
            let answer = api.answer(&method, &path, &body);
            Ok::<_, Infallible>(Response::new(Body::from(answer)))
        }
    });
    Client::new(service, "default")
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
    let rss_start = rss_mib();

    // 1. Reconcile latency over many settled pools (nothing to change: the steady state).
    let pools: Vec<BrowserPool> = (0..args.pools)
        .map(|i| pool(&format!("ns{i}"), args.browsers, false))
        .collect();
    let hash = template_hash(&pools[0]);
    let api = Arc::new(FakeApi {
        pods: pools
            .iter()
            .map(|p| {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                (
                    ns.clone(),
                    serde_json::to_vec(&pods(&ns, args.browsers, &hash)).unwrap_or_default(),
                )
            })
            .collect(),
        pools: pools
            .iter()
            .map(|p| {
                (
                    p.metadata.namespace.clone().unwrap_or_default(),
                    serde_json::to_vec(p).unwrap_or_default(),
                )
            })
            .collect(),
        requests: AtomicU64::new(0),
    });
    let agents = Arc::new(Agents::default());
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
    let rss_pools = rss_mib();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!(
        "reconcile ({} pools × {} browsers, steady state): p50 {p50:.3} ms, p99 {p99:.3} ms, max {:.3} ms",
        args.pools,
        args.browsers,
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "API requests: {}, {:.0} reconciles/s",
        api.requests.load(Ordering::Relaxed),
        (2 * args.pools) as f64 / total_s
    );
    println!(
        "RSS: {rss_start:.1} MiB at start, {rss_pools:.1} MiB holding {} pods' objects and the operator's state",
        args.pools * args.browsers
    );

    // 2. Autoscaler reaction: load steps at spread-out moments of the poll interval; the
    // reconcile loop runs as the controller does (requeue after the poll interval).
    let scaled = pool("auto", 2, true);
    let hash = template_hash(&scaled);
    let api = Arc::new(FakeApi {
        pods: HashMap::from([(
            "auto".to_owned(),
            serde_json::to_vec(&pods("auto", 2, &hash)).unwrap_or_default(),
        )]),
        pools: HashMap::from([(
            "auto".to_owned(),
            serde_json::to_vec(&scaled).unwrap_or_default(),
        )]),
        requests: AtomicU64::new(0),
    });
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
        "rss_mib": {"start": rss_start, "with_pools": rss_pools},
        "autoscaler_reaction_ms": {"median": r50, "max": rmax, "poll_interval_ms": args.poll_interval.as_millis(), "trials": reactions.len()},
        "targets": {"reconcile_p99_ms": 20, "rss_mib_for_10000_pods": 100, "reaction_ms": 1000},
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&figures)?)?;
    println!("wrote {}", args.out);
    Ok(())
}
