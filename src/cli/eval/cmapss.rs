//! `forewarn eval --protocol cmapss DIR`: NASA's C-MAPSS run-to-failure fleet. Every
//! engine is streamed as a device, one operating cycle an hour, through the rule as
//! deployed; its raised alerts are judged by `forewarn::metrics::fleet` with the
//! protocol of `DIR/README.md`: an alert in the first half of an engine's life is false,
//! and the figures are engines warned before failure, the lead time in cycles, and false
//! alerts per engine.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use forewarn::metrics::fleet::{self, DeviceRun, FleetParams};
use forewarn::QuerySet;
use serde_json::json;

use super::rule::{self, RuleRun};
use super::{write_json, EvalArgs};

/// Event time of cycle 0 (2000-01-01T00:00:00Z) and the time one cycle takes.
const BASE_MS: i64 = 946_684_800_000;
const CYCLE_MS: i64 = 3_600_000;
/// Lead-time horizons reported, in cycles.
const HORIZONS: [i64; 4] = [1, 10, 30, 50];

/// The engines of `train_FD001.txt` as history: `unit, cycle, ts, op1..op3, s1..s21`,
/// in time order; and each engine's last cycle.
fn history(dir: &Path, out: &Path) -> anyhow::Result<Vec<(i64, i64)>> {
    let src = dir.join("train_FD001.txt");
    let text = std::fs::read_to_string(&src)
        .with_context(|| format!("{} is not the C-MAPSS directory", dir.display()))?;
    let mut rows: Vec<(i64, i64, Vec<&str>)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let v: Vec<&str> = line.split_whitespace().collect();
        if v.is_empty() {
            continue;
        }
        if v.len() != 26 {
            bail!(
                "{}:{}: {} columns, expected 26 (unit, cycle, 3 settings, 21 sensors)",
                src.display(),
                n + 1,
                v.len()
            );
        }
        let num = |i: usize| -> anyhow::Result<i64> {
            v[i].parse().with_context(|| {
                format!(
                    "{}:{}: '{}' is not a whole number",
                    src.display(),
                    n + 1,
                    v[i]
                )
            })
        };
        rows.push((num(0)?, num(1)?, v[2..].to_vec()));
    }
    let mut last: std::collections::BTreeMap<i64, i64> = Default::default();
    for (u, c, _) in &rows {
        let e = last.entry(*u).or_insert(0);
        *e = (*e).max(*c);
    }
    rows.sort_by_key(|(u, c, _)| (*c, *u));
    let mut csv = String::from("unit,cycle,ts,op1,op2,op3");
    for i in 1..=21 {
        write!(csv, ",s{i}")?;
    }
    csv.push('\n');
    for (u, c, v) in &rows {
        write!(
            csv,
            "{u},{c},{}",
            forewarn_core::format_rfc3339(BASE_MS + c * CYCLE_MS)
        )?;
        for x in v {
            write!(csv, ",{x}")?;
        }
        csv.push('\n');
    }
    std::fs::write(out, csv).with_context(|| format!("writing {}", out.display()))?;
    Ok(last.into_iter().collect())
}

/// The cycle a window ending at `ms` last covered.
fn cycle_of(ms: i64) -> i64 {
    (ms - BASE_MS) / CYCLE_MS - 1
}

pub(super) async fn cmapss(a: &EvalArgs, set: &QuerySet, dir: &Path) -> anyhow::Result<ExitCode> {
    rule::require_lifecycle(set)?;
    let tmp = std::env::temp_dir().join(format!("forewarn-cmapss-{}.csv", std::process::id()));
    let engines = history(dir, &tmp)?;
    let registry = rule::registry(a)?;
    let bar = super::progress("readings replayed");
    let run = rule::run(set, registry, &tmp, false, Default::default()).await;
    bar.finish_and_clear();
    let _ = std::fs::remove_file(&tmp);
    let run: RuleRun = run?;
    if run.stats.rejected_total() > 0 {
        eprintln!(
            "note: {}",
            forewarn::replay::Rejections::of(&run.stats).summary()
        );
    }
    let devices: Vec<DeviceRun> = engines
        .iter()
        .map(|(unit, last)| {
            let episodes = run
                .episodes(&unit.to_string())
                .into_iter()
                .map(|(r, c)| (cycle_of(r), c.map(cycle_of)))
                .collect();
            DeviceRun::from_intervals(unit.to_string(), 1, *last, vec![*last], episodes)
        })
        .collect();
    let report = fleet::evaluate_fleet(&devices, &FleetParams::cmapss(HORIZONS.to_vec()))?;
    let warned = report.failures_warned;
    println!(
        "C-MAPSS FD001 protocol: {} engines run to failure, one cycle an hour; a raise in the first half of an engine's life is a false alert",
        report.devices
    );
    println!(
        "engines warned before failure: {warned}/{} ({:.1} %)",
        report.failures,
        100.0 * warned as f64 / report.failures.max(1) as f64
    );
    if let Some(l) = &report.lead_times {
        println!(
            "lead time, cycles: median {:.0} (quartiles {:.0} – {:.0}, min {:.0}, max {:.0})",
            l.median, l.q1, l.q3, l.min, l.max
        );
    }
    for h in &report.horizons {
        println!(
            "  warned at least {:>2} cycles ahead: {}",
            h.horizon, h.failures_warned_ahead
        );
    }
    println!(
        "false alerts: {} ({:.3} per engine); raises {}; time in alert {:.1} % of engine life",
        report.false_alerts,
        report.false_alerts_per_device,
        report.raises,
        100.0 * report.alert_time_fraction
    );
    if let Some(p) = &a.json {
        write_json(
            p,
            &json!({"protocol": "cmapss", "queries": a.queries, "cycle": "1 hour", "report": report}),
        )?;
    }
    if let Some(p) = &a.windows {
        rule::write_windows(p, &[(String::new(), &run)])?;
    }
    if let Some(p) = &a.plot {
        crate::cli::plot::fleet(p, "C-MAPSS FD001: first engines", &run, 6)?;
        eprintln!("plot: {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
