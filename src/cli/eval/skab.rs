//! `forewarn eval --protocol skab`: SKAB's outlier-detection protocol, per file: models
//! trained on its first rows, or the deployed rule's online detector.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use forewarn::metrics::{Confusion, Delays};
use forewarn::training::reading_windows;
use forewarn::{Model, ModelKind, TrainOptions};
use serde_json::json;

use super::{figures, print_table, score_rows, write_json, EvalArgs, Figures, Series};

/// SKAB's 34 test files: every CSV under `valve1`, `valve2` and `other`.
pub(super) fn skab_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for sub in ["valve1", "valve2", "other"] {
        let d = dir.join(sub);
        let mut v: Vec<PathBuf> = std::fs::read_dir(&d)
            .with_context(|| format!("{} is not SKAB's data directory", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "csv"))
            .collect();
        v.sort_by_key(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u32>().ok())
        });
        files.extend(v);
    }
    Ok(files)
}

pub(super) async fn skab(
    a: &EvalArgs,
    set: &forewarn::QuerySet,
    name: &str,
    dir: &Path,
) -> anyhow::Result<ExitCode> {
    let base: Vec<(String, ModelKind)> = if a.kind == "all" {
        ModelKind::all()
            .into_iter()
            .map(|(k, _)| Ok((k.to_string(), a.settings.kind(k)?)))
            .collect::<anyhow::Result<_>>()?
    } else {
        a.kind
            .split(',')
            .map(|k| Ok((k.to_string(), a.settings.kind(k)?)))
            .collect::<anyhow::Result<_>>()?
    };
    let mut kinds: Vec<(String, ModelKind, f64)> = Vec::new();
    for (k, m) in base {
        for margin in &a.margin {
            let label = if a.margin.len() > 1 {
                format!("{k} x{margin}")
            } else {
                k.clone()
            };
            kinds.push((label, m, *margin));
        }
    }
    let files = skab_files(dir)?;
    let mut pooled: Vec<(Confusion, Delays)> = vec![Default::default(); kinds.len()];
    let mut per_file = Vec::new();
    let mut first_series: Vec<Series> = Vec::new();
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} files {msg} ({elapsed})")
            .expect("valid template"),
    );
    for file in &files {
        bar.set_message(file.display().to_string());
        let r = forewarn::replay::features(set, name, file, Some(&a.label), |_| {}).await?;
        let readings = r.labels.by_device.get("").cloned().unwrap_or_default();
        check_rows(file, readings.len(), a.train_rows)?;
        // Training windows hold training readings only: they end no later than the
        // first test reading.
        let split = readings[a.train_rows].0;
        let train: Vec<_> = r
            .rows
            .rows
            .iter()
            .filter(|w| w.window_end <= split)
            .collect();
        let x = r.rows.matrix(train.iter().copied());
        let test = &readings[a.train_rows..];
        let w = reading_windows(test, &r.rows.rows, "");
        let labels: Vec<bool> = test.iter().map(|t| t.1).collect();
        let times: Vec<i64> = test.iter().map(|t| t.0).collect();
        let mut file_figs = Vec::new();
        for (i, (kind, k, margin)) in kinds.iter().enumerate() {
            let opts = TrainOptions {
                kind: *k,
                quantile: a.quantile,
                margin: *margin,
                seed: 42,
            };
            let model = Model::train(name, r.rows.names.clone(), x.view(), &opts)
                .with_context(|| format!("{}: training {kind}", file.display()))?;
            let scores = score_rows(&model, &r.rows)?;
            let s: Vec<f64> = w
                .iter()
                .map(|i| i.map_or(f64::NAN, |i| scores[i]))
                .collect();
            let p: Vec<bool> = s.iter().map(|v| *v > 1.0).collect();
            let c = Confusion::count(&p, &labels);
            let d = Delays::measure(&times, &p, &labels);
            file_figs.push(json!({"kind": kind, "f1": c.f1(), "far": c.far(), "mar": c.mar()}));
            pooled[i].0.add(c);
            pooled[i].1.add(d);
            if i == 0 && first_series.len() < 4 {
                first_series.push(Series {
                    name: format!(
                        "{kind} on {}",
                        file.strip_prefix(dir).unwrap_or(file).display()
                    ),
                    times: times.clone(),
                    labels: labels.clone(),
                    scores: s,
                    threshold: 1.0,
                    raised: vec![],
                    cleared: vec![],
                });
            }
        }
        per_file.push(json!({"file": file.strip_prefix(dir).unwrap_or(file), "training_windows": x.nrows(), "test_rows": test.len(), "kinds": file_figs}));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let figs: Vec<Figures> = kinds
        .iter()
        .zip(&pooled)
        .map(|((k, _, _), (c, d))| figures(k, *c, d))
        .collect();
    let test_rows = pooled
        .first()
        .map_or(0, |p| p.0.tp + p.0.fp + p.0.tn + p.0.fn_);
    println!(
        "SKAB protocol: {} files, first {} rows of each train, {} test rows; point-wise metrics pooled over files",
        files.len(),
        a.train_rows,
        test_rows
    );
    print_table(&figs);
    if let Some(p) = &a.json {
        write_json(
            p,
            &json!({
                "protocol": "skab",
                "queries": a.queries,
                "files": files.len(),
                "train_rows": a.train_rows,
                "test_rows": test_rows,
                "quantile": a.quantile,
                "margin": a.margin,
                "kinds": figs,
                "per_file": per_file,
            }),
        )?;
    }
    if let Some(p) = &a.plot {
        crate::cli::plot::scores(p, "SKAB: first files", &first_series)?;
        eprintln!("plot: {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// A SKAB file must hold more readings than its training (warm-up) rows.
fn check_rows(file: &Path, readings: usize, train_rows: usize) -> anyhow::Result<()> {
    if readings <= train_rows {
        bail!(
            "{}: {readings} rows, not more than the {train_rows} training rows",
            file.display()
        );
    }
    Ok(())
}

/// SKAB with the rule as deployed: each file is replayed whole through the query and
/// its sink's online detector (which learns as it goes; the first `--train-rows`
/// readings are its warm-up and are not scored). A test reading is predicted anomalous
/// when the device is in alert (raised, not yet cleared) as the first window holding
/// it closes.
pub(super) async fn skab_rule(
    a: &EvalArgs,
    set: &forewarn::QuerySet,
    dir: &Path,
) -> anyhow::Result<ExitCode> {
    use super::rule;
    let files = skab_files(dir)?;
    let registry = rule::registry(a)?;
    let (mut pooled, mut delays) = (Confusion::default(), Delays::default());
    let mut per_file = Vec::new();
    let mut series = Vec::new();
    let mut runs = Vec::new();
    for file in &files {
        let pipeline = forewarn::Pipeline::builder()
            .query_set(set.clone())
            .registry(registry.clone())
            .build()
            .await?;
        let labels =
            forewarn::replay::labels(&pipeline, file, &a.label, forewarn::replay::Order::Check)?;
        drop(pipeline);
        let readings = labels.by_device.get("").cloned().unwrap_or_default();
        check_rows(file, readings.len(), a.train_rows)?;
        let run = rule::run(set, registry.clone(), file, false, Default::default())
            .await
            .with_context(|| format!("replaying {}", file.display()))?;
        let test = &readings[a.train_rows..];
        let (p, s) = rule::judge(&run, "", test);
        let episodes = run.episodes("");
        let labels: Vec<bool> = test.iter().map(|r| r.1).collect();
        let times: Vec<i64> = test.iter().map(|r| r.0).collect();
        let c = Confusion::count(&p, &labels);
        pooled.add(c);
        delays.add(Delays::measure(&times, &p, &labels));
        let name = file.strip_prefix(dir).unwrap_or(file).display().to_string();
        per_file.push(json!({"file": name, "test_rows": test.len(), "f1": c.f1(), "far": c.far(), "mar": c.mar()}));
        if series.len() < 4 {
            series.push(Series {
                name: format!("online on {name}"),
                times,
                labels,
                scores: s,
                threshold: run.threshold().unwrap_or(f64::NAN),
                raised: episodes.iter().map(|e| e.0).collect(),
                cleared: episodes.iter().filter_map(|e| e.1).collect(),
            });
        }
        runs.push((name, run));
    }
    let f = figures(rule::label(set), pooled, &delays);
    println!(
        "SKAB protocol, the rule as deployed: {} files, first {} readings of each are warm-up, {} test rows; a reading is flagged while its device is in alert; point-wise metrics pooled over files",
        files.len(),
        a.train_rows,
        pooled.tp + pooled.fp + pooled.tn + pooled.fn_
    );
    print_table(std::slice::from_ref(&f));
    if let Some(p) = &a.json {
        write_json(
            p,
            &json!({"protocol": "skab", "rule": true, "queries": a.queries, "figures": f, "per_file": per_file}),
        )?;
    }
    if let Some(p) = &a.windows {
        let refs: Vec<(String, &rule::RuleRun)> =
            runs.iter().map(|(n, r)| (n.clone(), r)).collect();
        rule::write_windows(p, &refs)?;
    }
    if let Some(p) = &a.plot {
        crate::cli::plot::scores(p, "SKAB: first files", &series)?;
        eprintln!("plot: {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
