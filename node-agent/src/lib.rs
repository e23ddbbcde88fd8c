//! webaccel-agent: runs ONNX models inside one headless browser (Chromium, Chrome, Edge
//! or Firefox) through onnxruntime-web and serves them over a WebSocket bridge and the
//! KServe v2 HTTP API (and, with `--grpc-listen`, the KServe v2 gRPC API).
//!
//! The parts: [`supervisor`] keeps the browser alive and [`page`] talks to the runtime
//! in it; [`models`] and [`cache`] hold what is loaded; [`agent`] is the shared context
//! and the inference path; [`http`] is every endpoint.

pub mod admission;
pub mod agent;
pub mod batcher;
pub mod browser;
pub mod cache;
pub mod config;
pub mod error;
pub mod generation;
pub mod http;
pub mod inspect;
pub mod keeper;
pub mod models;
pub mod page;
pub mod procmem;
pub mod reaper;
pub mod recorder;
pub mod stats;
pub mod supervisor;
pub mod validate;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::agent::Agent;
use crate::browser::{LaunchConfig, check_web_root, resolve_executable};
use crate::cache::ModelCache;
pub use crate::config::AgentArgs;
use crate::models::ModelRegistry;
use crate::recorder::{Origin, Recorder};
use crate::stats::Stats;
use crate::supervisor::{BrowserSupervisor, Host, SupervisorTiming};
use webaccel_analytics::ClickHouseSettings;

fn read_token(args: &AgentArgs) -> anyhow::Result<Option<String>> {
    let Some(path) = &args.token_file else {
        tracing::warn!("no --token-file: every endpoint is open to anyone who can reach it");
        return Ok(None);
    };
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?
        .trim()
        .to_owned();
    anyhow::ensure!(
        !token.is_empty(),
        "the token file {} is empty",
        path.display()
    );
    Ok(Some(token))
}

/// The metrics recorder: a malformed URL stops the agent with the setting's name; an
/// unreachable server does not (rows spool until it answers).
fn start_recorder(args: &AgentArgs) -> anyhow::Result<Recorder> {
    let origin = Origin {
        pool: args.pool.clone(),
        pod: args.pod_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .map_or_else(|_| "unknown".into(), |h| h.trim().to_owned())
        }),
    };
    let Some(url) = &args.clickhouse_url else {
        return Ok(Recorder::disabled(origin));
    };
    let settings = ClickHouseSettings::new(
        url,
        &args.clickhouse_database,
        "--clickhouse-url / WEBACCEL_CLICKHOUSE_URL",
    )?;
    let spool = args.cache_dir().join("metrics-spool");
    Recorder::start(settings, spool.clone(), origin)
        .with_context(|| format!("opening the metrics spool {}", spool.display()))
}

/// Resolves once the process that started this one has gone (this process was handed
/// to another parent).
async fn parent_gone() {
    let parent = nix::unistd::getppid();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if nix::unistd::getppid() != parent {
            tracing::warn!("the parent process is gone: draining and exiting");
            return;
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C (and, with `--exit-with-parent`, when the parent dies).
async fn termination(with_parent: bool) {
    let parent = async {
        if with_parent {
            parent_gone().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
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
        () = parent => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// Runs the agent until SIGTERM (or Ctrl-C), then drains and exits.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let web_root = args.web_root();
    check_web_root(&web_root)?;
    let token = read_token(&args)?;
    let executable = resolve_executable(&args.browser_binary(), args.browser)?;
    let cache = ModelCache::new(args.cache_dir())
        .with_context(|| format!("creating the model cache {}", args.cache_dir().display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let grpc_listener = match args.grpc_listen {
        None => None,
        Some(grpc_addr) => Some(
            tokio::net::TcpListener::bind(grpc_addr)
                .await
                .with_context(|| format!("binding {grpc_addr} (--grpc-listen)"))?,
        ),
    };
    // The page reaches the agent over loopback when the agent listens on all addresses.
    let page_ip = if addr.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        addr.ip()
    };
    let base_url = format!("http://{}", std::net::SocketAddr::new(page_ip, addr.port()));

    let recorder = start_recorder(&args)?;
    let cpus = usable_cpus();
    let (workers, threads) = page_layout(args.page_workers, args.wasm_threads, cpus);
    if workers * threads > cpus {
        tracing::warn!(
            workers,
            threads,
            cpus,
            "page workers × wasm threads exceed the CPUs this agent may use: requests will compete for them"
        );
    }
    tracing::info!(workers, threads, cpus, "page layout");
    // Browsers die with the agent even if it is SIGKILLed (see `keeper`).
    let reaper = match std::env::current_exe() {
        Ok(binary) => reaper::Reaper::start_keeping(binary),
        Err(e) => {
            tracing::error!(error = %e, "cannot find the agent's own binary for the browser keeper: browsers would outlive a killed agent");
            reaper::Reaper::start()
        }
    };
    let launch = LaunchConfig {
        kind: args.browser,
        executable,
        extra_args: args.chromium_args.clone(),
        firefox_prefs: args.firefox_prefs.clone(),
        sandbox: args.chromium_sandbox,
        disk_cache_dir: args.cache_dir().join("chromium-http-cache"),
        profiles: Arc::new(
            browser::profiles::Profiles::open(&args.cache_dir().join("profiles")).with_context(
                || {
                    format!(
                        "making a folder for browser profiles in {}",
                        args.cache_dir().display()
                    )
                },
            )?,
        ),
    };
    let agent = Arc::new(Agent {
        browser: Arc::new(BrowserSupervisor::new(
            launch,
            SupervisorTiming {
                heartbeat_interval: args.heartbeat_interval,
                hang_timeout: args.hang_timeout,
                load_hang_timeout: args.load_hang_timeout,
                hello_timeout: args.page_start_timeout,
                launch: browser::LaunchTimeouts::default(),
                stall_grace: args.supervisor_stall_timeout,
                wasm_threads: threads,
                page_workers: workers,
                wasm_build: args.wasm_build,
                standby: args.standby_browser,
            },
            reaper,
        )),
        models: Arc::new(ModelRegistry::new(
            workers as usize,
            args.page_pipeline as usize,
        )),
        cache,
        admission: Arc::new(Admission::new(args.max_in_flight)),
        stats: Arc::new(Stats::default()),
        recorder: Arc::new(recorder),
        tokens: webaccel_kserve::auth::Tokens::new(token),
        args,
    });
    for spec in &agent.args.models {
        agent.models.insert(spec.clone()).gate_readiness();
    }

    let shutdown = CancellationToken::new();
    let migrations = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.recorder.migrate_until_done().await })
    };
    let host = Host {
        loader: agent.loader(),
        recorder: agent.recorder.clone(),
        stats: agent.stats.clone(),
    };
    let supervisor = tokio::spawn(supervisor::supervise(
        agent.browser.clone(),
        host,
        base_url,
        shutdown.clone(),
    ));
    tracing::info!(%addr, "webaccel-agent listening");
    let grpc = match grpc_listener {
        None => None,
        Some(listener) => {
            tracing::info!(addr = %listener.local_addr()?, "KServe v2 gRPC listening");
            let options = webaccel_kserve::grpc::Options {
                tokens: agent.tokens.clone(),
                max_message_bytes: Some(agent.args.max_body_bytes),
            };
            let stop = shutdown.clone().cancelled_owned();
            let api = agent.clone();
            Some(tokio::spawn(async move {
                if let Err(e) =
                    webaccel_kserve::grpc::serve_with(api, options, listener, stop).await
                {
                    tracing::error!(error = %e, "the gRPC server failed");
                }
            }))
        }
    };

    let drain_agent = agent.clone();
    let drain_token = shutdown.clone();
    let graceful = async move {
        termination(drain_agent.args.exit_with_parent).await;
        tracing::info!("termination requested: draining");
        let left = drain_agent
            .admission
            .drain(drain_agent.args.drain_timeout)
            .await;
        if left > 0 {
            tracing::warn!(left, "drain timeout passed with requests still in flight");
        } else {
            tracing::info!("drained");
        }
        drain_token.cancel();
    };
    // Small frames go out at once: Nagle's algorithm would hold a reply back until the
    // previous one is acknowledged (axum leaves TCP_NODELAY off by default).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, http::router(agent.clone(), shutdown.clone()))
        .with_graceful_shutdown(graceful)
        .await?;
    shutdown.cancel();
    if let Some(grpc) = grpc {
        // Calls in flight were drained above; this only closes the connections.
        let _ = tokio::time::timeout(Duration::from_secs(10), grpc).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), supervisor).await;
    migrations.abort();
    agent.recorder.shutdown().await;
    tracing::info!("webaccel-agent stopped");
    Ok(())
}

/// The CPUs this process may use: its affinity and cgroup CPU quota, as
/// `available_parallelism` reads them.
fn usable_cpus() -> u32 {
    std::thread::available_parallelism()
        .ok()
        .and_then(|n| u32::try_from(n.get()).ok())
        .unwrap_or(1)
}

/// Page workers and wasm threads per worker from the flags (0: automatic) and the CPUs
/// this agent may use. The defaults keep workers × threads within the CPUs, and use all
/// of them: onnxruntime-web's own default of half the browser's `hardwareConcurrency`
/// ignores the cgroup quota and leaves half of an unshared container idle. Two threads
/// per worker from four CPUs up: one request's latency still gains from a second thread,
/// and more workers serve more requests at once. Flags that ask for more threads than
/// CPUs are followed (a benchmark may want that) with a warning.
pub fn page_layout(workers_flag: u32, threads_flag: u32, cpus: u32) -> (u32, u32) {
    let cpus = cpus.max(1);
    let workers = match (workers_flag, threads_flag) {
        (0, 0) if cpus >= 4 => cpus / 2,
        (0, 0) => 1,
        (0, t) => (cpus / t).max(1),
        (w, _) => w,
    };
    let threads = if threads_flag > 0 {
        threads_flag
    } else {
        (cpus / workers).max(1)
    };
    (workers, threads)
}

#[cfg(test)]
mod layout_tests {
    use super::page_layout;

    #[test]
    fn defaults_fit_the_cpus() {
        assert_eq!(page_layout(0, 0, 1), (1, 1));
        assert_eq!(page_layout(0, 0, 2), (1, 2));
        assert_eq!(page_layout(0, 0, 3), (1, 3));
        assert_eq!(page_layout(0, 0, 4), (2, 2));
        assert_eq!(page_layout(0, 0, 16), (8, 2));
    }

    #[test]
    fn one_flag_shares_the_cpus_out() {
        assert_eq!(page_layout(4, 0, 8), (4, 2));
        assert_eq!(
            page_layout(4, 0, 2),
            (4, 1),
            "more workers than CPUs: one thread each"
        );
        assert_eq!(page_layout(0, 4, 8), (2, 4));
        assert_eq!(page_layout(0, 4, 2), (1, 4));
    }

    #[test]
    fn both_flags_are_followed() {
        assert_eq!(page_layout(2, 3, 2), (2, 3));
    }
}
