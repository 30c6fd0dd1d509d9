//! `connector = 'sparkplug'` against an edge node that is not ours: a Python process
//! (Eclipse Tahu's protobuf module from PyPI's mqtt-spb-wrapper, paho-mqtt) publishing
//! births, aliased data, data before a birth, a sequence gap and an undeclared alias,
//! then killed so the broker publishes its will (NDEATH). Skipped with a message when
//! python or its modules are missing (`.ci/run` installs them).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use forewarn::{Output, Pipeline, Reason};
use tokio::sync::mpsc;

const SQL: &str = "CREATE TABLE motors (edge_node TEXT, device TEXT, ts TIMESTAMP,
  bearing_temp DOUBLE, speed DOUBLE, WATERMARK FOR ts AS ts)
  WITH (connector = 'sparkplug', group = 'Plant1',
        metric_map = 'Motor/Bearing Temp=bearing_temp', rebirth_interval = '200 milliseconds');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
INSERT INTO out SELECT device, window_start, avg(bearing_temp) AS t, max(speed) AS s,
  count(*) AS n FROM motors GROUP BY tumble(interval '10 seconds'), device;
";

/// A multiple of the window width.
const BASE: i64 = 1_700_000_000_000;

/// The readings the edge node sends that must count, as (ms, bearing temp, speed): the
/// birth's values and data i = 1..12 except the one after the gap (i = 6), and i = 25.
fn readings() -> Vec<(i64, f64, f64)> {
    let mut r = vec![(BASE, 40.0, 1000.0)];
    for i in (1..=12).filter(|i| *i != 6) {
        r.push((BASE + i * 1000, 40.0 + i as f64 * 0.5, 1000.0 + i as f64));
    }
    r.push((BASE + 25_000, 52.0, 1025.0));
    r
}

/// The windows of [`readings`], computed here: window start → (avg temp, max speed, n).
fn expected_windows() -> BTreeMap<String, (f64, f64, i64)> {
    let mut by_window: BTreeMap<i64, Vec<(f64, f64)>> = BTreeMap::new();
    for (ts, t, s) in readings() {
        by_window.entry(ts - ts % 10_000).or_default().push((t, s));
    }
    by_window
        .into_iter()
        .map(|(start, rs)| {
            let n = rs.len() as f64;
            let avg = rs.iter().map(|r| r.0).sum::<f64>() / n;
            let max = rs.iter().map(|r| r.1).fold(f64::MIN, f64::max);
            (forewarn::format_rfc3339(start), (avg, max, rs.len() as i64))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_edge_node_births_data_gap_and_will() {
    let broker = forewarn::mqtt::EmbeddedBroker::start().unwrap();
    let pipeline = Pipeline::builder()
        .query_sql("spb.sql", SQL)
        .build()
        .await
        .unwrap();
    let (tap, mut outputs) = mpsc::channel::<Output>(10_000);
    let run = forewarn::mqtt::start(
        pipeline,
        &broker.url(),
        &forewarn::mqtt::RunOptions::new("spb-test"),
        Some(tap),
    )
    .await
    .unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/sparkplug_edge.py"
    );
    let Ok(mut edge) = Command::new("python3")
        .arg(script)
        .arg(broker.addr().port().to_string())
        .arg(BASE.to_string())
        .stdout(Stdio::piped())
        .spawn()
    else {
        eprintln!("SKIPPED sparkplug edge node: no python3");
        run.stop().await.unwrap();
        return;
    };
    let mut lines = BufReader::new(edge.stdout.take().unwrap()).lines();
    let mut ncmd = Vec::new();
    loop {
        let line = lines.next().expect("the edge node's output").unwrap();
        if let Some(skip) = line.strip_prefix("SKIP ") {
            eprintln!("SKIPPED sparkplug edge node: {skip}");
            let _ = edge.wait();
            run.stop().await.unwrap();
            return;
        }
        if line == "DONE" {
            break;
        }
        ncmd.push(line);
    }
    // The last message must have reached the engine before the will.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Killed, not disconnected: the broker publishes the will (NDEATH, bdSeq 5).
    edge.kill().unwrap();
    edge.wait().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut got: Vec<Output> = Vec::new();
    let offline = |got: &[Output]| {
        got.iter().any(|o| {
            matches!(o, Output::State { state, .. } if state.device == "motor1" && state.offline_since.is_some())
        })
    };
    while !offline(&got) && tokio::time::Instant::now() < deadline {
        if let Ok(Some(o)) = tokio::time::timeout(Duration::from_millis(100), outputs.recv()).await
        {
            got.push(o);
        }
    }
    // Rebirth requests reached the edge node: for the data before its birth, and for
    // the gap 0.5 s later (past the 200 ms limit); maybe one more for the alias.
    let late_ncmd: Vec<String> = lines.map_while(Result::ok).collect();
    ncmd.extend(late_ncmd);
    assert!(ncmd.len() >= 2, "rebirth requests: {ncmd:?}");
    assert!(
        ncmd.iter().all(|l| l == "NCMD Node Control/Rebirth=True"),
        "{ncmd:?}"
    );
    run.stop().await.unwrap();
    while let Ok(o) = outputs.try_recv() {
        got.push(o);
    }
    // Offline: motor1 and the edge node itself, from the will.
    for device in ["motor1", "edge1"] {
        assert!(
            got.iter().any(
                |o| matches!(o, Output::State { topic, state } if state.device == device
                && state.offline_since.is_some() && topic == &format!("forewarn/state/{device}"))
            ),
            "{device} not offline"
        );
    }
    // Dead letters: exactly one of each.
    let mut reasons: Vec<Reason> = got
        .iter()
        .filter_map(|o| match o {
            Output::DeadLetter { letter, topic } => {
                assert_eq!(topic, "forewarn/deadletter/motors");
                Some(letter.reason)
            }
            _ => None,
        })
        .collect();
    reasons.sort();
    let mut want = vec![Reason::NoBirth, Reason::UnknownAlias, Reason::SeqGap];
    want.sort();
    assert_eq!(reasons, want);
    let expected = expected_windows();
    let mut windows: BTreeMap<String, (f64, f64, i64)> = BTreeMap::new();
    for o in &got {
        if let Output::Row { topic, .. } = o {
            assert_eq!(topic, "o/motor1");
            let (_, payload) = o.to_message();
            let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            let w = v["window_start"].as_str().unwrap().to_string();
            let f = &v["features"];
            let (t, s, n) = (f["t"].as_f64(), f["s"].as_f64(), f["n"].as_i64());
            let (t, s, n) = (t.unwrap(), s.unwrap(), n.unwrap());
            assert!(windows.insert(w, (t, s, n)).is_none(), "a window twice");
        }
    }
    assert_eq!(windows, expected);
}

/// Sparkplug DDATA decodes to the same Arrow rows as the equivalent JSON readings, and
/// how fast each decodes in the same run (printed; `cargo test --test integration --
/// sparkplug_decode --nocapture`).
#[test]
fn sparkplug_data_decodes_like_json_and_its_throughput() {
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use forewarn::connect::sparkplug::proto::{Metric, Payload, Value};
    use forewarn::connect::sparkplug::{Action, Session, SparkplugSource};
    use forewarn_formats::{JsonDecoder, Readings};
    use prost::Message;

    const N: i64 = 20_000;
    let schema = Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("bearing_temp", DataType::Float64, true),
        Field::new("speed", DataType::Float64, true),
    ]));
    let decoder = || JsonDecoder::new(schema.clone(), None, 1 << 16).unwrap();
    let settings = SparkplugSource {
        group: None,
        metric_map: vec![("Motor/Bearing Temp".into(), "bearing_temp".into())],
        rebirth_interval: 10_000,
    };
    let columns: Vec<String> = ["device", "ts", "bearing_temp", "speed"]
        .map(String::from)
        .to_vec();
    let mut session = Session::new(settings, &columns, Some("ts"));
    let metric = |name: Option<&str>, alias, t, ts, v| Metric {
        name: name.map(str::to_string),
        alias: Some(alias),
        datatype: t,
        timestamp: Some(ts),
        value: Some(v),
        ..Metric::default()
    };
    let birth = |seq, metrics| {
        Payload {
            timestamp: Some(BASE as u64),
            seq: Some(seq),
            metrics,
            ..Payload::default()
        }
        .encode_to_vec()
    };
    session.handle("spBv1.0/G/NBIRTH/e", &birth(0, vec![]), 0);
    session.handle(
        "spBv1.0/G/DBIRTH/e/m",
        &birth(
            1,
            vec![
                metric(
                    Some("Motor/Bearing Temp"),
                    1,
                    Some(10),
                    BASE as u64,
                    Value::DoubleValue(0.0),
                ),
                metric(Some("speed"), 2, Some(3), BASE as u64, Value::IntValue(0)),
            ],
        ),
        0,
    );
    let data: Vec<Vec<u8>> = (1..=N)
        .map(|i| {
            let ts = (BASE + i) as u64;
            Payload {
                timestamp: Some(ts),
                seq: Some(((i + 1) % 256) as u64),
                metrics: vec![
                    metric(None, 1, None, ts, Value::DoubleValue(i as f64 * 0.25)),
                    metric(None, 2, None, ts, Value::IntValue((i % 3000) as u32)),
                ],
                ..Payload::default()
            }
            .encode_to_vec()
        })
        .collect();
    let json: Vec<Vec<u8>> = (1..=N)
        .map(|i| {
            serde_json::to_vec(&serde_json::json!({"device": "m", "ts": BASE + i,
                "bearing_temp": i as f64 * 0.25, "speed": i % 3000}))
            .unwrap()
        })
        .collect();

    let t = std::time::Instant::now();
    let mut rows = Vec::with_capacity(data.len());
    for d in &data {
        for a in session.handle("spBv1.0/G/DDATA/e/m", d, 0) {
            match a {
                Action::Rows(r) => rows.push(r),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let spb = t.elapsed();
    let mut from_spb = decoder();
    let t = std::time::Instant::now();
    for r in &rows {
        // The schema's columns among the readings', as the engine matches them.
        let map: Vec<Option<usize>> = schema
            .fields()
            .iter()
            .map(|f| r.columns().iter().position(|k| k == f.name()))
            .collect();
        let outcome = from_spb.decode_array_values("", r.len(), |row, k| r.value(row, map[k]?));
        assert_eq!(outcome.accepted, 1);
    }
    let spb_rows = t.elapsed();
    // The JSON message the readings stand for decodes to the same rows.
    let mut from_message = decoder();
    for r in &rows {
        assert_eq!(from_message.decode("", &r.message()).accepted, 1);
    }
    let mut from_json = decoder();
    let t = std::time::Instant::now();
    for j in &json {
        assert_eq!(from_json.decode("", j).accepted, 1);
    }
    let plain = t.elapsed();
    let spb_batch = from_spb.flush().unwrap();
    assert_eq!(from_message.flush().unwrap(), spb_batch);
    assert_eq!(spb_batch, from_json.flush().unwrap());
    let rate = |d: std::time::Duration| N as f64 / d.as_secs_f64();
    println!(
        "decode (debug build), {N} messages: Sparkplug DDATA -> readings {:.0}/s, then readings -> Arrow {:.0}/s (Sparkplug total {:.0}/s); JSON -> Arrow {:.0}/s",
        rate(spb),
        rate(spb_rows),
        rate(spb + spb_rows),
        rate(plain)
    );
}

/// Standard base64 with padding, for recording a session.
#[cfg(feature = "history")]
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `forewarn replay` of a recorded Sparkplug session (topic + base64 payload lines):
/// the same births, aliases, gap and death handling as live, the same windows.
#[cfg(feature = "history")]
#[tokio::test]
async fn a_recorded_session_replays_through_the_source() {
    use forewarn::connect::sparkplug::proto::{Metric, Payload, Value};
    use prost::Message;

    let payload = |seq: Option<u64>, metrics: Vec<Metric>| {
        Payload {
            timestamp: Some(BASE as u64),
            seq,
            metrics,
            ..Payload::default()
        }
        .encode_to_vec()
    };
    let m = |name: Option<&str>, alias: Option<u64>, t: Option<u32>, ts: Option<i64>, v: Value| {
        Metric {
            name: name.map(str::to_string),
            alias,
            datatype: t,
            timestamp: ts.map(|t| t as u64),
            value: Some(v),
            ..Metric::default()
        }
    };
    let node = "spBv1.0/Plant1/{}/edge1";
    let t = |kind: &str, device: Option<&str>| {
        let t = node.replace("{}", kind);
        device.map_or(t.clone(), |d| format!("{t}/{d}"))
    };
    let mut session: Vec<(String, Vec<u8>)> = vec![
        (
            t("DDATA", Some("motor2")),
            payload(
                Some(0),
                vec![m(None, Some(1), None, Some(BASE), Value::DoubleValue(1.0))],
            ),
        ),
        (
            t("NBIRTH", None),
            payload(
                Some(0),
                vec![m(Some("bdSeq"), None, Some(4), None, Value::LongValue(5))],
            ),
        ),
        (
            t("DBIRTH", Some("motor1")),
            payload(
                Some(1),
                vec![
                    m(
                        Some("Motor/Bearing Temp"),
                        Some(1),
                        Some(10),
                        Some(BASE),
                        Value::DoubleValue(40.0),
                    ),
                    m(
                        Some("speed"),
                        Some(2),
                        Some(3),
                        Some(BASE),
                        Value::IntValue(1000),
                    ),
                ],
            ),
        ),
    ];
    let mut seq = 2;
    for i in 1..=12i64 {
        if i == 6 {
            seq += 1;
        }
        let ts = Some(BASE + i * 1000);
        session.push((
            t("DDATA", Some("motor1")),
            payload(
                Some(seq),
                vec![
                    m(
                        None,
                        Some(1),
                        None,
                        ts,
                        Value::DoubleValue(40.0 + i as f64 * 0.5),
                    ),
                    m(None, Some(2), None, ts, Value::IntValue(1000 + i as u32)),
                ],
            ),
        ));
        seq += 1;
    }
    session.push((
        t("DDATA", Some("motor1")),
        payload(
            Some(seq),
            vec![m(
                None,
                Some(99),
                None,
                Some(BASE + 13_000),
                Value::DoubleValue(1.0),
            )],
        ),
    ));
    seq += 1;
    session.push((
        t("DDATA", Some("motor1")),
        payload(
            Some(seq),
            vec![
                m(
                    None,
                    Some(1),
                    None,
                    Some(BASE + 25_000),
                    Value::DoubleValue(52.0),
                ),
                m(
                    None,
                    Some(2),
                    None,
                    Some(BASE + 25_000),
                    Value::IntValue(1025),
                ),
            ],
        ),
    ));
    session.push((
        t("NDEATH", None),
        payload(
            None,
            vec![m(Some("bdSeq"), None, Some(4), None, Value::LongValue(5))],
        ),
    ));

    let dir = std::env::temp_dir().join(format!("forewarn-spb-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("session.jsonl");
    let text: String = session
        .iter()
        .map(|(topic, p)| {
            format!(
                "{}\n",
                serde_json::json!({"topic": topic, "payload": base64(p)})
            )
        })
        .collect();
    std::fs::write(&data, text).unwrap();
    let pipeline = Pipeline::builder()
        .query_sql("spb.sql", SQL)
        .build()
        .await
        .unwrap();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    forewarn::replay::replay(pipeline, &data, None, move |o| sink.lock().unwrap().push(o))
        .await
        .unwrap();
    let got = got.lock().unwrap().clone();
    let mut reasons: Vec<Reason> = got
        .iter()
        .filter_map(|o| match o {
            Output::DeadLetter { letter, .. } => Some(letter.reason),
            _ => None,
        })
        .collect();
    reasons.sort();
    let mut want = vec![Reason::NoBirth, Reason::UnknownAlias, Reason::SeqGap];
    want.sort();
    assert_eq!(reasons, want);
    let offline: Vec<&str> = got
        .iter()
        .filter_map(|o| match o {
            Output::State { state, .. } if state.offline_since.is_some() => {
                Some(state.device.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(offline, ["motor1", "edge1"]);
    let mut windows: BTreeMap<String, (f64, f64, i64)> = BTreeMap::new();
    for o in &got {
        if let Output::Row { .. } = o {
            let v: serde_json::Value = serde_json::from_slice(&o.to_message().1).unwrap();
            let f = &v["features"];
            windows.insert(
                v["window_start"].as_str().unwrap().to_string(),
                (
                    f["t"].as_f64().unwrap(),
                    f["s"].as_f64().unwrap(),
                    f["n"].as_i64().unwrap(),
                ),
            );
        }
    }
    assert_eq!(windows, expected_windows());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The readings a session hands over as typed values reach the engine exactly as the
/// JSON array message they stand for: the same window rows, dead letters (reasons,
/// details, indexes, excerpts byte for byte), late readings, duplicates and counters,
/// over metrics of every type, several metric times in one message, a reading without
/// a time, values no column takes, non-finite floats and a repeated message.
#[tokio::test]
async fn sparkplug_readings_reach_the_engine_as_their_json_message_does() {
    use forewarn::connect::sparkplug::proto::{data_type as dt, Metric, Payload, Value};
    use forewarn::connect::sparkplug::{Action, Session, SparkplugSource};
    use prost::Message;

    const SQL: &str = "CREATE TABLE motors (edge_node TEXT, device TEXT, ts TIMESTAMP,
  bearing_temp DOUBLE, speed DOUBLE, n BIGINT, ok BOOLEAN, label TEXT, WATERMARK FOR ts AS ts)
  WITH (connector = 'sparkplug', group = 'Plant1', metric_map = 'Motor/Bearing Temp=bearing_temp');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
INSERT INTO out SELECT device, window_start, avg(bearing_temp) AS t, max(speed) AS s,
  sum(n) AS n, count(ok) AS k, max(label) AS l, count(*) AS c
  FROM motors GROUP BY tumble(interval '10 seconds'), device;
";
    let at = |s: i64| (BASE + s) as u64;
    let m = |alias: u64, t: Option<u32>, ts: Option<u64>, v: Option<Value>| Metric {
        alias: Some(alias),
        datatype: t,
        timestamp: ts,
        value: v,
        ..Metric::default()
    };
    let named = |name: &str, alias: u64, t: u32| Metric {
        name: Some(name.into()),
        alias: Some(alias),
        datatype: Some(t),
        ..Metric::default()
    };
    let payload = |seq: Option<u64>, ts: Option<u64>, metrics: Vec<Metric>| {
        Payload {
            timestamp: ts,
            seq,
            metrics,
            ..Payload::default()
        }
        .encode_to_vec()
    };
    let birth = payload(
        Some(1),
        Some(at(0)),
        vec![
            named("Motor/Bearing Temp", 1, dt::DOUBLE),
            named("speed", 2, dt::FLOAT),
            named("n", 3, dt::INT8),
            named("ok", 4, dt::BOOLEAN),
            named("label", 5, dt::STRING),
        ],
    );
    let d = |v: f64| Some(Value::DoubleValue(v));
    let mut messages = vec![
        (
            "spBv1.0/Plant1/NBIRTH/e".to_string(),
            payload(Some(0), Some(at(0)), vec![]),
        ),
        ("spBv1.0/Plant1/DBIRTH/e/m".to_string(), birth),
    ];
    let dd = "spBv1.0/Plant1/DDATA/e/m".to_string();
    let data = vec![
        // Two metric times: two readings, every type.
        payload(
            Some(2),
            Some(at(1000)),
            vec![
                m(1, None, Some(at(1000)), d(61.0)),
                m(2, None, Some(at(1000)), Some(Value::FloatValue(0.1))),
                m(3, None, Some(at(1000)), Some(Value::IntValue(255))),
                m(4, None, Some(at(1000)), Some(Value::BooleanValue(true))),
                m(
                    5,
                    None,
                    Some(at(1000)),
                    Some(Value::StringValue("a \"quoted\" \u{e9}".into())),
                ),
                m(1, None, Some(at(2000)), d(1e21)),
                m(2, None, Some(at(2000)), Some(Value::FloatValue(f32::NAN))),
                m(
                    3,
                    Some(dt::INT64),
                    Some(at(2000)),
                    Some(Value::LongValue(-5i64 as u64)),
                ),
            ],
        ),
        // The middle reading of three is refused (a string where a number goes).
        payload(
            Some(3),
            Some(at(3000)),
            vec![
                m(1, None, Some(at(3000)), d(-0.0)),
                m(
                    1,
                    Some(dt::STRING),
                    Some(at(3500)),
                    Some(Value::StringValue("hot".into())),
                ),
                m(1, None, Some(at(4000)), d(62.5)),
            ],
        ),
        // An integer past i64 for a BIGINT, a boolean for a DOUBLE, bytes, an explicit null.
        payload(
            Some(4),
            Some(at(5000)),
            vec![
                m(3, Some(dt::UINT64), None, Some(Value::LongValue(u64::MAX))),
                m(
                    2,
                    Some(dt::BOOLEAN),
                    Some(at(5500)),
                    Some(Value::BooleanValue(false)),
                ),
                m(5, None, Some(at(6000)), Some(Value::BytesValue(vec![1, 2]))),
                Metric {
                    is_null: Some(true),
                    ..m(1, None, Some(at(6000)), d(1.0))
                },
            ],
        ),
        // No time anywhere: the reading has no `ts`.
        payload(Some(5), None, vec![m(1, None, None, d(63.0))]),
        // Without seq, sent twice: the second is a duplicate.
        payload(
            None,
            Some(at(7000)),
            vec![m(1, None, Some(at(7000)), d(64.0))],
        ),
        payload(
            None,
            Some(at(7000)),
            vec![m(1, None, Some(at(7000)), d(64.0))],
        ),
        // Closes the first window, then a reading for it comes late.
        payload(
            None,
            Some(at(15_000)),
            vec![m(1, None, Some(at(15_000)), d(65.0))],
        ),
        payload(
            None,
            Some(at(2500)),
            vec![
                m(1, None, Some(at(2500)), d(66.0)),
                m(1, None, Some(at(16_000)), d(67.0)),
            ],
        ),
    ];
    messages.extend(data.into_iter().map(|p| (dd.clone(), p)));

    // Each side's window rows, dead letters and counters.
    async fn run(
        sql: &str,
        messages: &[(String, Vec<u8>)],
        as_values: bool,
    ) -> (Vec<String>, forewarn::EngineStats) {
        let pipeline = Pipeline::builder()
            .query_sql("spb.sql", sql)
            .build()
            .await
            .unwrap();
        let s = &pipeline.sources()[0];
        let settings = s.connector.get::<SparkplugSource>().unwrap().clone();
        let columns: Vec<String> = s.schema.fields().iter().map(|f| f.name().clone()).collect();
        let mut session = Session::new(settings, &columns, Some(&s.event_time));
        let name = s.name.clone();
        let (h, mut rx) = pipeline.start();
        let collect = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(o) = rx.recv().await {
                match o {
                    Output::Row { topic, row } => seen.push(format!("{topic} {row:?}")),
                    Output::DeadLetter { topic, letter } => {
                        seen.push(format!("{topic} {letter:?}"))
                    }
                    _ => {}
                }
            }
            seen
        });
        let mut rows = 0;
        for (topic, payload) in messages {
            for a in session.handle(topic, payload, 0) {
                match a {
                    Action::Rows(r) if as_values => {
                        rows += 1;
                        h.push_readings_to(&name, Box::new(r)).await.unwrap()
                    }
                    Action::Rows(r) => {
                        rows += 1;
                        h.push_to(&name, r.message()).await.unwrap()
                    }
                    Action::Presence { device, online } => {
                        h.presence(&device, online).await.unwrap()
                    }
                    other => panic!("{other:?}"),
                }
            }
            // One micro-batch a message on both sides: lateness does not hang on timing.
            h.flush().await.unwrap();
        }
        assert_eq!(
            rows, 9,
            "the DBIRTH's (declared, no values) and every DDATA's"
        );
        let stats = h.finish().await.unwrap();
        drop(h);
        (collect.await.unwrap(), stats)
    }
    let (text, text_stats) = run(SQL, &messages, false).await;
    let (values, values_stats) = run(SQL, &messages, true).await;
    assert_eq!(values, text);
    assert_eq!(values_stats.messages_in, text_stats.messages_in);
    assert_eq!(values_stats.readings_in, text_stats.readings_in);
    assert_eq!(values_stats.rejected, text_stats.rejected);
    // Exactly what was refused, and that the windows came out.
    let reasons = |kind: &str| text.iter().filter(|l| l.contains(kind)).count();
    assert_eq!(reasons("WrongType"), 3, "{text:#?}");
    assert_eq!(reasons("Missing"), 1, "{text:#?}");
    assert_eq!(reasons("Duplicate"), 1, "{text:#?}");
    assert_eq!(reasons("index: Some(1)"), 2, "{text:#?}");
    assert!(text.iter().any(|l| l.starts_with("o/m ")), "{text:#?}");
    assert_eq!(reasons("/late/"), 1, "{text:#?}");
    // Decoded: the birth's 1, then 2 + 2 + 1 (of 3) + 0 (no time) + 1 + 0 (duplicate)
    // + 1 + 2 (one late).
    assert_eq!(text_stats.readings_in, 10, "{text_stats:?}");
}
