//! Score plots for `forewarn eval`: each series' score over time, the threshold (1.0)
//! and the labelled anomaly spans shaded. SVG, so no font or image library is needed.

use std::path::Path;

use anyhow::{bail, Context};
use plotters::prelude::*;

use super::eval::Series;

/// Scores are clipped here so one huge outlier does not flatten the rest of the plot.
const Y_CLIP: f64 = 5.0;

pub fn scores(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<()> {
    if path.extension().is_none_or(|e| e != "svg") {
        bail!(
            "{}: plots are written as SVG; name the file .svg (convert with e.g. rsvg-convert for PNG)",
            path.display()
        );
    }
    if series.is_empty() {
        bail!("nothing to plot");
    }
    let err = |e: DrawingAreaErrorKind<std::io::Error>| anyhow::anyhow!("plotting: {e}");
    let root = SVGBackend::new(path, (1200, 260 * series.len() as u32 + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
    for (area, s) in root.split_evenly((series.len(), 1)).iter().zip(series) {
        let t0 = s.times.first().copied().unwrap_or(0);
        let secs: Vec<f64> = s.times.iter().map(|t| (t - t0) as f64 / 1000.0).collect();
        let x_max = secs.last().copied().unwrap_or(1.0).max(1.0);
        let y_max = s
            .scores
            .iter()
            .filter(|v| v.is_finite())
            .fold(1.5_f64, |m, v| m.max(v.min(Y_CLIP)))
            * 1.05;
        let mut chart = ChartBuilder::on(area)
            .caption(&s.name, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(44)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("score")
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        // Labelled anomaly spans.
        let mut i = 0;
        while i < s.labels.len() {
            if !s.labels[i] {
                i += 1;
                continue;
            }
            let start = i;
            while i < s.labels.len() && s.labels[i] {
                i += 1;
            }
            let end = secs[(i).min(secs.len() - 1)];
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(secs[start], 0.0), (end, y_max)],
                    RGBColor(255, 215, 215).filled(),
                )))
                .map_err(err)?;
        }
        // The score, broken where a reading had no window.
        let mut run: Vec<(f64, f64)> = Vec::new();
        let mut runs = Vec::new();
        for (x, y) in secs.iter().zip(&s.scores) {
            if y.is_finite() {
                run.push((*x, y.min(Y_CLIP)));
            } else if !run.is_empty() {
                runs.push(std::mem::take(&mut run));
            }
        }
        runs.push(run);
        for r in runs.into_iter().filter(|r| !r.is_empty()) {
            chart
                .draw_series(LineSeries::new(r, BLUE.stroke_width(1)))
                .map_err(err)?;
        }
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, 1.0), (x_max, 1.0)],
                RED.stroke_width(1),
            ))
            .map_err(err)?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
