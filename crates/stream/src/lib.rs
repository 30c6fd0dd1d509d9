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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, TimestampMillisecondArray, UInt32Array};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{collect, ExecutionPlan, SendableRecordBatchStream};
use forewarn_core::{Millis, Pane, Watermark};
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
}

impl RowRejection {
    /// Stable reason code for counters and dead-letter messages.
    pub fn code(&self) -> &'static str {
        match self {
            RowRejection::Late => "late",
            RowRejection::Future => "future_timestamp",
            RowRejection::NoTimestamp => "missing_timestamp",
        }
    }
}

/// The result rows of one closed window.
#[derive(Debug, Clone)]
pub struct WindowResult {
    /// The window's bounds.
    pub window: Pane,
    /// The query's output rows for it (may be empty after HAVING).
    pub batch: RecordBatch,
}

/// What one call to [`WindowOperator::process`] produced.
#[derive(Debug, Default)]
pub struct Processed {
    /// Windows that closed, oldest first.
    pub results: Vec<WindowResult>,
    /// Rows not aggregated, with the reason (original source columns).
    pub rejected: Vec<(RowRejection, RecordBatch)>,
}

/// Running totals for one operator.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
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
    /// Windows closed.
    pub windows_closed: u64,
    /// Result rows produced.
    pub rows_out: u64,
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
    /// Partial state of closed panes that later windows still need (hop windows).
    closed: BTreeMap<Millis, Vec<RecordBatch>>,
    watermark: Watermark,
    /// Every pane ending at or before this has been closed.
    closed_until: Option<Millis>,
    stats: OperatorStats,
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
        WindowOperator {
            watermark: Watermark::new(q.watermark),
            q,
            source_schema,
            ts_index,
            leaf_projection,
            panes: BTreeMap::new(),
            closed: BTreeMap::new(),
            closed_until: None,
            stats: OperatorStats::default(),
        }
    }

    /// The query this operator runs.
    pub fn query(&self) -> &Arc<CompiledQuery> {
        &self.q
    }

    /// Totals so far.
    pub fn stats(&self) -> OperatorStats {
        self.stats
    }

    /// Panes currently open (each holds one partial aggregate).
    pub fn open_panes(&self) -> usize {
        self.panes.len()
    }

    /// Bytes of aggregate state reserved in the query's DataFusion memory pool (shared by
    /// the queries of one pipeline): the open panes' partial aggregates.
    pub fn state_bytes(&self) -> usize {
        self.q.task_ctx.memory_pool().reserved()
    }

    /// Closed panes whose partial state is kept for windows still to fire (hop windows).
    pub fn retained_panes(&self) -> usize {
        self.closed.len()
    }

    /// Current watermark.
    pub fn watermark(&self) -> Option<Millis> {
        self.watermark.current()
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
        let max_ahead = self
            .q
            .watermark
            .max_future
            .zip(self.watermark.current().map(|w| w + self.q.watermark.delay));
        // Sort row indices by pane, or by rejection reason; BTreeMap keeps panes in time order.
        let mut by_pane: BTreeMap<Millis, Vec<u32>> = BTreeMap::new();
        let mut rejected: BTreeMap<&'static str, (RowRejection, Vec<u32>)> = BTreeMap::new();
        let mut max_ts = None::<Millis>;
        for i in 0..ts.len() {
            let verdict = if ts.is_null(i) {
                Err(RowRejection::NoTimestamp)
            } else {
                let t = ts.value(i);
                let pane = self.q.window.pane_of(t);
                match (self.closed_until, max_ahead) {
                    (Some(c), _) if pane.end <= c => Err(RowRejection::Late),
                    (_, Some((limit, seen))) if t > seen.saturating_add(limit) => {
                        Err(RowRejection::Future)
                    }
                    _ => {
                        max_ts = Some(max_ts.map_or(t, |m| m.max(t)));
                        Ok(pane.start)
                    }
                }
            };
            match verdict {
                Ok(p) => by_pane.entry(p).or_default().push(i as u32),
                Err(r) => rejected
                    .entry(r.code())
                    .or_insert((r, vec![]))
                    .1
                    .push(i as u32),
            }
        }
        for (_, (reason, idx)) in rejected {
            let n = idx.len() as u64;
            match reason {
                RowRejection::Late => self.stats.late_rows += n,
                RowRejection::Future => self.stats.future_rows += n,
                RowRejection::NoTimestamp => self.stats.no_timestamp_rows += n,
            }
            let rows = take_record_batch(batch, &UInt32Array::from(idx))
                .map_err(|e| self.exec_err(e.into()))?;
            out.rejected.push((reason, rows));
        }
        let single = by_pane.len() == 1 && out.rejected.is_empty();
        for (start, idx) in by_pane {
            let (first, n) = (idx[0] as usize, idx.len());
            let rows = if single {
                batch.clone()
            } else if idx[n - 1] as usize == first + n - 1 {
                // In-order input puts a pane's rows in one contiguous run: a zero-copy slice.
                batch.slice(first, n)
            } else {
                take_record_batch(batch, &UInt32Array::from(idx))
                    .map_err(|e| self.exec_err(e.into()))?
            };
            self.stats.rows_aggregated += rows.num_rows() as u64;
            self.feed(start, rows).await?;
        }
        if let Some(t) = max_ts {
            self.watermark.observe(t);
        }
        self.close_ready(&mut out).await?;
        Ok(out)
    }

    /// Ends the input: closes every open window.
    pub async fn finish(&mut self) -> Result<Processed, StreamError> {
        self.watermark.advance_to_end();
        let mut out = Processed::default();
        self.close_ready(&mut out).await?;
        Ok(out)
    }

    fn exec_err(&self, source: DataFusionError) -> StreamError {
        StreamError::Exec {
            query: self.q.name.clone(),
            source,
        }
    }

    async fn feed(&mut self, start: Millis, rows: RecordBatch) -> Result<(), StreamError> {
        let width = self.q.window.pane_width();
        let n = rows.num_rows();
        let mut cols: Vec<ArrayRef> = rows.columns().to_vec();
        cols.push(Arc::new(TimestampMillisecondArray::from_value(start, n)));
        cols.push(Arc::new(TimestampMillisecondArray::from_value(
            start + width,
            n,
        )));
        let leaf_cols = self
            .leaf_projection
            .iter()
            .map(|&i| cols[i].clone())
            .collect();
        let leaf_batch =
            RecordBatch::try_new(self.q.leaf_schema.clone(), leaf_cols).map_err(|e| {
                StreamError::Schema {
                    query: self.q.name.clone(),
                    reason: e.to_string(),
                }
            })?;
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
        while let Some((&start, _)) = self.panes.first_key_value() {
            if self.q.window.pane_of(start).end > wm {
                break;
            }
            let open = self.panes.remove(&start).expect("present");
            drop(open.tx);
            let state = open
                .state
                .await
                .map_err(|e| self.exec_err(DataFusionError::External(Box::new(e))))?
                .map_err(|e| self.exec_err(e))?;
            let state: Vec<RecordBatch> = state.into_iter().filter(|b| b.num_rows() > 0).collect();
            if !state.is_empty() {
                self.closed.insert(start, state);
            }
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
            let batch = self.finish_window(window, state).await?;
            self.stats.windows_closed += 1;
            self.stats.rows_out += batch.num_rows() as u64;
            out.results.push(WindowResult { window, batch });
        }
        let width = self.q.window.width();
        self.closed.retain(|&start, _| start + width > wm);
        self.closed_until = Some(self.closed_until.map_or(wm, |c| c.max(wm)));
        Ok(())
    }

    /// Runs the final half over the partial states of the panes in `window`, with their
    /// window columns set to the window's bounds (a hop window spans several panes).
    async fn finish_window(
        &self,
        window: Pane,
        state: Vec<RecordBatch>,
    ) -> Result<RecordBatch, StreamError> {
        let schema = self.q.partial.schema();
        let state = state
            .into_iter()
            .map(|b| {
                let n = b.num_rows();
                let mut cols = b.columns().to_vec();
                for (name, at) in [(WINDOW_START, window.start), (WINDOW_END, window.end)] {
                    let i = schema.index_of(name).map_err(|e| self.exec_err(e.into()))?;
                    cols[i] = Arc::new(TimestampMillisecondArray::from_value(at, n));
                }
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
