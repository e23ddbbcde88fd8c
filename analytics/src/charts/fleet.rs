//! The fleet over time: each pool's browsers and each model's replicas as step lines,
//! from the scale decisions in `pool_events` (the operator's and `webaccel up`'s).

use std::collections::BTreeMap;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{ChartError, ChartFormat, Draw, draw_err, render};
use crate::overview::FleetPoint;

/// A series' name: the pool's browsers, or a model's replicas.
fn series_of(p: &FleetPoint) -> String {
    if p.model.is_empty() {
        format!("{} browsers", p.pool)
    } else {
        format!("{} replicas", p.model)
    }
}

/// Each series as (seconds since the first change, size) steps: the size before its first
/// change from the start, then each change, held to the end.
fn steps(points: &[FleetPoint]) -> (BTreeMap<String, Vec<(f64, f64)>>, f64) {
    let t0 = points.iter().map(|p| p.t).min().unwrap_or(0);
    let end = points.iter().map(|p| p.t).max().unwrap_or(0) - t0;
    #[allow(clippy::cast_precision_loss)]
    let end = (end as f64 * 1.05).max(10.0);
    let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for p in points {
        #[allow(clippy::cast_precision_loss)]
        let x = (p.t - t0) as f64;
        let line = out
            .entry(series_of(p))
            .or_insert_with(|| vec![(0.0, f64::from(p.from_replicas))]);
        let last = line.last().map_or(0.0, |l| l.1);
        line.push((x, last));
        line.push((x, f64::from(p.replicas)));
    }
    for line in out.values_mut() {
        let last = line.last().map_or(0.0, |l| l.1);
        line.push((end, last));
    }
    (out, end)
}

struct FleetChart<'a>(&'a [FleetPoint]);

impl Draw for FleetChart<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), ChartError> {
        let (series, end) = steps(self.0);
        let y_max = series
            .values()
            .flatten()
            .map(|p| p.1)
            .fold(1.0_f64, f64::max)
            + 0.5;
        let mut chart = ChartBuilder::on(root)
            .caption("Browsers and model replicas over time", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..end, 0.0..y_max)
            .map_err(draw_err)?;
        // Whole counts only: one tick per count.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let counts = y_max.floor() as usize + 1;
        chart
            .configure_mesh()
            .x_desc("seconds since the first change")
            .y_desc("count")
            .y_labels(counts)
            .y_label_formatter(&|y| {
                if (y - y.round()).abs() < 1e-6 {
                    format!("{y:.0}")
                } else {
                    String::new()
                }
            })
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(draw_err)?;
        for (i, (name, line)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let width = if name.ends_with("browsers") { 3 } else { 2 };
            chart
                .draw_series(LineSeries::new(
                    line.iter().copied(),
                    color.stroke_width(width),
                ))
                .map_err(draw_err)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(draw_err)?;
        Ok(())
    }
}

/// The pools' browsers and the models' replicas over time, as step lines.
pub fn fleet_chart(
    points: &[FleetPoint],
    format: ChartFormat,
    size: (u32, u32),
) -> Result<Vec<u8>, ChartError> {
    if points.is_empty() {
        return Err(ChartError::Empty("no scale decisions in the window"));
    }
    render(&FleetChart(points), format, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: i64, pool: &str, model: &str, from: u32, to: u32) -> FleetPoint {
        FleetPoint {
            t,
            pool: pool.into(),
            model: model.into(),
            replicas: to,
            from_replicas: from,
        }
    }

    #[test]
    fn changes_become_steps_held_to_the_end() {
        let points = [
            point(100, "p", "", 1, 2),
            point(100, "p", "mlp", 1, 2),
            point(140, "p", "", 2, 1),
        ];
        let (series, end) = steps(&points);
        assert_eq!(end, 42.0);
        assert_eq!(
            series["p browsers"],
            [
                (0.0, 1.0),
                (0.0, 1.0),
                (0.0, 2.0),
                (40.0, 2.0),
                (40.0, 1.0),
                (42.0, 1.0)
            ]
        );
        assert_eq!(series["mlp replicas"].last(), Some(&(42.0, 2.0)));
        let svg = fleet_chart(&points, ChartFormat::Svg, (600, 300)).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(
            svg.contains("mlp replicas") && svg.contains("p browsers"),
            "{svg}"
        );
        assert!(matches!(
            fleet_chart(&[], ChartFormat::Svg, (600, 300)),
            Err(ChartError::Empty(_))
        ));
    }
}
