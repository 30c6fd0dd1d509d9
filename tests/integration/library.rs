//! The embedded library API, with no broker: push JSON and Arrow batches, read outputs.

use crate::common;

use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::record_batch::RecordBatch;
use forewarn::{Output, Pipeline, Reason};
use serde_json::Value;

async fn run(
    push_batches: bool,
) -> (
    Vec<(String, Value)>,
    Vec<forewarn::DeadLetter>,
    forewarn::EngineStats,
) {
    let m = common::model();
    let pipeline = Pipeline::builder()
        .query_sql("scenario.sql", common::SQL)
        .model(m)
        .build()
        .await
        .unwrap();
    assert_eq!(pipeline.query_names(), vec!["scenario_1", "scenario_2"]);
    let schema = pipeline.sources()[0].schema.clone();
    let (handle, mut rx) = pipeline.start();
    let collector = tokio::spawn(async move {
        let (mut alerts, mut dead) = (vec![], vec![]);
        while let Some(o) = rx.recv().await {
            match o {
                Output::Alert { topic, alert } => {
                    alerts.push((topic, serde_json::to_value(&alert).unwrap()))
                }
                Output::DeadLetter { letter, .. } => dead.push(letter),
                other => panic!("the scenario declares no lifecycle: {other:?}"),
            }
        }
        (alerts, dead)
    });
    let readings = common::readings();
    let bad = common::bad_messages();
    if push_batches {
        // One Arrow batch per second of readings.
        for chunk in readings.chunks(3) {
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        chunk.iter().map(|r| r.device.clone()),
                    )),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        chunk.iter().map(|r| r.ts),
                    )),
                    Arc::new(Float64Array::from_iter_values(chunk.iter().map(|r| r.v))),
                    Arc::new(Float64Array::from_iter_values(chunk.iter().map(|r| r.t))),
                ],
            )
            .unwrap();
            handle.push_batch("readings", batch).await.unwrap();
        }
    } else {
        for (i, r) in readings.iter().enumerate() {
            handle
                .push_json(&common::topic(r), common::payload(r))
                .await
                .unwrap();
            if i % 20 == 0 {
                let (t, p, _) = &bad[(i / 20) % bad.len()];
                handle.push_json(t, p.clone()).await.unwrap();
            }
        }
    }
    let stats = handle.finish().await.unwrap();
    drop(handle);
    let (alerts, dead) = collector.await.unwrap();
    (alerts, dead, stats)
}

fn check(alerts: &[(String, Value)]) {
    let m = common::model();
    let windows: Vec<&Value> = alerts
        .iter()
        .filter(|(t, _)| t.starts_with("out/windows/"))
        .map(|(_, v)| v)
        .collect();
    let raised: Vec<&(String, Value)> = alerts
        .iter()
        .filter(|(t, _)| t.starts_with("forewarn/alerts/"))
        .collect();
    assert_eq!(
        windows.len(),
        common::expected_windows().len(),
        "one row per device and window"
    );
    for w in &windows {
        common::check_window(&m, w);
        let anomalous = w["device"] == "d2" && w["window_start"] == "2023-11-14T22:13:40.000Z";
        assert_eq!(w["score"].as_f64().unwrap() > 1.0, anomalous, "{w}");
    }
    assert_eq!(raised.len(), 1, "{raised:?}");
    let (topic, a) = raised[0];
    assert_eq!(topic, "forewarn/alerts/d2");
    assert_eq!(a["window_start"], "2023-11-14T22:13:40.000Z");
    assert_eq!(a["window_end"], "2023-11-14T22:13:50.000Z");
    assert_eq!(a["model"], "m");
    assert_eq!(a["query"], "scenario_2");
    assert_eq!(
        a["alert_id"].as_str().unwrap(),
        forewarn_alerts::alert_id("scenario_2", "d2", common::BASE + 20_000)
    );
    assert!(a["score"].as_f64().unwrap() > 1.0);
}

#[tokio::test]
async fn json_readings_with_bad_payloads() {
    let (alerts, dead, stats) = run(false).await;
    check(&alerts);
    // Every bad payload was dead-lettered with its reason; nothing else was rejected.
    let bad = common::bad_messages();
    let pushed: Vec<&str> = (0..common::readings().len())
        .step_by(20)
        .map(|i| bad[(i / 20) % bad.len()].2)
        .collect();
    let mut got: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    let mut want = pushed.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(stats.readings_in, 120);
    assert_eq!(stats.messages_in, 120 + pushed.len() as u64);
    assert_eq!(stats.alerts_out, 13);
    assert_eq!(stats.rows_out, 0, "both scenario queries call the model");
    assert!(dead
        .iter()
        .all(|d| d.source.as_deref() == Some("readings") && !d.excerpt.is_empty()));
}

#[tokio::test]
async fn arrow_batches_give_the_same_results() {
    let (alerts, dead, stats) = run(true).await;
    check(&alerts);
    assert!(dead.is_empty());
    assert_eq!(stats.readings_in, 120);
}

#[tokio::test]
async fn late_rows_are_published_not_dropped() {
    let pipeline = common::pipeline().await;
    let (handle, mut rx) = pipeline.start();
    let r = common::readings();
    for x in &r {
        handle
            .push_json(&common::topic(x), common::payload(x))
            .await
            .unwrap();
    }
    handle.flush().await.unwrap();
    // Window [0 s, 10 s) closed long ago (watermark is at 37 s).
    handle
        .push_json(
            "test/d1/data",
            br#"{"ts": 1700000005000, "v": 1.0, "t": 50.0}"#.to_vec(),
        )
        .await
        .unwrap();
    let stats = handle.finish().await.unwrap();
    drop(handle);
    let mut late = vec![];
    while let Some(o) = rx.recv().await {
        if let Output::DeadLetter { topic, letter } = o {
            late.push((topic, letter));
        }
    }
    // Late for both queries, but one reading: one late message, naming both.
    assert_eq!(late.len(), 1, "one late message per reading: {late:?}");
    let (topic, letter) = &late[0];
    assert_eq!(topic, "forewarn/late/readings");
    assert_eq!(letter.reason, Reason::Late);
    assert_eq!(letter.source_topic, "test/d1/data");
    assert_eq!(letter.source.as_deref(), Some("readings"));
    assert_eq!(
        letter.detail,
        "the watermark had passed the end of the reading's window [2023-11-14T22:13:20.000Z, 2023-11-14T22:13:30.000Z) (queries 'scenario_1', 'scenario_2')"
    );
    assert_eq!(stats.rejected.get("late"), Some(&1));
}

#[tokio::test]
async fn bad_queries_and_models_name_the_problem() {
    let e = Pipeline::builder().query_sql("q.sql", &common::SQL.replace("anomaly_score('m', avg(v), max(t)) AS score\nFROM readings GROUP BY tumble(interval '10 seconds'), device;", "anomaly_score('m', avg(v)) AS score\nFROM readings GROUP BY tumble(interval '10 seconds'), device;")).model(common::model()).build().await.unwrap_err();
    assert!(
        e.to_string()
            .contains("model 'm' takes 2 features (avg_v, max_t), but anomaly_score passes 1"),
        "{e}"
    );
    // Pointed at the call, not the statement.
    assert!(e.to_string().starts_with("q.sql:11:8:"), "{e}");
    let e = Pipeline::builder()
        .query_sql("q.sql", common::SQL)
        .build()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unknown model 'm'"), "{e}");
    let e = Pipeline::builder()
        .query_sql(
            "q.sql",
            &common::SQL.replace("avg(v) AS avg_v, max(t)", "avg(vv) AS avg_v, max(t)"),
        )
        .model(common::model())
        .build()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("vv"), "{e}");
}

#[tokio::test]
async fn wrong_batches_are_refused_and_the_pipeline_goes_on() {
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let pipeline = common::pipeline().await;
    let schema = pipeline.sources()[0].schema.clone();
    let (handle, mut rx) = pipeline.start();
    let other = Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, true)]));
    let wrong = RecordBatch::try_new(other, vec![Arc::new(Float64Array::from(vec![1.0]))]).unwrap();
    // A batch that does not fit is the caller's error, returned at once.
    let e = handle
        .push_batch("readings", wrong.clone())
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "source 'readings' has no column 'x' (its columns: device, ts, v, t)"
    );
    let e = handle.push_batch("nonexistent", wrong).await.unwrap_err();
    assert!(
        matches!(&e, forewarn::EngineError::UnknownSource { name, .. } if name == "nonexistent"),
        "{e}"
    );
    // A null device in a required column: that row is dead-lettered.
    let nullable = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    let nulls = RecordBatch::try_new(
        nullable,
        vec![
            Arc::new(StringArray::from(vec![None::<&str>])),
            Arc::new(TimestampMillisecondArray::from(vec![common::BASE])),
            Arc::new(Float64Array::from(vec![1.0])),
            Arc::new(Float64Array::from(vec![50.0])),
        ],
    )
    .unwrap();
    handle.push_batch("readings", nulls).await.unwrap();
    for r in common::readings() {
        handle
            .push_json(&common::topic(&r), common::payload(&r))
            .await
            .unwrap();
    }
    let stats = handle.finish().await.unwrap();
    drop(handle);
    let mut reasons = vec![];
    let mut alerts = 0;
    while let Some(o) = rx.recv().await {
        match o {
            Output::DeadLetter { letter, .. } => {
                assert_eq!(letter.index, Some(0));
                assert_eq!(letter.detail, "missing required field 'device'");
                reasons.push(letter.reason.as_str())
            }
            Output::Alert { .. } => alerts += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(reasons, vec!["missing_field"]);
    assert_eq!(
        alerts, 13,
        "the good readings after the bad batches were all processed"
    );
    assert_eq!(stats.query_errors, 0);
}

#[tokio::test]
async fn micro_batches_close_on_max_rows_or_max_delay() {
    let config = forewarn::EngineConfig {
        max_batch_rows: 10,
        max_batch_delay: std::time::Duration::from_millis(50),
        ..Default::default()
    };
    let pipeline = Pipeline::builder()
        .query_sql("scenario.sql", common::SQL)
        .model(common::model())
        .config(config)
        .build()
        .await
        .unwrap();
    let (handle, mut rx) = pipeline.start();
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let r = common::readings();
    for x in &r[..25] {
        handle
            .push_json(&common::topic(x), common::payload(x))
            .await
            .unwrap();
    }
    // Two full batches of 10 close at once; the remaining 5 readings wait for the delay.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while handle.stats().readings_in < 25 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let after_rows = handle.stats().batches;
    assert!(
        after_rows >= 2,
        "{after_rows} batches after 25 readings with max_batch_rows = 10"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        handle.stats().batches,
        3,
        "the last 5 readings were batched by the delay, without a flush"
    );
    handle.finish().await.unwrap();
}

#[tokio::test]
async fn models_built_in_code_are_checked_like_files() {
    let mut m = common::model();
    m.scaler.mean.pop();
    let e = Pipeline::builder()
        .query_sql("scenario.sql", common::SQL)
        .model(m)
        .build()
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains(
            "model 'm': invalid model file: scaler has 1 means and 2 deviations for 2 features"
        ),
        "{e}"
    );
}

/// A window of a large fleet closes with one result per device. They are built and
/// sent in chunks through the bounded output channel; none may be lost, repeated or
/// mixed up, even with a tiny channel and a slow reader.
#[tokio::test]
async fn a_large_fleet_window_arrives_whole_through_a_small_channel() {
    const DEVICES: usize = 1_000;
    let sql = "CREATE TABLE src (device TEXT, ts TIMESTAMP, v DOUBLE,
        WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
        WITH (connector = 'mqtt', topic = 'f/+', topic_template = 'f/{device}');
      CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
      INSERT INTO out SELECT device, count(*) AS n, sum(v) AS s
      FROM src GROUP BY tumble(interval '10 seconds'), device;";
    let config = forewarn::EngineConfig {
        channel_capacity: 4,
        ..Default::default()
    };
    let pipeline = Pipeline::builder()
        .query_sql("fleet.sql", sql)
        .config(config)
        .build()
        .await
        .unwrap();
    let (handle, mut rx) = pipeline.without_wall_clock().start();
    let reader = tokio::spawn(async move {
        let mut got = std::collections::BTreeMap::new();
        while let Some(o) = rx.recv().await {
            if let Output::Row { topic, row } = o {
                if got.len() % 100 == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                assert_eq!(topic, format!("o/{}", row.device));
                let n = row.columns["n"].as_i64().unwrap();
                let s = row.columns["s"].as_f64().unwrap();
                assert!(got.insert(row.device, (n, s)).is_none(), "repeated");
            }
        }
        got
    });
    let t0 = 1_700_000_000_000i64;
    for k in 0..3 {
        for d in 0..DEVICES {
            let payload = format!(r#"{{"ts":{},"v":{d}}}"#, t0 + k * 1000);
            handle
                .push_json(&format!("f/dev-{d:04}"), payload.into_bytes())
                .await
                .unwrap();
        }
    }
    handle.finish().await.unwrap();
    drop(handle);
    let got = reader.await.unwrap();
    assert_eq!(got.len(), DEVICES);
    for d in 0..DEVICES {
        assert_eq!(
            got[&format!("dev-{d:04}")],
            (3, 3.0 * d as f64),
            "dev-{d:04}"
        );
    }
}

/// `max_devices` holds for every input: pushed Arrow batches and device ids read from
/// the payload are admitted row by row like topics naming the device, and the rows of a
/// device beyond the limit are dead-lettered as `too_many_devices`, each with its row.
#[tokio::test]
async fn max_devices_holds_for_batches_and_payload_ids() {
    const SQL: &str = "CREATE TABLE readings (device TEXT, ts TIMESTAMP, v DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH (connector = 'mqtt', topic = 'plant/readings');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
INSERT INTO out SELECT device, window_start, count(*) AS n
FROM readings GROUP BY tumble(interval '10 seconds'), device;";
    let config = forewarn::EngineConfig {
        max_devices: 2,
        wall_clock: false,
        ..Default::default()
    };
    let p = Pipeline::builder()
        .query_sql("q.sql", SQL)
        .config(config)
        .build()
        .await
        .unwrap();
    let (h, mut rx) = p.start();
    // Devices d0..d5 in one batch (d0 twice), then d1 and d6 as JSON with the id in the
    // payload.
    const BASE: i64 = 1_700_000_000_000;
    let devices = ["d0", "d1", "d2", "d0", "d3", "d4", "d5"];
    let n = devices.len();
    let batch = RecordBatch::try_new(
        p_schema(),
        vec![
            Arc::new(StringArray::from(devices.to_vec())),
            Arc::new(TimestampMillisecondArray::from(vec![BASE; n])),
            Arc::new(Float64Array::from(vec![1.0; n])),
        ],
    )
    .unwrap();
    h.push_batch("readings", batch).await.unwrap();
    for d in ["d1", "d6"] {
        let msg = format!(r#"{{"device": "{d}", "ts": {}, "v": 1}}"#, BASE + 1000);
        h.push_json("plant/readings", msg.into_bytes())
            .await
            .unwrap();
    }
    let stats = h.finish().await.unwrap();
    drop(h);
    let (mut counts, mut refused) = (std::collections::BTreeMap::new(), Vec::new());
    while let Some(o) = rx.recv().await {
        match o {
            Output::Row { row, .. } => {
                counts.insert(row.device.clone(), row.columns["n"].as_i64().unwrap());
            }
            Output::DeadLetter { letter, .. } => {
                assert_eq!(letter.reason, Reason::TooManyDevices, "{letter:?}");
                refused.push((letter.index, letter.source_topic.clone()));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        counts,
        [("d0".into(), 2), ("d1".into(), 2)].into(),
        "{counts:?}"
    );
    // Batch rows 2, 4, 5, 6 (d2, d3, d4, d5), then the d6 message.
    assert_eq!(
        refused,
        [
            (Some(2), String::new()),
            (Some(4), String::new()),
            (Some(5), String::new()),
            (Some(6), String::new()),
            (None, "plant/readings".into())
        ]
    );
    assert_eq!(stats.readings_in, 9, "{stats:?}");
}

fn p_schema() -> datafusion::arrow::datatypes::SchemaRef {
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("v", DataType::Float64, true),
    ]))
}

/// A sink without a lifecycle: the rows of a query that selects a `score` are alerts,
/// those of a plain aggregate are window rows, counted apart; on the wire both are the
/// alert format, the rows without `score` and `model`.
#[tokio::test]
async fn plain_window_rows_are_rows_and_scored_rows_are_alerts() {
    const SQL: &str = "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH (connector = 'mqtt', topic = 'r/+', topic_template = 'r/{device}');
CREATE TABLE counts WITH (connector = 'mqtt', topic = 'counts/{device}');
CREATE TABLE scored WITH (connector = 'mqtt', topic = 'scored/{device}');
INSERT INTO counts SELECT device, window_start, window_end, count(*) AS n, sum(v) AS s
FROM r GROUP BY tumble(interval '10 seconds'), device;
INSERT INTO scored SELECT device, avg(v) / 2 AS score, max(v) AS hi
FROM r GROUP BY tumble(interval '10 seconds'), device;";
    const BASE: i64 = 1_767_600_000_000; // 2026-01-05T08:00:00Z
    let p = Pipeline::builder()
        .query_sql("q.sql", SQL)
        .build()
        .await
        .unwrap();
    let (h, mut rx) = p.without_wall_clock().start();
    // d1: 1, 2, 3 in [0, 10 s); d2: 4 in [10 s, 20 s).
    for (d, t, v) in [
        ("d1", 0, 1),
        ("d1", 4_000, 2),
        ("d1", 9_999, 3),
        ("d2", 12_000, 4),
    ] {
        let msg = format!(r#"{{"ts": {}, "v": {v}}}"#, BASE + t);
        h.push_json(&format!("r/{d}"), msg.into_bytes())
            .await
            .unwrap();
    }
    let stats = h.finish().await.unwrap();
    drop(h);
    let mut outs = vec![];
    while let Some(o) = rx.recv().await {
        outs.push(o);
    }
    assert_eq!((stats.rows_out, stats.alerts_out), (2, 2), "{stats:?}");
    assert_eq!(stats.results, 4);
    let mut rows = vec![];
    let mut alerts = vec![];
    for o in &outs {
        match o {
            Output::Row { topic, row } => {
                assert_eq!(o.query(), Some("q_1"));
                rows.push((topic.clone(), row.clone(), o.to_message()))
            }
            Output::Alert { topic, alert } => {
                assert_eq!(o.query(), Some("q_2"));
                alerts.push((topic.clone(), alert.clone()))
            }
            other => panic!("{other:?}"),
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    alerts.sort_by(|a, b| a.0.cmp(&b.0));
    let (topic, row, (msg_topic, payload)) = &rows[0];
    assert_eq!(
        (topic.as_str(), msg_topic.as_str()),
        ("counts/d1", "counts/d1")
    );
    assert_eq!(row.window_start, forewarn::Timestamp::from_millis(BASE));
    assert_eq!(row.window_end.as_millis(), BASE + 10_000);
    assert_eq!(
        String::from_utf8(payload.clone()).unwrap(),
        format!(
            r#"{{"schema_version":1,"alert_id":"{}","query":"q_1","device":"d1","window_start":"2026-01-05T08:00:00.000Z","window_end":"2026-01-05T08:00:10.000Z","features":{{"n":3,"s":6.0}}}}"#,
            forewarn_alerts::alert_id("q_1", "d1", BASE)
        )
    );
    assert_eq!(rows[1].1.device, "d2");
    assert_eq!(rows[1].1.columns["n"], 1);
    assert_eq!(
        alerts
            .iter()
            .map(|(t, a)| (t.as_str(), a.score))
            .collect::<Vec<_>>(),
        [("scored/d1", Some(1.0)), ("scored/d2", Some(2.0))]
    );
    assert_eq!(alerts[0].1.features["hi"], 3.0);
    assert_eq!(alerts[0].1.model, None);
}

/// A source with a plain 10 s window per device and no model; its outputs are read as
/// published (topic and JSON), whatever their kind.
const PLAIN: &str = "
CREATE TABLE r (
  device TEXT, ts TIMESTAMP, v DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH (connector = 'mqtt', topic = 'g/+/data', topic_template = 'g/{device}/data', format = 'json');
CREATE TABLE w WITH (connector = 'mqtt', topic = 'out/{device}', format = 'json');
INSERT INTO w SELECT device, window_start, count(*) AS n, sum(v) AS sum_v
FROM r GROUP BY tumble(interval '10 seconds'), device;
";

fn plain_builder(config: forewarn::EngineConfig) -> forewarn::PipelineBuilder {
    Pipeline::builder()
        .query_sql("plain.sql", PLAIN)
        .config(config)
}

/// Window rows as (device, window start, n, sum_v); dead letters as (reason, index).
type Rows = Vec<(String, String, i64, f64)>;
fn split(outputs: Vec<Output>) -> (Rows, Vec<(String, Option<usize>)>) {
    let (mut rows, mut dead) = (vec![], vec![]);
    for o in outputs {
        if let Output::DeadLetter { letter, .. } = &o {
            dead.push((letter.reason.as_str().to_string(), letter.index));
            continue;
        }
        let (topic, payload) = o.to_message();
        let v: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(topic, format!("out/{}", v["device"].as_str().unwrap()));
        // An alert nests the other columns under `features`; a plain row may not.
        let f = v.get("features").unwrap_or(&v);
        rows.push((
            v["device"].as_str().unwrap().to_string(),
            v["window_start"].as_str().unwrap().to_string(),
            f["n"].as_i64().unwrap(),
            f["sum_v"].as_f64().unwrap(),
        ));
    }
    rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    (rows, dead)
}

const W0: &str = "2023-11-14T22:13:20.000Z"; // BASE
const W1: &str = "2023-11-14T22:13:30.000Z"; // BASE + 10 s

#[tokio::test]
async fn batches_and_records_match_by_name_and_bad_rows_are_dead_lettered() {
    use datafusion::arrow::array::{Float32Array, TimestampNanosecondArray};
    let pipeline = plain_builder(Default::default()).build().await.unwrap();
    let (handle, mut rx) = pipeline.start();
    // Columns out of order, v as Float32, ts in nanoseconds with a UTC zone.
    let b = RecordBatch::try_from_iter(vec![
        (
            "v",
            Arc::new(Float32Array::from(vec![1.5, 2.0, f32::NAN, 4.0])) as _,
        ),
        (
            "ts",
            Arc::new(
                TimestampNanosecondArray::from(
                    [0i64, 1_000, 2_000, 3_000]
                        .iter()
                        .map(|ms| (common::BASE + ms) * 1_000_000)
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ) as _,
        ),
        (
            "device",
            Arc::new(StringArray::from(vec![
                Some("d1"),
                None,
                Some("d1"),
                Some("d2"),
            ])) as _,
        ),
    ])
    .unwrap();
    assert!(handle.try_push_batch("r", b).unwrap().is_none(), "room");
    // The caller's structs, v left out for the second (a nullable column).
    #[derive(serde::Serialize)]
    struct Reading {
        device: &'static str,
        ts: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        v: Option<f64>,
    }
    handle
        .push_records(
            "r",
            &[
                Reading {
                    device: "d2",
                    ts: common::BASE + 4_000,
                    v: Some(0.25),
                },
                Reading {
                    device: "d1",
                    ts: common::BASE + 12_000,
                    v: Some(8.0),
                },
            ],
        )
        .await
        .unwrap();
    // Int64 is not lossless as DOUBLE: refused, nothing taken.
    let wide = RecordBatch::try_from_iter(vec![
        ("device", Arc::new(StringArray::from(vec!["d1"])) as _),
        (
            "ts",
            Arc::new(TimestampMillisecondArray::from(vec![common::BASE])) as _,
        ),
        (
            "v",
            Arc::new(datafusion::arrow::array::Int64Array::from(vec![1])) as _,
        ),
    ])
    .unwrap();
    let e = handle.push_batch("r", wide).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "source 'r': column 'v' is Int64, which cannot be read as Float64 without loss"
    );
    let stats = handle.finish().await.unwrap();
    drop(handle);
    let mut outs = vec![];
    while let Some(o) = rx.recv().await {
        outs.push(o);
    }
    let (rows, dead) = split(outs);
    assert_eq!(
        dead,
        vec![
            ("missing_field".to_string(), Some(1)),
            ("non_finite".to_string(), Some(2))
        ]
    );
    assert_eq!(
        rows,
        vec![
            ("d1".into(), W0.into(), 1, 1.5),
            ("d1".into(), W1.into(), 1, 8.0),
            ("d2".into(), W0.into(), 2, 4.25),
        ]
    );
    assert_eq!(stats.readings_in, 4, "{stats:?}");
    assert_eq!(stats.messages_in, 2);
}

#[tokio::test]
async fn gauges_after_a_known_input() {
    let config = forewarn::EngineConfig {
        max_state_bytes: 123_456_789,
        ..Default::default()
    };
    let pipeline = plain_builder(config).build().await.unwrap();
    let (handle, mut rx) = pipeline.start();
    let s = handle.stats();
    assert_eq!(
        (s.max_state_bytes, s.open_windows, s.state_bytes),
        (123_456_789, 0, 0)
    );
    let push = |device: &str, ms: i64| {
        let h = handle.clone();
        let (topic, payload) = (
            format!("g/{device}/data"),
            format!(r#"{{"ts": {}, "v": 1.0}}"#, common::BASE + ms).into_bytes(),
        );
        async move { h.push_json(&topic, payload).await.unwrap() }
    };
    push("d1", 1_000).await;
    push("d2", 5_000).await;
    push("d3", 9_000).await;
    // The watermark passes the first window's end: it closes with 3 device rows.
    push("d1", 12_500).await;
    handle.flush().await.unwrap();
    let s = handle.stats();
    let gauges = &s.sources["r"];
    assert_eq!(gauges.devices, 3);
    assert_eq!(gauges.newest_event, Some(common::BASE + 12_500));
    assert_eq!(gauges.watermark, Some(common::BASE + 11_500));
    assert_eq!(gauges.lag_ms, Some(1_000));
    assert_eq!(s.open_windows, 1, "the second window only: {s:?}");
    assert!(s.state_bytes > 0, "{s:?}");
    assert_eq!((s.windows_closed, s.results), (1, 3));
    assert_eq!(s.output_queue, 3, "three rows unread");
    assert_eq!(s.input_queue, 0);
    for _ in 0..3 {
        rx.recv().await.unwrap();
    }
    assert_eq!(handle.stats().output_queue, 0);
    let s = handle.finish().await.unwrap();
    assert_eq!(s.open_windows, 0);
    // Finishing moved the watermark past the newest event: nothing trails it.
    assert!(
        s.sources["r"].watermark > s.sources["r"].newest_event,
        "{s:?}"
    );
    assert_eq!(s.sources["r"].lag_ms, Some(0));
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_outputs_and_counts_the_rest() {
    let config = forewarn::EngineConfig {
        channel_capacity: 4,
        output_policy: forewarn::OutputPolicy::DropOldest,
        ..Default::default()
    };
    let pipeline = plain_builder(config).build().await.unwrap();
    let (handle, mut rx) = pipeline.start();
    // 20 outputs (one dead letter per bad message) that nobody reads: under Block the
    // pipeline would wait for room after 4 and `finish` would never return.
    for i in 0..20 {
        handle
            .push_json("g/d1/data", format!("{{not json {i}").into_bytes())
            .await
            .unwrap();
    }
    let stats = tokio::time::timeout(std::time::Duration::from_secs(10), handle.finish())
        .await
        .expect("the pipeline does not wait for the reader")
        .unwrap();
    assert_eq!(stats.dead_letters_out, 20);
    assert_eq!(stats.outputs_dropped, 16);
    assert_eq!(handle.stats().output_queue, 4);
    drop(handle);
    let mut got = vec![];
    while let Some(o) = rx.recv().await {
        let Output::DeadLetter { letter, .. } = o else {
            panic!("{o:?}")
        };
        got.push(letter.excerpt);
    }
    assert_eq!(got.len(), 4, "{got:?}");
    // The newest three; before them at most one older output handed over earlier.
    assert_eq!(got[1..], ["{not json 17", "{not json 18", "{not json 19"]);
    let first: usize = got[0]["{not json ".len()..].parse().unwrap();
    assert!(first < 17, "{got:?}");
}

#[tokio::test]
async fn drop_oldest_is_refused_with_confirmed_outputs() {
    // Refused before the directory is looked at.
    let mut ckpt = forewarn::CheckpointConfig::new(std::env::temp_dir().join("never-created"));
    ckpt.confirm_outputs = true;
    let config = forewarn::EngineConfig {
        output_policy: forewarn::OutputPolicy::DropOldest,
        checkpoint: Some(ckpt),
        ..Default::default()
    };
    let e = plain_builder(config).build().await.unwrap_err();
    assert!(
        matches!(&e, forewarn::EngineError::Config(m) if m.contains("confirm_outputs")),
        "{e}"
    );
}

/// The blocking facade from plain threads: no async runtime in the test.
#[test]
fn blocking_pipeline_from_plain_threads() {
    use forewarn::blocking::BlockingPipeline;
    let p = BlockingPipeline::build(plain_builder(Default::default())).unwrap();
    let mut outs = vec![];
    std::thread::scope(|scope| {
        let pusher = scope.spawn(|| {
            for (d, ms) in [("d1", 0), ("d2", 1_000), ("d1", 2_000), ("d2", 15_000)] {
                let payload = format!(r#"{{"ts": {}, "v": 2.0}}"#, common::BASE + ms);
                p.push_json(&format!("g/{d}/data"), payload.into_bytes())
                    .unwrap();
            }
        });
        pusher.join().unwrap();
        // The 15 s reading moved the watermark past the first window.
        while outs.len() < 2 {
            outs.push(
                p.recv_timeout(std::time::Duration::from_secs(10))
                    .expect("the first window's two rows"),
            );
        }
    });
    assert!(p.poll().is_none());
    let stats = p.finish().unwrap();
    while let Some(o) = p.poll() {
        outs.push(o);
    }
    let (rows, dead) = split(outs);
    assert!(dead.is_empty());
    assert_eq!(
        rows,
        vec![
            ("d1".into(), W0.into(), 2, 4.0),
            ("d2".into(), W0.into(), 1, 2.0),
            ("d2".into(), W1.into(), 1, 2.0),
        ]
    );
    assert_eq!((stats.readings_in, stats.results), (4, 3));
    // Pushing after the end is an error, not a hang.
    assert!(matches!(
        p.push_json("g/d1/data", b"{}".to_vec()),
        Err(forewarn::EngineError::Stopped)
    ));
}
