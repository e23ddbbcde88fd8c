//! `webaccel recommend`, `regressions` and `sql` against a real ClickHouse server with
//! synthetic metrics whose answers are known.

use std::process::Command;

use webaccel_analytics::local::LocalClickHouse;
use webaccel_analytics::rows::{InferenceRow, now_ms};
use webaccel_analytics::schema::migrate;

fn series<'a>(
    model: &'a str,
    backend: &'a str,
    ago_s: i64,
    n: i64,
    center: f64,
) -> impl Iterator<Item = InferenceRow> + 'a {
    (0..n).map(move |k| {
        // A deterministic spread of +-5 %.
        let latency = center * (0.95 + 0.1 * ((k * 37 % 100) as f64 / 100.0));
        InferenceRow::synthetic(
            model,
            "chromium",
            backend,
            now_ms() - ago_s * 1000 - (k % 60) * 1000,
            latency,
        )
    })
}

fn webaccel(ch: &LocalClickHouse, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_webaccel"))
        .args([
            "--clickhouse-url",
            &ch.url(),
            "--clickhouse-database",
            "cli_test",
        ])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn recommend_regressions_and_read_only_sql() {
    let ch = LocalClickHouse::start().await.unwrap();
    let settings = ch.settings("cli_test");
    migrate(&settings).await.unwrap();
    let client = settings.client(true);
    let mut insert = client
        .insert::<InferenceRow>("inference_performance")
        .await
        .unwrap();
    let rows = series("m1", "webgpu", 300, 200, 3.0)
        .chain(series("m1", "wasm", 300, 200, 5.0))
        .chain(series("m2", "wasm", 7200, 300, 10.0))
        .chain(series("m2", "wasm", 600, 200, 16.0));
    for r in rows {
        insert.write(&r).await.unwrap();
    }
    insert.end().await.unwrap();

    let (ok, out, err) = webaccel(&ch, &["recommend", "--window", "1h", "--json"]);
    assert!(ok, "{err}");
    let recs: serde_json::Value = serde_json::from_str(&out).unwrap();
    let m1 = recs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "m1")
        .unwrap();
    assert_eq!(
        (m1["browser"].as_str(), m1["backend"].as_str()),
        (Some("chromium"), Some("webgpu")),
        "{out}"
    );
    let (ok, table, _) = webaccel(&ch, &["recommend", "--window", "1h"]);
    assert!(
        ok && table
            .lines()
            .any(|l| l.starts_with("m1") && l.contains("webgpu")),
        "{table}"
    );

    let (ok, out, err) = webaccel(
        &ch,
        &[
            "regressions",
            "--recent",
            "30m",
            "--baseline",
            "3h",
            "--record",
        ],
    );
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains("m2"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.starts_with("critical"), "{out}");
    assert_eq!(
        ch.query("SELECT model, severity FROM cli_test.regressions")
            .await
            .unwrap(),
        "m2\tcritical"
    );

    let (ok, out, err) = webaccel(
        &ch,
        &[
            "sql",
            "SELECT count() FROM inference_performance",
            "--format",
            "TSV",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "900");
    let (ok, _, err) = webaccel(&ch, &["sql", "DROP TABLE inference_performance"]);
    assert!(!ok);
    assert!(err.contains("'DROP' statements are refused"), "{err}");
    // The server enforces it too, for what slips past the first word.
    let (ok, _, err) = webaccel(
        &ch,
        &["sql", "SELECT * FROM numbers(1) INTO OUTFILE '/tmp/x'"],
    );
    assert!(!ok, "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_webaccel"))
        .args(["--clickhouse-url", "localhost:1", "sql", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("(setting --clickhouse-url / WEBACCEL_CLICKHOUSE_URL)"),
        "{err}"
    );
}
