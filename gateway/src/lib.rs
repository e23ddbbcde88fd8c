//! webaccel-gateway: one KServe v2 endpoint (HTTP with JSON and binary tensors, and
//! gRPC) for every model of a browser fleet.
//!
//! The parts: [`discovery`] says which agents exist and what they hold (Kubernetes or a
//! static list); [`backend`] keeps a persistent bridge connection to each, with a circuit
//! breaker and a peak-EWMA latency per model, and picks one by power of two choices;
//! [`service`] is the request path (bounded wait queue, retries with backoff and a
//! budget, deadlines); [`pipeline`] serves a model cut into stages as one, stage after
//! stage on browsers holding each; [`generate`] streams text generations through; [`waiting`] publishes how many requests wait for a
//! model no browser holds (scale from zero); [`metrics`], [`record`] and [`admin`] are what
//! operators see. The HTTP and gRPC servers are the ones the agent uses
//! (`webaccel-kserve`), over [`service::Gateway`].

pub mod admin;
pub mod backend;
pub mod breaker;
pub mod config;
pub mod discovery;
pub mod generate;
pub mod hedge;
mod hedging;
mod metadata;
pub mod metrics;
pub mod pipeline;
pub mod prefer;
pub mod queue;
pub mod record;
pub mod service;
pub mod waiting;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tower::retry::budget::TpsBudget;
use webaccel_kserve::auth::Tokens;

pub use config::GatewayArgs;

use crate::backend::{BackendConfig, Backends};
use crate::breaker::BreakerConfig;
use crate::discovery::Fleet;
use crate::hedge::HedgePolicy;
use crate::metrics::Metrics;
use crate::queue::Queues;
use crate::record::Recorder;
use crate::service::{Gateway, Policy, Preferences};
use crate::waiting::WaitingSink;

/// How often the routing preferences are read again from ClickHouse history.
pub const PREFERENCES_REFRESH: Duration = Duration::from_secs(30);

/// Everything the gateway needs but where its agents come from.
#[derive(Debug, Clone)]
pub struct Settings {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub policy: Policy,
    pub backends: BackendConfig,
    pub queue_size: usize,
    pub retry_budget_ratio: f32,
    pub retry_min_per_second: u32,
    pub tokens: Tokens,
}

impl Settings {
    pub fn from_args(args: &GatewayArgs) -> anyhow::Result<Self> {
        let tokens = match &args.token_file {
            Some(path) => Tokens::from_file(path).map_err(anyhow::Error::msg)?,
            None => {
                tracing::warn!("no --token-file: clients need no token");
                Tokens::default()
            }
        };
        anyhow::ensure!(
            (0.0..=1000.0).contains(&args.retry_budget_ratio),
            "--retry-budget-ratio must be between 0 and 1000"
        );
        Ok(Self {
            http: args.http,
            grpc: args.grpc,
            admin: Some(args.admin),
            policy: Policy {
                request_timeout: args.request_timeout,
                generation_timeout: args.generation_timeout,
                max_attempts: args.max_attempts.max(1),
                max_tensor_bytes: args.max_tensor_bytes,
                backoff_base: Duration::from_millis(25),
                backoff_cap: Duration::from_secs(1),
                hedge: match args.hedge_quantile {
                    None => None,
                    Some(q) => {
                        anyhow::ensure!(
                            q > 0.0 && q < 1.0,
                            "--hedge-quantile must be between 0 and 1 (e.g. 0.95)"
                        );
                        Some(HedgePolicy {
                            quantile: q,
                            min_delay: args.hedge_min_delay,
                        })
                    }
                },
            },
            backends: BackendConfig {
                max_outstanding: args.max_outstanding_per_browser.max(1),
                slow_start: args.slow_start,
                breaker: BreakerConfig {
                    consecutive: args.breaker_consecutive_failures.max(1),
                    window: args.breaker_window,
                    cooldown: args.breaker_cooldown,
                    ..BreakerConfig::default()
                },
                stall_after: args.stall_timeout,
            },
            queue_size: args.queue_size,
            retry_budget_ratio: args.retry_budget_ratio,
            retry_min_per_second: args.retry_min_per_second,
            tokens,
        })
    }
}

/// A running gateway: its addresses, and the handle to stop it.
#[derive(Debug)]
pub struct Running {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    recorder: Arc<Recorder>,
}

impl Running {
    /// The first part of stopping, as Kubernetes needs it: the endpoint controller and
    /// kube-proxy take seconds to stop sending after the pod is told to stop, so the
    /// gateway turns not ready (`/readyz` 503, answers close their connections) and keeps
    /// serving for `period` before [`Self::shutdown`] closes the ports. Cut short by
    /// `cut_short` (a second signal).
    pub async fn drain(&self, period: Duration, cut_short: impl Future<Output = ()>) {
        self.gateway.start_draining();
        if period.is_zero() {
            return;
        }
        tracing::info!(period = ?period, "draining: not ready, still serving while endpoints converge");
        tokio::select! {
            () = tokio::time::sleep(period) => {},
            () = cut_short => tracing::info!("drain cut short"),
        }
    }

    /// Stops taking requests, lets those in flight finish, and flushes the rows.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        self.recorder.shutdown().await;
    }
}

/// Starts the gateway over `fleet`: binds its ports, follows the fleet, serves until
/// [`Running::shutdown`].
pub async fn start(
    settings: Settings,
    mut fleet: Fleet,
    waiting: Arc<dyn WaitingSink>,
    recorder: Recorder,
    preferences: Preferences,
) -> anyhow::Result<Running> {
    let backends = Arc::new(Backends::new(settings.backends));
    let queues = Queues::new(settings.queue_size);
    let metrics = Arc::new(Metrics::default());
    let recorder = Arc::new(recorder);
    let budget = TpsBudget::new(
        Duration::from_secs(10),
        settings.retry_min_per_second,
        settings.retry_budget_ratio,
    );
    let gateway = Arc::new(Gateway::new(
        backends.clone(),
        queues.clone(),
        metrics.clone(),
        settings.policy,
        budget,
        recorder.clone(),
        preferences,
    ));
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();

    // Follow the fleet.
    {
        let (gateway, backends, metrics, stop) = (
            gateway.clone(),
            backends.clone(),
            metrics.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let current = fleet.current();
                backends.sync(&current);
                metrics.learn_models(current.values().flat_map(|e| e.models.iter()));
                if let Some(deployed) = fleet.deployed() {
                    gateway.set_deployed(deployed);
                }
                if let Some(pipelines) = fleet.pipelines() {
                    gateway.set_pipelines(pipelines);
                }
                gateway.set_ready();
                tokio::select! {
                    () = stop.cancelled() => return,
                    alive = fleet.changed() => if !alive { return },
                }
            }
        }));
    }
    {
        let (backends, stop) = (backends.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => backends.trip_stalled(),
                }
            }
        }));
    }
    tasks.push(tokio::spawn(waiting::publish(
        queues.clone(),
        backends.clone(),
        waiting,
        stop.clone(),
    )));

    let http = tokio::net::TcpListener::bind(settings.http)
        .await
        .with_context(|| format!("binding {}", settings.http))?;
    let http_addr = http.local_addr()?;
    let grpc = tokio::net::TcpListener::bind(settings.grpc)
        .await
        .with_context(|| format!("binding {}", settings.grpc))?;
    let grpc_addr = grpc.local_addr()?;
    let tokens = Arc::new(settings.tokens.clone());
    let router = admin::kserve_router(gateway.clone(), tokens.clone());
    let http = axum::serve::ListenerExt::tap_io(http, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let served = axum::serve(http, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the HTTP server stopped");
            }
        }));
    }
    {
        let options = webaccel_kserve::grpc::Options {
            tokens: settings.tokens.clone(),
            max_message_bytes: None,
        };
        let (api, stop) = (gateway.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let served =
                webaccel_kserve::grpc::serve_with(api, options, grpc, stop.cancelled_owned()).await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the gRPC server stopped");
            }
        }));
    }
    let admin_addr = match settings.admin {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            let local = listener.local_addr()?;
            let router = admin::router(gateway.clone());
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            }));
            Some(local)
        }
    };
    tracing::info!(http = %http_addr, grpc = %grpc_addr, admin = ?admin_addr, "webaccel-gateway serving");
    Ok(Running {
        http: http_addr,
        grpc: grpc_addr,
        admin: admin_addr,
        gateway,
        stop,
        tasks,
        recorder,
    })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn termination() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// The `webaccel-gateway` binary: discovery from the command line, then serve until
/// SIGTERM, finishing what is in flight.
pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let settings = Settings::from_args(&args)?;
    let discovery_stop = CancellationToken::new();
    let (fleet, waiting): (Fleet, Arc<dyn WaitingSink>) = if args.kubernetes {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API (in-cluster config or kubeconfig)")?;
        let (fleet, sink) =
            discovery::kubernetes::start(client, args.namespace.clone(), discovery_stop.clone());
        (fleet, Arc::new(sink))
    } else {
        let agents = discovery::static_list::from_args(&args).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            !agents.is_empty(),
            "no agents: give --agent URL (repeatable), --agents-file, or --kubernetes"
        );
        let fleet =
            discovery::static_list::fixed(agents, args.refresh_interval, discovery_stop.clone());
        (fleet, Arc::new(waiting::LogOnly))
    };
    let preferences = Preferences::default();
    let recorder = match &args.clickhouse_url {
        None => Recorder::disabled(),
        Some(url) => {
            let settings = webaccel_analytics::ClickHouseSettings::new(
                url,
                &args.clickhouse_database,
                "--clickhouse-url / WEBACCEL_CLICKHOUSE_URL",
            )?;
            if args.use_recommendations {
                prefer::spawn_refresh(
                    settings.clone(),
                    preferences.clone(),
                    PREFERENCES_REFRESH,
                    discovery_stop.clone(),
                );
            }
            let spool = args
                .spool_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("webaccel-gateway-spool"));
            Recorder::start(settings, spool, args.spool_max_bytes())?
        }
    };
    let running = start(settings, fleet, waiting, recorder, preferences).await?;
    termination().await;
    running.drain(args.drain_period, termination()).await;
    tracing::info!("closing the ports: finishing requests in flight");
    running.shutdown().await;
    discovery_stop.cancel();
    tracing::info!("webaccel-gateway stopped");
    Ok(())
}
