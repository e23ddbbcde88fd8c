//! Charts of the metrics with plotters, as PNG or SVG bytes: latency percentiles over
//! time per model, and throughput per browser and backend. Text is drawn with a font
//! file read at run time (plotters' `ab_glyph` feature), so building needs no system
//! font libraries; Debian's fonts-dejavu-core (pulled in by Chromium) provides one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::overview::{LatencyPoint, Throughput};
use crate::queries::Measure;

/// Image formats a chart can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChartFormat {
    Png,
    Svg,
}

impl ChartFormat {
    /// From a file name's extension (`.png`, `.svg`), if it is one of them.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "png" => Some(Self::Png),
            "svg" => Some(Self::Svg),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error(
        "no font to draw chart text with: {0} (install Debian's fonts-dejavu-core, or set WEBACCEL_FONT to a .ttf/.otf file)"
    )]
    Font(String),
    #[error("nothing to chart: {0}")]
    Empty(&'static str),
    #[error("drawing the chart: {0}")]
    Draw(String),
    #[error("encoding the PNG: {0}")]
    Png(#[from] png::EncodingError),
    #[error("a chart must be at least 200x150 pixels and at most 10000x10000, not {0}x{1}")]
    Size(u32, u32),
}

fn draw_err(e: impl std::fmt::Display) -> ChartError {
    ChartError::Draw(e.to_string())
}

/// Fonts tried in order after `WEBACCEL_FONT`: DejaVu first, as Chromium's font
/// configuration depends on it on Debian; then other common sans-serif fonts.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Finds and registers the font for every family plotters asks for; the result is
/// kept, so the file is read once per process.
fn ensure_font() -> Result<&'static Path, ChartError> {
    static FONT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let from_env = std::env::var_os("WEBACCEL_FONT").map(PathBuf::from);
        let candidates: Vec<PathBuf> = match from_env {
            // An explicit choice is not silently replaced by another font.
            Some(p) => vec![p],
            None => FONT_CANDIDATES.iter().map(PathBuf::from).collect(),
        };
        for path in &candidates {
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            // plotters keeps registered fonts for the life of the process and wants
            // 'static bytes; this happens once, so leaking the one file is the cost.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            for family in ["sans-serif", "serif", "monospace"] {
                plotters::style::register_font(family, FontStyle::Normal, bytes)
                    .map_err(|_| format!("{} is not a TrueType/OpenType font", path.display()))?;
            }
            return Ok(path.clone());
        }
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        Err(format!("none of {} could be read", tried.join(", ")))
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(|e| ChartError::Font(e.clone()))
}

/// Something that can draw itself on any plotters backend.
trait Draw {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), ChartError>;
}

/// Renders `chart` as `format` bytes of `width` x `height` pixels.
fn render(
    chart: &impl Draw,
    format: ChartFormat,
    (width, height): (u32, u32),
) -> Result<Vec<u8>, ChartError> {
    if !(200..=10_000).contains(&width) || !(150..=10_000).contains(&height) {
        return Err(ChartError::Size(width, height));
    }
    ensure_font()?;
    match format {
        ChartFormat::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
                root.fill(&WHITE).map_err(draw_err)?;
                chart.draw(&root)?;
                root.present().map_err(draw_err)?;
            }
            Ok(svg.into_bytes())
        }
        ChartFormat::Png => {
            let (w, h) = (width as usize, height as usize);
            let mut rgb = vec![0u8; w * h * 3];
            {
                let root =
                    BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
                root.fill(&WHITE).map_err(draw_err)?;
                chart.draw(&root)?;
                root.present().map_err(draw_err)?;
            }
            let mut out = Vec::new();
            let mut encoder = png::Encoder::new(&mut out, width, height);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header()?;
            writer.write_image_data(&rgb)?;
            writer.finish()?;
            Ok(out)
        }
    }
}

/// At most this many models get a panel of their own; more would be unreadable.
pub const MAX_LATENCY_PANELS: usize = 6;

/// A throughput chart's usual height in pixels.
pub const THROUGHPUT_HEIGHT: u32 = 500;

/// A latency chart's usual height in pixels: a title strip and 230 per panel.
pub fn latency_height(points: &[LatencyPoint]) -> u32 {
    let models: std::collections::BTreeSet<&str> =
        points.iter().map(|p| p.model.as_str()).collect();
    let panels = u32::try_from(models.len().clamp(1, MAX_LATENCY_PANELS)).unwrap_or(1);
    60 + 230 * panels
}

const P50: RGBColor = RGBColor(31, 119, 180);
const P90: RGBColor = RGBColor(255, 127, 14);
const P99: RGBColor = RGBColor(214, 39, 40);

/// Decimals that tell axis labels up to `max` apart.
fn decimals(max: f64) -> usize {
    match max {
        m if m >= 100.0 => 0,
        m if m >= 10.0 => 1,
        m if m >= 1.0 => 2,
        _ => 3,
    }
}

/// `HH:MM` (UTC), with the month and day when the range spans more than a day.
fn time_label(secs: i64, with_date: bool) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    let s = humantime::format_rfc3339_seconds(t).to_string(); // 2025-01-31T12:34:56Z
    if with_date {
        format!("{} {}", &s[5..10], &s[11..16])
    } else {
        s[11..16].to_owned()
    }
}

struct LatencyChart<'a> {
    /// What the times are (`Latency`, `Time to first token`, ...).
    label: &'static str,
    /// Per model, its points in time order; busiest models first.
    panels: Vec<(&'a str, Vec<&'a LatencyPoint>)>,
    omitted: usize,
    /// Bucket size in seconds: points further apart than this have no requests
    /// between them, and their line is broken there.
    bucket: i64,
}

/// Splits time-ordered points into runs of adjacent buckets.
fn runs<'p>(pts: &[&'p LatencyPoint], bucket: i64) -> Vec<Vec<&'p LatencyPoint>> {
    let mut out: Vec<Vec<&LatencyPoint>> = Vec::new();
    for p in pts {
        match out.last_mut() {
            Some(run)
                if run
                    .last()
                    .is_some_and(|q| i64::from(p.bucket) - i64::from(q.bucket) <= bucket) =>
            {
                run.push(p);
            }
            _ => out.push(vec![p]),
        }
    }
    out
}

impl<'a> LatencyChart<'a> {
    fn new(points: &'a [LatencyPoint], bucket: std::time::Duration, label: &'static str) -> Self {
        let mut by_model: BTreeMap<&str, Vec<&LatencyPoint>> = BTreeMap::new();
        for p in points {
            by_model.entry(&p.model).or_default().push(p);
        }
        let mut panels: Vec<_> = by_model.into_iter().collect();
        for (_, pts) in &mut panels {
            pts.sort_by_key(|p| p.bucket);
        }
        panels
            .sort_by_key(|(_, pts)| std::cmp::Reverse(pts.iter().map(|p| p.requests).sum::<u64>()));
        let omitted = panels.len().saturating_sub(MAX_LATENCY_PANELS);
        panels.truncate(MAX_LATENCY_PANELS);
        let bucket = i64::try_from(bucket.as_secs().max(1)).unwrap_or(i64::MAX);
        Self {
            label,
            panels,
            omitted,
            bucket,
        }
    }
}

/// Tick positions on whole multiples of a round time step, about `max` of them.
fn time_ticks(lo: i64, hi: i64, max: i64) -> Vec<i64> {
    const STEPS: &[i64] = &[
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200,
        86_400, 172_800, 604_800,
    ];
    let span = (hi - lo).max(1);
    let step = STEPS
        .iter()
        .copied()
        .find(|s| span / s <= max)
        .unwrap_or(span / max.max(1) + 1);
    let first = lo.div_euclid(step) * step + if lo.rem_euclid(step) == 0 { 0 } else { step };
    (0..)
        .map(|k| first + k * step)
        .take_while(|t| *t <= hi)
        .collect()
}

/// A percentile's name, colour, and where a point keeps it.
type Percentile = (&'static str, RGBColor, fn(&LatencyPoint) -> f64);

const PERCENTILES: [Percentile; 3] = [
    ("p50", P50, |p| p.p50),
    ("p90", P90, |p| p.p90),
    ("p99", P99, |p| p.p99),
];

impl Draw for LatencyChart<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), ChartError> {
        let all = self.panels.iter().flat_map(|(_, p)| p.iter());
        let (lo, hi) = all.fold((i64::MAX, i64::MIN), |(lo, hi), p| {
            (lo.min(i64::from(p.bucket)), hi.max(i64::from(p.bucket)))
        });
        // Half a bucket either side, so the end markers are whole (and a lone bucket
        // still has an x range).
        let pad = (self.bucket / 2).max(1);
        let (lo, hi) = (lo - pad, hi + pad);
        let with_date = hi - lo > 24 * 3600;
        let title = if self.omitted > 0 {
            format!(
                "{} (ms), the {} busiest models ({} more not shown)",
                self.label,
                self.panels.len(),
                self.omitted
            )
        } else {
            format!("{} percentiles (ms), time in UTC", self.label)
        };
        // One legend for every panel, in the title strip, where it hides no data.
        let (head, body) = root.split_vertically(40);
        head.draw(&Text::new(title, (12, 10), ("sans-serif", 20)))
            .map_err(draw_err)?;
        let right = i32::try_from(head.dim_in_pixel().0).unwrap_or(i32::MAX);
        for (i, (name, color, _)) in PERCENTILES.iter().enumerate() {
            let x = right - 190 + 60 * i32::try_from(i).unwrap_or(0);
            head.draw(&PathElement::new(
                vec![(x, 20), (x + 18, 20)],
                color.stroke_width(3),
            ))
            .map_err(draw_err)?;
            head.draw(&Text::new(*name, (x + 22, 13), ("sans-serif", 14)))
                .map_err(draw_err)?;
        }
        let ticks = time_ticks(lo, hi, 8);
        let areas = body.split_evenly((self.panels.len(), 1));
        for ((model, pts), area) in self.panels.iter().zip(&areas) {
            let y_max = pts.iter().map(|p| p.p99).fold(0.0_f64, f64::max).max(1e-3) * 1.1;
            let mut chart = ChartBuilder::on(area)
                .caption(*model, ("sans-serif", 16))
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(56)
                .build_cartesian_2d((lo..hi).with_key_points(ticks.clone()), 0.0..y_max)
                .map_err(draw_err)?;
            chart
                .configure_mesh()
                .y_labels(5)
                .x_label_formatter(&|x| time_label(*x, with_date))
                .y_label_formatter(&|y| format!("{y:.*}", decimals(y_max)))
                .y_desc("ms")
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(draw_err)?;
            let runs = runs(pts, self.bucket);
            for (_, color, pick) in PERCENTILES {
                for run in &runs {
                    let line = run.iter().map(|p| (i64::from(p.bucket), pick(p)));
                    chart
                        .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
                        .map_err(draw_err)?;
                    // Markers keep a lone bucket visible, where a line has no length.
                    chart
                        .draw_series(line.map(|xy| Circle::new(xy, 3, color.filled())))
                        .map_err(draw_err)?;
                }
            }
        }
        Ok(())
    }
}

/// Latency p50/p90/p99 over time, one panel per model (the busiest
/// [`MAX_LATENCY_PANELS`]), time in UTC; `bucket` is the points' bucket size, so
/// that a gap without requests shows as a gap.
pub fn latency_chart(
    points: &[LatencyPoint],
    bucket: std::time::Duration,
    format: ChartFormat,
    size: (u32, u32),
) -> Result<Vec<u8>, ChartError> {
    measure_chart(points, Measure::Latency, bucket, format, size)
}

/// [`latency_chart`] of any measure (points from `overview::measured`).
pub fn measure_chart(
    points: &[LatencyPoint],
    measure: Measure,
    bucket: std::time::Duration,
    format: ChartFormat,
    size: (u32, u32),
) -> Result<Vec<u8>, ChartError> {
    if points.is_empty() {
        return Err(ChartError::Empty(match measure {
            Measure::Latency => "no successful requests in the window",
            Measure::TimeToFirstToken | Measure::InterToken => {
                "no successful generations in the window"
            }
        }));
    }
    render(
        &LatencyChart::new(points, bucket, measure.label()),
        format,
        size,
    )
}

struct ThroughputChart<'a>(&'a [Throughput]);

impl Draw for ThroughputChart<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), ChartError> {
        let bars = self.0;
        let n = bars.len();
        let labels: Vec<String> = bars
            .iter()
            .map(|b| format!("{}/{}", b.browser, b.backend))
            .collect();
        let y_max = bars.iter().map(|b| b.rps).fold(0.0_f64, f64::max).max(1e-3) * 1.15;
        #[allow(clippy::cast_precision_loss)]
        let x_max = n as f64 - 0.5;
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Throughput by browser and backend (successful requests/s)",
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5..x_max, 0.0..y_max)
            .map_err(draw_err)?;
        let label_of = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n + 1)
            .x_label_formatter(&label_of)
            .y_labels(6)
            .light_line_style(WHITE.mix(0.0))
            .y_label_formatter(&|y| format!("{y:.*}", decimals(y_max)))
            .y_desc("requests/s")
            .draw()
            .map_err(draw_err)?;
        let palette = [
            P50,
            P90,
            RGBColor(44, 160, 44),
            P99,
            RGBColor(148, 103, 189),
        ];
        #[allow(clippy::cast_precision_loss)]
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let x = i as f64;
                Rectangle::new(
                    [(x - 0.35, 0.0), (x + 0.35, b.rps)],
                    palette[i % palette.len()].filled(),
                )
            }))
            .map_err(draw_err)?;
        #[allow(clippy::cast_precision_loss)]
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                Text::new(
                    format!("{:.*}/s, p50 {:.2} ms", decimals(y_max), b.rps, b.p50),
                    (i as f64 - 0.3, b.rps + y_max * 0.03),
                    ("sans-serif", 13),
                )
            }))
            .map_err(draw_err)?;
        Ok(())
    }
}

/// Successful requests per second per browser and backend, as bars, busiest first
/// (the order of `bars`).
pub fn throughput_chart(
    bars: &[Throughput],
    format: ChartFormat,
    size: (u32, u32),
) -> Result<Vec<u8>, ChartError> {
    if bars.is_empty() {
        return Err(ChartError::Empty("no requests in the window"));
    }
    render(&ThroughputChart(bars), format, size)
}

mod fleet;
pub use fleet::fleet_chart;

#[cfg(test)]
mod tests;
