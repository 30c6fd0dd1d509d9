//! What a connector hands the engine: one message and what its delivery needs, and
//! what a checkpoint gives back to the connector to resume from.

use serde::{Deserialize, Serialize};

/// Called once the effect of an input message is safe: right after it is processed
/// without checkpoints, after the checkpoint that covers it with them (e.g. sends the
/// MQTT PUBACK).
pub type Ack = Box<dyn FnOnce() + Send>;

/// One message from a connector: the topic it came on, its bytes, and how its
/// connector learns that its effect is safe. Messages on `{prefix}/command/{device}`
/// are operator commands; the rest are readings for the sources whose topic filter
/// matches.
pub struct Envelope {
    /// Topic (MQTT topic, NATS subject with `/` levels, or a recorded one).
    pub topic: String,
    /// Payload (JSON).
    pub payload: Vec<u8>,
    /// What the connector needs back.
    pub delivery: Delivery,
}

impl Envelope {
    /// A message whose connector needs nothing back (a file, a library caller).
    pub fn new(topic: impl Into<String>, payload: Vec<u8>) -> Self {
        Envelope {
            topic: topic.into(),
            payload,
            delivery: Delivery::None,
        }
    }

    /// The same message with `delivery`.
    pub fn with(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("topic", &self.topic)
            .field("bytes", &self.payload.len())
            .field("delivery", &self.delivery)
            .finish()
    }
}

/// A connector's delivery guarantee, as one message carries it.
pub enum Delivery {
    /// Nothing to tell: the message is as good as processed once taken.
    None,
    /// At least once with acknowledgements (MQTT QoS 1): `ack` is called once the
    /// message's effect is safe, in the order messages were pushed. `id` (say an MQTT
    /// packet id and content hash), when given, becomes part of the checkpoint's
    /// [`ResumePoint`]: if the process dies before the acknowledgement reaches the
    /// broker, the next start recognises the redelivered message instead of counting
    /// it twice.
    Ack {
        /// Called once the effect is safe.
        ack: Ack,
        /// The connector's id of the message.
        id: Option<u64>,
    },
    /// A replayable log (a JetStream sequence): the message's position. The resume
    /// point is the position of the last message a checkpoint covers.
    Position(u64),
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Delivery::None => write!(f, "None"),
            Delivery::Ack { id, .. } => write!(f, "Ack({id:?})"),
            Delivery::Position(p) => write!(f, "Position({p})"),
        }
    }
}

/// Where the connector resumes after a restart from a checkpoint: the position of the
/// last message it covers (replayable logs), and the ids of the messages acknowledged
/// right after it was written (acknowledging connectors). Opaque to the rest of the
/// engine; kept in the checkpoint file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    pub(crate) position: Option<u64>,
    pub(crate) released: Vec<u64>,
}

impl ResumePoint {
    /// The position of the last message covered: a replayable connector reads on
    /// after it.
    pub fn position(&self) -> Option<u64> {
        self.position
    }

    /// Ids of messages acknowledged right after the checkpoint: a redelivery of one of
    /// them is a message already counted.
    pub fn acknowledged_ids(&self) -> &[u64] {
        &self.released
    }
}
