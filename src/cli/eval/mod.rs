//! `forewarn eval`: score labelled history and report precision, recall, F1, false- and
//! missed-alarm rates and detection delay; `--protocol skab` runs the SKAB benchmark.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use forewarn::metrics::{Confusion, Delays};
use forewarn::training::{reading_windows, FeatureRows, Labels};
use forewarn::{Model, ModelRegistry};
use serde_json::json;

use super::train::{progress, read_queries, KindSettings};

mod cmapss;
mod nab;
pub(super) mod rule;
mod skab;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Query file whose anomaly_score('MODEL', ...) call defines the features.
    #[arg(long)]
    queries: PathBuf,
    /// Labelled history (CSV, JSON lines, Parquet) to score with a trained model.
    #[arg(long, conflicts_with = "protocol")]
    data: Option<PathBuf>,
    /// Benchmark protocol over DIR: `nab` (Numenta Anomaly Benchmark's rules), `cmapss`
    /// (run-to-failure fleet: engines warned, lead time, false alerts), `skab` (trains
    /// and tests per file; with an online rule, runs the rule as deployed).
    #[arg(long, value_name = "NAME")]
    protocol: Option<String>,
    /// Benchmark data directory (for --protocol).
    #[arg(requires = "protocol")]
    dir: Option<PathBuf>,
    /// Model name in the query (default: the only model it scores with).
    #[arg(long)]
    model: Option<String>,
    /// Models directory (for --data) [default: the --config file's `models`, else
    /// ./models].
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,
    /// Label column (1/true = anomalous).
    #[arg(long, default_value = "anomaly")]
    label: String,
    /// Model kinds to train per file (--protocol): `all` or a comma-separated list.
    #[arg(long, default_value = "all")]
    kind: String,
    #[command(flatten)]
    settings: KindSettings,
    /// Training-score quantile for the threshold (--protocol).
    #[arg(long, default_value_t = 0.99)]
    quantile: f64,
    /// Threshold headroom over the quantile (--protocol); several (comma-separated)
    /// evaluate each kind at each.
    #[arg(long, default_value = "1.5", value_delimiter = ',')]
    margin: Vec<f64>,
    /// Training rows per file (--protocol skab: 400).
    #[arg(long, default_value_t = 400)]
    train_rows: usize,
    /// Write the figures as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw each score over time with the threshold and the labelled spans (.svg).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// The TOML configuration file the live engine runs with (`forewarn run --config`),
    /// for --data: its `[engine]` settings (duplicate window, limits on devices, open
    /// windows and state) apply to the replay, so that the figures are those of the live
    /// engine; and its `[log]` format. The other sections are not used.
    #[arg(long, conflicts_with = "protocol")]
    config: Option<PathBuf>,
    /// Sort --data by event time before replaying it (in memory); without it, a file out
    /// of time order is refused, as `forewarn replay` refuses it.
    #[arg(long, conflicts_with = "protocol")]
    sort: bool,
    /// Fail (exit 1) when more than this share of the readings of --data is rejected
    /// (dead-lettered or late), in percent: the figures would judge readings the
    /// detector never saw.
    #[arg(
        long,
        value_name = "PERCENT",
        default_value_t = 1.0,
        conflicts_with = "protocol"
    )]
    max_rejected: f64,
    /// Write every window the rule scored (score and features) as JSON lines
    /// (--protocol nab, cmapss, and skab or --data with an online rule).
    #[arg(long, value_name = "FILE")]
    windows: Option<PathBuf>,
}

impl EvalArgs {
    /// `--config`.
    pub fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }
}

/// One series' scores and labels, for the report and the plot.
pub struct Series {
    pub name: String,
    /// Reading times (ms), labels, and the score of the window that first scored each
    /// reading (NaN when none did).
    pub times: Vec<i64>,
    pub labels: Vec<bool>,
    pub scores: Vec<f64>,
    /// The alarm threshold on this score.
    pub threshold: f64,
    /// Times the rule raised and cleared alerts, when a rule ran.
    pub raised: Vec<i64>,
    pub cleared: Vec<i64>,
}

impl Series {
    fn predicted(&self) -> Vec<bool> {
        self.scores.iter().map(|s| *s > 1.0).collect()
    }
}

fn model_name(set: &forewarn::QuerySet, given: Option<&str>) -> anyhow::Result<String> {
    if let Some(m) = given {
        return Ok(m.to_string());
    }
    let mut names = forewarn_sql::scored_models(set)?;
    match names.len() {
        1 => Ok(names.remove(0)),
        0 => bail!("the queries call no anomaly_score('MODEL', ...): eval judges a trained model's scores, or the alerts of a sink with an online detector or a false-alert rate (docs/models.md); a plain HAVING rule can be backtested with forewarn replay"),
        _ => bail!(
            "the queries score with several models ({}); pick one with --model",
            names.join(", ")
        ),
    }
}

/// Scores of each labelled reading from the window that first scored it.
fn reading_scores(rows: &FeatureRows, labels: &Labels, scores: &[f64], name: &str) -> Vec<Series> {
    labels
        .by_device
        .iter()
        .map(|(device, readings)| {
            let w = reading_windows(readings, &rows.rows, device);
            Series {
                name: if device.is_empty() {
                    name.to_string()
                } else {
                    format!("{name} {device}")
                },
                times: readings.iter().map(|r| r.0).collect(),
                labels: readings.iter().map(|r| r.1).collect(),
                scores: w
                    .iter()
                    .map(|i| i.map_or(f64::NAN, |i| scores[i]))
                    .collect(),
                threshold: 1.0,
                raised: vec![],
                cleared: vec![],
            }
        })
        .collect()
}

/// Notes the readings of --data the replay rejected; `Some(1)` when more than
/// `max_percent` of them were (the figures would judge readings no detector saw).
fn rejected(r: &forewarn::replay::Rejections, max_percent: f64) -> Option<ExitCode> {
    if r.rejected == 0 {
        return None;
    }
    if r.exceed(max_percent) {
        eprintln!("error: {}; see --max-rejected", r.summary());
        return Some(ExitCode::from(1));
    }
    eprintln!("note: {}", r.summary());
    None
}

fn score_rows(model: &Model, rows: &FeatureRows) -> anyhow::Result<Vec<f64>> {
    let x = ndarray::Array2::from_shape_fn((rows.rows.len(), rows.names.len()), |(i, j)| {
        rows.rows[i].values[j]
    });
    let s = if model.key.is_some() {
        let keys: Vec<Option<&str>> = rows.rows.iter().map(|r| Some(r.device.as_str())).collect();
        model.score_keyed(&keys, x.view())?
    } else {
        model.score(x.view())?
    };
    Ok(s.to_vec())
}

#[derive(serde::Serialize)]
struct Figures {
    kind: String,
    f1: f64,
    far: f64,
    mar: f64,
    precision: f64,
    recall: f64,
    confusion: Confusion,
    spans: usize,
    spans_detected: usize,
    median_delay_s: Option<f64>,
    mean_delay_s: Option<f64>,
}

fn figures(kind: &str, c: Confusion, d: &Delays) -> Figures {
    Figures {
        kind: kind.to_string(),
        f1: c.f1(),
        far: c.far(),
        mar: c.mar(),
        precision: c.precision(),
        recall: c.recall(),
        confusion: c,
        spans: d.spans,
        spans_detected: d.detected,
        median_delay_s: d.median().map(|v| v as f64 / 1000.0),
        mean_delay_s: d.mean().map(|v| v / 1000.0),
    }
}

fn print_table(rows: &[Figures]) {
    println!(
        "{:<14} {:>6} {:>8} {:>8} {:>9} {:>7} {:>14} {:>14}",
        "kind", "F1", "FAR %", "MAR %", "precision", "recall", "spans found", "median delay"
    );
    for f in rows {
        println!(
            "{:<14} {:>6.3} {:>8.2} {:>8.2} {:>9.3} {:>7.3} {:>14} {:>14}",
            f.kind,
            f.f1,
            f.far,
            f.mar,
            f.precision,
            f.recall,
            format!("{}/{}", f.spans_detected, f.spans),
            f.median_delay_s
                .map_or("-".to_string(), |d| format!("{d:.0} s"))
        );
    }
}

pub async fn eval(a: EvalArgs) -> anyhow::Result<ExitCode> {
    super::require_file("--data", a.data.as_deref())?;
    let set = read_queries(&a.queries)?;
    let dir = || {
        a.dir.clone().with_context(|| {
            format!(
                "--protocol {} needs the benchmark's data directory",
                a.protocol.as_deref().unwrap_or("")
            )
        })
    };
    match (a.protocol.as_deref(), &a.data) {
        (Some("skab"), _) if rule::deployed(&set) => skab::skab_rule(&a, &set, &dir()?).await,
        (Some("skab"), _) => {
            let name = model_name(&set, a.model.as_deref())?;
            skab::skab(&a, &set, &name, &dir()?).await
        }
        (Some("nab"), _) => nab::nab(&a, &set, &dir()?).await,
        (Some("cmapss"), _) => cmapss::cmapss(&a, &set, &dir()?).await,
        (Some(p), _) => bail!("unknown protocol '{p}' (known: nab, cmapss, skab)"),
        (None, Some(data)) if rule::deployed(&set) => labelled_rule(&a, &set, data).await,
        (None, Some(data)) => {
            let name = model_name(&set, a.model.as_deref())?;
            labelled(&a, &set, &name, data).await
        }
        (None, None) => bail!("give --data LABELLED_HISTORY, or --protocol nab|cmapss|skab DIR"),
    }
}

async fn labelled(
    a: &EvalArgs,
    set: &forewarn::QuerySet,
    name: &str,
    data: &Path,
) -> anyhow::Result<ExitCode> {
    let config_models = match &a.config {
        Some(p) if a.models.is_none() => {
            super::require_file("--config", Some(p))?;
            forewarn::config::ServiceConfig::from_file(p)?.models
        }
        _ => None,
    };
    let from_config = a.config.as_deref().zip(config_models.as_deref());
    let Some(dir) = super::models_dir_or_config(a.models.as_deref(), from_config)? else {
        bail!("{}", super::no_models_dir());
    };
    let registry = ModelRegistry::new();
    registry.load_dir(&dir)?;
    let model = registry
        .get(name)
        .with_context(|| format!("no model '{name}' in --models {}", dir.display()))?;
    let bar = progress("readings replayed");
    let how = forewarn::replay::FeatureReplay {
        order: super::order(a.sort),
        config: super::engine_settings(a.config.as_deref())?,
    };
    let label = Some(a.label.as_str());
    let mut r = forewarn::replay::features_with(
        set,
        name,
        data,
        label,
        &how,
        |n| bar.set_position(n),
        |_| {},
    )
    .await?;
    bar.finish_and_clear();
    if let Some(code) = rejected(&r.rejections(), a.max_rejected) {
        return Ok(code);
    }
    if model.key.is_some() {
        // The key comes first among the call's arguments, as in training.
        super::train::strip_key(&mut r.rows, name)?;
    }
    let scores = score_rows(&model, &r.rows)?;
    let series = reading_scores(&r.rows, &r.labels, &scores, name);
    let (mut c, mut d) = (Confusion::default(), Delays::default());
    for s in &series {
        let p = s.predicted();
        c.add(Confusion::count(&p, &s.labels));
        d.add(Delays::measure(&s.times, &p, &s.labels));
    }
    let f = figures(model.kind(), c, &d);
    println!(
        "{}: {} readings, {} windows scored with '{name}'",
        data.display(),
        r.labels.len(),
        r.rows.rows.len()
    );
    print_table(std::slice::from_ref(&f));
    if let Some(p) = &a.json {
        write_json(p, &json!({"data": data, "model": name, "figures": f}))?;
    }
    if let Some(p) = &a.plot {
        crate::cli::plot::scores(p, &format!("{name} on {}", data.display()), &series)?;
        eprintln!("plot: {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Labelled history judged by the rule as deployed (an online detector's sink): a
/// reading is flagged while its device is in alert as the first window holding it closes.
async fn labelled_rule(
    a: &EvalArgs,
    set: &forewarn::QuerySet,
    data: &Path,
) -> anyhow::Result<ExitCode> {
    let pipeline = forewarn::Pipeline::builder()
        .query_set(set.clone())
        .registry(rule::registry(a)?)
        .build()
        .await?;
    let labels = forewarn::replay::labels(&pipeline, data, &a.label, super::order(a.sort))?;
    drop(pipeline);
    let bar = progress("readings replayed");
    let config = super::engine_settings(a.config.as_deref())?;
    let run = rule::run(set, rule::registry(a)?, data, a.sort, config).await;
    bar.finish_and_clear();
    let run = run?;
    if let Some(code) = rejected(
        &forewarn::replay::Rejections::of(&run.stats),
        a.max_rejected,
    ) {
        return Ok(code);
    }
    let (mut c, mut d) = (Confusion::default(), Delays::default());
    let mut series = Vec::new();
    for (device, readings) in &labels.by_device {
        let (p, scores) = rule::judge(&run, device, readings);
        let labels: Vec<bool> = readings.iter().map(|r| r.1).collect();
        let times: Vec<i64> = readings.iter().map(|r| r.0).collect();
        c.add(Confusion::count(&p, &labels));
        d.add(Delays::measure(&times, &p, &labels));
        let episodes = run.episodes(device);
        series.push(Series {
            name: if device.is_empty() {
                data.display().to_string()
            } else {
                format!("{} {device}", data.display())
            },
            times,
            labels,
            scores,
            threshold: run.threshold().unwrap_or(f64::NAN),
            raised: episodes.iter().map(|e| e.0).collect(),
            cleared: episodes.iter().filter_map(|e| e.1).collect(),
        });
    }
    let f = figures(rule::label(set), c, &d);
    println!(
        "{}: {} readings, {} windows scored by the rule as deployed; a reading is flagged while its device is in alert",
        data.display(),
        labels.len(),
        run.windows.len()
    );
    print_table(std::slice::from_ref(&f));
    if let Some(p) = &a.json {
        write_json(p, &json!({"data": data, "rule": true, "figures": f}))?;
    }
    if let Some(p) = &a.windows {
        rule::write_windows(p, &[(String::new(), &run)])?;
    }
    if let Some(p) = &a.plot {
        series.truncate(6);
        crate::cli::plot::scores(p, &format!("the rule on {}", data.display()), &series)?;
        eprintln!("plot: {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn write_json(p: &Path, v: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(p, serde_json::to_vec_pretty(v)?)
        .with_context(|| format!("writing {}", p.display()))
}
