//! Latency histograms attached to a running pipeline: the engine records into them
//! only once attached (the operations endpoint attaches its own; an embedder can attach
//! any `metrics` recorder's), so an unobserved pipeline pays nothing for them.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Where the engine records its latencies, in seconds.
pub struct LatencyHistograms {
    /// Decoding one input message into its sources' rows.
    pub decode: metrics::Histogram,
    /// One query's work on one micro-batch: windowing, closing the windows the
    /// watermark passed, aggregation, scoring and the lifecycle.
    pub window: metrics::Histogram,
}

/// Shared between the handle (which attaches) and the task (which records).
pub(crate) type LatencySlot = Arc<OnceLock<LatencyHistograms>>;

/// A started measurement, or nothing when no histograms are attached.
pub(crate) fn start(slot: &LatencySlot) -> Option<Instant> {
    slot.get().map(|_| Instant::now())
}

/// Records the time since `started` into the histogram `pick` chooses.
pub(crate) fn record(
    slot: &LatencySlot,
    started: Option<Instant>,
    pick: impl FnOnce(&LatencyHistograms) -> &metrics::Histogram,
) {
    if let (Some(t), Some(h)) = (started, slot.get()) {
        pick(h).record(t.elapsed().as_secs_f64());
    }
}
