//! A host application's view of Sparkplug B edge nodes: births, aliases, sequence
//! numbers and deaths, and the readings their messages carry.
//!
//! It is pure (no IO, the clock comes in as an argument): the running side feeds it
//! each message and carries out the [`Action`]s it returns, so it is tested with
//! payloads built here.

use std::collections::HashMap;
use std::sync::Arc;

use forewarn_core::Reason;
use prost::Message;

use super::proto::{data_type as dt, Metric, Payload, Value};
use super::rows::{Rows, Val};
use super::SparkplugSource;

/// The Sparkplug B topic namespace.
pub const NAMESPACE: &str = "spBv1.0";

/// The metric a birth and the node's will message carry to pair them.
pub const BD_SEQ: &str = "bdSeq";

/// The command metric asking an edge node to publish its births again.
pub const REBIRTH: &str = "Node Control/Rebirth";

/// What the running side does after a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Readings for the source (its declared columns), typed values standing for one
    /// JSON array message: push them with `PipelineHandle::push_readings_to`.
    Rows(Rows),
    /// The message is refused: dead-letter it with this reason.
    Reject {
        /// The reason code.
        reason: Reason,
        /// What was wrong, for the dead letter.
        detail: String,
    },
    /// Publish this rebirth request (QoS 0 or 1, not retained).
    Publish {
        /// `spBv1.0/{group}/NCMD/{edge_node}`.
        topic: String,
        /// The NCMD payload with `Node Control/Rebirth = true`.
        payload: Vec<u8>,
    },
    /// The device (the `device` column's value) is online (a birth) or offline (a death).
    Presence {
        /// The device.
        device: String,
        /// Online after a birth, offline after a death.
        online: bool,
    },
}

/// The aliases one edge node or device declared in its birth: alias → (name, data type).
pub(super) type Aliases = HashMap<u64, (String, u32)>;

#[derive(Debug, Default)]
pub(super) struct Node {
    /// Whether its NBIRTH has been seen since the last death or refusal.
    pub(super) born: bool,
    pub(super) bd_seq: Option<u64>,
    /// Sequence number of the last message.
    pub(super) seq: u8,
    pub(super) aliases: Aliases,
    /// Types of metrics declared by name.
    pub(super) types: HashMap<String, u32>,
    pub(super) devices: HashMap<String, Device>,
    /// When a rebirth was last requested (ms).
    pub(super) rebirth_at: Option<i64>,
}

#[derive(Debug, Default)]
pub(super) struct Device {
    pub(super) aliases: Aliases,
    pub(super) types: HashMap<String, u32>,
}

/// The message types of a Sparkplug topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NBirth,
    NData,
    NDeath,
    DBirth,
    DData,
    DDeath,
    Command,
    State,
}

/// One Sparkplug source's host state.
#[derive(Debug)]
pub struct Session {
    settings: SparkplugSource,
    /// The readings' keys: the metrics' columns, then those of `group`, `edge_node`,
    /// `device` and the event time the source declares, each once.
    keys: Arc<[String]>,
    /// Sparkplug metric name → its column in `keys`.
    columns: HashMap<String, usize>,
    /// Where `group`, `edge_node`, `device` are in `keys`, if the source declares them.
    ids: [Option<usize>; 3],
    /// Where the event-time column is in `keys`.
    time_column: Option<usize>,
    pub(super) nodes: HashMap<(String, String), Node>,
}

impl Session {
    /// A session for a source with `columns` (its declared columns) whose event time
    /// is `time_column` (`None`: timed by arrival). A metric reaches the column its
    /// `metric_map` entry names, else the column of the same name.
    pub fn new(settings: SparkplugSource, columns: &[String], time_column: Option<&str>) -> Self {
        let ids = ["group", "edge_node", "device"].map(|c| columns.iter().any(|k| k == c));
        let reserved = |c: &str| ids_named(c) || Some(c) == time_column;
        let mut map: HashMap<String, String> = columns
            .iter()
            .filter(|c| !reserved(c))
            .map(|c| (c.clone(), c.clone()))
            .collect();
        for (metric, column) in &settings.metric_map {
            map.insert(metric.clone(), column.clone());
        }
        let mut keys: Vec<String> = Vec::new();
        let mut key = |name: &str| match keys.iter().position(|k| k == name) {
            Some(i) => i,
            None => {
                keys.push(name.to_string());
                keys.len() - 1
            }
        };
        let mut metrics: Vec<(&String, &String)> = map.iter().collect();
        metrics.sort();
        let columns = metrics
            .into_iter()
            .map(|(m, c)| (m.clone(), key(c)))
            .collect();
        let ids = ["group", "edge_node", "device"]
            .into_iter()
            .zip(ids)
            .map(|(c, wanted)| wanted.then(|| key(c)))
            .collect::<Vec<_>>()
            .try_into()
            .expect("three ids");
        let time_column = time_column.map(&mut key);
        Session {
            settings,
            keys: keys.into(),
            columns,
            ids,
            time_column,
            nodes: HashMap::new(),
        }
    }

    /// The topic filter to subscribe to.
    pub fn filter(&self) -> String {
        match &self.settings.group {
            Some(g) => format!("{NAMESPACE}/{g}/#"),
            None => format!("{NAMESPACE}/#"),
        }
    }

    /// Whether a message on `topic` is for this source (its group, or any).
    pub fn accepts(&self, topic: &str) -> bool {
        let Some(rest) = topic
            .strip_prefix(NAMESPACE)
            .and_then(|r| r.strip_prefix('/'))
        else {
            return false;
        };
        match &self.settings.group {
            Some(g) => rest
                .strip_prefix(g.as_str())
                .is_some_and(|r| r.starts_with('/')),
            None => true,
        }
    }

    /// Handles one message received at wall-clock `now` (ms).
    pub fn handle(&mut self, topic: &str, payload: &[u8], now: i64) -> Vec<Action> {
        let Some((group, kind, node, device)) = parse_topic(topic) else {
            return vec![reject(
                Reason::NotSparkplug,
                format!("'{topic}' is not spBv1.0/{{group}}/{{type}}/{{edge_node}}[/{{device}}]"),
            )];
        };
        // Commands (ours and others') and host STATE messages carry no readings.
        if matches!(kind, Kind::Command | Kind::State) {
            return vec![];
        }
        let p = match Payload::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                return vec![reject(
                    Reason::NotSparkplug,
                    format!("not a Sparkplug B payload: {e}"),
                )]
            }
        };
        let key = (group.to_string(), node.to_string());
        let n = self.nodes.entry(key).or_default();
        let mut out = Vec::new();
        match kind {
            Kind::NBirth => {
                let bd_seq = p.metrics.iter().find(|m| m.name.as_deref() == Some(BD_SEQ));
                *n = Node {
                    born: true,
                    bd_seq: bd_seq.and_then(|m| as_u64(m.value.as_ref()?)),
                    seq: p.seq.unwrap_or(0) as u8,
                    rebirth_at: n.rebirth_at,
                    ..Node::default()
                };
                declare(&p.metrics, &mut n.aliases, &mut n.types);
                out.push(Action::Presence {
                    device: node.to_string(),
                    online: true,
                });
            }
            Kind::NDeath => {
                let bd_seq = p
                    .metrics
                    .iter()
                    .find(|m| m.name.as_deref() == Some(BD_SEQ))
                    .and_then(|m| as_u64(m.value.as_ref()?));
                if n.born && bd_seq.is_some() && n.bd_seq.is_some() && bd_seq != n.bd_seq {
                    return vec![reject(
                        Reason::StaleDeath,
                        format!(
                            "NDEATH of {group}/{node} with bdSeq {} while its birth has bdSeq {}: an older session's will, ignored",
                            bd_seq.unwrap_or_default(),
                            n.bd_seq.unwrap_or_default()
                        ),
                    )];
                }
                let devices: Vec<String> = n.devices.drain().map(|(d, _)| d).collect();
                *n = Node {
                    rebirth_at: n.rebirth_at,
                    ..Node::default()
                };
                out.extend(devices.into_iter().map(|device| Action::Presence {
                    device,
                    online: false,
                }));
                out.push(Action::Presence {
                    device: node.to_string(),
                    online: false,
                });
                return out;
            }
            _ => {
                if !n.born {
                    let mut out = vec![reject(
                        Reason::NoBirth,
                        format!("{topic} before the NBIRTH of edge node {group}/{node}"),
                    )];
                    out.extend(rebirth(n, group, node, now, self.settings.rebirth_interval));
                    return out;
                }
                let seq = p.seq.map(|s| s as u8);
                let expected = n.seq.wrapping_add(1);
                if let Some(s) = seq {
                    n.seq = s;
                }
                if seq.is_some_and(|s| s != expected) {
                    let mut out = vec![reject(
                        Reason::SeqGap,
                        format!(
                            "{topic}: seq {} where {expected} was expected (messages of {group}/{node} were lost)",
                            seq.unwrap_or_default()
                        ),
                    )];
                    out.extend(rebirth(n, group, node, now, self.settings.rebirth_interval));
                    return out;
                }
                match kind {
                    Kind::DBirth => {
                        let d = n.devices.entry(device.to_string()).or_default();
                        *d = Device::default();
                        declare(&p.metrics, &mut d.aliases, &mut d.types);
                        out.push(Action::Presence {
                            device: device.to_string(),
                            online: true,
                        });
                    }
                    Kind::DDeath => {
                        n.devices.remove(device);
                        return vec![Action::Presence {
                            device: device.to_string(),
                            online: false,
                        }];
                    }
                    Kind::DData if !n.devices.contains_key(device) => {
                        let mut out = vec![reject(
                            Reason::NoBirth,
                            format!("{topic} before the DBIRTH of device {group}/{node}/{device}"),
                        )];
                        out.extend(rebirth(n, group, node, now, self.settings.rebirth_interval));
                        return out;
                    }
                    _ => {}
                }
            }
        }
        // The message's readings.
        let (aliases, types) = match kind {
            Kind::NBirth | Kind::NData => (&n.aliases, &n.types),
            _ => {
                let d = &n.devices[device];
                (&d.aliases, &d.types)
            }
        };
        let who = if device.is_empty() { node } else { device };
        let found = rows(
            (&self.keys, &self.columns),
            self.ids,
            self.time_column,
            &p,
            (aliases, types),
            [group, node, who],
        );
        match found {
            Ok(Some(rows)) => out.push(Action::Rows(rows)),
            Ok(None) => {}
            Err(alias) => {
                out.push(reject(
                    Reason::UnknownAlias,
                    format!("{topic}: alias {alias} was not declared in the birth"),
                ));
                out.extend(rebirth(n, group, node, now, self.settings.rebirth_interval));
            }
        }
        out
    }
}

/// The rows of a message: one per distinct metric time, with the wanted metrics sent at
/// that time, and the `group`, `edge_node`, `device` values `who` if declared. `Err(alias)`
/// for an alias the birth did not declare; `None` when no wanted metric is in it. Within
/// a row a later value of a column replaces an earlier one, and the ids and time come
/// last (a JSON object written in that order keeps the last of a repeated key).
fn rows(
    (keys, columns): (&Arc<[String]>, &HashMap<String, usize>),
    ids: [Option<usize>; 3],
    time_column: Option<usize>,
    p: &Payload,
    (aliases, types): (&Aliases, &HashMap<String, u32>),
    who: [&str; 3],
) -> Result<Option<Rows>, u64> {
    let mut rows: Vec<(Option<u64>, Vec<Option<Val>>)> = Vec::new();
    for m in &p.metrics {
        let (name, declared) = match (&m.name, m.alias) {
            (Some(name), _) => (name.as_str(), types.get(name).copied()),
            (None, Some(a)) => match aliases.get(&a) {
                Some((name, t)) => (name.as_str(), Some(*t)),
                None => return Err(a),
            },
            (None, None) => continue,
        };
        let Some(&column) = columns.get(name) else {
            continue;
        };
        let t = m.datatype.or(declared).unwrap_or(0);
        let value = match m.value.as_ref() {
            Some(v) if m.is_null != Some(true) => Val::of(v, t),
            _ => Val::Null,
        };
        let ts = m.timestamp.or(p.timestamp);
        let row = match rows.iter_mut().position(|(t, _)| *t == ts) {
            Some(i) => &mut rows[i].1,
            None => {
                rows.push((ts, vec![None; keys.len()]));
                &mut rows.last_mut().expect("just pushed").1
            }
        };
        row[column] = Some(value);
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let rows = rows
        .into_iter()
        .map(|(ts, mut row)| {
            for (k, v) in ids.into_iter().zip(who) {
                if let Some(k) = k {
                    row[k] = Some(Val::Str(v.to_string()));
                }
            }
            if let (Some(c), Some(ts)) = (time_column, ts) {
                row[c] = Some(Val::unsigned(ts));
            }
            row
        })
        .collect();
    Ok(Some(Rows {
        keys: keys.clone(),
        rows,
    }))
}

fn ids_named(c: &str) -> bool {
    matches!(c, "group" | "edge_node" | "device")
}

fn reject(reason: Reason, detail: String) -> Action {
    Action::Reject { reason, detail }
}

/// Records the aliases and types a birth declares.
fn declare(metrics: &[Metric], aliases: &mut Aliases, types: &mut HashMap<String, u32>) {
    for m in metrics {
        let (Some(name), t) = (&m.name, m.datatype.unwrap_or(0)) else {
            continue;
        };
        types.insert(name.clone(), t);
        if let Some(a) = m.alias {
            aliases.insert(a, (name.clone(), t));
        }
    }
}

/// A rebirth request for the edge node, unless one went out less than `interval` ms ago.
fn rebirth(n: &mut Node, group: &str, node: &str, now: i64, interval: i64) -> Option<Action> {
    if n.rebirth_at.is_some_and(|at| now - at < interval) {
        return None;
    }
    n.rebirth_at = Some(now);
    Some(Action::Publish {
        topic: format!("{NAMESPACE}/{group}/NCMD/{node}"),
        payload: rebirth_payload(now),
    })
}

/// The NCMD payload asking for a rebirth.
pub fn rebirth_payload(now: i64) -> Vec<u8> {
    Payload {
        timestamp: Some(now.max(0) as u64),
        metrics: vec![Metric {
            name: Some(REBIRTH.to_string()),
            timestamp: Some(now.max(0) as u64),
            datatype: Some(dt::BOOLEAN),
            value: Some(Value::BooleanValue(true)),
            ..Metric::default()
        }],
        ..Payload::default()
    }
    .encode_to_vec()
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::IntValue(x) => Some(u64::from(*x)),
        Value::LongValue(x) => Some(*x),
        _ => None,
    }
}

/// `spBv1.0/{group}/{type}/{edge_node}[/{device}]` → (group, kind, node, device or "").
fn parse_topic(topic: &str) -> Option<(&str, Kind, &str, &str)> {
    let mut it = topic.split('/');
    if it.next()? != NAMESPACE {
        return None;
    }
    let group = it.next()?;
    let kind = match it.next()? {
        "NBIRTH" => Kind::NBirth,
        "NDATA" => Kind::NData,
        "NDEATH" => Kind::NDeath,
        "DBIRTH" => Kind::DBirth,
        "DDATA" => Kind::DData,
        "DDEATH" => Kind::DDeath,
        "NCMD" | "DCMD" => Kind::Command,
        "STATE" => Kind::State,
        _ => return None,
    };
    let node = it.next().unwrap_or("");
    let device = it.next().unwrap_or("");
    let device_level = matches!(kind, Kind::DBirth | Kind::DData | Kind::DDeath);
    if it.next().is_some() || group.is_empty() || (kind != Kind::State && node.is_empty()) {
        return None;
    }
    if device_level == device.is_empty() && kind != Kind::Command && kind != Kind::State {
        return None;
    }
    Some((group, kind, node, device))
}
