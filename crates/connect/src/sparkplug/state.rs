//! A [`Session`]'s host state as JSON, saved with the engine's checkpoints so that a
//! restart does not need a rebirth: per edge node whether it is born, its `bdSeq`, the
//! last `seq`, its aliases and metric types, and the same for each of its born devices.
//! An edge node or device that died is absent or not born, as in the live session.
//! When a rebirth was last requested is not kept (the rate limit starts afresh).

use std::collections::HashMap;

use serde_json::{json, Map, Value as Json};

use super::session::{Aliases, Device, Node, Session};

/// Version of the saved layout.
const STATE_VERSION: u64 = 1;

impl Session {
    /// The edge nodes' births, aliases and sequence numbers, for a checkpoint.
    pub fn save(&self) -> Json {
        let mut nodes: Vec<Json> = self
            .nodes
            .iter()
            .map(|((group, node), n)| {
                let devices: Map<String, Json> = n
                    .devices
                    .iter()
                    .map(|(d, dev)| (d.clone(), declared(&dev.aliases, &dev.types)))
                    .collect();
                let mut v = declared(&n.aliases, &n.types);
                let o = v.as_object_mut().expect("an object");
                o.insert("group".into(), json!(group));
                o.insert("edge_node".into(), json!(node));
                o.insert("born".into(), json!(n.born));
                o.insert("bd_seq".into(), json!(n.bd_seq));
                o.insert("seq".into(), json!(n.seq));
                o.insert("devices".into(), Json::Object(devices));
                v
            })
            .collect();
        // In a stable order, so equal states save equal.
        nodes.sort_by(|a, b| {
            (a["group"].as_str(), a["edge_node"].as_str())
                .cmp(&(b["group"].as_str(), b["edge_node"].as_str()))
        });
        json!({"version": STATE_VERSION, "nodes": nodes})
    }

    /// Continues from a [`save`](Self::save)d state, replacing the edge nodes known.
    /// `Err` says what is wrong; the session is then unchanged.
    pub fn load(&mut self, v: &Json) -> Result<(), String> {
        if v["version"].as_u64() != Some(STATE_VERSION) {
            return Err(format!(
                "saved Sparkplug state version {} is not {STATE_VERSION}",
                v["version"]
            ));
        }
        let mut nodes = HashMap::new();
        for n in v["nodes"].as_array().ok_or("no 'nodes' array")? {
            let text = |k: &str| {
                n[k].as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("a node without '{k}'"))
            };
            let (group, node) = (text("group")?, text("edge_node")?);
            let (aliases, types) = read_declared(n)?;
            let mut devices = HashMap::new();
            for (d, dv) in n["devices"].as_object().ok_or("a node without 'devices'")? {
                let (aliases, types) = read_declared(dv)?;
                devices.insert(d.clone(), Device { aliases, types });
            }
            let seq = n["seq"]
                .as_u64()
                .and_then(|s| u8::try_from(s).ok())
                .ok_or_else(|| format!("node {group}/{node}: 'seq' is not 0-255"))?;
            let node_state = Node {
                born: n["born"].as_bool().unwrap_or(false),
                bd_seq: n["bd_seq"].as_u64(),
                seq,
                aliases,
                types,
                devices,
                rebirth_at: None,
            };
            nodes.insert((group, node), node_state);
        }
        self.nodes = nodes;
        Ok(())
    }
}

/// Aliases as `[[alias, name, type], ...]` and types as `{name: type}`.
fn declared(aliases: &Aliases, types: &HashMap<String, u32>) -> Json {
    let mut a: Vec<(&u64, &(String, u32))> = aliases.iter().collect();
    a.sort_by_key(|(k, _)| **k);
    let a: Vec<Json> = a
        .into_iter()
        .map(|(k, (name, t))| json!([k, name, t]))
        .collect();
    let t: Map<String, Json> = types.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    json!({"aliases": a, "types": t})
}

fn read_declared(v: &Json) -> Result<(Aliases, HashMap<String, u32>), String> {
    let mut aliases = Aliases::new();
    for a in v["aliases"].as_array().ok_or("no 'aliases' array")? {
        let (Some(k), Some(name), Some(t)) = (a[0].as_u64(), a[1].as_str(), a[2].as_u64()) else {
            return Err(format!("alias entry {a} is not [alias, name, type]"));
        };
        let t = u32::try_from(t).map_err(|_| format!("alias {k}: type {t} out of range"))?;
        aliases.insert(k, (name.to_string(), t));
    }
    let mut types = HashMap::new();
    for (name, t) in v["types"].as_object().ok_or("no 'types' object")? {
        let t = t
            .as_u64()
            .and_then(|t| u32::try_from(t).ok())
            .ok_or_else(|| format!("metric '{name}': type {t} is not a data type"))?;
        types.insert(name.clone(), t);
    }
    Ok((aliases, types))
}
