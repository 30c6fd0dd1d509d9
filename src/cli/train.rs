//! `forewarn train`: fit a model on the output of the feature query it is scored with.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use forewarn::{Model, Output, Pipeline, QuerySet, TrainOptions};
use forewarn_sim::Plant;
use ndarray::Array2;

use super::simulate::PlantArgs;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Query file whose anomaly_score('MODEL', ...) call defines the features.
    #[arg(long)]
    queries: PathBuf,
    /// Where to write the model; its file stem is the model name unless --model is given.
    #[arg(long)]
    out: PathBuf,
    /// Model name as used in anomaly_score('NAME', ...).
    #[arg(long)]
    model: Option<String>,
    /// Mixture components.
    #[arg(long, default_value_t = 4)]
    components: usize,
    /// Training-score quantile for the threshold.
    #[arg(long, default_value_t = 0.999)]
    quantile: f64,
    /// Headroom multiplier on the threshold's distance from the median score.
    #[arg(long, default_value_t = 1.5)]
    margin: f64,
    /// Simulated healthy history: the plant to replay (failures are switched off).
    #[command(flatten)]
    plant: PlantArgs,
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
    let text = std::fs::read_to_string(&a.queries)
        .with_context(|| format!("reading {}", a.queries.display()))?;
    let mut set = QuerySet::default();
    set.add_file(&a.queries.display().to_string(), &text)?;
    let (features, names) = forewarn_sql::feature_query(&set, &name)?;
    eprintln!("model '{name}': features {}", names.join(", "));
    let pipeline = Pipeline::builder().query_set(features).build().await?;
    let (handle, mut outputs) = pipeline.start();
    let collect_names = names.clone();
    let collector = tokio::spawn(async move {
        let mut rows: Vec<f64> = Vec::new();
        let (mut n, mut skipped) = (0usize, 0usize);
        while let Some(o) = outputs.recv().await {
            if let Output::Alert { alert, .. } = o {
                let row: Option<Vec<f64>> = collect_names
                    .iter()
                    .map(|f| alert.features.get(f).and_then(|v| v.as_f64()))
                    .collect();
                match row {
                    Some(r) => {
                        rows.extend(r);
                        n += 1;
                    }
                    None => skipped += 1,
                }
            }
        }
        (rows, n, skipped)
    });
    let mut cfg = a.plant.config();
    cfg.failing_fraction = 0.0;
    let mut plant = Plant::new(cfg);
    while !plant.done() {
        for (topic, reading) in plant.step() {
            handle
                .push_json(&topic, serde_json::to_vec(&reading)?)
                .await?;
        }
    }
    let stats = handle.finish().await?;
    drop(handle);
    let (rows, n, skipped) = collector.await?;
    eprintln!("replayed {} readings of healthy history into {n} feature rows ({skipped} with missing values skipped)", stats.readings_in);
    let x = Array2::from_shape_vec((n, names.len()), rows)?;
    let opts = TrainOptions {
        components: a.components,
        quantile: a.quantile,
        margin: a.margin,
        seed: a.plant.seed,
    };
    let model = Model::train_gmm(&name, names, x.view(), &opts)?;
    model.save(&a.out)?;
    eprintln!(
        "wrote {} (gmm, {} components, threshold {:.3}, baseline {:.3})",
        a.out.display(),
        a.components,
        model.calibration.threshold,
        model.calibration.baseline
    );
    Ok(ExitCode::SUCCESS)
}
