//! `forewarn train`: fit a model on the output of the feature query it is scored with,
//! replayed over recorded history (or the simulated plant), or on plain CSV columns.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use forewarn::replay::{thousands, Rejections};
use forewarn::training::FeatureRows;
use forewarn::{Model, ModelKind, Output, Pipeline, QuerySet, TrainOptions};
use forewarn_sim::Plant;
use ndarray::Array2;

use super::simulate::PlantArgs;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Query file whose anomaly_score('MODEL', ...) call defines the features.
    #[arg(long, required_unless_present = "features")]
    queries: Option<PathBuf>,
    /// Where to write the model; its file stem is the model name unless --model is given.
    #[arg(long)]
    out: PathBuf,
    /// Model name as used in anomaly_score('NAME', ...).
    #[arg(long)]
    model: Option<String>,
    /// Detector: gmm, pca (T² and Q), pca-t2, pca-q, kmeans, knn, ocsvm, robust.
    #[arg(long, default_value = "gmm")]
    kind: String,
    #[command(flatten)]
    settings: KindSettings,
    /// Training-score quantile for the threshold.
    #[arg(long, default_value_t = 0.999)]
    quantile: f64,
    /// Headroom multiplier on the threshold's distance from the median score.
    #[arg(long, default_value_t = 1.5)]
    margin: f64,
    /// Recorded history to train on (CSV, JSON lines, Parquet), replayed through the
    /// feature query. Without it, healthy simulated history is generated.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Train on these CSV columns of --data directly, without a query (comma-separated).
    #[arg(long, value_delimiter = ',', requires = "data")]
    features: Option<Vec<String>>,
    /// Keep one baseline per device (robust kind). The query calls the model with the key
    /// first, `anomaly_score('NAME', device, f1, ...)`; each window's device is its key.
    #[arg(long)]
    per_device: bool,
    /// Labelled validation history: the threshold becomes the one with the best F1 on it.
    #[arg(long, requires = "queries")]
    validate: Option<PathBuf>,
    /// Label column of --validate (1/true = anomalous).
    #[arg(long, default_value = "anomaly")]
    label: String,
    /// Fail (exit 1) when more than this share of the readings of --data or --validate
    /// is rejected (dead-lettered or late), in percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 1.0)]
    max_rejected: f64,
    /// Write the rejected readings of --data and --validate here (JSON lines, one dead
    /// letter each with its reason).
    #[arg(long, value_name = "FILE")]
    dead_letters: Option<PathBuf>,
    /// Sort --data and --validate by event time before replaying them (in memory); without
    /// it, a file out of time order is refused, as `forewarn replay` refuses it.
    #[arg(long)]
    sort: bool,
    /// The TOML configuration file the live engine runs with (`forewarn run --config`):
    /// its `[engine]` settings (duplicate window, limits on devices, open windows and
    /// state) apply to the replay of --data and --validate, and of the simulated plant,
    /// so that the model learns the features the live engine computes; and its `[log]`
    /// format. The other sections are not used.
    #[arg(long, conflicts_with = "features")]
    config: Option<PathBuf>,
    /// Without --data: the simulated healthy plant to replay (no machine fails).
    #[command(flatten)]
    plant: HealthyPlantArgs,
}

impl TrainArgs {
    /// `--config`.
    pub fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }
}

/// The simulated plant `train` replays without --data: healthy, so no `--failing`.
#[derive(clap::Args, Debug)]
pub struct HealthyPlantArgs {
    /// Seed of the simulated plant and of the training (the same seed gives the same
    /// model).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated machines (split over pumps, motors and compressors), without --data.
    #[arg(long, default_value_t = 240)]
    machines: usize,
    /// Simulated span, seconds of event time, without --data.
    #[arg(long, default_value_t = 3600)]
    sim_seconds: i64,
}

/// Per-kind settings; unset ones keep the kind's defaults.
#[derive(clap::Args, Debug)]
pub struct KindSettings {
    /// Mixture components (gmm) or clusters (kmeans).
    #[arg(long)]
    components: Option<usize>,
    /// Neighbours (knn).
    #[arg(long)]
    neighbours: Option<usize>,
    /// ν, the tolerated fraction of training rows outside the support (ocsvm).
    #[arg(long)]
    nu: Option<f64>,
    /// Fraction of variance the retained principal components explain (pca).
    #[arg(long)]
    explained: Option<f64>,
}

impl KindSettings {
    /// The detector `kind` (e.g. `pca`) with these settings applied.
    pub fn kind(&self, kind: &str) -> anyhow::Result<ModelKind> {
        let mut k: ModelKind = kind.parse().map_err(anyhow::Error::msg)?;
        match &mut k {
            ModelKind::Gmm { components: c } | ModelKind::Kmeans { clusters: c } => {
                *c = self.components.unwrap_or(*c)
            }
            ModelKind::Knn { k } => *k = self.neighbours.unwrap_or(*k),
            ModelKind::Ocsvm { nu: n } => *n = self.nu.unwrap_or(*n),
            ModelKind::Pca { explained: e, .. } => *e = self.explained.unwrap_or(*e),
            ModelKind::Robust => {}
        }
        Ok(k)
    }
}

/// A spinner counting readings, on stderr.
pub fn progress(what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {human_pos} {msg} ({per_sec}, {elapsed})",
        )
        .expect("valid template"),
    );
    bar.set_message(what);
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

pub async fn train(a: TrainArgs) -> anyhow::Result<ExitCode> {
    let name = match &a.model {
        Some(m) => m.clone(),
        None => a
            .out
            .file_stem()
            .context("--out needs a file name")?
            .to_string_lossy()
            .to_string(),
    };
    // Found before the replay and the fit, not after them.
    if a.out.is_dir() {
        bail!(
            "--out {}: a directory; give the model file's path, e.g. {}",
            a.out.display(),
            a.out.join("NAME.json").display()
        );
    }
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if dir.exists() && !dir.is_dir() {
            bail!(
                "--out {}: {} is not a directory",
                a.out.display(),
                dir.display()
            );
        }
        if !dir.is_dir() {
            bail!(
                "--out {}: no such directory {}",
                a.out.display(),
                dir.display()
            );
        }
    }
    let stem = a.out.file_stem().map(|s| s.to_string_lossy());
    if a.model.is_some() && stem.as_deref() != Some(name.as_str()) {
        eprintln!(
            "warning: a models directory loads {} as model '{}' (its file name), not '{name}'",
            a.out.display(),
            stem.unwrap_or_default()
        );
    }
    let kind = a.settings.kind(&a.kind)?;
    if a.per_device && kind != ModelKind::Robust {
        bail!("--per-device needs --kind robust (the other kinds are fleet-wide)");
    }
    let opts = TrainOptions {
        kind,
        quantile: a.quantile,
        margin: a.margin,
        seed: a.plant.seed,
    };
    super::require_file("--data", a.data.as_deref())?;
    super::require_file("--validate", a.validate.as_deref())?;
    let mut dead = DeadLetters::create(a.dead_letters.as_deref())?;
    let how = forewarn::replay::FeatureReplay {
        order: super::order(a.sort),
        config: super::engine_settings(a.config.as_deref())?,
    };
    let rows = if let Some(cols) = &a.features {
        csv_columns(a.data.as_deref().expect("clap requires --data"), cols)?
    } else {
        let path = a.queries.as_ref().expect("clap requires --queries");
        let set = read_queries(path)?;
        match &a.data {
            Some(data) => {
                let bar = progress("readings of history replayed");
                let r = forewarn::replay::features_with(
                    &set,
                    &name,
                    data,
                    None,
                    &how,
                    |n| bar.set_position(n),
                    dead.sink(),
                )
                .await?;
                bar.finish_and_clear();
                let rejections = r.rejections();
                eprintln!(
                    "replayed {} readings of {} into {} feature rows{}",
                    thousands(rejections.readings),
                    data.display(),
                    thousands(r.rows.rows.len() as u64),
                    rejected_note(&rejections)
                );
                if let Some(code) = too_many_rejected(&rejections, a.max_rejected, &dead) {
                    return Ok(code);
                }
                r.rows
            }
            None => simulated_features(&set, &name, &a.plant, &how.config).await?,
        }
    };
    let mut rows = rows;
    if a.per_device && a.features.is_none() {
        strip_key(&mut rows, &name)?;
    } else if a.features.is_none()
        && rows.names.len() > 1
        && !rows.rows.is_empty()
        && rows.rows.iter().all(|r| r.values[0].is_nan())
    {
        bail!(
            "the first argument of anomaly_score('{name}', ...), '{}', has no number in any window: if it is the device key, train with --per-device --kind robust",
            rows.names[0]
        );
    }
    let complete: Vec<_> = rows.rows.iter().filter(|r| r.complete()).collect();
    let skipped = rows.rows.len() - complete.len();
    eprintln!(
        "model '{name}' ({}): features {}; {} rows ({skipped} with missing values skipped)",
        a.kind,
        rows.names.join(", "),
        complete.len()
    );
    // Straight from CSV columns each row is a reading: one that cannot be used is a
    // rejected reading, under the same limit as readings replayed through a query.
    if a.features.is_some() && !rows.rows.is_empty() {
        let pct = 100.0 * skipped as f64 / rows.rows.len() as f64;
        if skipped > 0 && pct > a.max_rejected {
            eprintln!(
                "error: {} of {} rows ({pct:.1} %) have a missing or unreadable value in the --features columns; see --max-rejected",
                thousands(skipped as u64),
                thousands(rows.rows.len() as u64)
            );
            return Ok(ExitCode::from(1));
        }
    }
    let x = rows.matrix(complete.iter().copied());
    let mut model = if a.per_device {
        let keys: Vec<String> = complete.iter().map(|r| r.device.clone()).collect();
        Model::train_keyed(
            &name,
            rows.names.clone(),
            Some(("device", &keys)),
            x.view(),
            &opts,
        )?
    } else {
        Model::train(&name, rows.names.clone(), x.view(), &opts)?
    };
    if let Some(v) = &a.validate {
        let set = read_queries(a.queries.as_ref().expect("clap requires --queries"))?;
        let mut r = forewarn::replay::features_with(
            &set,
            &name,
            v,
            Some(&a.label),
            &how,
            |_| {},
            dead.sink(),
        )
        .await?;
        let rejections = r.rejections();
        if rejections.rejected > 0 {
            eprintln!(
                "validation: {} readings of {}{}",
                thousands(rejections.readings),
                v.display(),
                rejected_note(&rejections)
            );
        }
        if let Some(code) = too_many_rejected(&rejections, a.max_rejected, &dead) {
            return Ok(code);
        }
        if a.per_device {
            strip_key(&mut r.rows, &name)?;
        }
        let (xv, labels, keep) = window_labels(&r.rows, &r.labels);
        if model.key.is_some() {
            // Each window is judged against its device's baseline, as it will be live.
            let keys: Vec<Option<&str>> = keep
                .iter()
                .map(|&i| Some(r.rows.rows[i].device.as_str()))
                .collect();
            model.calibrate_with_labels_keyed(Some(&keys), xv.view(), &labels)?;
        } else {
            model.calibrate_with_labels(xv.view(), &labels)?;
        }
    }
    dead.finish()?;
    model.save(&a.out)?;
    eprintln!(
        "wrote {} ({}; threshold {:.4}, baseline {:.4}: {})",
        a.out.display(),
        model.kind(),
        model.calibration.threshold,
        model.calibration.baseline,
        model.calibration.method
    );
    Ok(ExitCode::SUCCESS)
}

/// The query file given as `--queries`.
pub fn read_queries(path: &Path) -> anyhow::Result<QuerySet> {
    super::read_query_set("--queries", &[path.to_path_buf()])
}

/// A keyed call passes the key first: `anomaly_score('m', device, f1, ...)`. The key of
/// each row is its window's device; the argument itself is not a feature.
pub(super) fn strip_key(rows: &mut FeatureRows, name: &str) -> anyhow::Result<()> {
    if rows.names.len() < 2 {
        bail!("--per-device: the anomaly_score call needs the key and at least one feature, e.g. anomaly_score('{name}', device, avg(v))");
    }
    // A number where the key belongs is a feature that would be dropped without a word.
    if rows.rows.iter().any(|r| r.values[0].is_finite()) {
        bail!(
            "--per-device: the first argument of anomaly_score('{name}', ...) is the device key, e.g. anomaly_score('{name}', device, avg(v)); '{}' is a number",
            rows.names[0]
        );
    }
    rows.names.remove(0);
    for r in &mut rows.rows {
        r.values.remove(0);
    }
    Ok(())
}

/// ` (16,724 rejected: future_timestamp 16,724)`, or nothing when none were.
fn rejected_note(r: &Rejections) -> String {
    if r.rejected == 0 {
        return String::new();
    }
    format!("; {} rejected ({})", thousands(r.rejected), r.reasons())
}

/// Exit code 1, with the message, when more than `max_percent` % of the readings were
/// rejected: a model trained on what is left would be trained on the wrong data.
fn too_many_rejected(r: &Rejections, max_percent: f64, dead: &DeadLetters) -> Option<ExitCode> {
    if !r.exceed(max_percent) {
        return None;
    }
    let see = match &dead.path {
        Some(p) => format!(
            "the dead letters are in {}; see --max-rejected",
            p.display()
        ),
        None => "see --dead-letters / --max-rejected".into(),
    };
    eprintln!("error: {}; {see}", r.summary());
    Some(ExitCode::from(1))
}

/// `--dead-letters FILE`: rejected readings as JSON lines, written by a thread.
struct DeadLetters {
    path: Option<PathBuf>,
    tx: Option<std::sync::mpsc::Sender<Vec<u8>>>,
    writer: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl DeadLetters {
    fn create(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(p) = path else {
            return Ok(DeadLetters {
                path: None,
                tx: None,
                writer: None,
            });
        };
        let file =
            std::fs::File::create(p).with_context(|| format!("--dead-letters {}", p.display()))?;
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            use std::io::Write;
            let mut out = std::io::BufWriter::new(file);
            for line in rx {
                out.write_all(&line)?;
            }
            out.flush()
        });
        Ok(DeadLetters {
            path: Some(p.to_path_buf()),
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// What a replay hands its outputs that are not feature rows.
    fn sink(&self) -> impl FnMut(Output) + Send + 'static {
        let tx = self.tx.clone();
        move |o| {
            let (Some(tx), Output::DeadLetter { .. }) = (&tx, &o) else {
                return;
            };
            let _ = tx.send(super::output_line(&o));
        }
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            w.join()
                .map_err(|_| anyhow::anyhow!("dead-letter writer panicked"))?
                .context("writing --dead-letters")?;
        }
        Ok(())
    }
}

impl Drop for DeadLetters {
    fn drop(&mut self) {
        // Early exits (too many rejected) still leave a complete file.
        let _ = self.finish();
    }
}

/// Complete feature rows with a label each: a window is anomalous when the latest
/// labelled reading it scored first is. Also returns the index in `rows` of each
/// matrix row.
pub fn window_labels(
    rows: &FeatureRows,
    labels: &forewarn::training::Labels,
) -> (Array2<f64>, Vec<bool>, Vec<usize>) {
    let mut label = vec![None; rows.rows.len()];
    for (device, readings) in &labels.by_device {
        for (w, (_, l)) in forewarn::training::reading_windows(readings, &rows.rows, device)
            .into_iter()
            .zip(readings)
        {
            if let Some(w) = w {
                label[w] = Some(*l);
            }
        }
    }
    let keep: Vec<usize> = (0..rows.rows.len())
        .filter(|&i| label[i].is_some() && rows.rows[i].complete())
        .collect();
    let x = rows.matrix(keep.iter().map(|&i| &rows.rows[i]));
    let labels = keep.iter().map(|&i| label[i].unwrap_or(false)).collect();
    (x, labels, keep)
}

async fn simulated_features(
    set: &QuerySet,
    name: &str,
    plant: &HealthyPlantArgs,
    config: &forewarn::EngineConfig,
) -> anyhow::Result<FeatureRows> {
    let (features, names) = forewarn_sql::feature_query(set, name)?;
    let pipeline = Pipeline::builder()
        .query_set(features)
        .config(config.clone())
        .build()
        .await?;
    let (handle, mut outputs) = pipeline.start();
    let collector = tokio::spawn(async move {
        let mut rows = FeatureRows::new(names);
        while let Some(o) = outputs.recv().await {
            rows.push(&o);
        }
        rows
    });
    let cfg = PlantArgs {
        seed: plant.seed,
        machines: plant.machines,
        sim_seconds: plant.sim_seconds,
        failing: 0.0,
        waveforms: false,
    }
    .config();
    let mut plant = Plant::new(cfg);
    let bar = progress("readings of healthy simulated history");
    let mut n = 0u64;
    while !plant.done() {
        for (topic, reading) in plant.step() {
            handle
                .push_json(&topic, serde_json::to_vec(&reading)?)
                .await?;
            n += 1;
        }
        bar.set_position(n);
    }
    let stats = handle.finish().await?;
    drop(handle);
    bar.finish_and_clear();
    let rejections = Rejections::of(&stats);
    eprintln!(
        "replayed {} readings of healthy simulated history{}",
        thousands(rejections.readings),
        rejected_note(&rejections)
    );
    Ok(collector.await?)
}

/// Columns `cols` of a CSV file (comma or semicolon separated) as feature rows; a row
/// with a missing or non-numeric cell becomes an incomplete row.
fn csv_columns(path: &Path, cols: &[String]) -> anyhow::Result<FeatureRows> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header = lines
        .next()
        .with_context(|| format!("{}: empty file", path.display()))?;
    let sep = if header.contains(';') && !header.contains(',') {
        ';'
    } else {
        ','
    };
    let names: Vec<&str> = header.split(sep).map(str::trim).collect();
    let idx: Vec<usize> = cols
        .iter()
        .map(|c| {
            names.iter().position(|n| n == c).with_context(|| {
                format!(
                    "{}: no column '{c}' (columns: {})",
                    path.display(),
                    names.join(", ")
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut rows = FeatureRows::new(cols.to_vec());
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split(sep).collect();
        let values = idx
            .iter()
            .map(|&i| {
                cells
                    .get(i)
                    .and_then(|c| c.trim().parse::<f64>().ok())
                    .unwrap_or(f64::NAN)
            })
            .collect();
        rows.rows.push(forewarn::training::FeatureRow {
            device: String::new(),
            window_end: 0,
            values,
        });
    }
    Ok(rows)
}
