//! `connector = 'nats'`: a source read from one partition of a JetStream stream in
//! scale-out. Devices publish on `topic` (MQTT or NATS), the server maps each message to
//! `part.{K}.{subject}` with K a partition of the device, and the stream `stream`
//! stores them. The client is the `forewarn-nats` crate; the service runs it
//! (`forewarn::nats`).

use crate::{Connector, ConnectorConfig, OptionError, Options, Role, TableContext};

/// The NATS JetStream connector.
#[derive(Debug, Clone, Copy)]
pub struct Nats;

/// Where a `connector = 'nats'` source reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSource {
    /// JetStream stream name.
    pub stream: String,
    /// Number of partitions the server's subject mapping spreads devices over.
    pub partitions: u32,
}

impl Connector for Nats {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn options(&self, role: Role) -> Result<&'static [&'static str], String> {
        match role {
            Role::Source => Ok(&["stream", "partitions"]),
            Role::Sink => Err("sinks publish over MQTT (connector = 'mqtt'); with NATS, point the engine's broker at the NATS server's MQTT listener".into()),
            Role::Table => Err("a nats table is a stream: use connector = 'file' for reference data".into()),
        }
    }

    fn configure(&self, t: &TableContext<'_>, o: &Options) -> Result<ConnectorConfig, OptionError> {
        let name = t.name;
        let stream = o.get("stream").ok_or_else(|| {
            OptionError::at(
                "connector",
                format!("nats source '{name}' needs stream = '<JetStream stream>'"),
            )
        })?;
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if stream.is_empty() || !stream.chars().all(valid) {
            return Err(OptionError::at(
                "stream",
                format!("stream name '{stream}' may use only letters, digits, '-' and '_'"),
            ));
        }
        let Some(p) = o.get("partitions") else {
            return Err(OptionError::at(
                "connector",
                format!("nats source '{name}' needs partitions = '<N>', the N of the server's subject mapping"),
            ));
        };
        let partitions = match p.trim().parse::<u32>() {
            Ok(n) if (1..=4096).contains(&n) => n,
            _ => {
                return Err(OptionError::at(
                    "partitions",
                    format!("partitions = '{p}' must be a whole number from 1 to 4096"),
                ))
            }
        };
        if !t.event_time {
            return Err(OptionError::table(format!("nats source '{name}' needs event time (WATERMARK FOR <column> AS ...): after a takeover the stream is replayed, and arrival times would change the windows")));
        }
        Ok(ConnectorConfig::new(
            "nats",
            NatsSource {
                stream: stream.to_string(),
                partitions,
            },
        ))
    }
}
