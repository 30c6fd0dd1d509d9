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
//!
//! The crate's parts:
//! - `operator`: the [`WindowOperator`], which admits rows and ties the rest together;
//! - `admission`: the `max_future` check and the filing of rejected rows;
//! - `panes`: which panes are open, sealed or closed, and which windows are due;
//! - `collected`: the rows of panes too small so far for an aggregate of their own;
//! - `session`: session windows' per-key state machine;
//! - `snapshot`: what a checkpoint holds, sealing and restoring panes;
//! - `exec`: DataFusion plumbing, the partial half per pane and the final half;
//! - `output`: what the operator hands back (results, rejections, counters).
//!
//! [`CompiledQuery`]: forewarn_sql::CompiledQuery

mod admission;
mod collected;
mod error;
mod exec;
mod operator;
mod output;
mod panes;
mod session;
mod snapshot;
#[cfg(test)]
mod testing;

pub use error::StreamError;
pub use operator::WindowOperator;
pub use output::{OperatorStats, Processed, Rejection, RowRejection, WindowResult};
pub use snapshot::{OperatorMeta, OperatorState, PaneState, SessionsState};

use forewarn_sql::{WINDOW_END, WINDOW_START};

/// Column names the runtime adds to every pane batch.
pub const WINDOW_COLUMNS: [&str; 2] = [WINDOW_START, WINDOW_END];

/// The runs of equal consecutive values in `v`, as index ranges in order (how pane state
/// and fired windows, already grouped, are cut into zero-copy slices).
pub(crate) fn runs<T: PartialEq>(v: &[T]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut from = 0;
    std::iter::from_fn(move || {
        let first = v.get(from)?;
        let to = from + v[from..].iter().take_while(|x| *x == first).count();
        let run = from..to;
        from = to;
        Some(run)
    })
}
