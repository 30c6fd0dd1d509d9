//! Forewarn as a process: what turns the embeddable [`forewarn_engine::Pipeline`] into
//! a service. The `forewarn` crate re-exports these modules (`forewarn::mqtt`, ...);
//! its CLI runs them.
//!
//! * [`mqtt`] (feature `mqtt`): a pipeline on a broker — subscriptions, operator
//!   commands, QoS 1 outputs with ack-after-checkpoint, store and forward;
//! * `sparkplug` (feature `sparkplug`): Sparkplug B sources read beside the MQTT ones
//!   (births, aliases, deaths, rebirth requests), started by [`mqtt::start`];
//! * [`sinks`] (with `mqtt`): sinks whose connector delivers itself (webhooks) beside
//!   the MQTT publisher;
//! * [`nats`] (feature `nats`): scale-out workers reading partitions of a JetStream
//!   stream, with leases and checkpoints in NATS;
//! * [`replay`] (feature `history`): backtests over recorded history through the same
//!   pipeline;
//! * [`config`]: the configuration file, typed: the engine's sections and each
//!   connector's;
//! * [`training`]: feature rows and labels collected from a pipeline's outputs.

pub mod config;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "history")]
pub mod replay;
#[cfg(feature = "mqtt")]
pub mod sinks;
#[cfg(feature = "sparkplug")]
mod sparkplug;
#[cfg(all(feature = "sparkplug", feature = "history"))]
mod sparkplug_replay;
pub mod training;
