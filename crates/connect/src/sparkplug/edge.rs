//! The publishing side of Sparkplug B: an edge node's messages (NBIRTH, DBIRTH, DDATA,
//! and the NDEATH its MQTT connection leaves as its will), encoded with the same
//! [`proto`](super::proto) types the [`Session`](super::Session) decodes. It is pure:
//! the caller publishes the (topic, payload) pairs it returns, in order, on one
//! connection.

use std::collections::HashMap;

use prost::Message;

use super::proto::{data_type as dt, Metric, Payload, Value};
use super::session::{BD_SEQ, NAMESPACE, REBIRTH};

/// A message to publish: (topic, protobuf payload).
pub type Publication = (String, Vec<u8>);

/// Refusals of the encoder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    /// Data for a device that has no DBIRTH yet.
    #[error("device '{0}' has no DBIRTH: publish its birth first")]
    NoBirth(String),
    /// A metric the device's DBIRTH did not declare.
    #[error("metric '{metric}' was not declared in the DBIRTH of device '{device}'")]
    Undeclared {
        /// The device.
        device: String,
        /// The metric.
        metric: String,
    },
}

/// One Sparkplug B edge node of group `group`, with its devices' alias tables and its
/// sequence number. Every metric is a Double; aliases are numbered from 1 per device in
/// the order its DBIRTH declares them.
#[derive(Debug, Clone)]
pub struct EdgeNode {
    group: String,
    node: String,
    bd_seq: u64,
    /// The `seq` of the next message (0 to 255, wrapping).
    seq: u8,
    /// Device → metric name → alias.
    aliases: HashMap<String, HashMap<String, u64>>,
}

impl EdgeNode {
    /// An edge node whose current MQTT connection is its `bd_seq`-th (the number its
    /// NBIRTH and its will's NDEATH both carry).
    pub fn new(group: &str, node: &str, bd_seq: u64) -> EdgeNode {
        EdgeNode {
            group: group.to_string(),
            node: node.to_string(),
            bd_seq,
            seq: 0,
            aliases: HashMap::new(),
        }
    }

    /// The group id.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The edge node id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The NDEATH to set as the connection's will (and to publish before a clean
    /// disconnect): the `bdSeq` of this session, no `seq`.
    pub fn death(&self) -> Publication {
        let payload = Payload {
            metrics: vec![bd_seq_metric(self.bd_seq, None)],
            ..Payload::default()
        };
        (self.topic("NDEATH", None), payload.encode_to_vec())
    }

    /// The NBIRTH at `now` (ms): `seq` 0, `bdSeq`, and `Node Control/Rebirth = false`.
    /// It starts a new session: every device needs its DBIRTH again.
    pub fn birth(&mut self, now: i64) -> Publication {
        self.seq = 0;
        self.aliases.clear();
        let ts = ms(now);
        let rebirth = Metric {
            name: Some(REBIRTH.to_string()),
            timestamp: Some(ts),
            datatype: Some(dt::BOOLEAN),
            value: Some(Value::BooleanValue(false)),
            ..Metric::default()
        };
        let metrics = vec![bd_seq_metric(self.bd_seq, Some(ts)), rebirth];
        self.message("NBIRTH", None, ts, metrics)
    }

    /// The DBIRTH of `device` at `ts` (ms), declaring each metric with its alias and type
    /// and carrying its current value (`None`: a null value).
    pub fn device_birth(
        &mut self,
        device: &str,
        ts: i64,
        metrics: &[(&str, Option<f64>)],
    ) -> Publication {
        let table: HashMap<String, u64> = metrics
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.to_string(), i as u64 + 1))
            .collect();
        let ts = ms(ts);
        let body = metrics
            .iter()
            .map(|(name, v)| Metric {
                name: Some(name.to_string()),
                alias: Some(table[*name]),
                datatype: Some(dt::DOUBLE),
                ..value(ts, *v)
            })
            .collect();
        self.aliases.insert(device.to_string(), table);
        self.message("DBIRTH", Some(device), ts, body)
    }

    /// Whether `device` has had its DBIRTH in this session.
    pub fn is_born(&self, device: &str) -> bool {
        self.aliases.contains_key(device)
    }

    /// A DDATA of `device`: the metrics by alias only, each with its own timestamp `ts`
    /// (ms); absent values (`None`) are not sent (report by exception).
    pub fn device_data(
        &mut self,
        device: &str,
        ts: i64,
        metrics: &[(&str, Option<f64>)],
    ) -> Result<Publication, EdgeError> {
        let table = self
            .aliases
            .get(device)
            .ok_or_else(|| EdgeError::NoBirth(device.to_string()))?;
        let ts = ms(ts);
        let mut body = Vec::with_capacity(metrics.len());
        for (name, v) in metrics {
            let Some(alias) = table.get(*name) else {
                return Err(EdgeError::Undeclared {
                    device: device.to_string(),
                    metric: name.to_string(),
                });
            };
            if v.is_some() {
                body.push(Metric {
                    alias: Some(*alias),
                    ..value(ts, *v)
                });
            }
        }
        Ok(self.message("DDATA", Some(device), ts, body))
    }

    fn topic(&self, kind: &str, device: Option<&str>) -> String {
        match device {
            Some(d) => format!("{NAMESPACE}/{}/{kind}/{}/{d}", self.group, self.node),
            None => format!("{NAMESPACE}/{}/{kind}/{}", self.group, self.node),
        }
    }

    /// A message with the next `seq`.
    fn message(
        &mut self,
        kind: &str,
        device: Option<&str>,
        ts: u64,
        metrics: Vec<Metric>,
    ) -> Publication {
        let payload = Payload {
            timestamp: Some(ts),
            metrics,
            seq: Some(u64::from(self.seq)),
            ..Payload::default()
        };
        self.seq = self.seq.wrapping_add(1);
        (self.topic(kind, device), payload.encode_to_vec())
    }
}

fn bd_seq_metric(bd_seq: u64, ts: Option<u64>) -> Metric {
    Metric {
        name: Some(BD_SEQ.to_string()),
        timestamp: ts,
        datatype: Some(dt::INT64),
        value: Some(Value::LongValue(bd_seq)),
        ..Metric::default()
    }
}

/// A Double metric's timestamp and value (`None`: flagged null).
fn value(ts: u64, v: Option<f64>) -> Metric {
    Metric {
        timestamp: Some(ts),
        is_null: v.is_none().then_some(true),
        value: v.map(Value::DoubleValue),
        ..Metric::default()
    }
}

fn ms(t: i64) -> u64 {
    t.max(0) as u64
}

/// Whether an NCMD payload asks for a rebirth (`Node Control/Rebirth = true`).
pub fn is_rebirth_request(payload: &[u8]) -> bool {
    Payload::decode(payload).is_ok_and(|p| {
        p.metrics.iter().any(|m| {
            m.name.as_deref() == Some(REBIRTH) && m.value == Some(Value::BooleanValue(true))
        })
    })
}
