//! Replaying recorded history through a pipeline: the analyst's backtest.
//!
//! Each row of the file becomes the message its device would have published (see
//! [`forewarn_history`]), pushed through the same decode path, windows and scoring as
//! live input, as fast as the pipeline takes it. Windows are timed by the data's event
//! time only, so the results are those the live pipeline gives on the same readings.

use std::collections::BTreeMap;
use std::path::Path;

pub use forewarn_history::{HistoryError, HistoryFormat, Message, SourceShape};

use crate::{EngineError, EngineStats, Output, Pipeline, QuerySet, SqlError};

/// Errors from a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The history file could not be read.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The pipeline failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The query set has no feature query for the model. (Not transparent: the
    /// located error stays in the source chain, where the CLI finds it.)
    #[error("{0}")]
    Sql(#[from] SqlError),
    /// Which source the data belongs to is ambiguous or unknown.
    #[error("{0}")]
    Source(String),
}

/// The shape of the source `name` (or of the only source) of `pipeline`.
pub fn source_shape(pipeline: &Pipeline, name: Option<&str>) -> Result<SourceShape, ReplayError> {
    let sources = pipeline.sources();
    let names = || {
        sources
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let s = match name {
        Some(n) => sources.iter().find(|s| s.name == n).ok_or_else(|| {
            ReplayError::Source(format!(
                "no query reads source '{n}' (sources: {})",
                names()
            ))
        })?,
        None if sources.len() == 1 => &sources[0],
        None => {
            return Err(ReplayError::Source(format!(
                "the queries read several sources ({}): name one with --source",
                names()
            )))
        }
    };
    Ok(SourceShape {
        topic_filter: s.topic_filter.clone(),
        template: s.template.clone(),
        schema: s.schema.clone(),
    })
}

/// Replays `data` into `source` (or the only source) and hands every output to `sink`
/// in order. Returns the pipeline's counters.
pub async fn replay(
    pipeline: Pipeline,
    data: &Path,
    source: Option<&str>,
    mut sink: impl FnMut(Output) + Send + 'static,
) -> Result<EngineStats, ReplayError> {
    let shape = source_shape(&pipeline, source)?;
    let messages = forewarn_history::messages(data, &shape)?;
    let (handle, mut outputs) = pipeline.without_wall_clock().start();
    let drain = tokio::spawn(async move {
        while let Some(o) = outputs.recv().await {
            sink(o);
        }
    });
    for m in messages {
        let m = m?;
        handle.push_json(&m.topic, m.payload).await?;
    }
    let stats = handle.finish().await?;
    drop(handle);
    drain.await.map_err(|_| EngineError::Stopped)?;
    Ok(stats)
}

/// Reason codes of rows refused after decoding (by a query's window operator): those
/// readings are already counted in [`EngineStats::readings_in`]. Every other reason
/// refuses a message or reading before it is counted there.
const AFTER_DECODING: &[&str] = &[
    "late",
    "future_timestamp",
    "missing_timestamp",
    "too_many_windows",
    "state_limit",
];

/// How many of a replay's readings were refused, and why, from its counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rejections {
    /// Readings offered: those decoded plus those refused before decoding.
    pub readings: u64,
    /// Refusals over all reasons. A reading refused by several queries counts once per
    /// query, so this is capped at `readings` for the share.
    pub rejected: u64,
    /// Refusals by reason code (`late`, `future_timestamp`, `not_json`, ...).
    pub by_reason: BTreeMap<String, u64>,
}

impl Rejections {
    /// The refusals in `stats`.
    pub fn of(stats: &EngineStats) -> Self {
        let before: u64 = stats
            .rejected
            .iter()
            .filter(|(r, _)| !AFTER_DECODING.contains(&r.as_str()))
            .map(|(_, n)| n)
            .sum();
        Rejections {
            readings: stats.readings_in + before,
            rejected: stats.rejected.values().sum(),
            by_reason: stats.rejected.clone(),
        }
    }

    /// Percentage of the readings refused (0 when there were none).
    pub fn percent(&self) -> f64 {
        if self.readings == 0 {
            return 0.0;
        }
        100.0 * self.rejected.min(self.readings) as f64 / self.readings as f64
    }

    /// Whether more than `max_percent` % of the readings were refused.
    pub fn exceed(&self, max_percent: f64) -> bool {
        self.rejected > 0 && self.percent() > max_percent
    }

    /// The reasons, most frequent first: `future_timestamp 16,724, late 3`.
    pub fn reasons(&self) -> String {
        let mut v: Vec<(&String, &u64)> = self.by_reason.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        v.iter()
            .map(|(r, n)| format!("{r} {}", thousands(**n)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `16,724 of 17,280 readings (96.8 %) were rejected (future_timestamp 16,724)`.
    pub fn summary(&self) -> String {
        format!(
            "{} of {} readings ({:.1} %) were rejected ({})",
            thousands(self.rejected),
            thousands(self.readings),
            self.percent(),
            self.reasons()
        )
    }
}

/// `17280` as `17,280`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What [`features`] read.
#[derive(Debug)]
pub struct ReplayedFeatures {
    /// The feature query's rows.
    pub rows: crate::training::FeatureRows,
    /// Labels of the readings, when a label column was named.
    pub labels: crate::training::Labels,
    /// The pipeline's counters.
    pub stats: EngineStats,
}

impl ReplayedFeatures {
    /// The readings refused, by reason.
    pub fn rejections(&self) -> Rejections {
        Rejections::of(&self.stats)
    }
}

/// Replays `data` through the feature query of `model` (see
/// [`forewarn_sql::feature_query`]) and collects its rows. With `label`, also reads
/// that column of every reading (true, 1 or 1.0 = anomalous) for evaluation.
/// `progress` is called with the number of readings pushed so far.
pub async fn features(
    set: &QuerySet,
    model: &str,
    data: &Path,
    label: Option<&str>,
    progress: impl FnMut(u64),
) -> Result<ReplayedFeatures, ReplayError> {
    features_with(set, model, data, label, progress, |_| {}).await
}

/// Like [`features`]; every output that is not a feature row (the dead letters of
/// refused readings) goes to `others`.
pub async fn features_with(
    set: &QuerySet,
    model: &str,
    data: &Path,
    label: Option<&str>,
    mut progress: impl FnMut(u64),
    mut others: impl FnMut(Output) + Send + 'static,
) -> Result<ReplayedFeatures, ReplayError> {
    let (features, names) = forewarn_sql::feature_query(set, model)?;
    let pipeline = Pipeline::builder()
        .query_set(features)
        .build()
        .await?
        .without_wall_clock();
    let shape = source_shape(&pipeline, None)?;
    let source = pipeline.sources()[0].clone();
    let messages = forewarn_history::messages(data, &shape)?;
    let (handle, mut outputs) = pipeline.start();
    let collect = tokio::spawn(async move {
        let mut rows = crate::training::FeatureRows::new(names);
        while let Some(o) = outputs.recv().await {
            if !rows.push(&o) {
                others(o);
            }
        }
        rows
    });
    let mut labels = crate::training::Labels::default();
    let mut n = 0u64;
    for m in messages {
        let m = m?;
        if let Some(col) = label {
            let v: serde_json::Value =
                serde_json::from_slice(&m.payload).unwrap_or(serde_json::Value::Null);
            let time = match &v[source.event_time.as_str()] {
                serde_json::Value::String(s) => forewarn_core::parse_rfc3339(s),
                other => other.as_i64(),
            };
            let anomalous = match &v[col] {
                serde_json::Value::Bool(b) => Some(*b),
                serde_json::Value::Number(x) => x.as_f64().map(|x| x >= 0.5),
                serde_json::Value::String(s) => match s.trim() {
                    "true" | "1" | "1.0" => Some(true),
                    "false" | "0" | "0.0" => Some(false),
                    _ => None,
                },
                _ => None,
            };
            match (time, anomalous) {
                (Some(t), Some(a)) => {
                    let device = v["device"].as_str().unwrap_or("");
                    labels.push(device, t, a);
                }
                _ => {
                    return Err(ReplayError::Source(format!(
                        "{}: a reading has no usable '{}' time or '{col}' label: {}",
                        data.display(),
                        source.event_time,
                        String::from_utf8_lossy(&m.payload)
                    )))
                }
            }
        }
        handle.push_json(&m.topic, m.payload).await?;
        n += 1;
        if n.is_multiple_of(1024) {
            progress(n);
        }
    }
    progress(n);
    let stats = handle.finish().await?;
    drop(handle);
    let rows = collect.await.map_err(|_| EngineError::Stopped)?;
    labels.sort();
    Ok(ReplayedFeatures {
        rows,
        labels,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_count_decoded_and_undecodable_readings_once() {
        let mut stats = EngineStats {
            readings_in: 17_280,
            ..Default::default()
        };
        stats.rejected.insert("future_timestamp".into(), 16_724);
        let r = Rejections::of(&stats);
        assert_eq!(
            r.summary(),
            "16,724 of 17,280 readings (96.8 %) were rejected (future_timestamp 16,724)"
        );
        assert!(r.exceed(1.0) && !r.exceed(97.0));
        // Refused before decoding: not in readings_in, so they add to the readings.
        stats.rejected.insert("not_json".into(), 720);
        let r = Rejections::of(&stats);
        assert_eq!((r.readings, r.rejected), (18_000, 17_444));
        assert_eq!(r.reasons(), "future_timestamp 16,724, not_json 720");
        assert!(!Rejections::of(&EngineStats::default()).exceed(0.0));
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
