//! Report rendering on fixed data: sections, tables, escaping of hostile names,
//! embedded charts, and the trends table's cap.

use base64::Engine as _;
use scraper::{Html, Selector};

use super::*;
use crate::queries::{Measure, Severity};

/// A name that breaks Markdown tables and HTML unless escaped.
const HOSTILE: &str = "evil|<script>alert('x')</script>&*";

fn fixture() -> ReportData {
    ReportData {
        generated_at_s: 1_700_000_000,
        server_version: "18.16".into(),
        window_s: 86_400,
        bucket_s: 3600,
        min_samples: 30,
        recent_s: 3600,
        baseline_s: 7 * 86_400,
        alpha: 0.01,
        summary: Summary {
            requests: 1000,
            errors: 25,
            models: 2,
            browsers: 1,
            first_s: 1_699_990_000,
            last_s: 1_699_999_000,
        },
        recommendations: vec![
            Recommendation {
                key: "m1".into(),
                measure: Measure::Latency,
                browser: "chromium".into(),
                backend: "webgpu".into(),
                p50_ms: 3.0,
                throughput_rps: 12.5,
                tokens_per_s: None,
                samples: 400,
                runner_up: Some(("chromium".into(), "wasm".into(), 5.0)),
                confidence: 0.9999,
            },
            Recommendation {
                key: HOSTILE.into(),
                measure: Measure::Latency,
                browser: "edge".into(),
                backend: "wasm".into(),
                p50_ms: 8.0,
                throughput_rps: 2.0,
                tokens_per_s: None,
                samples: 40,
                runner_up: None,
                confidence: 1.0,
            },
        ],
        regressions: vec![Regression {
            model: "m2".into(),
            measure: Measure::Latency,
            browser: "chromium".into(),
            backend: "wasm".into(),
            baseline_p50: 10.0,
            recent_p50: 16.0,
            change_pct: 60.0,
            p_value: 1e-9,
            severity: Severity::Critical,
            baseline_samples: 300,
            recent_samples: 200,
        }],
        trends: (0..3)
            .map(|i| TrendPoint {
                bucket: 1_699_990_000 + i * 3600,
                model: "m1".into(),
                browser: "chromium".into(),
                backend: "webgpu".into(),
                p50: 3.0,
                p95: 3.5,
                p99: 4.0,
                requests: 100,
            })
            .collect(),
        latency: vec![],
        latency_bucket_s: 60,
        throughput: vec![],
    }
}

fn svg_chart() -> ReportChart {
    ReportChart {
        title: "Latency <p50>".into(),
        embed: ChartEmbed::Svg(
            "<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"><path d=\"M0 0L5 5\"/></svg>\n"
                .into(),
        ),
    }
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

fn texts(doc: &Html, s: &str) -> Vec<String> {
    doc.select(&sel(s))
        .map(|e| e.text().collect::<String>())
        .collect()
}

#[test]
fn html_has_the_sections_tables_and_inline_chart() {
    let page = html(&fixture(), &[svg_chart()]);
    let doc = Html::parse_document(&page);
    assert!(doc.errors.is_empty(), "{:?}", doc.errors);
    for id in ["summary", "recommendations", "regressions", "trends"] {
        assert_eq!(doc.select(&sel(&format!("table#{id}"))).count(), 1, "{id}");
    }
    let summary = texts(&doc, "table#summary td");
    assert!(summary.contains(&"1000".to_owned()), "{summary:?}");
    assert!(summary.contains(&"2.50 %".to_owned()), "{summary:?}");
    let first_rec = texts(&doc, "table#recommendations tbody tr:first-child td");
    assert_eq!(first_rec[..3], ["m1", "chromium", "webgpu"]);
    let reg = texts(&doc, "table#regressions tbody td");
    assert_eq!((reg[0].as_str(), reg[7].as_str()), ("critical", "1.0e-9"));
    assert_eq!(doc.select(&sel("table#trends tbody tr")).count(), 3);
    // The chart is inline, without its XML prolog, with its drawing intact.
    assert_eq!(doc.select(&sel("figure svg path")).count(), 1);
    assert!(!page.contains("<?xml"));
    assert_eq!(texts(&doc, "figcaption"), ["Latency <p50>"]);
}

#[test]
fn html_escapes_names_from_the_data() {
    let page = html(&fixture(), &[]);
    let doc = Html::parse_document(&page);
    assert_eq!(doc.select(&sel("script")).count(), 0, "{page}");
    let cells = texts(&doc, "table#recommendations td");
    assert!(cells.contains(&HOSTILE.to_owned()), "{cells:?}");
    assert_eq!(doc.select(&sel("figure")).count(), 0);
}

#[test]
fn html_links_charts_that_are_files() {
    let chart = ReportChart {
        title: "t\"x".into(),
        embed: ChartEmbed::Link("a b\".svg".into()),
    };
    let doc = Html::parse_document(&html(&fixture(), &[chart]));
    let img = doc.select(&sel("figure img")).next().unwrap();
    assert_eq!(img.value().attr("src"), Some("a b\".svg"));
    assert_eq!(img.value().attr("alt"), Some("t\"x"));
}

#[test]
fn markdown_has_the_sections_and_escaped_tables() {
    let md = markdown(&fixture(), &[svg_chart()]);
    for h in [
        "## Summary",
        "## Recommendations per model",
        "## Regressions",
        "## Charts",
        "## Trends",
    ] {
        assert!(md.contains(&format!("\n{h}\n")), "{h}\n{md}");
    }
    assert!(
        md.contains("| m1 | chromium | webgpu | 3.000 | 12.5 | 400 | 100.0 % |"),
        "{md}"
    );
    assert!(md.contains("| critical | m2 | chromium | wasm |"), "{md}");
    // Every row of a table has as many unescaped `|` as its header.
    for table in md.split("\n\n").filter(|b| b.starts_with('|')) {
        let pipes = |l: &str| l.replace("\\|", "").matches('|').count();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines.iter().all(|l| pipes(l) == pipes(lines[0])), "{table}");
    }
    assert!(
        md.contains(r"evil\|\<script\>alert('x')\</script\>\&\*"),
        "{md}"
    );
    let img = md.lines().find(|l| l.starts_with("![Latency")).unwrap();
    assert!(
        img.starts_with(r"![Latency \<p50\>](data:image/svg+xml;base64,"),
        "{img}"
    );
    let b64 = &img[img.find("base64,").unwrap() + 7..img.len() - 1];
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert!(String::from_utf8(decoded).unwrap().contains("<path"));
}

#[test]
fn markdown_links_chart_files_in_angle_brackets() {
    let chart = ReportChart {
        title: "Throughput".into(),
        embed: ChartEmbed::Link("my report-throughput.svg".into()),
    };
    let md = markdown(&fixture(), &[chart]);
    assert!(
        md.contains("![Throughput](<my report-throughput.svg>)"),
        "{md}"
    );
}

#[test]
fn empty_window_says_so() {
    let d = ReportData {
        summary: Summary::default(),
        recommendations: vec![],
        regressions: vec![],
        trends: vec![],
        ..fixture()
    };
    let md = markdown(&d, &[]);
    assert!(
        md.contains("| First to last request | no requests |"),
        "{md}"
    );
    assert!(md.contains("No recommendation: fewer than 30"), "{md}");
    assert!(md.contains("No significant slowdown."), "{md}");
    assert!(md.contains("No successful requests in the window."), "{md}");
    assert!(!md.contains("## Charts"));
    let doc = Html::parse_document(&html(&d, &[]));
    assert_eq!(doc.select(&sel("table")).count(), 1, "only the summary");
}

#[test]
fn trends_table_keeps_the_latest_rows() {
    let mut d = fixture();
    let proto = d.trends[0].clone();
    d.trends = (0..250)
        .map(|i| TrendPoint {
            bucket: 1_699_000_000 + i * 60,
            requests: u64::from(i),
            ..proto.clone()
        })
        .collect();
    let doc = Html::parse_document(&html(&d, &[]));
    let rows = doc.select(&sel("table#trends tbody tr")).count();
    assert_eq!(rows, MAX_TREND_ROWS);
    let last = texts(&doc, "table#trends tbody tr:last-child td");
    assert_eq!(last.last().map(String::as_str), Some("249"));
    assert!(markdown(&d, &[]).contains("The 50 oldest rows are left out."));
}
