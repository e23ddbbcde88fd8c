//! `webaccel-operator`: parses the command line, holds the Lease, serves metrics and runs
//! the controllers. In a cluster it uses the pod's service account; outside one, the current
//! kubeconfig context.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use clap::Parser;
use tracing::info;
use webaccel_agent_client::HttpAgents;
use webaccel_analytics::history::PoolHistory;
use webaccel_analytics::{ClickHouseSettings, WriterConfig};
use webaccel_operator::context::{AgentAccess, Context, Settings};
use webaccel_operator::leader::{Elector, LeaseSettings};
use webaccel_operator::metrics::Metrics;
use webaccel_operator::proxy::ApiServerProxy;
use webaccel_operator::stores::Stores;

#[derive(Debug, Parser)]
#[command(
    name = "webaccel-operator",
    version,
    about = "Runs BrowserPool and ModelDeployment resources as browser pods",
    after_help = "Outside a cluster (a laptop against kind or minikube) pod IPs cannot be reached: \
                  run with --agent-access=apiserver-proxy to reach the agents through the API \
                  server's pod proxy (your kubeconfig user then needs get/create/delete on \
                  pods/proxy)."
)]
struct Args {
    #[command(flatten)]
    log: webaccel_logs::LogArgs,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Prometheus metrics and health probes.
    #[arg(
        long,
        env = "WEBACCEL_OPERATOR_METRICS",
        default_value = "0.0.0.0:8080"
    )]
    metrics_addr: SocketAddr,
    /// Hold a Lease so that only one replica reconciles (turn off only for a single replica).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    leader_election: bool,
    /// Namespace of the Lease (default: the pod's, else the kubeconfig context's).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    #[arg(long, default_value = "webaccel-operator")]
    lease_name: String,
    /// This replica's name in the Lease (default: the pod or host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the Lease holds without renewal: a replica that saw no renewal for this
    /// long (by its own clock) takes over. A stopping holder releases it at once.
    #[arg(long, default_value = "12s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// How often the holder renews the Lease; it stops leading when it could not renew for
    /// the Lease's duration less this.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    lease_renew_period: Duration,
    /// How often the agents of autoscaled pools (and of pools that are changing) are asked
    /// for their load.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    load_poll_interval: Duration,
    /// How often the agents of settled pools of fixed size are asked how they are.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    idle_poll_interval: Duration,
    /// How the agents are reached: `direct` (their pod IPs; in a cluster) or
    /// `apiserver-proxy` (through the API server's pod proxy,
    /// /api/v1/namespaces/{ns}/pods/{pod}:8700/proxy/...; for an operator run outside the
    /// cluster, e.g. against kind or minikube, where pod IPs cannot be reached. The agents'
    /// token then travels in the x-webaccel-token header, which the proxy passes on).
    #[arg(
        long,
        env = "WEBACCEL_AGENT_ACCESS",
        value_enum,
        default_value = "direct"
    )]
    agent_access: AgentAccess,
    /// How long a draining browser may finish its requests before it is deleted anyway.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Timeout of one call to an agent (stats, capabilities, drain).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    agent_timeout: Duration,
    /// Accepted for compatibility and ignored: loads run in the background on the agent
    /// (whose own --load-timeout bounds them) and are looked at again every few seconds.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration, hide = true)]
    load_timeout: Duration,
    /// ClickHouse HTTP interface for the pools' history (`pool_events`: scale, heal, drain,
    /// roll, recycle), with `user:password@` if needed. Without it no rows are written.
    #[arg(long, env = "WEBACCEL_CLICKHOUSE_URL")]
    clickhouse_url: Option<String>,
    #[arg(long, env = "WEBACCEL_CLICKHOUSE_DATABASE", default_value = "webaccel")]
    clickhouse_database: String,
    /// Where rows wait while ClickHouse cannot be reached.
    #[arg(
        long,
        env = "WEBACCEL_SPOOL_DIR",
        default_value = "/tmp/webaccel-operator-spool"
    )]
    spool_dir: std::path::PathBuf,
    /// Reconciles running at once, per controller.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init("info");
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration (in-cluster or kubeconfig)")?;
    let default_ns = config.default_namespace.clone();
    let client = kube::Client::try_from(config).context("building the Kubernetes client")?;

    let metrics = Arc::new(Metrics::default());
    let served = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = served.clone();
                async move { m.encode() }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {}", args.metrics_addr))?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let settings = Settings {
        drain_timeout: args.drain_timeout,
        load_poll_interval: args.load_poll_interval,
        idle_poll_interval: args.idle_poll_interval,
        concurrency: args.concurrency,
        agent_access: args.agent_access,
        agent_log_format: args.log.log_format,
        ..Settings::default()
    };
    let agents = Arc::new(match args.agent_access {
        AgentAccess::Direct => HttpAgents::new(args.agent_timeout),
        AgentAccess::ApiserverProxy => ApiServerProxy::agents(client.clone(), args.agent_timeout),
    });
    let (stores, writers) = Stores::shared(1024);
    let history = match &args.clickhouse_url {
        Some(url) => {
            let ch = ClickHouseSettings::new(url, &args.clickhouse_database, "--clickhouse-url")?;
            // The chart gives /tmp a 64 MiB emptyDir; the spool stays well inside it
            // (about 100,000 events), so an outage never gets the pod evicted.
            let config = WriterConfig {
                spool_max_bytes: 32 << 20,
                ..WriterConfig::new(args.spool_dir.clone())
            };
            PoolHistory::start(ch, config)
                .with_context(|| format!("opening the spool in {}", args.spool_dir.display()))?
        }
        None => PoolHistory::disabled(),
    };
    let ctx = Arc::new(
        Context::new(client.clone(), stores, agents, metrics, settings).with_history(history),
    );
    let migrating = ctx.clone();
    tokio::spawn(async move { migrating.history.migrate_until_done().await });

    // SIGTERM is how Kubernetes stops the pod: finish the running reconciles, give the
    // Lease up so the next replica leads at once, and exit.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut stopping = Box::pin(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    });

    let elector = if args.leader_election {
        let identity = args.identity.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME")
                .unwrap_or_else(|_| format!("webaccel-operator-{}", std::process::id()))
        });
        let elector = Arc::new(Elector::new(
            client,
            LeaseSettings {
                namespace: args.lease_namespace.clone().unwrap_or(default_ns),
                name: args.lease_name.clone(),
                identity: identity.clone(),
                duration: args.lease_duration,
                renew_every: args.lease_renew_period,
            },
        ));
        info!(%identity, lease = %args.lease_name, "waiting for the lease");
        tokio::select! {
            () = elector.acquire() => {}
            () = &mut stopping => {
                info!("stopped while waiting for the lease");
                ctx.history.shutdown().await;
                return Ok(());
            }
        }
        info!(%identity, "leading");
        Some(elector)
    } else {
        None
    };
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lost_flag = lost.clone();
    let keeper = elector.clone();
    let stop = async move {
        let keep = async move {
            match keeper {
                Some(e) => e.keep().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = keep => lost_flag.store(true, std::sync::atomic::Ordering::SeqCst),
            () = stopping => {}
        }
    };
    webaccel_operator::run::controllers(ctx.clone(), writers, args.namespace.as_deref(), stop)
        .await;
    if lost.load(std::sync::atomic::Ordering::SeqCst) {
        ctx.history.shutdown().await;
        // Exiting lets the Deployment restart this replica as a follower.
        anyhow::bail!("lost the lease; exiting so another replica leads");
    }
    if let Some(e) = &elector {
        e.release().await;
    }
    ctx.history.shutdown().await;
    Ok(())
}
