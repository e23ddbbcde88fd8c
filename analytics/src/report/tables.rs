//! The report's tables as formatted, unescaped cells, shared by the Markdown and
//! HTML renderers.

use std::time::{Duration, UNIX_EPOCH};

use super::{MAX_TREND_ROWS, ReportData};

/// `2025-01-31 12:34:56 UTC`.
pub(super) fn time(secs: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

pub(super) fn dur(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// A table: header and rows of already formatted (unescaped) cells.
pub(super) struct Table {
    pub(super) header: Vec<&'static str>,
    pub(super) rows: Vec<Vec<String>>,
}

pub(super) fn summary_table(d: &ReportData) -> Table {
    let s = &d.summary;
    let period = if s.requests == 0 {
        "no requests".to_owned()
    } else {
        format!(
            "{} to {}",
            time(u64::from(s.first_s)),
            time(u64::from(s.last_s))
        )
    };
    let rows = [
        (
            "Window",
            format!("last {} (to {})", dur(d.window_s), time(d.generated_at_s)),
        ),
        ("First to last request", period),
        ("Requests", s.requests.to_string()),
        ("Errors", s.errors.to_string()),
        ("Error rate", format!("{:.2} %", s.error_rate() * 100.0)),
        ("Models", s.models.to_string()),
        ("Browsers", s.browsers.to_string()),
        ("ClickHouse", d.server_version.clone()),
    ];
    Table {
        header: vec!["Figure", "Value"],
        rows: rows
            .into_iter()
            .map(|(k, v)| vec![k.to_owned(), v])
            .collect(),
    }
}

pub(super) fn recommendations_table(d: &ReportData) -> Table {
    Table {
        header: vec![
            "Model",
            "Browser",
            "Backend",
            "p50 ms",
            "Requests/s",
            "Samples",
            "Confidence",
            "Runner-up",
        ],
        rows: d
            .recommendations
            .iter()
            .map(|r| {
                vec![
                    r.key.clone(),
                    r.browser.clone(),
                    r.backend.clone(),
                    format!("{:.3}", r.p50_ms),
                    format!("{:.1}", r.throughput_rps),
                    r.samples.to_string(),
                    format!("{:.1} %", r.confidence * 100.0),
                    r.runner_up.as_ref().map_or_else(
                        || "none".to_owned(),
                        |(b, k, p)| format!("{b}/{k} ({p:.3} ms)"),
                    ),
                ]
            })
            .collect(),
    }
}

/// A p-value; below what a double's normal CDF can resolve it is a bound, not 0.
fn p_text(p: f64) -> String {
    if p < 1e-12 {
        "< 1e-12".to_owned()
    } else {
        format!("{p:.1e}")
    }
}

pub(super) fn regressions_table(d: &ReportData) -> Table {
    Table {
        header: vec![
            "Severity",
            "Model",
            "Browser",
            "Backend",
            "Baseline p50 ms",
            "Recent p50 ms",
            "Change",
            "p-value",
        ],
        rows: d
            .regressions
            .iter()
            .map(|r| {
                vec![
                    r.severity.as_str().to_owned(),
                    r.model.clone(),
                    r.browser.clone(),
                    r.backend.clone(),
                    format!("{:.3}", r.baseline_p50),
                    format!("{:.3}", r.recent_p50),
                    format!("{:+.1} %", r.change_pct),
                    p_text(r.p_value),
                ]
            })
            .collect(),
    }
}

/// The most recent [`MAX_TREND_ROWS`] trend rows, and how many were left out.
pub(super) fn trends_table(d: &ReportData) -> (Table, usize) {
    let skip = d.trends.len().saturating_sub(MAX_TREND_ROWS);
    let rows = d.trends[skip..]
        .iter()
        .map(|t| {
            vec![
                time(u64::from(t.bucket)),
                t.model.clone(),
                t.browser.clone(),
                t.backend.clone(),
                format!("{:.3}", t.p50),
                format!("{:.3}", t.p95),
                format!("{:.3}", t.p99),
                t.requests.to_string(),
            ]
        })
        .collect();
    let header = vec![
        "Bucket start",
        "Model",
        "Browser",
        "Backend",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "Requests",
    ];
    (Table { header, rows }, skip)
}

pub(super) fn regressions_note(d: &ReportData) -> String {
    format!(
        "The last {} against the {} before it, per model, browser and backend \
         (at least {} samples each, significant at p <= {}).",
        dur(d.recent_s),
        dur(d.baseline_s),
        d.min_samples,
        d.alpha
    )
}
