//! The [`WindowOperator`]: admits rows (lateness, `max_future`, the limit of open
//! panes), feeds them to their panes' aggregates, moves the watermark, and fires the
//! windows and sessions it has passed.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, StringArray, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::physical_plan::PhysicalExpr;
use forewarn_core::{Millis, Pane, Watermark, WindowSpec};
use forewarn_sql::{replace_leaf, time_type, CompiledQuery, MemoryRuns, WINDOW_END, WINDOW_START};

use crate::admission::{max_opt, record, FutureCheck, Rejected};
use crate::collected::slice_bytes;
use crate::error::StreamError;
use crate::exec::{
    finish_state, finish_window, leaf_batch, leaf_batch_with, leaf_filter, output_windows,
    partial_state, run_single, state_by_pane, OpenPane,
};
use crate::output::{OperatorStats, Processed, Rejection, RowRejection, WindowResult};
use crate::panes::Panes;
use crate::session::{session_key, Sessions};
use crate::snapshot::{check_fits, OperatorMeta, OperatorState, SessionsState};

/// Runs one compiled query over a stream of source batches.
pub struct WindowOperator {
    q: Arc<CompiledQuery>,
    source_schema: SchemaRef,
    ts_index: usize,
    /// For each leaf column, its index in the pane schema.
    leaf_projection: Vec<usize>,
    panes: Panes,
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
    /// The `max_future` check, with the jumps it has yet to confirm.
    future: FutureCheck,
    /// Per-key watermarks: the tick of the newest event time at the last recomputation,
    /// and the tick's length (a second, or the pane width if shorter); see `observe`.
    wm_tick: Option<Millis>,
    wm_tick_ms: Millis,
    /// Whether everything above the final aggregate works row by row and the output
    /// has a window column, so that windows may share a run of the final half (not
    /// with ORDER BY, LIMIT or window functions).
    final_row_wise: bool,
    /// The query as one Single aggregate, for tumbling windows fired straight from
    /// collected rows (see `exec::single_stage`); `None` where the two halves must run.
    single: Option<MemoryRuns>,
    /// Whether batches in time order skip the row-by-row loop (`in_order_panes`); off
    /// only in tests that compare the two.
    in_order_path: bool,
}

impl std::fmt::Debug for WindowOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowOperator")
            .field("query", &self.q.name)
            .field("open_panes", &self.panes.open.len())
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
        let leaf_projection = crate::exec::leaf_projection(&q);
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
            WindowSpec::Session { gap, max_length } => {
                Some(Sessions::new(gap, max_length, q.window.pane_width()))
            }
            _ => None,
        };
        let prefilter = leaf_filter(&q.partial);
        // Rows of several windows can be told apart only by a window column.
        let final_row_wise = crate::exec::final_is_row_wise(&q.root)
            && [WINDOW_START, WINDOW_END]
                .iter()
                .any(|c| q.output_schema.index_of(c).is_ok());
        let single = match q.window {
            WindowSpec::Tumble { .. } if final_row_wise => {
                crate::exec::single_stage(&q.root, &q.partial, q.window.width()).and_then(|plan| {
                    MemoryRuns::new(q.leaf_schema.clone(), |scan| replace_leaf(&plan, scan)).ok()
                })
            }
            _ => None,
        };
        let wm_tick_ms = q.window.pane_width().clamp(1, 1000);
        // Session panes hold rows of several sessions: each pane aggregates at once.
        let panes = if sessions.is_some() {
            Panes::default()
        } else {
            Panes::collecting(q.clone())
        };
        WindowOperator {
            watermark: Watermark::new(q.watermark),
            q,
            source_schema,
            ts_index,
            leaf_projection,
            panes,
            closed_until: None,
            stats: OperatorStats::default(),
            wm_key_index,
            session_key_indices,
            sessions,
            prefilter,
            max_open_panes: usize::MAX,
            future: FutureCheck::default(),
            wm_tick: None,
            wm_tick_ms,
            final_row_wise,
            single,
            in_order_path: true,
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
        self.panes.open_count()
    }

    /// Bytes of aggregate state reserved in the query's DataFusion memory pool (shared by
    /// the queries of one pipeline): the open panes' partial aggregates.
    pub fn state_bytes(&self) -> usize {
        self.q.task_ctx.memory_pool().reserved()
    }

    /// Bytes held outside the aggregates: partial state of sealed panes (taken out at
    /// a checkpoint) and of closed panes kept for later windows, and the rows small
    /// panes collect before they get an aggregate (at most 65,536 rows).
    pub fn held_state_bytes(&self) -> usize {
        self.panes.held_bytes()
    }

    /// Closed panes whose partial state is kept for windows still to fire (hop windows).
    pub fn retained_panes(&self) -> usize {
        self.panes.retained()
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
        self.sessions.as_ref().map_or(0, Sessions::open_count)
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
        let mut fates = RowFates {
            rejected: Rejected::new(),
            session_ids: match self.sessions {
                Some(_) => vec![0; batch.num_rows()],
                None => Vec::new(),
            },
            keys: HashMap::new(),
        };
        // Rows in time order need no judging row by row (see `in_order_panes`);
        // `judge_each_row` gives them the same fate.
        let simple = !per_key && self.sessions.is_none() && max_future.is_none();
        let in_order = match simple && self.in_order_path {
            true => self.in_order_panes(ts, keep.as_deref()),
            false => None,
        };
        let by_pane = match in_order {
            Some(panes) => {
                // Every row kept is accepted, and every row moves the watermark: the
                // newest.
                self.watermark.observe(ts.value(ts.len() - 1));
                panes
            }
            None => self.judge_each_row(
                ts,
                keep.as_deref(),
                wm_keys.as_ref(),
                session_keys.as_deref(),
                &mut fates,
            ),
        };
        let RowFates {
            rejected,
            session_ids,
            mut keys,
        } = fates;
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
        // Panes small enough collect their rows, all in one leaf batch; the others feed
        // their running aggregates.
        let bytes_per_row = match self.panes.collects() {
            true => slice_bytes(batch) / batch.num_rows(),
            false => 0,
        };
        let (collect, feed): (Vec<_>, Vec<_>) = by_pane.into_iter().partition(|(start, idx)| {
            self.sessions.is_none()
                && self
                    .panes
                    .reserve(*start, idx.len(), idx.len() * bytes_per_row)
        });
        // The whole batch is one pane's when no row went elsewhere.
        let single =
            feed.len() == 1 && collect.is_empty() && out.rejected.is_empty() && keep.is_none();
        if !collect.is_empty() {
            self.collect(batch, collect)?;
        }
        for (start, idx) in feed {
            let rows = if single {
                batch.clone()
            } else {
                rows_at(batch, &idx).map_err(|e| self.exec_err(e.into()))?
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

    /// Judges a batch's rows one at a time, in arrival order (see `process`): the
    /// accepted rows' indices by pane, in time order; the others by reason in `fates`,
    /// with each row's session (sessions) and the batch's newest time by key (per-key
    /// watermarks).
    fn judge_each_row<'a>(
        &mut self,
        ts: &TimestampMillisecondArray,
        keep: Option<&[bool]>,
        wm_keys: Option<&'a StringArray>,
        session_keys: Option<&[StringArray]>,
        fates: &mut RowFates<'a>,
    ) -> BTreeMap<Millis, Vec<u32>> {
        let max_future = self.q.watermark.max_future;
        // Row indices by pane, or by rejection reason. Accepted rows gather in runs of
        // one pane (consecutive accepted rows of the same pane: with rows in time order,
        // a run is a pane's whole share of the batch), merged by pane after the loop, so
        // the per-row cost is a comparison, not a map lookup.
        let mut runs: Vec<(Millis, Vec<u32>)> = Vec::new();
        // The run being gathered: its pane and its rows `from..to`, consecutive (added to
        // `runs` at once when it ends, not a row at a time).
        let mut run: Option<(Millis, u32, u32)> = None;
        // The pane of the last accepted row: open, or opened by this batch.
        let mut last_pane: Option<Millis> = None;
        let mut key_buf = String::new();
        // Panes this batch opens (for the limit on open panes).
        let open_before = self.open_panes();
        let mut opened: std::collections::HashSet<Millis> = Default::default();
        // The watermark as of the row being judged (`closed_until` before the batch).
        let mut closed = self.closed_until;
        // The pane of the last row judged.
        let mut pane = Pane { start: 0, end: 0 };
        for i in 0..ts.len() {
            if keep.is_some_and(|k| !k[i]) {
                // The query does not want this row: it is not late or refused for it
                // (another query of the source may want it), but, except for sessions,
                // its time moves the watermark as if it had gone through the aggregate.
                if self.sessions.is_none() && !ts.is_null(i) {
                    let t = ts.value(i);
                    let key = wm_keys.map_or("", |k| k.value(i));
                    if max_future.is_none_or(|l| self.future_ok(key, t, l)) {
                        self.observe(&mut fates.keys, key, t);
                    }
                }
                continue;
            }
            let verdict = if ts.is_null(i) {
                Err(RowRejection::NoTimestamp)
            } else {
                let t = ts.value(i);
                let key = wm_keys.map_or("", |k| k.value(i));
                // Rows mostly fall in the pane of the row before them: no division then.
                if !(pane.start <= t && t < pane.end) {
                    pane = self.q.window.pane_of(t);
                }
                if let Some(limit) = max_future {
                    if !self.future_ok(key, t, limit) {
                        record(&mut fates.rejected, RowRejection::Future, i);
                        continue;
                    }
                }
                // The watermark as the rows before this one left it.
                closed = max_opt(closed, self.watermark.current());
                let late = match (&mut self.sessions, session_keys) {
                    (Some(sessions), Some(keys)) => {
                        match sessions.assign(session_key(keys, i, &mut key_buf), t, closed) {
                            Some(id) => {
                                fates.session_ids[i] = id;
                                false
                            }
                            None => true,
                        }
                    }
                    _ => closed.is_some_and(|c| pane.end <= c),
                };
                let new_pane = last_pane != Some(pane.start)
                    && !self.panes.is_open(pane.start)
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
                    self.observe(&mut fates.keys, key, t);
                    Ok(pane.start)
                }
            };
            match verdict {
                Ok(p) => {
                    last_pane = Some(p);
                    let i = i as u32;
                    match &mut run {
                        Some((q, _, to)) if *q == p && *to == i => *to = i + 1,
                        _ => {
                            if let Some(r) = run.replace((p, i, i + 1)) {
                                add_run(&mut runs, r);
                            }
                        }
                    }
                }
                Err(r) => record(&mut fates.rejected, r, i),
            }
        }
        if let Some(r) = run {
            add_run(&mut runs, r);
        }
        // By pane, in time order; a pane's rows stay in arrival order.
        let mut by_pane: BTreeMap<Millis, Vec<u32>> = BTreeMap::new();
        for (p, run) in runs {
            match by_pane.entry(p) {
                Entry::Vacant(e) => {
                    e.insert(run);
                }
                Entry::Occupied(mut e) => e.get_mut().extend(run),
            }
        }
        by_pane
    }

    /// The accepted rows of a batch in time order, by pane, without judging them one by
    /// one; `None` when the row-by-row loop must judge them. Only for a query the loop
    /// would judge by the watermark and the limit of open panes alone (no sessions,
    /// per-key watermark or `max_future`: the caller checks). `keep` marks the rows the
    /// query's WHERE keeps; the others are never refused but move the watermark.
    ///
    /// With a global watermark trailing the newest event time by `delay >= 0`, every row
    /// before row `i` holds the watermark at or below `t[i] - delay`, under the end of
    /// row `i`'s pane: rows in order can only be late against the watermark the batch
    /// started with, and then the first kept row is. So when the times never decrease
    /// (no null) and the first kept row's pane is still open, every kept row is accepted,
    /// and each pane's rows are one range, found by binary search. The panes the batch
    /// opens are counted against the limit; one too many leaves the batch to the loop,
    /// which refuses exactly the rows it must.
    fn in_order_panes(
        &self,
        ts: &TimestampMillisecondArray,
        keep: Option<&[bool]>,
    ) -> Option<BTreeMap<Millis, Vec<u32>>> {
        let t = ts.values();
        if ts.null_count() > 0 || self.q.watermark.delay < 0 || t.is_empty() {
            return None;
        }
        // One pass, no branch per row: vectorises.
        if t.windows(2).fold(false, |down, w| down | (w[1] < w[0])) {
            return None;
        }
        let kept = |i: usize| keep.is_none_or(|k| k[i]);
        let mut panes = BTreeMap::new();
        let Some(first) = (0..t.len()).find(|&i| kept(i)) else {
            return Some(panes);
        };
        let closed = max_opt(self.closed_until, self.watermark.current());
        if closed.is_some_and(|c| self.q.window.pane_of(t[first]).end <= c) {
            return None;
        }
        let mut opened = 0usize;
        let mut from = first;
        while from < t.len() {
            let pane = self.q.window.pane_of(t[from]);
            let to = from + t[from..].partition_point(|&x| x < pane.end);
            let rows: Vec<u32> = match keep {
                None => (from as u32..to as u32).collect(),
                Some(k) => (from..to).filter(|&i| k[i]).map(|i| i as u32).collect(),
            };
            if !rows.is_empty() {
                if !self.panes.is_open(pane.start) {
                    opened += 1;
                }
                panes.insert(pane.start, rows);
            }
            from = to;
        }
        (self.open_panes() + opened <= self.max_open_panes).then_some(panes)
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

    /// Whether a row of `key` at `t` is within `limit` (`max_future`) of the newest
    /// event time accepted so far (see [`FutureCheck::ok`]).
    fn future_ok(&mut self, key: &str, t: Millis, limit: Millis) -> bool {
        self.future.ok(self.watermark.max_seen(), key, t, limit)
    }

    fn prefilter_mask(&self, batch: &RecordBatch) -> Result<Vec<bool>, StreamError> {
        let pred = self.prefilter.as_ref().expect("called with a prefilter");
        let leaf = leaf_batch(&self.q, &self.leaf_projection, batch.clone(), 0, 0, None)?;
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
        StreamError::exec(&self.q.name, source)
    }

    /// Keeps the rows of `batch` at each pane's indices (ascending) among the collected
    /// rows, as one leaf batch, its rows in pane order.
    fn collect(
        &mut self,
        batch: &RecordBatch,
        panes: Vec<(Millis, Vec<u32>)>,
    ) -> Result<(), StreamError> {
        let n: usize = panes.iter().map(|(_, idx)| idx.len()).sum();
        // In-order input with nothing rejected: the rows are one contiguous run.
        let first = panes[0].1[0];
        let mut next = first;
        let contiguous = panes.iter().all(|(_, idx)| {
            let ok = idx[0] == next && idx[idx.len() - 1] == next + idx.len() as u32 - 1;
            next += idx.len() as u32;
            ok
        });
        let rows = if contiguous {
            batch.slice(first as usize, n)
        } else {
            let idx: Vec<u32> = panes
                .iter()
                .flat_map(|(_, idx)| idx.iter().copied())
                .collect();
            take_record_batch(batch, &UInt32Array::from(idx))
                .map_err(|e| self.exec_err(e.into()))?
        };
        let width = self.q.window.pane_width();
        let mut starts = Vec::with_capacity(n);
        let mut ends = Vec::with_capacity(n);
        let mut ranges = Vec::with_capacity(panes.len());
        for (start, idx) in &panes {
            let from = starts.len();
            starts.resize(from + idx.len(), *start);
            ends.resize(from + idx.len(), start + width);
            ranges.push((*start, from..starts.len()));
        }
        let leaf = leaf_batch_with(
            &self.q,
            &self.leaf_projection,
            rows,
            Arc::new(TimestampMillisecondArray::from(starts)),
            Arc::new(TimestampMillisecondArray::from(ends)),
        )?;
        self.stats.rows_aggregated += n as u64;
        self.panes.collect(leaf, ranges);
        Ok(())
    }

    /// Feeds `rows` to the aggregate of the pane at `start`, starting one if needed.
    async fn feed(
        &mut self,
        start: Millis,
        rows: RecordBatch,
        ids: Option<Vec<Millis>>,
    ) -> Result<(), StreamError> {
        let end = start + self.q.window.pane_width();
        let leaf_batch = leaf_batch(&self.q, &self.leaf_projection, rows, start, end, ids)?;
        let q = &self.q;
        let sent = self
            .panes
            .feed(start, leaf_batch, || OpenPane::start(q))
            .await
            .map_err(|e| StreamError::exec(&q.name, e))?;
        if !sent {
            // The partial aggregate stopped early: its error surfaces when the pane closes.
            tracing::warn!(query = %self.q.name, pane = start, "partial aggregate ended before its pane closed");
        }
        Ok(())
    }

    async fn close_ready(&mut self, out: &mut Processed) -> Result<(), StreamError> {
        let Some(wm) = self.watermark.current() else {
            return Ok(());
        };
        if let Some(fired) = self.fire_collected(wm).await? {
            self.emit(fired, out);
            self.closed_until = Some(self.closed_until.map_or(wm, |c| c.max(wm)));
            return Ok(());
        }
        // Close every pane the watermark has passed; keep its partial state until the
        // last window containing it has fired (for tumbling windows: right away).
        self.panes
            .close_passed(&self.q.window, wm)
            .await
            .map_err(|e| self.exec_err(e))?;
        if self.sessions.is_some() {
            self.fire_sessions(wm, out).await?;
            self.closed_until = Some(self.closed_until.map_or(wm, |c| c.max(wm)));
            return Ok(());
        }
        // Fire every window the watermark has passed that was not fired before, in order.
        let due: Vec<(Pane, Vec<RecordBatch>)> = self
            .panes
            .windows_due(&self.q.window, wm, self.closed_until)
            .into_iter()
            .map(|w| (w, self.panes.state_of(w)))
            .filter(|(_, state)| !state.is_empty())
            .collect();
        let fired = match due.len() {
            0 => Vec::new(),
            1 => self.finish_each(due).await?,
            _ if !self.final_row_wise => self.finish_each(due).await?,
            // Windows closing together share one run of the final half (its fixed cost
            // dominates when windows hold few keys) and one result, each row tagged with
            // its window.
            _ => match self.finish_together(&due).await? {
                Some(fired) => vec![fired],
                None => self.finish_each(due).await?,
            },
        };
        self.emit(fired, out);
        self.panes.forget_passed(self.q.window.width(), wm);
        self.closed_until = Some(self.closed_until.map_or(wm, |c| c.max(wm)));
        Ok(())
    }

    /// Hands fired windows out, counted.
    fn emit(&mut self, fired: Vec<WindowResult>, out: &mut Processed) {
        for res in fired {
            self.stats.windows_closed += res.windows as u64;
            self.stats.rows_out += res.batch.num_rows() as u64;
            out.results.push(res);
        }
    }

    /// Tumbling windows whose panes only ever collected rows, computed straight from
    /// the rows: one run of the partial half and one of the final half for all of them,
    /// with no state kept, split or copied per window (the common case with few keys per
    /// window). `None` when the windows due are not all such; the usual path then fires
    /// them (given the state, if it was computed).
    async fn fire_collected(
        &mut self,
        wm: Millis,
    ) -> Result<Option<Vec<WindowResult>>, StreamError> {
        if !self.final_row_wise || !matches!(self.q.window, WindowSpec::Tumble { .. }) {
            return Ok(None);
        }
        let Some((starts, rows)) = self.panes.take_passed_collected_only(&self.q.window, wm) else {
            return Ok(None);
        };
        if let Some(single) = &self.single {
            // The whole query in one aggregation; every collected pane has a group.
            let batch = run_single(&self.q, single, rows.clone()).await?;
            self.stats.final_runs += 1;
            let windows: Vec<Pane> = starts.iter().map(|&s| self.q.window.pane_of(s)).collect();
            if let [window] = windows[..] {
                return Ok(Some(vec![WindowResult {
                    window,
                    batch,
                    row_windows: None,
                    windows: 1,
                }]));
            }
            match self.tag_windows(batch, &windows)? {
                Some(fired) => return Ok(Some(vec![fired])),
                // The output's window columns are computed otherwise: from now on the
                // two halves run, and the usual path can fire each window alone.
                None => self.single = None,
            }
        }
        let state = partial_state(&self.q, rows)
            .await
            .map_err(|e| self.exec_err(e))?;
        // The windows with state, oldest first (a pane whose rows the WHERE clause all
        // dropped has none, and fires nothing, as on the usual path).
        let ws = self
            .q
            .partial
            .schema()
            .index_of(WINDOW_START)
            .map_err(|e| self.exec_err(e.into()))?;
        let mut starts: Vec<Millis> = Vec::new();
        for b in &state {
            let col = b.column(ws).as_primitive::<TimestampMillisecondType>();
            starts.extend(crate::runs(col.values()).map(|r| col.value(r.start)));
        }
        starts.sort_unstable();
        starts.dedup();
        let windows: Vec<Pane> = starts.iter().map(|&s| self.q.window.pane_of(s)).collect();
        match windows.len() {
            0 => return Ok(Some(Vec::new())),
            1 => {
                let batch = finish_state(&self.q, state).await?;
                self.stats.final_runs += 1;
                return Ok(Some(vec![WindowResult {
                    window: windows[0],
                    batch,
                    row_windows: None,
                    windows: 1,
                }]));
            }
            _ => {}
        }
        let batch = finish_state(&self.q, state.clone()).await?;
        self.stats.final_runs += 1;
        match self.tag_windows(batch, &windows)? {
            Some(fired) => Ok(Some(vec![fired])),
            None => {
                // The output's window columns are computed otherwise: the state goes
                // where the usual path finds it, and each window runs alone.
                let by_pane = state_by_pane(&self.q, state).map_err(|e| self.exec_err(e))?;
                self.panes.add_closed(by_pane);
                Ok(None)
            }
        }
    }

    /// Runs the final half once per window over its state.
    async fn finish_each(
        &mut self,
        due: Vec<(Pane, Vec<RecordBatch>)>,
    ) -> Result<Vec<WindowResult>, StreamError> {
        let mut fired = Vec::with_capacity(due.len());
        for (window, state) in due {
            let batch = finish_window(&self.q, state, |n| pane_columns(&[window], n)).await?;
            self.stats.final_runs += 1;
            fired.push(WindowResult {
                window,
                batch,
                row_windows: None,
                windows: 1,
            });
        }
        Ok(fired)
    }

    /// Runs the final half once over the state of all `due` windows (oldest first): one
    /// result for them all (see [`Self::tag_windows`]), or `None` when the rows' windows
    /// cannot be told apart (the caller then runs each window alone).
    async fn finish_together(
        &mut self,
        due: &[(Pane, Vec<RecordBatch>)],
    ) -> Result<Option<WindowResult>, StreamError> {
        let (state, owners): (Vec<RecordBatch>, Vec<Pane>) = due
            .iter()
            .flat_map(|(w, state)| state.iter().map(move |b| (b.clone(), *w)))
            .unzip();
        let mut owners = owners.into_iter();
        let batch = finish_window(&self.q, state, |n| {
            pane_columns(&[owners.next().expect("one window per state batch")], n)
        })
        .await?;
        self.stats.final_runs += 1;
        let windows: Vec<Pane> = due.iter().map(|(w, _)| *w).collect();
        self.tag_windows(batch, &windows)
    }

    /// One result from the final half's output `batch` over the state of all `windows`
    /// (oldest first): each window's rows in turn, in the order a run of its own gives
    /// them (the final aggregate emits groups in the order it first meets them), each
    /// row's window told by its `window_start` (or `window_end`). `None` when a value is
    /// not one of the windows' (a column of that name computed otherwise).
    fn tag_windows(
        &self,
        batch: RecordBatch,
        windows: &[Pane],
    ) -> Result<Option<WindowResult>, StreamError> {
        // Each row's window, by whichever bound the query selects.
        let schema = batch.schema();
        let (col, by_start) = match (schema.index_of(WINDOW_START), schema.index_of(WINDOW_END)) {
            (Ok(i), _) => (i, true),
            (_, Ok(i)) => (i, false),
            _ => return Ok(None),
        };
        let bound = cast(batch.column(col), &time_type()).map_err(|e| self.exec_err(e.into()))?;
        let bound = bound.as_primitive::<TimestampMillisecondType>();
        let index: HashMap<Millis, usize> = windows
            .iter()
            .enumerate()
            .map(|(i, w)| (if by_start { w.start } else { w.end }, i))
            .collect();
        let mut owner = Vec::with_capacity(bound.len());
        let mut last: Option<(Millis, usize)> = None;
        for t in bound.iter() {
            // Rows come window by window: one lookup per run.
            let i = match (t, last) {
                (Some(t), Some((l, i))) if t == l => i,
                (Some(t), _) => match index.get(&t) {
                    Some(&i) => {
                        last = Some((t, i));
                        i
                    }
                    None => return Ok(None),
                },
                (None, _) => return Ok(None),
            };
            owner.push(i);
        }
        // The state is in window order and each group belongs to one window, so the
        // rows come window by window already; otherwise they are put in that order.
        let batch = if owner.is_sorted() {
            batch
        } else {
            let mut order: Vec<u32> = (0..owner.len() as u32).collect();
            order.sort_by_key(|&r| owner[r as usize]);
            owner.sort_unstable();
            take_record_batch(&batch, &UInt32Array::from(order))
                .map_err(|e| self.exec_err(e.into()))?
        };
        let span = Pane {
            start: windows.iter().map(|w| w.start).min().expect("a window"),
            end: windows.iter().map(|w| w.end).max().expect("a window"),
        };
        Ok(Some(WindowResult {
            window: span,
            batch,
            row_windows: Some(owner.into_iter().map(|i| windows[i]).collect()),
            windows: windows.len(),
        }))
    }

    /// Everything needed to continue later exactly where this operator stands: the
    /// partial aggregate state of every open pane and of closed panes later windows
    /// still need, the watermark, the sessions and the counters. Open panes are sealed
    /// (their aggregates drained); rows arriving afterwards start a fresh aggregate for
    /// the pane, and the two add up when it closes.
    pub async fn snapshot(&mut self) -> Result<OperatorState, StreamError> {
        self.panes.seal().await.map_err(|e| self.exec_err(e))?;
        let panes = self
            .panes
            .states(&self.q.partial.schema())
            .map_err(|e| self.exec_err(e))?;
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
        check_fits(&self.q, &state)?;
        self.panes.restore(state.panes);
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
        let bounds = sessions.bounds_by_id(&ready);
        let schema = self.q.partial.schema();
        let ws = schema
            .index_of(WINDOW_START)
            .map_err(|e| self.exec_err(e.into()))?;
        let fired = self
            .panes
            .take_rows_of(ws, &bounds)
            .map_err(|e| self.exec_err(e.into()))?;
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
        let batch = finish_window(&self.q, fired, move |_n| {
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
        let row_windows = output_windows(&self.q, &batch)?;
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
            windows: ready.len(),
        });
        Ok(())
    }
}

/// What judging a batch's rows gives besides the accepted rows (see
/// `WindowOperator::process`).
struct RowFates<'a> {
    /// Refused rows' indices by reason.
    rejected: Rejected,
    /// Each row's session id, indexed by row (sessions only).
    session_ids: Vec<Millis>,
    /// Per-key maxima not yet handed to the watermark (see `observe`).
    keys: HashMap<&'a str, Millis>,
}

/// Adds the consecutive rows `from..to` of a pane to `runs` (to its last run when that
/// is the same pane's).
fn add_run(runs: &mut Vec<(Millis, Vec<u32>)>, (pane, from, to): (Millis, u32, u32)) {
    match runs.last_mut() {
        Some((q, rows)) if *q == pane => rows.extend(from..to),
        _ => runs.push((pane, (from..to).collect())),
    }
}

/// The rows of `batch` at `idx` (ascending): a zero-copy slice when they are one
/// contiguous run, as in-order input gives.
fn rows_at(
    batch: &RecordBatch,
    idx: &[u32],
) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let (first, n) = (idx[0] as usize, idx.len());
    if idx[n - 1] as usize == first + n - 1 {
        Ok(batch.slice(first, n))
    } else {
        take_record_batch(batch, &UInt32Array::from(idx.to_vec()))
    }
}

/// The window columns of `n` state rows of one window (`w[0]`).
fn pane_columns(w: &[Pane], n: usize) -> (ArrayRef, ArrayRef) {
    (
        Arc::new(TimestampMillisecondArray::from_value(w[0].start, n)),
        Arc::new(TimestampMillisecondArray::from_value(w[0].end, n)),
    )
}

/// A column as strings (keys of per-key watermarks and sessions).
fn string_column(a: &ArrayRef) -> DfResult<StringArray> {
    Ok(cast(a, &DataType::Utf8)?.as_string::<i32>().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fixture, output, row};

    const S: Millis = 1000;

    fn reasons(p: &Processed) -> Vec<(RowRejection, Vec<u32>)> {
        p.rejected
            .iter()
            .map(|r| (r.reason, r.index.clone()))
            .collect()
    }

    #[tokio::test]
    async fn tumbling_windows_fire_once_the_watermark_passes_their_end() {
        let f = fixture("tumble(interval '10 seconds')", "", "").await;
        let mut op = f.operator();
        let p = op
            .process(&f.rows(&[("a", S, 1.0), ("a", 4 * S, 2.0), ("b", 5 * S, 4.0)]))
            .await
            .unwrap();
        assert!(p.results.is_empty() && p.rejected.is_empty());
        assert_eq!(op.open_panes(), 1);
        // The watermark (newest time - 2 s) reaches 10 s only at 12 s.
        let p = op.process(&f.rows(&[("a", 11_999, 8.0)])).await.unwrap();
        assert!(p.results.is_empty());
        assert_eq!(op.watermark(), Some(9_999));
        let p = op.process(&f.rows(&[("b", 12 * S, 16.0)])).await.unwrap();
        assert_eq!(p.results.len(), 1);
        assert_eq!(
            p.results[0].window,
            Pane {
                start: 0,
                end: 10 * S
            }
        );
        assert_eq!(
            output(&p.results),
            vec![row(0, 10 * S, "a", 2, 3.0), row(0, 10 * S, "b", 1, 4.0)]
        );
        let p = op.finish().await.unwrap();
        assert_eq!(
            output(&p.results),
            vec![
                row(10 * S, 20 * S, "a", 1, 8.0),
                row(10 * S, 20 * S, "b", 1, 16.0)
            ]
        );
        let s = op.stats();
        assert_eq!((s.rows_in, s.rows_aggregated), (5, 5));
        assert_eq!((s.windows_closed, s.rows_out), (2, 4));
    }

    /// Each result's window and its rows as printed, in their order.
    fn printed(results: &[WindowResult]) -> Vec<(Pane, String)> {
        results
            .iter()
            .flat_map(|r| r.by_window())
            .map(|(window, batch)| {
                let table = datafusion::arrow::util::pretty::pretty_format_batches(
                    std::slice::from_ref(&batch),
                )
                .unwrap()
                .to_string();
                (window, table)
            })
            .collect()
    }

    /// The first `n` 10 s windows from time 0.
    fn first_windows(n: i64) -> Vec<Pane> {
        (0..n)
            .map(|k| Pane {
                start: k * 10 * S,
                end: (k + 1) * 10 * S,
            })
            .collect()
    }

    /// Rows of four devices, one each per second from window `from` to before window
    /// `to` (10 s windows), devices in a shifting order.
    fn spread(f: &crate::testing::Fixture, from: i64, to: i64) -> RecordBatch {
        let devices = ["d", "a", "c", "b"];
        let rows: Vec<(&str, Millis, f64)> = (from * 10..to * 10)
            .flat_map(|s| {
                (0..4).map(move |k| {
                    (
                        devices[((s + k) % 4) as usize],
                        s * S + k,
                        (s * 4 + k) as f64,
                    )
                })
            })
            .collect();
        f.rows(&rows)
    }

    #[tokio::test]
    async fn windows_closing_together_give_each_window_the_rows_of_a_run_of_its_own() {
        for (window, sql_window) in [
            ("tumble", "tumble(interval '10 seconds')"),
            ("hop", "hop(interval '10 seconds', interval '30 seconds')"),
        ] {
            let f = fixture(sql_window, "", "").await;
            assert!(f.operator().final_row_wise, "{window}");
            // All at once: one batch (firing the windows it passes together), then one
            // watermark move past the rest.
            let mut together = f.operator();
            let mut all = together.process(&spread(&f, 0, 6)).await.unwrap().results;
            let fired: usize = all.iter().map(|r| r.windows).sum();
            assert!(fired >= 4, "{window}: {fired} windows in one run");
            assert_eq!(
                all.len(),
                1,
                "{window}: one result for the windows of one run"
            );
            all.extend(together.advance_watermark(100 * S).await.unwrap().results);
            // Reference: a batch per window, each firing at most one window.
            let mut alone = f.operator();
            let mut each = Vec::new();
            for k in 0..6 {
                let p = alone.process(&spread(&f, k, k + 1)).await.unwrap();
                assert!(p.results.len() <= 1, "{window}: one window per step");
                each.extend(p.results);
            }
            for end in (6..=10).map(|k| k * 10 * S) {
                let p = alone.advance_watermark(end).await.unwrap();
                assert!(p.results.len() <= 1, "{window}: one window per step");
                each.extend(p.results);
            }
            assert_eq!(printed(&all), printed(&each), "{window}");
            // The windows the batch passed shared one run, the rest another.
            assert_eq!(together.stats().final_runs, 2, "{window}");
            assert_eq!(alone.stats().final_runs, each.len() as u64, "{window}");
            let (a, b) = (together.stats(), alone.stats());
            assert_eq!(
                (a.windows_closed, a.rows_out, a.rows_aggregated),
                (b.windows_closed, b.rows_out, b.rows_aggregated),
                "{window}"
            );
        }
    }

    #[tokio::test]
    async fn collecting_small_panes_gives_what_an_aggregate_per_pane_gives() {
        // Floats whose sums depend on the order of the additions, and every aggregate
        // that tumbling windows of collected rows compute in one Single aggregation.
        let all = "count(*) AS n, sum(v) AS s, avg(v) AS a, stddev(v) AS sd, var_pop(v) AS vp, \
                   min(v) AS lo, max(v) AS hi";
        for (sql_window, filter, aggregates, single) in [
            ("tumble(interval '10 seconds')", "", all, true),
            // The WHERE clause drops every row of some windows (they fire nothing).
            ("tumble(interval '10 seconds')", "WHERE v > 30", all, true),
            // An aggregate whose Partial and Final runs are kept.
            (
                "tumble(interval '10 seconds')",
                "",
                "count(*) AS n, median(v) AS m",
                false,
            ),
            (
                "hop(interval '10 seconds', interval '30 seconds')",
                "",
                all,
                false,
            ),
            (
                "hop(interval '10 seconds', interval '30 seconds')",
                "WHERE v > 30",
                all,
                false,
            ),
        ] {
            let f = crate::testing::compiled(&format!(
                "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
                   WITH (connector = 'mqtt', topic = 'w/+', topic_template = 'w/{{device}}');
                 CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{{device}}');
                 INSERT INTO out SELECT device, window_start, window_end, {aggregates}
                 FROM r {filter} GROUP BY {sql_window}, device;"
            ))
            .await;
            assert_eq!(
                f.operator().single.is_some(),
                single,
                "{sql_window} {aggregates}"
            );
            // Panes from 8 rows to past the limit of rows a pane collects, batches of
            // all sizes (some holding many windows, some reversed, so rows of a pane are
            // not one run and some are late), with a checkpoint (sealing) halfway.
            let mut batches = Vec::new();
            let mut t = 0;
            for (k, (per_second, seconds)) in [
                (1usize, 100),
                (50, 10),
                (500, 10),
                (3, 60),
                // Two panes past the bound: batches with rows of a pane that feeds its
                // aggregate and of one that collects.
                (2000, 20),
                (2, 40),
            ]
            .into_iter()
            .enumerate()
            {
                let rows: Vec<(String, Millis, f64)> = (0..seconds * per_second)
                    .map(|i| {
                        let d = format!("dev-{}", (i * 7 + k) % 13);
                        (
                            d,
                            t + (i / per_second) as Millis * S + (i % 7) as Millis,
                            (i % 101) as f64 * 0.37,
                        )
                    })
                    .collect();
                t += seconds as Millis * S;
                for (c, chunk) in rows.chunks(37 + k * 300).enumerate() {
                    let mut r: Vec<(&str, Millis, f64)> =
                        chunk.iter().map(|(d, t, v)| (d.as_str(), *t, *v)).collect();
                    if c % 2 == 1 {
                        r.reverse();
                    }
                    batches.push(f.rows(&r));
                }
            }
            let run = |collect: bool| {
                let f = &f;
                let batches = &batches;
                async move {
                    let mut op = f.operator();
                    if !collect {
                        op.panes = Panes::default();
                    }
                    let mut out = Vec::new();
                    for (i, b) in batches.iter().enumerate() {
                        out.extend(op.process(b).await.unwrap().results);
                        if i == batches.len() / 2 {
                            let state = op.snapshot().await.unwrap();
                            op = f.operator();
                            if !collect {
                                op.panes = Panes::default();
                            }
                            op.restore(state).unwrap();
                        }
                    }
                    out.extend(op.finish().await.unwrap().results);
                    let s = op.stats();
                    let counts = (s.windows_closed, s.rows_out, s.rows_aggregated, s.late_rows);
                    (printed(&out), counts, out.len())
                }
            };
            let (collected, n, results) = run(true).await;
            let (each, m, _) = run(false).await;
            assert_eq!(n, m, "{sql_window} {filter}");
            // (Rows the WHERE clause drops are never late.)
            assert!(!filter.is_empty() || n.3 > 0, "some rows are late");
            assert!(collected.len() >= 6, "{sql_window} {filter}");
            assert!(results < collected.len(), "windows fired together");
            assert_eq!(collected, each, "{sql_window} {filter}");
        }
    }

    #[tokio::test]
    async fn a_pane_collects_rows_up_to_a_bound_in_bytes() {
        let f = fixture("tumble(interval '1 hour')", "", "").await;
        let mut op = f.operator();
        // Rows of 100 kB each (a long key, like a waveform's samples): 10 per batch.
        let names: Vec<String> = (0..10)
            .map(|k| format!("{k}{}", "x".repeat(100_000)))
            .collect();
        let mut most = 0;
        for b in 0..20 {
            let rows: Vec<(&str, Millis, f64)> =
                names.iter().map(|d| (d.as_str(), b * S, 1.0)).collect();
            op.process(&f.rows(&rows)).await.unwrap();
            most = most.max(op.held_state_bytes());
        }
        // 200 rows, 20 MB: collected only up to the bound (counted by the rows' bytes;
        // held is their buffers' capacity, up to twice that), then aggregated.
        assert!(
            most > 1_000_000 && most < 2 * crate::collected::BUFFER_BYTES,
            "{most}"
        );
        assert!(
            op.held_state_bytes() < most,
            "the rows went to an aggregate"
        );
        let p = op.advance_watermark(2 * 3600 * S).await.unwrap();
        assert_eq!(output(&p.results).iter().map(|r| r.3).sum::<i64>(), 200);
    }

    #[tokio::test]
    async fn waveform_rows_are_not_collected() {
        let sql = "CREATE TABLE r (device TEXT, ts TIMESTAMP, wave DOUBLE[], WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
               WITH (connector = 'mqtt', topic = 'w/+', topic_template = 'w/{device}');
             CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
             INSERT INTO out SELECT device, window_start, max(wave_peak(wave)) AS p FROM r
             GROUP BY tumble(interval '10 seconds'), device;";
        let c = crate::testing::compiled(sql).await;
        let schema = c.schema.clone();
        let mut op = c.operator();
        let wave = datafusion::arrow::array::ListArray::from_iter_primitive::<
            datafusion::arrow::datatypes::Float64Type,
            _,
            _,
        >(vec![Some(vec![Some(1.0), Some(-3.0), Some(2.0)])]);
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["d"])),
                Arc::new(TimestampMillisecondArray::from(vec![S])),
                Arc::new(wave),
            ],
        )
        .unwrap();
        op.process(&batch).await.unwrap();
        assert_eq!(
            op.held_state_bytes(),
            0,
            "the waveform went to an aggregate"
        );
        let p = op.advance_watermark(20 * S).await.unwrap();
        let peak = p.results[0]
            .batch
            .column(2)
            .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
            .value(0);
        assert_eq!(peak, 3.0);
    }

    #[tokio::test]
    async fn windows_fire_one_run_each_when_rows_do_not_tell_their_window() {
        // No window columns selected: rows cannot be split back by window.
        let sql = "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
               WITH (connector = 'mqtt', topic = 'w/+', topic_template = 'w/{device}');
             CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
             INSERT INTO out SELECT device, count(*) AS n FROM r GROUP BY tumble(interval '10 seconds'), device;";
        let c = crate::testing::compiled(sql).await;
        let f = fixture("tumble(interval '10 seconds')", "", "").await;
        let mut op = c.operator();
        assert!(!op.final_row_wise);
        let mut results = op.process(&spread(&f, 0, 3)).await.unwrap().results;
        assert_eq!(results.len(), 2, "two windows passed within the batch");
        assert_eq!(op.stats().final_runs, 2);
        results.extend(op.advance_watermark(100 * S).await.unwrap().results);
        let windows: Vec<Pane> = results.iter().map(|r| r.window).collect();
        assert_eq!(windows, first_windows(3));
        for r in &results {
            let n = r
                .batch
                .column(1)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            // 10 seconds of 4 devices, one row each per second.
            assert_eq!(r.batch.num_rows(), 4);
            assert!(n.iter().all(|n| n == Some(10)));
        }
    }

    #[tokio::test]
    async fn windows_fire_alone_when_a_window_column_holds_other_values() {
        // A column named window_start that is not the window's start: rows cannot be
        // told apart by it, so the windows closing together fire one run each, on the
        // usual path and on the one computing windows straight from collected rows.
        let sql = "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
               WITH (connector = 'mqtt', topic = 'w/+', topic_template = 'w/{device}');
             CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
             INSERT INTO out SELECT device, window_end + interval '1' second AS window_start, count(*) AS n
             FROM r GROUP BY tumble(interval '10 seconds'), device;";
        let c = crate::testing::compiled(sql).await;
        let f = fixture("tumble(interval '10 seconds')", "", "").await;
        for collect in [true, false] {
            let mut op = c.operator();
            assert!(op.final_row_wise);
            if !collect {
                op.panes = Panes::default();
            }
            let mut results = op.process(&spread(&f, 0, 3)).await.unwrap().results;
            results.extend(op.advance_watermark(100 * S).await.unwrap().results);
            let windows: Vec<Pane> = results.iter().map(|r| r.window).collect();
            assert_eq!(windows, first_windows(3), "collect {collect}");
            assert!(results
                .iter()
                .all(|r| r.batch.num_rows() == 4 && r.row_windows.is_none()));
            assert_eq!(op.stats().windows_closed, 3);
        }
    }

    #[tokio::test]
    async fn a_limit_keeps_each_window_to_a_run_of_its_own() {
        let sql = "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
               WITH (connector = 'mqtt', topic = 'w/+', topic_template = 'w/{device}');
             CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
             INSERT INTO out SELECT device, window_start, window_end, sum(v) AS s FROM r
             GROUP BY tumble(interval '10 seconds'), device ORDER BY s DESC LIMIT 1;";
        let c = crate::testing::compiled(sql).await;
        let f = fixture("tumble(interval '10 seconds')", "", "").await;
        let mut op = c.operator();
        assert!(!op.final_row_wise);
        let mut results = op.process(&spread(&f, 0, 3)).await.unwrap().results;
        results.extend(op.advance_watermark(100 * S).await.unwrap().results);
        // The limit applies to each window: one row each.
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(|r| r.batch.num_rows() == 1));
        assert_eq!(op.stats().final_runs, 3);
    }

    #[tokio::test]
    async fn rows_of_a_closed_window_are_late_judged_row_by_row() {
        let f = fixture("tumble(interval '10 seconds')", "", "").await;
        let mut op = f.operator();
        op.process(&f.rows(&[("a", S, 1.0)])).await.unwrap();
        // In one batch: the row at 13 s moves the watermark to 11 s, which closes the
        // first window for the row at 9 s after it, but not for the row at 2 s before it.
        let p = op
            .process(&f.rows(&[("a", 2 * S, 2.0), ("a", 13 * S, 4.0), ("a", 9 * S, 8.0)]))
            .await
            .unwrap();
        assert_eq!(reasons(&p), vec![(RowRejection::Late, vec![2])]);
        assert_eq!(p.rejected[0].rows.num_rows(), 1);
        assert_eq!(output(&p.results), vec![row(0, 10 * S, "a", 2, 3.0)]);
        let p = op.process(&f.rows(&[("a", 5 * S, 1.0)])).await.unwrap();
        assert_eq!(reasons(&p), vec![(RowRejection::Late, vec![0])]);
        assert_eq!(op.stats().late_rows, 2);
        assert_eq!(op.stats().rows_aggregated, 3);
    }

    #[tokio::test]
    async fn rows_too_far_ahead_are_refused_until_a_second_row_confirms_the_jump() {
        let f = fixture(
            "tumble(interval '10 seconds')",
            "",
            ", max_future = '1 minute'",
        )
        .await;
        let mut op = f.operator();
        let p = op
            .process(&f.batch(&[
                ("a", Some(S), 1.0),
                ("a", Some(62 * S), 2.0),
                ("a", None, 4.0),
                ("a", Some(61 * S), 8.0),
            ]))
            .await
            .unwrap();
        // 62 s is more than a minute after 1 s; 61 s is not.
        assert_eq!(
            reasons(&p),
            vec![
                (RowRejection::Future, vec![1]),
                (RowRejection::NoTimestamp, vec![2]),
            ]
        );
        assert_eq!(op.max_event_time(), Some(61 * S));
        let p = op.process(&f.rows(&[("a", 200 * S, 1.0)])).await.unwrap();
        assert_eq!(reasons(&p), vec![(RowRejection::Future, vec![0])]);
        assert_eq!(
            op.max_event_time(),
            Some(61 * S),
            "refused rows do not count"
        );
        // A second row within a minute of the refused one: the stream really jumped.
        let p = op.process(&f.rows(&[("a", 230 * S, 1.0)])).await.unwrap();
        assert!(p.rejected.is_empty());
        assert_eq!(op.max_event_time(), Some(230 * S));
        let s = op.stats();
        assert_eq!((s.future_rows, s.no_timestamp_rows, s.rows_in), (2, 1, 6));
    }

    #[tokio::test]
    async fn rows_that_would_open_one_pane_too_many_are_refused() {
        let f = fixture("tumble(interval '10 seconds')", "", "").await;
        let mut op = f.operator().with_max_open_panes(2);
        // Panes 20 s and 30 s: two, within the limit; the watermark (29 s) closes neither.
        let p = op
            .process(&f.rows(&[
                ("a", 21 * S, 1.0),
                ("a", 25 * S, 1.0),
                ("a", 31 * S, 1.0),
                ("a", 26 * S, 1.0),
            ]))
            .await
            .unwrap();
        assert!(p.rejected.is_empty() && p.results.is_empty());
        assert_eq!(op.open_panes(), 2);
        // 45 s would open a third pane; 33 s goes to an open one.
        let p = op
            .process(&f.rows(&[("a", 45 * S, 1.0), ("a", 33 * S, 1.0)]))
            .await
            .unwrap();
        assert_eq!(reasons(&p), vec![(RowRejection::TooManyWindows, vec![0])]);
        assert_eq!(
            op.max_event_time(),
            Some(33 * S),
            "refused rows do not count"
        );
        assert_eq!(op.stats().too_many_windows_rows, 1);
        // The watermark at 31 s closed pane 20 s.
        assert_eq!(output(&p.results), vec![row(20 * S, 30 * S, "a", 3, 3.0)]);
        assert_eq!(op.open_panes(), 1);
    }

    /// Batches in time order skip the row-by-row loop; they must meet the fate the loop
    /// gives them: the same rows refused for the same reasons, the same windows, the
    /// same watermark and counters, batch after batch. Random streams (a fixed
    /// generator), mostly in order, some starting behind the watermark, some out of
    /// order, over a small limit of open panes, tumbling and hopping.
    #[tokio::test]
    async fn batches_in_time_order_meet_the_fate_the_row_by_row_loop_gives_them() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut shortcuts, mut refused) = (0, 0);
        for (window, filter) in [
            ("tumble(interval '10 seconds')", ""),
            ("hop(interval '5 seconds', interval '15 seconds')", ""),
            ("tumble(interval '10 seconds')", "WHERE v > 4"),
        ] {
            let f = fixture(window, filter, "").await;
            for _ in 0..40 {
                let limit = 2 + next(4) as usize;
                let mut fast = f.operator().with_max_open_panes(limit);
                let mut slow = f.operator().with_max_open_panes(limit);
                slow.in_order_path = false;
                let mut t: Millis = 100 * S;
                for _ in 0..12 {
                    // Sometimes start behind: late rows, or rows of a closed pane.
                    if next(4) == 0 {
                        t -= next(25 * S as u64) as Millis;
                    }
                    let n = 1 + next(30);
                    let mut rows = Vec::new();
                    for _ in 0..n {
                        // Mostly small steps; now and then a jump over several panes.
                        t += match next(10) {
                            0 => next(40 * S as u64) as Millis,
                            _ => next(2 * S as u64) as Millis,
                        };
                        rows.push((["a", "b", "c"][next(3) as usize], t, next(8) as f64));
                    }
                    if next(5) == 0 {
                        let i = next(n) as usize;
                        rows[i].1 -= 1 + next(8 * S as u64) as Millis;
                    }
                    let b = f.rows(&rows);
                    let in_order = rows.windows(2).all(|w| w[0].1 <= w[1].1);
                    let p = slow.process(&b).await.unwrap();
                    let q = fast.process(&b).await.unwrap();
                    assert_eq!(reasons(&q), reasons(&p), "{window} {filter} {rows:?}");
                    assert_eq!(
                        output(&q.results),
                        output(&p.results),
                        "{window} {filter} {rows:?}"
                    );
                    let spans = |p: &Processed| {
                        p.results
                            .iter()
                            .map(|r| (r.window, r.windows))
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(spans(&q), spans(&p));
                    assert_eq!(fast.watermark(), slow.watermark());
                    assert_eq!(fast.max_event_time(), slow.max_event_time());
                    assert_eq!(fast.open_panes(), slow.open_panes());
                    assert_eq!(fast.stats(), slow.stats());
                    match (in_order, p.rejected.is_empty()) {
                        (true, true) => shortcuts += 1,
                        (true, false) => refused += 1,
                        _ => {}
                    }
                }
                let (p, q) = (slow.finish().await.unwrap(), fast.finish().await.unwrap());
                assert_eq!(output(&q.results), output(&p.results));
                assert_eq!(fast.stats(), slow.stats());
            }
        }
        // Both kinds of in-order batch occur: the shortcut's and the loop's.
        assert!(shortcuts > 200 && refused > 200, "{shortcuts} {refused}");
    }

    #[tokio::test]
    async fn a_refused_batch_still_moves_the_watermark() {
        let f = fixture("tumble(interval '10 seconds')", "", "").await;
        let mut op = f.operator();
        op.process(&f.rows(&[("a", S, 1.0)])).await.unwrap();
        let p = op.refuse(&f.rows(&[("a", 15 * S, 1.0)])).await.unwrap();
        assert_eq!(reasons(&p), vec![(RowRejection::StateLimit, vec![0])]);
        assert_eq!(op.watermark(), Some(13 * S));
        assert_eq!(output(&p.results), vec![row(0, 10 * S, "a", 1, 1.0)]);
        assert_eq!(op.stats().rows_aggregated, 1);
    }

    #[tokio::test]
    async fn rows_the_query_filters_out_are_never_rejected_but_move_the_watermark() {
        let f = fixture("tumble(interval '10 seconds')", "WHERE v > 0", "").await;
        let mut op = f.operator();
        op.process(&f.rows(&[("a", S, 1.0), ("a", 2 * S, -1.0)]))
            .await
            .unwrap();
        let p = op.process(&f.rows(&[("a", 13 * S, -1.0)])).await.unwrap();
        assert_eq!(op.watermark(), Some(11 * S));
        assert_eq!(output(&p.results), vec![row(0, 10 * S, "a", 1, 1.0)]);
        // Late by time, but the query would not take it anyway.
        let p = op.process(&f.rows(&[("a", 3 * S, -1.0)])).await.unwrap();
        assert!(p.rejected.is_empty());
        assert_eq!(op.stats().late_rows, 0);
    }

    #[tokio::test]
    async fn hop_windows_merge_the_panes_they_cover() {
        let f = fixture("hop(interval '5 seconds', interval '10 seconds')", "", "").await;
        let mut op = f.operator();
        let p = op
            .process(&f.rows(&[("a", S, 1.0), ("a", 6 * S, 2.0), ("a", 12 * S, 4.0)]))
            .await
            .unwrap();
        // The watermark at 10 s has passed the windows ending at 5 and 10 s.
        let mut results = p.results;
        assert_eq!(results.iter().map(|r| r.windows).sum::<usize>(), 2);
        results.extend(op.finish().await.unwrap().results);
        // Rows at 1, 6, 12 s in windows [-5,5), [0,10), [5,15), [10,20).
        assert_eq!(
            output(&results),
            vec![
                row(-5 * S, 5 * S, "a", 1, 1.0),
                row(0, 10 * S, "a", 2, 3.0),
                row(5 * S, 15 * S, "a", 2, 6.0),
                row(10 * S, 20 * S, "a", 1, 4.0),
            ]
        );
        assert_eq!(op.stats().windows_closed, 4);
    }

    #[tokio::test]
    async fn a_row_bridging_two_sessions_merges_their_results() {
        let f = fixture("session(interval '10 seconds')", "", "").await;
        let mut op = f.operator();
        // a's rows at 0 and 11 s are more than the gap apart: two sessions.
        op.process(&f.rows(&[("b", 3 * S, 4.0), ("a", 0, 1.0), ("a", 11 * S, 2.0)]))
            .await
            .unwrap();
        assert_eq!(op.open_sessions(), 3);
        // 5 s is within 10 s of both 0 and 11 s.
        op.process(&f.rows(&[("a", 5 * S, 8.0)])).await.unwrap();
        assert_eq!(op.open_sessions(), 2);
        // The watermark at 13 s passes b's session (ends at 13 s), not a's (21 s).
        let p = op.process(&f.rows(&[("c", 15 * S, 1.0)])).await.unwrap();
        assert_eq!(output(&p.results), vec![row(3 * S, 13 * S, "b", 1, 4.0)]);
        assert_eq!(
            p.results[0].row_windows,
            Some(vec![Pane {
                start: 3 * S,
                end: 13 * S
            }])
        );
        let p = op.process(&f.rows(&[("c", 23 * S, 1.0)])).await.unwrap();
        assert_eq!(output(&p.results), vec![row(0, 21 * S, "a", 3, 11.0)]);
        // A row of the fired session's time is late: its session would have closed.
        let p = op.process(&f.rows(&[("a", 2 * S, 1.0)])).await.unwrap();
        assert_eq!(reasons(&p), vec![(RowRejection::Late, vec![0])]);
        let p = op.finish().await.unwrap();
        assert_eq!(output(&p.results), vec![row(15 * S, 33 * S, "c", 2, 2.0)]);
        assert_eq!(op.stats().windows_closed, 3);
    }
}
