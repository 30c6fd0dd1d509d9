//! What the operator hands back: closed windows' results, rejected rows, counters.

use datafusion::arrow::record_batch::RecordBatch;
use forewarn_core::Pane;

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

/// The result rows of one closed window, or of several that closed together.
#[derive(Debug, Clone)]
pub struct WindowResult {
    /// The window's bounds; for several windows (or sessions), the span of them all.
    pub window: Pane,
    /// The query's output rows (may be empty after HAVING): for several windows, each
    /// window's rows in turn, oldest window first, in the order a run of its own gives.
    pub batch: RecordBatch,
    /// Several windows (or sessions): each output row's own window.
    pub row_windows: Option<Vec<Pane>>,
    /// How many windows closed in this result (windows left without rows included).
    pub windows: usize,
}

impl WindowResult {
    /// The window of output row `r`.
    pub fn window_of(&self, r: usize) -> Pane {
        self.row_windows.as_ref().map_or(self.window, |w| w[r])
    }

    /// The rows by window: each run of rows of one window as a zero-copy slice, in
    /// order (for tumbling and hopping windows, one slice per window with rows).
    pub fn by_window(&self) -> Vec<(Pane, RecordBatch)> {
        let Some(w) = &self.row_windows else {
            return vec![(self.window, self.batch.clone())];
        };
        crate::runs(w)
            .map(|run| (w[run.start], self.batch.slice(run.start, run.len())))
            .collect()
    }
}

/// What one call to [`WindowOperator::process`](crate::WindowOperator::process) produced.
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
    /// Their positions in the batch given to
    /// [`WindowOperator::process`](crate::WindowOperator::process) (empty for
    /// [`WindowOperator::refuse`](crate::WindowOperator::refuse)d batches, which are
    /// rejected whole).
    pub index: Vec<u32>,
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
    /// Runs of the query's final half (windows closing together share one).
    #[serde(default)]
    pub final_runs: u64,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::*;

    fn values(b: &RecordBatch) -> Vec<i64> {
        b.column(0).as_primitive::<Int64Type>().values().to_vec()
    }

    #[test]
    fn a_result_of_several_windows_splits_into_one_slice_per_window() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5]))],
        )
        .unwrap();
        let (a, b, c) = (
            Pane { start: 0, end: 10 },
            Pane { start: 10, end: 20 },
            Pane { start: 20, end: 30 },
        );
        let res = WindowResult {
            window: Pane { start: 0, end: 30 },
            batch: batch.clone(),
            row_windows: Some(vec![a, a, b, c, c]),
            // The window [10, 20) has one row; a fourth window had none (HAVING).
            windows: 4,
        };
        assert_eq!(
            (res.window_of(0), res.window_of(2), res.window_of(4)),
            (a, b, c)
        );
        let split: Vec<(Pane, Vec<i64>)> = res
            .by_window()
            .iter()
            .map(|(w, b)| (*w, values(b)))
            .collect();
        assert_eq!(split, vec![(a, vec![1, 2]), (b, vec![3]), (c, vec![4, 5])]);
        // One window: the whole batch, whatever the row.
        let one = WindowResult {
            window: a,
            batch,
            row_windows: None,
            windows: 1,
        };
        assert_eq!(one.window_of(3), a);
        assert_eq!(one.by_window().len(), 1);
        assert_eq!(values(&one.by_window()[0].1), vec![1, 2, 3, 4, 5]);
    }
}
