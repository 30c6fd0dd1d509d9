//! Planning a windowed query once, and splitting its physical plan for streaming.
//!
//! The SELECT is planned by DataFusion against the source schema plus the
//! `window_start`/`window_end` columns, with one target partition and the
//! partial/final aggregate kept apart. The physical plan is then cut in two:
//!
//! * the **partial** half: everything from the leaf scan up to the `Partial`
//!   aggregate (WHERE, projections, pre-aggregation). The runtime instantiates one
//!   copy per open pane with its leaf replaced by a channel, and feeds it batches;
//! * the **final** half: the `Final` aggregate and everything above it (HAVING,
//!   projection, scoring). It runs once per closing window over the partial state.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::ScalarValue;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::context::SessionContext;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr as LExpr, ScalarUDF};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};

// Replaced leaves differ from the originals (a channel instead of a memory scan), so
// plan properties are recomputed.
const RECOMPUTE: ReplaceChildrenOptions =
    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute);
use datafusion::prelude::SessionConfig;
use forewarn_core::{WatermarkSpec, WindowSpec};
use forewarn_scorer::ModelRegistry;

use crate::decl::{QueryDecl, SourceDecl, WINDOW_END, WINDOW_START};
use crate::locate::{locate, Functions};
use crate::udf::AnomalyScore;
use crate::SqlError;

/// The Arrow type of `window_start`/`window_end` and of event-time columns.
pub fn time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

/// A query planned once and split into its streaming halves.
#[derive(Debug, Clone)]
pub struct CompiledQuery {
    /// The query's name (from its file).
    pub name: String,
    /// Sink table it writes to.
    pub sink: String,
    /// Source table it reads.
    pub source: String,
    /// The window.
    pub window: WindowSpec,
    /// The source's watermark.
    pub watermark: WatermarkSpec,
    /// Event-time column in the source schema.
    pub event_time: String,
    /// Column keying per-key watermarks.
    pub watermark_key: Option<String>,
    /// Session windows: key columns in the source schema.
    pub session_keys: Vec<String>,
    /// Output columns that are GROUP BY keys (see [`crate::QueryDecl::key_columns`]).
    pub key_columns: Vec<String>,
    /// See [`crate::QueryDecl::topic_keys`].
    pub topic_keys: Vec<String>,
    /// Source schema plus `window_start`, `window_end`: what a pane is fed.
    pub pane_schema: SchemaRef,
    /// Subtree up to and including the Partial aggregate; its leaf is a placeholder scan.
    pub partial: Arc<dyn ExecutionPlan>,
    /// Schema the partial half's leaf produces (a projection of `pane_schema`).
    pub leaf_schema: SchemaRef,
    /// The partial half, ready to run over collected rows again and again.
    pub partial_runs: MemoryRuns,
    /// The whole plan over the partial half's state (its rows), ready to run again and
    /// again: the final half of every closing window.
    pub final_runs: MemoryRuns,
    /// The whole plan; the partial half is replaced by the panes' state when a window fires.
    pub root: Arc<dyn ExecutionPlan>,
    /// Schema of the query's result rows.
    pub output_schema: SchemaRef,
    /// Models called through `anomaly_score('name', ...)`, in order of appearance.
    pub models: Vec<String>,
    /// DataFusion execution context (memory pool, functions).
    pub task_ctx: Arc<TaskContext>,
}

impl CompiledQuery {
    /// The two halves of the physical plan, for `forewarn check --explain`.
    pub fn explain(&self) -> String {
        use datafusion::physical_plan::displayable;
        format!(
            "query {} ({} from {} into {})\nper pane (partial half):\n{}when a window closes (over the panes' state):\n{}",
            self.name,
            self.window,
            self.source,
            self.sink,
            displayable(self.partial.as_ref()).indent(true),
            displayable(self.root.as_ref()).indent(true)
        )
    }
}

/// A DataFusion session configured for streaming windows.
pub fn streaming_context(models: Arc<ModelRegistry>) -> SessionContext {
    let mut config = SessionConfig::new()
        .with_target_partitions(1)
        .with_batch_size(8192)
        .set_bool("datafusion.sql_parser.enable_ident_normalization", true)
        // Never let a partial aggregate decide to pass rows through unaggregated: its
        // output is the pane's state and must stay one row per group.
        .set_str(
            "datafusion.execution.skip_partial_aggregation_probe_ratio_threshold",
            "2.0",
        )
        // Panes are long-lived plans fed by a channel: filters derived at run time from a
        // join's build side or a top-k would be fixed to the first rows seen.
        .set_bool("datafusion.optimizer.enable_dynamic_filter_pushdown", false);
    config.options_mut().execution.coalesce_batches = false;
    let base = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .build();
    // Keep the Partial and Final aggregates apart: the rule that fuses them into one
    // `Single` aggregate would leave nothing to split.
    let rules = base
        .physical_optimizers()
        .iter()
        .filter(|r| r.name() != "CombinePartialFinalAggregate")
        .cloned()
        .collect();
    let state = SessionStateBuilder::new_from_existing(base)
        .with_physical_optimizer_rules(rules)
        .build();
    let ctx = SessionContext::new_with_state(state);
    ctx.register_udf(ScalarUDF::new_from_impl(AnomalyScore::new(models.clone())));
    ctx.register_udf(ScalarUDF::new_from_impl(AnomalyScore::surprise(
        models.clone(),
    )));
    ctx.register_udf(ScalarUDF::new_from_impl(AnomalyScore::is_anomaly(
        models.clone(),
    )));
    ctx.register_udf(ScalarUDF::new_from_impl(AnomalyScore::top_contributors(
        models,
    )));
    for udaf in crate::moments::moment_udafs() {
        ctx.register_udaf(udaf);
    }
    for udf in crate::dsp_udf::dsp_udfs() {
        ctx.register_udf(udf);
    }
    ctx
}

/// Plans `q` against `src` once and splits the plan.
pub async fn compile(
    ctx: &SessionContext,
    q: &QueryDecl,
    src: &SourceDecl,
    text: &str,
) -> Result<CompiledQuery, SqlError> {
    let plan_err = |m: String| {
        let state = ctx.state();
        let functions = Functions {
            all: (state.scalar_functions().keys())
                .chain(state.aggregate_functions().keys())
                .chain(state.window_functions().keys())
                .cloned()
                .collect(),
            aggregates: state.aggregate_functions().keys().cloned().collect(),
        };
        let kind = crate::locate::planning_kind(&m);
        match locate(text, q.line, &m, &functions) {
            Ok(l) => SqlError::at(&q.file, text, l.line, l.column, l.width, l.message),
            // Nothing to point at: the query's INSERT.
            Err(m) => SqlError::at(&q.file, text, q.line, 1, 6, m),
        }
        .with_kind(kind)
    };
    let mut fields: Vec<Field> = src
        .schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(WINDOW_START, time_type(), false));
    fields.push(Field::new(WINDOW_END, time_type(), false));
    let pane_schema = Arc::new(Schema::new(fields));
    // Each query gets its own table registration so queries cannot see each other's
    // sources. The source is a streaming table: its scan is the one leaf the runtime
    // replaces with a pane's channel; reference tables stay memory scans.
    let placeholder = Arc::new(Placeholder(pane_schema.clone()));
    let table = StreamingTable::try_new(pane_schema.clone(), vec![placeholder])
        .map_err(|e| plan_err(e.to_string()))?;
    let _ = ctx.deregister_table(q.source.as_str());
    ctx.register_table(q.source.as_str(), Arc::new(table))
        .map_err(|e| plan_err(e.to_string()))?;
    let df = ctx
        .sql(&q.select_sql)
        .await
        .map_err(|e| plan_err(clean_df_error(&e.to_string())))?;
    let logical = df.logical_plan().clone();
    let mut models = Vec::new();
    logical
        .apply(|node| {
            node.apply_expressions(|e| {
                e.apply(|x| {
                    if let LExpr::ScalarFunction(f) = x {
                        if crate::features::is_score_function(f.name()) {
                            if let Some(LExpr::Literal(ScalarValue::Utf8(Some(m)), _)) =
                                f.args.first()
                            {
                                if !models.contains(m) {
                                    models.push(m.clone());
                                }
                            }
                        }
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            })
        })
        .map_err(|e| plan_err(e.to_string()))?;
    let root = df
        .create_physical_plan()
        .await
        .map_err(|e| plan_err(clean_df_error(&e.to_string())))?;
    let root = stream_on_probe_side(root).map_err(|e| plan_err(e.to_string()))?;
    let partial = find_partial(&root).ok_or_else(|| {
        plan_err(
            "internal: no partial aggregate in the plan; is there an aggregate in the SELECT?"
                .into(),
        )
    })?;
    let leaf_schema = stream_leaf(&partial)
        .ok_or_else(|| {
            plan_err("internal: the source scan is not below the partial aggregate".into())
        })?
        .schema();
    let runs = |schema: SchemaRef, place: &dyn Fn(_) -> _| {
        MemoryRuns::new(schema, place).map_err(|e| plan_err(e.to_string()))
    };
    let partial_runs = runs(leaf_schema.clone(), &|scan| replace_leaf(&partial, scan))?;
    let final_runs = runs(partial.schema(), &|state| replace_partial(&root, state))?;
    Ok(CompiledQuery {
        name: q.name.clone(),
        sink: q.sink.clone(),
        source: q.source.clone(),
        window: q.window,
        watermark: src.watermark,
        event_time: src.event_time.clone(),
        watermark_key: src.watermark_key.clone(),
        session_keys: q.session_keys.clone(),
        key_columns: q.key_columns.clone(),
        topic_keys: q.topic_keys.clone(),
        pane_schema,
        output_schema: root.schema(),
        partial,
        leaf_schema,
        partial_runs,
        final_runs,
        root,
        models,
        task_ctx: ctx.task_ctx(),
    })
}

fn clean_df_error(s: &str) -> String {
    s.trim_start_matches("Error during planning: ")
        .trim_start_matches("Schema error: ")
        .to_string()
}

fn find_partial(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    if let Some(agg) = plan.as_ref().downcast_ref::<AggregateExec>() {
        if *agg.mode() == AggregateMode::Partial {
            return Some(plan.clone());
        }
    }
    plan.children().into_iter().find_map(find_partial)
}

fn is_stream_leaf(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.as_ref().downcast_ref::<StreamingTableExec>().is_some()
}

/// The scan of the source table (the only streaming leaf).
fn stream_leaf(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    if is_stream_leaf(plan) {
        return Some(plan.clone());
    }
    plan.children().into_iter().find_map(stream_leaf)
}

/// Joins collect their left (build) input before producing anything. With the stream on
/// that side a pane would buffer every raw row until it closes; swap such joins so the
/// (static) reference table is collected and the stream is probed as it flows.
fn stream_on_probe_side(
    root: Arc<dyn ExecutionPlan>,
) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    use datafusion::common::tree_node::Transformed;
    use datafusion::physical_plan::joins::{
        CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PartitionMode,
    };
    root.transform_up(|plan| {
        let left_is_stream = |l: &Arc<dyn ExecutionPlan>| stream_leaf(l).is_some();
        let any = plan.as_ref();
        let swapped = if let Some(j) = any.downcast_ref::<HashJoinExec>() {
            left_is_stream(j.left())
                .then(|| j.swap_inputs(PartitionMode::CollectLeft))
                .transpose()?
        } else if let Some(j) = any.downcast_ref::<NestedLoopJoinExec>() {
            left_is_stream(j.left())
                .then(|| j.swap_inputs())
                .transpose()?
        } else if let Some(j) = any.downcast_ref::<CrossJoinExec>() {
            left_is_stream(j.left())
                .then(|| j.swap_inputs())
                .transpose()?
        } else {
            None
        };
        Ok(match swapped {
            Some(p) => Transformed::yes(p),
            None => Transformed::no(plan),
        })
    })
    .map(|t| t.data)
}

/// Replaces the source scan of `plan` with `leaf` (reference-table scans stay).
pub fn replace_leaf(
    plan: &Arc<dyn ExecutionPlan>,
    leaf: Arc<dyn ExecutionPlan>,
) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    if is_stream_leaf(plan) {
        return Ok(leaf);
    }
    let children = plan.children();
    if children.is_empty() {
        return Ok(plan.clone());
    }
    let new_children = children
        .into_iter()
        .map(|c| replace_leaf(c, leaf.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    plan.clone().replace_children(new_children, RECOMPUTE)
}

/// A plan, or why it could not be built.
type PlanResult = datafusion::error::Result<Arc<dyn ExecutionPlan>>;

/// A plan that runs over in-memory rows again and again (a pane's collected rows, the
/// windows a batch closes). [`replace_leaf`] rebuilds every node above the scan and
/// recomputes its properties (orderings, equivalences, partitioning), a fixed cost per
/// run that outweighs the rows of small windows. Here the plan is rebuilt once, over an
/// empty in-memory scan: a run's scan differs from it only in its rows, so the nodes
/// rebuilt for a run keep the properties they have (see `swap_scan`).
#[derive(Debug, Clone)]
pub struct MemoryRuns {
    plan: Arc<dyn ExecutionPlan>,
    /// The empty scan inside `plan`, swapped for each run's.
    leaf: Arc<dyn ExecutionPlan>,
}

impl MemoryRuns {
    /// The plan `place` builds around an in-memory scan of batches of `schema` (for
    /// instance `|scan| replace_leaf(&partial, scan)`), ready to run again and again.
    pub fn new(
        schema: SchemaRef,
        place: impl FnOnce(Arc<dyn ExecutionPlan>) -> PlanResult,
    ) -> datafusion::error::Result<Self> {
        let leaf: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[vec![]], schema, None)?;
        Ok(MemoryRuns {
            plan: place(leaf.clone())?,
            leaf,
        })
    }

    /// The plan over `rows`, one partition: what `replace_leaf` with an in-memory scan
    /// of them gives.
    pub fn over(
        &self,
        rows: Vec<RecordBatch>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let scan: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[rows], self.leaf.schema(), None)?;
        swap_scan(&self.plan, &self.leaf, &scan)
    }
}

/// `node` with `old` (wherever it appears) replaced by `new`. As [`replace_leaf`], every
/// node with inputs is rebuilt (none is shared between runs); projections, filters and
/// aggregates keep their properties, which is where the saving is.
fn swap_scan(
    node: &Arc<dyn ExecutionPlan>,
    old: &Arc<dyn ExecutionPlan>,
    new: &Arc<dyn ExecutionPlan>,
) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    if Arc::ptr_eq(node, old) {
        return Ok(new.clone());
    }
    let children = node.children();
    if children.is_empty() {
        return Ok(node.clone());
    }
    let new_children = children
        .into_iter()
        .map(|c| swap_scan(c, old, new))
        .collect::<Result<Vec<_>, _>>()?;
    // Keeping properties also keeps whatever else a node holds: a top-k sort's filter
    // or a repartition's channels belong to one run, and only a recomputation rebuilds
    // them. Projections, filters and aggregates hold nothing of a run's.
    let n = node.as_ref();
    let mode = match n.downcast_ref::<ProjectionExec>().is_some()
        || n.downcast_ref::<FilterExec>().is_some()
        || n.downcast_ref::<AggregateExec>().is_some()
    {
        true => ChildrenPropertiesMode::Keep,
        false => ChildrenPropertiesMode::Recompute,
    };
    node.clone()
        .replace_children(new_children, ReplaceChildrenOptions::new(mode))
}

/// The source's stand-in while planning; the runtime replaces its scan.
#[derive(Debug)]
struct Placeholder(SchemaRef);

impl PartitionStream for Placeholder {
    fn schema(&self) -> &SchemaRef {
        &self.0
    }
    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                self.0.clone(),
                futures::stream::empty(),
            ),
        )
    }
}

/// Replaces the partial half inside `root` with `input` (the panes' partial state).
fn replace_partial(
    root: &Arc<dyn ExecutionPlan>,
    input: Arc<dyn ExecutionPlan>,
) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    if let Some(agg) = root.as_ref().downcast_ref::<AggregateExec>() {
        if *agg.mode() == AggregateMode::Partial {
            return Ok(input);
        }
    }
    let children = root.children();
    if children.is_empty() {
        return Ok(root.clone());
    }
    let new_children = children
        .into_iter()
        .map(|c| replace_partial(c, input.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    root.clone().replace_children(new_children, RECOMPUTE)
}
