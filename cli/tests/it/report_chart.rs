//! `webaccel report` and `webaccel chart` against a real ClickHouse server with
//! synthetic metrics whose answers are known: the files exist, the HTML parses into the
//! expected tables with the charts inline, the PNG decodes to a drawing, the SVG is XML
//! with plotted lines and bars.

use std::path::Path;
use std::process::Command;

use scraper::{Html, Selector};
use webaccel_analytics::local::LocalClickHouse;
use webaccel_analytics::rows::{GenerationRow, InferenceRow, now_ms};
use webaccel_analytics::schema::migrate;

const DB: &str = "report_test";

/// `n` rows of one series around `center` ms (+-5 %), over one minute ending `ago_s`
/// seconds ago.
fn series(
    model: &str,
    browser: &str,
    backend: &str,
    ago_s: i64,
    n: i64,
    center: f64,
) -> Vec<InferenceRow> {
    (0..n)
        .map(|k| {
            let latency = center * (0.95 + 0.1 * ((k * 37 % 100) as f64 / 100.0));
            let at = now_ms() - ago_s * 1000 - (k % 60) * 1000;
            InferenceRow::synthetic(model, browser, backend, at, latency)
        })
        .collect()
}

fn webaccel(ch: &LocalClickHouse, args: &[&str]) -> (bool, String, String) {
    webaccel_in(ch, DB, args)
}

fn webaccel_in(ch: &LocalClickHouse, db: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_webaccel"))
        .args(["--clickhouse-url", &ch.url(), "--clickhouse-database", db])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

fn cells(doc: &Html, s: &str) -> Vec<String> {
    doc.select(&sel(s))
        .map(|e| e.text().collect::<String>())
        .collect()
}

/// Parses an SVG file's text as XML and counts the elements named `tag`.
fn svg_count(svg: &str, tag: &str) -> usize {
    let doc = roxmltree::Document::parse(svg).unwrap();
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants().filter(|n| n.has_tag_name(tag)).count()
}

/// The trimmed text of every SVG `<text>` element.
fn svg_texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(|t| t.trim().to_owned())
        .collect()
}

/// Decodes a PNG; returns its size and how many distinct colours it has.
fn png_stats(path: &Path) -> (u32, u32, usize) {
    let file = std::fs::File::open(path).unwrap();
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    (info.width, info.height, colours.len())
}

#[tokio::test]
async fn reports_and_charts_from_real_metrics() {
    let ch = LocalClickHouse::start().await.unwrap();
    let settings = ch.settings(DB);
    migrate(&settings).await.unwrap();
    let client = settings.client(true);
    let mut rows = Vec::new();
    // m1: webgpu in Chromium (3 ms) beats wasm in Firefox (6 ms), over ten buckets.
    for i in 0..10 {
        rows.extend(series("m1", "chromium", "webgpu", 300 + i * 300, 40, 3.0));
        rows.extend(series("m1", "firefox", "wasm", 300 + i * 300, 40, 6.0));
    }
    // 20 failures, and m2 60 % slower in the last ten minutes than two hours ago.
    rows.extend(
        series("m1", "firefox", "wasm", 400, 20, 6.0)
            .into_iter()
            .map(|r| InferenceRow {
                outcome: "error".into(),
                error_category: "timeout".into(),
                ..r
            }),
    );
    rows.extend(series("m2", "chromium", "wasm", 7200, 300, 10.0));
    rows.extend(series("m2", "chromium", "wasm", 600, 200, 16.0));
    let mut insert = client
        .insert::<InferenceRow>("inference_performance")
        .await
        .unwrap();
    for r in &rows {
        insert.write(r).await.unwrap();
    }
    insert.end().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let regression_args = ["--recent", "30m", "--baseline", "3h", "--bucket", "5m"];

    // HTML: self-contained, the tables and both charts inline.
    let html_path = path("report.html");
    let (ok, out, err) = webaccel(
        &ch,
        &[&["report", "-o", &html_path][..], &regression_args].concat(),
    );
    assert!(ok, "{err}");
    assert!(err.is_empty(), "no progress line off a terminal: {err:?}");
    assert!(
        out.contains("1320 requests, 2 recommendations, 1 regressions, 2 charts"),
        "{out}"
    );
    let doc = Html::parse_document(&std::fs::read_to_string(&html_path).unwrap());
    let summary = cells(&doc, "table#summary td");
    let value = |k: &str| summary[summary.iter().position(|c| c == k).unwrap() + 1].clone();
    assert_eq!(value("Requests"), "1320");
    assert_eq!(value("Errors"), "20");
    assert_eq!(value("Error rate"), "1.52 %");
    assert_eq!(value("Models"), "2");
    let m1 = cells(&doc, "table#recommendations tbody tr:first-child td");
    assert_eq!(m1[..3], ["m1", "chromium", "webgpu"], "{m1:?}");
    assert!(m1[7].starts_with("firefox/wasm"), "runner-up: {m1:?}");
    let reg = cells(&doc, "table#regressions tbody td");
    assert_eq!(reg[..2], ["critical", "m2"], "{reg:?}");
    assert!(doc.select(&sel("table#trends tbody tr")).count() >= 10);
    let svgs: Vec<String> = doc.select(&sel("figure > svg")).map(|e| e.html()).collect();
    assert_eq!(svgs.len(), 2, "two inline charts");
    // Latency: three percentiles per model; throughput: one bar per browser/backend.
    assert!(doc.select(&sel("figure svg polyline")).count() >= 6);
    assert_eq!(
        doc.select(&sel("img, script, link")).count(),
        0,
        "self-contained"
    );

    // Markdown to a file: chart files beside it, linked.
    let md_path = path("weekly.md");
    let (ok, _, err) = webaccel(
        &ch,
        &[&["report", "-o", &md_path][..], &regression_args].concat(),
    );
    assert!(ok, "{err}");
    let md = std::fs::read_to_string(&md_path).unwrap();
    assert!(md.contains("| m1 | chromium | webgpu |"), "{md}");
    assert!(md.contains("| critical | m2 | chromium | wasm |"), "{md}");
    for slug in ["latency", "throughput"] {
        assert!(md.contains(&format!("(<weekly-{slug}.svg>)")), "{md}");
        let svg = std::fs::read_to_string(path(&format!("weekly-{slug}.svg"))).unwrap();
        assert!(svg_count(&svg, "polyline") + svg_count(&svg, "rect") > 3);
    }
    // To stdout: charts embedded as data URIs.
    let (ok, md, err) = webaccel(&ch, &["report", "--format", "md", "--window", "2h"]);
    assert!(ok, "{err}");
    assert_eq!(
        md.matches("](data:image/svg+xml;base64,").count(),
        2,
        "{md}"
    );

    // Charts.
    let png_path = path("latency.png");
    let (ok, out, err) = webaccel(&ch, &["chart", "--kind", "latency", "-o", &png_path]);
    assert!(ok, "{err}");
    assert!(out.contains("2 models"), "{out}");
    let (w, h, colours) = png_stats(Path::new(&png_path));
    assert_eq!((w, h), (1000, 60 + 230 * 2));
    assert!(
        colours > 20,
        "anti-aliased lines and text in colour: {colours}"
    );

    let svg_path = path("throughput.svg");
    let (ok, out, err) = webaccel(
        &ch,
        &["chart", "--kind", "throughput", "-o", &svg_path, "--json"],
    );
    assert!(ok, "{err}");
    let meta: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (meta["format"].as_str(), meta["series"].as_u64()),
        (Some("svg"), Some(3))
    );
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let labels = svg_texts(&svg);
    for pair in ["chromium/webgpu", "firefox/wasm", "chromium/wasm"] {
        assert!(labels.iter().any(|l| l == pair), "{labels:?}");
    }
    assert!(svg_count(&svg, "rect") >= 4, "background and three bars");

    let one = path("m2.svg");
    let (ok, out, err) = webaccel(
        &ch,
        &[
            "chart", "--model", "m2", "--window", "3h", "--bucket", "10m", "-o", &one,
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("1 models"), "{out}");
    let labels = svg_texts(&std::fs::read_to_string(&one).unwrap());
    assert!(labels.iter().any(|l| l == "m2"), "{labels:?}");
    assert!(!labels.iter().any(|l| l == "m1"), "{labels:?}");

    // Refusals name the cause.
    let (ok, _, err) = webaccel(&ch, &["chart", "--model", "nope", "-o", &path("x.png")]);
    assert!(!ok && err.contains("nothing to chart"), "{err}");
    assert!(!Path::new(&path("x.png")).exists());
    let (ok, _, err) = webaccel(&ch, &["chart", "-o", &path("x.jpg")]);
    assert!(!ok && err.contains("give --format png|svg"), "{err}");
}

#[tokio::test]
async fn text_generation_charts_show_first_token_and_inter_token_times() {
    let ch = LocalClickHouse::start().await.unwrap();
    let settings = ch.settings("chart_generation_test");
    migrate(&settings).await.unwrap();
    let client = settings.client(true);
    let mut insert = client
        .insert::<GenerationRow>("generation_performance")
        .await
        .unwrap();
    for k in 0..60u64 {
        insert
            .write(&GenerationRow {
                event_time: now_ms() - i64::try_from(k * 20_000).unwrap(),
                row_id: k + 1,
                pool: "p".into(),
                pod: "a".into(),
                browser: "chromium".into(),
                browser_version: "Chrome/156".into(),
                model: "llm".into(),
                backend: "wasm".into(),
                adapter: String::new(),
                adapter_kind: "none".into(),
                kv_cache: "int8".into(),
                prompt_tokens: 16,
                completion_tokens: 64,
                queue_ms: 0.0,
                prefill_ms: 5.0,
                ttft_ms: 12.0,
                inter_token_p50_ms: 2.0,
                inter_token_p99_ms: 6.0,
                tokens_per_s: 500.0,
                max_batch: 4,
                kv_bytes: 8256,
                finish_reason: "length".into(),
                outcome: "ok".into(),
                error_category: String::new(),
            })
            .await
            .unwrap();
    }
    insert.end().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (kind, title) in [
        ("ttft", "Time to first token percentiles (ms), time in UTC"),
        (
            "inter-token",
            "Time between tokens percentiles (ms), time in UTC",
        ),
    ] {
        let out_path = dir.path().join(format!("{kind}.svg")).display().to_string();
        let (ok, out, err) = webaccel_in(
            &ch,
            "chart_generation_test",
            &[
                "chart", "--kind", kind, "--window", "1h", "-o", &out_path, "--json",
            ],
        );
        assert!(ok, "{kind}: {err}");
        let meta: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (meta["kind"].as_str(), meta["series"].as_u64()),
            (Some(kind), Some(1))
        );
        let labels = svg_texts(&std::fs::read_to_string(&out_path).unwrap());
        assert!(labels.iter().any(|l| l == title), "{labels:?}");
        assert!(labels.iter().any(|l| l == "llm"), "{labels:?}");
    }
    // Without generations the chart says so.
    let (ok, _, err) = webaccel_in(
        &ch,
        "chart_generation_test",
        &[
            "chart",
            "--kind",
            "ttft",
            "--model",
            "nope",
            "-o",
            &dir.path().join("x.svg").display().to_string(),
        ],
    );
    assert!(!ok && err.contains("no successful generations"), "{err}");
}
