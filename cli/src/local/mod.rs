//! Local mode: `webaccel up` runs BrowserPool and ModelDeployment manifests on this
//! machine without a cluster. Each browser is a `webaccel-agent` process (the command
//! line pods run), the pool engine decides as it does for the operator ([`cluster`]),
//! the gateway serves every model on 127.0.0.1:8000 (HTTP) and :8001 (gRPC), and metrics
//! go to ClickHouse (a local `clickhouse-server` started when none is given). `webaccel
//! apply`, `delete` and `status` talk to a running `up` through its own API ([`admin`]).

mod admin;
mod clickhouse;
mod cluster;
mod gateway;
mod orphans;
mod process;
mod status;

use std::collections::BTreeSet;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;
use webaccel_analytics::history::PoolHistory;
use webaccel_crds_validate as validate;

use cluster::{Desired, Engine, Shared, WaitingToEngine};
use process::Launcher;
use webaccel_engine::pool::round::Pacing;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Manifests: files, folders (every .yaml/.yml/.json in them) or `-` for stdin;
    /// multi-document YAML. Repeatable. Without it, the embedded example: one Chromium
    /// pool (one to two browsers) serving a small MLP (`examples/local/`).
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// The gateway's KServe v2 HTTP address.
    #[arg(long, default_value = "127.0.0.1:8000")]
    http: SocketAddr,
    /// The gateway's KServe v2 gRPC address.
    #[arg(long, default_value = "127.0.0.1:8001")]
    grpc: SocketAddr,
    /// Where `webaccel apply`, `delete` and `status` reach this `up`.
    #[arg(long, default_value = "127.0.0.1:9091")]
    admin: SocketAddr,
    /// Where local mode keeps browser logs, each agent's cache and ClickHouse data.
    #[arg(long, env = "WEBACCEL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The agent binary (default: beside `webaccel`, else on PATH).
    #[arg(long)]
    agent_binary: Option<PathBuf>,
    /// How long a browser being removed may finish its requests.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Do not start a local ClickHouse even if one is installed (rows then spool).
    #[arg(long)]
    no_clickhouse: bool,
}

#[derive(Debug, clap::Args)]
pub struct FilesArgs {
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// The running `up` (default: the one recorded in the data folder).
    #[arg(long)]
    up: Option<String>,
    #[arg(long, env = "WEBACCEL_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Default, clap::Args)]
pub struct StatusArgs {
    #[arg(long)]
    up: Option<String>,
    #[arg(long, env = "WEBACCEL_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

fn data_dir(given: Option<&Path>) -> PathBuf {
    given.map_or_else(
        || {
            std::env::var_os("HOME")
                .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
                .join(".local/share/webaccel")
        },
        Path::to_owned,
    )
}

/// The example of `examples/local/`, built in: what `webaccel up` runs when given no
/// manifests.
const EMBEDDED: [(&str, &[u8]); 3] = [
    (
        "pool.yaml",
        include_bytes!("../../../examples/local/pool.yaml"),
    ),
    (
        "mlp.yaml",
        include_bytes!("../../../examples/local/mlp.yaml"),
    ),
    (
        "mlp.onnx",
        include_bytes!("../../../examples/local/mlp.onnx"),
    ),
];

/// Writes the embedded example into the data folder (its model file is read from there
/// as a relative `file://` URI) and returns that folder.
fn embedded_example(data: &Path) -> anyhow::Result<PathBuf> {
    let dir = data.join("example");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, bytes) in EMBEDDED {
        std::fs::write(dir.join(name), bytes)
            .with_context(|| format!("writing {}", dir.join(name).display()))?;
    }
    Ok(dir)
}

/// The manifests' texts with the folder each came from.
fn read_manifests(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, PathBuf, String)>> {
    let mut out = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            out.push(("stdin".to_owned(), std::env::current_dir()?, text));
            continue;
        }
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                })
                .collect();
            files.sort();
            files
        } else {
            vec![path.clone()]
        };
        for f in files {
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            let base = f
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_owned);
            let base = std::fs::canonicalize(&base).unwrap_or(base);
            out.push((f.display().to_string(), base, text));
        }
    }
    Ok(out)
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Running {
    admin: String,
    http: String,
    grpc: String,
    pid: u32,
}

/// `webaccel up`.
#[allow(clippy::print_stdout, clippy::too_many_lines)]
pub async fn up(
    args: UpArgs,
    clickhouse_url: Option<String>,
    database: String,
    log_format: webaccel_logs::LogFormat,
) -> anyhow::Result<()> {
    let mut desired = Desired::default();
    let mut refused = Vec::new();
    let data = data_dir(args.data_dir.as_deref());
    let files = if args.files.is_empty() {
        let dir = embedded_example(&data)?;
        println!(
            "no manifests given (-f): running the built-in example from {}",
            dir.display()
        );
        vec![dir]
    } else {
        args.files.clone()
    };
    for (source, base, text) in read_manifests(&files)? {
        match validate::parse(&text, &source) {
            Ok(resources) => {
                let shared = Shared::new(std::mem::take(&mut desired));
                admin::apply_all(&shared, resources, &base);
                desired = shared.desired();
            }
            Err(invalid) => refused.extend(invalid.into_iter().map(|i| i.message)),
        }
    }
    if !refused.is_empty() {
        bail!("the manifests were refused:\n{}", refused.join("\n"));
    }
    if desired.pools.is_empty() {
        bail!("the manifests hold no BrowserPool: nothing to run");
    }
    let run_dir = data.join("run").join(std::process::id().to_string());
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;

    // Metrics: the given server, else a local one if installed, else spooled rows.
    let mut local_clickhouse = None;
    let (clickhouse, clickhouse_note) = match clickhouse_url {
        Some(url) => (Some(url.clone()), url),
        None if args.no_clickhouse => (None, "off (--no-clickhouse)".to_owned()),
        None => match webaccel_analytics::local::LocalClickHouse::start_in(data.join("clickhouse"))
            .await
        {
            Ok(ch) => {
                let url = ch.url();
                tracing::info!(%url, data = %data.join("clickhouse").display(), "started a local ClickHouse server");
                local_clickhouse = Some(ch);
                (
                    Some(url.clone()),
                    format!(
                        "{url} (local, data in {})",
                        data.join("clickhouse").display()
                    ),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "no ClickHouse: metric rows spool to disk under the data folder until one is given with --clickhouse-url");
                (None, format!("none ({e}); rows spool to disk"))
            }
        },
    };
    let launcher = Launcher {
        agent_binary: process::find_agent_binary(args.agent_binary.as_deref())?,
        run_dir: run_dir.clone(),
        clickhouse_url: clickhouse.clone(),
        clickhouse_database: database.clone(),
        log_format,
        orphans: data.join("spool").join("agents"),
    };
    let shared = Shared::new(desired);
    let stop = CancellationToken::new();
    let kill_now = CancellationToken::new();
    // The local ClickHouse, kept running until the last rows are flushed at the end.
    let clickhouse_stop = CancellationToken::new();
    let clickhouse_task = local_clickhouse.take().map(|ch| {
        tokio::spawn(clickhouse::supervise(
            ch,
            shared.clone(),
            clickhouse_stop.clone(),
        ))
    });

    // The gateway, fed by the engine's browsers.
    let (agents_tx, agents_rx) = tokio::sync::watch::channel(Vec::new());
    let deployed_of =
        |d: &Desired| -> Arc<BTreeSet<String>> { Arc::new(d.models.keys().cloned().collect()) };
    let (deployed_tx, deployed_rx) = tokio::sync::watch::channel(deployed_of(&shared.desired()));
    let (pipelines_tx, pipelines_rx) =
        tokio::sync::watch::channel(Arc::new(cluster::pipelines(&shared.desired())));
    let defaults =
        <webaccel_gateway::GatewayArgs as clap::Parser>::try_parse_from(["webaccel-gateway"])?;
    let mut settings = webaccel_gateway::Settings::from_args(&defaults)?;
    settings.http = args.http;
    settings.grpc = args.grpc;
    settings.admin = None;
    let preferences = webaccel_gateway::service::Preferences::default();
    let rows = match &clickhouse {
        Some(url) => {
            let settings =
                webaccel_analytics::ClickHouseSettings::new(url, &database, "--clickhouse-url")?;
            // Route by what the history recommends, as the cluster's gateway does.
            webaccel_gateway::prefer::spawn_refresh(
                settings.clone(),
                preferences.clone(),
                webaccel_gateway::PREFERENCES_REFRESH,
                stop.clone(),
            );
            Some((
                settings,
                data.join("spool").join("gateway"),
                defaults.spool_max_bytes(),
            ))
        }
        None => None,
    };
    let gateway_parts = gateway::Parts {
        settings,
        agents: agents_rx,
        deployed: deployed_rx,
        pipelines: pipelines_rx,
        waiting: Arc::new(WaitingToEngine(shared.clone())),
        preferences,
        rows,
    };
    let first_gateway = gateway_parts.start(&stop).await?;
    let (gateway_http, gateway_grpc) = (first_gateway.running.http, first_gateway.running.grpc);
    let gateway_task = tokio::spawn(gateway::supervise(
        gateway_parts,
        first_gateway,
        shared.clone(),
        stop.clone(),
    ));
    shared.status.send_modify(|s| {
        let mut next = (**s).clone();
        next.gateway.http = gateway_http.to_string();
        next.gateway.grpc = gateway_grpc.to_string();
        next.clickhouse.clone_from(&clickhouse_note);
        *s = Arc::new(next);
    });

    // Rows stopped agents left unwritten (a SIGKILL, a stop while ClickHouse was down),
    // and those an earlier `up` left.
    if let Some(url) = &clickhouse {
        tokio::spawn(orphans::run(
            webaccel_analytics::ClickHouseSettings::new(url, &database, "--clickhouse-url")?,
            data.join("spool").join("agents"),
            stop.clone(),
        ));
    }

    // Scale decisions to ClickHouse's `pool_events`, as the operator writes them (the
    // gateway's recorder applies the schema; rows spool until it has).
    let history = match &clickhouse {
        Some(url) => PoolHistory::start(
            webaccel_analytics::ClickHouseSettings::new(url, &database, "--clickhouse-url")?,
            webaccel_analytics::WriterConfig::new(data.join("spool").join("pool-events")),
        )?,
        None => PoolHistory::disabled(),
    };

    // The engine's loop.
    let engine = Engine::new(
        shared.clone(),
        launcher,
        Pacing {
            drain_timeout: args.drain_timeout,
            heal_backoff: Duration::from_secs(2),
            heal_backoff_max: Duration::from_secs(60),
        },
        agents_tx,
        history,
    );
    let engine_task = tokio::spawn(engine.run(stop.clone(), kill_now.clone()));
    // Keep the gateway's lists of deployed models and of models cut into stages in step
    // with the manifests.
    {
        let (shared, stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {},
                }
                let desired = shared.desired();
                let d = deployed_of(&desired);
                deployed_tx.send_if_modified(|cur| {
                    if *cur == d {
                        false
                    } else {
                        *cur = d;
                        true
                    }
                });
                let p = cluster::pipelines(&desired);
                pipelines_tx.send_if_modified(|cur| {
                    if **cur == p {
                        false
                    } else {
                        *cur = Arc::new(p);
                        true
                    }
                });
            }
        });
    }

    // Our own API, and where other commands find it.
    let admin = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("binding {} (is another `webaccel up` running?)", args.admin))?;
    let admin_addr = admin.local_addr()?;
    {
        let (router, stop) = (admin::router(shared.clone()), stop.clone());
        tokio::spawn(async move {
            let _ = axum::serve(admin, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
    }
    let record = data.join("up.json");
    std::fs::write(
        &record,
        serde_json::to_string(&Running {
            admin: format!("http://{admin_addr}"),
            http: gateway_http.to_string(),
            grpc: gateway_grpc.to_string(),
            pid: std::process::id(),
        })?,
    )?;
    println!(
        "webaccel up: gateway on http://{} (KServe v2 HTTP; OpenAI /v1 for text generation) and {} (gRPC); `webaccel status` shows progress; Ctrl-C stops",
        gateway_http, gateway_grpc
    );

    // The terminal: the status whenever it changes.
    let printer = {
        let mut rx = shared.status.subscribe();
        tokio::spawn(async move {
            loop {
                if rx.changed().await.is_err() {
                    return;
                }
                let text = rx.borrow_and_update().render();
                println!("{text}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    webaccel_gateway::termination().await;
    println!("webaccel up: stopping (draining browsers; Ctrl-C again kills them)");
    stop.cancel();
    {
        let kill_now = kill_now.clone();
        tokio::spawn(async move {
            webaccel_gateway::termination().await;
            kill_now.cancel();
        });
    }
    printer.abort();
    let _ = gateway_task.await;
    let _ = engine_task.await;
    let _ = std::fs::remove_file(&record);
    let _ = std::fs::remove_dir_all(&run_dir);
    clickhouse_stop.cancel();
    if let Some(t) = clickhouse_task {
        let _ = t.await;
    }
    println!("webaccel up: stopped");
    Ok(())
}

/// The running `up`'s API address.
fn find_up(given: Option<&str>, data: Option<&Path>) -> anyhow::Result<String> {
    if let Some(u) = given {
        return Ok(u.trim_end_matches('/').to_owned());
    }
    let record = data_dir(data).join("up.json");
    let text = std::fs::read_to_string(&record).with_context(|| {
        format!(
            "no running `webaccel up` found ({} is missing); start one, or give --up",
            record.display()
        )
    })?;
    let running: Running = serde_json::from_str(&text)?;
    Ok(running.admin)
}

/// `webaccel apply -f` and `webaccel delete -f`.
#[allow(clippy::print_stdout)]
pub async fn apply(args: FilesArgs, delete: bool) -> anyhow::Result<()> {
    let up = find_up(args.up.as_deref(), args.data_dir.as_deref())?;
    let http = reqwest::Client::new();
    let mut failed = false;
    for (source, base, text) in read_manifests(&args.files)? {
        let path = if delete { "/v1/delete" } else { "/v1/apply" };
        let resp = http
            .post(format!("{up}{path}"))
            .header(admin::BASE_HEADER, base.display().to_string())
            .body(text)
            .send()
            .await
            .with_context(|| format!("reaching `webaccel up` at {up}"))?;
        if resp.status().is_success() {
            let changes: admin::Changes = resp.json().await?;
            for l in changes.lines {
                println!("{l}");
            }
        } else {
            let refused: admin::Refused = resp.json().await?;
            for e in refused.errors {
                eprintln!("{source}: {e}");
            }
            failed = true;
        }
    }
    if failed {
        bail!("some resources were refused");
    }
    Ok(())
}

/// `webaccel status`.
#[allow(clippy::print_stdout)]
pub async fn status(args: StatusArgs, json: bool) -> anyhow::Result<()> {
    let up = find_up(args.up.as_deref(), args.data_dir.as_deref())?;
    let status: status::Status = reqwest::get(format!("{up}/v1/status"))
        .await
        .with_context(|| format!("reaching `webaccel up` at {up}"))?
        .json()
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(())
}
