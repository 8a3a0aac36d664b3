//! `--timeline PATH.svg`: one picture of a restore a person reads at a glance — restored
//! bytes over time (a line), each on-demand miss as a point at the time it was answered
//! and its latency (right axis), and source outages as shaded spans.
//!
//! Samples are bounded: past [`SAMPLES_MAX`] points a series keeps every other one, so a
//! restore of days costs the same memory as one of minutes.

use std::path::Path;

use plotters::prelude::*;

/// Most points kept per series.
pub const SAMPLES_MAX: usize = 8192;

/// What the picture shows, recorded as the restore runs.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// (seconds since start, restored MiB).
    restored: Vec<(f64, f64)>,
    restored_stride: usize,
    restored_seen: usize,
    /// (seconds since start, latency ms) of on-demand misses.
    misses: Vec<(f64, f64)>,
    misses_stride: usize,
    misses_seen: usize,
    /// Spans of seconds during which the source failed.
    outages: Vec<(f64, f64)>,
    down_since: Option<f64>,
}

/// Appends `point` to `series`, thinning it to every other point when full.
fn push_bounded(
    series: &mut Vec<(f64, f64)>,
    stride: &mut usize,
    seen: &mut usize,
    point: (f64, f64),
) {
    *stride = (*stride).max(1);
    *seen += 1;
    if (*seen - 1) % *stride != 0 {
        return;
    }
    if series.len() >= SAMPLES_MAX {
        let mut keep = false;
        series.retain(|_| {
            keep = !keep;
            keep
        });
        *stride *= 2;
    }
    series.push(point);
    debug_assert!(series.len() <= SAMPLES_MAX);
}

impl Timeline {
    /// Restored bytes at `secs`.
    pub fn restored(&mut self, secs: f64, bytes: u64) {
        let point = (secs, bytes as f64 / (1u64 << 20) as f64);
        push_bounded(
            &mut self.restored,
            &mut self.restored_stride,
            &mut self.restored_seen,
            point,
        );
    }

    /// An on-demand miss answered at `secs` after `latency_ms`.
    pub fn miss(&mut self, secs: f64, latency_ms: f64) {
        push_bounded(
            &mut self.misses,
            &mut self.misses_stride,
            &mut self.misses_seen,
            (secs, latency_ms),
        );
    }

    /// The source failed at `secs` (an outage starts, unless one is open).
    pub fn source_down(&mut self, secs: f64) {
        self.down_since.get_or_insert(secs);
    }

    /// The source answered at `secs` (an open outage ends).
    pub fn source_up(&mut self, secs: f64) {
        if let Some(start) = self.down_since.take() {
            if self.outages.len() < SAMPLES_MAX {
                self.outages.push((start, secs));
            }
        }
    }

    /// Draws the picture into `path` (SVG), closing an open outage at `end_secs`.
    pub fn write_svg(&self, path: &Path, end_secs: f64, title: &str) -> Result<(), String> {
        let mut outages = self.outages.clone();
        if let Some(start) = self.down_since {
            outages.push((start, end_secs));
        }
        let x_max = end_secs.max(0.001);
        let mib_max = self.restored.iter().map(|p| p.1).fold(1.0, f64::max) * 1.05;
        let ms_max = self.misses.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
        let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
        let draw = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|e| draw(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .right_y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, 0.0..mib_max)
            .map_err(|e| draw(&e))?
            .set_secondary_coord(0.0..x_max, 0.0..ms_max);
        chart
            .configure_mesh()
            .x_desc("seconds since the restore started")
            .y_desc("restored (MiB)")
            .draw()
            .map_err(|e| draw(&e))?;
        chart
            .configure_secondary_axes()
            .y_desc("on-demand miss latency (ms)")
            .draw()
            .map_err(|e| draw(&e))?;
        let shade = RGBColor(230, 60, 60).mix(0.18);
        chart
            .draw_series(
                outages
                    .iter()
                    .map(|&(a, b)| Rectangle::new([(a, 0.0), (b, mib_max)], shade.filled())),
            )
            .map_err(|e| draw(&e))?
            .label("source outage")
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], shade.filled()));
        chart
            .draw_series(LineSeries::new(
                self.restored.iter().copied(),
                BLUE.stroke_width(2),
            ))
            .map_err(|e| draw(&e))?
            .label("restored bytes")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE.stroke_width(2)));
        chart
            .draw_secondary_series(
                self.misses
                    .iter()
                    .map(|&p| Circle::new(p, 2, RGBColor(230, 120, 0).filled())),
            )
            .map_err(|e| draw(&e))?
            .label("on-demand miss (latency, right axis)")
            .legend(|(x, y)| Circle::new((x + 8, y), 3, RGBColor(230, 120, 0).filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw(&e))?;
        root.present().map_err(|e| draw(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_stay_bounded_and_the_picture_is_an_svg() {
        let mut t = Timeline::default();
        for i in 0..3 * SAMPLES_MAX {
            t.restored(i as f64 / 100.0, i as u64 * 4096);
            t.miss(i as f64 / 100.0, (i % 50) as f64);
        }
        assert!(t.restored.len() <= SAMPLES_MAX && t.restored.len() > SAMPLES_MAX / 4);
        assert!(t.misses.len() <= SAMPLES_MAX);
        t.source_down(10.0);
        t.source_up(12.5);
        t.source_down(200.0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.svg");
        t.write_svg(&path, 250.0, "restore of sys@1").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.starts_with("<svg") || svg.contains("<svg"),
            "{}",
            &svg[..100]
        );
        assert!(svg.contains("restored bytes") && svg.contains("source outage"));
    }
}
