//! The pipeline task: micro-batching, running the window operators, emitting outputs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::record_batch::RecordBatch;
use forewarn_alerts::{
    Acknowledgement, Alert, Command, DeviceState, Health, Lifecycle, RuleState, TransitionMessage,
    WindowEvidence,
};
use forewarn_core::Reason;
use forewarn_formats::{filter_matches, JsonDecoder, TopicTemplate};
use forewarn_scorer::OnlineDetectors;
use forewarn_stream::{Processed, WindowOperator};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::rows::row_to_json;

/// Why a pushed batch cannot be used for a source, if it cannot.
fn batch_problem(
    schema: &datafusion::arrow::datatypes::SchemaRef,
    batch: &RecordBatch,
) -> Option<(Reason, String)> {
    let want: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    let got: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    if want != got {
        return Some((
            Reason::SchemaMismatch,
            format!(
                "batch columns [{}] do not match the source's [{}]",
                got.join(", "),
                want.join(", ")
            ),
        ));
    }
    schema
        .fields()
        .iter()
        .zip(batch.columns())
        .find(|(f, c)| !f.is_nullable() && c.null_count() > 0)
        .map(|(f, c)| {
            (
                Reason::MissingField,
                format!(
                    "required column '{}' has {} nulls",
                    f.name(),
                    c.null_count()
                ),
            )
        })
}
use crate::checkpoint::{self, CheckpointConfig, QueryState, Snapshot};
use crate::{Ack, DeadLetter, EngineConfig, EngineError, EngineStats, Input, Output, Pipeline};

/// A JSON value as a topic level: strings as they are, anything else as JSON text.
fn topic_text(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

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
    let now = forewarn_core::duration_ms(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let mut cols = batch.columns().to_vec();
    cols.push(std::sync::Arc::new(
        datafusion::arrow::array::TimestampMillisecondArray::from_value(now, batch.num_rows()),
    ));
    RecordBatch::try_new(schema.clone(), cols).unwrap_or(batch)
}

struct Source {
    name: String,
    filter: String,
    decoder: JsonDecoder,
    /// When the oldest buffered reading arrived.
    pending_since: Option<Instant>,
    operators: Vec<Operator>,
    processing_time: bool,
    idle_timeout: Option<std::time::Duration>,
    /// When input last arrived (idle detection).
    last_input: Instant,
    late_topic: Option<TopicTemplate>,
    /// The topic template and the capture naming the device, for the limit on distinct
    /// devices: `{device}`, else (`None`) all captures together, which tell devices
    /// apart whichever of them names the device.
    device_from_topic: Option<(TopicTemplate, Option<String>)>,
    /// Devices admitted so far (at most `max_devices`).
    devices: std::collections::HashSet<String>,
    /// The columns naming a row's device, for admitting the rows of pushed batches and
    /// of messages whose device is in the payload: the `device` column, else the topic's
    /// captures (joined with `/`, as the topic check joins them). Empty: one device.
    device_key: Vec<usize>,
    /// Where each buffered reading came from: its message's topic and its position in
    /// an array message (for the dead letter of a reading the windows refuse).
    origins: Vec<Origin>,
}

/// The message a reading came from.
#[derive(Clone)]
struct Origin {
    topic: Arc<str>,
    index: Option<usize>,
}

/// A reading the window operators refused, with what the dead letter says of it.
struct Refusal {
    reason: forewarn_stream::RowRejection,
    row: serde_json::Map<String, serde_json::Value>,
    /// The queries that refused it.
    queries: Vec<String>,
    /// The pane of the reading's event time in the first of them.
    window: Option<forewarn_core::Pane>,
}

struct Operator {
    op: WindowOperator,
    sink: TopicTemplate,
    /// Sinks with a lifecycle publish transitions, not rows.
    lifecycle: Option<Lifecycle>,
    /// The sink's online detector: scores each row before the lifecycle sees it.
    online: Option<OnlineDetectors>,
    /// Grouping columns besides the device: the online detector learns each of their
    /// combinations apart (the lifecycle stays per device).
    regime_keys: Vec<String>,
    /// Column holding the device id (see [`forewarn_sql::bind_sink`]).
    device_column: String,
    model: Option<String>,
    /// What a checkpoint of this operator's state must match to be restored.
    fingerprint: String,
}

/// Checkpointing state of a running pipeline.
struct Checkpointing {
    cfg: CheckpointConfig,
    /// Sequence number of the next checkpoint.
    seq: u64,
    last: Instant,
    /// Acks of input taken since the last checkpoint, in order.
    unacked: Vec<Ack>,
    /// Connector ids of those acks, where given (see [`Snapshot::released`]).
    unacked_ids: Vec<u64>,
    /// Input or output since the last checkpoint.
    dirty: bool,
    /// Outputs emitted and not yet confirmed by the consumer, oldest first.
    recent: VecDeque<Output>,
    /// Outputs emitted since start.
    emitted: u64,
    confirmed: Arc<AtomicU64>,
}

impl Checkpointing {
    /// Drops the outputs the consumer has confirmed.
    fn trim(&mut self) {
        let confirmed = self.confirmed.load(Ordering::Relaxed);
        while !self.recent.is_empty() && self.emitted - (self.recent.len() as u64) < confirmed {
            self.recent.pop_front();
        }
    }
}

pub(crate) struct Runtime {
    config: EngineConfig,
    sources: Vec<Source>,
    out: mpsc::Sender<Output>,
    stats: Arc<Mutex<EngineStats>>,
    /// Health of every device seen by a rule with a lifecycle.
    states: HashMap<String, DeviceState>,
    /// Devices an operator silenced, until when (wall clock, ms).
    silenced: HashMap<String, i64>,
    ckpt: Option<Checkpointing>,
    /// The checkpoint to continue from, applied when the task starts.
    restored: Option<Snapshot>,
    /// Input messages taken since start (and before, when restored).
    inputs: u64,
    /// Position of the last input message in its stream (see [`Snapshot::position`]).
    position: Option<u64>,
    /// When the last input message arrived.
    last_input: Instant,
    /// Hashes of the latest messages, for [`Self::is_duplicate`].
    recent: RecentMessages,
    /// Window state after the last batch, bytes (for `max_state_bytes`).
    state_bytes: usize,
}

#[derive(Default)]
struct RecentMessages {
    hasher: std::collections::hash_map::RandomState,
    set: std::collections::HashSet<u64>,
    order: VecDeque<u64>,
}

impl Runtime {
    pub(crate) fn new(
        p: Pipeline,
        out: mpsc::Sender<Output>,
        stats: Arc<Mutex<EngineStats>>,
        confirmed: Arc<AtomicU64>,
    ) -> Self {
        let mut sources: Vec<Source> = p
            .sources
            .iter()
            .map(|s| {
                let decoder = JsonDecoder::new(
                    s.schema.clone(),
                    s.template.clone(),
                    p.config.max_payload_bytes,
                )
                .expect("checked at build");
                Source {
                    name: s.name.clone(),
                    filter: s.topic_filter.clone(),
                    decoder: if s.processing_time {
                        decoder.with_arrival_column(forewarn_sql::ARRIVAL_TIME)
                    } else {
                        decoder
                    },
                    pending_since: None,
                    operators: vec![],
                    processing_time: s.processing_time,
                    idle_timeout: s.idle_timeout,
                    last_input: Instant::now(),
                    late_topic: s.late_topic.clone(),
                    device_from_topic: s
                        .template
                        .as_ref()
                        .filter(|t| t.captures().next().is_some())
                        .map(|t| {
                            let cap = t.captures().find(|c| *c == "device").map(str::to_string);
                            (t.clone(), cap)
                        }),
                    devices: Default::default(),
                    device_key: device_key(s),
                    origins: Vec::new(),
                }
            })
            .collect();
        for q in &p.queries {
            let sink = p.sinks[&q.sink].clone();
            let spec = p.lifecycles.get(&q.name).cloned();
            let device_column = p.device_columns[&q.name].clone();
            let mut model = (q.models.len() == 1).then(|| q.models[0].clone());
            let online = p.online.get(&q.name).map(|b| {
                model = Some("online".to_string());
                OnlineDetectors::new(b.spec.clone(), b.features.clone())
            });
            let src = sources
                .iter_mut()
                .find(|s| s.name == q.source)
                .expect("source of a query");
            src.operators.push(Operator {
                op: WindowOperator::new(q.clone()).with_max_open_panes(p.config.max_open_windows),
                sink,
                lifecycle: spec.map(|s| Lifecycle::new(&q.name, s)),
                online,
                regime_keys: q
                    .key_columns
                    .iter()
                    .filter(|k| !k.eq_ignore_ascii_case(&device_column))
                    .cloned()
                    .collect(),
                device_column,
                model,
                fingerprint: checkpoint::fingerprint(q),
            });
        }
        let ckpt = p.config.checkpoint.clone().map(|cfg| Checkpointing {
            cfg,
            seq: p.restored.as_ref().map_or(1, |s| s.seq + 1),
            last: Instant::now(),
            unacked: Vec::new(),
            unacked_ids: Vec::new(),
            dirty: false,
            recent: VecDeque::new(),
            emitted: 0,
            confirmed,
        });
        Runtime {
            config: p.config,
            sources,
            out,
            stats,
            states: HashMap::new(),
            silenced: HashMap::new(),
            ckpt,
            inputs: p.restored.as_ref().map_or(0, |s| s.inputs),
            position: p.restored.as_ref().and_then(|s| s.position),
            restored: p.restored,
            last_input: Instant::now(),
            recent: RecentMessages::default(),
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
                    if let (Some(d), Some(v)) = (op.online.as_mut(), q.detector) {
                        d.load(v).map_err(|e| {
                            EngineError::Config(format!(
                                "checkpoint {}: learned state of '{}': {e}",
                                snap.seq,
                                op.op.query().name
                            ))
                        })?;
                    }
                    if let (Some(l), Some(v)) = (op.lifecycle.as_mut(), q.lifecycle) {
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
                src.devices = d.iter().cloned().collect();
            }
        }
        self.states = snap.states.into_iter().collect();
        self.silenced = snap.silenced.into_iter().collect();
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
        match &mut self.ckpt {
            Some(c) if c.cfg.confirm_outputs => {
                c.trim();
                c.recent.len() >= c.cfg.max_unconfirmed
            }
            _ => false,
        }
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
        c.dirty = true;
        if let Some(a) = ack {
            c.unacked.push(a);
            c.unacked_ids.extend(ack_id);
        }
        if c.unacked.len() >= c.cfg.max_unacked {
            self.checkpoint().await?;
        }
        Ok(())
    }

    /// Whether a checkpoint is due on the timer.
    fn checkpoint_due(&self, now: Instant) -> bool {
        let Some(c) = &self.ckpt else { return false };
        (c.dirty && now.duration_since(c.last) >= c.cfg.interval)
            || (!c.unacked.is_empty() && now.duration_since(self.last_input) >= c.cfg.idle)
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
                        lifecycle: op.lifecycle.as_ref().map(|l| l.save()),
                        detector: op.online.as_ref().map(|d| d.save()),
                    },
                );
            }
        }
        let c = self.ckpt.as_mut().expect("checked above");
        c.trim();
        let snap = Snapshot {
            seq: c.seq,
            queries,
            states: self
                .states
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            silenced: self.silenced.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            outbox: c.recent.iter().cloned().collect(),
            inputs: self.inputs,
            position: self.position,
            released: c.unacked_ids.clone(),
            devices: self
                .sources
                .iter()
                .map(|s| (s.name.clone(), s.devices.iter().cloned().collect()))
                .collect(),
        };
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
        c.last = Instant::now();
        match written {
            Ok(bytes) => {
                c.seq += 1;
                c.dirty = false;
                let acks = std::mem::take(&mut c.unacked);
                c.unacked_ids.clear();
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
                    Some(Input::Json { topic, payload, ack, ack_id, position }) => {
                        self.on_json(&topic, &payload).await?;
                        if position.is_some() {
                            self.position = position;
                        }
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
                    Some(Input::Command { device, payload, ack }) => {
                        self.on_command(&device, &payload).await;
                        self.taken(ack, None).await?;
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
            Some(forewarn_core::duration_ms(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default(),
            ))
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
        let now = wall_ms();
        let reject = |reason: Reason, detail: String| DeadLetter {
            reason,
            detail,
            source_topic: format!("{}/command/{device}", self.config.topic_prefix),
            source: None,
            index: None,
            excerpt: String::from_utf8_lossy(&payload[..payload.len().min(256)]).into_owned(),
        };
        let topic = format!("{}/deadletter/command", self.config.topic_prefix);
        let cmd = match serde_json::from_slice::<Command>(payload) {
            Ok(c) => c,
            Err(e) => {
                let letter = reject(Reason::BadCommand, format!("expected {{\"action\": \"acknowledge\" | \"silence\" | \"unsilence\", \"by\": ..., \"for\": \"2 hours\"}}: {e}"));
                self.emit(Output::DeadLetter { topic, letter }).await;
                return;
            }
        };
        let Some(state) = self.states.get_mut(device) else {
            let letter = reject(
                Reason::UnknownDevice,
                format!("no rule with a lifecycle has seen device '{device}'"),
            );
            self.emit(Output::DeadLetter { topic, letter }).await;
            return;
        };
        match cmd {
            Command::Acknowledge { by } => {
                let ids: Vec<String> = state
                    .rules
                    .values()
                    .filter_map(|r| r.alert_id.clone())
                    .collect();
                if ids.is_empty() {
                    let letter = reject(
                        Reason::NothingToAcknowledge,
                        format!("device '{device}' has no open alert"),
                    );
                    self.emit(Output::DeadLetter { topic, letter }).await;
                    return;
                }
                state.acknowledged = Some(Acknowledgement {
                    by,
                    at: forewarn_core::format_rfc3339(now),
                    alert_ids: ids,
                });
            }
            Command::Silence { duration, .. } => {
                let ms = match forewarn_core::parse_interval(&duration, None) {
                    Ok(ms) if ms > 0 => ms,
                    _ => {
                        let letter = reject(
                            Reason::BadCommand,
                            format!("silence needs \"for\": an interval such as \"2 hours\", got '{duration}'"),
                        );
                        self.emit(Output::DeadLetter { topic, letter }).await;
                        return;
                    }
                };
                let until = now.saturating_add(ms);
                state.silenced_until = Some(forewarn_core::format_rfc3339(until));
                self.silenced.insert(device.to_string(), until);
            }
            Command::Unsilence { .. } => {
                state.silenced_until = None;
                self.silenced.remove(device);
            }
        }
        let state = state.clone();
        self.count(|s| s.commands += 1);
        self.emit(Output::State {
            topic: format!("{}/state/{device}", self.config.topic_prefix),
            state,
        })
        .await;
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
            c.dirty = true;
            if c.cfg.confirm_outputs {
                c.recent.push_back(o.clone());
                c.emitted += 1;
            }
        }
        // A closed receiver means the embedder stopped listening; keep processing.
        let _ = self.out.send(o).await;
    }

    fn excerpt(&self, payload: &[u8]) -> String {
        let cut = &payload[..payload.len().min(self.config.dead_letter_excerpt)];
        String::from_utf8_lossy(cut).into_owned()
    }

    /// Whether the message repeats one among the last `duplicate_window` messages to
    /// event-time sources byte for byte (a QoS 1 publisher resends after a lost
    /// PUBACK; with the timestamp inside, the same bytes are the same readings). Sources
    /// timed by arrival are exempt: identical payloads are new readings there.
    fn is_duplicate(&mut self, topic: &str, payload: &[u8]) -> bool {
        if self.config.duplicate_window == 0
            || !self
                .sources
                .iter()
                .any(|s| !s.processing_time && filter_matches(&s.filter, topic))
        {
            return false;
        }
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = self.recent.hasher.build_hasher();
        topic.hash(&mut h);
        payload.hash(&mut h);
        let h = h.finish();
        if !self.recent.set.insert(h) {
            return true;
        }
        self.recent.order.push_back(h);
        if self.recent.order.len() > self.config.duplicate_window {
            if let Some(old) = self.recent.order.pop_front() {
                self.recent.set.remove(&old);
            }
        }
        false
    }

    /// The device named by `topic` if source `i` is full and has not seen it.
    fn refused_device(&mut self, i: usize, topic: &str) -> Option<String> {
        let src = &mut self.sources[i];
        let (template, cap) = src.device_from_topic.as_ref()?;
        let captures = template.captures_of(topic)?;
        let device: std::borrow::Cow<str> = match cap {
            Some(cap) => captures.iter().find(|(c, _)| c == cap)?.1.into(),
            None => captures
                .iter()
                .map(|(_, v)| *v)
                .collect::<Vec<_>>()
                .join("/")
                .into(),
        };
        if src.devices.contains(device.as_ref()) {
            return None;
        }
        if src.devices.len() >= self.config.max_devices {
            return Some(device.into_owned());
        }
        src.devices.insert(device.into_owned());
        None
    }

    async fn on_json(&mut self, topic: &str, payload: &[u8]) -> Result<(), EngineError> {
        self.count(|s| s.messages_in += 1);

        if self.is_duplicate(topic, payload) {
            let letter = DeadLetter {
                reason: Reason::Duplicate,
                detail: format!(
                    "the same bytes on the same topic arrived among the last {} messages (a resent publish)",
                    self.config.duplicate_window
                ),
                source_topic: topic.to_string(),
                source: None,
                index: None,
                excerpt: self.excerpt(payload),
            };
            self.emit(Output::DeadLetter {
                topic: format!("{}/deadletter/duplicate", self.config.topic_prefix),
                letter,
            })
            .await;
            return Ok(());
        }
        let mut matched = false;
        for i in 0..self.sources.len() {
            if !filter_matches(&self.sources[i].filter, topic) {
                continue;
            }
            matched = true;
            self.sources[i].last_input = Instant::now();
            if let Some(device) = self.refused_device(i, topic) {
                let source = self.sources[i].name.clone();
                let letter = DeadLetter {
                    reason: Reason::TooManyDevices,
                    detail: format!(
                        "source '{source}' already has {} devices (max_devices); '{device}' is refused",
                        self.config.max_devices
                    ),
                    source_topic: topic.to_string(),
                    source: Some(source.clone()),
                    index: None,
                    excerpt: self.excerpt(payload),
                };
                self.emit(Output::DeadLetter {
                    topic: format!("{}/deadletter/{source}", self.config.topic_prefix),
                    letter,
                })
                .await;
                continue;
            }
            let outcome = self.sources[i].decoder.decode(topic, payload);
            self.count(|s| s.readings_in += outcome.accepted as u64);
            if outcome.accepted > 0 {
                let topic: Arc<str> = topic.into();
                let origins = &mut self.sources[i].origins;
                if payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
                    let bad: Vec<usize> = outcome.rejected.iter().filter_map(|r| r.index).collect();
                    origins.extend(
                        (0..)
                            .filter(|k| !bad.contains(k))
                            .take(outcome.accepted)
                            .map(|k| Origin {
                                topic: topic.clone(),
                                index: Some(k),
                            }),
                    );
                } else {
                    origins.push(Origin { topic, index: None });
                }
            }
            for r in outcome.rejected {
                let source = self.sources[i].name.clone();
                let letter = DeadLetter {
                    reason: r.error.reason(),
                    detail: r.error.to_string(),
                    source_topic: topic.to_string(),
                    source: Some(source.clone()),
                    index: r.index,
                    excerpt: self.excerpt(payload),
                };
                tracing::debug!(topic, reason = %letter.detail, "rejected input");
                self.emit(Output::DeadLetter {
                    topic: format!("{}/deadletter/{source}", self.config.topic_prefix),
                    letter,
                })
                .await;
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
            let letter = DeadLetter {
                reason: Reason::UnknownTopic,
                detail: format!("no source subscribes to topic '{topic}'"),
                source_topic: topic.to_string(),
                source: None,
                index: None,
                excerpt: self.excerpt(payload),
            };
            self.emit(Output::DeadLetter {
                topic: format!("{}/deadletter/unrouted", self.config.topic_prefix),
                letter,
            })
            .await;
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
                Reason::UnknownSource,
                format!("no query reads source '{source}'"),
            )),
            Some(i) => batch_problem(self.sources[i].decoder.schema(), &batch),
        };
        if let Some((reason, detail)) = problem {
            let excerpt = if batch.num_rows() > 0 {
                serde_json::Value::Object(row_to_json(&batch, 0)).to_string()
            } else {
                String::new()
            };
            let letter = DeadLetter {
                reason,
                detail,
                source_topic: String::new(),
                source: Some(source.to_string()),
                index: None,
                excerpt,
            };
            let topic = format!(
                "{}/deadletter/{}",
                self.config.topic_prefix,
                if i.is_some() { source } else { "unrouted" }
            );
            self.emit(Output::DeadLetter { topic, letter }).await;
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
        if src.device_key.is_empty() || batch.num_rows() == 0 {
            return (batch, origins);
        }
        let max = self.config.max_devices;
        let text: Vec<_> = src
            .device_key
            .iter()
            .map(|&c| {
                datafusion::arrow::compute::cast(
                    batch.column(c),
                    &datafusion::arrow::datatypes::DataType::Utf8,
                )
            })
            .collect::<Result<_, _>>()
            .expect("a device column casts to text");
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut refused = Vec::new();
        let mut joined = String::new();
        for row in 0..batch.num_rows() {
            use datafusion::arrow::array::{Array, AsArray};
            fn cell(a: &datafusion::arrow::array::ArrayRef, row: usize) -> &str {
                let a = a.as_string::<i32>();
                if a.is_valid(row) {
                    a.value(row)
                } else {
                    ""
                }
            }
            // One key column (the usual case) is looked up without copying it.
            let device: &str = if let [only] = text.as_slice() {
                cell(only, row)
            } else {
                joined.clear();
                for (k, a) in text.iter().enumerate() {
                    if k > 0 {
                        joined.push('/');
                    }
                    joined.push_str(cell(a, row));
                }
                &joined
            };
            let ok = src.devices.contains(device) || {
                let room = src.devices.len() < max;
                if room {
                    src.devices.insert(device.to_string());
                }
                room
            };
            if !ok {
                refused.push((row, device.to_string()));
            }
            keep.push(ok);
        }
        if refused.is_empty() {
            return (batch, origins);
        }
        let source = src.name.clone();
        for (row, device) in &refused {
            let origin = origins.get(*row);
            let letter = DeadLetter {
                reason: Reason::TooManyDevices,
                detail: format!(
                    "source '{source}' already has {max} devices (max_devices); '{device}' is refused"
                ),
                source_topic: origin.map_or(String::new(), |o| o.topic.to_string()),
                source: Some(source.clone()),
                index: origin.and_then(|o| o.index),
                excerpt: serde_json::Value::Object(row_to_json(&batch, *row)).to_string(),
            };
            self.emit(Output::DeadLetter {
                topic: format!("{}/deadletter/{source}", self.config.topic_prefix),
                letter,
            })
            .await;
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
                    let op = &self.sources[i].operators[k].op;
                    for rej in std::mem::take(&mut processed.rejected) {
                        for (r, &row) in rej.index.iter().enumerate() {
                            refused
                                .entry(row)
                                .or_insert_with(|| {
                                    let row = row_to_json(&rej.rows, r);
                                    let q = op.query();
                                    let window = match &row.get(&q.event_time) {
                                        Some(serde_json::Value::String(t)) => {
                                            forewarn_core::parse_rfc3339(t)
                                                .map(|t| q.window.pane_of(t))
                                        }
                                        _ => None,
                                    };
                                    Refusal {
                                        reason: rej.reason,
                                        row,
                                        queries: Vec::new(),
                                        window,
                                    }
                                })
                                .queries
                                .push(op.query().name.clone());
                        }
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
        use forewarn_stream::RowRejection as R;
        let src = &self.sources[i];
        let mut letters = Vec::with_capacity(refused.len());
        for (row, r) in refused {
            let origin = origins.get(row as usize);
            let fields = r.row;
            let topic = match (r.reason, &src.late_topic) {
                (R::Late, Some(t)) => t.render(|c| fields.get(c).map(topic_text)),
                (R::Late, None) => format!("{}/late/{}", self.config.topic_prefix, src.name),
                _ => format!("{}/deadletter/{}", self.config.topic_prefix, src.name),
            };
            // Only what does not depend on how input was batched: the same reading
            // gets the same words live and in replay.
            let queries = match r.queries.len() {
                1 => format!("query '{}'", r.queries[0]),
                _ => format!("queries '{}'", r.queries.join("', '")),
            };
            let detail = match r.reason {
                R::Late => match r.window {
                    Some(w) => format!(
                        "the watermark had passed the end of the reading's window [{}, {}) ({queries})",
                        forewarn_core::format_rfc3339(w.start),
                        forewarn_core::format_rfc3339(w.end)
                    ),
                    None => format!("the reading's window had closed ({queries})"),
                },
                R::Future => format!(
                    "the reading's time is further ahead than max_future of the newest reading before it ({queries})"
                ),
                R::NoTimestamp => format!("the reading has no event time ({queries})"),
                R::TooManyWindows => format!(
                    "the reading would open more than max_open_windows = {} windows ({queries})",
                    self.config.max_open_windows
                ),
                R::StateLimit => format!(
                    "window state is over max_state_bytes = {}; input is refused until windows close ({queries})",
                    self.config.max_state_bytes
                ),
            };
            let letter = DeadLetter {
                reason: row_reason(r.reason),
                detail,
                source_topic: origin.map_or(String::new(), |o| o.topic.to_string()),
                source: Some(src.name.clone()),
                index: origin.and_then(|o| o.index),
                excerpt: serde_json::Value::Object(fields).to_string(),
            };
            letters.push(Output::DeadLetter { topic, letter });
        }
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
                *s.windows_closed_by_query.entry(query).or_default() += p.results.len() as u64;
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
                let rows = self.alert_rows(i, k, res, at..end);
                at = end;
                let outs = if self.sources[i].operators[k].lifecycle.is_some() {
                    self.lifecycle_outputs(i, k, rows)
                } else {
                    rows.into_iter()
                        .map(|(topic, alert, _)| Output::Alert { topic, alert })
                        .collect()
                };
                for o in outs {
                    self.emit(o).await;
                }
            }
        }
    }

    /// Rows `range` of a closed window's result as alerts, each with its topic and window.
    fn alert_rows(
        &self,
        i: usize,
        k: usize,
        res: &forewarn_stream::WindowResult,
        range: std::ops::Range<usize>,
    ) -> Vec<(String, Alert, forewarn_core::Pane)> {
        let op = &self.sources[i].operators[k];
        let query = &op.op.query().name;
        let mut rows = Vec::with_capacity(range.len());
        for r in range {
            let row = row_to_json(&res.batch, r);
            let topic = op.sink.render(|c| row.get(c).map(topic_text));
            let window = res.row_windows.as_ref().map_or(res.window, |w| w[r]);
            let alert = Alert::from_row(
                query,
                op.model.as_deref(),
                &op.device_column,
                (window.start, window.end),
                row,
            );
            rows.push((topic, alert, window));
        }
        rows
    }

    /// Feeds a lifecycle rule's window rows to its state machines: each transition and
    /// each change of a device's health becomes one message; the rows themselves are not
    /// published. A device's first window publishes its (healthy) state, so the retained
    /// state topic lists the whole fleet.
    fn lifecycle_outputs(
        &mut self,
        i: usize,
        k: usize,
        rows: Vec<(String, Alert, forewarn_core::Pane)>,
    ) -> Vec<Output> {
        let prefix = self.config.topic_prefix.clone();
        let window_rows = self.config.window_rows;
        let op = &mut self.sources[i].operators[k];
        let lifecycle = op.lifecycle.as_mut().expect("called for lifecycle rules");
        let rule = op.op.query().name.clone();
        let mut outs = Vec::new();
        for (topic, mut alert, window) in rows {
            if let Some(d) = op.online.as_mut() {
                score_online(d, &op.regime_keys, window.start, &mut alert);
            }
            let score = match lifecycle.spec().score_column.as_str() {
                "score" => alert.score,
                c => alert.features.get(c).and_then(|v| v.as_f64()),
            };
            if window_rows {
                // The row with the score the lifecycle judges, whatever its column.
                let mut row = alert.clone();
                row.score = score;
                outs.push(Output::Alert {
                    topic: topic.clone(),
                    alert: row,
                });
            }
            let evidence = WindowEvidence {
                start_ms: window.start,
                end_ms: window.end,
                window_start: alert.window_start.clone(),
                window_end: alert.window_end.clone(),
                score,
                features: alert.features.clone(),
            };
            let state_topic = format!("{prefix}/state/{}", alert.device);
            let state = self
                .states
                .entry(alert.device.clone())
                .or_insert_with(|| DeviceState::new(&alert.device, &alert.window_end));
            let first = !state.rules.contains_key(&rule);
            if first {
                state.set(
                    &rule,
                    RuleState {
                        state: Health::Ok,
                        since: alert.window_end.clone(),
                        alert_id: None,
                        score,
                    },
                );
            }
            match lifecycle.observe(&alert.device, evidence) {
                Some(t) => {
                    let msg = TransitionMessage::new(
                        &rule,
                        &alert.device,
                        lifecycle.spec(),
                        alert.model.as_deref(),
                        t,
                    );
                    state.set(
                        &rule,
                        RuleState {
                            state: msg.state,
                            since: msg.window_end.clone(),
                            alert_id: (msg.state != Health::Ok).then(|| msg.alert_id.clone()),
                            score: msg.score,
                        },
                    );
                    let silenced = match self.silenced.get(&alert.device) {
                        Some(until) if wall_ms() < *until => true,
                        Some(_) => {
                            // The silence ran out.
                            self.silenced.remove(&alert.device);
                            state.silenced_until = None;
                            false
                        }
                        None => false,
                    };
                    if silenced {
                        self.stats.lock().expect("stats lock").transitions_silenced += 1;
                    } else {
                        outs.push(Output::Transition {
                            topic,
                            message: msg,
                        });
                    }
                    outs.push(Output::State {
                        topic: state_topic,
                        state: state.clone(),
                    });
                }
                None if first => outs.push(Output::State {
                    topic: state_topic,
                    state: state.clone(),
                }),
                None => {}
            }
        }
        outs
    }
}

/// The reason code of rows the window operators refused. Exhaustive on purpose: a
/// new kind of refusal in `forewarn-stream` must be given a code here.
fn row_reason(r: forewarn_stream::RowRejection) -> Reason {
    use forewarn_stream::RowRejection as R;
    match r {
        R::Late => Reason::Late,
        R::Future => Reason::FutureTimestamp,
        R::NoTimestamp => Reason::MissingTimestamp,
        R::TooManyWindows => Reason::TooManyWindows,
        R::StateLimit => Reason::StateLimit,
    }
}

/// Scores a window row with its device's online detector (which then learns from it):
/// the row gets the score and, when the query did not select one, an explanation. A
/// query grouped by more than the device (an operating mode, say) learns each
/// combination apart: `regime_keys` are those other grouping columns.
fn score_online(d: &mut OnlineDetectors, regime_keys: &[String], start_ms: i64, alert: &mut Alert) {
    let x: Vec<f64> = d
        .features()
        .iter()
        .map(|f| {
            alert
                .features
                .get(f)
                .and_then(|v| v.as_f64())
                .unwrap_or(f64::NAN)
        })
        .collect();
    let s = if regime_keys.is_empty() {
        d.observe_at(&alert.device, start_ms, &x)
    } else {
        let mut key = alert.device.clone();
        for k in regime_keys {
            key.push('\u{1f}');
            key.push_str(&alert.features.get(k).map_or(String::new(), topic_text));
        }
        d.observe_at(&key, start_ms, &x)
    };
    alert.score = s.score;
    if let Some(e) = d.explain(&s) {
        alert
            .features
            .entry("explanation".to_string())
            .or_insert(serde_json::Value::String(e));
    }
}

/// The columns naming a row's device in source `s` (see `Source::device_key`), keyed
/// as the topic check keys them: the `device` capture, else every capture, else a
/// `device` column from the payload.
fn device_key(s: &crate::SourceInfo) -> Vec<usize> {
    let col = |name: &str| {
        s.schema
            .fields()
            .iter()
            .position(|f| f.name().eq_ignore_ascii_case(name))
    };
    let captures: Vec<&str> = s
        .template
        .as_ref()
        .map_or(vec![], |t| t.captures().collect());
    if captures.contains(&"device") || captures.is_empty() {
        return col("device").into_iter().collect();
    }
    captures.into_iter().filter_map(col).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream crate's own codes and ours agree, so counters and dead letters read
    /// as they did when the stream crate's string was published.
    #[test]
    fn row_rejections_keep_their_codes() {
        use forewarn_stream::RowRejection as R;
        for (r, want) in [
            (R::Late, Reason::Late),
            (R::Future, Reason::FutureTimestamp),
            (R::NoTimestamp, Reason::MissingTimestamp),
            (R::TooManyWindows, Reason::TooManyWindows),
            (R::StateLimit, Reason::StateLimit),
        ] {
            assert_eq!(row_reason(r), want);
            assert_eq!(row_reason(r).as_str(), r.code());
        }
    }
}
