//! Score plots for `forewarn eval`: each series' score over real time, the threshold,
//! the labelled anomaly spans shaded, raised and cleared alerts marked, with a legend.
//! SVG, so no font or image library is needed.

use std::path::Path;

use anyhow::{bail, Context};
use plotters::prelude::*;

use super::eval::rule::RuleRun;
use super::eval::Series;

/// One panel: a score over time and what to mark on it.
pub struct Panel {
    pub name: String,
    /// (time ms, score); NaN breaks the line.
    pub points: Vec<(i64, f64)>,
    pub threshold: Option<f64>,
    /// Labelled anomalous spans (ms).
    pub spans: Vec<(i64, i64)>,
    pub raised: Vec<i64>,
    pub cleared: Vec<i64>,
}

/// Scores beyond this many times the threshold are drawn at the top edge, so one huge
/// outlier does not flatten the rest of the plot.
const CLIP_FACTOR: f64 = 4.0;

/// `YYYY-MM-DD HH:MM` of an epoch-ms time.
fn stamp(ms: i64) -> String {
    let s = forewarn_core::format_rfc3339(ms);
    s.get(..16).unwrap_or(&s).replace('T', " ")
}

pub fn panels(path: &Path, title: &str, panels: &[Panel]) -> anyhow::Result<()> {
    if path.extension().is_none_or(|e| e != "svg") {
        bail!(
            "{}: plots are written as SVG; name the file .svg (convert with e.g. rsvg-convert for PNG)",
            path.display()
        );
    }
    if panels.is_empty() {
        bail!("nothing to plot");
    }
    let err = |e: DrawingAreaErrorKind<std::io::Error>| anyhow::anyhow!("plotting: {e}");
    let root = SVGBackend::new(path, (1200, 280 * panels.len() as u32 + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
    for (area, p) in root.split_evenly((panels.len(), 1)).iter().zip(panels) {
        let finite = || p.points.iter().filter(|(_, y)| y.is_finite());
        let x_min = p.points.iter().map(|q| q.0).min().unwrap_or(0);
        let x_max = p
            .points
            .iter()
            .map(|q| q.0)
            .max()
            .unwrap_or(1)
            .max(x_min + 1);
        let t = p.threshold.filter(|t| t.is_finite());
        let cap = t.map_or(f64::INFINITY, |t| t.abs().max(1.0) * CLIP_FACTOR);
        let y_hi = finite()
            .map(|q| q.1.min(cap))
            .fold(t.unwrap_or(1.0), f64::max);
        let y_lo = finite().map(|q| q.1).fold(0.0, f64::min);
        let pad = (y_hi - y_lo).max(1e-9) * 0.05;
        let (y_lo, y_hi) = (y_lo - if y_lo < 0.0 { pad } else { 0.0 }, y_hi + pad);
        let mut chart = ChartBuilder::on(area)
            .caption(&p.name, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(x_min..x_max, y_lo..y_hi)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(6)
            .x_label_formatter(&|v| stamp(*v))
            .x_desc("event time (UTC)")
            .y_desc("score")
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        let shade = RGBColor(255, 215, 215);
        for (i, (a, b)) in p.spans.iter().enumerate() {
            let s = chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(*a, y_lo), (*b, y_hi)],
                    shade.filled(),
                )))
                .map_err(err)?;
            if i == 0 {
                s.label("labelled anomaly").legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], shade.filled())
                });
            }
        }
        // The score, broken where a window had none.
        let mut runs = vec![Vec::new()];
        for (x, y) in &p.points {
            if y.is_finite() {
                runs.last_mut().expect("one run").push((*x, y.min(y_hi)));
            } else if !runs.last().expect("one run").is_empty() {
                runs.push(Vec::new());
            }
        }
        for (i, r) in runs.into_iter().filter(|r| !r.is_empty()).enumerate() {
            let s = chart
                .draw_series(LineSeries::new(r, BLUE.stroke_width(1)))
                .map_err(err)?;
            if i == 0 {
                s.label("score")
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], BLUE));
            }
        }
        if let Some(t) = t {
            chart
                .draw_series(LineSeries::new(
                    vec![(x_min, t), (x_max, t)],
                    RED.stroke_width(1),
                ))
                .map_err(err)?
                .label(format!("threshold {t:.2}"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], RED));
        }
        let marks = [
            (&p.raised, RGBColor(200, 0, 0), "raised"),
            (&p.cleared, RGBColor(0, 140, 0), "cleared"),
        ];
        for (times, colour, label) in marks {
            if times.is_empty() {
                continue;
            }
            chart
                .draw_series(times.iter().map(|x| {
                    PathElement::new(vec![(*x, y_lo), (*x, y_hi)], colour.stroke_width(2))
                }))
                .map_err(err)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x + 7, y - 6), (x + 7, y + 6)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(err)?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Labelled spans of a reading series: runs of `true`.
fn spans(times: &[i64], labels: &[bool]) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < labels.len() {
        if !labels[i] {
            i += 1;
            continue;
        }
        let start = times[i];
        while i < labels.len() && labels[i] {
            i += 1;
        }
        out.push((start, times[i.min(times.len() - 1)]));
    }
    out
}

/// Reading-level scores with the threshold 1.0 (trained models' normalised scores).
pub fn scores(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<()> {
    let p: Vec<Panel> = series
        .iter()
        .map(|s| Panel {
            name: s.name.clone(),
            points: s
                .times
                .iter()
                .copied()
                .zip(s.scores.iter().copied())
                .collect(),
            threshold: Some(s.threshold),
            spans: spans(&s.times, &s.labels),
            raised: s.raised.clone(),
            cleared: s.cleared.clone(),
        })
        .collect();
    panels(path, title, &p)
}

/// The panel of one device of a rule run.
fn device_panel(name: String, run: &RuleRun, device: &str, spans: Vec<(i64, i64)>) -> Panel {
    let mut points: Vec<(i64, f64)> = run
        .windows
        .iter()
        .filter(|w| w.device == device)
        .map(|w| (w.end_ms, w.score.unwrap_or(f64::NAN)))
        .collect();
    points.sort_by_key(|p| p.0);
    let episodes = run.episodes(device);
    Panel {
        name,
        points,
        threshold: run.threshold(),
        spans,
        raised: episodes.iter().map(|e| e.0).collect(),
        cleared: episodes.iter().filter_map(|e| e.1).collect(),
    }
}

/// A series' name, the rule's run over it (one device), and its labelled spans (ms).
pub type LabelledRun<'a> = (String, &'a RuleRun, Vec<(i64, i64)>);

/// One panel per series of rule runs (one device each), with its labelled spans.
pub fn rule_runs(path: &Path, title: &str, runs: &[LabelledRun]) -> anyhow::Result<()> {
    let p: Vec<Panel> = runs
        .iter()
        .map(|(n, r, s)| {
            let device = r.windows.first().map_or("", |w| w.device.as_str());
            device_panel(n.clone(), r, device, s.clone())
        })
        .collect();
    panels(path, title, &p)
}

/// The first `n` devices of a fleet run.
pub fn fleet(path: &Path, title: &str, run: &RuleRun, n: usize) -> anyhow::Result<()> {
    let mut devices: Vec<&str> = run.windows.iter().map(|w| w.device.as_str()).collect();
    devices.sort_by_key(|d| (d.len(), *d));
    devices.dedup();
    let p: Vec<Panel> = devices
        .iter()
        .take(n)
        .map(|d| device_panel(format!("device {d}"), run, d, vec![]))
        .collect();
    panels(path, title, &p)
}
