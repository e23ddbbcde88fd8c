//! The figures behind reports and charts, as typed queries: a summary of a window
//! (requests, errors, what ran), latency percentiles per model over time, and
//! throughput per browser and backend. Like [`crate::queries`], the SQL runs on
//! ClickHouse 18.16 and current releases.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::queries::Measure;
use crate::rows::now_ms;
use crate::server::Features;

fn now_s() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or(0)
}

/// `AND model = ?` when a model filter is bound, so the model name travels as a bound
/// (escaped) value rather than as text pasted into the SQL.
fn model_clause(filtered: bool) -> &'static str {
    if filtered { " AND model = ?" } else { "" }
}

/// Requests, errors and what ran in one window.
#[derive(Debug, Clone, Default, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub models: u64,
    pub browsers: u64,
    /// First and last request, seconds since the epoch (0 without requests).
    pub first_s: u32,
    pub last_s: u32,
}

impl Summary {
    /// Errors per request (0 without requests).
    #[allow(clippy::cast_precision_loss)]
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// The summary of every request since `from_s` (seconds since the epoch).
pub fn summary_sql(f: Features, from_s: u64) -> String {
    let t = f.time_seconds("event_time");
    format!(
        "SELECT count() AS requests, countIf(outcome != 'ok') AS errors, \
         uniqExact(model) AS models, uniqExact(browser) AS browsers, \
         toUInt32(if(count() = 0, 0, toUInt32(min({t})))) AS first_s, \
         toUInt32(if(count() = 0, 0, toUInt32(max({t})))) AS last_s \
         FROM inference_performance WHERE toUInt32({t}) >= {from_s}"
    )
}

/// Requests and errors over the last `window`.
pub async fn summary(
    client: &clickhouse::Client,
    f: Features,
    window: Duration,
) -> Result<Summary, clickhouse::error::Error> {
    let from = now_s().saturating_sub(window.as_secs());
    client.query(&summary_sql(f, from)).fetch_one().await
}

/// Latency percentiles of one model's successful requests in one time bucket, over
/// every browser and backend it ran on.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct LatencyPoint {
    /// Bucket start, seconds since the epoch.
    pub bucket: u32,
    pub model: String,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub requests: u64,
}

/// Per-model latency p50/p90/p99 per `bucket` since `from_s`; with `model_filter`
/// the SQL takes the model as one bound parameter (`?`).
pub fn latency_sql(f: Features, from_s: u64, bucket: Duration, model_filter: bool) -> String {
    measure_sql(f, Measure::Latency, from_s, bucket, model_filter)
}

/// [`latency_sql`] of any measure (for text generation: time to first token, time
/// between tokens; `requests` then counts generations).
pub fn measure_sql(
    f: Features,
    measure: Measure,
    from_s: u64,
    bucket: Duration,
    model_filter: bool,
) -> String {
    let t = f.time_seconds("event_time");
    let b = bucket.as_secs().max(1);
    let m = model_clause(model_filter);
    let (table, c) = (measure.table(), measure.column());
    format!(
        "SELECT toUInt32(intDiv(toUInt32({t}), {b}) * {b}) AS bucket, model, \
         quantileExact(0.5)({c}) AS p50, quantileExact(0.9)({c}) AS p90, \
         quantileExact(0.99)({c}) AS p99, count() AS requests \
         FROM {table} \
         WHERE outcome = 'ok' AND toUInt32({t}) >= {from_s}{m} \
         GROUP BY bucket, model ORDER BY model, bucket"
    )
}

/// Latency percentiles per model in `bucket` steps over the last `window`, of one
/// model or all.
pub async fn latency(
    client: &clickhouse::Client,
    f: Features,
    window: Duration,
    bucket: Duration,
    model: Option<&str>,
) -> Result<Vec<LatencyPoint>, clickhouse::error::Error> {
    measured(client, f, Measure::Latency, window, bucket, model).await
}

/// [`latency`] of any measure.
pub async fn measured(
    client: &clickhouse::Client,
    f: Features,
    measure: Measure,
    window: Duration,
    bucket: Duration,
    model: Option<&str>,
) -> Result<Vec<LatencyPoint>, clickhouse::error::Error> {
    let from = now_s().saturating_sub(window.as_secs());
    let mut q = client.query(&measure_sql(f, measure, from, bucket, model.is_some()));
    if let Some(m) = model {
        q = q.bind(m);
    }
    q.fetch_all().await
}

/// Served requests of one browser and backend over a window.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct Throughput {
    pub browser: String,
    pub backend: String,
    /// Successful requests.
    pub requests: u64,
    pub errors: u64,
    /// Successful requests per second while it served: `requests` over the whole
    /// seconds from its first to its last request in the window (idle time before
    /// and after does not dilute it; the same measure as recommendations use).
    pub rps: f64,
    /// Median latency of the successful requests (0 without any).
    pub p50: f64,
}

/// Throughput per browser and backend since `from_s`, fastest first; with
/// `model_filter` the SQL takes the model as one bound parameter (`?`).
pub fn throughput_sql(f: Features, from_s: u64, model_filter: bool) -> String {
    let t = f.time_seconds("event_time");
    let m = model_clause(model_filter);
    format!(
        "SELECT browser, backend, countIf(outcome = 'ok') AS requests, \
         countIf(outcome != 'ok') AS errors, \
         countIf(outcome = 'ok') / greatest(1, toUInt32(max({t})) - toUInt32(min({t})) + 1) AS rps, \
         if(countIf(outcome = 'ok') = 0, 0, quantileExactIf(0.5)(latency_ms, outcome = 'ok')) AS p50 \
         FROM inference_performance WHERE toUInt32({t}) >= {from_s}{m} \
         GROUP BY browser, backend ORDER BY rps DESC, browser, backend"
    )
}

/// Throughput per browser and backend over the last `window`, of one model or all.
pub async fn throughput(
    client: &clickhouse::Client,
    f: Features,
    window: Duration,
    model: Option<&str>,
) -> Result<Vec<Throughput>, clickhouse::error::Error> {
    let from = now_s().saturating_sub(window.as_secs());
    let mut q = client.query(&throughput_sql(f, from, model.is_some()));
    if let Some(m) = model {
        q = q.bind(m);
    }
    q.fetch_all().await
}

/// One change of a fleet's size: a pool's browsers (`model` empty) or a model's replicas,
/// from `pool_events` (`scale` and `model_scale` rows).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct FleetPoint {
    /// Seconds since the epoch.
    pub t: i64,
    pub pool: String,
    pub model: String,
    /// The size it went to.
    pub replicas: u32,
    /// The size it came from.
    pub from_replicas: u32,
}

pub fn fleet_sql(f: Features, from_s: u64) -> String {
    let t = f.time_seconds("event_time");
    format!(
        "SELECT toInt64({t}) AS t, pool, model, to_replicas AS replicas, from_replicas \
         FROM pool_events FINAL WHERE event IN ('scale', 'model_scale') AND toUInt32({t}) >= {from_s} \
         ORDER BY t, row_id"
    )
}

/// The pools' browsers and the models' replicas as they changed over the last `window`.
pub async fn fleet(
    client: &clickhouse::Client,
    f: Features,
    window: Duration,
) -> Result<Vec<FleetPoint>, clickhouse::error::Error> {
    let from = now_s().saturating_sub(window.as_secs());
    client.query(&fleet_sql(f, from)).fetch_all().await
}

/// A bucket size giving about `points` buckets over `window`, rounded to a whole
/// minute (or second, for windows under an hour), at least one second.
pub fn auto_bucket(window: Duration, points: u64) -> Duration {
    let raw = window.as_secs() / points.max(1);
    let step = if window.as_secs() >= 3600 { 60 } else { 1 };
    Duration::from_secs((raw / step * step).max(step))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rate_handles_an_empty_window() {
        assert!(Summary::default().error_rate().abs() < f64::EPSILON);
        let s = Summary {
            requests: 200,
            errors: 5,
            ..Summary::default()
        };
        assert!((s.error_rate() - 0.025).abs() < 1e-12);
    }

    #[test]
    fn model_filter_is_a_bound_parameter() {
        let f = Features::from_version("18.16.1");
        assert!(latency_sql(f, 0, Duration::from_secs(60), true).contains("AND model = ?"));
        assert!(!latency_sql(f, 0, Duration::from_secs(60), false).contains('?'));
        assert!(throughput_sql(f, 0, true).contains("AND model = ?"));
    }

    #[test]
    fn auto_bucket_rounds() {
        assert_eq!(
            auto_bucket(Duration::from_secs(24 * 3600), 48),
            Duration::from_secs(1800)
        );
        assert_eq!(
            auto_bucket(Duration::from_secs(600), 60),
            Duration::from_secs(10)
        );
        assert_eq!(
            auto_bucket(Duration::from_secs(5), 60),
            Duration::from_secs(1)
        );
        assert_eq!(
            auto_bucket(Duration::from_secs(7200), 7),
            Duration::from_secs(1020)
        );
    }
}
