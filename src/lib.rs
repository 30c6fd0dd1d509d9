//! # Forewarn
//!
//! A stream-processing predictive-maintenance engine: MQTT sensor streams → Arrow
//! record batches → analyst-written SQL with event-time windows (Apache DataFusion)
//! → anomaly models (linfa) → alerts on MQTT topics.
//!
//! This crate is the facade. Gateways embed the [`Pipeline`] directly (no broker,
//! no global state; build with `default-features = false`); the [`mqtt`] module
//! (feature `mqtt`) connects a pipeline to a broker, and the feature `broker` adds
//! the embedded rumqttd broker used by `forewarn demo` and the tests.

/// The Arrow version Forewarn is built on, for building `RecordBatch`es to push.
pub use datafusion::arrow;
pub use forewarn_alerts::{Health, TransitionKind};
/// Event time as epoch milliseconds from RFC 3339 text and back, as readings carry it.
pub use forewarn_core::{format_rfc3339, parse_rfc3339};
pub use forewarn_engine::{
    verify_checkpoint, Ack, Alert, CheckpointConfig, CheckpointError, CheckpointStore, DeadLetter,
    DeviceState, DirStore, EngineConfig, EngineError, EngineStats, Model, ModelRegistry, Output,
    Pipeline, PipelineBuilder, PipelineHandle, Reason, SourceInfo, TransitionMessage,
};
pub use forewarn_scorer::{metrics, online, Detector, ModelError, ModelKind, TrainOptions};
pub use forewarn_sql::{QuerySet, SqlError};

#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "history")]
pub mod replay;
pub mod training;

/// The README's Rust example is compiled and run as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
