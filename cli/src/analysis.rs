//! The analysis commands: which browser and backend to use, what got slower, reports and
//! charts, and read-only SQL over the metrics in ClickHouse.

use anyhow::Context;
use webaccel_analytics::ClickHouseSettings;
use webaccel_analytics::queries::{self, RegressionParams, Scope};
use webaccel_analytics::server;

use crate::progress::{self, with_progress};
use crate::{Analysis, By, Cli, DEFAULT_CLICKHOUSE, output, sql};

#[allow(clippy::print_stdout)]
pub async fn run(cli: Cli, command: Analysis) -> anyhow::Result<()> {
    let url = cli
        .clickhouse_url
        .clone()
        .unwrap_or_else(|| DEFAULT_CLICKHOUSE.to_owned());
    let settings = ClickHouseSettings::new(
        &url,
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
    match command {
        Analysis::Recommend {
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
                // Models that answer requests by latency; models that generate text by
                // time to first token, with their tokens/s.
                println!(
                    "{:<24} {:<18} {:<10} {:<10} {:>9} {:>9} {:>8} {:>10}  runner-up",
                    "key",
                    "measure",
                    "browser",
                    "backend",
                    "p50 ms",
                    "req/s",
                    "samples",
                    "confidence"
                );
                for r in recs {
                    let runner = r
                        .runner_up
                        .map_or_else(|| "-".into(), |(b, k, p)| format!("{b}/{k} {p:.3} ms"));
                    let rate = r.tokens_per_s.map_or_else(
                        || format!("{:.1}", r.throughput_rps),
                        |t| format!("{t:.0} tok/s"),
                    );
                    println!(
                        "{:<24} {:<18} {:<10} {:<10} {:>9.3} {:>9} {:>8} {:>10.3}  {runner}",
                        r.key,
                        r.measure.as_str(),
                        r.browser,
                        r.backend,
                        r.p50_ms,
                        rate,
                        r.samples,
                        r.confidence
                    );
                }
            }
        }
        Analysis::Regressions {
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
                    "{:<9} {:<24} {:<18} {:<10} {:<10} {:>10} {:>10} {:>8} {:>9}",
                    "severity",
                    "model",
                    "measure",
                    "browser",
                    "backend",
                    "base p50",
                    "now p50",
                    "change",
                    "p-value"
                );
                for r in found {
                    println!(
                        "{:<9} {:<24} {:<18} {:<10} {:<10} {:>10.3} {:>10.3} {:>7.1}% {:>9.1e}",
                        r.severity.as_str(),
                        r.model,
                        r.measure.as_str(),
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
        Analysis::Report(args) => {
            let features = features().await?;
            output::report(&client, features, args, cli.json, progress)
                .await
                .with_context(context)?;
        }
        Analysis::Chart(args) => {
            let features = features().await?;
            output::chart(&client, features, args, cli.json, progress)
                .await
                .with_context(context)?;
        }
        Analysis::Sql { query, format } => {
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
