//! The Prometheus exposition of a pipeline's counters: a recorder owned by the
//! listener (never the process-wide one, which an embedder may have installed), its
//! counters and gauges set from an [`EngineStats`] snapshot at each scrape.

use forewarn_engine::{EngineStats, LatencyHistograms};
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
    with_local_recorder, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::ExtraCounter;

/// Counters: name, help, value. Each is a cumulative count since the pipeline started,
/// set as is (`absolute`), so the scrape shows exactly what `stats()` says.
fn counters(s: &EngineStats) -> [(&'static str, &'static str, u64); 19] {
    [
        (
            "forewarn_messages_total",
            "Input messages pushed into the pipeline.",
            s.messages_in,
        ),
        (
            "forewarn_readings_total",
            "Readings decoded and accepted.",
            s.readings_in,
        ),
        (
            "forewarn_batches_total",
            "Micro-batches processed.",
            s.batches,
        ),
        (
            "forewarn_results_total",
            "Result rows the queries produced.",
            s.results,
        ),
        (
            "forewarn_rows_total",
            "Plain window rows produced.",
            s.rows_out,
        ),
        ("forewarn_alerts_total", "Alerts produced.", s.alerts_out),
        (
            "forewarn_transitions_total",
            "Lifecycle transitions produced (raised, escalated, cleared).",
            s.transitions_out,
        ),
        (
            "forewarn_transitions_silenced_total",
            "Transitions not published because the device was silenced.",
            s.transitions_silenced,
        ),
        (
            "forewarn_commands_total",
            "Operator commands applied.",
            s.commands,
        ),
        (
            "forewarn_states_total",
            "Device-state messages produced.",
            s.states_out,
        ),
        (
            "forewarn_dead_letters_total",
            "Dead letters produced.",
            s.dead_letters_out,
        ),
        (
            "forewarn_query_errors_total",
            "Times a query failed on a batch.",
            s.query_errors,
        ),
        (
            "forewarn_checkpoints_total",
            "Checkpoints written.",
            s.checkpoints,
        ),
        (
            "forewarn_checkpoint_failures_total",
            "Checkpoints that could not be written.",
            s.checkpoint_failures,
        ),
        (
            "forewarn_inputs_acked_total",
            "Input messages acknowledged to their source.",
            s.inputs_acked,
        ),
        (
            "forewarn_outputs_replayed_total",
            "Outputs emitted again after a restart from a checkpoint.",
            s.outputs_replayed,
        ),
        (
            "forewarn_outputs_dropped_total",
            "Outputs dropped unread under the drop_oldest output policy.",
            s.outputs_dropped,
        ),
        (
            "forewarn_model_reloads_total",
            "Model files reloaded after they changed on disk.",
            s.model_reloads,
        ),
        (
            "forewarn_model_reloads_refused_total",
            "Changed model files refused (unreadable or changing a model's arguments); the old model stayed.",
            s.model_reloads_refused,
        ),
    ]
}

/// Bucket bounds of the latency histograms, seconds: 10 µs (decoding one message) to
/// 10 s (a query's batch under load).
const LATENCY_BUCKETS: [f64; 13] = [
    1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
];

/// Gauges without labels: name, help, unit, value.
fn gauges(s: &EngineStats) -> [(&'static str, &'static str, Unit, f64); 6] {
    [
        (
            "forewarn_state_bytes",
            "Window state held now.",
            Unit::Bytes,
            s.state_bytes as f64,
        ),
        (
            "forewarn_state_max_bytes",
            "The window-state limit in force (max_state_bytes).",
            Unit::Bytes,
            s.max_state_bytes as f64,
        ),
        (
            "forewarn_open_windows",
            "Windows (panes and sessions) open now, over all queries.",
            Unit::Count,
            s.open_windows as f64,
        ),
        (
            "forewarn_input_queue_messages",
            "Input messages and batches pushed and not yet taken by the pipeline.",
            Unit::Count,
            s.input_queue as f64,
        ),
        (
            "forewarn_output_queue_messages",
            "Outputs produced and not yet received by the service.",
            Unit::Count,
            s.output_queue as f64,
        ),
        (
            "forewarn_checkpoint_last_bytes",
            "Size of the last checkpoint written.",
            Unit::Bytes,
            s.checkpoint_bytes as f64,
        ),
    ]
}

/// The listener's own recorder and the handle that renders it.
pub(crate) struct Exporter {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Exporter {
    /// A recorder with every metric described (`# HELP` lines).
    pub(crate) fn new(extras: &[ExtraCounter]) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS)
            .expect("bucket bounds are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let zero = EngineStats::default();
        with_local_recorder(&recorder, || {
            describe_counter!(
                "forewarn_rejected_total",
                "Readings refused, by reason code."
            );
            describe_counter!("forewarn_windows_closed_total", "Windows closed, by query.");
            for (name, help, _) in counters(&zero) {
                describe_counter!(name, help);
            }
            for (name, help, unit, _) in gauges(&zero) {
                describe_gauge!(name, unit, help);
            }
            describe_gauge!("forewarn_devices", "Distinct devices admitted, by source.");
            describe_gauge!(
                "forewarn_watermark_lag_seconds",
                Unit::Seconds,
                "How far a source's watermark trails its newest event time."
            );
            describe_gauge!(
                "forewarn_broker_connected",
                "1 while the broker connections are up, 0 otherwise."
            );
            describe_gauge!(
                "forewarn_checkpoint_age_seconds",
                Unit::Seconds,
                "Time since the last checkpoint was written (or since the listener started)."
            );
            for e in extras {
                describe_counter!(e.name, e.help);
            }
            describe_histogram!(
                "forewarn_decode_seconds",
                Unit::Seconds,
                "Time to decode one input message into its sources' rows."
            );
            describe_histogram!(
                "forewarn_window_seconds",
                Unit::Seconds,
                "Time one query takes over one micro-batch: windowing, closing the windows the watermark passed, aggregation, scoring and the lifecycle."
            );
        });
        Exporter { recorder, handle }
    }

    /// Histograms in this recorder for the engine to record its latencies in.
    pub(crate) fn latency(&self) -> LatencyHistograms {
        with_local_recorder(&self.recorder, || LatencyHistograms {
            decode: histogram!("forewarn_decode_seconds"),
            window: histogram!("forewarn_window_seconds"),
        })
    }

    /// Sets every metric from `s` and the probes, and renders the text exposition.
    pub(crate) fn render(
        &self,
        s: &EngineStats,
        extras: &[ExtraCounter],
        broker: Option<bool>,
        checkpoint_age: Option<f64>,
    ) -> String {
        with_local_recorder(&self.recorder, || {
            for (name, _, v) in counters(s) {
                counter!(name).absolute(v);
            }
            for (query, n) in &s.windows_closed_by_query {
                counter!("forewarn_windows_closed_total", "query" => query.clone()).absolute(*n);
            }
            for (reason, n) in &s.rejected {
                counter!("forewarn_rejected_total", "reason" => reason.clone()).absolute(*n);
            }
            for (name, _, _, v) in gauges(s) {
                gauge!(name).set(v);
            }
            for (source, g) in &s.sources {
                gauge!("forewarn_devices", "source" => source.clone()).set(g.devices as f64);
                if let Some(lag) = g.lag_ms {
                    gauge!("forewarn_watermark_lag_seconds", "source" => source.clone())
                        .set(lag as f64 / 1000.0);
                }
            }
            if let Some(up) = broker {
                gauge!("forewarn_broker_connected").set(if up { 1.0 } else { 0.0 });
            }
            if let Some(age) = checkpoint_age {
                gauge!("forewarn_checkpoint_age_seconds").set(age);
            }
            for e in extras {
                counter!(e.name).absolute((e.read)());
            }
        });
        self.handle.render()
    }
}
