//! The Forewarn pipeline: decoding, streaming SQL, scoring and alerts, wired together.
//!
//! This is the embeddable API. It needs no broker and no global state: build a
//! [`Pipeline`] from query files and models, [`Pipeline::start`] it inside your tokio
//! runtime, push readings through the [`PipelineHandle`] (JSON bytes with their
//! topic or for a source by name, or Arrow batches), and read [`Output`]s from the
//! receiver: for sinks without a lifecycle, the result rows of anomaly queries
//! (`Output::Alert`: the query selects a `score` or calls a model) and of other queries
//! (`Output::Row`: aggregates); for sinks with one, its state changes
//! (`Output::Transition`) and device states (`Output::State`); and dead letters. Read
//! them while pushing: the channel is bounded, and the pipeline waits for room (or,
//! with [`OutputPolicy::DropOldest`], drops the oldest unread output, counted). Memory
//! is bounded by the channel capacities, the micro-batch size and the open windows'
//! aggregate state. Code without an async runtime uses [`blocking::BlockingPipeline`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use forewarn_engine::{Output, Pipeline};
//! let pipeline = Pipeline::builder()
//!     .query_file("queries/plant_health.sql")
//!     .models_dir("models")
//!     .build()
//!     .await?;
//! let (handle, mut outputs) = pipeline.start();
//! let reader = tokio::spawn(async move {
//!     while let Some(out) = outputs.recv().await {
//!         match out {
//!             Output::Transition { message, .. } => println!("{} {:?}", message.device, message.transition),
//!             Output::State { state, .. } => println!("{} {:?}", state.device, state.state),
//!             Output::Alert { alert, .. } => println!("{} {:?}", alert.device, alert.score),
//!             Output::Row { row, .. } => println!("{} {} {:?}", row.device, row.window_end, row.columns),
//!             Output::DeadLetter { letter, .. } => println!("refused: {}", letter.reason),
//!             _ => {} // Output may gain kinds in later versions
//!         }
//!     }
//! });
//! handle.push_json("plant/s1/l1/pump-0001/telemetry", br#"{"ts": 0, "vibration": 1.0}"#.to_vec()).await?;
//! handle.finish().await?;
//! drop(handle);
//! reader.await?; // the channel ends once the pipeline has stopped
//! # Ok(()) }
//! ```

mod admission;
mod batches;
mod checkpoint;
mod checkpointing;
mod delivery;
mod envelope;
mod handle;
mod health;
mod latency;
mod observer;
mod offline;
mod origins;
mod outputs;
mod rows;
mod runtime;
mod settings;
mod sources;
mod split;
mod stats;

pub use batches::BatchError;
pub use delivery::OutputPolicy;
pub mod blocking;
pub use checkpoint::{
    verify_checkpoint, CheckpointConfig, CheckpointError, CheckpointStore, DirStore,
    CHECKPOINT_FORMAT,
};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use envelope::{Ack, Delivery, Envelope, ResumePoint};
pub use forewarn_alerts::{Alert, DeviceState, Health, TransitionMessage, WindowRow};
pub use forewarn_core::{Reason, Timestamp, UnknownReason};
use forewarn_formats::JsonDecoder;
/// Types public signatures name: a source's topic template, a window operator's error.
pub use forewarn_formats::TopicTemplate;
pub use forewarn_formats::{Readings, Scalar, Table};
pub use forewarn_scorer::{Model, ModelRegistry};
use forewarn_sql::{CompiledQuery, QuerySet, SqlError};
pub use forewarn_stream::StreamError;
pub use handle::PipelineHandle;
pub(crate) use handle::{Input, Route};
pub use latency::LatencyHistograms;
pub use observer::WindowObserver;
use serde::{Deserialize, Serialize};
pub use settings::{topic_prefix_problem, CheckpointSettings, EngineSettings};
pub use split::{split_by_sink, SinkOutputs};
pub use stats::{EngineStats, SourceGauges};
use std::sync::atomic::AtomicU64;
use tokio::sync::{mpsc, oneshot};

/// Errors from building or driving a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A query file is wrong (the message carries file, line and column).
    #[error("{0}")]
    Sql(#[from] SqlError),
    /// A model file is wrong.
    #[error(transparent)]
    Model(#[from] forewarn_scorer::ModelError),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The configuration is inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// The streaming runtime failed.
    #[error(transparent)]
    Stream(#[from] forewarn_stream::StreamError),
    /// A checkpoint could not be read, is damaged, or does not fit the queries.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The pipeline has stopped (its task ended or panicked).
    #[error("the pipeline has stopped")]
    Stopped,
    /// A message was pushed by the name of a source no query reads
    /// ([`PipelineHandle::push_to`]): a mistake of the caller, not of the input.
    #[error("no query reads source '{name}' (the pipeline's sources: {})", .known.join(", "))]
    UnknownSource {
        /// The name pushed to.
        name: String,
        /// The sources the queries read, in [`Pipeline::sources`] order.
        known: Vec<String>,
    },
    /// A message was pushed by the name of a source that reads columns from the
    /// topic ([`PipelineHandle::push_to`]): without one, every reading would lack them.
    #[error("source '{name}' reads columns from the topic (topic_template = '{template}'): push its messages with their topic (PipelineHandle::push)")]
    NeedsTopic {
        /// The source.
        name: String,
        /// Its topic template.
        template: String,
    },
    /// A pushed batch or records do not fit the source (nothing of them was taken).
    #[error(transparent)]
    Batch(#[from] BatchError),
}

/// Tunables with defaults suitable for a gateway.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A micro-batch closes when it holds this many readings...
    pub max_batch_rows: usize,
    /// ...or when its first reading has waited this long...
    pub max_batch_delay: Duration,
    /// ...or as soon as no further message is waiting (low latency when the engine keeps
    /// up; full batches when it does not). When messages have been arriving back to back,
    /// one at a time (the last such close under 200 µs ago), the batch instead lingers up
    /// to about a millisecond or two for the ones that follow: closing a batch per
    /// message would cost the fixed part of a batch for each.
    pub flush_when_idle: bool,
    /// Payloads larger than this are dead-lettered.
    pub max_payload_bytes: usize,
    /// Capacity of the input and output channels (messages); pushing waits when full.
    pub channel_capacity: usize,
    /// Prefix of the engine's own topics (`{prefix}/deadletter/...`, `{prefix}/late/...`,
    /// `{prefix}/state/{device}`). The builder refuses one those topics could not be
    /// published to (a wildcard, an empty level; see [`topic_prefix_problem`]).
    pub topic_prefix: String,
    /// Bytes of a bad payload copied into its dead letter.
    pub dead_letter_excerpt: usize,
    /// Honour sources' `idle_timeout` and move processing-time watermarks with the wall
    /// clock. Replay turns this off: history is timed by its own event times only.
    pub wall_clock: bool,
    /// How often the model directories are checked for changed files, which are then
    /// swapped in atomically (`None`: never).
    pub model_reload_interval: Option<Duration>,
    /// Checkpoint the state to a directory, restore it on start, and acknowledge input
    /// only once a checkpoint covers it (`None`: no checkpoints; input is acknowledged
    /// as soon as it is taken, and state is lost when the process stops).
    pub checkpoint: Option<CheckpointConfig>,
    /// A message to an event-time source whose topic and bytes equal one of the last
    /// this many messages is a resend: dead-lettered as `duplicate`, not counted twice
    /// (0: off; at most 2^30, a larger value remembers 2^30 and logs a warning). Costs 24
    /// bytes per remembered message: its hash, kept in arrival order, and a slot of a
    /// table twice the window's size.
    pub duplicate_window: usize,
    /// Distinct devices a source admits (the device named by its topic template); a
    /// message from one more is dead-lettered as `too_many_devices`, so a flood of new
    /// ids cannot exhaust memory.
    pub max_devices: usize,
    /// Windows (panes) one query keeps open at once; rows that would open another are
    /// dead-lettered as `too_many_windows`.
    pub max_open_windows: usize,
    /// Window state (open aggregates and panes kept for later windows) above which
    /// input is refused, dead-lettered as `state_limit` and logged, until windows close
    /// and free it: a clear error instead of the process being killed for memory.
    pub max_state_bytes: usize,
    /// Rules with a lifecycle also emit every window row, with its score, as an
    /// [`Output::Alert`] (for analysis: `forewarn eval --windows`); off by default, when
    /// they emit only transitions and states.
    pub window_rows: bool,
    /// What happens when the caller does not take outputs as fast as they come: wait
    /// ([`OutputPolicy::Block`], the default) or drop the oldest, counted
    /// ([`OutputPolicy::DropOldest`]).
    pub output_policy: OutputPolicy,
    /// Called with every scored window of a rule with a lifecycle (see
    /// [`WindowObserver`]); `None` (the default) for none.
    pub window_observer: Option<WindowObserver>,
    /// Threads that turn a large window result (over 1,024 rows, a window of a large
    /// fleet) into outputs, a piece each, when its sink has no lifecycle: the outputs
    /// and their order are the same for any number. Default: 2 where the process may use
    /// more than one core, else 1 (values below 1 count as 1).
    pub output_threads: usize,
}

/// The default [`EngineConfig::output_threads`]: 2 where the process may use more than
/// one core.
pub fn default_output_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch_rows: 4096,
            max_batch_delay: Duration::from_millis(100),
            flush_when_idle: true,
            max_payload_bytes: 256 * 1024,
            channel_capacity: 1024,
            topic_prefix: "forewarn".into(),
            dead_letter_excerpt: 256,
            wall_clock: true,
            model_reload_interval: Some(Duration::from_secs(2)),
            checkpoint: None,
            duplicate_window: 65_536,
            max_devices: 250_000,
            max_open_windows: 10_000,
            max_state_bytes: 1 << 30,
            window_rows: false,
            output_policy: OutputPolicy::Block,
            window_observer: None,
            output_threads: default_output_threads(),
        }
    }
}

/// Something the pipeline publishes. New kinds may be added: match with a `_` arm.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "output", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Output {
    /// An alert: a result row of an anomaly query (it selects a `score` or calls a
    /// model) whose sink has no lifecycle, for the sink topic. (Also every scored window
    /// row of a rule with a lifecycle, with [`EngineConfig::window_rows`].)
    Alert {
        /// Topic rendered from the sink's template, e.g. `forewarn/alerts/pump-0007`.
        topic: String,
        /// The alert.
        alert: Alert,
    },
    /// A result row of any other query whose sink has no lifecycle (aggregates, not an
    /// alert), for the sink topic. Published in the alert format without `score` and
    /// `model`.
    Row {
        /// Topic rendered from the sink's template.
        topic: String,
        /// The row.
        row: WindowRow,
    },
    /// A change of a device's alert state under a rule with a lifecycle (QoS 1).
    Transition {
        /// Topic rendered from the sink's template.
        topic: String,
        /// The transition.
        message: TransitionMessage,
    },
    /// A device's current health, for the retained state topic `{prefix}/state/{device}`.
    State {
        /// The topic.
        topic: String,
        /// The state.
        state: DeviceState,
    },
    /// Input that could not be used, with the reason.
    DeadLetter {
        /// `{prefix}/deadletter/{source}` or `{prefix}/late/{source}`.
        topic: String,
        /// What was rejected and why.
        letter: DeadLetter,
    },
}

impl Output {
    /// Whether the message is published retained (device state: a new subscriber sees
    /// the fleet's current health at once).
    pub fn retained(&self) -> bool {
        matches!(self, Output::State { .. })
    }

    /// The query an alert, a window row or a transition comes from (its sink's outputs
    /// are told apart by it); `None` for device states and dead letters.
    pub fn query(&self) -> Option<&str> {
        match self {
            Output::Alert { alert, .. } => Some(&alert.query),
            Output::Row { row, .. } => Some(&row.query),
            Output::Transition { message, .. } => Some(&message.rule),
            Output::State { .. } | Output::DeadLetter { .. } => None,
        }
    }

    /// The topic it is published on.
    pub fn topic(&self) -> &str {
        match self {
            Output::Alert { topic, .. }
            | Output::Row { topic, .. }
            | Output::Transition { topic, .. }
            | Output::State { topic, .. }
            | Output::DeadLetter { topic, .. } => topic,
        }
    }

    /// Appends the JSON payload of [`to_message`](Self::to_message) to `out` (a window
    /// row's written in place: a backtest writes one per window result).
    pub fn write_payload(&self, out: &mut Vec<u8>) {
        match self {
            Output::Row { row, .. } => row.write_json(out),
            other => out.extend_from_slice(&other.to_message().1),
        }
    }

    /// Topic and JSON payload, ready to publish.
    pub fn to_message(&self) -> (String, Vec<u8>) {
        match self {
            Output::Alert { topic, alert } => (topic.clone(), alert.to_json()),
            Output::Row { topic, row } => (topic.clone(), row.to_json()),
            Output::Transition { topic, message } => (topic.clone(), message.to_json()),
            Output::State { topic, state } => (topic.clone(), state.to_json()),
            Output::DeadLetter { topic, letter } => (
                topic.clone(),
                serde_json::to_vec(letter).expect("serialises"),
            ),
        }
    }
}

/// A rejected message or reading.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    /// Stable reason code (`not_json`, `missing_field`, `late`, ...); serialised as
    /// that string.
    pub reason: Reason,
    /// Human-readable detail.
    pub detail: String,
    /// Topic the input arrived on (empty for pushed batches and for messages pushed
    /// by source name).
    pub source_topic: String,
    /// Source table, when known.
    pub source: Option<String>,
    /// Index of the reading within an array message.
    pub index: Option<usize>,
    /// The start of the payload (lossy UTF-8), or the rejected row as JSON.
    pub excerpt: String,
}

/// Builds a [`Pipeline`].
#[derive(Default)]
pub struct PipelineBuilder {
    files: Vec<(String, String)>,
    paths: Vec<PathBuf>,
    model_dirs: Vec<PathBuf>,
    models: Vec<Model>,
    registry: Option<Arc<ModelRegistry>>,
    config: EngineConfig,
    set: Option<QuerySet>,
}

impl PipelineBuilder {
    /// Adds a query file by path (a directory adds every `*.sql` in it).
    pub fn query_file(mut self, path: impl AsRef<Path>) -> Self {
        self.paths.push(path.as_ref().to_path_buf());
        self
    }
    /// Adds query text; `name` is used as its file name in messages and query names.
    pub fn query_sql(mut self, name: &str, sql: &str) -> Self {
        self.files.push((name.to_string(), sql.to_string()));
        self
    }
    /// Uses an already parsed query set (e.g. a derived feature query).
    pub fn query_set(mut self, set: QuerySet) -> Self {
        self.set = Some(set);
        self
    }
    /// Loads every model file in `dir`.
    pub fn models_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.model_dirs.push(dir.as_ref().to_path_buf());
        self
    }
    /// Adds a model object.
    pub fn model(mut self, m: Model) -> Self {
        self.models.push(m);
        self
    }
    /// Shares an existing registry (models can then be swapped while running).
    pub fn registry(mut self, r: Arc<ModelRegistry>) -> Self {
        self.registry = Some(r);
        self
    }
    /// Sets the tunables.
    pub fn config(mut self, c: EngineConfig) -> Self {
        self.config = c;
        self
    }

    /// Parses, plans and checks everything. Nothing runs yet.
    pub async fn build(self) -> Result<Pipeline, EngineError> {
        if let Some(why) = topic_prefix_problem(&self.config.topic_prefix) {
            return Err(EngineError::Config(format!(
                "topic_prefix {:?}: {why}",
                self.config.topic_prefix
            )));
        }
        if self.config.output_policy == OutputPolicy::DropOldest {
            if self.config.channel_capacity < 2 {
                return Err(EngineError::Config(
                    "output_policy DropOldest needs a channel_capacity of at least 2".into(),
                ));
            }
            if self
                .config
                .checkpoint
                .as_ref()
                .is_some_and(|c| c.confirm_outputs)
            {
                return Err(EngineError::Config(
                    "output_policy DropOldest cannot be used with checkpoint.confirm_outputs: \
                     outputs are confirmed by count, and a dropped one would count as delivered"
                        .into(),
                ));
            }
        }
        let registry = self.registry.unwrap_or_default();
        for d in &self.model_dirs {
            registry.load_dir(d)?;
        }
        for m in self.models {
            m.check()?;
            registry.insert(m);
        }
        let mut files = self.files;
        for p in &self.paths {
            for f in sql_files(p)? {
                let text = std::fs::read_to_string(&f).map_err(|source| EngineError::Io {
                    path: f.clone(),
                    source,
                })?;
                files.push((f.display().to_string(), text));
            }
        }
        if files.is_empty() && self.set.is_none() {
            return Err(EngineError::Config("no query files given".into()));
        }
        let mut set = self.set.unwrap_or_default();
        for (name, text) in &files {
            set.add_file(name, text)?;
        }
        if set.queries.is_empty() {
            return Err(EngineError::Config(
                "the query files declare no INSERT INTO ... SELECT query".into(),
            ));
        }
        let ctx = forewarn_sql::streaming_context(registry.clone());
        for r in set.references.values() {
            if set.queries.iter().any(|q| q.references.contains(&r.name)) {
                forewarn_sql::register_reference(&ctx, r)?;
            }
        }
        let text_of = |file: &str| {
            files
                .iter()
                .find(|(n, _)| n == file)
                .map(|f| f.1.as_str())
                .unwrap_or("")
        };
        let mut queries = Vec::new();
        let mut device_columns = BTreeMap::new();
        let mut lifecycles = BTreeMap::new();
        let mut rated = BTreeMap::new();
        let mut online = BTreeMap::new();
        for q in &set.queries {
            let compiled =
                forewarn_sql::compile(&ctx, q, &set.sources[&q.source], text_of(&q.file)).await?;
            let sink = &set.sinks[&q.sink];
            let bound = forewarn_sql::bind_sink(sink, &compiled, text_of(&sink.file))?;
            device_columns.insert(q.name.clone(), bound.device_column);
            if let Some(l) = bound.lifecycle {
                lifecycles.insert(q.name.clone(), l);
            }
            if let Some(n) = bound.rated {
                rated.insert(q.name.clone(), n);
            }
            if let Some(o) = bound.online {
                online.insert(q.name.clone(), o);
            }
            queries.push(Arc::new(compiled));
        }
        let mut sources = Vec::new();
        for s in set.sources.values() {
            if !queries.iter().any(|q| q.source == s.name) {
                continue;
            }
            let template = match &s.topic_template {
                Some(t) => Some(TopicTemplate::parse(t).map_err(|e| {
                    EngineError::Config(format!("source '{}' ({}): {e}", s.name, s.origin))
                })?),
                None => None,
            };
            JsonDecoder::new(
                s.schema.clone(),
                template.clone(),
                self.config.max_payload_bytes,
            )
            .map_err(|e| EngineError::Config(format!("source '{}': {e}", s.name)))?;
            let late_topic = match &s.late_topic {
                Some(t) => Some(TopicTemplate::parse(t).map_err(|e| {
                    EngineError::Config(format!(
                        "source '{}' ({}): late_topic: {e}",
                        s.name, s.origin
                    ))
                })?),
                None => None,
            };
            sources.push(SourceInfo {
                name: s.name.clone(),
                topic_filter: s.topic.clone(),
                template,
                schema: s.schema.clone(),
                event_time: s.event_time.clone(),
                processing_time: s.processing_time,
                watermark: s.watermark,
                idle_timeout: s.idle_timeout.map(|ms| Duration::from_millis(ms as u64)),
                late_topic,
                connector: s.connector.clone(),
                max_samples: s.max_samples,
            });
        }
        // The store may block (a network store): off the async threads.
        let loaded = match &self.config.checkpoint {
            Some(c) => {
                let store = c.store.clone();
                tokio::task::spawn_blocking(move || checkpoint::load_newest(store.as_ref()))
                    .await
                    .map_err(|e| EngineError::Config(format!("checkpoint task: {e}")))??
            }
            None => None,
        };
        let restored = match loaded {
            Some((file, snap)) => {
                checkpoint::check_fit(&file, &snap, &queries)?;
                tracing::info!(checkpoint = %file.display(), seq = snap.seq, "restoring state");
                Some(snap)
            }
            None => None,
        };
        let mut sinks = BTreeMap::new();
        let mut sink_infos = Vec::new();
        for s in set.sinks.values() {
            let t = TopicTemplate::parse(&s.topic)
                .map_err(|e| EngineError::Config(format!("sink '{}': {e}", s.name)))?;
            sinks.insert(s.name.clone(), t.clone());
            let queries: Vec<String> = set
                .queries
                .iter()
                .filter(|q| q.sink == s.name)
                .map(|q| q.name.clone())
                .collect();
            if !queries.is_empty() {
                sink_infos.push(SinkInfo {
                    name: s.name.clone(),
                    topic: t,
                    connector: s.connector.clone(),
                    queries,
                });
            }
        }
        Ok(Pipeline {
            config: self.config,
            queries,
            sources,
            sinks,
            sink_infos,
            connectors: set.connectors.clone(),
            lifecycles,
            rated,
            device_columns,
            online,
            registry,
            model_dirs: self.model_dirs,
            restored,
            connector_states: BTreeMap::new(),
        })
    }
}

fn sql_files(p: &Path) -> Result<Vec<PathBuf>, EngineError> {
    let io = |source| EngineError::Io {
        path: p.to_path_buf(),
        source,
    };
    if p.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.extension().is_some_and(|x| x == "sql"))
            .collect();
        if v.is_empty() {
            return Err(EngineError::Config(format!(
                "{}: the directory has no .sql files",
                p.display()
            )));
        }
        v.sort();
        Ok(v)
    } else {
        std::fs::metadata(p).map_err(io)?;
        Ok(vec![p.to_path_buf()])
    }
}

/// A source the pipeline reads, for connectors that need to subscribe.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// Table name.
    pub name: String,
    /// MQTT topic filter; empty for a source without a topic (`connector =
    /// 'channel'`), which takes only messages pushed by its name
    /// ([`PipelineHandle::push_to`]).
    pub topic_filter: String,
    /// Topic template, if declared.
    pub template: Option<TopicTemplate>,
    /// Declared schema (with the implicit `arrival_time` column for processing time).
    pub schema: datafusion::arrow::datatypes::SchemaRef,
    /// The event-time column (`arrival_time` for processing time).
    pub event_time: String,
    /// Timed by arrival: the engine fills `arrival_time`.
    pub processing_time: bool,
    /// How its watermark trails event time (`WATERMARK FOR ... - INTERVAL`, max_future,
    /// per-key watermarks).
    pub watermark: forewarn_core::WatermarkSpec,
    /// Wall-clock time without input after which the watermark moves with the clock.
    pub idle_timeout: Option<Duration>,
    /// Where late rows go (default `{prefix}/late/{source}`).
    pub late_topic: Option<TopicTemplate>,
    /// The connector delivering its readings, with its settings (for `connector =
    /// 'nats'`, a [`forewarn_connect::nats::NatsSource`]).
    pub connector: forewarn_connect::ConnectorConfig,
    /// Samples one waveform (`DOUBLE[]`) value may hold (`max_samples`).
    pub max_samples: usize,
}

/// A sink the pipeline's queries write to, for the service that delivers its outputs.
#[derive(Debug, Clone)]
pub struct SinkInfo {
    /// Table name.
    pub name: String,
    /// The topic template its outputs are published on (or labelled with); for a sink
    /// without a topic (`connector = 'channel'`), the table's name.
    pub topic: TopicTemplate,
    /// The connector taking its outputs, with its settings (for `connector =
    /// 'webhook'`, a [`forewarn_connect::webhook::WebhookSink`]).
    pub connector: forewarn_connect::ConnectorConfig,
    /// The queries writing to it ([`Output::query`] of their outputs).
    pub queries: Vec<String>,
}

/// A query as [`Pipeline::query_infos`] describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryInfo {
    /// Query name.
    pub name: String,
    /// The source table it reads.
    pub source: String,
    /// The sink table it writes to.
    pub sink: String,
    /// The models it calls.
    pub models: Vec<String>,
}

/// A planned pipeline, ready to start.
pub struct Pipeline {
    config: EngineConfig,
    queries: Vec<Arc<CompiledQuery>>,
    sources: Vec<SourceInfo>,
    sinks: BTreeMap<String, TopicTemplate>,
    sink_infos: Vec<SinkInfo>,
    /// The connectors the query files could name (their running sides, for the service).
    connectors: forewarn_connect::Registry,
    /// Each query's alert lifecycle, if its sink has one, with the threshold resolved
    /// (see [`forewarn_sql::bind_sink`]).
    lifecycles: BTreeMap<String, forewarn_alerts::LifecycleSpec>,
    /// Windows a device closes in 30 days, for queries whose sink's score is a trained
    /// model's surprise (its threshold stands for a false-alert rate).
    rated: BTreeMap<String, f64>,
    /// Online detectors, by query name (see [`forewarn_sql::bind_sink`]).
    online: BTreeMap<String, forewarn_sql::OnlineBinding>,
    /// The result column naming the device, by query name (see [`forewarn_sql::bind_sink`]).
    device_columns: BTreeMap<String, String>,
    registry: Arc<ModelRegistry>,
    model_dirs: Vec<PathBuf>,
    /// The checkpoint to continue from.
    restored: Option<checkpoint::Snapshot>,
    /// What each connector keeping state of its own saves with a checkpoint, by source.
    connector_states: BTreeMap<String, ConnectorState>,
}

/// A connector's own state, read when a checkpoint is written (see
/// [`Pipeline::keep_connector_state`]): JSON the connector reads back on the next start.
pub type ConnectorState = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field(
                "queries",
                &self.queries.iter().map(|q| &q.name).collect::<Vec<_>>(),
            )
            .field("sources", &self.sources)
            .finish()
    }
}

impl Pipeline {
    /// Starts building.
    pub fn builder() -> PipelineBuilder {
        PipelineBuilder::default()
    }

    /// Prefix of the engine's own topics (state, dead letters, commands).
    pub fn topic_prefix(&self) -> &str {
        &self.config.topic_prefix
    }

    /// Sources read by the queries (what an MQTT connector must subscribe to).
    pub fn sources(&self) -> &[SourceInfo] {
        &self.sources
    }

    /// Sinks written by the queries, with their connectors (what the service delivers
    /// outputs to).
    pub fn sinks(&self) -> &[SinkInfo] {
        &self.sink_infos
    }

    /// The sink the outputs of `query` go to ([`Output::query`]), if the pipeline
    /// runs that query.
    pub fn sink_of(&self, query: &str) -> Option<&SinkInfo> {
        self.sink_infos
            .iter()
            .find(|s| s.queries.iter().any(|q| q == query))
    }

    /// The connector registry the queries were parsed with.
    pub fn connectors(&self) -> &forewarn_connect::Registry {
        &self.connectors
    }

    /// One line per query whose sink learns online or takes its threshold from a
    /// false-alert rate: its features, warm-up, and the threshold with the rate it
    /// stands for.
    pub fn describe_detectors(&self) -> Vec<String> {
        let rate = |l: &forewarn_alerts::LifecycleSpec, n: Option<f64>| {
            let rate = n.map_or(String::new(), |n| {
                format!(
                    " (about {:.2} false alerts per device-month at {n:.0} windows a month)",
                    n * 10f64.powf(-l.warning_at)
                )
            });
            format!(
                "raises at surprise {:.2}{rate} after {} window(s) in a row, clears below {:.2} after {}",
                l.warning_at, l.raise_after, l.clear_below, l.clear_after
            )
        };
        let online = self.online.iter().map(|(q, o)| {
            format!(
                "{q}: learns each device online from {} feature(s) ({}); first score after {} windows; {}",
                o.features.len(),
                o.features.join(", "),
                o.spec.warmup(),
                rate(&o.lifecycle, o.windows_per_month)
            )
        });
        let calibrated = self.rated.iter().map(|(q, n)| {
            let l = &self.lifecycles[q];
            format!(
                "{q}: scores with a trained model as a surprise ('{}'); {}",
                l.score_column,
                rate(l, Some(*n))
            )
        });
        online.chain(calibrated).collect()
    }

    /// The alert lifecycle of each query whose sink has one, by query name, with its
    /// threshold resolved (from a `false_alerts` rate where one gives it).
    pub fn lifecycles(&self) -> BTreeMap<String, forewarn_alerts::LifecycleSpec> {
        self.lifecycles.clone()
    }

    /// Each query's source table, sink table and the models it calls.
    pub fn query_infos(&self) -> Vec<QueryInfo> {
        self.queries
            .iter()
            .map(|q| QueryInfo {
                name: q.name.clone(),
                source: q.source.clone(),
                sink: q.sink.clone(),
                models: q.models.clone(),
            })
            .collect()
    }

    /// Names of the queries.
    pub fn query_names(&self) -> Vec<String> {
        self.queries.iter().map(|q| q.name.clone()).collect()
    }

    /// Times windows by event time only (no idle timeouts, no wall-clock watermarks), so
    /// that replaying history gives the same results however fast it runs.
    pub fn without_wall_clock(mut self) -> Self {
        self.config.wall_clock = false;
        self
    }

    /// Each query's streaming plan: the per-pane partial half and the final half.
    pub fn explain(&self) -> Vec<String> {
        self.queries.iter().map(|q| q.explain()).collect()
    }

    /// Sequence number of the checkpoint this pipeline will continue from, if any.
    pub fn restored_checkpoint(&self) -> Option<u64> {
        self.restored.as_ref().map(|s| s.seq)
    }

    /// The state source `source`'s connector saved with the checkpoint this pipeline
    /// continues from (see [`keep_connector_state`](Self::keep_connector_state)).
    pub fn restored_connector_state(&self, source: &str) -> Option<&serde_json::Value> {
        self.restored.as_ref()?.connectors.get(source)
    }

    /// Saves `state()` with every checkpoint under source `source`'s name, for a
    /// connector that keeps state of its own beside the engine's (Sparkplug alias
    /// tables). It is read on the pipeline task at each checkpoint: it should be quick.
    /// A restored state no connector saves again is carried over unchanged.
    pub fn keep_connector_state(&mut self, source: &str, state: ConnectorState) {
        self.connector_states.insert(source.to_string(), state);
    }

    /// Where the input's connector resumes: the restored checkpoint's [`ResumePoint`]
    /// (the default, when starting fresh).
    pub fn resume_point(&self) -> ResumePoint {
        self.restored
            .as_ref()
            .map(|s| s.resume.clone())
            .unwrap_or_default()
    }

    /// With checkpoints: outputs count as delivered only when the consumer confirms
    /// them ([`CheckpointConfig::confirm_outputs`]); connectors that see the broker's
    /// acknowledgements turn this on. An [`OutputPolicy::DropOldest`] then becomes
    /// `Block` (logged): a dropped output cannot be confirmed.
    pub fn with_confirmed_outputs(mut self) -> Self {
        if let Some(c) = &mut self.config.checkpoint {
            c.confirm_outputs = true;
            if self.config.output_policy == OutputPolicy::DropOldest {
                tracing::warn!("confirmed outputs: output_policy DropOldest becomes Block");
                self.config.output_policy = OutputPolicy::Block;
            }
        }
        self
    }

    /// Whether the pipeline checkpoints (and so acknowledges input only after a
    /// checkpoint covers it).
    pub fn checkpointing(&self) -> bool {
        self.config.checkpoint.is_some()
    }

    /// The model registry (swap models in it while running).
    pub fn models(&self) -> &Arc<ModelRegistry> {
        &self.registry
    }

    /// Starts the pipeline as a task on the current tokio runtime.
    pub fn start(self) -> (PipelineHandle, mpsc::Receiver<Output>) {
        let (in_tx, in_rx) = mpsc::channel(self.config.channel_capacity);
        let (outlet, out_rx, out_depth) =
            delivery::Outlet::new(self.config.output_policy, self.config.channel_capacity);
        let stats = Arc::new(Mutex::new(EngineStats {
            max_state_bytes: self.config.max_state_bytes as u64,
            ..Default::default()
        }));
        let (alive, ended) = oneshot::channel::<()>();
        if let (Some(every), false) = (
            self.config.model_reload_interval,
            self.model_dirs.is_empty(),
        ) {
            tokio::spawn(reload_models(
                stats.clone(),
                self.registry.clone(),
                self.model_dirs.clone(),
                every,
                ended,
            ));
        }
        let confirmed = Arc::new(AtomicU64::new(0));
        let routes = self
            .sources
            .iter()
            .map(|s| Route {
                name: s.name.clone(),
                template: s.template.as_ref().map(|t| t.as_str().to_string()),
            })
            .collect();
        let targets = self
            .sources
            .iter()
            .map(|s| batches::Target {
                name: s.name.clone(),
                schema: s.schema.clone(),
                arrival: s.processing_time.then(|| s.event_time.clone()),
            })
            .collect();
        let latency = latency::LatencySlot::default();
        let rt = runtime::Runtime::new(
            self,
            outlet,
            stats.clone(),
            confirmed.clone(),
            latency.clone(),
        );
        let task = tokio::spawn(async move {
            let r = rt.run(in_rx).await;
            drop(alive);
            r
        });
        (
            PipelineHandle {
                tx: in_tx,
                stats,
                task: Arc::new(Mutex::new(Some(task))),
                confirmed,
                routes: Arc::new(routes),
                targets: Arc::new(targets),
                out_depth: Arc::new(out_depth),
                latency,
            },
            out_rx,
        )
    }
}

/// Swaps in model files that changed, until the pipeline ends. A file that does not
/// load, or that changes a model's arguments, is logged and the old model stays.
async fn reload_models(
    stats: Arc<Mutex<EngineStats>>,
    registry: Arc<ModelRegistry>,
    dirs: Vec<PathBuf>,
    every: Duration,
    mut ended: oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut ended => return,
            _ = tick.tick() => {}
        }
        for d in &dirs {
            match registry.reload_dir(d) {
                Ok(r) => {
                    if !r.reloaded.is_empty() || !r.refused.is_empty() {
                        let mut s = stats.lock().expect("stats");
                        s.model_reloads += r.reloaded.len() as u64;
                        s.model_reloads_refused += r.refused.len() as u64;
                    }
                    for m in r.reloaded {
                        tracing::info!(model = %m, dir = %d.display(), "model reloaded");
                    }
                    for (p, why) in r.refused {
                        tracing::warn!(file = %p.display(), reason = %why, "model file change refused: {why}");
                    }
                }
                Err(e) => tracing::warn!(dir = %d.display(), error = %e, "model directory: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reason codes the dead-letter schema allows, as written in the file.
    fn schema_reasons() -> Vec<String> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/schemas/deadletter.schema.json"
        );
        let text = std::fs::read_to_string(path).expect("the dead-letter schema");
        let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
        schema["properties"]["reason"]["enum"]
            .as_array()
            .expect("the schema lists the reasons as an enum")
            .iter()
            .map(|v| v.as_str().expect("a string").to_string())
            .collect()
    }

    #[test]
    fn schema_lists_exactly_the_reason_codes() {
        let mut schema = schema_reasons();
        let listed = schema.len();
        schema.sort();
        schema.dedup();
        assert_eq!(schema.len(), listed, "a reason twice in the schema");
        let mut ours: Vec<String> = Reason::ALL.iter().map(|r| r.to_string()).collect();
        ours.sort();
        assert_eq!(schema, ours);
    }

    #[test]
    fn docs_name_every_reason_code() {
        for doc in ["architecture.md", "operations.md"] {
            let path = format!("{}/../../docs/{doc}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).expect("the doc");
            for r in Reason::ALL {
                assert!(
                    text.contains(&format!("`{r}`")),
                    "{doc} does not name `{r}`"
                );
            }
        }
    }

    #[test]
    fn reasons_round_trip_through_from_str_and_serde() {
        for r in Reason::ALL {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), r);
            assert_eq!(r.as_str().parse::<Reason>(), Ok(r));
        }
        assert!(serde_json::from_str::<Reason>("\"not_a_code\"").is_err());
        assert_eq!(
            "not_a_code".parse::<Reason>(),
            Err(UnknownReason("not_a_code".into()))
        );
    }

    /// The dead letter's JSON is what it was when `reason` was a string.
    #[test]
    fn dead_letter_json_is_unchanged() {
        let letter = DeadLetter {
            reason: Reason::TooManyDevices,
            detail: "d".into(),
            source_topic: "plant/x".into(),
            source: Some("telemetry".into()),
            index: Some(2),
            excerpt: "{}".into(),
        };
        let out = Output::DeadLetter {
            topic: "forewarn/deadletter/telemetry".into(),
            letter: letter.clone(),
        };
        let (topic, bytes) = out.to_message();
        assert_eq!(topic, "forewarn/deadletter/telemetry");
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"reason":"too_many_devices","detail":"d","source_topic":"plant/x","source":"telemetry","index":2,"excerpt":"{}"}"#
        );
        let back: DeadLetter = serde_json::from_str(
            r#"{"reason":"too_many_devices","detail":"d","source_topic":"plant/x","source":"telemetry","index":2,"excerpt":"{}"}"#,
        )
        .unwrap();
        assert_eq!(back, letter);
    }
}
