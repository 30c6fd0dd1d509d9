//! `connector = 'mqtt'`: sources subscribe to their `topic` filter on the engine's
//! broker, sinks publish on their topic template with QoS 1. The client itself is the
//! `forewarn-mqtt` crate; the service wires it (`forewarn::mqtt`).

use crate::{Connector, ConnectorConfig, OptionError, Options, Role, TableContext};

/// The MQTT connector.
#[derive(Debug, Clone, Copy)]
pub struct Mqtt;

/// An MQTT table's settings: all in the options every source and sink share (topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqttSettings;

impl Connector for Mqtt {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn options(&self, role: Role) -> Result<&'static [&'static str], String> {
        match role {
            Role::Source | Role::Sink => Ok(&[]),
            Role::Table => {
                Err("an mqtt table is a stream: use connector = 'file' for reference data".into())
            }
        }
    }

    fn configure(&self, _: &TableContext<'_>, _: &Options) -> Result<ConnectorConfig, OptionError> {
        Ok(ConnectorConfig::new("mqtt", MqttSettings))
    }
}
