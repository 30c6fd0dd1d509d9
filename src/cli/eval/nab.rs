//! `forewarn eval --protocol nab DIR`: the Numenta Anomaly Benchmark, scored on the
//! alerts the rule raises, by NAB's rules (`forewarn::metrics::nab`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use forewarn::metrics::nab::{self, NabProfile};
use forewarn::QuerySet;
use serde_json::json;

use super::rule::{self, RuleRun};
use super::{write_json, EvalArgs};

const PROFILES: [&str; 3] = ["standard", "reward_low_FP_rate", "reward_low_FN_rate"];

pub(super) async fn nab(a: &EvalArgs, set: &QuerySet, dir: &Path) -> anyhow::Result<ExitCode> {
    rule::require_lifecycle(set)?;
    let files = nab::load_corpus(dir)
        .with_context(|| format!("{} is not a NAB directory (data/, labels/)", dir.display()))?;
    if files.is_empty() {
        bail!("{}: no labelled NAB files", dir.display());
    }
    let registry = rule::registry(a)?;
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} files {msg} ({elapsed})")
            .expect("valid template"),
    );
    let data = dir.join("data");
    let mut detections: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut runs: Vec<(String, RuleRun)> = Vec::new();
    let mut rejected = 0u64;
    for f in &files {
        bar.set_message(f.name.clone());
        let path = f.name.split('/').fold(data.clone(), |p, part| p.join(part));
        // A few NAB files repeat timestamps: sorted, as a broker would deliver them.
        let run = rule::run(set, registry.clone(), &path, true, Default::default())
            .await
            .with_context(|| format!("replaying {}", path.display()))?;
        rejected += run.stats.rejected_total();
        // A raise is known once its window closes; NAB counts a detection at a row,
        // so it is credited to the newest row that window can hold (the row the
        // detector had just seen), not to a later one.
        let mut sorted = f.row_times.clone();
        sorted.sort_unstable();
        let times: Vec<i64> = run
            .changes
            .iter()
            .filter(|c| c.kind == forewarn::TransitionKind::Raised)
            .filter_map(|c| {
                let i = sorted.partition_point(|t| *t < c.at_ms);
                (i > 0).then(|| sorted[i - 1])
            })
            .collect();
        detections.insert(f.name.clone(), times);
        runs.push((f.name.clone(), run));
        bar.inc(1);
    }
    bar.finish_and_clear();
    if rejected > 0 {
        eprintln!("note: {rejected} readings were rejected over the corpus");
    }
    let mut totals = serde_json::Map::new();
    println!(
        "NAB protocol: {} files, alerts = the rule's raised transitions",
        files.len()
    );
    println!(
        "{:<20} {:>7} {:>9} {:>11} {:>7}",
        "profile", "score", "windows", "detected", "FP"
    );
    let mut per_file = Vec::new();
    for name in PROFILES {
        let profile = NabProfile::by_name(name)?;
        let scores = nab::score_corpus(&files, &detections, &profile);
        let t = nab::NabTotals::of(&scores);
        println!(
            "{:<20} {:>7.2} {:>9} {:>11} {:>7}",
            name, t.score, t.windows, t.windows_detected, t.false_positives
        );
        if name == "standard" {
            for s in &scores {
                per_file.push(json!({
                    "file": s.name,
                    "raw": s.raw,
                    "windows": s.windows.len(),
                    "detected": s.windows_detected,
                    "false_positives": s.false_positives.len(),
                }));
            }
        }
        totals.insert(name.to_string(), serde_json::to_value(t)?);
    }
    let score = totals["standard"]["score"].as_f64().unwrap_or(f64::NAN);
    println!("NAB standard score: {score:.2}");
    let rendered: BTreeMap<&String, Vec<String>> = detections
        .iter()
        .map(|(f, ts)| {
            (
                f,
                ts.iter()
                    .map(|t| {
                        forewarn_core::format_rfc3339(*t)
                            .replace('T', " ")
                            .trim_end_matches('Z')
                            .trim_end_matches(".000")
                            .to_string()
                    })
                    .collect(),
            )
        })
        .collect();
    if let Some(p) = &a.json {
        write_json(
            p,
            &json!({
                "protocol": "nab",
                "queries": a.queries,
                "files": files.len(),
                "profiles": totals,
                "per_file": per_file,
                "detections": rendered,
            }),
        )?;
    }
    if let Some(p) = &a.windows {
        let refs: Vec<(String, &RuleRun)> = runs.iter().map(|(n, r)| (n.clone(), r)).collect();
        rule::write_windows(p, &refs)?;
    }
    if let Some(p) = &a.plot {
        let first: Vec<crate::cli::plot::LabelledRun> = runs
            .iter()
            .zip(&files)
            .filter(|(_, f)| !f.windows.is_empty())
            .take(6)
            .map(|((n, r), f)| (n.clone(), r, f.windows.clone()))
            .collect();
        crate::cli::plot::rule_runs(p, "NAB: first labelled files", &first)?;
        eprintln!("plot: {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
