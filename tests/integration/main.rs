//! Forewarn's integration tests, one module per subject, linked into one test binary.
//!
//! One binary, not one per file: every test binary links DataFusion, and twenty of
//! them filled a CI machine's disk (and spent minutes linking). Run one subject with
//! `cargo test --test integration scale_out::`. Modules that need an optional feature
//! are compiled only with it, as their `required-features` used to say.

mod common;

mod alert_delivery;
mod bad_input;
mod broker_restart;
mod channel;
mod check_errors;
mod checkpoint;
#[cfg(all(feature = "cli", feature = "broker"))]
mod cli_edges;
#[cfg(feature = "cli")]
mod crash;
#[cfg(all(feature = "cli", feature = "broker"))]
mod demo_vibration;
mod differential;
mod event_time;
mod fuzz_decoders;
#[cfg(all(feature = "http", feature = "broker"))]
mod health_page;
mod history_batches;
#[cfg(all(feature = "http", feature = "mqtt"))]
mod http_endpoint;
mod library;
#[cfg(all(feature = "cli", feature = "broker"))]
mod logs;
#[cfg(feature = "cli")]
mod models;
#[cfg(feature = "mqtt")]
mod mqtt5;
#[cfg(feature = "broker")]
mod mqtt_embedded;
#[cfg(feature = "mqtt")]
mod mqtt_mosquitto;
mod nab_reference;
mod operator_commands;
#[cfg(all(feature = "cli", feature = "broker"))]
mod scale_out;
mod shipped;
#[cfg(all(feature = "sparkplug", feature = "broker"))]
mod sparkplug;
#[cfg(all(feature = "cli", feature = "broker"))]
mod sparkplug_plant;
#[cfg(all(feature = "sparkplug", feature = "broker"))]
mod sparkplug_session;
#[cfg(all(feature = "cli", feature = "broker"))]
mod streaming;
#[cfg(feature = "tls")]
mod tls;
mod vibration;
#[cfg(all(feature = "webhook", feature = "broker"))]
mod webhook;
mod windows;
