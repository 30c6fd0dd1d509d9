//! Sparkplug B offline alerts and alias tables across restarts, through a real broker:
//! an edge node played by a plain MQTT client publishing prost-built payloads, and the
//! alerts read by an MQTT subscriber.
//!
//! * A rule with `offline_after = '2 seconds'`: a device that dies for 0.3 s raises
//!   nothing; an NDEATH left standing raises an `offline` alert 2 s later (exact device,
//!   times and ids), and the rebirth clears it.
//! * An engine stopped and started again from its checkpoint mid-session: the edge node
//!   keeps sending DDATA with the next `seq`, no rebirth is requested, nothing is
//!   refused, and the windows are those of the readings computed here.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use forewarn::connect::sparkplug::proto::{data_type as dt, Metric, Payload, Value};
use forewarn::mqtt::{self, BrokerUrl, MqttSink, MqttSource, SourceOptions};
use forewarn::{CheckpointConfig, EngineConfig, Output, Pipeline};
use prost::Message;
use serde_json::Value as Json;
use tokio::sync::mpsc;

/// A multiple of the window width.
const BASE: i64 = 1_700_000_000_000;
const NODE: &str = "spBv1.0/Plant1/{}/edge1";

fn topic(kind: &str, device: Option<&str>) -> String {
    let t = NODE.replace("{}", kind);
    device.map_or(t.clone(), |d| format!("{t}/{d}"))
}

fn payload(seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(BASE as u64),
        seq,
        metrics,
        ..Payload::default()
    }
    .encode_to_vec()
}

fn bd_seq(bd: u64) -> Metric {
    Metric {
        name: Some("bdSeq".into()),
        datatype: Some(dt::INT64),
        value: Some(Value::LongValue(bd)),
        ..Metric::default()
    }
}

/// The DBIRTH of motor1: its temperature is alias 1 (double).
fn dbirth(seq: u64) -> Vec<u8> {
    payload(
        Some(seq),
        vec![Metric {
            name: Some("temp".into()),
            alias: Some(1),
            datatype: Some(dt::DOUBLE),
            timestamp: Some(BASE as u64),
            value: Some(Value::DoubleValue(40.0)),
            ..Metric::default()
        }],
    )
}

/// DDATA of motor1 by alias: temperature `v` at `ts`.
fn ddata(seq: u64, ts: i64, v: f64) -> Vec<u8> {
    payload(
        Some(seq % 256),
        vec![Metric {
            alias: Some(1),
            timestamp: Some(ts as u64),
            value: Some(Value::DoubleValue(v)),
            ..Metric::default()
        }],
    )
}

async fn edge_node(url: &BrokerUrl, id: &str) -> MqttSink {
    crate::common::connected_publisher(url, id).await
}

async fn subscriber(
    url: &BrokerUrl,
    id: &str,
    filter: &str,
) -> (MqttSource, mpsc::Receiver<mqtt::Incoming>) {
    let (mut s, rx) = MqttSource::start(SourceOptions::new(url.clone(), id, vec![filter.into()]));
    s.wait_connected(Duration::from_secs(10)).await.unwrap();
    // The subscription is installed before anything is published.
    tokio::time::sleep(Duration::from_millis(200)).await;
    (s, rx)
}

/// Waits for an output matching `f` on the tap, keeping the others in `got`.
async fn wait_for(
    outputs: &mut mpsc::Receiver<Output>,
    got: &mut Vec<Output>,
    what: &str,
    f: impl Fn(&Output) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let o = tokio::time::timeout_at(deadline, outputs.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} within 10 s; got {got:?}"))
            .expect("outputs open");
        let hit = f(&o);
        got.push(o);
        if hit {
            return;
        }
    }
}

const OFFLINE_SQL: &str = "CREATE TABLE motors (device TEXT, ts TIMESTAMP, temp DOUBLE,
  WATERMARK FOR ts AS ts) WITH (connector = 'sparkplug', group = 'Plant1');
CREATE TABLE alerts WITH (connector = 'mqtt', topic = 'alerts/{device}',
  warning_at = '1000', offline_after = '2 seconds', severity = 'maintenance');
INSERT INTO alerts SELECT device, window_start, avg(temp) AS score
  FROM motors GROUP BY tumble(interval '10 seconds'), device;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_edge_node_raises_an_offline_alert_after_the_declared_time_and_rebirth_clears_it() {
    let broker = forewarn::mqtt::EmbeddedBroker::start().unwrap();
    let url = broker.url();
    let pipeline = Pipeline::builder()
        .query_sql("offline.sql", OFFLINE_SQL)
        .build()
        .await
        .unwrap();
    let (tap, mut outputs) = mpsc::channel::<Output>(10_000);
    let run = mqtt::start(
        pipeline,
        &url,
        &mqtt::RunOptions::new("spb-offline"),
        Some(tap),
    )
    .await
    .unwrap();
    let (sub, mut alerts) = subscriber(&url, "spb-offline-sub", "alerts/#").await;
    let edge = edge_node(&url, "spb-offline-edge").await;
    let send = |t: String, p: Vec<u8>| {
        let edge = &edge;
        async move { edge.publish(&t, p, false).await.unwrap() }
    };
    send(topic("NBIRTH", None), payload(Some(0), vec![bd_seq(1)])).await;
    send(topic("DBIRTH", Some("motor1")), dbirth(1)).await;
    // Readings at 1..=11 s: the first window closes, so the rule watches motor1.
    let mut seq = 2;
    for i in 1..=11 {
        send(
            topic("DDATA", Some("motor1")),
            ddata(seq, BASE + i * 1000, 41.0),
        )
        .await;
        seq += 1;
    }
    let mut got = Vec::new();
    wait_for(&mut outputs, &mut got, "motor1's first state", |o| {
        matches!(o, Output::State { state, .. } if state.device == "motor1" && state.rules.contains_key("offline"))
    })
    .await;

    // A death shorter than offline_after: nothing is raised.
    send(topic("DDEATH", Some("motor1")), payload(Some(seq), vec![])).await;
    seq += 1;
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(topic("DBIRTH", Some("motor1")), dbirth(seq)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(alerts.try_recv().is_err(), "a 0.3 s death raised an alert");

    // The edge node dies (its NDEATH, as the broker publishes its will) and stays dead.
    let died = Instant::now();
    let died_wall = forewarn::Timestamp::now().as_millis();
    send(topic("NDEATH", None), payload(None, vec![bd_seq(1)])).await;
    let raised = tokio::time::timeout(Duration::from_secs(10), alerts.recv())
        .await
        .expect("an offline alert within 10 s")
        .unwrap();
    let waited = died.elapsed();
    let after_raise_wall = forewarn::Timestamp::now().as_millis();
    assert_eq!(raised.topic, "alerts/motor1");
    let r: Json = serde_json::from_slice(&raised.payload).unwrap();
    assert!(
        waited >= Duration::from_millis(2000),
        "raised after {waited:?}"
    );
    let since = forewarn::parse_rfc3339(r["offline_since"].as_str().unwrap()).unwrap();
    assert!(
        since >= died_wall && since <= after_raise_wall - 2000,
        "{since} vs {died_wall}"
    );
    let at = forewarn::format_rfc3339;
    let alert_id = r["alert_id"].as_str().unwrap().to_string();
    assert_eq!(
        alert_id,
        forewarn_alerts::alert_id("offline/offline", "motor1", since)
    );
    let want = serde_json::json!({
        "schema_version": 2, "alert_id": alert_id, "event_id": format!("{alert_id}-raised"),
        "rule": "offline", "device": "motor1", "transition": "raised", "state": "warning",
        "previous": "ok", "severity": "maintenance", "episode_start": at(since),
        "window_start": at(since), "window_end": at(since + 2000), "score": null,
        "windows": [{"window_start": at(since), "window_end": at(since + 2000), "score": null, "features": {}}],
        "cause": "offline", "offline_since": at(since),
    });
    assert_eq!(r, want);
    // edge1 itself is offline too, but the rule never had a window of it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(alerts.try_recv().is_err(), "one offline alert only");

    // Born again: the alert clears.
    send(topic("NBIRTH", None), payload(Some(0), vec![bd_seq(2)])).await;
    let reborn_wall = forewarn::Timestamp::now().as_millis();
    send(topic("DBIRTH", Some("motor1")), dbirth(1)).await;
    let cleared = tokio::time::timeout(Duration::from_secs(10), alerts.recv())
        .await
        .expect("the clear within 10 s")
        .unwrap();
    assert_eq!(cleared.topic, "alerts/motor1");
    let c: Json = serde_json::from_slice(&cleared.payload).unwrap();
    assert_eq!(
        (
            &c["alert_id"],
            &c["event_id"],
            &c["transition"],
            &c["state"],
            &c["previous"],
            &c["cause"]
        ),
        (
            &r["alert_id"],
            &Json::from(format!("{alert_id}-cleared")),
            &Json::from("cleared"),
            &Json::from("ok"),
            &Json::from("warning"),
            &Json::from("offline")
        )
    );
    let back = forewarn::parse_rfc3339(c["window_end"].as_str().unwrap()).unwrap();
    assert!(back >= reborn_wall && back <= forewarn::Timestamp::now().as_millis());
    assert_eq!(c["window_start"], at(since));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        alerts.try_recv().is_err(),
        "raised and cleared, nothing else"
    );
    let stats = run.stop().await.unwrap();
    assert_eq!(stats.transitions_out, 2);
    sub.stop().await;
    edge.stop().await;
    // The state topic showed motor1 offline, then online again.
    while let Ok(o) = outputs.try_recv() {
        got.push(o);
    }
    let states: Vec<bool> = got
        .iter()
        .filter_map(|o| match o {
            Output::State { state, .. } if state.device == "motor1" => {
                Some(state.offline_since.is_some())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        [false, true, false, true, false],
        "motor1's states: first window, short death, back, NDEATH, rebirth"
    );
}

const RESTART_SQL: &str = "CREATE TABLE motors (device TEXT, ts TIMESTAMP, temp DOUBLE,
  WATERMARK FOR ts AS ts) WITH (connector = 'sparkplug', group = 'Plant1');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
INSERT INTO out SELECT device, window_start, avg(temp) AS t, count(*) AS n
  FROM motors GROUP BY tumble(interval '10 seconds'), device;
";

/// The readings: temperature 40 + i / 4 at i seconds, i = 1..=45.
fn reading(i: i64) -> (i64, f64) {
    (BASE + i * 1000, 40.0 + i as f64 / 4.0)
}

async fn restart_pipeline(dir: &std::path::Path) -> Pipeline {
    let cfg = EngineConfig {
        checkpoint: Some(CheckpointConfig::new(dir)),
        ..EngineConfig::default()
    };
    Pipeline::builder()
        .query_sql("restart.sql", RESTART_SQL)
        .config(cfg)
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_a_checkpoint_keeps_the_alias_tables() {
    let broker = forewarn::mqtt::EmbeddedBroker::start().unwrap();
    let url = broker.url();
    let dir = std::env::temp_dir().join(format!("forewarn-spb-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (ncmd_sub, mut ncmd) = subscriber(&url, "spb-restart-ncmd", "spBv1.0/Plant1/NCMD/#").await;
    let edge = edge_node(&url, "spb-restart-edge").await;
    let (tap, mut outputs) = mpsc::channel::<Output>(10_000);
    let opts = mqtt::RunOptions::new("spb-restart");

    // First run: births and the readings of 1..=20 s.
    let run = mqtt::start(restart_pipeline(&dir).await, &url, &opts, Some(tap.clone()))
        .await
        .unwrap();
    edge.publish(
        &topic("NBIRTH", None),
        payload(Some(0), vec![bd_seq(1)]),
        false,
    )
    .await
    .unwrap();
    edge.publish(&topic("DBIRTH", Some("motor1")), dbirth(1), false)
        .await
        .unwrap();
    let mut seq = 2;
    let mut send = |i: i64| {
        let (ts, v) = reading(i);
        let (t, p) = (topic("DDATA", Some("motor1")), ddata(seq, ts, v));
        seq += 1;
        (t, p)
    };
    for i in 1..=20 {
        let (t, p) = send(i);
        edge.publish(&t, p, false).await.unwrap();
    }
    edge.flush(Duration::from_secs(10)).await.unwrap();
    // The last reading (20 s) closes the window at 10 s: everything is in; then a
    // clean stop writes the last checkpoint.
    let mut got: Vec<Output> = Vec::new();
    wait_for(&mut outputs, &mut got, "the window at 10 s", |o| {
        matches!(o, Output::Row { row, .. } if row.window_start == forewarn::Timestamp::from_millis(BASE + 10_000))
    })
    .await;
    let first = run.stop().await.unwrap();
    assert!(first.checkpoints > 0);

    // Second run from the checkpoint: the edge node goes on with the next seq.
    let p = restart_pipeline(&dir).await;
    assert!(p.restored_checkpoint().is_some());
    let run = mqtt::start(p, &url, &opts, Some(tap)).await.unwrap();
    for i in 21..=45 {
        let (t, p) = send(i);
        edge.publish(&t, p, false).await.unwrap();
    }
    edge.flush(Duration::from_secs(10)).await.unwrap();
    // The window [40, 50) s stays open; [30, 40) closes with the reading at 40 s.
    wait_for(&mut outputs, &mut got, "the window at 30 s", |o| {
        matches!(o, Output::Row { row, .. } if row.window_start == forewarn::Timestamp::from_millis(BASE + 30_000))
    })
    .await;
    let second = run.stop().await.unwrap();
    while let Ok(o) = outputs.try_recv() {
        got.push(o);
    }
    assert!(ncmd.try_recv().is_err(), "a rebirth was requested");
    ncmd_sub.stop().await;
    edge.stop().await;
    let refused: Vec<_> = got
        .iter()
        .filter_map(|o| match o {
            Output::DeadLetter { letter, .. } => Some(letter.reason),
            _ => None,
        })
        .collect();
    assert!(refused.is_empty(), "refused after the restart: {refused:?}");
    assert_eq!(first.dead_letters_out + second.dead_letters_out, 0);
    // The windows, computed here: [0, 10) s holds the birth's 40.0 and 1..=9 s.
    let mut want: BTreeMap<i64, (f64, i64)> = BTreeMap::new();
    let mut by_window: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    by_window.entry(BASE).or_default().push(40.0);
    for i in 1..=45 {
        let (ts, v) = reading(i);
        by_window.entry(ts - ts % 10_000).or_default().push(v);
    }
    for (start, vs) in by_window.into_iter().filter(|(s, _)| *s < BASE + 40_000) {
        want.insert(
            start,
            (vs.iter().sum::<f64>() / vs.len() as f64, vs.len() as i64),
        );
    }
    let mut windows: BTreeMap<i64, (f64, i64)> = BTreeMap::new();
    for o in &got {
        if let Output::Row { topic, row } = o {
            assert_eq!(topic, "o/motor1");
            let (t, n) = (
                row.columns["t"].as_f64().unwrap(),
                row.columns["n"].as_i64().unwrap(),
            );
            assert!(
                windows
                    .insert(row.window_start.as_millis(), (t, n))
                    .is_none(),
                "a window twice"
            );
        }
    }
    assert_eq!(windows, want);
    let _ = std::fs::remove_dir_all(&dir);
}
