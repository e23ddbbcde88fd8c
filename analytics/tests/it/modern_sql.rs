//! The DDL webaccel generates for current ClickHouse releases and its analysis queries,
//! run in chdb (current ClickHouse in process, from PyPI): the modern path is valid SQL
//! even where only the old server runs.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use webaccel_analytics::overview::{latency_sql, summary_sql, throughput_sql};
use webaccel_analytics::queries::{Measure, aggregate_sql, measure_sql, trends_sql};
use webaccel_analytics::schema::migrations;
use webaccel_analytics::server::Features;

/// Runs chdb_check.py with `spec` on its stdin; its JSON answer.
fn chdb(spec: &serde_json::Value) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chdb_check.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "chdb refused the SQL (is chdb-core installed? scripts/setup.sh installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Sends the modern DDL and `queries` to chdb; returns the rows each query gave.
fn run_in_chdb(queries: &[String]) -> Vec<u64> {
    let f = Features::from_version("26.9.2");
    let result = chdb(&serde_json::json!({
        "ddl": migrations(f).into_iter().map(|m| m.sql).collect::<Vec<_>>(),
        "queries": queries,
    }));
    result["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// What a migrator that lost a race relies on, on the current engine: each migration's
/// outcome query says 0 before it and 1 after, and still 1 when a second run of the
/// statement (another migrator's) is refused.
#[test]
fn migration_outcomes_are_seen_in_chdb() {
    let all = migrations(Features::from_version("26.9.2"));
    let result = chdb(&serde_json::json!({
        "migrations": all.iter().map(|m| serde_json::json!({"sql": m.sql, "exists": m.outcome.exists_sql()})).collect::<Vec<_>>(),
    }));
    let outcomes = result["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), all.len());
    for (m, seen) in all.iter().zip(outcomes) {
        let seen: (u64, u64, u64, bool) = serde_json::from_value(seen.clone()).unwrap();
        assert_eq!((seen.0, seen.1, seen.2), (0, 1, 1), "{}: {seen:?}", m.name);
        // CREATE TABLE IF NOT EXISTS is accepted twice; a second ADD COLUMN is refused.
        let adds = matches!(
            m.outcome,
            webaccel_analytics::schema::Outcome::Column { .. }
        );
        assert_eq!(seen.3, adds, "{}", m.name);
    }
}

/// Expands the Grafana ClickHouse data source's macros the way it does, for a one-hour
/// range and one-minute buckets.
fn expand_grafana_macros(sql: &str) -> String {
    let mut out = sql.replace("$__interval_s", "60");
    for (name, expand) in [
        (
            "$__timeFilter(",
            "{c} >= now() - INTERVAL 1 HOUR AND {c} <= now()",
        ),
        (
            "$__timeInterval(",
            "toStartOfInterval(toDateTime({c}), INTERVAL 60 second)",
        ),
    ] {
        while let Some(start) = out.find(name) {
            let arg_start = start + name.len();
            let end = arg_start + out[arg_start..].find(')').unwrap();
            let column = out[arg_start..end].trim().to_owned();
            out.replace_range(start..=end, &expand.replace("{c}", &column));
        }
    }
    out
}

#[test]
fn grafana_dashboard_queries_run_on_the_modern_schema() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/webaccel.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let queries: Vec<String> = panels
        .iter()
        .map(|p| {
            let sql = p["targets"][0]["rawSql"].as_str().unwrap();
            assert!(
                sql.contains("$__timeFilter("),
                "{}: the range must filter",
                p["title"]
            );
            assert_eq!(p["datasource"]["type"], "grafana-clickhouse-datasource");
            expand_grafana_macros(sql)
        })
        .collect();
    let rows = run_in_chdb(&queries);
    assert_eq!(rows.len(), panels.len());
    // The latency panel sees the rows chdb_check.py inserted.
    assert!(rows[0] > 0, "{rows:?}");
}

#[test]
fn modern_ddl_and_queries_run_in_chdb() {
    let f = Features::from_version("26.9.2");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let rows = run_in_chdb(&[
        aggregate_sql(f, "model", "1", now - 3600, now + 1),
        aggregate_sql(f, "task", "1", now - 3600, now + 1),
        trends_sql(f, now - 3600, Duration::from_secs(60)),
        summary_sql(f, now - 3600),
        latency_sql(f, now - 3600, Duration::from_secs(60), false),
        throughput_sql(f, now - 3600, false),
        measure_sql(
            f,
            Measure::TimeToFirstToken,
            "model",
            "1",
            now - 3600,
            now + 1,
        ),
        measure_sql(f, Measure::InterToken, "task", "1", now - 3600, now + 1),
    ]);
    // Two models x two backends, one task x two backends, and some trend buckets;
    // one summary row, latency buckets of both models, one browser x two backends.
    assert_eq!(rows[..2], [4, 2], "{rows:?}");
    assert!(rows[2] >= 2, "{rows:?}");
    assert_eq!(rows[3], 1, "{rows:?}");
    assert!(rows[4] >= 2, "{rows:?}");
    assert_eq!(rows[5], 2, "{rows:?}");
    // Generations: two models on one backend; all of them one task.
    assert_eq!(rows[6..], [2, 1], "{rows:?}");
}
