//! # Forewarn
//!
//! A stream-processing predictive-maintenance engine: MQTT sensor streams → Arrow
//! record batches → analyst-written SQL with event-time windows (Apache DataFusion)
//! → anomaly models (linfa) → alerts on MQTT topics.
//!
//! This crate is the facade. Gateways embed the [`Pipeline`] directly (no broker,
//! no global state; build with `default-features = false`; the guide is
//! `docs/embedding.md`); the `mqtt` module (feature `mqtt`) connects a pipeline to a broker, and the feature `broker` adds
//! the embedded rumqttd broker used by `forewarn demo` and the tests.

/// The Arrow version Forewarn is built on, for building `RecordBatch`es to push.
pub use datafusion::arrow;
/// The ndarray version [`Model::train`] takes its data in, so no caller pins it by hand.
pub use ndarray;

// The pipeline: building, pushing (messages, batches, records), outputs, limits,
// checkpoints; `blocking` for code without an async runtime.
pub use forewarn_engine::{
    blocking, split_by_sink, verify_checkpoint, Ack, Alert, BatchError, CheckpointConfig,
    CheckpointError, CheckpointStore, ConnectorState, DeadLetter, Delivery, DeviceState, DirStore,
    EngineConfig, EngineError, EngineStats, Envelope, Model, ModelRegistry, Output, OutputPolicy,
    Pipeline, PipelineBuilder, PipelineHandle, QueryInfo, Reason, ResumePoint, SinkInfo,
    SinkOutputs, SourceGauges, SourceInfo, StreamError, Timestamp, TopicTemplate,
    TransitionMessage, WindowObserver, WindowRow,
};
// What the public fields and signatures of outputs and lifecycles name.
pub use forewarn_alerts::{
    Acknowledgement, Cause, Command, Health, LifecycleSpec, RuleState, Transition, TransitionKind,
    WindowEvidence,
};
// Event time: epoch milliseconds from RFC 3339 text and back, as readings carry it.
pub use forewarn_core::{format_rfc3339, parse_rfc3339, BadTimestamp, OutOfRange};
// Models: kinds, their parameters, training options, metrics, online detectors.
/// The connector boundary: typed `WITH` options of each connector, the registry.
pub use forewarn_connect as connect;
pub use forewarn_scorer::{metrics, online, Detector, ModelError, ModelKind, TrainOptions};
pub use forewarn_scorer::{
    GmmParams, KmeansParams, KnnParams, OcsvmParams, PcaParams, PcaStatistic, RobustParams,
};
pub use forewarn_sql::{QuerySet, SqlError, SqlErrorKind};

// Forewarn as a process (the `forewarn-service` crate).
/// The operations endpoint (`/metrics`, `/healthz`, `/readyz`; the `forewarn-http`
/// crate, feature `http`).
#[cfg(feature = "http")]
pub use forewarn_http as http;
pub use forewarn_service::config;
#[cfg(feature = "mqtt")]
pub use forewarn_service::mqtt;
#[cfg(feature = "nats")]
pub use forewarn_service::nats;
#[cfg(feature = "history")]
pub use forewarn_service::replay;
#[cfg(feature = "mqtt")]
pub use forewarn_service::sinks;
pub use forewarn_service::training;

mod allocator;
pub use allocator::{keep_freed_memory, KEEP_FREED_BYTES};

/// The README's Rust example is compiled and run as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
