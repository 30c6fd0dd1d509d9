//! The pipeline task: takes input, micro-batches it, runs the window operators and
//! sends what they produce, on timers for batches, idle sources and checkpoints.
//!
//! The decisions are made elsewhere, without IO: what input is admitted
//! ([`crate::admission`]), the devices' health and operator commands
//! ([`crate::health`]), which outputs a closed window or a refusal becomes
//! ([`crate::outputs`]), and when input may be acknowledged ([`crate::checkpointing`]).
//! The state kept per source is in [`crate::sources`].

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use datafusion::arrow::record_batch::RecordBatch;
use forewarn_formats::filter_matches;
use forewarn_stream::Processed;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::admission::{self, RecentMessages};
use crate::checkpoint::{self, QueryState, Snapshot};
use crate::checkpointing::Checkpointing;
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
    cols.push(std::sync::Arc::new(
        datafusion::arrow::array::TimestampMillisecondArray::from_value(now, batch.num_rows()),
    ));
    RecordBatch::try_new(schema.clone(), cols).unwrap_or(batch)
}

pub(crate) struct Runtime {
    config: EngineConfig,
    sources: Vec<Source>,
    out: mpsc::Sender<Output>,
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
}

impl Runtime {
    pub(crate) fn new(
        p: Pipeline,
        out: mpsc::Sender<Output>,
        stats: Arc<Mutex<EngineStats>>,
        confirmed: Arc<AtomicU64>,
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
            stats,
            health: HealthBook::default(),
            ckpt,
            inputs: p.restored.as_ref().map_or(0, |s| s.inputs),
            position: p.restored.as_ref().and_then(|s| s.resume.position),
            restored: p.restored,
            last_input: Instant::now(),
            state_bytes: 0,
        }
    }

    /// Continues from the checkpoint the pipeline was built with: operator state,
    /// alert state machines, device health and silences, then emits again the outputs
    /// the checkpoint held unconfirmed.
    async fn restore(&mut self) -> Result<(), EngineError> {
        let Some(snap) = self.restored.take() else {
            return Ok(());
        };
        let mut queries = snap.queries;
        for src in &mut self.sources {
            for op in &mut src.operators {
                if let Some(q) = queries.remove(&op.op.query().name) {
                    op.op.restore(q.operator)?;
                    if let (Some(d), Some(v)) = (op.publish.online.as_mut(), q.detector) {
                        d.load(v).map_err(|e| {
                            EngineError::Config(format!(
                                "checkpoint {}: learned state of '{}': {e}",
                                snap.seq,
                                op.op.query().name
                            ))
                        })?;
                    }
                    if let (Some(l), Some(v)) = (op.publish.lifecycle.as_mut(), q.lifecycle) {
                        l.load(v).map_err(|e| {
                            EngineError::Config(format!(
                                "checkpoint {}: alert state of '{}': {e}",
                                snap.seq,
                                op.op.query().name
                            ))
                        })?;
                    }
                }
            }
        }
        for src in &mut self.sources {
            if let Some(d) = snap.devices.get(&src.name) {
                src.devices.restore(d);
            }
        }
        self.health.restore(snap.states, snap.silenced);
        let n = snap.outbox.len() as u64;
        self.count(|s| {
            s.restored_from = Some(snap.seq);
            s.outputs_replayed = n;
        });
        for o in snap.outbox {
            self.emit(o).await;
        }
        Ok(())
    }

    /// Whether too many outputs wait for confirmation to take more input.
    fn backlogged(&mut self) -> bool {
        self.ckpt.as_mut().is_some_and(Checkpointing::backlogged)
    }

    /// After an input message: its ack waits for the next checkpoint, or is called now
    /// without checkpoints.
    async fn taken(&mut self, ack: Option<Ack>, ack_id: Option<u64>) -> Result<(), EngineError> {
        self.inputs += 1;
        self.last_input = Instant::now();
        let Some(c) = &mut self.ckpt else {
            if let Some(a) = ack {
                a();
                self.count(|s| s.inputs_acked += 1);
            }
            return Ok(());
        };
        if c.taken(ack, ack_id) {
            self.checkpoint().await?;
        }
        Ok(())
    }

    /// Whether a checkpoint is due on the timer.
    fn checkpoint_due(&self, now: Instant) -> bool {
        self.ckpt
            .as_ref()
            .is_some_and(|c| c.due(now, self.last_input))
    }

    /// Writes a checkpoint of everything processed so far, then acks the input it
    /// covers. A failed write is logged and counted; the acks wait for the next one.
    async fn checkpoint(&mut self) -> Result<(), EngineError> {
        if self.ckpt.is_none() {
            return Ok(());
        }
        self.flush_all().await?;
        let mut queries = BTreeMap::new();
        for src in &mut self.sources {
            for op in &mut src.operators {
                let state = match op.op.snapshot().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "checkpoint failed");
                        self.stats.lock().expect("stats lock").checkpoint_failures += 1;
                        return Ok(());
                    }
                };
                queries.insert(
                    op.op.query().name.clone(),
                    QueryState {
                        fingerprint: op.fingerprint.clone(),
                        operator: state,
                        lifecycle: op.publish.lifecycle.as_ref().map(|l| l.save()),
                        detector: op.publish.online.as_ref().map(|d| d.save()),
                    },
                );
            }
        }
        let c = self.ckpt.as_mut().expect("checked above");
        let snap = c.complete(Snapshot {
            queries,
            states: self.health.saved_states(),
            silenced: self.health.saved_silences(),
            inputs: self.inputs,
            resume: crate::ResumePoint {
                position: self.position,
                released: Vec::new(),
            },
            devices: self
                .sources
                .iter()
                .map(|s| (s.name.clone(), s.devices.names().cloned().collect()))
                .collect(),
            ..Snapshot::default()
        });
        let (store, keep, seq) = (c.cfg.store.clone(), c.cfg.keep, c.seq);
        let written = tokio::task::spawn_blocking(move || {
            let bytes =
                checkpoint::encode(&snap).map_err(|reason| crate::CheckpointError::Corrupt {
                    path: store.name(seq),
                    reason: format!("could not encode: {reason}"),
                })?;
            checkpoint::write(store.as_ref(), seq, &bytes, keep).map(|_| bytes.len())
        })
        .await
        .map_err(|e| EngineError::Config(format!("checkpoint task: {e}")))?;
        let acks = c.attempted(written.is_ok(), Instant::now());
        match written {
            Ok(bytes) => {
                let n = acks.len() as u64;
                for a in acks {
                    a();
                }
                self.count(|s| {
                    s.checkpoints += 1;
                    s.checkpoint_bytes = bytes as u64;
                    s.inputs_acked += n;
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "checkpoint failed; input stays unacknowledged");
                self.count(|s| s.checkpoint_failures += 1);
            }
        }
        Ok(())
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Input>) -> Result<(), EngineError> {
        let mut tick = tokio::time::interval(
            self.config
                .max_batch_delay
                .max(std::time::Duration::from_millis(1))
                / 2,
        );
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.restore().await?;
        loop {
            let backlogged = self.backlogged();
            tokio::select! {
                msg = rx.recv(), if !backlogged => match msg {
                    Some(Input::Message(Envelope { topic, payload, delivery })) => {
                        let (ack, ack_id) = match delivery {
                            Delivery::None => (None, None),
                            Delivery::Ack { ack, id } => (Some(ack), id),
                            Delivery::Position(p) => {
                                self.position = Some(p);
                                (None, None)
                            }
                        };
                        if let Some(device) = topic.strip_prefix(&self.command_prefix) {
                            self.on_command(device, &payload).await;
                            self.taken(ack, None).await?;
                            continue;
                        }
                        self.on_json(&topic, &payload).await?;
                        // Nothing else waiting: close the micro-batch now rather than on
                        // the timer, so a reading that completes a window is not held back.
                        // Under load the queue is not empty and batches fill up.
                        if self.config.flush_when_idle && rx.is_empty() {
                            self.flush_all().await?;
                        }
                        self.taken(ack, ack_id).await?;
                    }
                    Some(Input::Batch { source, batch }) => {
                        self.on_batch(&source, batch).await?;
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
                }
            }
        }
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
        // A closed receiver means the embedder stopped listening; keep processing.
        let _ = self.out.send(o).await;
    }

    /// Whether the message repeats one among the last `duplicate_window` messages to
    /// event-time sources byte for byte (a QoS 1 publisher resends after a lost
    /// PUBACK; with the timestamp inside, the same bytes are the same readings). Sources
    /// timed by arrival are exempt: identical payloads are new readings there.
    fn is_duplicate(&mut self, topic: &str, payload: &[u8]) -> bool {
        self.recent.enabled()
            && self
                .sources
                .iter()
                .any(|s| !s.processing_time && filter_matches(&s.filter, topic))
            && self.recent.repeated(topic, payload)
    }

    async fn on_json(&mut self, topic: &str, payload: &[u8]) -> Result<(), EngineError> {
        self.count(|s| s.messages_in += 1);

        if self.is_duplicate(topic, payload) {
            let o = outputs::duplicate(&self.config, topic, payload);
            self.emit(o).await;
            return Ok(());
        }
        let mut matched = false;
        for i in 0..self.sources.len() {
            if !filter_matches(&self.sources[i].filter, topic) {
                continue;
            }
            matched = true;
            self.sources[i].last_input = Instant::now();
            if let Some(device) = self.sources[i].refused_device(topic) {
                let src = &self.sources[i];
                let origin = Origin {
                    topic: topic.into(),
                    index: None,
                };
                let o = outputs::too_many_devices(
                    &self.config,
                    &src.name,
                    src.devices.max(),
                    &device,
                    Some(&origin),
                    outputs::excerpt(&self.config, payload),
                );
                self.emit(o).await;
                continue;
            }
            let outcome = self.sources[i].decoder.decode(topic, payload);
            self.count(|s| s.readings_in += outcome.accepted as u64);
            self.sources[i].record_origins(topic, payload, &outcome);
            for r in outcome.rejected {
                let source = &self.sources[i].name;
                let o = outputs::undecodable(&self.config, source, topic, payload, &r);
                self.emit(o).await;
            }
            let src = &mut self.sources[i];
            if src.decoder.buffered_rows() > 0 && src.pending_since.is_none() {
                src.pending_since = Some(Instant::now());
            }
            if src.decoder.buffered_rows() >= self.config.max_batch_rows {
                self.flush_source(i).await?;
            }
        }
        if !matched {
            let o = outputs::unknown_topic(&self.config, topic, payload);
            self.emit(o).await;
        }
        Ok(())
    }

    async fn on_batch(&mut self, source: &str, batch: RecordBatch) -> Result<(), EngineError> {
        self.count(|s| s.messages_in += 1);
        let i = self.sources.iter().position(|s| s.name == source);
        // A processing-time source's batches are stamped on arrival, like its messages.
        let batch = match i {
            Some(i) if self.sources[i].processing_time => stamp_arrival(&self.sources[i], batch),
            _ => batch,
        };
        let problem = match i {
            None => Some((
                forewarn_core::Reason::UnknownSource,
                format!("no query reads source '{source}'"),
            )),
            Some(i) => outputs::batch_problem(self.sources[i].decoder.schema(), &batch),
        };
        if let Some(problem) = problem {
            let o = outputs::refused_batch(&self.config, source, i.is_some(), problem, &batch);
            self.emit(o).await;
            return Ok(());
        }
        let i = i.expect("checked above");
        self.sources[i].last_input = Instant::now();
        self.count(|s| s.readings_in += batch.num_rows() as u64);
        self.flush_source(i).await?;
        // Rows of a pushed batch are named by their position in it.
        let origins = (0..batch.num_rows())
            .map(|k| Origin {
                topic: "".into(),
                index: Some(k),
            })
            .collect();
        let (batch, origins) = self.admit_rows(i, batch, origins).await;
        self.process(i, batch, origins).await
    }

    /// The rows of `batch` whose device source `i` has admitted or can still admit;
    /// the others are dead-lettered as `too_many_devices`. Messages whose topic names
    /// the device were admitted before decoding; this covers pushed batches and device
    /// ids read from the payload.
    async fn admit_rows(
        &mut self,
        i: usize,
        batch: RecordBatch,
        origins: Vec<Origin>,
    ) -> (RecordBatch, Vec<Origin>) {
        use datafusion::arrow::array::BooleanArray;
        use datafusion::arrow::compute::filter_record_batch;
        let src = &mut self.sources[i];
        let Some((keep, refused)) =
            admission::admit_rows(&mut src.devices, &src.device_key, &batch)
        else {
            return (batch, origins);
        };
        let (source, max) = (src.name.clone(), src.devices.max());
        for (row, device) in &refused {
            let excerpt = serde_json::Value::Object(row_to_json(&batch, *row)).to_string();
            let o = outputs::too_many_devices(
                &self.config,
                &source,
                max,
                device,
                origins.get(*row),
                excerpt,
            );
            self.emit(o).await;
        }
        let origins = origins
            .into_iter()
            .zip(&keep)
            .filter_map(|(o, k)| k.then_some(o))
            .collect();
        let mask = BooleanArray::from(keep);
        let batch = filter_record_batch(&batch, &mask).expect("mask as long as the batch");
        (batch, origins)
    }

    async fn flush_all(&mut self) -> Result<(), EngineError> {
        for i in 0..self.sources.len() {
            self.flush_source(i).await?;
        }
        Ok(())
    }

    async fn flush_source(&mut self, i: usize) -> Result<(), EngineError> {
        self.sources[i].pending_since = None;
        let origins = std::mem::take(&mut self.sources[i].origins);
        match self.sources[i].decoder.flush() {
            // A topic that names the device was admitted before decoding.
            Some(batch) if self.sources[i].device_from_topic.is_none() => {
                let (batch, origins) = self.admit_rows(i, batch, origins).await;
                self.process(i, batch, origins).await
            }
            Some(batch) => self.process(i, batch, origins).await,
            None => Ok(()),
        }
    }

    async fn process(
        &mut self,
        i: usize,
        batch: RecordBatch,
        origins: Vec<Origin>,
    ) -> Result<(), EngineError> {
        self.count(|s| s.batches += 1);
        let over = self.state_bytes > self.config.max_state_bytes;
        if over {
            tracing::error!(
                state_bytes = self.state_bytes,
                limit = self.config.max_state_bytes,
                "window state over max_state_bytes: rows refused (state_limit) until windows close"
            );
        }
        // A reading refused by several queries (late for each) is one dead letter: it
        // is the reading that is lost, once, whichever queries wanted it.
        let mut refused: BTreeMap<u32, Refusal> = BTreeMap::new();
        let mut done = Vec::new();
        for k in 0..self.sources[i].operators.len() {
            let op = &mut self.sources[i].operators[k].op;
            let r = if over {
                op.refuse(&batch).await
            } else {
                op.process(&batch).await
            };
            match r {
                Ok(mut processed) => {
                    let q = self.sources[i].operators[k].op.query();
                    for rej in std::mem::take(&mut processed.rejected) {
                        outputs::file_refusals(&mut refused, q, &rej);
                    }
                    done.push((k, processed));
                }
                // One failing query must not stop the others, nor the pipeline.
                Err(e) => self.query_failed(e),
            }
        }
        self.emit_refused(i, refused, &origins).await;
        for (k, processed) in done {
            self.emit_processed(i, k, processed).await;
        }
        self.measure_state();
        Ok(())
    }

    /// One dead letter (late rows: one late message) per refused reading, with the
    /// topic and array position of the message it came in.
    async fn emit_refused(
        &mut self,
        i: usize,
        refused: BTreeMap<u32, Refusal>,
        origins: &[Origin],
    ) {
        let src = &self.sources[i];
        let letters: Vec<Output> = refused
            .into_iter()
            .map(|(row, r)| {
                let origin = origins.get(row as usize);
                outputs::refusal(&self.config, &src.name, src.late_topic.as_ref(), origin, r)
            })
            .collect();
        for o in letters {
            self.emit(o).await;
        }
    }

    /// Window state now: the queries share one memory pool for their aggregates.
    fn measure_state(&mut self) {
        let ops = self.sources.iter().flat_map(|s| &s.operators);
        let pool = ops.clone().map(|o| o.op.state_bytes()).max().unwrap_or(0);
        self.state_bytes = pool + ops.map(|o| o.op.held_state_bytes()).sum::<usize>();
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
        Ok(())
    }

    fn query_failed(&self, e: forewarn_stream::StreamError) {
        tracing::error!(error = %e, "query failed on a batch; its results for that batch are lost");
        self.count(|s| s.query_errors += 1);
    }

    async fn emit_processed(&mut self, i: usize, k: usize, p: Processed) {
        let query = self.sources[i].operators[k].op.query().name.clone();
        let rows: u64 = p.results.iter().map(|r| r.batch.num_rows() as u64).sum();
        self.count(|s| {
            s.windows_closed += p.results.len() as u64;
            s.results += rows;
            if !p.results.is_empty() {
                *s.windows_closed_by_query.entry(query.clone()).or_default() +=
                    p.results.len() as u64;
            }
        });
        debug_assert!(p.rejected.is_empty(), "rejections go through emit_refused");
        // A window of a large fleet closes with one row per device: its alerts are built
        // and sent a chunk at a time, so the output channel's back-pressure, not the
        // fleet size, bounds how many exist at once.
        const CHUNK: usize = 256;
        for res in &p.results {
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
}
