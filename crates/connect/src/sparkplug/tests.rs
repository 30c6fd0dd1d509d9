//! The session's births, aliases, sequence numbers and deaths, with payloads built by
//! prost as an edge node would send them.

use forewarn_core::Reason;
use prost::Message;
use serde_json::{json, Value as Json};

use super::proto::{data_type as dt, Metric, Payload, Value};
use super::*;

fn settings() -> SparkplugSource {
    SparkplugSource {
        group: Some("Plant1".into()),
        metric_map: vec![("Motor/Bearing Temp".into(), "bearing_temp".into())],
        rebirth_interval: 10_000,
    }
}

fn session() -> Session {
    let columns: Vec<String> = [
        "group",
        "edge_node",
        "device",
        "ts",
        "bearing_temp",
        "speed",
    ]
    .map(String::from)
    .to_vec();
    Session::new(settings(), &columns, Some("ts"))
}

fn metric(name: Option<&str>, alias: Option<u64>, t: u32, ts: Option<u64>, v: Value) -> Metric {
    Metric {
        name: name.map(str::to_string),
        alias,
        timestamp: ts,
        datatype: Some(t),
        value: Some(v),
        ..Metric::default()
    }
}

fn payload(seq: Option<u64>, ts: u64, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(ts),
        metrics,
        seq,
        ..Payload::default()
    }
    .encode_to_vec()
}

fn nbirth(seq: u64, bd: u64) -> Vec<u8> {
    payload(
        Some(seq),
        1000,
        vec![metric(
            Some(BD_SEQ),
            None,
            dt::INT64,
            None,
            Value::LongValue(bd),
        )],
    )
}

/// The DBIRTH of a motor: bearing temp alias 1 (double), speed alias 2 (Int32).
fn dbirth(seq: u64) -> Vec<u8> {
    payload(
        Some(seq),
        1000,
        vec![
            metric(
                Some("Motor/Bearing Temp"),
                Some(1),
                dt::DOUBLE,
                Some(1000),
                Value::DoubleValue(40.5),
            ),
            metric(
                Some("speed"),
                Some(2),
                dt::INT32,
                Some(1000),
                Value::IntValue(-3i32 as u32),
            ),
            metric(
                Some("ignored"),
                Some(3),
                dt::STRING,
                Some(1000),
                Value::StringValue("x".into()),
            ),
        ],
    )
}

fn rows(actions: &[Action]) -> Vec<Json> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Rows(r) => Some(serde_json::from_slice::<Json>(&r.message()).unwrap()),
            _ => None,
        })
        .collect()
}

fn reasons(actions: &[Action]) -> Vec<Reason> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Reject { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

fn rebirths(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish { topic, payload } => {
                let p = Payload::decode(payload.as_slice()).unwrap();
                assert_eq!(p.metrics[0].name.as_deref(), Some(REBIRTH));
                assert_eq!(p.metrics[0].value, Some(Value::BooleanValue(true)));
                Some(topic.as_str())
            }
            _ => None,
        })
        .collect()
}

const NB: &str = "spBv1.0/Plant1/NBIRTH/edge1";
const DB: &str = "spBv1.0/Plant1/DBIRTH/edge1/motor1";
const DD: &str = "spBv1.0/Plant1/DDATA/edge1/motor1";

#[test]
fn births_then_aliased_data_become_rows_with_metric_times() {
    let mut s = session();
    assert_eq!(s.filter(), "spBv1.0/Plant1/#");
    let a = s.handle(NB, &nbirth(0, 7), 0);
    assert_eq!(
        a,
        [Action::Presence {
            device: "edge1".into(),
            online: true
        }]
    );
    let a = s.handle(DB, &dbirth(1), 0);
    assert_eq!(
        a[0],
        Action::Presence {
            device: "motor1".into(),
            online: true
        }
    );
    assert_eq!(
        rows(&a),
        [
            json!([{"group": "Plant1", "edge_node": "edge1", "device": "motor1", "ts": 1000, "bearing_temp": 40.5, "speed": -3}])
        ]
    );
    // DDATA by alias only; two metric times make two rows; the payload's time fills in.
    let data = payload(
        Some(2),
        5000,
        vec![
            Metric {
                alias: Some(1),
                timestamp: Some(2000),
                value: Some(Value::DoubleValue(41.0)),
                ..Metric::default()
            },
            Metric {
                alias: Some(2),
                timestamp: Some(2000),
                value: Some(Value::IntValue(1500)),
                ..Metric::default()
            },
            Metric {
                alias: Some(1),
                value: Some(Value::DoubleValue(42.0)),
                ..Metric::default()
            },
            Metric {
                alias: Some(3),
                value: Some(Value::StringValue("y".into())),
                ..Metric::default()
            },
        ],
    );
    let a = s.handle(DD, &data, 0);
    assert_eq!(
        rows(&a),
        [json!([
            {"group": "Plant1", "edge_node": "edge1", "device": "motor1", "ts": 2000, "bearing_temp": 41.0, "speed": 1500},
            {"group": "Plant1", "edge_node": "edge1", "device": "motor1", "ts": 5000, "bearing_temp": 42.0}
        ])]
    );
    assert_eq!(a.len(), 1);
}

#[test]
fn data_before_birth_is_refused_and_asks_for_a_rebirth_at_most_once_per_interval() {
    let mut s = session();
    let data = payload(
        Some(5),
        1,
        vec![Metric {
            alias: Some(1),
            value: Some(Value::DoubleValue(1.0)),
            ..Metric::default()
        }],
    );
    let a = s.handle(DD, &data, 100);
    assert_eq!(reasons(&a), [Reason::NoBirth]);
    assert_eq!(rebirths(&a), ["spBv1.0/Plant1/NCMD/edge1"]);
    // Within the interval: refused again, no second request.
    let a = s.handle(DD, &data, 9_000);
    assert_eq!(reasons(&a), [Reason::NoBirth]);
    assert!(rebirths(&a).is_empty());
    let a = s.handle(DD, &data, 10_100);
    assert_eq!(rebirths(&a).len(), 1);
    // A node born, but its device not: also no_birth.
    s.handle(NB, &nbirth(0, 1), 20_000);
    let data = payload(
        Some(1),
        1,
        vec![Metric {
            alias: Some(1),
            value: Some(Value::DoubleValue(1.0)),
            ..Metric::default()
        }],
    );
    let a = s.handle(DD, &data, 30_000);
    assert_eq!(reasons(&a), [Reason::NoBirth]);
    assert_eq!(rebirths(&a).len(), 1);
}

#[test]
fn unknown_alias_and_seq_gap_are_refused_with_a_rebirth() {
    let mut s = session();
    s.handle(NB, &nbirth(0, 1), 0);
    s.handle(DB, &dbirth(1), 0);
    let unknown = payload(
        Some(2),
        1,
        vec![Metric {
            alias: Some(99),
            value: Some(Value::DoubleValue(1.0)),
            ..Metric::default()
        }],
    );
    let a = s.handle(DD, &unknown, 0);
    assert_eq!(reasons(&a), [Reason::UnknownAlias]);
    assert_eq!(rebirths(&a).len(), 1);
    assert!(rows(&a).is_empty());
    // seq 3 follows 2; then 5 skips 4.
    let ok = payload(
        Some(3),
        1,
        vec![Metric {
            alias: Some(1),
            value: Some(Value::DoubleValue(1.0)),
            ..Metric::default()
        }],
    );
    assert_eq!(rows(&s.handle(DD, &ok, 0)).len(), 1);
    let gap = payload(
        Some(5),
        1,
        vec![Metric {
            alias: Some(1),
            value: Some(Value::DoubleValue(1.0)),
            ..Metric::default()
        }],
    );
    let a = s.handle(DD, &gap, 20_000);
    assert_eq!(reasons(&a), [Reason::SeqGap]);
    assert_eq!(rebirths(&a).len(), 1);
    // It resynchronises on the gap: 6 is accepted.
    let next = payload(
        Some(6),
        1,
        vec![Metric {
            alias: Some(1),
            value: Some(Value::DoubleValue(1.0)),
            ..Metric::default()
        }],
    );
    assert_eq!(rows(&s.handle(DD, &next, 20_000)).len(), 1);
}

#[test]
fn seq_wraps_from_255_to_0() {
    let mut s = session();
    s.handle(NB, &nbirth(254, 1), 0);
    s.handle(DB, &dbirth(255), 0);
    let data = payload(
        Some(0),
        1,
        vec![Metric {
            alias: Some(2),
            value: Some(Value::IntValue(9)),
            ..Metric::default()
        }],
    );
    let a = s.handle(DD, &data, 0);
    assert_eq!(reasons(&a), []);
    assert_eq!(rows(&a)[0][0]["speed"], json!(9));
}

#[test]
fn deaths_mark_devices_offline_and_a_stale_ndeath_is_ignored() {
    let mut s = session();
    s.handle(NB, &nbirth(0, 3), 0);
    s.handle(DB, &dbirth(1), 0);
    // A will message of the previous session (bdSeq 2) does not kill session 3.
    let stale = payload(
        None,
        1,
        vec![metric(
            Some(BD_SEQ),
            None,
            dt::INT64,
            None,
            Value::LongValue(2),
        )],
    );
    let a = s.handle("spBv1.0/Plant1/NDEATH/edge1", &stale, 0);
    assert_eq!(reasons(&a), [Reason::StaleDeath]);
    let data = payload(
        Some(2),
        1,
        vec![Metric {
            alias: Some(1),
            value: Some(Value::DoubleValue(1.0)),
            ..Metric::default()
        }],
    );
    assert_eq!(rows(&s.handle(DD, &data, 0)).len(), 1);
    let death = payload(
        None,
        1,
        vec![metric(
            Some(BD_SEQ),
            None,
            dt::INT64,
            None,
            Value::LongValue(3),
        )],
    );
    let a = s.handle("spBv1.0/Plant1/NDEATH/edge1", &death, 0);
    assert_eq!(
        a,
        [
            Action::Presence {
                device: "motor1".into(),
                online: false
            },
            Action::Presence {
                device: "edge1".into(),
                online: false
            },
        ]
    );
    // After the death, data needs a new birth.
    let data = payload(
        Some(3),
        1,
        vec![Metric {
            alias: Some(1),
            value: Some(Value::DoubleValue(1.0)),
            ..Metric::default()
        }],
    );
    assert_eq!(reasons(&s.handle(DD, &data, 0)), [Reason::NoBirth]);
    // DDEATH takes one device offline.
    s.handle(NB, &nbirth(0, 4), 0);
    s.handle(DB, &dbirth(1), 0);
    let a = s.handle(
        "spBv1.0/Plant1/DDEATH/edge1/motor1",
        &payload(Some(2), 1, vec![]),
        0,
    );
    assert_eq!(
        a,
        [Action::Presence {
            device: "motor1".into(),
            online: false
        }]
    );
}

#[test]
fn bad_topics_and_payloads_are_not_sparkplug_and_commands_are_skipped() {
    let mut s = session();
    assert_eq!(
        reasons(&s.handle("spBv1.0/Plant1/DDATA/edge1", b"", 0)),
        [Reason::NotSparkplug]
    );
    assert_eq!(
        reasons(&s.handle("plant/x", b"", 0)),
        [Reason::NotSparkplug]
    );
    assert_eq!(
        reasons(&s.handle(NB, b"\xff\xff\xff", 0)),
        [Reason::NotSparkplug]
    );
    assert_eq!(
        s.handle("spBv1.0/Plant1/NCMD/edge1", &rebirth_payload(5), 0),
        []
    );
}

#[test]
fn signed_and_unsigned_integers_are_read_by_their_data_type() {
    let mut s = Session::new(
        settings(),
        &["a".into(), "b".into(), "c".into(), "d".into()],
        None,
    );
    s.handle(NB, &nbirth(0, 1), 0);
    let p = payload(
        Some(1),
        1,
        vec![
            metric(Some("a"), None, dt::INT8, None, Value::IntValue(0xff)),
            metric(Some("b"), None, dt::UINT8, None, Value::IntValue(0xff)),
            metric(Some("c"), None, dt::INT64, None, Value::LongValue(u64::MAX)),
            metric(
                Some("d"),
                None,
                dt::BOOLEAN,
                None,
                Value::BooleanValue(true),
            ),
        ],
    );
    let a = s.handle("spBv1.0/Plant1/NDATA/edge1", &p, 0);
    assert_eq!(rows(&a), [json!([{"a": -1, "b": 255, "c": -1, "d": true}])]);
}

#[test]
fn options_group_metric_map_and_interval() {
    use crate::{Options, Pos, Role, TableContext};
    let ctx = TableContext {
        name: "t",
        role: Role::Source,
        event_time: true,
        dir: std::path::Path::new("."),
        columns: &[],
    };
    let mut o = Options::default();
    let at = Pos::default();
    o.insert("group", "Plant1".into(), at).unwrap();
    o.insert(
        "metric_map",
        "Motor/Bearing Temp = Bearing_Temp, a=b".into(),
        at,
    )
    .unwrap();
    o.insert("rebirth_interval", "30 seconds".into(), at)
        .unwrap();
    let c = Sparkplug.configure(&ctx, &o).unwrap();
    assert_eq!(
        c.get::<SparkplugSource>(),
        Some(&SparkplugSource {
            group: Some("Plant1".into()),
            metric_map: vec![
                ("Motor/Bearing Temp".into(), "bearing_temp".into()),
                ("a".into(), "b".into())
            ],
            rebirth_interval: 30_000,
        })
    );
    let mut o = Options::default();
    o.insert("metric_map", "Motor/Speed".into(), at).unwrap();
    let e = Sparkplug.configure(&ctx, &o).unwrap_err();
    assert_eq!(
        e.to_string(),
        "metric_map entry 'Motor/Speed' should be 'metric name=column'"
    );
    let mut o = Options::default();
    o.insert("group", "a/b".into(), at).unwrap();
    assert!(Sparkplug.configure(&ctx, &o).is_err());
    let c = Sparkplug.configure(&ctx, &Options::default()).unwrap();
    assert_eq!(c.get::<SparkplugSource>().unwrap().group, None);
    // Map targets must be columns the metrics can fill.
    let columns = ["group", "edge_node", "device", "ts", "bearing_temp"].map(String::from);
    let ctx = TableContext {
        columns: &columns,
        ..ctx
    };
    let refused = |map: &str| {
        let mut o = Options::default();
        o.insert("metric_map", map.into(), at).unwrap();
        Sparkplug
            .configure(&ctx, &o)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert_eq!(refused("Motor/Bearing Temp=bearing_temp"), Ok(()));
    assert_eq!(
        refused("Motor/Bearing Temp=bearing_tmp"),
        Err("metric_map maps 'Motor/Bearing Temp' onto 'bearing_tmp', which is not a column of t (columns: group, edge_node, device, ts, bearing_temp)".into())
    );
    assert_eq!(
        refused("Machine Name=device"),
        Err("metric_map maps 'Machine Name' onto 'device', which the source fills from the topic; map it onto a column of its own".into())
    );
}

/// The encoder's messages, fed to a host session: the birth's values and every DDATA come
/// out as readings, seq wraps past 255 without a gap, and the will's NDEATH (same
/// bdSeq) takes the devices offline.
#[test]
fn an_edge_node_encodes_what_the_session_reads() {
    let mut edge = EdgeNode::new("Plant1", "edge1", 7);
    let mut s = session();
    let mut all = Vec::new();
    let (topic, p) = edge.birth(1000);
    assert_eq!(topic, "spBv1.0/Plant1/NBIRTH/edge1");
    all.extend(s.handle(&topic, &p, 0));
    let (topic, p) = edge.device_birth(
        "m1",
        1000,
        &[("Motor/Bearing Temp", Some(40.0)), ("speed", None)],
    );
    assert_eq!(topic, "spBv1.0/Plant1/DBIRTH/edge1/m1");
    all.extend(s.handle(&topic, &p, 0));
    for i in 1..=300i64 {
        let v = [
            ("Motor/Bearing Temp", Some(40.0 + i as f64 / 8.0)),
            ("speed", (i % 2 == 0).then_some(i as f64)),
        ];
        let (topic, p) = edge.device_data("m1", 1000 + i, &v).unwrap();
        assert_eq!(topic, "spBv1.0/Plant1/DDATA/edge1/m1");
        // Aliases only, with each metric's own timestamp.
        let decoded = Payload::decode(p.as_slice()).unwrap();
        assert_eq!(decoded.seq, Some(((i + 1) % 256) as u64));
        assert!(decoded.metrics.iter().all(|m| m.name.is_none()
            && m.alias.is_some()
            && m.timestamp == Some((1000 + i) as u64)));
        all.extend(s.handle(&topic, &p, 0));
    }
    let (topic, p) = edge.death();
    assert_eq!(topic, "spBv1.0/Plant1/NDEATH/edge1");
    all.extend(s.handle(&topic, &p, 0));

    let mut want = vec![
        shown(&Action::Presence {
            device: "edge1".into(),
            online: true,
        }),
        shown(&Action::Presence {
            device: "m1".into(),
            online: true,
        }),
        row_action(
            json!([{"group": "Plant1", "edge_node": "edge1", "device": "m1", "ts": 1000, "bearing_temp": 40.0, "speed": null}]),
        ),
    ];
    for i in 1..=300i64 {
        let mut row = json!({"group": "Plant1", "edge_node": "edge1", "device": "m1", "ts": 1000 + i, "bearing_temp": 40.0 + i as f64 / 8.0});
        if i % 2 == 0 {
            row["speed"] = json!(i as f64);
        }
        want.push(row_action(json!([row])));
    }
    want.push(shown(&Action::Presence {
        device: "m1".into(),
        online: false,
    }));
    want.push(shown(&Action::Presence {
        device: "edge1".into(),
        online: false,
    }));
    assert_eq!(all.iter().map(shown).collect::<Vec<_>>(), want);
    // Data for a device without a birth, or an undeclared metric, is refused by the encoder.
    assert_eq!(
        edge.device_data("m2", 0, &[]),
        Err(EdgeError::NoBirth("m2".into()))
    );
    assert!(matches!(
        edge.device_data("m1", 0, &[("other", Some(1.0))]),
        Err(EdgeError::Undeclared { .. })
    ));
}

/// An action as compared here: readings as the JSON message they stand for.
fn shown(a: &Action) -> String {
    match a {
        Action::Rows(r) => String::from_utf8(r.message()).unwrap(),
        other => format!("{other:?}"),
    }
}

fn row_action(v: Json) -> String {
    serde_json::to_string(&v).unwrap()
}

fn data(seq: u64, temp: f64) -> Vec<u8> {
    payload(
        Some(seq),
        3000,
        vec![Metric {
            alias: Some(1),
            timestamp: Some(3000),
            value: Some(Value::DoubleValue(temp)),
            ..Metric::default()
        }],
    )
}

/// A session restored from a saved state takes the next DDATA as the live one would:
/// same rows, no `no_birth`, no rebirth request; and it saves the same again.
#[test]
fn a_restored_session_continues_without_a_rebirth() {
    let mut live = session();
    live.handle(NB, &nbirth(0, 7), 0);
    live.handle(DB, &dbirth(1), 0);
    live.handle(DD, &data(2, 41.0), 0);
    let saved = live.save();
    // Through text, as a checkpoint stores it.
    let saved: Json = serde_json::from_str(&saved.to_string()).unwrap();
    let mut restored = session();
    restored.load(&saved).unwrap();
    assert_eq!(restored.save(), saved);
    let a = restored.handle(DD, &data(3, 42.5), 0);
    assert_eq!(a, live.handle(DD, &data(3, 42.5), 0));
    assert_eq!(
        rows(&a),
        [
            json!([{"group": "Plant1", "edge_node": "edge1", "device": "motor1", "ts": 3000, "bearing_temp": 42.5}])
        ]
    );
    // A gap right after a restore is still a gap: messages were lost while down.
    let a = restored.handle(DD, &data(9, 43.0), 0);
    assert_eq!(reasons(&a), [Reason::SeqGap]);
    assert_eq!(rebirths(&a), ["spBv1.0/Plant1/NCMD/edge1"]);
    // The node's will still matches its birth's bdSeq after the restore.
    let a = restored.handle(
        "spBv1.0/Plant1/NDEATH/edge1",
        &payload(
            None,
            0,
            vec![metric(
                Some(BD_SEQ),
                None,
                dt::INT64,
                None,
                Value::LongValue(6),
            )],
        ),
        0,
    );
    assert_eq!(reasons(&a), [Reason::StaleDeath]);
}

/// A dead node is saved not born: its data after a restore needs a birth, as live.
#[test]
fn a_dead_node_stays_dead_and_bad_saved_state_is_refused() {
    let mut s = session();
    s.handle(NB, &nbirth(0, 7), 0);
    s.handle(
        "spBv1.0/Plant1/NDEATH/edge1",
        &payload(
            None,
            0,
            vec![metric(
                Some(BD_SEQ),
                None,
                dt::INT64,
                None,
                Value::LongValue(7),
            )],
        ),
        0,
    );
    let mut r = session();
    r.load(&s.save()).unwrap();
    assert_eq!(reasons(&r.handle(DD, &data(1, 1.0), 0)), [Reason::NoBirth]);
    let mut r = session();
    r.handle(NB, &nbirth(0, 7), 0);
    let before = r.save();
    for bad in [
        json!({"version": 2, "nodes": []}),
        json!({"version": 1}),
        json!({"version": 1, "nodes": [{"group": "g", "edge_node": "n", "seq": 300,
            "aliases": [], "types": {}, "devices": {}}]}),
        json!({"version": 1, "nodes": [{"group": "g", "edge_node": "n", "seq": 1,
            "aliases": [[1, "x"]], "types": {}, "devices": {}}]}),
    ] {
        assert!(r.load(&bad).is_err(), "{bad}");
        assert_eq!(r.save(), before, "unchanged after {bad}");
    }
}
