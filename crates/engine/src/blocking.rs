//! A pipeline for code without an async runtime: plain threads push and poll.
//!
//! [`BlockingPipeline`] owns a tokio runtime with one worker thread, on which the
//! pipeline runs; its methods block the calling thread until done (pushing waits while
//! the input channel is full, as [`PipelineHandle::push`] does). It is `Send + Sync`:
//! one thread may push while another polls. Do not call it from inside an async
//! runtime (tokio panics on a nested `block_on`); there, use [`PipelineHandle`].
//!
//! ```no_run
//! use forewarn_engine::blocking::BlockingPipeline;
//! use forewarn_engine::{Output, Pipeline};
//! # fn demo() -> Result<(), forewarn_engine::EngineError> {
//! let pipeline = BlockingPipeline::build(
//!     Pipeline::builder().query_file("queries/plant_health.sql").models_dir("models"),
//! )?;
//! pipeline.push_json("plant/s1/l1/pump-0001/telemetry", br#"{"ts": 0, "vibration": 1.0}"#.to_vec())?;
//! while let Some(out) = pipeline.poll() {
//!     let (topic, payload) = out.to_message(); // publish with your own client
//! #   let _ = (topic, payload);
//! }
//! let stats = pipeline.finish()?; // the last windows' outputs wait in `poll`
//! while let Some(out) = pipeline.poll() {
//! #   let _ = out;
//! }
//! # let _ = stats; Ok(()) }
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::{
    EngineError, EngineStats, Envelope, Output, Pipeline, PipelineBuilder, PipelineHandle,
};

/// A running pipeline driven from plain threads (see the [module docs](self)).
///
/// Read outputs with [`poll`](Self::poll) or [`recv_timeout`](Self::recv_timeout)
/// while pushing: under [`crate::OutputPolicy::Block`] (the default) the pipeline, and
/// then pushing, waits once `channel_capacity` outputs are unread. [`flush`](Self::flush),
/// [`finish`](Self::finish) and [`shutdown`](Self::shutdown) never wait for the caller
/// to read: outputs produced meanwhile are kept for `poll`. Dropping it stops the
/// pipeline as [`shutdown`](Self::shutdown) does, discarding unread outputs.
pub struct BlockingPipeline {
    /// `Some` until dropped.
    rt: Option<tokio::runtime::Runtime>,
    handle: PipelineHandle,
    outputs: Mutex<Outputs>,
}

struct Outputs {
    /// `None` once dropping.
    rx: Option<mpsc::Receiver<Output>>,
    /// Outputs taken from the channel while waiting for a flush or the end.
    pending: VecDeque<Output>,
}

impl BlockingPipeline {
    /// Builds the pipeline (see [`PipelineBuilder::build`]) and starts it on a runtime
    /// thread of its own.
    pub fn build(builder: PipelineBuilder) -> Result<Self, EngineError> {
        let rt = runtime()?;
        let pipeline = rt.block_on(builder.build())?;
        Ok(Self::run(rt, pipeline))
    }

    /// Starts a built pipeline on a runtime thread of its own.
    pub fn start(pipeline: Pipeline) -> Result<Self, EngineError> {
        Ok(Self::run(runtime()?, pipeline))
    }

    fn run(rt: tokio::runtime::Runtime, pipeline: Pipeline) -> Self {
        let (handle, rx) = {
            let _in_runtime = rt.enter();
            pipeline.start()
        };
        BlockingPipeline {
            rt: Some(rt),
            handle,
            outputs: Mutex::new(Outputs {
                rx: Some(rx),
                pending: VecDeque::new(),
            }),
        }
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("present until dropped")
    }

    /// The async handle, for what this facade does not wrap (cheap to clone; use it
    /// from async code only).
    pub fn handle(&self) -> &PipelineHandle {
        &self.handle
    }

    /// [`PipelineHandle::push`]: one message from a connector; blocks while the input
    /// channel is full.
    pub fn push(&self, message: Envelope) -> Result<(), EngineError> {
        self.rt().block_on(self.handle.push(message))
    }

    /// [`PipelineHandle::push_json`]: one JSON message on `topic`.
    pub fn push_json(&self, topic: &str, payload: Vec<u8>) -> Result<(), EngineError> {
        self.rt().block_on(self.handle.push_json(topic, payload))
    }

    /// [`PipelineHandle::try_push`]: never blocks; hands the message back when the input
    /// channel is full.
    pub fn try_push(&self, message: Envelope) -> Result<Option<Envelope>, EngineError> {
        self.handle.try_push(message)
    }

    /// [`PipelineHandle::push_to`]: one JSON message for the source table `source`
    /// (a `connector = 'channel'` source, or any whose columns all come from the payload).
    pub fn push_to(&self, source: &str, payload: Vec<u8>) -> Result<(), EngineError> {
        self.rt().block_on(self.handle.push_to(source, payload))
    }

    /// [`PipelineHandle::try_push_to`]: never blocks; hands the payload back when the
    /// input channel is full.
    pub fn try_push_to(
        &self,
        source: &str,
        payload: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, EngineError> {
        self.handle.try_push_to(source, payload)
    }

    /// [`PipelineHandle::push_batch`]: a batch of readings for `source`.
    pub fn push_batch(&self, source: &str, batch: RecordBatch) -> Result<(), EngineError> {
        self.rt().block_on(self.handle.push_batch(source, batch))
    }

    /// [`PipelineHandle::try_push_batch`]: never blocks; hands the batch back when the
    /// input channel is full.
    pub fn try_push_batch(
        &self,
        source: &str,
        batch: RecordBatch,
    ) -> Result<Option<RecordBatch>, EngineError> {
        self.handle.try_push_batch(source, batch)
    }

    /// [`PipelineHandle::push_records`]: the caller's structs as readings of `source`.
    pub fn push_records<T: Serialize>(
        &self,
        source: &str,
        records: &[T],
    ) -> Result<(), EngineError> {
        self.rt()
            .block_on(self.handle.push_records(source, records))
    }

    /// [`PipelineHandle::command`]: an operator command for `device`.
    pub fn command(&self, device: &str, payload: Vec<u8>) -> Result<(), EngineError> {
        self.rt().block_on(self.handle.command(device, payload))
    }

    /// [`PipelineHandle::confirm_outputs`].
    pub fn confirm_outputs(&self, n: u64) {
        self.handle.confirm_outputs(n)
    }

    /// An output if one is ready, without waiting; `None` also once the pipeline has
    /// ended and every output was taken.
    pub fn poll(&self) -> Option<Output> {
        let mut out = self.outputs.lock().expect("outputs lock");
        if let Some(o) = out.pending.pop_front() {
            return Some(o);
        }
        out.rx.as_mut()?.try_recv().ok()
    }

    /// The next output, waiting at most `timeout`; `None` if none came in time or the
    /// pipeline has ended and every output was taken.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Output> {
        let mut out = self.outputs.lock().expect("outputs lock");
        if let Some(o) = out.pending.pop_front() {
            return Some(o);
        }
        let rx = out.rx.as_mut()?;
        // The timer is made inside the runtime: it needs its time driver.
        self.rt()
            .block_on(async { tokio::time::timeout(timeout, rx.recv()).await })
            .ok()
            .flatten()
    }

    /// [`PipelineHandle::flush`]: closes the pending micro-batches and waits until they
    /// are processed.
    pub fn flush(&self) -> Result<(), EngineError> {
        self.wait(self.handle.flush())
    }

    /// [`PipelineHandle::finish`]: closes every window and stops; the outputs stay
    /// available to [`poll`](Self::poll).
    pub fn finish(&self) -> Result<EngineStats, EngineError> {
        self.wait(self.handle.finish())
    }

    /// [`PipelineHandle::shutdown`]: stops without closing the windows (with
    /// checkpoints, the next start continues them).
    pub fn shutdown(&self) -> Result<EngineStats, EngineError> {
        self.wait(self.handle.shutdown())
    }

    /// [`PipelineHandle::stats`]: counters and gauges.
    pub fn stats(&self) -> EngineStats {
        self.handle.stats()
    }

    /// Runs `f` to its end, keeping the outputs produced meanwhile for `poll`, so that
    /// the pipeline never waits for a caller who is itself waiting here.
    fn wait<T>(&self, f: impl Future<Output = T>) -> T {
        let mut guard = self.outputs.lock().expect("outputs lock");
        let Outputs { rx, pending } = &mut *guard;
        self.rt().block_on(async {
            tokio::pin!(f);
            let mut open = rx.is_some();
            loop {
                tokio::select! {
                    r = &mut f => return r,
                    o = async { rx.as_mut().expect("open").recv().await }, if open => match o {
                        Some(o) => pending.push_back(o),
                        None => open = false,
                    },
                }
            }
        })
    }
}

impl Drop for BlockingPipeline {
    fn drop(&mut self) {
        // Without a receiver the pipeline never waits for room, so stopping cannot hang.
        if let Ok(mut out) = self.outputs.lock() {
            out.rx = None;
        }
        if let Some(rt) = self.rt.take() {
            // Already stopped (finished) is fine.
            let _ = rt.block_on(self.handle.shutdown());
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, EngineError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("forewarn-engine")
        .enable_all()
        .build()
        .map_err(|e| EngineError::Config(format!("cannot start the engine's runtime: {e}")))
}
