//! Forewarn's streaming runtime: event-time windows over a [`CompiledQuery`].
//!
//! Rows are assigned to panes by event time. Each open pane owns one long-lived
//! DataFusion *Partial* aggregate, instantiated from the query's partial half with
//! its leaf replaced by a channel, and fed every batch that falls into the pane; raw
//! rows are never kept. When the watermark passes a window's end, the pane's input
//! channel is closed, the partial aggregate yields its state (one row per group),
//! and the query's final half runs over that state: Final aggregate, HAVING,
//! projection, scoring. State therefore grows with open panes × groups, never with
//! the number of rows.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, StringArray, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::kernels::boolean::not;
use datafusion::arrow::compute::{cast, filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{collect, ExecutionPlan, PhysicalExpr, SendableRecordBatchStream};
use forewarn_core::{Millis, Pane, Watermark, WindowSpec};
use forewarn_sql::{
    replace_leaf, replace_partial, time_type, CompiledQuery, WINDOW_END, WINDOW_START,
};
use futures::TryStreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Errors from the streaming runtime.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// DataFusion failed while aggregating or finishing a window.
    #[error("query '{query}': {source}")]
    Exec {
        /// The query.
        query: String,
        /// The error.
        source: DataFusionError,
    },
    /// A batch pushed in does not have the source's columns.
    #[error("query '{query}': input batch does not match the source schema: {reason}")]
    Schema {
        /// The query.
        query: String,
        /// What did not match.
        reason: String,
    },
}

/// Why rows were not aggregated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowRejection {
    /// Its window had already closed (event time behind the watermark).
    Late,
    /// Event time further ahead than the source's `max_future` allows.
    Future,
    /// No event time.
    NoTimestamp,
    /// It would open a window beyond the operator's limit of open windows.
    TooManyWindows,
    /// The pipeline's window state is over its byte limit.
    StateLimit,
}

impl RowRejection {
    /// Stable reason code for counters and dead-letter messages.
    pub fn code(&self) -> &'static str {
        match self {
            RowRejection::Late => "late",
            RowRejection::Future => "future_timestamp",
            RowRejection::NoTimestamp => "missing_timestamp",
            RowRejection::TooManyWindows => "too_many_windows",
            RowRejection::StateLimit => "state_limit",
        }
    }
}

/// The result rows of one closed window.
#[derive(Debug, Clone)]
pub struct WindowResult {
    /// The window's bounds (for sessions: the span of all sessions in `batch`).
    pub window: Pane,
    /// The query's output rows for it (may be empty after HAVING).
    pub batch: RecordBatch,
    /// Session windows: each output row's own session bounds.
    pub row_windows: Option<Vec<Pane>>,
}

/// What one call to [`WindowOperator::process`] produced.
#[derive(Debug, Default)]
pub struct Processed {
    /// Windows that closed, oldest first.
    pub results: Vec<WindowResult>,
    /// Rows not aggregated, by reason.
    pub rejected: Vec<Rejection>,
}

/// Rows of one batch that were not aggregated, for one reason.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Why.
    pub reason: RowRejection,
    /// The rows (original source columns).
    pub rows: RecordBatch,
    /// Their positions in the batch given to [`WindowOperator::process`] (empty for
    /// [`WindowOperator::refuse`]d batches, which are rejected whole).
    pub index: Vec<u32>,
}

/// Files row `i` under `reason`.
fn record(
    rejected: &mut BTreeMap<&'static str, (RowRejection, Vec<u32>)>,
    reason: RowRejection,
    i: usize,
) {
    rejected
        .entry(reason.code())
        .or_insert((reason, vec![]))
        .1
        .push(i as u32);
}

fn max_opt(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Running totals for one operator.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OperatorStats {
    /// Rows received.
    pub rows_in: u64,
    /// Rows aggregated into a pane.
    pub rows_aggregated: u64,
    /// Rows rejected as late.
    pub late_rows: u64,
    /// Rows rejected for a timestamp too far ahead.
    pub future_rows: u64,
    /// Rows rejected for a missing timestamp.
    pub no_timestamp_rows: u64,
    /// Rows rejected because their window would exceed the limit of open windows.
    #[serde(default)]
    pub too_many_windows_rows: u64,
    /// Windows closed.
    pub windows_closed: u64,
    /// Result rows produced.
    pub rows_out: u64,
}

/// One open session of one key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Session {
    key: String,
    /// Ids the session's rows were tagged with (several after two sessions merged).
    ids: Vec<Millis>,
    start: Millis,
    last: Millis,
    fire_at: Millis,
}

/// Per-key session state: open sessions, the keys' session lists and the firing order.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Sessions {
    gap: Millis,
    max_length: Millis,
    pane_width: Millis,
    next_id: Millis,
    open: std::collections::HashMap<Millis, Session>,
    by_key: std::collections::HashMap<String, Vec<Millis>>,
    by_fire: std::collections::BTreeSet<(Millis, Millis)>,
}

impl Sessions {
    fn fire_at(&self, start: Millis, last: Millis) -> Millis {
        // A session cut at its maximum length still waits for the pane holding its last row.
        let end = (last + self.gap).min(start + self.max_length);
        let pane_end = (last.div_euclid(self.pane_width) + 1) * self.pane_width;
        end.max(pane_end)
    }

    fn end_of(&self, s: &Session) -> Millis {
        (s.last + self.gap).min(s.start + self.max_length)
    }

    /// The session id a row of `key` at `t` belongs to, merging sessions it bridges;
    /// `None` when it would form a new session that has already closed (late).
    fn assign(&mut self, key: &str, t: Millis, closed_until: Option<Millis>) -> Option<Millis> {
        // Per row: no allocation unless a session opens or two sessions merge.
        let (first, others) = {
            let (gap, max_length, open) = (self.gap, self.max_length, &self.open);
            let ids: &[Millis] = self.by_key.get(key).map_or(&[], Vec::as_slice);
            let mut hits = ids.iter().copied().filter(|id| {
                let s = &open[id];
                t > s.start - gap && t < s.last + gap && t.max(s.last) - t.min(s.start) < max_length
            });
            (hits.next(), hits.collect::<Vec<Millis>>())
        };
        let Some(first) = first else {
            if closed_until.is_some_and(|c| (t + self.gap).min(t + self.max_length) <= c) {
                return None;
            }
            let id = self.next_id;
            self.next_id += 1;
            let fire = self.fire_at(t, t);
            self.open.insert(
                id,
                Session {
                    key: key.to_string(),
                    ids: vec![id],
                    start: t,
                    last: t,
                    fire_at: fire,
                },
            );
            self.by_key.entry(key.to_string()).or_default().push(id);
            self.by_fire.insert((fire, id));
            return Some(id);
        };
        // The oldest session absorbs any others the row bridges.
        let keep = others.iter().copied().fold(first, Millis::min);
        let mut merged = self.open.remove(&keep).expect("open");
        self.by_fire.remove(&(merged.fire_at, keep));
        for other in std::iter::once(first).chain(others.iter().copied()) {
            if other == keep {
                continue;
            }
            let s = self.open.remove(&other).expect("open");
            self.by_fire.remove(&(s.fire_at, other));
            merged.start = merged.start.min(s.start);
            merged.last = merged.last.max(s.last);
            merged.ids.extend(s.ids);
            if let Some(v) = self.by_key.get_mut(key) {
                v.retain(|id| *id != other);
            }
        }
        merged.start = merged.start.min(t);
        merged.last = merged.last.max(t);
        merged.fire_at = self.fire_at(merged.start, merged.last);
        self.by_fire.insert((merged.fire_at, keep));
        self.open.insert(keep, merged);
        Some(keep)
    }

    /// Removes and returns the sessions that may fire at watermark `wm`.
    fn take_ready(&mut self, wm: Millis) -> Vec<Session> {
        let mut out = Vec::new();
        while let Some(&(fire, id)) = self.by_fire.first() {
            if fire > wm {
                break;
            }
            self.by_fire.pop_first();
            let s = self.open.remove(&id).expect("open");
            if let Some(v) = self.by_key.get_mut(&s.key) {
                v.retain(|x| *x != id);
                if v.is_empty() {
                    self.by_key.remove(&s.key);
                }
            }
            out.push(s);
        }
        out
    }
}

struct OpenPane {
    tx: mpsc::Sender<DfResult<RecordBatch>>,
    state: JoinHandle<DfResult<Vec<RecordBatch>>>,
}

/// Runs one compiled query over a stream of source batches.
pub struct WindowOperator {
    q: Arc<CompiledQuery>,
    source_schema: SchemaRef,
    ts_index: usize,
    /// For each leaf column, its index in the pane schema.
    leaf_projection: Vec<usize>,
    panes: BTreeMap<Millis, OpenPane>,
    /// Partial state of panes still open, taken out of their aggregates at a checkpoint;
    /// rows arriving later go to a fresh aggregate and both add up when the pane closes.
    sealed: BTreeMap<Millis, Vec<RecordBatch>>,
    /// Partial state of closed panes that later windows still need (hop windows).
    closed: BTreeMap<Millis, Vec<RecordBatch>>,
    watermark: Watermark,
    /// Every pane ending at or before this has been closed.
    closed_until: Option<Millis>,
    stats: OperatorStats,
    /// Column of per-key watermarks, in the source schema.
    wm_key_index: Option<usize>,
    /// Session windows: key columns in the source schema, and the sessions.
    session_key_indices: Vec<usize>,
    sessions: Option<Sessions>,
    /// The WHERE clause evaluated on leaf batches: rows it drops are never late or
    /// refused for this query (and, for sessions, open no session).
    prefilter: Option<Arc<dyn PhysicalExpr>>,
    /// Most panes open at once; rows that would open another are rejected.
    max_open_panes: usize,
    /// Per watermark key (`""` without one): the time of the last row rejected as too
    /// far ahead, while no row within reach came after it (see `future_ok`). Not kept
    /// in checkpoints: after a restart a jump takes one more row to confirm.
    jumps: std::collections::HashMap<String, Millis>,
    /// Per-key watermarks: the tick of the newest event time at the last recomputation,
    /// and the tick's length (a second, or the pane width if shorter); see `observe`.
    wm_tick: Option<Millis>,
    wm_tick_ms: Millis,
}

impl std::fmt::Debug for WindowOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowOperator")
            .field("query", &self.q.name)
            .field("open_panes", &self.panes.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl WindowOperator {
    /// An operator for `q`; batches passed to [`process`](Self::process) must have the
    /// source's schema (the pane schema without the window columns).
    pub fn new(q: Arc<CompiledQuery>) -> Self {
        let n = q.pane_schema.fields().len() - 2;
        let source_schema = Arc::new(
            q.pane_schema
                .project(&(0..n).collect::<Vec<_>>())
                .expect("prefix"),
        );
        let ts_index = source_schema
            .index_of(&q.event_time)
            .expect("event-time column is declared");
        let leaf_projection = q
            .leaf_schema
            .fields()
            .iter()
            .map(|f| {
                q.pane_schema
                    .index_of(f.name())
                    .expect("leaf columns come from the pane schema")
            })
            .collect();
        let wm_key_index = q.watermark_key.as_ref().map(|k| {
            source_schema
                .index_of(k)
                .expect("watermark key is declared")
        });
        let session_key_indices = q
            .session_keys
            .iter()
            .map(|k| {
                source_schema
                    .index_of(k)
                    .expect("session keys are declared")
            })
            .collect();
        let sessions = match q.window {
            WindowSpec::Session { gap, max_length } => Some(Sessions {
                gap,
                max_length,
                pane_width: q.window.pane_width(),
                ..Default::default()
            }),
            _ => None,
        };
        let prefilter = leaf_filter(&q.partial);
        let wm_tick_ms = q.window.pane_width().clamp(1, 1000);
        WindowOperator {
            watermark: Watermark::new(q.watermark),
            q,
            source_schema,
            ts_index,
            leaf_projection,
            panes: BTreeMap::new(),
            sealed: BTreeMap::new(),
            closed: BTreeMap::new(),
            closed_until: None,
            stats: OperatorStats::default(),
            wm_key_index,
            session_key_indices,
            sessions,
            prefilter,
            max_open_panes: usize::MAX,
            jumps: Default::default(),
            wm_tick: None,
            wm_tick_ms,
        }
    }

    /// Limits the panes open at once (a flood of far-apart timestamps cannot grow state
    /// without bound): rows that would open one more are rejected as
    /// [`RowRejection::TooManyWindows`].
    pub fn with_max_open_panes(mut self, n: usize) -> Self {
        self.max_open_panes = n.max(1);
        self
    }

    /// The query this operator runs.
    pub fn query(&self) -> &Arc<CompiledQuery> {
        &self.q
    }

    /// Totals so far.
    pub fn stats(&self) -> OperatorStats {
        self.stats
    }

    /// Panes currently open (each holds one partial aggregate, or sealed state from a
    /// checkpoint, or both).
    pub fn open_panes(&self) -> usize {
        self.panes.len()
            + self
                .sealed
                .keys()
                .filter(|k| !self.panes.contains_key(k))
                .count()
    }

    /// Bytes of aggregate state reserved in the query's DataFusion memory pool (shared by
    /// the queries of one pipeline): the open panes' partial aggregates.
    pub fn state_bytes(&self) -> usize {
        self.q.task_ctx.memory_pool().reserved()
    }

    /// Bytes of partial state held outside the aggregates: sealed panes (taken out at
    /// a checkpoint) and closed panes kept for later windows.
    pub fn held_state_bytes(&self) -> usize {
        self.sealed
            .values()
            .chain(self.closed.values())
            .flatten()
            .map(|b| b.get_array_memory_size())
            .sum()
    }

    /// Closed panes whose partial state is kept for windows still to fire (hop windows).
    pub fn retained_panes(&self) -> usize {
        self.closed.len()
    }

    /// Current watermark.
    pub fn watermark(&self) -> Option<Millis> {
        self.watermark.current()
    }

    /// Largest event time seen.
    pub fn max_event_time(&self) -> Option<Millis> {
        self.watermark.max_seen()
    }

    /// Open sessions (session windows).
    pub fn open_sessions(&self) -> usize {
        self.sessions.as_ref().map_or(0, |s| s.open.len())
    }

    /// Keys with their own watermark (per-key watermarks).
    pub fn watermark_keys(&self) -> usize {
        self.watermark.tracked_keys()
    }

    /// Moves the watermark forward to `t` (an idle source) and closes what it passed.
    pub async fn advance_watermark(&mut self, t: Millis) -> Result<Processed, StreamError> {
        let mut out = Processed::default();
        if self.watermark.current().is_some_and(|w| w >= t) {
            return Ok(out);
        }
        self.watermark.advance_to(t);
        self.close_ready(&mut out).await?;
        Ok(out)
    }

    /// Refuses a whole batch (state over its limit) but lets its event times move the
    /// watermark, so that windows still close and free their state.
    pub async fn refuse(&mut self, batch: &RecordBatch) -> Result<Processed, StreamError> {
        let mut out = Processed::default();
        if batch.num_rows() == 0 {
            return Ok(out);
        }
        let ts_col =
            cast(batch.column(self.ts_index), &time_type()).map_err(|e| self.exec_err(e.into()))?;
        let ts = ts_col.as_primitive::<TimestampMillisecondType>();
        let limit = self
            .q
            .watermark
            .max_future
            .zip(self.watermark.max_seen())
            .map(|(l, seen)| seen.saturating_add(l));
        if let Some(t) = ts
            .iter()
            .flatten()
            .filter(|t| limit.is_none_or(|l| *t <= l))
            .max()
        {
            self.watermark
                .advance_to(t.saturating_sub(self.q.watermark.delay));
        }
        self.stats.rows_in += batch.num_rows() as u64;
        self.stats.too_many_windows_rows += batch.num_rows() as u64;
        out.rejected.push(Rejection {
            reason: RowRejection::StateLimit,
            rows: batch.clone(),
            index: (0..batch.num_rows() as u32).collect(),
        });
        self.close_ready(&mut out).await?;
        Ok(out)
    }

    /// Aggregates a batch and closes every window the watermark has passed.
    pub async fn process(&mut self, batch: &RecordBatch) -> Result<Processed, StreamError> {
        let mut out = Processed::default();
        if batch.num_rows() == 0 {
            return Ok(out);
        }
        if batch.num_columns() != self.source_schema.fields().len() {
            return Err(StreamError::Schema {
                query: self.q.name.clone(),
                reason: format!(
                    "{} columns, expected {}",
                    batch.num_columns(),
                    self.source_schema.fields().len()
                ),
            });
        }
        self.stats.rows_in += batch.num_rows() as u64;
        let ts_col =
            cast(batch.column(self.ts_index), &time_type()).map_err(|e| self.exec_err(e.into()))?;
        let ts = ts_col.as_primitive::<TimestampMillisecondType>();
        let keep = match &self.prefilter {
            Some(_) => Some(self.prefilter_mask(batch)?),
            None => None,
        };
        let wm_keys = match self.wm_key_index {
            Some(i) => Some(string_column(batch.column(i)).map_err(|e| self.exec_err(e))?),
            None => None,
        };
        let session_keys = match &self.sessions {
            Some(_) => Some(self.session_key_columns(batch)?),
            None => None,
        };
        // Rows are judged one at a time, in arrival order, against what the rows before
        // them established (the watermark, the newest event time, the open panes), and
        // accepted rows move the watermark at once: so a row's fate does not depend on
        // how the input was cut into micro-batches, and live input (a message at a time)
        // and replay (thousands at once) give the same results. Windows still close once
        // per batch, after it: a row that is not late by this rule belongs to a pane the
        // watermark has not passed, so closing later changes nothing.
        let max_future = self.q.watermark.max_future;
        let per_key = self.watermark.per_key();
        // Sort row indices by pane, or by rejection reason; BTreeMap keeps panes in time order.
        let mut by_pane: BTreeMap<Millis, Vec<u32>> = BTreeMap::new();
        let mut rejected: BTreeMap<&'static str, (RowRejection, Vec<u32>)> = BTreeMap::new();
        let mut key_buf = String::new();
        // Session id of each row (sessions only), indexed by row.
        let mut session_ids: Vec<Millis> = match self.sessions {
            Some(_) => vec![0; batch.num_rows()],
            None => Vec::new(),
        };
        // Panes this batch opens (for the limit on open panes).
        let open_before = self.open_panes();
        let mut opened: std::collections::HashSet<Millis> = Default::default();
        // The watermark as of the row being judged (`closed_until` before the batch).
        let mut closed = self.closed_until;
        // Per-key maxima not yet handed to the watermark (see `observe`).
        let mut keys: HashMap<&str, Millis> = HashMap::new();
        for i in 0..ts.len() {
            if keep.as_ref().is_some_and(|k| !k[i]) {
                // The query does not want this row: it is not late or refused for it
                // (another query of the source may want it), but, except for sessions,
                // its time moves the watermark as if it had gone through the aggregate.
                if self.sessions.is_none() && !ts.is_null(i) {
                    let t = ts.value(i);
                    let key = wm_keys.as_ref().map_or("", |k| k.value(i));
                    if max_future.is_none_or(|l| self.future_ok(key, t, l)) {
                        self.observe(&mut keys, key, t);
                    }
                }
                continue;
            }
            let verdict = if ts.is_null(i) {
                Err(RowRejection::NoTimestamp)
            } else {
                let t = ts.value(i);
                let key = wm_keys.as_ref().map_or("", |k| k.value(i));
                let pane = self.q.window.pane_of(t);
                if let Some(limit) = max_future {
                    if !self.future_ok(key, t, limit) {
                        record(&mut rejected, RowRejection::Future, i);
                        continue;
                    }
                }
                // The watermark as the rows before this one left it.
                closed = max_opt(closed, self.watermark.current());
                let late = match (&mut self.sessions, &session_keys) {
                    (Some(sessions), Some(keys)) => {
                        match sessions.assign(session_key(keys, i, &mut key_buf), t, closed) {
                            Some(id) => {
                                session_ids[i] = id;
                                false
                            }
                            None => true,
                        }
                    }
                    _ => closed.is_some_and(|c| pane.end <= c),
                };
                let new_pane = !self.panes.contains_key(&pane.start)
                    && !self.sealed.contains_key(&pane.start)
                    && !opened.contains(&pane.start);
                if late {
                    Err(RowRejection::Late)
                } else if new_pane && open_before + opened.len() >= self.max_open_panes {
                    // Refused rows must not move the watermark either.
                    Err(RowRejection::TooManyWindows)
                } else {
                    if new_pane {
                        opened.insert(pane.start);
                    }
                    self.observe(&mut keys, key, t);
                    Ok(pane.start)
                }
            };
            match verdict {
                Ok(p) => by_pane.entry(p).or_default().push(i as u32),
                Err(r) => record(&mut rejected, r, i),
            }
        }
        for (_, (reason, idx)) in rejected {
            let n = idx.len() as u64;
            match reason {
                RowRejection::Late => self.stats.late_rows += n,
                RowRejection::Future => self.stats.future_rows += n,
                RowRejection::NoTimestamp => self.stats.no_timestamp_rows += n,
                RowRejection::TooManyWindows | RowRejection::StateLimit => {
                    self.stats.too_many_windows_rows += n
                }
            }
            let rows = take_record_batch(batch, &UInt32Array::from(idx.clone()))
                .map_err(|e| self.exec_err(e.into()))?;
            out.rejected.push(Rejection {
                reason,
                rows,
                index: idx,
            });
        }
        let single = by_pane.len() == 1 && out.rejected.is_empty() && keep.is_none();
        for (start, idx) in by_pane {
            let (first, n) = (idx[0] as usize, idx.len());
            let rows = if single {
                batch.clone()
            } else if idx[n - 1] as usize == first + n - 1 {
                // In-order input puts a pane's rows in one contiguous run: a zero-copy slice.
                batch.slice(first, n)
            } else {
                take_record_batch(batch, &UInt32Array::from(idx.clone()))
                    .map_err(|e| self.exec_err(e.into()))?
            };
            let ids = self
                .sessions
                .as_ref()
                .map(|_| idx.iter().map(|&i| session_ids[i as usize]).collect());
            self.stats.rows_aggregated += rows.num_rows() as u64;
            self.feed(start, rows, ids).await?;
        }
        if per_key {
            self.flush_keys(&mut keys);
        } else {
            self.watermark.update();
        }
        self.close_ready(&mut out).await?;
        Ok(out)
    }

    /// Takes an accepted row's event time into the watermark. A per-key watermark is
    /// recomputed (a pass over the keys: the fleet's median) when the newest event time
    /// enters a new tick of `wm_tick` ms, not after every row nor every batch: cheap,
    /// and a function of the rows alone, so the same wherever batches are cut. Windows
    /// close at most one tick later than a recomputation after every row would close them.
    ///
    /// Keys' maxima gather in `keys` (one entry per key of the batch, no allocation per
    /// row) and reach the watermark before each recomputation and at the end of the batch
    /// (`flush_keys`): the per-key values only matter when it is recomputed.
    fn observe<'a>(&mut self, keys: &mut HashMap<&'a str, Millis>, key: &'a str, t: Millis) {
        self.watermark.observe(t);
        if !self.watermark.per_key() {
            return;
        }
        let m = keys.entry(key).or_insert(t);
        *m = (*m).max(t);
        let tick = self
            .watermark
            .max_seen()
            .map(|m| m.div_euclid(self.wm_tick_ms));
        if tick != self.wm_tick {
            self.wm_tick = tick;
            self.flush_keys(keys);
            self.watermark.update();
        }
    }

    /// Hands the gathered per-key maxima to the watermark.
    fn flush_keys(&mut self, keys: &mut HashMap<&str, Millis>) {
        for (k, t) in keys.drain() {
            self.watermark.observe_key(k, t);
        }
    }

    /// Whether a row at `t` is within `limit` (`max_future`) of the newest event time
    /// accepted so far. A row beyond it is refused; but a stream that really jumped
    /// ahead (a plant back after an outage longer than the limit) must not be refused
    /// forever: a second row of the same key at or after the refused one, and within
    /// `limit` of it, with no row within reach in between, confirms the jump. One rogue
    /// timestamp among normal readings never does.
    fn future_ok(&mut self, key: &str, t: Millis, limit: Millis) -> bool {
        let Some(newest) = self.watermark.max_seen() else {
            return true;
        };
        if t <= newest.saturating_add(limit) {
            if !self.jumps.is_empty() {
                self.jumps.remove(key);
            }
            return true;
        }
        match self.jumps.get(key) {
            Some(&first) if t >= first && t - first <= limit => {
                self.jumps.remove(key);
                true
            }
            _ => {
                self.jumps.insert(key.to_string(), t);
                false
            }
        }
    }

    fn prefilter_mask(&self, batch: &RecordBatch) -> Result<Vec<bool>, StreamError> {
        let pred = self.prefilter.as_ref().expect("called with a prefilter");
        let leaf = self.leaf_batch(batch.clone(), 0, 0, None)?;
        let v = pred
            .evaluate(&leaf)
            .and_then(|v| v.into_array(leaf.num_rows()))
            .map_err(|e| self.exec_err(e))?;
        let b = v.as_boolean();
        Ok((0..b.len()).map(|i| b.is_valid(i) && b.value(i)).collect())
    }

    fn session_key_columns(&self, batch: &RecordBatch) -> Result<Vec<StringArray>, StreamError> {
        self.session_key_indices
            .iter()
            .map(|&i| string_column(batch.column(i)))
            .collect::<DfResult<Vec<_>>>()
            .map_err(|e| self.exec_err(e))
    }

    /// Ends the input: closes every open window.
    pub async fn finish(&mut self) -> Result<Processed, StreamError> {
        let before = self.watermark.current();
        self.watermark.advance_to_end();
        let mut out = Processed::default();
        self.close_ready(&mut out).await?;
        // Every window is closed and emitted. Rest where the last of them ended: a
        // snapshot taken now continues after them (their readings arriving later are
        // late, not a second, different version of a window already emitted), and later
        // windows still open normally. With nothing seen, where it started.
        let rest = out.results.iter().map(|r| r.window.end).chain(before).max();
        self.watermark.rest_at(rest);
        self.closed_until = rest;
        Ok(out)
    }

    fn exec_err(&self, source: DataFusionError) -> StreamError {
        StreamError::Exec {
            query: self.q.name.clone(),
            source,
        }
    }

    /// The partial half's input for `rows`: the leaf's columns, with the window columns
    /// set to the pane (or, for sessions, to each row's session id).
    fn leaf_batch(
        &self,
        rows: RecordBatch,
        start: Millis,
        end: Millis,
        ids: Option<Vec<Millis>>,
    ) -> Result<RecordBatch, StreamError> {
        let n = rows.num_rows();
        let mut cols: Vec<ArrayRef> = rows.columns().to_vec();
        match ids {
            Some(ids) => {
                let a: ArrayRef = Arc::new(TimestampMillisecondArray::from(ids));
                cols.push(a.clone());
                cols.push(a);
            }
            None => {
                cols.push(Arc::new(TimestampMillisecondArray::from_value(start, n)));
                cols.push(Arc::new(TimestampMillisecondArray::from_value(end, n)));
            }
        }
        let leaf_cols = self
            .leaf_projection
            .iter()
            .map(|&i| cols[i].clone())
            .collect();
        RecordBatch::try_new(self.q.leaf_schema.clone(), leaf_cols).map_err(|e| {
            StreamError::Schema {
                query: self.q.name.clone(),
                reason: e.to_string(),
            }
        })
    }

    async fn feed(
        &mut self,
        start: Millis,
        rows: RecordBatch,
        ids: Option<Vec<Millis>>,
    ) -> Result<(), StreamError> {
        let end = start + self.q.window.pane_width();
        let leaf_batch = self.leaf_batch(rows, start, end, ids)?;
        if !self.panes.contains_key(&start) {
            let pane = self.open_pane().map_err(|e| self.exec_err(e))?;
            self.panes.insert(start, pane);
        }
        let pane = self.panes.get(&start).expect("just inserted");
        if pane.tx.send(Ok(leaf_batch)).await.is_err() {
            // The partial aggregate stopped early: its error surfaces when the pane closes.
            tracing::warn!(query = %self.q.name, pane = start, "partial aggregate ended before its pane closed");
        }
        Ok(())
    }

    fn open_pane(&self) -> DfResult<OpenPane> {
        let (tx, rx) = mpsc::channel(16);
        let input = Arc::new(ChannelPartition {
            schema: self.q.leaf_schema.clone(),
            rx: Mutex::new(Some(rx)),
        });
        let leaf = StreamingTableExec::try_new(
            self.q.leaf_schema.clone(),
            vec![input],
            None,
            vec![],
            false,
            None,
        )?;
        let plan = replace_leaf(&self.q.partial, Arc::new(leaf))?;
        let stream = plan.execute(0, self.q.task_ctx.clone())?;
        let state = tokio::spawn(async move { stream.try_collect::<Vec<_>>().await });
        Ok(OpenPane { tx, state })
    }

    async fn close_ready(&mut self, out: &mut Processed) -> Result<(), StreamError> {
        let Some(wm) = self.watermark.current() else {
            return Ok(());
        };
        // Close every pane the watermark has passed; keep its partial state until the
        // last window containing it has fired (for tumbling windows: right away).
        loop {
            let next = match (self.panes.first_key_value(), self.sealed.first_key_value()) {
                (Some((&a, _)), Some((&b, _))) => a.min(b),
                (Some((&a, _)), None) | (None, Some((&a, _))) => a,
                (None, None) => break,
            };
            if self.q.window.pane_of(next).end > wm {
                break;
            }
            let mut state = self.sealed.remove(&next).unwrap_or_default();
            if let Some(open) = self.panes.remove(&next) {
                state.extend(self.drain_pane(open).await?);
            }
            if !state.is_empty() {
                // A session may reopen a closed pane; its state adds to what was kept.
                self.closed.entry(next).or_default().extend(state);
            }
        }
        if self.sessions.is_some() {
            self.fire_sessions(wm, out).await?;
            self.closed_until = Some(self.closed_until.map_or(wm, |c| c.max(wm)));
            return Ok(());
        }
        // Fire every window the watermark has passed that was not fired before, in order.
        let mut ends: Vec<Millis> = self
            .closed
            .keys()
            .flat_map(|&start| self.q.window.window_ends_of(self.q.window.pane_of(start)))
            .filter(|&end| end <= wm && self.closed_until.is_none_or(|c| end > c))
            .collect();
        ends.sort_unstable();
        ends.dedup();
        for end in ends {
            let window = self.q.window.window_ending_at(end);
            let state: Vec<RecordBatch> = self
                .closed
                .range(window.start..window.end)
                .flat_map(|(_, b)| b.iter().cloned())
                .collect();
            if state.is_empty() {
                continue;
            }
            let bounds = |n: usize| -> (ArrayRef, ArrayRef) {
                (
                    Arc::new(TimestampMillisecondArray::from_value(window.start, n)),
                    Arc::new(TimestampMillisecondArray::from_value(window.end, n)),
                )
            };
            let batch = self.finish_window(state, bounds).await?;
            self.stats.windows_closed += 1;
            self.stats.rows_out += batch.num_rows() as u64;
            out.results.push(WindowResult {
                window,
                batch,
                row_windows: None,
            });
        }
        let width = self.q.window.width();
        self.closed.retain(|&start, _| start + width > wm);
        self.closed_until = Some(self.closed_until.map_or(wm, |c| c.max(wm)));
        Ok(())
    }

    /// Closes a pane's partial aggregate and returns its state rows.
    async fn drain_pane(&self, open: OpenPane) -> Result<Vec<RecordBatch>, StreamError> {
        drop(open.tx);
        let state = open
            .state
            .await
            .map_err(|e| self.exec_err(DataFusionError::External(Box::new(e))))?
            .map_err(|e| self.exec_err(e))?;
        Ok(state.into_iter().filter(|b| b.num_rows() > 0).collect())
    }

    /// Everything needed to continue later exactly where this operator stands: the
    /// partial aggregate state of every open pane and of closed panes later windows
    /// still need, the watermark, the sessions and the counters. Open panes are sealed
    /// (their aggregates drained); rows arriving afterwards start a fresh aggregate for
    /// the pane, and the two add up when it closes.
    pub async fn snapshot(&mut self) -> Result<OperatorState, StreamError> {
        let open = std::mem::take(&mut self.panes);
        for (start, pane) in open {
            let state = self.drain_pane(pane).await?;
            if !state.is_empty() {
                self.sealed.entry(start).or_default().extend(state);
            }
        }
        let schema = self.q.partial.schema();
        let concat =
            |m: &BTreeMap<Millis, Vec<RecordBatch>>, open: bool| {
                m.iter()
                    .map(|(&start, b)| {
                        datafusion::arrow::compute::concat_batches(&schema, b)
                            .map(|batch| PaneState { start, open, batch })
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
        let mut panes = concat(&self.sealed, true).map_err(|e| self.exec_err(e.into()))?;
        panes.extend(concat(&self.closed, false).map_err(|e| self.exec_err(e.into()))?);
        Ok(OperatorState {
            meta: OperatorMeta {
                watermark: self.watermark.clone(),
                closed_until: self.closed_until,
                stats: self.stats,
                sessions: self.sessions.clone().map(SessionsState),
            },
            panes,
        })
    }

    /// Continues from a [`snapshot`](Self::snapshot) of an operator for the same query.
    /// Must be called before the first batch. Fails, changing nothing, when the state
    /// does not fit this query (its partial state has other columns).
    pub fn restore(&mut self, state: OperatorState) -> Result<(), StreamError> {
        let schema = self.q.partial.schema();
        for p in &state.panes {
            if p.batch.schema().fields() != schema.fields() {
                return Err(StreamError::Schema {
                    query: self.q.name.clone(),
                    reason: format!(
                        "checkpointed state for pane {} has columns [{}], the query's partial aggregate has [{}]",
                        forewarn_core::format_rfc3339(p.start),
                        field_list(&p.batch.schema()),
                        field_list(&schema)
                    ),
                });
            }
        }
        if state.meta.sessions.is_some() != self.sessions.is_some() {
            return Err(StreamError::Schema {
                query: self.q.name.clone(),
                reason: "checkpointed state and query disagree on session windows".into(),
            });
        }
        self.panes.clear();
        self.sealed.clear();
        self.closed.clear();
        for p in state.panes {
            let m = if p.open {
                &mut self.sealed
            } else {
                &mut self.closed
            };
            if p.batch.num_rows() > 0 {
                m.entry(p.start).or_default().push(p.batch);
            } else if p.open {
                // An open pane with no groups yet still has to close (a session may fire).
                m.entry(p.start).or_default();
            }
        }
        self.watermark = state.meta.watermark;
        self.closed_until = state.meta.closed_until;
        self.stats = state.meta.stats;
        self.sessions = state.meta.sessions.map(|s| s.0);
        Ok(())
    }

    /// Fires every session the watermark has passed, all in one run of the final half:
    /// their partial state rows are picked out of the closed panes by session id, and
    /// their window columns set to each session's bounds.
    async fn fire_sessions(&mut self, wm: Millis, out: &mut Processed) -> Result<(), StreamError> {
        let sessions = self.sessions.as_mut().expect("session operator");
        let ready = sessions.take_ready(wm);
        if ready.is_empty() {
            return Ok(());
        }
        let mut bounds: std::collections::HashMap<Millis, Pane> = Default::default();
        for s in &ready {
            let p = Pane {
                start: s.start,
                end: sessions.end_of(s),
            };
            for id in &s.ids {
                bounds.insert(*id, p);
            }
        }
        let schema = self.q.partial.schema();
        let ws = schema
            .index_of(WINDOW_START)
            .map_err(|e| self.exec_err(e.into()))?;
        let mut fired = Vec::new();
        let name = self.q.name.clone();
        let err = |e: datafusion::arrow::error::ArrowError| StreamError::Exec {
            query: name.clone(),
            source: e.into(),
        };
        for batches in self.closed.values_mut() {
            let mut kept = Vec::new();
            for b in batches.drain(..) {
                let ids = b.column(ws).as_primitive::<TimestampMillisecondType>();
                let mask: BooleanArray = ids
                    .iter()
                    .map(|id| Some(id.is_some_and(|id| bounds.contains_key(&id))))
                    .collect();
                let hit = filter_record_batch(&b, &mask).map_err(err)?;
                let rest = filter_record_batch(&b, &not(&mask).map_err(err)?).map_err(err)?;
                if hit.num_rows() > 0 {
                    fired.push(hit);
                }
                if rest.num_rows() > 0 {
                    kept.push(rest);
                }
            }
            *batches = kept;
        }
        self.closed.retain(|_, b| !b.is_empty());
        if fired.is_empty() {
            return Ok(());
        }
        // Each row's session bounds, looked up by the id it was tagged with.
        let row_bounds: Vec<Pane> = fired
            .iter()
            .flat_map(|b| {
                let ids = b
                    .column(ws)
                    .as_primitive::<TimestampMillisecondType>()
                    .clone();
                (0..ids.len())
                    .map(|i| bounds[&ids.value(i)])
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut offset = 0;
        let mut per_batch = Vec::new();
        for b in &fired {
            per_batch.push(row_bounds[offset..offset + b.num_rows()].to_vec());
            offset += b.num_rows();
        }
        let mut per_batch = per_batch.into_iter();
        let batch = self
            .finish_window(fired, move |_n| {
                let p = per_batch.next().expect("one entry per batch");
                (
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        p.iter().map(|p| p.start),
                    )) as ArrayRef,
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        p.iter().map(|p| p.end),
                    )) as ArrayRef,
                )
            })
            .await?;
        // The final half may reorder rows: read each row's session back from its output.
        let row_windows = self.output_windows(&batch)?;
        let span = Pane {
            start: ready.iter().map(|s| s.start).min().expect("non-empty"),
            end: bounds.values().map(|p| p.end).max().expect("non-empty"),
        };
        self.stats.windows_closed += ready.len() as u64;
        self.stats.rows_out += batch.num_rows() as u64;
        out.results.push(WindowResult {
            window: span,
            batch,
            row_windows,
        });
        Ok(())
    }

    /// Each output row's window, when the query selects `window_start` and `window_end`.
    fn output_windows(&self, batch: &RecordBatch) -> Result<Option<Vec<Pane>>, StreamError> {
        let schema = batch.schema();
        let (Ok(s), Ok(e)) = (schema.index_of(WINDOW_START), schema.index_of(WINDOW_END)) else {
            return Ok(None);
        };
        let col =
            |i: usize| cast(batch.column(i), &time_type()).map_err(|e| self.exec_err(e.into()));
        let (s, e) = (col(s)?, col(e)?);
        let (s, e) = (
            s.as_primitive::<TimestampMillisecondType>(),
            e.as_primitive::<TimestampMillisecondType>(),
        );
        Ok(Some(
            (0..batch.num_rows())
                .map(|i| Pane {
                    start: s.value(i),
                    end: e.value(i),
                })
                .collect(),
        ))
    }

    /// Runs the final half over partial state, with the window columns of each state
    /// batch replaced by `bounds(rows)` (a hop window spans several panes; a session's
    /// rows carry its id until it fires).
    async fn finish_window(
        &self,
        state: Vec<RecordBatch>,
        mut bounds: impl FnMut(usize) -> (ArrayRef, ArrayRef),
    ) -> Result<RecordBatch, StreamError> {
        let schema = self.q.partial.schema();
        let ws = schema
            .index_of(WINDOW_START)
            .map_err(|e| self.exec_err(e.into()))?;
        let we = schema
            .index_of(WINDOW_END)
            .map_err(|e| self.exec_err(e.into()))?;
        let state = state
            .into_iter()
            .map(|b| {
                let mut cols = b.columns().to_vec();
                let (s, e) = bounds(b.num_rows());
                cols[ws] = s;
                cols[we] = e;
                RecordBatch::try_new(schema.clone(), cols).map_err(|e| self.exec_err(e.into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let input = MemorySourceConfig::try_new_exec(&[state], schema, None)
            .map_err(|e| self.exec_err(e))?;
        let plan = replace_partial(&self.q.root, input as Arc<dyn ExecutionPlan>)
            .map_err(|e| self.exec_err(e))?;
        let batches = collect(plan, self.q.task_ctx.clone())
            .await
            .map_err(|e| self.exec_err(e))?;
        datafusion::arrow::compute::concat_batches(&self.q.output_schema, &batches)
            .map_err(|e| self.exec_err(e.into()))
    }
}

/// The serialisable part of an operator's state (everything but the aggregate rows).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OperatorMeta {
    watermark: Watermark,
    closed_until: Option<Millis>,
    stats: OperatorStats,
    sessions: Option<SessionsState>,
}

/// Open sessions (opaque outside this crate).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionsState(Sessions);

/// One pane's partial aggregate state.
#[derive(Debug, Clone)]
pub struct PaneState {
    /// Pane start.
    pub start: Millis,
    /// Still open (more rows may come), or closed and kept for later windows.
    pub open: bool,
    /// The partial aggregate's state rows (the query's partial schema).
    pub batch: RecordBatch,
}

/// An operator's state at a checkpoint (see [`WindowOperator::snapshot`]).
#[derive(Debug, Clone)]
pub struct OperatorState {
    /// Watermark, sessions, counters.
    pub meta: OperatorMeta,
    /// Partial aggregate state by pane.
    pub panes: Vec<PaneState>,
}

fn field_list(s: &SchemaRef) -> String {
    s.fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Row `r`'s session key: the key column's value itself, or for several key columns
/// their values joined in `buf` (reused across rows, so no allocation per row).
fn session_key<'a>(cols: &'a [StringArray], r: usize, buf: &'a mut String) -> &'a str {
    let cell = |c: &'a StringArray| if c.is_null(r) { "\0" } else { c.value(r) };
    if let [c] = cols {
        return cell(c);
    }
    buf.clear();
    for (n, c) in cols.iter().enumerate() {
        if n > 0 {
            buf.push('\u{1f}');
        }
        buf.push_str(cell(c));
    }
    buf
}

/// A column as strings (keys of per-key watermarks and sessions).
fn string_column(a: &ArrayRef) -> DfResult<StringArray> {
    Ok(cast(a, &DataType::Utf8)?.as_string::<i32>().clone())
}

/// The WHERE predicate applied right above the source scan, if there is one.
fn leaf_filter(partial: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn PhysicalExpr>> {
    if let Some(f) = partial.as_ref().downcast_ref::<FilterExec>() {
        let input = f.input();
        if input.children().is_empty() && f.projection().is_none() {
            return Some(f.predicate().clone());
        }
    }
    partial.children().into_iter().find_map(leaf_filter)
}

/// The leaf of a pane's partial aggregate: yields the batches sent to its channel.
#[derive(Debug)]
struct ChannelPartition {
    schema: SchemaRef,
    rx: Mutex<Option<mpsc::Receiver<DfResult<RecordBatch>>>>,
}

impl PartitionStream for ChannelPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }
    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let rx = self.rx.lock().expect("lock").take();
        let stream = futures::stream::unfold(rx, |rx| async move {
            let mut rx = rx?;
            let item = rx.recv().await?;
            Some((item, Some(rx)))
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// Column names the runtime adds to every pane batch.
pub const WINDOW_COLUMNS: [&str; 2] = [WINDOW_START, WINDOW_END];
