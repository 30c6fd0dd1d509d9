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
    use forewarn_formats::JsonDecoder;
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
        assert_eq!(from_spb.decode("", r).accepted, 1);
    }
    let spb_rows = t.elapsed();
    let mut from_json = decoder();
    let t = std::time::Instant::now();
    for j in &json {
        assert_eq!(from_json.decode("", j).accepted, 1);
    }
    let plain = t.elapsed();
    assert_eq!(from_spb.flush().unwrap(), from_json.flush().unwrap());
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
