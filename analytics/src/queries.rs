//! The questions webaccel asks of its history, as typed functions: which browser and
//! backend to use (recommendations), what got slower (regressions), and how latency
//! moves over time (trends). Each is asked of every [`Measure`]: a request's latency,
//! and for text generation the time to first token and the time between tokens. The SQL runs on ClickHouse 18.16 and current releases;
//! the statistics that SQL cannot do portably are done here on its aggregates.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rows::{RegressionRow, new_row_id, now_ms};
use crate::server::Features;

/// Per-(key, browser, backend) aggregate of successful requests.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
struct Aggregate {
    key: String,
    browser: String,
    backend: String,
    p50: f64,
    /// The spread of latencies as a normal σ would be, estimated robustly from the
    /// interquartile range (IQR / 1.349): a browser's long tail (Firefox's p99 can be 30×
    /// its p50) must not swamp the standard error of its median.
    sigma: f64,
    samples: u64,
    rows_per_s: f64,
    /// Generations' median tokens per second (0 for requests).
    tokens_per_s: f64,
}

/// What is compared: each a time, lower is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// A request's latency at the agent (`inference_performance.latency_ms`).
    Latency,
    /// A generation's time to first token (`generation_performance.ttft_ms`).
    TimeToFirstToken,
    /// A generation's median time between tokens
    /// (`generation_performance.inter_token_p50_ms`).
    InterToken,
}

impl Measure {
    pub const ALL: [Self; 3] = [Self::Latency, Self::TimeToFirstToken, Self::InterToken];

    /// What it is, for chart titles.
    pub fn label(self) -> &'static str {
        match self {
            Self::Latency => "Latency",
            Self::TimeToFirstToken => "Time to first token",
            Self::InterToken => "Time between tokens",
        }
    }

    pub(crate) fn table(self) -> &'static str {
        match self {
            Self::Latency => "inference_performance",
            Self::TimeToFirstToken | Self::InterToken => "generation_performance",
        }
    }

    pub(crate) fn column(self) -> &'static str {
        match self {
            Self::Latency => "latency_ms",
            Self::TimeToFirstToken => "ttft_ms",
            Self::InterToken => "inter_token_p50_ms",
        }
    }

    /// Its name in the `regressions` table's `metric` column and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Latency => "latency_p50_ms",
            Self::TimeToFirstToken => "ttft_p50_ms",
            Self::InterToken => "inter_token_p50_ms",
        }
    }

    /// The grouping key's SQL: generations have no task column (they are all text
    /// generation).
    fn key_sql(self, key: &str) -> String {
        match (self, key) {
            (Self::TimeToFirstToken | Self::InterToken, "task") => "'text-generation'".into(),
            _ => key.to_owned(),
        }
    }
}

/// What a recommendation is for: one model, or every model of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Model,
    Task,
}

/// The best browser and backend for one model or task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    pub key: String,
    /// What the pick is fastest at: latency for models that answer requests, time to
    /// first token for models that generate text.
    pub measure: Measure,
    pub browser: String,
    pub backend: String,
    pub p50_ms: f64,
    pub throughput_rps: f64,
    /// For text generation: the pick's median tokens per second.
    pub tokens_per_s: Option<f64>,
    pub samples: u64,
    /// The next best choice, if any, and its p50.
    pub runner_up: Option<(String, String, f64)>,
    /// Probability (0-1) that the pick really is faster than the runner-up, from the
    /// difference of medians and their standard errors. 1 when there is no rival.
    pub confidence: f64,
}

/// Standard normal CDF (Abramowitz-Stegun 7.1.26 erf approximation, error < 1.5e-7).
fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// Standard error of a sample median, for roughly normal data: 1.2533 σ / √n.
#[allow(clippy::cast_precision_loss)]
fn median_se(sigma: f64, n: u64) -> f64 {
    1.253_3 * sigma / (n.max(1) as f64).sqrt()
}

/// z score of `b` being larger than `a`.
fn z_of(a: (f64, f64, u64), b: (f64, f64, u64)) -> f64 {
    let se = (median_se(a.1, a.2).powi(2) + median_se(b.1, b.2).powi(2)).sqrt();
    if se == 0.0 {
        if b.0 > a.0 { f64::INFINITY } else { 0.0 }
    } else {
        (b.0 - a.0) / se
    }
}

/// Per-(key, browser, backend) p50, spread and volume of successful requests between
/// two times (seconds since the epoch). Public so other engines can check the SQL.
pub fn aggregate_sql(f: Features, key: &str, filter: &str, from_s: u64, to_s: u64) -> String {
    measure_sql(f, Measure::Latency, key, filter, from_s, to_s)
}

/// [`aggregate_sql`] of any measure.
pub fn measure_sql(
    f: Features,
    measure: Measure,
    key: &str,
    filter: &str,
    from_s: u64,
    to_s: u64,
) -> String {
    let t = f.time_seconds("event_time");
    let (table, m, key) = (measure.table(), measure.column(), measure.key_sql(key));
    let tokens = match measure {
        Measure::Latency => "toFloat64(0)",
        Measure::TimeToFirstToken | Measure::InterToken => "quantileExact(0.5)(tokens_per_s)",
    };
    format!(
        "SELECT {key} AS key, browser, backend, quantileExact(0.5)({m}) AS p50, \
         (quantileExact(0.75)({m}) - quantileExact(0.25)({m})) / 1.349 AS sigma, \
         count() AS samples, \
         count() / greatest(1, toUInt32(max({t})) - toUInt32(min({t})) + 1) AS rows_per_s, \
         {tokens} AS tokens_per_s \
         FROM {table} \
         WHERE outcome = 'ok' AND {filter} AND toUInt32({t}) >= {from_s} AND toUInt32({t}) < {to_s} \
         GROUP BY key, browser, backend ORDER BY key, p50"
    )
}

fn now_s() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or(0)
}

/// The best browser and backend per model (or task) over the last `window`, among
/// those with at least `min_samples` successful requests: by p50 latency, and for
/// models that generate text by p50 time to first token.
pub async fn recommend(
    client: &clickhouse::Client,
    f: Features,
    scope: Scope,
    window: Duration,
    min_samples: u64,
) -> Result<Vec<Recommendation>, clickhouse::error::Error> {
    let key = match scope {
        Scope::Model => "model",
        Scope::Task => "task",
    };
    let now = now_s();
    let mut out = Vec::new();
    for measure in [Measure::Latency, Measure::TimeToFirstToken] {
        let sql = measure_sql(
            f,
            measure,
            key,
            "1",
            now.saturating_sub(window.as_secs()),
            now + 1,
        );
        let rows: Vec<Aggregate> = client.query(&sql).fetch_all().await?;
        out.extend(pick_best(rows, min_samples, measure));
    }
    Ok(out)
}

fn pick_best(rows: Vec<Aggregate>, min_samples: u64, measure: Measure) -> Vec<Recommendation> {
    let mut out: Vec<Recommendation> = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let key = rows[i].key.clone();
        let mut group: Vec<&Aggregate> = rows[i..].iter().take_while(|r| r.key == key).collect();
        i += group.len();
        group.retain(|r| r.samples >= min_samples);
        group.sort_by(|a, b| a.p50.total_cmp(&b.p50));
        let Some(best) = group.first() else { continue };
        let runner = group.get(1);
        let confidence = runner.map_or(1.0, |r| {
            normal_cdf(z_of(
                (best.p50, best.sigma, best.samples),
                (r.p50, r.sigma, r.samples),
            ))
        });
        out.push(Recommendation {
            key,
            measure,
            browser: best.browser.clone(),
            backend: best.backend.clone(),
            p50_ms: best.p50,
            throughput_rps: best.rows_per_s,
            tokens_per_s: (measure != Measure::Latency).then_some(best.tokens_per_s),
            samples: best.samples,
            runner_up: runner.map(|r| (r.browser.clone(), r.backend.clone(), r.p50)),
            confidence,
        });
    }
    out
}

/// How bad a regression is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Minor,
    Major,
    Critical,
}

impl Severity {
    /// From the relative slowdown, for a change that is significant at all.
    pub fn from_change(change_pct: f64) -> Option<Self> {
        match change_pct {
            c if c >= 50.0 => Some(Self::Critical),
            c if c >= 20.0 => Some(Self::Major),
            c if c >= 5.0 => Some(Self::Minor),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minor => "minor",
            Self::Major => "major",
            Self::Critical => "critical",
        }
    }
}

/// A slowdown of one (model, browser, backend) between a baseline and a recent window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Regression {
    pub model: String,
    /// What got slower.
    pub measure: Measure,
    pub browser: String,
    pub backend: String,
    pub baseline_p50: f64,
    pub recent_p50: f64,
    pub change_pct: f64,
    /// One-sided p-value of "recent is slower".
    pub p_value: f64,
    pub severity: Severity,
    pub baseline_samples: u64,
    pub recent_samples: u64,
}

impl Regression {
    pub fn to_row(&self) -> RegressionRow {
        RegressionRow {
            event_time: now_ms(),
            row_id: new_row_id(),
            model: self.model.clone(),
            browser: self.browser.clone(),
            backend: self.backend.clone(),
            metric: self.measure.as_str().into(),
            baseline_p50: self.baseline_p50,
            recent_p50: self.recent_p50,
            change_pct: self.change_pct,
            p_value: self.p_value,
            severity: self.severity.as_str().into(),
            baseline_samples: self.baseline_samples,
            recent_samples: self.recent_samples,
        }
    }
}

/// Windows and thresholds of regression detection.
#[derive(Debug, Clone, Copy)]
pub struct RegressionParams {
    /// The recent window ends now.
    pub recent: Duration,
    /// The baseline window ends where the recent one starts.
    pub baseline: Duration,
    pub min_samples: u64,
    /// Largest p-value still called significant.
    pub alpha: f64,
}

impl Default for RegressionParams {
    fn default() -> Self {
        Self {
            recent: Duration::from_secs(3600),
            baseline: Duration::from_secs(7 * 24 * 3600),
            min_samples: 30,
            alpha: 0.01,
        }
    }
}

/// Compares the recent window with the baseline per model, browser and backend, in
/// every [`Measure`].
pub async fn detect_regressions(
    client: &clickhouse::Client,
    f: Features,
    p: RegressionParams,
) -> Result<Vec<Regression>, clickhouse::error::Error> {
    let now = now_s();
    let split = now.saturating_sub(p.recent.as_secs());
    let start = split.saturating_sub(p.baseline.as_secs());
    let mut out = Vec::new();
    for measure in Measure::ALL {
        let base: Vec<Aggregate> = client
            .query(&measure_sql(f, measure, "model", "1", start, split))
            .fetch_all()
            .await?;
        let recent: Vec<Aggregate> = client
            .query(&measure_sql(f, measure, "model", "1", split, now + 1))
            .fetch_all()
            .await?;
        out.extend(compare(&base, &recent, p, measure));
    }
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.change_pct.total_cmp(&a.change_pct))
    });
    Ok(out)
}

fn compare(
    base: &[Aggregate],
    recent: &[Aggregate],
    p: RegressionParams,
    measure: Measure,
) -> Vec<Regression> {
    let mut out = Vec::new();
    for r in recent {
        let Some(b) = base
            .iter()
            .find(|b| b.key == r.key && b.browser == r.browser && b.backend == r.backend)
        else {
            continue;
        };
        if b.samples < p.min_samples || r.samples < p.min_samples || b.p50 <= 0.0 {
            continue;
        }
        let change_pct = (r.p50 - b.p50) / b.p50 * 100.0;
        let p_value = 1.0
            - normal_cdf(z_of(
                (b.p50, b.sigma, b.samples),
                (r.p50, r.sigma, r.samples),
            ));
        let severity = Severity::from_change(change_pct).filter(|_| p_value <= p.alpha);
        if let Some(severity) = severity {
            out.push(Regression {
                model: r.key.clone(),
                measure,
                browser: r.browser.clone(),
                backend: r.backend.clone(),
                baseline_p50: b.p50,
                recent_p50: r.p50,
                change_pct,
                p_value,
                severity,
                baseline_samples: b.samples,
                recent_samples: r.samples,
            });
        }
    }
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.change_pct.total_cmp(&a.change_pct))
    });
    out
}

/// Writes detected regressions into the `regressions` table.
pub async fn record_regressions(
    client: &clickhouse::Client,
    found: &[Regression],
) -> Result<(), clickhouse::error::Error> {
    if found.is_empty() {
        return Ok(());
    }
    let mut insert = client
        .insert::<RegressionRow>(<RegressionRow as crate::rows::TableRow>::TABLE)
        .await?;
    for r in found {
        insert.write(&r.to_row()).await?;
    }
    insert.end().await
}

/// Latency percentiles of one series in one time bucket.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct TrendPoint {
    /// Bucket start, seconds since the epoch.
    pub bucket: u32,
    pub model: String,
    pub browser: String,
    pub backend: String,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub requests: u64,
}

/// Latency p50/p95/p99 and request counts in `bucket`-sized steps over `window`.
pub async fn trends(
    client: &clickhouse::Client,
    f: Features,
    window: Duration,
    bucket: Duration,
) -> Result<Vec<TrendPoint>, clickhouse::error::Error> {
    let from = now_s().saturating_sub(window.as_secs());
    client.query(&trends_sql(f, from, bucket)).fetch_all().await
}

/// Latency percentiles per `bucket` since `from_s` (seconds since the epoch).
pub fn trends_sql(f: Features, from_s: u64, bucket: Duration) -> String {
    let t = f.time_seconds("event_time");
    let b = bucket.as_secs().max(1);
    let from = from_s;
    format!(
        "SELECT toUInt32(intDiv(toUInt32({t}), {b}) * {b}) AS bucket, model, browser, backend, \
         quantileExact(0.5)(latency_ms) AS p50, quantileExact(0.95)(latency_ms) AS p95, \
         quantileExact(0.99)(latency_ms) AS p99, count() AS requests \
         FROM inference_performance WHERE outcome = 'ok' AND toUInt32({t}) >= {from} \
         GROUP BY bucket, model, browser, backend ORDER BY bucket, model, browser, backend"
    )
}

#[cfg(test)]
mod tests;
