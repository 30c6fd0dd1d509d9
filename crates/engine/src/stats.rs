//! The counters and gauges a pipeline reports ([`crate::PipelineHandle::stats`]).

use std::collections::BTreeMap;

use serde::Serialize;

/// Counters since start; nothing that comes in disappears without being counted.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct EngineStats {
    /// Messages pushed.
    pub messages_in: u64,
    /// Readings decoded and accepted.
    pub readings_in: u64,
    /// Of `readings_in`, the history rows taken straight from their file's columns
    /// (replayed CSV and Parquet rows that need no per-row decoding; see
    /// `forewarn_formats::Table`).
    pub readings_from_columns: u64,
    /// Rejections by reason code (decode errors, late rows, unknown topics, ...).
    pub rejected: BTreeMap<String, u64>,
    /// Micro-batches processed.
    pub batches: u64,
    /// Windows closed, over all queries: one per query and window (time span), however
    /// many devices' rows it had.
    pub windows_closed: u64,
    /// The same by query.
    pub windows_closed_by_query: BTreeMap<String, u64>,
    /// Result rows the queries produced (one per device and window, after `HAVING`):
    /// published as alerts or window rows, or fed to a lifecycle that turns them into
    /// transitions.
    pub results: u64,
    /// Alerts produced: result rows of anomaly queries (they select a `score` or call
    /// a model) whose sinks have no lifecycle (and, with `window_rows`, the scored
    /// window rows of rules with one).
    pub alerts_out: u64,
    /// Lifecycle transitions produced (raised, escalated, cleared).
    pub transitions_out: u64,
    /// Transitions not published because the device was silenced by an operator.
    pub transitions_silenced: u64,
    /// Operator commands applied.
    pub commands: u64,
    /// Device-state messages produced.
    pub states_out: u64,
    /// Dead letters produced.
    pub dead_letters_out: u64,
    /// Times a query failed on a batch (logged; the pipeline and other queries go on).
    pub query_errors: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Checkpoints that could not be written (logged; input stays unacknowledged and
    /// the next checkpoint tries again).
    pub checkpoint_failures: u64,
    /// Size of the last checkpoint file, bytes.
    pub checkpoint_bytes: u64,
    /// Input messages acknowledged to their source.
    pub inputs_acked: u64,
    /// Sequence number of the checkpoint the pipeline started from.
    pub restored_from: Option<u64>,
    /// Outputs emitted again after a restart because the checkpoint held them
    /// unconfirmed.
    pub outputs_replayed: u64,
    /// Plain window rows produced: result rows of the other queries whose sinks have
    /// no lifecycle ([`Output::Row`](crate::Output::Row)).
    pub rows_out: u64,
    /// Gauge: window state now, bytes (what [`EngineConfig::max_state_bytes`](crate::EngineConfig::max_state_bytes) limits):
    /// the open aggregates and the panes kept for later windows, measured after each
    /// micro-batch.
    pub state_bytes: u64,
    /// The limit in force ([`EngineConfig::max_state_bytes`](crate::EngineConfig::max_state_bytes)), beside `state_bytes`.
    pub max_state_bytes: u64,
    /// Gauge: windows open now over all queries (panes, and sessions of session
    /// windows; [`EngineConfig::max_open_windows`](crate::EngineConfig::max_open_windows) limits each query's panes).
    pub open_windows: u64,
    /// Gauge: input messages and batches pushed and not yet taken by the pipeline (at
    /// most [`EngineConfig::channel_capacity`](crate::EngineConfig::channel_capacity); pushing waits when it is reached).
    pub input_queue: u64,
    /// Gauge: outputs produced and not yet received by the caller (at most
    /// [`EngineConfig::channel_capacity`](crate::EngineConfig::channel_capacity)).
    pub output_queue: u64,
    /// Gauges per source table: watermark, newest event time, lag, admitted devices.
    pub sources: BTreeMap<String, SourceGauges>,
    /// Outputs dropped unread under [`OutputPolicy::DropOldest`](crate::OutputPolicy::DropOldest).
    pub outputs_dropped: u64,
    /// Model files reloaded after they changed on disk.
    pub model_reloads: u64,
    /// Changed model files refused (unreadable, or changing a model's arguments); the
    /// old model stayed.
    pub model_reloads_refused: u64,
}

/// Gauges of one source, as of the last micro-batch (or idle tick) it had.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct SourceGauges {
    /// Its watermark, epoch ms (the lowest over the queries reading it: windows ending
    /// at or before it have closed); `None` before the first reading. With per-device
    /// watermarks (`watermark_key`) it is the slowest device's.
    pub watermark: Option<i64>,
    /// The newest event time it has seen, epoch ms.
    pub newest_event: Option<i64>,
    /// `newest_event - watermark`, ms, never below 0: how far results trail the newest
    /// input in event time. That is the declared watermark delay, plus any wait for an
    /// idle source, plus, with per-device watermarks, how far the slowest device is
    /// behind the newest. 0 once the watermark has passed the newest event (after
    /// `finish`, or an idle source's advance). A wall-clock lag, for live input, is
    /// `now - watermark`.
    pub lag_ms: Option<i64>,
    /// Distinct devices admitted (what [`EngineConfig::max_devices`](crate::EngineConfig::max_devices) limits).
    pub devices: u64,
}

impl EngineStats {
    /// Readings refused after decoding or by the windows, all reasons.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// The counters as one line, the same wherever they are reported (the periodic log,
    /// `replay`, `train`, the demo): e.g. `messages 1440, readings 1440, rejected 3
    /// (late 2, not_json 1), windows 120, results 120, rows 0, alerts 0, transitions 2,
    /// states 3, dead letters 3`.
    pub fn summary(&self) -> String {
        let rejected = if self.rejected.is_empty() {
            "rejected 0".to_string()
        } else {
            let by: Vec<String> = self
                .rejected
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            format!("rejected {} ({})", self.rejected_total(), by.join(", "))
        };
        format!(
            "messages {}, readings {}, {rejected}, windows {}, results {}, rows {}, alerts {}, transitions {}, states {}, dead letters {}",
            self.messages_in,
            self.readings_in,
            self.windows_closed,
            self.results,
            self.rows_out,
            self.alerts_out,
            self.transitions_out,
            self.states_out,
            self.dead_letters_out
        )
    }
}
