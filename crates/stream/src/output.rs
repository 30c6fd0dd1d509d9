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
