//! `connector = 'mqtt'`: sources subscribe to their `topic` filter on the engine's
//! broker, sinks publish on their topic template with QoS 1. The client itself is the
//! `forewarn-mqtt` crate; the service wires it (`forewarn::mqtt`).

use forewarn_core::Millis;

use crate::{Connector, ConnectorConfig, OptionError, Options, Role, TableContext};

/// The MQTT connector.
#[derive(Debug, Clone, Copy)]
pub struct Mqtt;

/// An MQTT table's settings: the topic is in the options every source and sink share;
/// a sink may add `message_expiry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MqttSettings {
    /// A sink's `message_expiry = '1 hour'`: with MQTT 5 the broker discards an output
    /// no subscriber took within this time (MQTT 3.1.1 has no message expiry: ignored).
    pub message_expiry: Option<Millis>,
}

impl Connector for Mqtt {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn options(&self, role: Role) -> Result<&'static [&'static str], String> {
        match role {
            Role::Source => Ok(&[]),
            Role::Sink => Ok(&["message_expiry"]),
            Role::Table => {
                Err("an mqtt table is a stream: use connector = 'file' for reference data".into())
            }
        }
    }

    fn configure(&self, _: &TableContext<'_>, o: &Options) -> Result<ConnectorConfig, OptionError> {
        let message_expiry = o.interval("message_expiry")?;
        if message_expiry.is_some_and(|ms| ms < 1000) {
            return Err(OptionError::at(
                "message_expiry",
                "message_expiry is whole seconds in MQTT 5: give at least '1 second'",
            ));
        }
        Ok(ConnectorConfig::new(
            "mqtt",
            MqttSettings { message_expiry },
        ))
    }
}
