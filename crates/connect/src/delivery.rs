//! The running side of a sink connector that is not the engine's MQTT publisher: it
//! takes one output at a time and says what became of it. The service queues each
//! such sink's outputs, calls [`SinkDelivery::deliver`] in order, and counts an output
//! as confirmed (for checkpoints) once it returns.

use std::future::Future;
use std::pin::Pin;

/// What became of one output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver took it.
    Delivered,
    /// It will not be delivered (refused for good, or given up on after the
    /// connector's retries): counted and logged as an error with the reason.
    Failed(String),
}

/// A future of one delivery.
pub type Delivering<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// Delivers a sink's outputs (topic and JSON payload, as [`Output::to_message`] gives
/// them), one at a time, retrying as the connector sees fit.
///
/// [`Output::to_message`]: https://docs.rs/forewarn-engine
pub trait SinkDelivery: Send + Sync + 'static {
    /// Delivers one output.
    fn deliver<'a>(&'a self, topic: &'a str, payload: Vec<u8>) -> Delivering<'a>;
}
