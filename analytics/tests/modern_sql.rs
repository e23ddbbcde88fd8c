//! The DDL webaccel generates for current ClickHouse releases and its analysis queries,
//! run in chdb (current ClickHouse in process, from PyPI): the modern path is valid SQL
//! even where only the old server runs.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use webaccel_analytics::queries::{aggregate_sql, trends_sql};
use webaccel_analytics::schema::migrations;
use webaccel_analytics::server::Features;

#[test]
fn modern_ddl_and_queries_run_in_chdb() {
    let f = Features::from_version("26.9.2");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let spec = serde_json::json!({
        "ddl": migrations(f).into_iter().map(|m| m.sql).collect::<Vec<_>>(),
        "queries": [
            aggregate_sql(f, "model", "1", now - 3600, now + 1),
            aggregate_sql(f, "task", "1", now - 3600, now + 1),
            trends_sql(f, now - 3600, Duration::from_secs(60)),
        ],
    });
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
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Two models x two backends, one task x two backends, and some trend buckets.
    assert_eq!(result["rows"][0], 4, "{result}");
    assert_eq!(result["rows"][1], 2, "{result}");
    assert!(result["rows"][2].as_u64().unwrap() >= 2, "{result}");
}
