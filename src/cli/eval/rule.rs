//! Runs the deployed rule — the query file as it stands, its sink's detector and
//! lifecycle included — over recorded history, and keeps what it would publish: every
//! window's score and features, and every transition.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use forewarn::TransitionKind;
use forewarn::{EngineConfig, EngineStats, ModelRegistry, Output, Pipeline, QuerySet};
use serde_json::{Map, Value};

/// One window row as the sink saw it.
#[derive(Debug, Clone)]
pub struct WindowRow {
    pub query: String,
    pub device: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub score: Option<f64>,
    pub features: Map<String, Value>,
}

/// One transition.
#[derive(Debug, Clone)]
pub struct Change {
    pub device: String,
    pub kind: TransitionKind,
    /// End of the window that caused it: when it became known.
    pub at_ms: i64,
}

/// What a rule published over a history.
#[derive(Debug, Default)]
pub struct RuleRun {
    pub windows: Vec<WindowRow>,
    pub changes: Vec<Change>,
    pub stats: EngineStats,
    /// The lifecycle's threshold (`warning_at`), by query.
    pub thresholds: BTreeMap<String, f64>,
}

impl RuleRun {
    /// The threshold of the (first) rule.
    pub fn threshold(&self) -> Option<f64> {
        self.thresholds.values().next().copied()
    }

    /// (raised, cleared-or-None) episodes of `device`, in time order.
    pub fn episodes(&self, device: &str) -> Vec<(i64, Option<i64>)> {
        let mut out: Vec<(i64, Option<i64>)> = Vec::new();
        for c in self.changes.iter().filter(|c| c.device == device) {
            match c.kind {
                TransitionKind::Raised => out.push((c.at_ms, None)),
                TransitionKind::Cleared => {
                    if let Some(last) = out.last_mut() {
                        last.1.get_or_insert(c.at_ms);
                    }
                }
                TransitionKind::Escalated => {}
            }
        }
        out
    }
}

/// Replays `data` (sorted when `sort`) through `set` with `registry`'s models, on the
/// engine's settings `config` (the live engine's, or the defaults).
pub async fn run(
    set: &QuerySet,
    registry: Arc<ModelRegistry>,
    data: &Path,
    sort: bool,
    config: EngineConfig,
) -> anyhow::Result<RuleRun> {
    let pipeline = Pipeline::builder()
        .query_set(set.clone())
        .registry(registry)
        .config(EngineConfig {
            window_rows: true,
            model_reload_interval: None,
            ..config
        })
        .build()
        .await?;
    let thresholds = pipeline
        .lifecycles()
        .into_iter()
        .map(|(q, l)| (q, l.warning_at))
        .collect();
    let out = Arc::new(Mutex::new(RuleRun::default()));
    let sink = out.clone();
    let order = if sort {
        forewarn::replay::Order::Sort
    } else {
        forewarn::replay::Order::Check
    };
    let stats = forewarn::replay::replay_ordered(pipeline, data, None, order, move |o| {
        let mut r = sink.lock().expect("rule run");
        match o {
            Output::Alert { alert, .. } => r.windows.push(WindowRow {
                query: alert.query,
                device: alert.device,
                start_ms: alert.window_start.as_millis(),
                end_ms: alert.window_end.as_millis(),
                score: alert.score,
                features: alert.features,
            }),
            // A query that is no anomaly rule: its windows, unscored.
            Output::Row { row, .. } => r.windows.push(WindowRow {
                query: row.query,
                device: row.device,
                start_ms: row.window_start.as_millis(),
                end_ms: row.window_end.as_millis(),
                score: None,
                features: row.columns,
            }),
            Output::Transition { message, .. } => r.changes.push(Change {
                device: message.device,
                kind: message.transition,
                at_ms: message.window_end.as_millis(),
            }),
            _ => {}
        }
    })
    .await?;
    let mut r = std::mem::take(&mut *out.lock().expect("rule run"));
    r.stats = stats;
    r.thresholds = thresholds;
    Ok(r)
}

/// Judges each of `device`'s labelled readings (time, label) by the rule: flagged while
/// the device is in alert (raised, not yet cleared) as the first window holding the
/// reading closes. Also returns that window's score (NaN when no window held it).
pub fn judge(run: &RuleRun, device: &str, readings: &[(i64, bool)]) -> (Vec<bool>, Vec<f64>) {
    let mut ends: Vec<(i64, Option<f64>)> = run
        .windows
        .iter()
        .filter(|w| w.device == device)
        .map(|w| (w.end_ms, w.score))
        .collect();
    ends.sort_by_key(|e| e.0);
    let episodes = run.episodes(device);
    let in_alert = |t: i64| {
        episodes
            .iter()
            .any(|(r, c)| *r <= t && c.is_none_or(|c| t < c))
    };
    readings
        .iter()
        .map(|(t, _)| {
            let i = ends.partition_point(|e| e.0 <= *t);
            match ends.get(i) {
                Some((end, score)) => (in_alert(*end), score.unwrap_or(f64::NAN)),
                None => (false, f64::NAN),
            }
        })
        .unzip()
}

/// Writes every window as a JSON line: query, device, bounds, score and features.
pub fn write_windows(path: &Path, runs: &[(String, &RuleRun)]) -> anyhow::Result<()> {
    use std::io::Write;
    let f = std::fs::File::create(path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    for (series, run) in runs {
        for row in &run.windows {
            let mut v = Map::new();
            if !series.is_empty() {
                v.insert("series".into(), Value::String(series.clone()));
            }
            v.insert("query".into(), Value::String(row.query.clone()));
            v.insert("device".into(), Value::String(row.device.clone()));
            v.insert(
                "window_start".into(),
                Value::String(forewarn_core::format_rfc3339(row.start_ms)),
            );
            v.insert(
                "window_end".into(),
                Value::String(forewarn_core::format_rfc3339(row.end_ms)),
            );
            v.insert("score".into(), row.score.map_or(Value::Null, Value::from));
            for (k, x) in &row.features {
                v.insert(k.clone(), x.clone());
            }
            serde_json::to_writer(&mut w, &v)?;
            w.write_all(b"\n")?;
        }
    }
    w.flush()?;
    Ok(())
}

/// Whether a sink of `set` learns online (`detector = 'online'`) or takes its threshold
/// from a false-alert rate (`false_alerts` on a trained model's surprise): then `eval`
/// judges what the lifecycle publishes.
pub fn deployed(set: &QuerySet) -> bool {
    set.sinks
        .values()
        .any(|s| s.online.is_some() || s.false_alerts.is_some())
}

/// How the figures name the rule: `online (rule)` or `trained (rule)`.
pub fn label(set: &QuerySet) -> &'static str {
    if set.sinks.values().any(|s| s.online.is_some()) {
        "online (rule)"
    } else {
        "trained (rule)"
    }
}

/// Benchmarks judge the rule's alerts, so its sink needs a lifecycle.
pub fn require_lifecycle(set: &QuerySet) -> anyhow::Result<()> {
    if set.sinks.values().any(|s| s.lifecycle.is_some()) {
        return Ok(());
    }
    anyhow::bail!(
        "the queries' sinks have no alert lifecycle, so they raise nothing to judge: give the sink detector = 'online' (or warning_at = '<score>' with a trained model)"
    )
}

/// The models the rule may call: `--models` or `./models` when present, else none.
pub fn registry(a: &super::EvalArgs) -> anyhow::Result<Arc<ModelRegistry>> {
    let r = ModelRegistry::new();
    if let Some(dir) = crate::cli::models_dir(a.models.as_deref())? {
        r.load_dir(&dir)?;
    }
    Ok(Arc::new(r))
}
