//! `webaccel`: the user's command, as a library the binary (`main.rs`) and the tests
//! share. `up` runs manifests on this machine (local mode, [`local`]), with `apply`,
//! `delete` and `status` to change and watch it; the analysis side tells which browser
//! and backend to use, what got slower, reports and charts, and read-only SQL over the
//! metrics in ClickHouse.

mod analysis;
pub mod local;
mod output;
mod progress;
mod shard;
mod sql;

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "webaccel",
    version,
    about = "webaccel: browsers as an ML inference fleet"
)]
pub struct Cli {
    /// ClickHouse HTTP interface with webaccel's metrics (`http://host:8123`, with
    /// `user:password@` if needed); default http://127.0.0.1:8123. With `up`: the server
    /// to record into (without it, `up` starts a local one if clickhouse-server is
    /// installed).
    #[arg(long, env = "WEBACCEL_CLICKHOUSE_URL", global = true)]
    pub clickhouse_url: Option<String>,
    /// ClickHouse database with webaccel's tables.
    #[arg(
        long,
        env = "WEBACCEL_CLICKHOUSE_DATABASE",
        default_value = "webaccel",
        global = true
    )]
    pub clickhouse_database: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub log: webaccel_logs::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum By {
    Model,
    Task,
}

/// Where the analysis commands look when no URL is given.
pub const DEFAULT_CLICKHOUSE: &str = "http://127.0.0.1:8123";

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs BrowserPool and ModelDeployment manifests on this machine, without a
    /// cluster: local browsers behind the gateway (127.0.0.1:8000 HTTP, :8001 gRPC),
    /// scaled, healed and rolled by the same engine as the operator.
    Up(local::UpArgs),
    /// Changes a running `webaccel up`: adds or updates the resources in the files.
    Apply(local::FilesArgs),
    /// Changes a running `webaccel up`: removes the resources named in the files.
    Delete(local::FilesArgs),
    /// Shows a running `webaccel up`: pools and models, as `kubectl get bpool,mdep` would.
    Status(local::StatusArgs),
    /// Cuts an ONNX model into N pipeline stages balanced by parameter bytes: one
    /// model file per stage and a stages.json describing them.
    Shard(shard::ShardArgs),
    #[command(flatten)]
    Analysis(Analysis),
}

#[derive(Debug, Subcommand)]
pub enum Analysis {
    /// The best browser and backend per model (or task) by p50 latency.
    Recommend {
        #[arg(long, value_enum, default_value = "model")]
        by: By,
        /// How far back to look.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        window: Duration,
        /// Fewer successful requests than this cannot be recommended.
        #[arg(long, default_value_t = 30)]
        min_samples: u64,
    },
    /// Slowdowns of the recent window against a baseline, per model, browser, backend.
    Regressions {
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        recent: Duration,
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        baseline: Duration,
        #[arg(long, default_value_t = 30)]
        min_samples: u64,
        /// Largest p-value still called significant.
        #[arg(long, default_value_t = 0.01)]
        alpha: f64,
        /// Also write what was found into the `regressions` table.
        #[arg(long)]
        record: bool,
    },
    /// A report of a window: summary, recommendations, regressions, trends and
    /// charts, as Markdown or a self-contained HTML page.
    Report(output::ReportArgs),
    /// A chart as PNG or SVG: latency percentiles over time per model, or throughput
    /// by browser and backend.
    Chart(output::ChartArgs),
    /// Runs one read-only query (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN); anything that
    /// writes is refused, here and by the server (`readonly=1`).
    Sql {
        query: String,
        /// ClickHouse output format.
        #[arg(long, default_value = "PrettyCompactNoEscapes")]
        format: String,
    },
}

impl Cli {
    /// Whether the command is `up` (which logs what it does, where the others only warn).
    pub fn is_up(&self) -> bool {
        matches!(self.command, Command::Up(_))
    }
}

/// Runs the command.
pub async fn run(mut cli: Cli) -> anyhow::Result<()> {
    let command = std::mem::replace(
        &mut cli.command,
        Command::Status(local::StatusArgs::default()),
    );
    match command {
        Command::Up(args) => {
            local::up(
                args,
                cli.clickhouse_url.clone(),
                cli.clickhouse_database.clone(),
                cli.log.log_format,
            )
            .await
        }
        Command::Apply(args) => local::apply(args, false).await,
        Command::Delete(args) => local::apply(args, true).await,
        Command::Status(args) => local::status(args, cli.json).await,
        Command::Shard(args) => shard::run(args, cli.json),
        Command::Analysis(a) => analysis::run(cli, a).await,
    }
}
