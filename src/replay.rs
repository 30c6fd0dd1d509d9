//! Replaying recorded history through a pipeline: the analyst's backtest.
//!
//! Each row of the file becomes the message its device would have published (see
//! [`forewarn_history`]), pushed through the same decode path, windows and scoring as
//! live input, as fast as the pipeline takes it. Windows are timed by the data's event
//! time only, so the results are those the live pipeline gives on the same readings.

use std::path::Path;

pub use forewarn_history::{HistoryError, HistoryFormat, Message, SourceShape};

use crate::{EngineError, EngineStats, Output, Pipeline};

/// Errors from a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The history file could not be read.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The pipeline failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
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
