//! `webaccel report` and `webaccel chart`: the analytics crate's reports and charts,
//! written to files (or a report to stdout).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use webaccel_analytics::charts::{self, ChartFormat, THROUGHPUT_HEIGHT};
use webaccel_analytics::overview;
use webaccel_analytics::queries::{Measure, RegressionParams};
use webaccel_analytics::report::{self, ChartEmbed, ReportChart, ReportParams};
use webaccel_analytics::server::Features;

use crate::progress::with_progress;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Md,
    Html,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// md or html; by default from the extension of -o, else md.
    #[arg(long, value_enum)]
    format: Option<ReportFormat>,
    /// Where to write the report (stdout without it). A Markdown report written to a
    /// file links its charts as SVG files beside it (`<name>-latency.svg`, ...);
    /// elsewhere they are embedded.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Summary, recommendations, trends and charts cover this much.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Trends table bucket; by default a twelfth of the window.
    #[arg(long, value_parser = humantime::parse_duration)]
    bucket: Option<Duration>,
    /// Fewer successful requests than this cannot be recommended or compared.
    #[arg(long, default_value_t = 30)]
    min_samples: u64,
    /// Regressions: the recent window...
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    recent: Duration,
    /// ...against this much before it.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    baseline: Duration,
    /// Regressions: largest p-value still called significant.
    #[arg(long, default_value_t = 0.01)]
    alpha: f64,
    /// Leave the charts out.
    #[arg(long)]
    no_charts: bool,
}

fn report_format(args: &ReportArgs) -> anyhow::Result<ReportFormat> {
    if let Some(f) = args.format {
        return Ok(f);
    }
    let ext = args
        .output
        .as_deref()
        .and_then(Path::extension)
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        None | Some("md" | "markdown") => Ok(ReportFormat::Md),
        Some("html" | "htm") => Ok(ReportFormat::Html),
        Some(other) => {
            bail!("cannot tell the report format from '.{other}': give --format md|html")
        }
    }
}

/// `<dir>/<stem>-<slug>.svg` beside a report file.
fn sibling(report: &Path, slug: &str) -> PathBuf {
    let stem = report
        .file_stem()
        .map_or_else(|| "report".into(), |s| s.to_string_lossy().into_owned());
    report.with_file_name(format!("{stem}-{slug}.svg"))
}

/// Runs `webaccel report`; prints the report (or where it went) on stdout.
#[allow(clippy::print_stdout)]
pub async fn report(
    client: &clickhouse::Client,
    features: Features,
    args: ReportArgs,
    json: bool,
    progress: bool,
) -> anyhow::Result<()> {
    let format = report_format(&args)?;
    let params = ReportParams {
        window: args.window,
        bucket: args
            .bucket
            .unwrap_or_else(|| overview::auto_bucket(args.window, 12)),
        min_samples: args.min_samples,
        regressions: RegressionParams {
            recent: args.recent,
            baseline: args.baseline,
            min_samples: args.min_samples,
            alpha: args.alpha,
        },
    };
    let data = with_progress(
        "querying ClickHouse",
        progress,
        report::gather(client, features, params),
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    let rendered = if args.no_charts {
        Vec::new()
    } else {
        report::render_charts(&data, 1000)?
    };
    let mut charts = Vec::new();
    for c in rendered {
        let embed = match (&args.output, format) {
            (Some(out), ReportFormat::Md) => {
                let path = sibling(out, c.slug);
                std::fs::write(&path, &c.svg)
                    .with_context(|| format!("writing {}", path.display()))?;
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                ChartEmbed::Link(name.into_owned())
            }
            _ => ChartEmbed::Svg(c.svg),
        };
        charts.push(ReportChart {
            title: c.title,
            embed,
        });
    }
    let text = match format {
        ReportFormat::Md => report::markdown(&data, &charts),
        ReportFormat::Html => report::html(&data, &charts),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            println!(
                "wrote {} ({} requests, {} recommendations, {} regressions, {} charts)",
                path.display(),
                data.summary.requests,
                data.recommendations.len(),
                data.regressions.len(),
                charts.len()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChartKind {
    /// p50/p90/p99 over time, one panel per model.
    Latency,
    /// Text generation's time to first token, p50/p90/p99 over time per model.
    Ttft,
    /// Text generation's time between tokens, p50/p90/p99 over time per model.
    InterToken,
    /// Successful requests per second per browser and backend.
    Throughput,
    /// Each pool's browsers and each model's replicas over time (their scale decisions).
    Fleet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageFormat {
    Png,
    Svg,
}

#[derive(Debug, Args)]
pub struct ChartArgs {
    #[arg(long, value_enum, default_value = "latency")]
    kind: ChartKind,
    /// The image file to write.
    #[arg(short, long)]
    output: PathBuf,
    /// png or svg; by default from the extension of -o.
    #[arg(long, value_enum)]
    format: Option<ImageFormat>,
    /// Only this model.
    #[arg(long)]
    model: Option<String>,
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Latency bucket; by default a sixtieth of the window.
    #[arg(long, value_parser = humantime::parse_duration)]
    bucket: Option<Duration>,
    #[arg(long, default_value_t = 1000)]
    width: u32,
    /// By default 500 for throughput, 60 + 230 per model for latency.
    #[arg(long)]
    height: Option<u32>,
}

/// Runs `webaccel chart`; says on stdout what it wrote.
#[allow(clippy::print_stdout)]
pub async fn chart(
    client: &clickhouse::Client,
    features: Features,
    args: ChartArgs,
    json: bool,
    progress: bool,
) -> anyhow::Result<()> {
    let format = match args.format {
        Some(ImageFormat::Png) => ChartFormat::Png,
        Some(ImageFormat::Svg) => ChartFormat::Svg,
        None => ChartFormat::from_path(&args.output).with_context(|| {
            format!(
                "cannot tell the image format from '{}': give --format png|svg",
                args.output.display()
            )
        })?,
    };
    let scope = args
        .model
        .as_ref()
        .map_or_else(String::new, |m| format!(", model '{m}'"));
    let within = format!("last {}{scope}", humantime::format_duration(args.window));
    let model = args.model.as_deref();
    let measure = match args.kind {
        ChartKind::Latency | ChartKind::Throughput | ChartKind::Fleet => Measure::Latency,
        ChartKind::Ttft => Measure::TimeToFirstToken,
        ChartKind::InterToken => Measure::InterToken,
    };
    let (bytes, height, series) = match args.kind {
        ChartKind::Latency | ChartKind::Ttft | ChartKind::InterToken => {
            let bucket = args
                .bucket
                .unwrap_or_else(|| overview::auto_bucket(args.window, 60));
            let points = with_progress(
                "querying ClickHouse",
                progress,
                overview::measured(client, features, measure, args.window, bucket, model),
            )
            .await?;
            let height = args
                .height
                .unwrap_or_else(|| charts::latency_height(&points));
            let bytes =
                charts::measure_chart(&points, measure, bucket, format, (args.width, height))
                    .with_context(|| within.clone())?;
            let models: std::collections::BTreeSet<&str> =
                points.iter().map(|p| p.model.as_str()).collect();
            (bytes, height, models.len())
        }
        ChartKind::Throughput => {
            let bars = with_progress(
                "querying ClickHouse",
                progress,
                overview::throughput(client, features, args.window, model),
            )
            .await?;
            let height = args.height.unwrap_or(THROUGHPUT_HEIGHT);
            let bytes = charts::throughput_chart(&bars, format, (args.width, height))
                .with_context(|| within.clone())?;
            (bytes, height, bars.len())
        }
        ChartKind::Fleet => {
            let points = with_progress(
                "querying ClickHouse",
                progress,
                overview::fleet(client, features, args.window),
            )
            .await?;
            let height = args.height.unwrap_or(THROUGHPUT_HEIGHT);
            let bytes = charts::fleet_chart(&points, format, (args.width, height))
                .with_context(|| within.clone())?;
            let series: std::collections::BTreeSet<(&str, &str)> = points
                .iter()
                .map(|p| (p.pool.as_str(), p.model.as_str()))
                .collect();
            (bytes, height, series.len())
        }
    };
    std::fs::write(&args.output, &bytes)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let kind = match args.kind {
        ChartKind::Latency => "latency",
        ChartKind::Ttft => "ttft",
        ChartKind::InterToken => "inter-token",
        ChartKind::Throughput => "throughput",
        ChartKind::Fleet => "fleet",
    };
    let format = match format {
        ChartFormat::Png => "png",
        ChartFormat::Svg => "svg",
    };
    if json {
        let out = serde_json::json!({
            "path": args.output,
            "kind": kind,
            "format": format,
            "width": args.width,
            "height": height,
            "series": series,
            "bytes": bytes.len(),
        });
        println!("{out}");
    } else {
        println!(
            "wrote {} ({kind}, {format}, {}x{height}, {series} {}, {within})",
            args.output.display(),
            args.width,
            match args.kind {
                ChartKind::Throughput => "browser/backend pairs",
                ChartKind::Fleet => "pools and models",
                _ => "models",
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        r: ReportArgs,
    }

    fn fmt(args: &[&str]) -> anyhow::Result<ReportFormat> {
        let t = T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))?;
        report_format(&t.r)
    }

    #[test]
    fn report_format_from_flag_or_extension() {
        assert_eq!(fmt(&[]).unwrap(), ReportFormat::Md);
        assert_eq!(fmt(&["-o", "r.HTML"]).unwrap(), ReportFormat::Html);
        assert_eq!(fmt(&["-o", "r.md"]).unwrap(), ReportFormat::Md);
        assert_eq!(
            fmt(&["-o", "r.txt", "--format", "html"]).unwrap(),
            ReportFormat::Html
        );
        let err = fmt(&["-o", "r.txt"]).unwrap_err().to_string();
        assert!(err.contains("give --format md|html"), "{err}");
    }

    #[test]
    fn chart_files_sit_beside_the_report() {
        assert_eq!(
            sibling(Path::new("out/weekly.md"), "latency"),
            Path::new("out/weekly-latency.svg")
        );
    }
}
