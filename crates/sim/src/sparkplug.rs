//! The plant as Sparkplug B edge nodes (feature `sparkplug`): each site is a group and
//! each of its lines an edge node, `{site}-{line}` (an edge node's id names its presence
//! state, so it is unique across groups, like device ids); every machine is a device of its line's node, with
//! the same device id as on the JSON topics. A machine's first reading goes out as its
//! DBIRTH (declaring the metrics, with aliases, and carrying the values), the rest as
//! DDATA by alias, each metric stamped with the reading's time. The metrics are named
//! like the JSON fields, so `queries/sparkplug/plant_health.sql` reads the same columns.

use std::collections::{BTreeMap, HashMap};

use forewarn_connect::sparkplug::{EdgeError, EdgeNode, Publication};

use crate::{Reading, Truth};

/// The metrics of a reading, in the order the DBIRTH declares them.
pub const METRICS: [&str; 7] = [
    "vibration",
    "kurtosis",
    "temperature",
    "motor_current",
    "pressure",
    "load",
    "ambient",
];

impl Reading {
    /// The reading's metrics by name ([`METRICS`]; `None`: not measured).
    pub fn metrics(&self) -> [(&'static str, Option<f64>); 7] {
        [
            (METRICS[0], Some(self.vibration)),
            (METRICS[1], Some(self.kurtosis)),
            (METRICS[2], self.temperature),
            (METRICS[3], Some(self.motor_current)),
            (METRICS[4], Some(self.pressure)),
            (METRICS[5], Some(self.load)),
            (METRICS[6], Some(self.ambient)),
        ]
    }
}

/// The plant's edge nodes. Each publication comes with the index of the edge node
/// (in [`nodes`](Self::nodes)) whose connection must send it: one MQTT connection per
/// edge node, whose will is that node's [`death`](Self::death).
#[derive(Debug, Clone)]
pub struct SparkplugPlant {
    nodes: Vec<EdgeNode>,
    /// Device → index of its edge node.
    node_of: HashMap<String, usize>,
}

impl SparkplugPlant {
    /// The edge nodes of the plant in `truth` (sorted by site, then line), in their
    /// `bd_seq`-th session.
    pub fn new(truth: &Truth, bd_seq: u64) -> SparkplugPlant {
        let mut index: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for m in &truth.machines {
            index.insert((&m.site, &m.line), 0);
        }
        for (i, v) in index.values_mut().enumerate() {
            *v = i;
        }
        let nodes = index
            .keys()
            .map(|(site, line)| EdgeNode::new(site, &format!("{site}-{line}"), bd_seq))
            .collect();
        let node_of = truth
            .machines
            .iter()
            .map(|m| (m.device.clone(), index[&(m.site.as_str(), m.line.as_str())]))
            .collect();
        SparkplugPlant { nodes, node_of }
    }

    /// The edge nodes.
    pub fn nodes(&self) -> &[EdgeNode] {
        &self.nodes
    }

    /// The NBIRTH of every edge node at `now` (ms), to send first.
    pub fn births(&mut self, now: i64) -> Vec<(usize, Publication)> {
        self.nodes
            .iter_mut()
            .enumerate()
            .map(|(i, n)| (i, n.birth(now)))
            .collect()
    }

    /// The NBIRTH of the edge node `group`/`node` again (a host asked for a rebirth):
    /// its devices are born again with their next readings. `None`: no such node.
    pub fn rebirth(&mut self, group: &str, node: &str, now: i64) -> Option<(usize, Publication)> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.group() == group && n.node() == node)?;
        Some((i, self.nodes[i].birth(now)))
    }

    /// The message carrying `reading`: its device's DBIRTH if the device has none in the
    /// node's session yet, else a DDATA. Panics for a device not in the truth.
    pub fn encode(&mut self, reading: &Reading) -> Result<(usize, Publication), EdgeError> {
        let i = self.node_of[&reading.device];
        let n = &mut self.nodes[i];
        let metrics = reading.metrics();
        let p = if n.is_born(&reading.device) {
            n.device_data(&reading.device, reading.ts, &metrics)?
        } else {
            n.device_birth(&reading.device, reading.ts, &metrics)
        };
        Ok((i, p))
    }

    /// Edge node `i`'s NDEATH: its will, and what it sends before disconnecting cleanly.
    pub fn death(&self, i: usize) -> Publication {
        self.nodes[i].death()
    }
}
