//! Chart layout helpers, and rendering with the system font (scripts/setup.sh
//! installs one): SVG that is XML with the lines and escaped labels, PNG that decodes.

use super::*;

const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);

fn point(bucket: u32, model: &str, p50: f64) -> LatencyPoint {
    LatencyPoint {
        bucket,
        model: model.into(),
        p50,
        p90: p50 * 1.5,
        p99: p50 * 2.0,
        requests: 10,
    }
}

#[test]
fn format_from_extension() {
    assert_eq!(
        ChartFormat::from_path(Path::new("a/b.PNG")),
        Some(ChartFormat::Png)
    );
    assert_eq!(
        ChartFormat::from_path(Path::new("x.svg")),
        Some(ChartFormat::Svg)
    );
    assert_eq!(ChartFormat::from_path(Path::new("x.jpg")), None);
    assert_eq!(ChartFormat::from_path(Path::new("x")), None);
}

#[test]
fn time_ticks_are_round() {
    let want: Vec<i64> = (0..9).map(|k| 1_020 + 60 * k).collect();
    assert_eq!(time_ticks(1_000, 1_500, 8), want);
    let days = time_ticks(1_700_000_000, 1_700_000_000 + 3 * 86_400, 8);
    assert_eq!(days.len(), 6, "{days:?}");
    assert!(days.iter().all(|t| t % 43_200 == 0), "{days:?}");
}

#[test]
fn time_labels_are_utc() {
    assert_eq!(time_label(1_700_000_000, false), "22:13");
    assert_eq!(time_label(1_700_000_000, true), "11-14 22:13");
}

#[test]
fn busiest_models_get_the_panels() {
    let mut pts: Vec<LatencyPoint> = (0..8)
        .map(|i| LatencyPoint {
            requests: i,
            ..point(60, &format!("m{i}"), 1.0)
        })
        .collect();
    pts.push(point(0, "m7", 2.0));
    let chart = LatencyChart::new(&pts, MINUTE, "Latency");
    assert_eq!(chart.omitted, 2);
    assert_eq!(chart.panels[0].0, "m7");
    assert_eq!(
        chart.panels[0]
            .1
            .iter()
            .map(|p| p.bucket)
            .collect::<Vec<_>>(),
        [0, 60],
        "points in time order"
    );
    assert!(chart.panels.iter().all(|(m, _)| *m != "m0" && *m != "m1"));
}

#[test]
fn lines_break_where_buckets_are_missing() {
    let pts = [
        point(0, "m", 1.0),
        point(60, "m", 1.0),
        point(300, "m", 1.0),
    ];
    let refs: Vec<&LatencyPoint> = pts.iter().collect();
    let runs = runs(&refs, 60);
    let lens: Vec<usize> = runs.iter().map(Vec::len).collect();
    assert_eq!(lens, [2, 1]);
}

#[test]
fn empty_data_and_bad_sizes_are_refused() {
    assert!(matches!(
        latency_chart(&[], MINUTE, ChartFormat::Svg, (800, 600)),
        Err(ChartError::Empty(_))
    ));
    assert!(matches!(
        latency_chart(&[point(0, "m", 1.0)], MINUTE, ChartFormat::Png, (10, 10)),
        Err(ChartError::Size(10, 10))
    ));
}

// Rendering.

fn points() -> Vec<LatencyPoint> {
    let mut v = Vec::new();
    for (model, base) in [("m1", 3.0), ("<m&2>", 10.0)] {
        for i in 0..10u32 {
            let p50 = base + f64::from(i % 3);
            v.push(LatencyPoint {
                bucket: 1_700_000_000 + i * 60,
                model: model.into(),
                p50,
                p90: p50 * 1.4,
                p99: p50 * 2.0,
                requests: 50,
            });
        }
    }
    v
}

fn bars() -> Vec<Throughput> {
    [
        ("chromium", "wasm", 40.0),
        ("chromium", "webgpu", 25.0),
        ("edge", "wasm", 5.0),
    ]
    .into_iter()
    .map(|(browser, backend, rps)| Throughput {
        browser: browser.into(),
        backend: backend.into(),
        requests: 100,
        errors: 0,
        rps,
        p50: 1000.0 / rps,
    })
    .collect()
}

#[test]
fn svg_is_xml_with_lines_and_escaped_labels() {
    let svg =
        String::from_utf8(latency_chart(&points(), MINUTE, ChartFormat::Svg, (900, 700)).unwrap())
            .unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let lines = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .count();
    // Three percentile lines per model, two models (plus axes and legend).
    assert!(lines >= 6, "{lines} polylines");
    let text: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect();
    assert!(text.iter().any(|t| t.trim() == "<m&2>"), "{text:?}");
    assert!(text.iter().any(|t| t.trim() == "p99"), "{text:?}");
    let svg = String::from_utf8(throughput_chart(&bars(), ChartFormat::Svg, (900, 500)).unwrap())
        .unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let text: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect();
    assert!(text.iter().any(|t| t.trim() == "edge/wasm"), "{text:?}");
}

#[test]
fn png_decodes_to_a_drawing() {
    for bytes in [
        latency_chart(&points(), MINUTE, ChartFormat::Png, (640, 480)).unwrap(),
        throughput_chart(&bars(), ChartFormat::Png, (640, 480)).unwrap(),
    ] {
        let mut reader = png::Decoder::new(bytes.as_slice()).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (640, 480));
        let px: Vec<&[u8]> = buf[..info.buffer_size()].chunks(3).collect();
        let white = px.iter().filter(|p| **p == [255, 255, 255]).count();
        // Mostly background, but a real share of ink.
        assert!(
            white > px.len() / 2 && white < px.len() * 98 / 100,
            "{white} of {}",
            px.len()
        );
    }
}
