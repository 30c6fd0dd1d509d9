//! DataFusion plumbing: a pane's long-lived partial aggregate (the query's partial
//! half with its leaf replaced by a channel-fed streaming scan), the leaf batches fed
//! to it, and the final half run over partial state when a window fires.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{ArrayRef, AsArray, TimestampMillisecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{collect, ExecutionPlan, PhysicalExpr, SendableRecordBatchStream};
use forewarn_core::{Millis, Pane};
use forewarn_sql::{replace_leaf, time_type, CompiledQuery, MemoryRuns, WINDOW_END, WINDOW_START};
use futures::TryStreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::StreamError;

/// One pane's running partial aggregate: batches go in through `tx`; closing `tx`
/// ends its input and `state` then yields the aggregate's state rows.
pub(crate) struct OpenPane {
    tx: mpsc::Sender<DfResult<RecordBatch>>,
    state: JoinHandle<DfResult<Vec<RecordBatch>>>,
}

impl OpenPane {
    /// Starts `q`'s partial half over a fresh channel.
    pub(crate) fn start(q: &CompiledQuery) -> DfResult<OpenPane> {
        let (tx, rx) = mpsc::channel(16);
        let input = Arc::new(ChannelPartition {
            schema: q.leaf_schema.clone(),
            rx: Mutex::new(Some(rx)),
        });
        let leaf = StreamingTableExec::try_new(
            q.leaf_schema.clone(),
            vec![input],
            None,
            vec![],
            false,
            None,
        )?;
        let plan = replace_leaf(&q.partial, Arc::new(leaf))?;
        let stream = plan.execute(0, q.task_ctx.clone())?;
        let state = tokio::spawn(async move { stream.try_collect::<Vec<_>>().await });
        Ok(OpenPane { tx, state })
    }

    /// Feeds a leaf batch; `false` when the aggregate has already stopped (its error
    /// surfaces from [`drain`](Self::drain)).
    pub(crate) async fn send(&self, leaf_batch: RecordBatch) -> bool {
        self.tx.send(Ok(leaf_batch)).await.is_ok()
    }

    /// Closes the aggregate's input and returns its state rows.
    pub(crate) async fn drain(self) -> DfResult<Vec<RecordBatch>> {
        drop(self.tx);
        let state = self
            .state
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))??;
        Ok(state.into_iter().filter(|b| b.num_rows() > 0).collect())
    }
}

/// Runs `q`'s partial half once over leaf batches of several panes (their window
/// columns hold each row's pane) and returns each pane's state rows, by pane start, in
/// the order the aggregate emitted them.
pub(crate) async fn partial_by_pane(
    q: &CompiledQuery,
    rows: Vec<RecordBatch>,
) -> DfResult<BTreeMap<Millis, Vec<RecordBatch>>> {
    state_by_pane(q, partial_state(q, rows).await?)
}

/// Runs `q`'s partial half once over leaf batches: its state rows (non-empty batches),
/// one group per pane and group key, in the order the aggregate first met them.
pub(crate) async fn partial_state(
    q: &CompiledQuery,
    rows: Vec<RecordBatch>,
) -> DfResult<Vec<RecordBatch>> {
    // As they are: usually one slice per input batch, not one per pane.
    let plan = q.partial_runs.over(rows)?;
    let state = collect(plan, q.task_ctx.clone()).await?;
    Ok(state.into_iter().filter(|b| b.num_rows() > 0).collect())
}

/// Partial state split by pane (its window-start column), in order.
pub(crate) fn state_by_pane(
    q: &CompiledQuery,
    state: Vec<RecordBatch>,
) -> DfResult<BTreeMap<Millis, Vec<RecordBatch>>> {
    let ws = q.partial.schema().index_of(WINDOW_START)?;
    let mut by_pane: BTreeMap<Millis, Vec<RecordBatch>> = BTreeMap::new();
    for b in &state {
        // The input is in pane order and every group belongs to one pane, so the
        // aggregate (emitting groups in the order it first met them) gives each pane's
        // state rows as one run: zero-copy slices, one per run of equal starts.
        let starts = b
            .column(ws)
            .as_primitive::<TimestampMillisecondType>()
            .values();
        for run in crate::runs(starts) {
            by_pane
                .entry(starts[run.start])
                .or_default()
                .push(b.slice(run.start, run.len()));
        }
    }
    Ok(by_pane)
}

/// Where each column of the partial half's leaf comes from in a pane batch.
pub(crate) fn leaf_projection(q: &CompiledQuery) -> Vec<usize> {
    q.leaf_schema
        .fields()
        .iter()
        .map(|f| {
            q.pane_schema
                .index_of(f.name())
                .expect("leaf columns come from the pane schema")
        })
        .collect()
}

/// The partial half's input for `rows` (source columns): the leaf's columns, picked by
/// `leaf_projection` (each leaf column's index in the pane schema), with the window
/// columns set to the pane (or, for sessions, to each row's session id).
pub(crate) fn leaf_batch(
    q: &CompiledQuery,
    leaf_projection: &[usize],
    rows: RecordBatch,
    start: Millis,
    end: Millis,
    ids: Option<Vec<Millis>>,
) -> Result<RecordBatch, StreamError> {
    let n = rows.num_rows();
    let (starts, ends): (ArrayRef, ArrayRef) = match ids {
        Some(ids) => {
            let a: ArrayRef = Arc::new(TimestampMillisecondArray::from(ids));
            (a.clone(), a)
        }
        None => (
            Arc::new(TimestampMillisecondArray::from_value(start, n)),
            Arc::new(TimestampMillisecondArray::from_value(end, n)),
        ),
    };
    leaf_batch_with(q, leaf_projection, rows, starts, ends)
}

/// [`leaf_batch`] with each row's window columns given.
pub(crate) fn leaf_batch_with(
    q: &CompiledQuery,
    leaf_projection: &[usize],
    rows: RecordBatch,
    starts: ArrayRef,
    ends: ArrayRef,
) -> Result<RecordBatch, StreamError> {
    let mut cols: Vec<ArrayRef> = rows.columns().to_vec();
    cols.push(starts);
    cols.push(ends);
    let leaf_cols = leaf_projection.iter().map(|&i| cols[i].clone()).collect();
    RecordBatch::try_new(q.leaf_schema.clone(), leaf_cols).map_err(|e| StreamError::Schema {
        query: q.name.clone(),
        reason: e.to_string(),
    })
}

/// Runs the final half over partial state, with the window columns of each state
/// batch replaced by `bounds(rows)` (a hop window spans several panes; a session's
/// rows carry its id until it fires).
pub(crate) async fn finish_window(
    q: &CompiledQuery,
    state: Vec<RecordBatch>,
    mut bounds: impl FnMut(usize) -> (ArrayRef, ArrayRef),
) -> Result<RecordBatch, StreamError> {
    let err = |e: DataFusionError| StreamError::exec(&q.name, e);
    let schema = q.partial.schema();
    let ws = schema.index_of(WINDOW_START).map_err(|e| err(e.into()))?;
    let we = schema.index_of(WINDOW_END).map_err(|e| err(e.into()))?;
    let state = state
        .into_iter()
        .map(|b| {
            let mut cols = b.columns().to_vec();
            let (s, e) = bounds(b.num_rows());
            cols[ws] = s;
            cols[we] = e;
            RecordBatch::try_new(schema.clone(), cols).map_err(|e| err(e.into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    finish_state(q, state).await
}

/// Runs the final half over partial state as it is (its window columns already hold
/// each row's window: tumbling windows' panes).
pub(crate) async fn finish_state(
    q: &CompiledQuery,
    state: Vec<RecordBatch>,
) -> Result<RecordBatch, StreamError> {
    let err = |e: DataFusionError| StreamError::exec(&q.name, e);
    let schema = q.partial.schema();
    // One input batch: the final aggregate's cost per batch is paid once, not per window
    // (windows closing together bring one small state batch each).
    let state = match state.len() {
        0 | 1 => state,
        _ => vec![datafusion::arrow::compute::concat_batches(&schema, &state)
            .map_err(|e| err(e.into()))?],
    };
    let plan = q.final_runs.over(state).map_err(err)?;
    let batches = collect(plan, q.task_ctx.clone()).await.map_err(err)?;
    datafusion::arrow::compute::concat_batches(&q.output_schema, &batches)
        .map_err(|e| err(e.into()))
}

/// Aggregates whose value is the same bit for bit whether they run once over all of a
/// group's rows (Single) or as a Partial run over those rows whose state one Final run
/// then merges into an empty accumulator: merging into nothing adds zero to a sum or a
/// count, keeps a minimum or maximum, and adds an exact zero to `var`'s and `stddev`'s
/// sum of squared deviations (their mean, which the merge rescales, is not part of
/// their value). Others (`approx_percentile_cont`'s digest, the moments' Pébay merge)
/// keep the two runs.
const SAME_AS_SINGLE: [&str; 9] = [
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "stddev",
    "stddev_pop",
    "var",
    "var_pop",
];

/// `root` with its Final aggregate and the Partial one below it (`partial`) fused into
/// one Single aggregate over the partial half's input: the whole query in one
/// aggregation, for windows whose rows were only ever collected (the batch query's one
/// hash table instead of two). `None` unless it gives what the two runs give, row for
/// row and bit for bit: every aggregate in [`SAME_AS_SINGLE`], none `DISTINCT` or
/// ordered, and nothing under the aggregate that could drop a row the operator
/// collected (only projections and the WHERE filter right above the leaf, which rows
/// pass before they are collected), so every collected pane has a group.
pub(crate) fn single_stage(
    root: &Arc<dyn ExecutionPlan>,
    partial: &Arc<dyn ExecutionPlan>,
    width: Millis,
) -> Option<Arc<dyn ExecutionPlan>> {
    let agg = partial.as_ref().downcast_ref::<AggregateExec>()?;
    let same = agg.aggr_expr().iter().all(|a| {
        SAME_AS_SINGLE.contains(&a.fun().name()) && !a.is_distinct() && a.order_bys().is_empty()
    });
    if *agg.mode() != AggregateMode::Partial || !same || !keeps_every_row(agg.input()) {
        return None;
    }
    let single = |group_by: PhysicalGroupBy| -> Option<Arc<dyn ExecutionPlan>> {
        let exec = AggregateExec::try_new(
            AggregateMode::Single,
            group_by,
            agg.aggr_expr().to_vec(),
            agg.filter_expr().to_vec(),
            agg.input().clone(),
            agg.input_schema(),
        );
        Some(Arc::new(exec.ok()?))
    };
    // A tumbling window's end follows from its start: grouped by the start alone (one
    // group column fewer to hash and compare per row), the end added to each result.
    let full = single(agg.group_expr().clone())?;
    let by_start = without_window_end(agg.group_expr())
        .and_then(single)
        .and_then(|s| with_window_end(s, full.schema(), width))
        .and_then(|s| replace_final(root, &s));
    by_start.or_else(|| replace_final(root, &full))
}

/// `group_by` without its `window_end` column, when it is a plain list of columns that
/// holds both window columns.
fn without_window_end(group_by: &PhysicalGroupBy) -> Option<PhysicalGroupBy> {
    let exprs = group_by.expr();
    let plain = group_by.groups().len() == 1
        && group_by.null_expr().is_empty()
        && exprs
            .iter()
            .all(|(e, _)| e.downcast_ref::<Column>().is_some());
    let named = |n: &str| exprs.iter().any(|(_, name)| name == n);
    (plain && named(WINDOW_START) && named(WINDOW_END)).then(|| {
        PhysicalGroupBy::new_single(
            exprs
                .iter()
                .filter(|(_, name)| name != WINDOW_END)
                .cloned()
                .collect(),
        )
    })
}

/// `single` (grouped without `window_end`) with `window_end` = `window_start` + `width`
/// put back where `schema` (the grouping with it) has it.
fn with_window_end(
    single: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    width: Millis,
) -> Option<Arc<dyn ExecutionPlan>> {
    let inner = single.schema();
    let column = |name: &str| -> Option<Arc<dyn PhysicalExpr>> {
        Some(Arc::new(Column::new(name, inner.index_of(name).ok()?)))
    };
    let exprs = schema
        .fields()
        .iter()
        .map(|f| {
            let expr: Arc<dyn PhysicalExpr> = if f.name() == WINDOW_END {
                Arc::new(BinaryExpr::new(
                    column(WINDOW_START)?,
                    Operator::Plus,
                    Arc::new(Literal::new(ScalarValue::DurationMillisecond(Some(width)))),
                ))
            } else {
                column(f.name())?
            };
            Some(ProjectionExpr::new(expr, f.name().clone()))
        })
        .collect::<Option<Vec<_>>>()?;
    let projected = ProjectionExec::try_new(exprs, single).ok()?;
    let out = projected.schema();
    let same = out.fields().len() == schema.fields().len()
        && out
            .fields()
            .iter()
            .zip(schema.fields())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
    same.then(|| Arc::new(projected) as Arc<dyn ExecutionPlan>)
}

/// Whether the plan under the partial aggregate passes on every row that reaches it
/// past the WHERE filter right above the leaf.
fn keeps_every_row(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let node = plan.as_ref();
    let children = plan.children();
    if children.is_empty() {
        return true;
    }
    let passes = node.downcast_ref::<ProjectionExec>().is_some()
        || node
            .downcast_ref::<FilterExec>()
            .is_some_and(|f| f.input().children().is_empty() && f.projection().is_none());
    passes && children.into_iter().all(keeps_every_row)
}

/// `root` with the Final aggregate over the partial half replaced by `single`, when
/// their output schemas agree.
fn replace_final(
    root: &Arc<dyn ExecutionPlan>,
    single: &Arc<dyn ExecutionPlan>,
) -> Option<Arc<dyn ExecutionPlan>> {
    if let Some(agg) = root.as_ref().downcast_ref::<AggregateExec>() {
        if matches!(
            agg.mode(),
            AggregateMode::Final | AggregateMode::FinalPartitioned
        ) {
            let same = |a: &SchemaRef, b: &SchemaRef| {
                a.fields().len() == b.fields().len()
                    && a.fields()
                        .iter()
                        .zip(b.fields())
                        .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
            };
            let over_partial = std::iter::successors(Some(agg.input().clone()), |p| {
                let n = p.as_ref();
                let through = n.downcast_ref::<RepartitionExec>().is_some()
                    || n.downcast_ref::<CoalescePartitionsExec>().is_some();
                through
                    .then(|| p.children().first().map(|c| (*c).clone()))
                    .flatten()
            })
            .any(|p| {
                p.as_ref()
                    .downcast_ref::<AggregateExec>()
                    .is_some_and(|a| *a.mode() == AggregateMode::Partial)
            });
            return (over_partial && same(&root.schema(), &single.schema()))
                .then(|| single.clone());
        }
    }
    let children = root.children();
    if children.is_empty() {
        return None;
    }
    let mut found = false;
    let new_children = children
        .into_iter()
        .map(|c| match replace_final(c, single) {
            Some(n) => {
                found = true;
                n
            }
            None => c.clone(),
        })
        .collect();
    if !found {
        return None;
    }
    let options = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute);
    root.clone().replace_children(new_children, options).ok()
}

/// Runs the plan `single_stage` gave over collected leaf batches: the query's rows.
pub(crate) async fn run_single(
    q: &CompiledQuery,
    single: &MemoryRuns,
    rows: Vec<RecordBatch>,
) -> Result<RecordBatch, StreamError> {
    let err = |e: DataFusionError| StreamError::exec(&q.name, e);
    let plan = single.over(rows).map_err(err)?;
    let batches = collect(plan, q.task_ctx.clone()).await.map_err(err)?;
    datafusion::arrow::compute::concat_batches(&q.output_schema, &batches)
        .map_err(|e| err(e.into()))
}

/// Whether the plan above `root`'s partial half works row by row (projections,
/// filters such as HAVING, the final aggregate), so that running it
/// once over several windows' state gives each window the rows, in the same order, of
/// a run of its own. Sorts, limits, window functions and joins do not qualify.
pub(crate) fn final_is_row_wise(root: &Arc<dyn ExecutionPlan>) -> bool {
    let node = root.as_ref();
    if let Some(agg) = node.downcast_ref::<AggregateExec>() {
        if *agg.mode() == AggregateMode::Partial {
            return true;
        }
    } else if node.downcast_ref::<ProjectionExec>().is_none()
        && node.downcast_ref::<FilterExec>().is_none()
    {
        return false;
    }
    root.children().into_iter().all(final_is_row_wise)
}

/// Each output row's window, when the query selects `window_start` and `window_end`.
pub(crate) fn output_windows(
    q: &CompiledQuery,
    batch: &RecordBatch,
) -> Result<Option<Vec<Pane>>, StreamError> {
    let schema = batch.schema();
    let (Ok(s), Ok(e)) = (schema.index_of(WINDOW_START), schema.index_of(WINDOW_END)) else {
        return Ok(None);
    };
    let col = |i: usize| {
        cast(batch.column(i), &time_type()).map_err(|e| StreamError::exec(&q.name, e.into()))
    };
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

/// The WHERE predicate applied right above the source scan, if there is one.
pub(crate) fn leaf_filter(partial: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn PhysicalExpr>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fixture, output, row};
    use crate::WindowResult;

    #[tokio::test]
    async fn the_where_clause_is_found_above_the_leaf() {
        let f = fixture("tumble(interval '10 seconds')", "WHERE v > 0", "").await;
        let pred = leaf_filter(&f.q.partial).expect("a WHERE clause");
        assert!(pred.to_string().contains('v'), "{pred}");
        let f = fixture("tumble(interval '10 seconds')", "", "").await;
        assert!(leaf_filter(&f.q.partial).is_none());
    }

    #[tokio::test]
    async fn leaf_batches_carry_the_pane_bounds_or_the_session_ids() {
        let f = fixture("tumble(interval '10 seconds')", "", "").await;
        let projection = leaf_projection(&f.q);
        let rows = f.rows(&[("a", 1, 1.0), ("b", 2, 2.0)]);
        let column = |b: &RecordBatch, name: &str| -> Vec<Millis> {
            b.column(b.schema().index_of(name).unwrap())
                .as_primitive::<TimestampMillisecondType>()
                .values()
                .to_vec()
        };
        let b = leaf_batch(&f.q, &projection, rows.clone(), 0, 10, None).unwrap();
        assert_eq!(b.schema(), f.q.leaf_schema);
        assert_eq!(column(&b, WINDOW_START), vec![0, 0]);
        assert_eq!(column(&b, WINDOW_END), vec![10, 10]);
        let b = leaf_batch(&f.q, &projection, rows, 0, 10, Some(vec![7, 8])).unwrap();
        assert_eq!(column(&b, WINDOW_START), vec![7, 8]);
        assert_eq!(column(&b, WINDOW_END), vec![7, 8]);
    }

    #[tokio::test]
    async fn a_pane_aggregate_keeps_one_state_row_per_group_and_the_final_half_adds_them_up() {
        let f = fixture("tumble(interval '10 seconds')", "", "").await;
        let projection = leaf_projection(&f.q);
        let pane = OpenPane::start(&f.q).unwrap();
        for rows in [
            &[("a", 1, 1.0), ("b", 2, 2.0)][..],
            &[("a", 3, 4.0), ("a", 4, 8.0), ("b", 5, 16.0)][..],
        ] {
            let b = leaf_batch(&f.q, &projection, f.rows(rows), 0, 10, None).unwrap();
            assert!(pane.send(b).await);
        }
        let state = pane.drain().await.unwrap();
        assert_eq!(state.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        // The final half with the window columns set to a wider window.
        let batch = finish_window(&f.q, state, |n| {
            (
                Arc::new(TimestampMillisecondArray::from_value(-10, n)) as ArrayRef,
                Arc::new(TimestampMillisecondArray::from_value(20, n)) as ArrayRef,
            )
        })
        .await
        .unwrap();
        let result = WindowResult {
            window: Pane {
                start: -10,
                end: 20,
            },
            batch,
            row_windows: None,
            windows: 1,
        };
        assert_eq!(
            output(std::slice::from_ref(&result)),
            vec![row(-10, 20, "a", 3, 13.0), row(-10, 20, "b", 2, 18.0)]
        );
        let windows = output_windows(&f.q, &result.batch).unwrap().unwrap();
        assert_eq!(
            windows,
            vec![
                Pane {
                    start: -10,
                    end: 20
                };
                2
            ]
        );
    }
}
