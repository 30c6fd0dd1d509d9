//! Checkpoints: what is saved of an operator and how its panes are sealed into it and
//! restored from it. Saving seals every open pane: its aggregate is drained into state
//! rows, and rows arriving afterwards start a fresh aggregate for the pane; the two add
//! up when it closes.

use std::collections::BTreeMap;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::Result as DfResult;
use forewarn_core::{Millis, Watermark};
use forewarn_sql::CompiledQuery;

use crate::error::StreamError;
use crate::output::OperatorStats;
use crate::panes::Panes;
use crate::session::Sessions;

/// The serialisable part of an operator's state (everything but the aggregate rows).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OperatorMeta {
    pub(crate) watermark: Watermark,
    pub(crate) closed_until: Option<Millis>,
    pub(crate) stats: OperatorStats,
    pub(crate) sessions: Option<SessionsState>,
}

/// Open sessions (opaque outside this crate).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionsState(pub(crate) Sessions);

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

/// An operator's state at a checkpoint (see
/// [`WindowOperator::snapshot`](crate::WindowOperator::snapshot)).
#[derive(Debug, Clone)]
pub struct OperatorState {
    /// Watermark, sessions, counters.
    pub meta: OperatorMeta,
    /// Partial aggregate state by pane.
    pub panes: Vec<PaneState>,
}

impl Panes {
    /// Seals every open pane: drains its aggregate, and aggregates its collected rows,
    /// into its sealed state.
    pub(crate) async fn seal(&mut self) -> DfResult<()> {
        let open = std::mem::take(&mut self.open);
        for (start, pane) in open {
            let state = pane.drain().await?;
            if !state.is_empty() {
                self.sealed.entry(start).or_default().extend(state);
            }
        }
        for (start, state) in self.aggregate_collected().await? {
            self.sealed.entry(start).or_default().extend(state);
        }
        Ok(())
    }

    /// The state of sealed and closed panes, one batch of `schema` (the partial
    /// schema) each. Call after [`seal`](Self::seal).
    pub(crate) fn states(&self, schema: &SchemaRef) -> DfResult<Vec<PaneState>> {
        let concat =
            |m: &BTreeMap<Millis, Vec<RecordBatch>>, open: bool| {
                m.iter()
                    .map(|(&start, b)| {
                        datafusion::arrow::compute::concat_batches(schema, b)
                            .map(|batch| PaneState { start, open, batch })
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
        let mut panes = concat(&self.sealed, true)?;
        panes.extend(concat(&self.closed, false)?);
        Ok(panes)
    }

    /// Replaces every pane with those of a checkpoint.
    pub(crate) fn restore(&mut self, panes: Vec<PaneState>) {
        self.clear_collected();
        self.open.clear();
        self.sealed.clear();
        self.closed.clear();
        for p in panes {
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
    }
}

/// Whether `state` fits `q`: its panes have the partial aggregate's columns, and it
/// has sessions exactly when the query has session windows.
pub(crate) fn check_fits(q: &CompiledQuery, state: &OperatorState) -> Result<(), StreamError> {
    let schema = q.partial.schema();
    for p in &state.panes {
        if p.batch.schema().fields() != schema.fields() {
            return Err(StreamError::Schema {
                query: q.name.clone(),
                reason: format!(
                    "checkpointed state for pane {} has columns [{}], the query's partial aggregate has [{}]",
                    forewarn_core::format_rfc3339(p.start),
                    field_list(&p.batch.schema()),
                    field_list(&schema)
                ),
            });
        }
    }
    if state.meta.sessions.is_some() != q.window.is_session() {
        return Err(StreamError::Schema {
            query: q.name.clone(),
            reason: "checkpointed state and query disagree on session windows".into(),
        });
    }
    Ok(())
}

fn field_list(s: &SchemaRef) -> String {
    s.fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::testing::{fixture, output, row, Fixture, Row};

    const S: Millis = 1000;

    /// How a run goes at the checkpoint after the first batch.
    #[derive(Clone, Copy, Debug)]
    enum Run {
        /// No checkpoint.
        Plain,
        /// A snapshot is taken (sealing the open panes) and the operator goes on.
        Sealed,
        /// A new operator continues from the snapshot.
        Restored,
    }

    /// Every output row of `first` then `second` and the end of input.
    async fn run(
        f: &Fixture,
        first: &[(&str, Millis, f64)],
        second: &[(&str, Millis, f64)],
        how: Run,
    ) -> Vec<Row> {
        let mut op = f.operator();
        let mut results = op.process(&f.rows(first)).await.unwrap().results;
        match how {
            Run::Plain => {}
            Run::Sealed => {
                op.snapshot().await.unwrap();
            }
            Run::Restored => {
                let state = op.snapshot().await.unwrap();
                op = f.operator();
                op.restore(state).unwrap();
            }
        }
        results.extend(op.process(&f.rows(second)).await.unwrap().results);
        results.extend(op.finish().await.unwrap().results);
        output(&results)
    }

    async fn check(
        window: &str,
        first: &[(&str, Millis, f64)],
        second: &[(&str, Millis, f64)],
        expected: Vec<Row>,
    ) {
        let f = fixture(window, "", "").await;
        for how in [Run::Plain, Run::Sealed, Run::Restored] {
            assert_eq!(
                run(&f, first, second, how).await,
                expected,
                "{window}, {how:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_sealed_or_restored_tumbling_pane_adds_up_to_the_unsealed_one() {
        check(
            "tumble(interval '10 seconds')",
            &[("a", S, 1.0), ("b", 2 * S, 2.0)],
            &[("a", 3 * S, 4.0), ("a", 12 * S, 8.0)],
            vec![
                row(0, 10 * S, "a", 2, 5.0),
                row(0, 10 * S, "b", 1, 2.0),
                row(10 * S, 20 * S, "a", 1, 8.0),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn hop_windows_continue_over_panes_closed_before_the_checkpoint() {
        // After the first batch (watermark 6 s) pane 0..5 s is closed but kept for the
        // window 0..10 s; pane 5..10 s is open.
        check(
            "hop(interval '5 seconds', interval '10 seconds')",
            &[("a", S, 1.0), ("a", 8 * S, 2.0)],
            &[("a", 9 * S, 4.0), ("a", 14 * S, 8.0)],
            vec![
                row(-5 * S, 5 * S, "a", 1, 1.0),
                row(0, 10 * S, "a", 3, 7.0),
                row(5 * S, 15 * S, "a", 3, 14.0),
                row(10 * S, 20 * S, "a", 1, 8.0),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn sessions_continue_across_a_checkpoint() {
        check(
            "session(interval '10 seconds')",
            &[("a", 0, 1.0), ("a", 5 * S, 2.0)],
            &[("a", 9 * S, 4.0), ("b", 30 * S, 8.0)],
            vec![
                row(0, 19 * S, "a", 3, 7.0),
                row(30 * S, 40 * S, "b", 1, 8.0),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn a_snapshot_holds_open_and_kept_panes_and_the_counters() {
        let f = fixture("hop(interval '5 seconds', interval '10 seconds')", "", "").await;
        let mut op = f.operator();
        op.process(&f.rows(&[("a", S, 1.0), ("b", 2 * S, 1.0), ("a", 8 * S, 2.0)]))
            .await
            .unwrap();
        let state = op.snapshot().await.unwrap();
        let panes: Vec<_> = state
            .panes
            .iter()
            .map(|p| (p.start, p.open, p.batch.num_rows()))
            .collect();
        // Open pane 5 s (one group), then closed pane 0 s (two groups).
        assert_eq!(panes, vec![(5 * S, true, 1), (0, false, 2)]);
        assert_eq!(state.meta.stats.rows_in, 3);
        assert_eq!(state.meta.closed_until, Some(6 * S));
        assert!(state.meta.sessions.is_none());
        // Sealed: the pane is still open, its state held outside the aggregate.
        assert_eq!(op.open_panes(), 1);
        assert_eq!(op.retained_panes(), 1);
        assert!(op.held_state_bytes() > 0);
    }

    #[tokio::test]
    async fn restore_refuses_state_of_another_query_and_changes_nothing() {
        let tumble = fixture("tumble(interval '10 seconds')", "", "").await;
        let session = fixture("session(interval '10 seconds')", "", "").await;
        let mut op = tumble.operator();
        op.process(&tumble.rows(&[("a", S, 1.0)])).await.unwrap();
        let state = op.snapshot().await.unwrap();

        let mut other = session.operator();
        let e = other.restore(state.clone()).unwrap_err();
        assert!(e.to_string().contains("disagree on session windows"), "{e}");

        let mut bad = state.clone();
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        bad.panes[0].batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))]).unwrap();
        let mut fresh = tumble.operator();
        let e = fresh.restore(bad).unwrap_err();
        assert!(e.to_string().contains("has columns [x Int64]"), "{e}");
        assert_eq!((fresh.open_panes(), fresh.watermark()), (0, None));

        fresh.restore(state).unwrap();
        assert_eq!((fresh.open_panes(), fresh.watermark()), (1, Some(-S)));
    }

    #[test]
    fn restored_panes_go_back_where_they_were() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch = |n: usize| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1; n]))])
                .unwrap()
        };
        let pane = |start, open, n| PaneState {
            start,
            open,
            batch: batch(n),
        };
        let mut p = Panes::default();
        p.closed.insert(99, vec![batch(1)]);
        p.restore(vec![
            pane(0, false, 2),
            pane(10, false, 0),
            pane(20, true, 1),
            pane(30, true, 0),
        ]);
        let keys = |m: &BTreeMap<Millis, Vec<RecordBatch>>| m.keys().copied().collect::<Vec<_>>();
        assert_eq!(keys(&p.closed), vec![0], "empty closed panes are dropped");
        // An open pane without groups is kept: it still has to close.
        assert_eq!(keys(&p.sealed), vec![20, 30]);
        assert!(p.sealed[&30].is_empty());
        assert_eq!(p.open_count(), 2);
        assert_eq!(
            p.states(&schema)
                .unwrap()
                .iter()
                .map(|s| (s.start, s.open, s.batch.num_rows()))
                .collect::<Vec<_>>(),
            vec![(20, true, 1), (30, true, 0), (0, false, 2)]
        );
    }
}
