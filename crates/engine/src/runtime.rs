//! The pipeline task: takes input, micro-batches it, runs the window operators and
//! sends what they produce, on timers for batches, idle sources and checkpoints.
//!
//! The decisions are made elsewhere, without IO: what input is admitted
//! ([`crate::admission`]), the devices' health and operator commands
//! ([`crate::health`]), which outputs a closed window or a refusal becomes
//! ([`crate::outputs`]), and when input may be acknowledged ([`crate::checkpointing`]).
//! The state kept per source is in [`crate::sources`]. Taking input and running the
//! operators over it is in `runtime/ingest.rs`, restoring and writing checkpoints in
//! `runtime/persist.rs`.

mod body;
mod ingest;
mod persist;
mod table;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use datafusion::arrow::record_batch::RecordBatch;
use forewarn_formats::filter_matches;
use forewarn_stream::{Processed, WindowResult};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::admission::{self, RecentMessages};
use crate::checkpoint::{self, QueryState, Snapshot};
use crate::checkpointing::Checkpointing;
use crate::delivery::{DropLog, Outlet};
use crate::health::HealthBook;
use crate::outputs::{self, Origin, Refusal};
use crate::rows::row_to_json;
use crate::sources::{self, Source};
use crate::{
    Ack, Delivery, EngineConfig, EngineError, EngineStats, Envelope, Input, Output, Pipeline,
};

fn wall_ms() -> i64 {
    forewarn_core::duration_ms(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// Appends the arrival-time column to a batch that lacks it.
fn stamp_arrival(src: &Source, batch: RecordBatch) -> RecordBatch {
    let schema = src.decoder.schema();
    if batch.num_columns() + 1 != schema.fields().len() {
        return batch;
    }
    let now = wall_ms();
    let mut cols = batch.columns().to_vec();
    let arrival = schema.field(schema.fields().len() - 1).clone();
    cols.push(std::sync::Arc::new(
        datafusion::arrow::array::TimestampMillisecondArray::from_value(now, batch.num_rows())
            .with_timezone_opt(match arrival.data_type() {
                datafusion::arrow::datatypes::DataType::Timestamp(_, tz) => tz.clone(),
                _ => None,
            }),
    ));
    // The batch's own fields (nullable: its bad rows are dead-lettered later), then
    // the arrival column.
    let mut fields: Vec<_> = batch.schema().fields().iter().cloned().collect();
    fields.push(std::sync::Arc::new(arrival));
    let schema = std::sync::Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
    RecordBatch::try_new(schema, cols).unwrap_or(batch)
}

pub(crate) struct Runtime {
    config: EngineConfig,
    sources: Vec<Source>,
    out: Outlet,
    /// Rate-limits the warning about dropped outputs.
    drop_log: DropLog,
    stats: Arc<Mutex<EngineStats>>,
    /// Health of every device seen by a rule with a lifecycle, and silences.
    health: HealthBook,
    ckpt: Option<Checkpointing>,
    /// The checkpoint to continue from, applied when the task starts.
    restored: Option<Snapshot>,
    /// Input messages taken since start (and before, when restored).
    inputs: u64,
    /// Position of the last input message in its stream (see [`crate::ResumePoint`]).
    position: Option<u64>,
    /// `{prefix}/command/`: messages on it are operator commands for a device.
    command_prefix: String,
    /// When the last input message arrived.
    last_input: Instant,
    /// Hashes of the latest messages, for [`Self::is_duplicate`].
    recent: RecentMessages,
    /// Window state after the last batch, bytes (for `max_state_bytes`).
    state_bytes: usize,
    /// The latency histograms, once attached.
    latency: crate::latency::LatencySlot,
    /// Connectors' own state saved with each checkpoint, by source; restored states no
    /// connector saves are carried over.
    connector_states: BTreeMap<String, crate::ConnectorState>,
    carried_connector_states: BTreeMap<String, serde_json::Value>,
    /// When the micro-batch was last closed for want of input (see [`Self::on_idle`]).
    idle_flushed: Instant,
    /// When a lingering micro-batch closes, if one lingers (see [`Self::on_idle`]).
    linger: Option<Instant>,
}

/// Idle closes this close together mean input arrives back to back, one message at a
/// time (at QoS 1 a broker hands out a few unacknowledged messages at once): the next
/// idle close lingers instead.
const BACK_TO_BACK: std::time::Duration = std::time::Duration::from_micros(200);

/// How long a micro-batch lingers for the messages that follow, at most (the timer's
/// resolution is a millisecond, so up to about two).
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// Rows a thread turns into outputs at a time when a large window result is split
/// between two (see [`Runtime::emit_in_pieces`]): a millisecond or so of work, so that
/// starting the thread is a small part of it, and few enough outputs at once that the
/// output channel's back-pressure still bounds how many exist.
const PIECE: usize = 1024;

impl Runtime {
    pub(crate) fn new(
        p: Pipeline,
        out: Outlet,
        stats: Arc<Mutex<EngineStats>>,
        confirmed: Arc<AtomicU64>,
        latency: crate::latency::LatencySlot,
    ) -> Self {
        let sources = sources::sources_of(&p);
        let ckpt = p.config.checkpoint.clone().map(|cfg| {
            let seq = p.restored.as_ref().map_or(1, |s| s.seq + 1);
            Checkpointing::new(cfg, seq, confirmed)
        });
        Runtime {
            recent: RecentMessages::new(p.config.duplicate_window),
            command_prefix: format!("{}/command/", p.config.topic_prefix),
            config: p.config,
            sources,
            out,
            drop_log: DropLog::default(),
            stats,
            health: HealthBook::default(),
            ckpt,
            inputs: p.restored.as_ref().map_or(0, |s| s.inputs),
            position: p.restored.as_ref().and_then(|s| s.resume.position),
            carried_connector_states: p
                .restored
                .as_ref()
                .map(|s| {
                    s.connectors
                        .iter()
                        .filter(|(k, _)| !p.connector_states.contains_key(*k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            connector_states: p.connector_states,
            restored: p.restored,
            last_input: Instant::now(),
            state_bytes: 0,
            latency,
            idle_flushed: Instant::now(),
            linger: None,
        }
    }

    /// After an input, when no other input waits (`idle`): closes the micro-batch, so
    /// that a reading that completes a window is processed at once. But when the last
    /// such close was under [`BACK_TO_BACK`] ago, input is arriving one message at a
    /// time as fast as the engine takes it, and closing a batch per message costs the
    /// fixed part of a batch for each one (at QoS 1 through mosquitto the engine took
    /// about 45,000 readings/s that way, against about 53,000 with batches held 5 ms):
    /// the batch then lingers up to [`LINGER`] for the messages that follow, and the
    /// run loop's timer closes it.
    pub(super) async fn on_idle(&mut self, idle: bool) -> Result<(), EngineError> {
        if !(self.config.flush_when_idle && idle) || self.linger.is_some() {
            return Ok(());
        }
        let now = Instant::now();
        if now.duration_since(self.idle_flushed) < BACK_TO_BACK {
            self.linger = Some(now + LINGER);
            return Ok(());
        }
        self.idle_flushed = now;
        self.flush_all().await
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Input>) -> Result<(), EngineError> {
        let mut tick = tokio::time::interval(
            self.config
                .max_batch_delay
                .max(std::time::Duration::from_millis(1))
                / 2,
        );
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // One timer for lingering batches, set again for each (see `on_idle`).
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        let mut armed = None;
        self.restore().await?;
        self.measure_state();
        loop {
            let backlogged = self.backlogged();
            if self.linger != armed {
                if let Some(at) = self.linger {
                    linger.as_mut().reset(at);
                }
                armed = self.linger;
            }
            tokio::select! {
                () = &mut linger, if armed.is_some() => {
                    self.linger = None;
                    self.idle_flushed = Instant::now();
                    self.flush_all().await?;
                }
                msg = rx.recv(), if !backlogged => match msg {
                    Some(Input::Message(m)) => self.on_message(m, None, rx.is_empty()).await?,
                    Some(Input::ToSource { source, message }) => {
                        self.on_message(message, Some(source), rx.is_empty()).await?
                    }
                    Some(Input::Rows { to, rows }) => {
                        self.on_rows(rows.into(), to, rx.is_empty()).await?
                    }
                    Some(Input::Batch { source, batch }) => {
                        self.on_batch(&source, batch).await?;
                        self.taken(None, None).await?;
                    }
                    Some(Input::Refused { source, letter }) => {
                        let to = self.sources[source].name.clone();
                        self.emit(outputs::refused_by_connector(&self.config, &to, letter)).await;
                        self.taken(None, None).await?;
                    }
                    Some(Input::Presence { device, online }) => {
                        self.on_presence(&device, online).await;
                        self.taken(None, None).await?;
                    }
                    Some(Input::Command { device, payload }) => {
                        self.on_command(&device, &payload).await;
                        self.taken(None, None).await?;
                    }
                    Some(Input::Flush(done)) => {
                        self.flush_all().await?;
                        let _ = done.send(());
                    }
                    // The end of input closes every window, then checkpoints: a later start
                    // with the same directory continues after the windows already emitted
                    // (readings for them are late), so one id never stands for two
                    // versions of a window.
                    Some(Input::Finish(done)) => {
                        self.finish().await?;
                        self.checkpoint().await?;
                        let _ = done.send(());
                        return Ok(());
                    }
                    Some(Input::Shutdown(done)) => {
                        if self.ckpt.is_some() {
                            self.checkpoint().await?;
                        } else {
                            self.finish().await?;
                        }
                        let _ = done.send(());
                        return Ok(());
                    }
                    None => {
                        self.finish().await?;
                        return self.checkpoint().await;
                    }
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    if self.checkpoint_due(now) {
                        self.checkpoint().await?;
                    }
                    for i in 0..self.sources.len() {
                        if self.sources[i].pending_since.is_some_and(|t| now.duration_since(t) >= self.config.max_batch_delay) {
                            self.flush_source(i).await?;
                        }
                        if self.config.wall_clock {
                            self.advance_idle(i, now).await;
                        }
                    }
                    if self.config.wall_clock {
                        self.measure_state();
                    }
                    self.offline_due().await;
                }
            }
        }
    }

    /// Takes one message: for the sources whose filter matches its topic (`to` is
    /// `None`; or an operator command on `{prefix}/command/{device}`), or for source
    /// `to` alone (pushed by its name). `idle`: no other input is waiting.
    async fn on_message(
        &mut self,
        Envelope {
            topic,
            payload,
            delivery,
        }: Envelope,
        to: Option<usize>,
        idle: bool,
    ) -> Result<(), EngineError> {
        let (ack, ack_id) = match delivery {
            Delivery::None => (None, None),
            Delivery::Ack { ack, id } => (Some(ack), id),
            Delivery::Position(p) => {
                self.position = Some(p);
                (None, None)
            }
        };
        if let (None, Some(device)) = (to, topic.strip_prefix(&self.command_prefix)) {
            self.on_command(device, &payload).await;
            return self.taken(ack, None).await;
        }
        self.on_json(&topic, body::Body::Json(&payload), to).await?;
        // Nothing else waiting: close the micro-batch now rather than on the timer, so
        // a reading that completes a window is not held back. Under load the queue is
        // not empty and batches fill up.
        self.on_idle(idle).await?;
        self.taken(ack, ack_id).await
    }

    /// Moves watermarks with the wall clock: always for processing-time sources, and for
    /// event-time sources that have been silent for their `idle_timeout` (event time is
    /// assumed to advance like the clock since the last input).
    async fn advance_idle(&mut self, i: usize, now: Instant) {
        let src = &self.sources[i];
        let silent = now.duration_since(src.last_input);
        let target = if src.processing_time {
            Some(wall_ms())
        } else if src.idle_timeout.is_some_and(|t| silent >= t) {
            None
        } else {
            return;
        };
        for k in 0..self.sources[i].operators.len() {
            let op = &mut self.sources[i].operators[k].op;
            let t = match target {
                Some(t) => t,
                None => match op.max_event_time() {
                    Some(m) => m
                        .saturating_add(forewarn_core::duration_ms(silent))
                        .saturating_sub(op.query().watermark.delay),
                    None => continue,
                },
            };
            match op.advance_watermark(t).await {
                Ok(p) => self.emit_processed(i, k, p).await,
                Err(e) => self.query_failed(e),
            }
        }
    }

    /// Publishes the device's state when its connector's report of it going offline
    /// or coming back changes it.
    async fn on_presence(&mut self, device: &str, online: bool) {
        let now = wall_ms();
        if let Some(state) = self.health.presence(device, online, now) {
            let state = state.clone();
            self.emit(Output::State {
                topic: format!("{}/state/{device}", self.config.topic_prefix),
                state,
            })
            .await;
        }
        // Offline alerts count from the first death report.
        let since = self
            .health
            .state(device)
            .and_then(|s| s.offline_since)
            .map_or(now, |t| t.as_millis());
        for i in 0..self.sources.len() {
            for k in 0..self.sources[i].operators.len() {
                let op = &mut self.sources[i].operators[k];
                let rule = op.op.query().name.clone();
                let (outs, silenced) =
                    op.publish
                        .presence(&rule, device, online, (since, now), &mut self.health);
                self.offline_emit(outs, silenced).await;
            }
        }
    }

    /// Raises the offline alerts due now (rules with `offline_after`).
    async fn offline_due(&mut self) {
        let now = wall_ms();
        for i in 0..self.sources.len() {
            for k in 0..self.sources[i].operators.len() {
                let op = &mut self.sources[i].operators[k];
                if op
                    .publish
                    .lifecycle
                    .as_ref()
                    .is_none_or(|l| l.offline_pending() == 0)
                {
                    continue;
                }
                let rule = op.op.query().name.clone();
                let (outs, silenced) = op.publish.offline_due(&rule, now, &mut self.health);
                self.offline_emit(outs, silenced).await;
            }
        }
    }

    async fn offline_emit(&mut self, outs: Vec<Output>, silenced: u64) {
        if silenced > 0 {
            self.count(|s| s.transitions_silenced += silenced);
        }
        for o in outs {
            self.emit(o).await;
        }
    }

    /// Applies an operator command and confirms it on the device's state topic.
    async fn on_command(&mut self, device: &str, payload: &[u8]) {
        match self.health.command(device, payload, wall_ms()) {
            Ok(state) => {
                let state = state.clone();
                self.count(|s| s.commands += 1);
                self.emit(Output::State {
                    topic: format!("{}/state/{device}", self.config.topic_prefix),
                    state,
                })
                .await;
            }
            Err(why) => {
                let o = outputs::refused_command(&self.config, device, payload, why);
                self.emit(o).await;
            }
        }
    }

    fn count(&self, f: impl FnOnce(&mut EngineStats)) {
        f(&mut self.stats.lock().expect("stats lock"));
    }

    async fn emit(&mut self, o: Output) {
        self.count(|s| match &o {
            Output::Alert { .. } => s.alerts_out += 1,
            Output::Row { .. } => s.rows_out += 1,
            Output::Transition { .. } => s.transitions_out += 1,
            Output::State { .. } => s.states_out += 1,
            Output::DeadLetter { letter, .. } => {
                s.dead_letters_out += 1;
                *s.rejected
                    .entry(letter.reason.as_str().to_string())
                    .or_default() += 1;
            }
        });
        if let Some(c) = &mut self.ckpt {
            c.emitted(&o);
        }
        if self.out.send(o).await {
            let mut total = 0;
            self.count(|s| {
                s.outputs_dropped += 1;
                total = s.outputs_dropped;
            });
            self.drop_log.dropped(total);
        }
    }

    /// Sets the gauges in the stats from the sources and their operators now.
    fn update_gauges(&self) {
        let mut open = 0u64;
        let mut by_source = BTreeMap::new();
        for src in &self.sources {
            let ops = src.operators.iter().map(|o| &o.op);
            open += ops
                .clone()
                .map(|op| (op.open_panes() + op.open_sessions()) as u64)
                .sum::<u64>();
            let watermark = ops.clone().filter_map(|op| op.watermark()).min();
            let newest_event = ops.filter_map(|op| op.max_event_time()).max();
            by_source.insert(
                src.name.clone(),
                crate::SourceGauges {
                    watermark,
                    newest_event,
                    lag_ms: newest_event
                        .zip(watermark)
                        .map(|(n, w)| n.saturating_sub(w).max(0)),
                    devices: src.devices.len() as u64,
                },
            );
        }
        let state = self.state_bytes as u64;
        self.count(|s| {
            s.state_bytes = state;
            s.open_windows = open;
            s.sources = by_source;
        });
    }

    async fn finish(&mut self) -> Result<(), EngineError> {
        self.flush_all().await?;
        for i in 0..self.sources.len() {
            for k in 0..self.sources[i].operators.len() {
                match self.sources[i].operators[k].op.finish().await {
                    Ok(processed) => self.emit_processed(i, k, processed).await,
                    Err(e) => self.query_failed(e),
                }
            }
        }
        self.measure_state();
        Ok(())
    }

    fn query_failed(&self, e: forewarn_stream::StreamError) {
        tracing::error!(error = %e, "query failed on a batch; its results for that batch are lost");
        self.count(|s| s.query_errors += 1);
    }

    async fn emit_processed(&mut self, i: usize, k: usize, p: Processed) {
        let query = self.sources[i].operators[k].op.query().name.clone();
        let rows: u64 = p.results.iter().map(|r| r.batch.num_rows() as u64).sum();
        // A result may hold several windows that closed together (or sessions).
        let windows: u64 = p.results.iter().map(|r| r.windows as u64).sum();
        self.count(|s| {
            s.windows_closed += windows;
            s.results += rows;
            if windows > 0 {
                *s.windows_closed_by_query.entry(query.clone()).or_default() += windows;
            }
        });
        debug_assert!(p.rejected.is_empty(), "rejections go through emit_refused");
        // A window of a large fleet closes with one row per device: its alerts are built
        // and sent a chunk at a time, so the output channel's back-pressure, not the
        // fleet size, bounds how many exist at once.
        const CHUNK: usize = 256;
        for res in &p.results {
            if self.config.output_threads > 1
                && res.batch.num_rows() > PIECE
                && self.sources[i].operators[k].publish.stateless()
            {
                self.emit_in_pieces(i, k, &query, res).await;
                continue;
            }
            let mut at = 0;
            while at < res.batch.num_rows() {
                let end = (at + CHUNK).min(res.batch.num_rows());
                let (outs, silenced) = self.sources[i].operators[k].publish.window_outputs(
                    &query,
                    res,
                    at..end,
                    &mut self.health,
                    &self.config,
                    &wall_ms,
                );
                at = end;
                if silenced > 0 {
                    self.count(|s| s.transitions_silenced += silenced);
                }
                for o in outs {
                    self.emit(o).await;
                }
            }
        }
    }

    /// [`emit_processed`](Self::emit_processed) for a large result of a stateless
    /// publisher: its rows are turned into outputs [`PIECE`] at a time on
    /// `output_threads` threads (this one and scoped ones beside it), then sent in
    /// order. Building window rows (strings and maps per row) was the biggest share of
    /// the engine's own time in a backtest of a large fleet, and its task sets the pace
    /// of the whole replay; the outputs and their order are those of one thread.
    async fn emit_in_pieces(&mut self, i: usize, k: usize, query: &str, res: &WindowResult) {
        let n = res.batch.num_rows();
        let threads = self.config.output_threads;
        let mut at = 0;
        while at < n {
            let pieces: Vec<_> = (0..threads)
                .map(|t| (at + t * PIECE).min(n)..(at + (t + 1) * PIECE).min(n))
                .filter(|r| !r.is_empty())
                .collect();
            at = (at + threads * PIECE).min(n);
            let publish = &self.sources[i].operators[k].publish;
            let outs: Vec<Vec<Output>> = std::thread::scope(|s| {
                // A piece whose thread cannot be started (a limit on threads) is done
                // here, after this thread's own.
                let helpers: Vec<_> = pieces[1..]
                    .iter()
                    .map(|r| {
                        std::thread::Builder::new()
                            .name("forewarn-outputs".into())
                            .spawn_scoped(s, || publish.row_outputs(query, res, r.clone()))
                            .map_err(|_| r.clone())
                    })
                    .collect();
                let mine = publish.row_outputs(query, res, pieces[0].clone());
                std::iter::once(mine)
                    .chain(helpers.into_iter().map(|h| {
                        match h {
                            Ok(h) => h
                                .join()
                                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                            Err(r) => publish.row_outputs(query, res, r),
                        }
                    }))
                    .collect()
            });
            for o in outs.into_iter().flatten() {
                self.emit(o).await;
            }
        }
    }
}
