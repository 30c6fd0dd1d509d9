//! `connector = 'sparkplug'`: a source reading Sparkplug B edge nodes
//! (`spBv1.0/{group}/{NBIRTH|NDATA|DBIRTH|DDATA|NDEATH|DDEATH}/{edge_node}[/{device}]`,
//! protobuf payloads) on the engine's broker. The source's columns are `group`,
//! `edge_node`, `device` (the Sparkplug device id; the edge node's id for node-level
//! metrics), its event-time column (the metric's timestamp, else the payload's) and one
//! column per wanted metric, named like the metric or mapped by `metric_map`.
//!
//! The options parse in every build; decoding ([`Session`], with `prost`) needs the
//! feature `sparkplug`. The service runs the input loop (`forewarn::sparkplug`).
//! `EdgeNode` is the publishing side (the demo's simulated plant uses it).

#[cfg(feature = "sparkplug")]
mod edge;
#[cfg(feature = "sparkplug")]
pub mod proto;
#[cfg(feature = "sparkplug")]
mod rows;
#[cfg(feature = "sparkplug")]
mod session;
#[cfg(feature = "sparkplug")]
mod state;

#[cfg(feature = "sparkplug")]
pub use edge::{is_rebirth_request, EdgeError, EdgeNode, Publication};
#[cfg(feature = "sparkplug")]
pub use rows::Rows;
#[cfg(feature = "sparkplug")]
pub use session::{rebirth_payload, Action, Session, BD_SEQ, NAMESPACE, REBIRTH};

use crate::{Connector, ConnectorConfig, OptionError, Options, Role, TableContext};

/// The Sparkplug B connector.
#[derive(Debug, Clone, Copy)]
pub struct Sparkplug;

/// A `connector = 'sparkplug'` source's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparkplugSource {
    /// The Sparkplug group id to read (`None`: every group).
    pub group: Option<String>,
    /// Sparkplug metric name → column, for names that are not SQL identifiers.
    pub metric_map: Vec<(String, String)>,
    /// At most one rebirth request per edge node in this many milliseconds.
    pub rebirth_interval: i64,
}

/// Default rate limit of rebirth requests per edge node.
pub const DEFAULT_REBIRTH_INTERVAL_MS: i64 = 10_000;

impl Connector for Sparkplug {
    fn name(&self) -> &'static str {
        "sparkplug"
    }

    fn options(&self, role: Role) -> Result<&'static [&'static str], String> {
        match role {
            Role::Source => Ok(&["group", "metric_map", "rebirth_interval"]),
            Role::Sink => Err("a sparkplug table is a source: alerts go out with connector = 'mqtt' (or 'webhook')".into()),
            Role::Table => Err("a sparkplug table is a stream: use connector = 'file' for reference data".into()),
        }
    }

    fn topic_refusal(&self, role: Role) -> Option<&'static str> {
        (role == Role::Source).then_some(
            "a sparkplug source subscribes to spBv1.0/{group}/# itself: name the group with group = '...'",
        )
    }

    fn configure(&self, t: &TableContext<'_>, o: &Options) -> Result<ConnectorConfig, OptionError> {
        let group = match o.get("group") {
            None | Some("#") | Some("+") => None,
            Some(g) if g.is_empty() || g.contains(['/', '#', '+']) => {
                return Err(OptionError::at(
                    "group",
                    format!("group = '{g}' must be one Sparkplug group id (no '/', '+' or '#'), or '#' for all"),
                ))
            }
            Some(g) => Some(g.to_string()),
        };
        let metric_map = match o.get("metric_map") {
            None => vec![],
            Some(m) => parse_metric_map(m).map_err(|e| OptionError::at("metric_map", e))?,
        };
        // A metric mapped onto no column, or onto one the source fills itself, would be
        // dropped without a word.
        for (metric, column) in &metric_map {
            if ["group", "edge_node", "device"].contains(&column.as_str()) {
                return Err(OptionError::at(
                    "metric_map",
                    format!("metric_map maps '{metric}' onto '{column}', which the source fills from the topic; map it onto a column of its own"),
                ));
            }
            if !t.columns.is_empty() && !t.columns.contains(column) {
                return Err(OptionError::at(
                    "metric_map",
                    format!("metric_map maps '{metric}' onto '{column}', which is not a column of {} (columns: {})", t.name, t.columns.join(", ")),
                ));
            }
        }
        let rebirth_interval = o
            .interval("rebirth_interval")?
            .unwrap_or(DEFAULT_REBIRTH_INTERVAL_MS);
        Ok(ConnectorConfig::new(
            "sparkplug",
            SparkplugSource {
                group,
                metric_map,
                rebirth_interval,
            },
        ))
    }
}

/// `'Motor/Bearing Temp=bearing_temp, Motor/Speed=speed'`: comma-separated
/// `metric name=column` pairs.
fn parse_metric_map(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((metric, column)) = entry.rsplit_once('=') else {
            return Err(format!(
                "metric_map entry '{entry}' should be 'metric name=column'"
            ));
        };
        let (metric, column) = (metric.trim(), column.trim());
        let ident = column.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && column
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if metric.is_empty() || !ident {
            return Err(format!(
                "metric_map entry '{entry}' should be 'metric name=column' with column an SQL identifier"
            ));
        }
        if out.iter().any(|(m, _)| m == metric) {
            return Err(format!("metric_map names metric '{metric}' twice"));
        }
        out.push((metric.to_string(), column.to_ascii_lowercase()));
    }
    Ok(out)
}

#[cfg(all(test, feature = "sparkplug"))]
mod tests;
