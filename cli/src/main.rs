//! `webaccel`: the user's command. For now the analysis side: which browser and backend
//! to use, what got slower, reports and charts, and read-only SQL over the metrics in
//! ClickHouse.

mod output;
mod progress;
mod sql;

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use webaccel_analytics::ClickHouseSettings;
use webaccel_analytics::queries::{self, RegressionParams, Scope};
use webaccel_analytics::server;

use crate::progress::with_progress;

#[derive(Debug, Parser)]
#[command(
    name = "webaccel",
    version,
    about = "webaccel: browsers as an ML inference fleet"
)]
struct Cli {
    /// ClickHouse HTTP interface with webaccel's metrics (`http://host:8123`, with
    /// `user:password@` if needed).
    #[arg(
        long,
        env = "WEBACCEL_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123",
        global = true
    )]
    clickhouse_url: String,
    /// ClickHouse database with webaccel's tables.
    #[arg(
        long,
        env = "WEBACCEL_CLICKHOUSE_DATABASE",
        default_value = "webaccel",
        global = true
    )]
    clickhouse_database: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum By {
    Model,
    Task,
}

#[derive(Debug, Subcommand)]
enum Command {
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("warn")
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("webaccel: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = ClickHouseSettings::new(
        &cli.clickhouse_url,
        &cli.clickhouse_database,
        "--clickhouse-url / WEBACCEL_CLICKHOUSE_URL",
    )?;
    let client = settings.client(true);
    let context = || format!("querying ClickHouse at {}", settings.url);
    let progress = progress::wanted(cli.json);
    let features = || async {
        with_progress(
            "connecting to ClickHouse",
            progress,
            server::detect(&client),
        )
        .await
        .with_context(context)
    };
    match cli.command {
        Command::Recommend {
            by,
            window,
            min_samples,
        } => {
            let features = features().await?;
            let scope = match by {
                By::Model => Scope::Model,
                By::Task => Scope::Task,
            };
            let recs = with_progress(
                "querying ClickHouse",
                progress,
                queries::recommend(&client, features, scope, window, min_samples),
            )
            .await
            .with_context(context)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&recs)?);
            } else if recs.is_empty() {
                println!(
                    "no recommendation: fewer than {min_samples} successful requests per choice in the last {}",
                    humantime::format_duration(window)
                );
            } else {
                println!(
                    "{:<24} {:<10} {:<10} {:>9} {:>9} {:>8} {:>10}  runner-up",
                    "key", "browser", "backend", "p50 ms", "req/s", "samples", "confidence"
                );
                for r in recs {
                    let runner = r
                        .runner_up
                        .map_or_else(|| "-".into(), |(b, k, p)| format!("{b}/{k} {p:.3} ms"));
                    println!(
                        "{:<24} {:<10} {:<10} {:>9.3} {:>9.1} {:>8} {:>10.3}  {runner}",
                        r.key,
                        r.browser,
                        r.backend,
                        r.p50_ms,
                        r.throughput_rps,
                        r.samples,
                        r.confidence
                    );
                }
            }
        }
        Command::Regressions {
            recent,
            baseline,
            min_samples,
            alpha,
            record,
        } => {
            let features = features().await?;
            let params = RegressionParams {
                recent,
                baseline,
                min_samples,
                alpha,
            };
            let found = with_progress(
                "querying ClickHouse",
                progress,
                queries::detect_regressions(&client, features, params),
            )
            .await
            .with_context(context)?;
            if record {
                queries::record_regressions(&client, &found)
                    .await
                    .with_context(context)?;
            }
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else if found.is_empty() {
                println!(
                    "no significant slowdown in the last {}",
                    humantime::format_duration(recent)
                );
            } else {
                println!(
                    "{:<9} {:<24} {:<10} {:<10} {:>10} {:>10} {:>8} {:>9}",
                    "severity",
                    "model",
                    "browser",
                    "backend",
                    "base p50",
                    "now p50",
                    "change",
                    "p-value"
                );
                for r in found {
                    println!(
                        "{:<9} {:<24} {:<10} {:<10} {:>10.3} {:>10.3} {:>7.1}% {:>9.1e}",
                        r.severity.as_str(),
                        r.model,
                        r.browser,
                        r.backend,
                        r.baseline_p50,
                        r.recent_p50,
                        r.change_pct,
                        r.p_value
                    );
                }
            }
        }
        Command::Report(args) => {
            let features = features().await?;
            output::report(&client, features, args, cli.json, progress)
                .await
                .with_context(context)?;
        }
        Command::Chart(args) => {
            let features = features().await?;
            output::chart(&client, features, args, cli.json, progress)
                .await
                .with_context(context)?;
        }
        Command::Sql { query, format } => {
            sql::check_read_only(&query)?;
            let format = if cli.json { "JSON".to_owned() } else { format };
            let text = with_progress(
                "querying ClickHouse",
                progress,
                sql::run(&settings, &query, &format),
            )
            .await?;
            print!("{text}");
        }
    }
    Ok(())
}
