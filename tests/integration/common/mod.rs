//! A scripted scenario shared by the end-to-end tests: three devices, four 10-second
//! tumbling windows, one planted anomaly, and bad payloads mixed into the stream.
//! Expected window results are computed here in plain Rust, independently of DataFusion.
#![allow(dead_code)]

pub mod ckpt;
pub mod http;
pub mod mosquitto;

use std::collections::BTreeMap;

use forewarn::{Model, TrainOptions};
use ndarray::Array2;
use serde_json::{json, Value};

/// Epoch ms of the first reading (a multiple of 10 s).
pub const BASE: i64 = 1_700_000_000_000;

pub const SQL: &str = "
CREATE TABLE readings (
  device TEXT, ts TIMESTAMP, v DOUBLE, t DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'mqtt', topic = 'test/+/data', topic_template = 'test/{device}/data', format = 'json');
CREATE TABLE windows WITH (connector = 'mqtt', topic = 'out/windows/{device}', format = 'json');
CREATE TABLE alerts WITH (connector = 'mqtt', topic = 'forewarn/alerts/{device}', format = 'json');

INSERT INTO windows
SELECT device, window_start, window_end, count(*) AS n, avg(v) AS avg_v, max(t) AS max_t,
       anomaly_score('m', avg(v), max(t)) AS score
FROM readings GROUP BY tumble(interval '10 seconds'), device;

INSERT INTO alerts
SELECT device, window_start, window_end, avg(v) AS avg_v, max(t) AS max_t,
       anomaly_score('m', avg(v), max(t)) AS score
FROM readings GROUP BY tumble(interval '10 seconds'), device
HAVING anomaly_score('m', avg(v), max(t)) > 1.0;
";

/// The model: a GMM trained on a grid of normal (avg_v, max_t) values.
pub fn model() -> Model {
    let mut rows = Vec::new();
    for i in 0..40 {
        for j in 0..40 {
            rows.push(0.96 + 0.08 * i as f64 / 39.0);
            rows.push(50.0 + 2.0 * j as f64 / 39.0);
        }
    }
    let x = Array2::from_shape_vec((1600, 2), rows).unwrap();
    Model::train_gmm(
        "m",
        vec!["avg_v".into(), "max_t".into()],
        x.view(),
        &TrainOptions {
            kind: forewarn::ModelKind::Gmm { components: 2 },
            ..Default::default()
        },
    )
    .unwrap()
}

/// The scenario's pipeline: [`SQL`] with [`model`].
pub async fn pipeline() -> forewarn::Pipeline {
    forewarn::Pipeline::builder()
        .query_sql("scenario.sql", SQL)
        .model(model())
        .build()
        .await
        .unwrap()
}

/// One reading.
#[derive(Debug, Clone)]
pub struct Reading {
    pub device: String,
    pub ts: i64,
    pub v: f64,
    pub t: f64,
}

/// The readings, in publish order: 40 seconds of one reading per second per device.
/// d2 misbehaves in the window [20 s, 30 s).
pub fn readings() -> Vec<Reading> {
    let mut out = Vec::new();
    for s in 0..40i64 {
        for (k, d) in ["d1", "d2", "d3"].iter().enumerate() {
            let i = s + k as i64 * 13;
            let mut v = 1.0 + ((i * 7 % 5) as f64 - 2.0) * 0.02;
            let mut t = 50.0 + ((i * 3 % 7) as f64 - 3.0) * 0.3;
            if *d == "d2" && (20..30).contains(&s) {
                v = 1.8;
                t = 58.0 + (s % 3) as f64;
            }
            out.push(Reading {
                device: d.to_string(),
                ts: BASE + s * 1000,
                v,
                t,
            });
        }
    }
    out
}

pub fn topic(r: &Reading) -> String {
    format!("test/{}/data", r.device)
}

pub fn payload(r: &Reading) -> Vec<u8> {
    serde_json::to_vec(&json!({"ts": r.ts, "v": r.v, "t": r.t})).unwrap()
}

/// Bad messages mixed into the stream, with the reason code each must produce.
pub fn bad_messages() -> Vec<(String, Vec<u8>, &'static str)> {
    vec![
        ("test/d1/data".into(), b"{not json".to_vec(), "not_json"),
        (
            "test/d1/data".into(),
            br#"{"v": 1.0, "t": 50}"#.to_vec(),
            "missing_field",
        ),
        (
            "test/d3/data".into(),
            br#"{"ts": "tomorrow", "v": 1.0}"#.to_vec(),
            "bad_timestamp",
        ),
        (
            "test/d3/data".into(),
            br#"{"ts": 1700000001000, "v": "high"}"#.to_vec(),
            "wrong_type",
        ),
        (
            "test/d2/data".into(),
            br#"{"ts": 1700000001000, "v": "NaN"}"#.to_vec(),
            "non_finite",
        ),
        ("test/d2/data".into(), vec![0xff, 0xfe, 0x00], "not_json"),
    ]
}

/// Expected per (device, window start): (count, avg_v, max_t).
pub fn expected_windows() -> BTreeMap<(String, i64), (i64, f64, f64)> {
    let mut acc: BTreeMap<(String, i64), (i64, f64, f64)> = BTreeMap::new();
    for r in readings() {
        let w = r.ts - r.ts.rem_euclid(10_000);
        let e = acc
            .entry((r.device.clone(), w))
            .or_insert((0, 0.0, f64::MIN));
        e.0 += 1;
        e.1 += r.v;
        e.2 = e.2.max(r.t);
    }
    acc.into_iter()
        .map(|(k, (n, s, m))| (k, (n, s / n as f64, m)))
        .collect()
}

/// Checks a window row (as published JSON) against the independent computation.
pub fn check_window(m: &Model, row: &Value) {
    let device = row["device"].as_str().unwrap().to_string();
    let start = forewarn_core::parse_rfc3339(row["window_start"].as_str().unwrap()).unwrap();
    let exp = expected_windows()[&(device.clone(), start)];
    let f = &row["features"];
    assert_eq!(f["n"].as_i64(), Some(exp.0), "{row}");
    assert!((f["avg_v"].as_f64().unwrap() - exp.1).abs() < 1e-9, "{row}");
    assert_eq!(f["max_t"].as_f64().unwrap(), exp.2, "{row}");
    let score = m.score_one(&[exp.1, exp.2]).unwrap();
    assert!(
        (row["score"].as_f64().unwrap() - score).abs() < 1e-9,
        "{row} vs {score}"
    );
}

/// Runs the scenario through a real broker at `url`: an external publisher, the
/// engine, and an external subscriber. Checks every window result and alert.
/// Returns everything the engine published, as (topic, JSON payload), in arrival order.
pub async fn scenario_over_broker(
    url: &forewarn::mqtt::BrokerUrl,
    tag: &str,
) -> Vec<(String, Value)> {
    scenario_over_broker_with(url, tag, forewarn::mqtt::MqttVersion::V311, SQL).await
}

/// [`scenario_over_broker`] with the engine speaking `version` and running `sql` (the
/// scenario's [`SQL`] with other sink options).
pub async fn scenario_over_broker_with(
    url: &forewarn::mqtt::BrokerUrl,
    tag: &str,
    version: forewarn::mqtt::MqttVersion,
    sql: &str,
) -> Vec<(String, Value)> {
    use forewarn::mqtt::{self, MqttSink, MqttSource, QoS, SourceOptions};
    use std::time::Duration;

    let m = model();
    let pipeline = forewarn::Pipeline::builder()
        .query_sql("scenario.sql", sql)
        .model(m.clone())
        .build()
        .await
        .unwrap();
    let mut opts = mqtt::RunOptions::new(&format!("engine-{tag}"));
    opts.version = version;
    let running = mqtt::start(pipeline, url, &opts, None).await.unwrap();
    let filters = vec![
        "out/windows/#".to_string(),
        "forewarn/alerts/#".to_string(),
        "forewarn/deadletter/#".to_string(),
    ];
    let (mut sub, mut rx) = MqttSource::start(SourceOptions::new(
        url.clone(),
        &format!("observer-{tag}"),
        filters,
    ));
    sub.wait_connected(Duration::from_secs(10)).await.unwrap();
    let mut publisher = MqttSink::start(url.clone(), &format!("plant-{tag}"), QoS::AtLeastOnce);
    publisher
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut sent = 0u64;
    for (t, p) in scenario_messages() {
        publisher.publish(&t, p, false).await.unwrap();
        sent += 1;
    }
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    assert!(
        running
            .wait_for_messages(sent, Duration::from_secs(20))
            .await,
        "engine got {} of {sent}",
        running.handle().stats().messages_in
    );
    let stats = running.stop().await.unwrap();
    assert_eq!(stats.messages_in, sent);
    assert_eq!(stats.readings_in, 120);

    let expected_msgs = expected_windows().len() + 1 + 3;
    let mut got: Vec<(String, Value)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < expected_msgs {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(msg)) => got.push((msg.topic, serde_json::from_slice(&msg.payload).unwrap())),
            _ => break,
        }
    }
    // Nothing beyond what was expected arrives.
    if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        panic!("unexpected message on {}", extra.topic);
    }
    sub.stop().await;
    publisher.stop().await;

    let windows: Vec<&Value> = got
        .iter()
        .filter(|(t, _)| t.starts_with("out/windows/"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(windows.len(), expected_windows().len());
    for w in &windows {
        check_window(&m, w);
    }
    let alerts: Vec<&(String, Value)> = got
        .iter()
        .filter(|(t, _)| t.starts_with("forewarn/alerts/"))
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].0, "forewarn/alerts/d2");
    assert_eq!(alerts[0].1["window_start"], "2023-11-14T22:13:40.000Z");
    assert!(alerts[0].1["score"].as_f64().unwrap() > 1.0);
    let mut dead: Vec<&str> = got
        .iter()
        .filter(|(t, _)| t.starts_with("forewarn/deadletter/"))
        .map(|(_, v)| v["reason"].as_str().unwrap())
        .collect();
    dead.sort();
    assert_eq!(dead, vec!["bad_timestamp", "missing_field", "not_json"]);
    got
}

/// The scenario's messages in publish order: the readings with a bad message after
/// every 40th.
pub fn scenario_messages() -> Vec<(String, Vec<u8>)> {
    let bad = bad_messages();
    let mut out = Vec::new();
    for (i, r) in readings().iter().enumerate() {
        out.push((topic(r), payload(r)));
        if i % 40 == 0 {
            let (t, p, _) = &bad[(i / 40) % bad.len()];
            out.push((t.clone(), p.clone()));
        }
    }
    out
}

/// A rule with a lifecycle over [`SQL`]'s source: raise after two windows scoring >= 1,
/// clear after two below 0.8; with an explanation.
pub const LIFECYCLE_SQL: &str = "
CREATE TABLE readings (
  device TEXT, ts TIMESTAMP, v DOUBLE, t DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'mqtt', topic = 'test/+/data', topic_template = 'test/{device}/data');
CREATE TABLE alerts WITH (
  connector = 'mqtt', topic = 'forewarn/alerts/{device}',
  warning_at = '1.0', clear_below = '0.8', raise_after = '2', clear_after = '2',
  severity = 'maintenance'
);
INSERT INTO alerts
SELECT device, window_start, window_end, avg(v) AS avg_v, max(t) AS max_t,
       anomaly_score('m', avg(v), max(t)) AS score,
       top_contributors('m', avg(v), max(t)) AS explanation
FROM readings GROUP BY tumble(interval '10 seconds'), device;
";

/// Two minutes of three devices; d2 misbehaves from 30 s to 70 s.
pub fn lifecycle_messages() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for s in 0..120i64 {
        for d in ["d1", "d2", "d3"] {
            let bad = d == "d2" && (30..70).contains(&s);
            let (v, t) = if bad { (1.8, 58.0) } else { (1.0, 50.5) };
            let payload = json!({"ts": BASE + s * 1000, "v": v, "t": t});
            out.push((format!("test/{d}/data"), payload.to_string().into_bytes()));
        }
    }
    out
}

/// [`LIFECYCLE_SQL`] with [`model`].
pub async fn lifecycle_pipeline() -> forewarn::Pipeline {
    forewarn::Pipeline::builder()
        .query_sql("delivery.sql", LIFECYCLE_SQL)
        .model(model())
        .build()
        .await
        .unwrap()
}

/// A QoS 1 publisher, connected.
pub async fn connected_publisher(
    url: &forewarn::mqtt::BrokerUrl,
    client_id: &str,
) -> forewarn::mqtt::MqttSink {
    let mut p =
        forewarn::mqtt::MqttSink::start(url.clone(), client_id, forewarn::mqtt::QoS::AtLeastOnce);
    p.wait_connected(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    p
}

/// A port on 127.0.0.1 the OS says is free now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
