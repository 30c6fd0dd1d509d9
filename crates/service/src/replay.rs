//! Replaying recorded history through a pipeline: the analyst's backtest.
//!
//! Each row of the file is the message its device would have published (see
//! [`forewarn_history`]), taken through the same routing, checks, decoding, windows and
//! scoring as live input, as fast as the pipeline takes it. CSV and Parquet rows are
//! pushed as Arrow columns in batches ([`PipelineHandle::push_readings`]), never
//! written as JSON; JSON lines are pushed as the messages they are. Windows are timed by the data's event
//! time only, so the results are those the live pipeline gives on the same readings.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use forewarn_history::{Chunk, HistoryError, HistoryFormat, Message, Rows, SourceShape};

use forewarn_engine::{
    EngineConfig, EngineError, EngineStats, Output, Pipeline, PipelineHandle, Readings, SourceInfo,
};
use forewarn_sql::{QuerySet, SqlError};

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
    /// Which source the data belongs to is ambiguous or unknown, or it cannot be
    /// replayed.
    #[error("{0}")]
    Source(String),
    /// The history is not in time order (see [`Order`]).
    #[error(transparent)]
    Unsorted(Box<OutOfOrder>),
    /// The file has no column for some of the source's declared columns: every
    /// reading would have them NULL, or be refused where they are required.
    #[error("{0}")]
    MissingColumns(String),
}

/// Where history first goes back in time by more than the watermark delay.
#[derive(Debug, thiserror::Error)]
#[error("{path}: not in time order: reading {at} ({topic}, {time}) is {behind} behind reading {newest_at} ({newest}), more than the watermark delay of source '{table}' ({delay}); live, it would be late. Sort the file by time, or pass --sort (sorts in memory)")]
pub struct OutOfOrder {
    /// The history file.
    pub path: String,
    /// The reading out of order (1-based, in file order).
    pub at: u64,
    /// Its topic.
    pub topic: String,
    /// Its event time.
    pub time: String,
    /// How far it is behind the newest before it.
    pub behind: String,
    /// The newest reading before it (1-based).
    pub newest_at: u64,
    /// Its time.
    pub newest: String,
    /// The source table.
    pub table: String,
    /// The source's watermark delay.
    pub delay: String,
}

/// How replay treats history that is not in event-time order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// Replay in file order, and stop with [`ReplayError::Unsorted`] at the first
    /// reading further behind the newest before it than the source's watermark delay
    /// (live, it would be late): exports ordered by device would otherwise lose most of
    /// their readings as late without a word. Recorded messages (`{"topic",
    /// "payload"}` lines) are not checked: their order is the order they arrived in.
    #[default]
    Check,
    /// Sort the readings by event time first (stable; readings without a readable time
    /// first, for the decoder to refuse). Holds the whole file in memory, about its
    /// size as JSON.
    Sort,
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
    if s.processing_time {
        return Err(ReplayError::Source(format!(
            "source '{}' has no event time (no WATERMARK FOR in its CREATE TABLE), so its windows follow the wall clock: history cannot be replayed through it. Declare the time column, e.g. WATERMARK FOR ts AS ts - INTERVAL '10' SECOND",
            s.name
        )));
    }
    Ok(SourceShape {
        topic_filter: s.topic_filter.clone(),
        template: s.template.clone(),
        schema: s.schema.clone(),
        event_time: Some(s.event_time.clone()),
    })
}

/// Refuses a CSV or Parquet history file without a column of source `source` (or of
/// the only source) of `pipeline` (see [`ReplayError::MissingColumns`]). Replay checks
/// this itself; a caller may check first, before it creates its output.
pub fn check_file_columns(
    pipeline: &Pipeline,
    data: &Path,
    source: Option<&str>,
) -> Result<(), ReplayError> {
    source_shape(pipeline, source)?;
    let info = pipeline
        .sources()
        .iter()
        .find(|s| source.is_none_or(|n| n == s.name))
        .expect("source_shape found it");
    check_columns(data, info)
}

/// The columns `source` reads from a file: all it declares but an arrival time, which
/// the engine fills.
fn declared(source: &SourceInfo) -> Vec<&str> {
    source
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|&n| !(source.processing_time && n == forewarn_sql::ARRIVAL_TIME))
        .collect()
}

/// [`missing_columns`] of `data`'s header or schema, for `source`.
fn check_columns(data: &Path, source: &SourceInfo) -> Result<(), ReplayError> {
    match forewarn_history::columns(data, &declared(source))? {
        Some(have) => missing_columns(data, source, &have),
        None => Ok(()),
    }
}

/// Refuses a history file (columns `have`) without a column `source` declares: its
/// readings would all have that value NULL, and a query over it would give no result,
/// or no alert, without a word (a renamed export column, a typo in the case).
fn missing_columns(data: &Path, source: &SourceInfo, have: &[String]) -> Result<(), ReplayError> {
    let missing: Vec<&str> = declared(source)
        .into_iter()
        .filter(|&n| !have.iter().any(|h| h == n))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let quoted = |names: &mut dyn Iterator<Item = &str>| {
        names
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let hints: Vec<String> = missing
        .iter()
        .filter_map(|m| {
            let near = have.iter().find(|h| h.eq_ignore_ascii_case(m))?;
            Some(format!("'{near}' differs from '{m}' only in case"))
        })
        .collect();
    let (columns, it, names) = match missing.len() {
        1 => ("column", "it", "this name"),
        _ => ("columns", "them", "these names"),
    };
    let mut message = format!(
        "{}: no {columns} {} declared by source '{}' (the file's columns: {}): every reading would lack {it}. Add {it} to the file under {names}, or leave {it} out of the CREATE TABLE",
        data.display(),
        quoted(&mut missing.iter().copied()),
        source.name,
        quoted(&mut have.iter().map(String::as_str)),
    );
    if !hints.is_empty() {
        message += &format!(" ({}: names are case-sensitive)", hints.join(", "));
    }
    Err(ReplayError::MissingColumns(message))
}

/// The messages of `data` for source `source` (or the only source) of `pipeline`, in
/// the order replay pushes them (see [`Order`]): those of [`ordered_chunks`], rows
/// written as JSON.
pub fn ordered_messages(
    pipeline: &Pipeline,
    data: &Path,
    source: Option<&str>,
    order: Order,
) -> Result<Box<dyn Iterator<Item = Result<Message, ReplayError>>>, ReplayError> {
    Ok(Box::new(
        ordered_chunks(pipeline, data, source, order)?.flat_map(
            |c| -> Box<dyn Iterator<Item = Result<Message, ReplayError>>> {
                match c {
                    Ok(Chunk::Message(m)) => Box::new(std::iter::once(Ok(m))),
                    Ok(Chunk::Rows(r)) => Box::new((0..r.len()).map(move |i| Ok(r.message(i)))),
                    Err(e) => Box::new(std::iter::once(Err(e))),
                }
            },
        ),
    ))
}

/// Rows per batch when sorted history is gathered into batches again.
const SORTED_ROWS: usize = 8192;

/// The pieces of `data` for source `source` (or the only source) of `pipeline` in the
/// order replay pushes them (see [`Order`]): messages (JSON lines) or rows (CSV,
/// Parquet), with the check of [`Order::Check`] applied to each reading.
pub fn ordered_chunks(
    pipeline: &Pipeline,
    data: &Path,
    source: Option<&str>,
    order: Order,
) -> Result<Box<dyn Iterator<Item = Result<Chunk, ReplayError>>>, ReplayError> {
    let shape = source_shape(pipeline, source)?;
    let info = pipeline
        .sources()
        .iter()
        .find(|s| source.is_none_or(|n| n == s.name))
        .expect("source_shape found it");
    check_columns(data, info)?;
    let chunks = forewarn_history::chunks(data, &shape)?;
    if order == Order::Sort {
        let all = chunks.collect::<Result<Vec<_>, _>>()?;
        return Ok(Box::new(sorted(all).into_iter().map(Ok)));
    }
    let mut check = TimeOrder {
        delay: info.watermark.delay,
        max_future: info.watermark.max_future,
        table: info.name.clone(),
        path: data.display().to_string(),
        newest: None,
        at: 0,
    };
    Ok(Box::new(chunks.flat_map(
        move |c| -> Vec<Result<Chunk, ReplayError>> {
            match c {
                Err(e) => vec![Err(e.into())],
                Ok(Chunk::Message(m)) => match check.next(m.time, m.recorded, || m.topic.clone()) {
                    Ok(()) => vec![Ok(Chunk::Message(m))],
                    Err(e) => vec![Err(e)],
                },
                Ok(Chunk::Rows(r)) => {
                    for i in 0..r.len() {
                        if let Err(e) = check.next(r.time(i), false, || r.topic(i).to_string()) {
                            // The rows before it go first, as their messages would have.
                            return match i {
                                0 => vec![Err(e)],
                                _ => vec![Ok(Chunk::Rows(r.slice(0, i))), Err(e)],
                            };
                        }
                    }
                    vec![Ok(Chunk::Rows(r))]
                }
            }
        },
    )))
}

/// `chunks` sorted by event time (stable; readings without a readable time first):
/// rows gathered into batches again, messages one by one.
fn sorted(chunks: Vec<Chunk>) -> Vec<Chunk> {
    let rows: Vec<&Rows> = chunks
        .iter()
        .filter_map(|c| match c {
            Chunk::Rows(r) => Some(r),
            Chunk::Message(_) => None,
        })
        .collect();
    let tabular = rows.len() == chunks.len()
        && !rows.is_empty()
        && rows.iter().all(|r| r.same_columns(rows[0]));
    if !tabular {
        let mut all: Vec<Message> = chunks
            .into_iter()
            .flat_map(|c| match c {
                Chunk::Message(m) => vec![m],
                Chunk::Rows(r) => (0..r.len()).map(|i| r.message(i)).collect(),
            })
            .collect();
        all.sort_by_key(|m| m.time.unwrap_or(i64::MIN));
        return all.into_iter().map(Chunk::Message).collect();
    }
    let parts: Vec<Rows> = rows.into_iter().cloned().collect();
    let mut at: Vec<(usize, usize)> = parts
        .iter()
        .enumerate()
        .flat_map(|(p, r)| (0..r.len()).map(move |i| (p, i)))
        .collect();
    at.sort_by_key(|&(p, i)| parts[p].time(i).unwrap_or(i64::MIN));
    at.chunks(SORTED_ROWS)
        .map(|c| Chunk::Rows(Rows::gather(&parts, c).expect("parts with the same columns")))
        .collect()
}

/// The check of [`Order::Check`], reading after reading.
struct TimeOrder {
    delay: i64,
    max_future: Option<i64>,
    table: String,
    path: String,
    /// The newest reading so far (1-based position, time).
    newest: Option<(u64, i64)>,
    /// Readings so far.
    at: u64,
}

impl TimeOrder {
    /// Takes the next reading (its time, whether it is a recorded message, its topic,
    /// written only for the error).
    fn next(
        &mut self,
        time: Option<i64>,
        recorded: bool,
        topic: impl FnOnce() -> String,
    ) -> Result<(), ReplayError> {
        self.at += 1;
        let at = self.at;
        // A recorded message stream is replayed as it arrived, late readings included.
        if let (Some(t), false) = (time, recorded) {
            match self.newest {
                Some((n_at, n)) if t < n.saturating_sub(self.delay) => {
                    return Err(ReplayError::Unsorted(Box::new(OutOfOrder {
                        path: self.path.clone(),
                        at,
                        topic: topic(),
                        time: forewarn_core::format_rfc3339(t),
                        behind: format_duration(n - t),
                        newest_at: n_at,
                        newest: forewarn_core::format_rfc3339(n),
                        table: self.table.clone(),
                        delay: format_duration(self.delay),
                    })))
                }
                Some((_, n)) if n >= t => {}
                // Further ahead than max_future: the engine refuses it (a clock that
                // jumped), so it is no reference for the readings after it.
                Some((_, n)) if self.max_future.is_some_and(|l| t > n.saturating_add(l)) => {}
                _ => self.newest = Some((at, t)),
            }
        }
        Ok(())
    }
}

/// Replays `data` into `source` (or the only source) and hands every output to `sink`
/// in order. Returns the pipeline's counters. History must be in time order (see
/// [`Order::Check`]; [`replay_ordered`] can sort it).
pub async fn replay(
    pipeline: Pipeline,
    data: &Path,
    source: Option<&str>,
    sink: impl FnMut(Output) + Send + 'static,
) -> Result<EngineStats, ReplayError> {
    replay_ordered(pipeline, data, source, Order::Check, sink).await
}

/// [`replay`], with the treatment of history out of time order.
pub async fn replay_ordered(
    pipeline: Pipeline,
    data: &Path,
    source: Option<&str>,
    order: Order,
    mut sink: impl FnMut(Output) + Send + 'static,
) -> Result<EngineStats, ReplayError> {
    #[cfg(feature = "sparkplug")]
    if let Some((name, session)) = crate::sparkplug_replay::session_of(&pipeline, source) {
        // A recorded Sparkplug session: protobuf messages in arrival order.
        let (handle, mut outputs) = pipeline.without_wall_clock().start();
        let drain = tokio::spawn(async move {
            while let Some(o) = outputs.recv().await {
                sink(o);
            }
        });
        let pushed = crate::sparkplug_replay::replay(&handle, &name, session, data).await;
        let stats = handle.finish().await;
        drop(handle);
        drain.await.map_err(|_| EngineError::Stopped)?;
        pushed?;
        return Ok(stats?);
    }
    let chunks = ordered_chunks(&pipeline, data, source, order)?;
    let by_name = by_name(&pipeline, source);
    let (handle, mut outputs) = pipeline.without_wall_clock().start();
    let failed = Arc::new(AtomicBool::new(false));
    let drain = tokio::spawn({
        let failed = failed.clone();
        async move {
            while let Some(o) = outputs.recv().await {
                if !failed.load(Ordering::Acquire) {
                    sink(o);
                }
            }
        }
    });
    let pusher = Pusher::new(&handle, by_name);
    let pushed: Result<(), ReplayError> = async {
        for c in chunks {
            pusher.push(c?).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = pushed {
        // Stop the pipeline in order: left running, its tasks would be cancelled with
        // the runtime and log misleading query failures after the real error. Stopping
        // closes the open windows, early and without the rest of their rows: those
        // results would carry the ids of the complete windows, so none reaches the sink.
        failed.store(true, Ordering::Release);
        let _ = handle.finish().await;
        drop(handle);
        let _ = drain.await;
        return Err(e);
    }
    let stats = handle.finish().await?;
    drop(handle);
    drain.await.map_err(|_| EngineError::Stopped)?;
    Ok(stats)
}

/// The source `source` (or the only one) if it has no topic (`connector = 'channel'`):
/// its history is pushed by the source's name.
fn by_name(pipeline: &Pipeline, source: Option<&str>) -> Option<String> {
    pipeline
        .sources()
        .iter()
        .find(|s| source.is_none_or(|n| n == s.name))
        .filter(|s| s.topic_filter.is_empty())
        .map(|s| s.name.clone())
}

/// Batches of rows in the engine's queue at once: its capacity counts inputs, and
/// a queue full of 8,192-row batches would hold the whole of a large file.
const ROWS_IN_FLIGHT: usize = 4;

/// Rows holding a place in the engine's queue until the engine has taken them.
struct Queued {
    rows: Rows,
    place: std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
}

impl Readings for Queued {
    fn len(&self) -> usize {
        Readings::len(&self.rows)
    }
    fn columns(&self) -> &[String] {
        self.rows.columns()
    }
    fn topic(&self, row: usize) -> &str {
        Readings::topic(&self.rows, row)
    }
    fn value(&self, row: usize, column: usize) -> Option<forewarn_engine::Scalar<'_>> {
        self.rows.value(row, column)
    }
    fn payload(&self, row: usize) -> Vec<u8> {
        self.rows.payload(row)
    }
    fn payload_bound(&self, row: usize) -> usize {
        self.rows.payload_bound(row)
    }
    fn payload_bound_max(&self) -> Option<usize> {
        self.rows.payload_bound_max()
    }
    fn table(&self) -> Option<&forewarn_engine::Table> {
        Readings::table(&self.rows)
    }
    fn taken(&self) {
        // Its rows may stay in the engine's micro-batch; its place in the queue is free.
        self.place.lock().expect("place lock").take();
    }
}

/// Pushes pieces of history: on their topics, or by the source's name (`by_name`),
/// with at most [`ROWS_IN_FLIGHT`] batches of rows queued.
struct Pusher<'h> {
    handle: &'h PipelineHandle,
    by_name: Option<String>,
    places: std::sync::Arc<tokio::sync::Semaphore>,
}

impl<'h> Pusher<'h> {
    fn new(handle: &'h PipelineHandle, by_name: Option<String>) -> Self {
        Pusher {
            handle,
            by_name,
            places: std::sync::Arc::new(tokio::sync::Semaphore::new(ROWS_IN_FLIGHT)),
        }
    }

    async fn push(&self, c: Chunk) -> Result<(), EngineError> {
        let (handle, by_name) = (self.handle, self.by_name.as_deref());
        match c {
            Chunk::Message(m) => match by_name {
                Some(name) => handle.push_to(name, m.payload).await,
                None => handle.push_json(&m.topic, m.payload).await,
            },
            Chunk::Rows(rows) => {
                let place = self
                    .places
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| EngineError::Stopped)?;
                let rows = Box::new(Queued {
                    rows,
                    place: std::sync::Mutex::new(Some(place)),
                });
                match by_name {
                    Some(name) => handle.push_readings_to(name, rows).await,
                    None => handle.push_readings(rows).await,
                }
            }
        }
    }
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
    /// Refusals over all reasons (a reading refused by several queries of its source
    /// counts once; capped at `readings` for the share all the same).
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
        // A share that rounds to 0.0 % is not none: it shows to three places.
        let p = self.percent();
        let share = match p > 0.0 && p < 0.05 {
            true => format!("{p:.3}"),
            false => format!("{p:.1}"),
        };
        format!(
            "{} of {} readings ({share} %) were rejected ({})",
            thousands(self.rejected),
            thousands(self.readings),
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
/// `forewarn_sql::feature_query`) and collects its rows. With `label`, also reads
/// that column of every reading (true, 1 or 1.0 = anomalous) for evaluation.
/// `progress` is called with the number of readings pushed so far.
pub async fn features(
    set: &QuerySet,
    model: &str,
    data: &Path,
    label: Option<&str>,
    progress: impl FnMut(u64),
) -> Result<ReplayedFeatures, ReplayError> {
    let how = FeatureReplay::default();
    features_with(set, model, data, label, &how, progress, |_| {}).await
}

/// How [`features_with`] replays history.
#[derive(Debug, Clone, Default)]
pub struct FeatureReplay {
    /// In file order, or sorted by time first.
    pub order: Order,
    /// The engine's settings: those of the live engine (its configuration's
    /// `[engine]`), so that readings are refused and counted as live input would be
    /// (devices beyond `max_devices`, resent messages, limits on windows and state).
    pub config: EngineConfig,
}

/// Like [`features`], replayed as `how` says; every output that is not a feature row
/// (the dead letters of refused readings) goes to `others`.
pub async fn features_with(
    set: &QuerySet,
    model: &str,
    data: &Path,
    label: Option<&str>,
    how: &FeatureReplay,
    mut progress: impl FnMut(u64),
    mut others: impl FnMut(Output) + Send + 'static,
) -> Result<ReplayedFeatures, ReplayError> {
    let order = how.order;
    let (features, names) = forewarn_sql::feature_query(set, model)?;
    let pipeline = Pipeline::builder()
        .query_set(features)
        .config(how.config.clone())
        .build()
        .await?
        .without_wall_clock();
    let source = pipeline.sources()[0].clone();
    let chunks = ordered_chunks(&pipeline, data, None, order)?;
    let by_name = by_name(&pipeline, None);
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
    let pusher = Pusher::new(&handle, by_name);
    let pushed: Result<(), ReplayError> = async {
        for c in chunks {
            let c = c?;
            let before = n;
            match (&c, label) {
                (Chunk::Message(m), Some(col)) => {
                    let (device, t, a) = label_of(&source, m, col, data)?;
                    labels.push(&device, t, a);
                }
                (Chunk::Rows(r), Some(col)) => {
                    for i in 0..r.len() {
                        let (device, t, a) = label_of(&source, &r.message(i), col, data)?;
                        labels.push(&device, t, a);
                    }
                }
                (_, None) => {}
            }
            n += match &c {
                Chunk::Message(_) => 1,
                Chunk::Rows(r) => r.len() as u64,
            };
            pusher.push(c).await?;
            if n / 1024 > before / 1024 {
                progress(n);
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = pushed {
        // As in `replay_ordered`: stop the pipeline in order before reporting.
        let _ = handle.finish().await;
        return Err(e);
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

/// The device, event time and label (`col`: true, 1 or 1.0 = anomalous) of one
/// history message of `source`.
fn label_of(
    source: &SourceInfo,
    m: &forewarn_history::Message,
    col: &str,
    data: &Path,
) -> Result<(String, i64, bool), ReplayError> {
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
            // As the decoder does: a topic level overrides the payload's field.
            let from_topic = source.template.as_ref().and_then(|tpl| {
                tpl.captures_of(&m.topic)?
                    .into_iter()
                    .find(|(c, _)| *c == "device")
                    .map(|(_, d)| d.to_string())
            });
            let device =
                from_topic.unwrap_or_else(|| v["device"].as_str().unwrap_or("").to_string());
            Ok((device, t, a))
        }
        (None, _) => Err(ReplayError::Source(format!(
            "{}: a reading has no usable '{}' time: {}",
            data.display(),
            source.event_time,
            String::from_utf8_lossy(&m.payload)
        ))),
        (_, None) => {
            let near = v.as_object().and_then(|o| {
                o.keys()
                    .find(|k| k.as_str() != col && k.eq_ignore_ascii_case(col))
            });
            let hint = match (v.get(col), near) {
                (Some(_), _) => String::new(),
                (None, Some(k)) => format!(
                    "; the column is missing, and '{k}' differs from it only in case (names are case-sensitive): pass --label {k}"
                ),
                (None, None) => "; the column is missing, name the label column with --label".into(),
            };
            Err(ReplayError::Source(format!(
                "{}: a reading has no usable '{col}' label (true/false or 1/0{hint}): {}",
                data.display(),
                String::from_utf8_lossy(&m.payload)
            )))
        }
    }
}

/// The labels of `data`'s readings for the (only) source of `pipeline`, by device and in
/// time order, as [`features`] reads them.
pub fn labels(
    pipeline: &Pipeline,
    data: &Path,
    label: &str,
    order: Order,
) -> Result<crate::training::Labels, ReplayError> {
    let source = pipeline.sources()[0].clone();
    let mut labels = crate::training::Labels::default();
    for m in ordered_messages(pipeline, data, None, order)? {
        let (device, t, a) = label_of(&source, &m?, label, data)?;
        labels.push(&device, t, a);
    }
    labels.sort();
    Ok(labels)
}

/// A duration in the units an engineer reads: `90 s`, `12 min 5 s`, `3 h 20 min`.
fn format_duration(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms} ms"),
        0..120 => format!("{:.3} s", ms as f64 / 1000.0).replace(".000 s", " s"),
        120..7200 => format!("{} min {} s", s / 60, s % 60).replace(" 0 s", ""),
        _ => format!("{} h {} min", s / 3600, s / 60 % 60).replace(" 0 min", ""),
    }
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
        // A share that would round to 0.0 % shows to three places.
        let r = Rejections {
            readings: 36_010,
            rejected: 10,
            by_reason: [("too_many_devices".to_string(), 10)].into(),
        };
        assert_eq!(
            r.summary(),
            "10 of 36,010 readings (0.028 %) were rejected (too_many_devices 10)"
        );
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
