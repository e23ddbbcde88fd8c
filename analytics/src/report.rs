//! Reports: the figures of one window gathered from ClickHouse ([`gather`]), then
//! rendered by pure functions as Markdown ([`markdown`]) or a self-contained HTML page
//! ([`html`]) with its charts embedded. Every value that came from the data is escaped
//! for the output format, as model and browser names are free text.

use std::time::Duration;

use serde::Serialize;

use crate::charts::{self, ChartError, ChartFormat};
use crate::overview::{self, LatencyPoint, Summary, Throughput};
use crate::queries::{self, Recommendation, Regression, RegressionParams, Scope, TrendPoint};
use crate::server::Features;

/// The trends table keeps the most recent rows up to this many; the rest are counted.
pub const MAX_TREND_ROWS: usize = 200;

/// What a report covers.
#[derive(Debug, Clone, Copy)]
pub struct ReportParams {
    /// Summary, recommendations, trends and charts look this far back.
    pub window: Duration,
    /// Trend table bucket.
    pub bucket: Duration,
    /// Fewer successful requests than this cannot be recommended or compared.
    pub min_samples: u64,
    pub regressions: RegressionParams,
}

/// Everything a report shows, as typed query results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportData {
    /// Seconds since the epoch.
    pub generated_at_s: u64,
    /// `major.minor` of the ClickHouse server.
    pub server_version: String,
    pub window_s: u64,
    pub bucket_s: u64,
    pub min_samples: u64,
    pub recent_s: u64,
    pub baseline_s: u64,
    pub alpha: f64,
    pub summary: Summary,
    pub recommendations: Vec<Recommendation>,
    pub regressions: Vec<Regression>,
    pub trends: Vec<TrendPoint>,
    /// For the latency chart: per model, finer buckets than the table.
    pub latency: Vec<LatencyPoint>,
    pub latency_bucket_s: u64,
    /// For the throughput chart.
    pub throughput: Vec<Throughput>,
}

/// Runs the report's queries.
pub async fn gather(
    client: &clickhouse::Client,
    f: Features,
    p: ReportParams,
) -> Result<ReportData, clickhouse::error::Error> {
    let summary = overview::summary(client, f, p.window).await?;
    let recommendations =
        queries::recommend(client, f, Scope::Model, p.window, p.min_samples).await?;
    let regressions = queries::detect_regressions(client, f, p.regressions).await?;
    let trends = queries::trends(client, f, p.window, p.bucket).await?;
    let chart_bucket = overview::auto_bucket(p.window, 60);
    let latency = overview::latency(client, f, p.window, chart_bucket, None).await?;
    let throughput = overview::throughput(client, f, p.window, None).await?;
    Ok(ReportData {
        generated_at_s: u64::try_from(crate::rows::now_ms() / 1000).unwrap_or(0),
        server_version: format!("{}.{}", f.version.0, f.version.1),
        window_s: p.window.as_secs(),
        bucket_s: p.bucket.as_secs(),
        min_samples: p.min_samples,
        recent_s: p.regressions.recent.as_secs(),
        baseline_s: p.regressions.baseline.as_secs(),
        alpha: p.regressions.alpha,
        summary,
        recommendations,
        regressions,
        trends,
        latency,
        latency_bucket_s: chart_bucket.as_secs(),
        throughput,
    })
}

/// How a chart goes into a report.
#[derive(Debug, Clone, PartialEq)]
pub enum ChartEmbed {
    /// SVG markup as plotters wrote it (its text is already XML-escaped): inline in
    /// HTML, a `data:` URI in Markdown.
    Svg(String),
    /// A file beside the report, or any URL: `<img>` / `![]()`.
    Link(String),
}

/// One chart of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportChart {
    pub title: String,
    pub embed: ChartEmbed,
}

/// One of a report's charts, rendered as SVG.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedChart {
    /// A short name for a file: `latency`, `throughput`.
    pub slug: &'static str,
    pub title: String,
    pub svg: String,
}

/// The report's charts as SVG, `width` pixels wide, for the data there is.
pub fn render_charts(d: &ReportData, width: u32) -> Result<Vec<RenderedChart>, ChartError> {
    let mut out = Vec::new();
    let svg = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    if !d.latency.is_empty() {
        let size = (width, charts::latency_height(&d.latency));
        out.push(RenderedChart {
            slug: "latency",
            title: "Latency percentiles per model over time".into(),
            svg: svg(charts::latency_chart(
                &d.latency,
                Duration::from_secs(d.latency_bucket_s),
                ChartFormat::Svg,
                size,
            )?),
        });
    }
    if !d.throughput.is_empty() {
        out.push(RenderedChart {
            slug: "throughput",
            title: "Throughput by browser and backend".into(),
            svg: svg(charts::throughput_chart(
                &d.throughput,
                ChartFormat::Svg,
                (width, charts::THROUGHPUT_HEIGHT),
            )?),
        });
    }
    Ok(out)
}

mod html;
mod markdown;
mod tables;

pub use html::{html, html_escape};
pub use markdown::markdown;

#[cfg(test)]
mod tests;
