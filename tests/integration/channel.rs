//! `connector = 'channel'` (issue 23): a query used from the library declares no topic.
//! Readings are pushed by source name and each sink's outputs received on their own,
//! through the same decoding, admission and windows as topic-routed input; an unknown
//! source name is the caller's error; `forewarn run` refuses such a file.

use std::collections::BTreeMap;

use forewarn::{split_by_sink, EngineConfig, EngineError, Output, Pipeline, Reason};
use serde_json::{json, Value};

/// Two channel sinks over one channel source, beside an MQTT source and sink.
const SQL: &str = "CREATE TABLE readings (device TEXT, ts TIMESTAMP, v DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) WITH (connector = 'channel');
CREATE TABLE averages WITH (connector = 'channel');
CREATE TABLE peaks WITH (connector = 'channel');
CREATE TABLE plant (device TEXT, ts TIMESTAMP, v DOUBLE, WATERMARK FOR ts AS ts)
  WITH (connector = 'mqtt', topic = 'plant/+', topic_template = 'plant/{device}');
CREATE TABLE plant_out WITH (connector = 'mqtt', topic = 'o/{device}');
INSERT INTO averages SELECT device, window_start, avg(v) AS v, count(*) AS n
FROM readings GROUP BY tumble(interval '10 seconds'), device;
INSERT INTO peaks SELECT device, window_start, max(v) AS m
FROM readings GROUP BY tumble(interval '10 seconds'), device;
INSERT INTO plant_out SELECT device, window_start, max(v) AS m
FROM plant GROUP BY tumble(interval '10 seconds'), device;
";

/// One channel source, one channel sink.
const ONE: &str = "CREATE TABLE readings (device TEXT, ts TIMESTAMP, v DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) WITH (connector = 'channel');
CREATE TABLE averages WITH (connector = 'channel');
INSERT INTO averages SELECT device, window_start, avg(v) AS v, count(*) AS n
FROM readings GROUP BY tumble(interval '10 seconds'), device;
";

/// 2023-11-14T22:13:20Z, a multiple of the window width.
const BASE: i64 = 1_700_000_000_000;
const SECONDS: i64 = 30;
const DEVICES: [&str; 3] = ["d1", "d2", "d3"];

/// Device `d`'s reading at second `s`: a multiple of 1/4, so sums and averages of a
/// window's readings are exact in binary whatever the order they are added in.
fn value(d: usize, s: i64) -> f64 {
    ((s * 7 + d as i64 * 5) % 13) as f64 / 4.0
}

fn reading(d: usize, s: i64) -> Value {
    json!({"device": DEVICES[d], "ts": BASE + s * 1000 + 250, "v": value(d, s)})
}

fn rfc3339(ms: i64) -> String {
    forewarn::format_rfc3339(ms)
}

#[tokio::test]
async fn readings_pushed_by_name_come_out_per_sink() {
    let pipeline = Pipeline::builder()
        .query_sql("channel.sql", SQL)
        // d3, the third device seen, is one too many: its readings are refused as for
        // messages routed by topic.
        .config(EngineConfig {
            max_devices: 2,
            ..EngineConfig::default()
        })
        .build()
        .await
        .unwrap();
    assert_eq!(
        pipeline.sink_of("channel_1").map(|s| s.name.as_str()),
        Some("averages")
    );
    assert_eq!(
        pipeline.sink_of("channel_2").map(|s| s.topic.as_str()),
        Some("peaks")
    );
    assert!(pipeline.sink_of("nope").is_none());
    let sinks = pipeline.sinks().to_vec();
    let (handle, outputs) = pipeline.start();
    let mut split = split_by_sink(outputs, &sinks);
    assert_eq!(
        split.sinks.keys().collect::<Vec<_>>(),
        ["averages", "peaks", "plant_out"]
    );
    let collect = |mut rx: tokio::sync::mpsc::Receiver<Output>| {
        tokio::spawn(async move {
            let mut v = Vec::new();
            while let Some(o) = rx.recv().await {
                v.push(o);
            }
            v
        })
    };
    let averages = collect(split.sinks.remove("averages").unwrap());
    let peaks = collect(split.sinks.remove("peaks").unwrap());
    let plant_out = collect(split.sinks.remove("plant_out").unwrap());
    let other = collect(split.other);

    // Even seconds: one array of the three devices; odd seconds: three objects.
    for s in 0..SECONDS {
        if s % 2 == 0 {
            let all: Vec<Value> = (0..3).map(|d| reading(d, s)).collect();
            handle
                .push_to("readings", serde_json::to_vec(&all).unwrap())
                .await
                .unwrap();
        } else {
            for d in 0..3 {
                let bytes = serde_json::to_vec(&reading(d, s)).unwrap();
                assert_eq!(handle.try_push_to("readings", bytes).unwrap(), None);
            }
        }
    }
    // A resend of d1's reading at second 5, and a broken message.
    let resent = serde_json::to_vec(&reading(0, 5)).unwrap();
    handle.push_to("readings", resent).await.unwrap();
    handle.push_to("readings", b"{oops".to_vec()).await.unwrap();
    // Routing by topic never reaches a source without one.
    handle.push_json("", b"{}".to_vec()).await.unwrap();
    handle.push_json("readings", b"{}".to_vec()).await.unwrap();

    // The caller's mistakes are errors, not dead letters.
    let e = handle.push_to("reading", b"{}".to_vec()).await.unwrap_err();
    assert!(matches!(&e, EngineError::UnknownSource { name, known }
        if name == "reading" && known == &["plant", "readings"]));
    assert_eq!(
        e.to_string(),
        "no query reads source 'reading' (the pipeline's sources: plant, readings)"
    );
    let e = handle.try_push_to("plant", b"{}".to_vec()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "source 'plant' reads columns from the topic (topic_template = 'plant/{device}'): push its messages with their topic (PipelineHandle::push)"
    );

    let stats = handle.finish().await.unwrap();
    drop(handle);
    let (averages, peaks, plant_out, other) = (
        averages.await.unwrap(),
        peaks.await.unwrap(),
        plant_out.await.unwrap(),
        other.await.unwrap(),
    );

    // Each admitted device's windows, computed here: (device, start) → (sum, n, max).
    let mut want: BTreeMap<(String, i64), (f64, u64, f64)> = BTreeMap::new();
    for s in 0..SECONDS {
        // d1 and d2: the two devices admitted.
        for (d, name) in DEVICES.iter().enumerate().take(2) {
            let start = BASE + (s * 1000 + 250) / 10_000 * 10_000;
            let w = want
                .entry((name.to_string(), start))
                .or_insert((0.0, 0, f64::MIN));
            w.0 += value(d, s);
            w.1 += 1;
            w.2 = w.2.max(value(d, s));
        }
    }
    assert_eq!(want.len(), 6);
    let rows = |outs: &[Output], sink: &str| -> Vec<(String, String, Value)> {
        outs.iter()
            .map(|o| match o {
                Output::Row { topic, row: alert } => {
                    assert_eq!(topic, sink, "a channel sink's topic is its name");
                    (
                        alert.device.clone(),
                        alert.window_start.to_string(),
                        Value::Object(alert.columns.clone()),
                    )
                }
                other => panic!("{sink} has no lifecycle: {other:?}"),
            })
            .collect::<Vec<_>>()
    };
    let mut got_avg = rows(&averages, "averages");
    got_avg.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let want_avg: Vec<(String, String, Value)> = want
        .iter()
        .map(|((d, start), (sum, n, _))| {
            (
                d.clone(),
                rfc3339(*start),
                json!({"v": sum / *n as f64, "n": n}),
            )
        })
        .collect();
    assert_eq!(got_avg, want_avg);
    let mut got_peaks = rows(&peaks, "peaks");
    got_peaks.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let want_peaks: Vec<(String, String, Value)> = want
        .iter()
        .map(|((d, start), (_, _, max))| (d.clone(), rfc3339(*start), json!({"m": max})))
        .collect();
    assert_eq!(got_peaks, want_peaks);
    assert!(plant_out.is_empty(), "{plant_out:?}");

    // Everything else: dead letters, with no topic and the source named.
    let mut letters: BTreeMap<&str, Vec<&forewarn::DeadLetter>> = BTreeMap::new();
    for o in &other {
        match o {
            Output::DeadLetter { letter, .. } => letters
                .entry(letter.reason.as_str())
                .or_default()
                .push(letter),
            o => panic!("not a dead letter: {o:?}"),
        }
    }
    let count: BTreeMap<&str, usize> = letters.iter().map(|(r, l)| (*r, l.len())).collect();
    assert_eq!(
        count,
        BTreeMap::from([
            ("duplicate", 1),
            ("not_json", 1),
            ("too_many_devices", SECONDS as usize),
            ("unknown_topic", 2),
        ])
    );
    for r in [Reason::Duplicate, Reason::NotJson, Reason::TooManyDevices] {
        for l in &letters[r.as_str()] {
            assert_eq!(
                (l.source_topic.as_str(), l.source.as_deref()),
                ("", Some("readings")),
                "{l:?}"
            );
        }
    }
    assert_eq!(
        letters["duplicate"][0].detail,
        "the same bytes pushed to source 'readings' arrived among the last 65536 messages (a resent push)"
    );
    // d3's readings: in an array at position 2, alone otherwise.
    let mut refused: Vec<Option<usize>> = letters["too_many_devices"]
        .iter()
        .map(|l| l.index)
        .collect();
    refused.sort();
    let mut want_refused: Vec<Option<usize>> =
        (0..SECONDS).map(|s| (s % 2 == 0).then_some(2)).collect();
    want_refused.sort();
    assert_eq!(refused, want_refused);
    assert_eq!(
        letters["unknown_topic"]
            .iter()
            .map(|l| l.source_topic.as_str())
            .collect::<Vec<_>>(),
        ["", "readings"]
    );

    // 15 arrays, 45 objects, the resend, the broken one, the two routed by topic.
    assert_eq!(stats.messages_in, 15 + 45 + 1 + 1 + 2);
    assert_eq!(stats.dead_letters_out, other.len() as u64);
    assert_eq!((stats.rows_out, stats.alerts_out), (12, 0));
}

/// `forewarn run` has no way to feed or read a channel table: it refuses the file
/// before connecting anywhere; `forewarn check` accepts it.
#[cfg(feature = "cli")]
#[test]
fn the_service_refuses_channel_tables_and_check_accepts_them() {
    use std::process::Command;
    let dir = std::env::temp_dir().join(format!("fw-channel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let forewarn = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_forewarn"))
            .args(args)
            .current_dir(&dir)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let why = "connector 'channel' is for programs embedding Forewarn, which push a channel source's readings by its name (PipelineHandle::push_to) and read a channel sink's outputs from the pipeline's output receiver; `forewarn run` does neither: use connector = 'mqtt'";
    // A channel source; then only a channel sink.
    let sink_only = SQL.replace(
        "WITH (connector = 'channel');\nCREATE TABLE averages",
        "WITH (connector = 'mqtt', topic = 'r/+');\nCREATE TABLE averages",
    );
    for (file, text, table) in [
        ("source.sql", SQL.to_string(), "source 'readings'"),
        ("sink.sql", sink_only, "sink 'averages'"),
    ] {
        std::fs::write(dir.join(file), text).unwrap();
        let (code, err) = forewarn(&["check", file]);
        assert_eq!(code, 0, "{err}");
        // Port 9 (discard): nothing listens, and nothing must be tried.
        let (code, err) = forewarn(&["run", "--broker", "mqtt://127.0.0.1:9", "--queries", file]);
        assert_ne!(code, 0, "{err}");
        let want = format!("configuration: {table} (connector = 'channel'): {why}");
        assert!(err.contains(&want), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A channel source checkpoints as any other: what its caller's deliveries ask for
/// (positions, acknowledgements) comes back, and its open windows continue after a
/// restart.
#[tokio::test]
async fn pushes_by_name_are_checkpointed_and_resumed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    let dir = std::env::temp_dir().join(format!("fw-channel-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let build = || async {
        let mut k = forewarn::CheckpointConfig::new(&dir);
        k.interval = Duration::from_secs(3600);
        k.idle = Duration::from_secs(3600);
        Pipeline::builder()
            .query_sql("one.sql", ONE)
            .config(EngineConfig {
                wall_clock: false,
                checkpoint: Some(k),
                ..EngineConfig::default()
            })
            .build()
            .await
            .unwrap()
    };
    let windows = |mut rx: tokio::sync::mpsc::Receiver<Output>| {
        tokio::spawn(async move {
            let mut v = Vec::new();
            while let Some(o) = rx.recv().await {
                match o {
                    Output::Row { topic, row: alert } => {
                        assert_eq!(topic, "averages");
                        v.push((
                            alert.window_start.to_string(),
                            alert.columns["v"].as_f64().unwrap(),
                        ));
                    }
                    o => panic!("{o:?}"),
                }
            }
            v
        })
    };
    // d1 only, 30 seconds; the restart falls inside the second window.
    let payload = |s: i64| serde_json::to_vec(&reading(0, s)).unwrap();
    let p = build().await;
    assert_eq!(p.resume_point().position(), None);
    let (handle, rx) = p.start();
    let first = windows(rx);
    for s in 0..14 {
        let at = forewarn::Delivery::Position(s as u64 + 1);
        handle
            .push_to_with("readings", payload(s), at)
            .await
            .unwrap();
    }
    let acked = Arc::new(AtomicBool::new(false));
    let a = acked.clone();
    let ack = forewarn::Delivery::Ack {
        ack: Box::new(move || a.store(true, Ordering::SeqCst)),
        id: Some(77),
    };
    handle
        .push_to_with("readings", payload(14), ack)
        .await
        .unwrap();
    handle.shutdown().await.unwrap();
    drop(handle);
    let mut got = first.await.unwrap();
    assert!(
        acked.load(Ordering::SeqCst),
        "acknowledged once checkpointed"
    );

    let p = build().await;
    assert_eq!(p.resume_point().position(), Some(14));
    let (handle, rx) = p.start();
    let second = windows(rx);
    for s in 15..SECONDS {
        handle.push_to("readings", payload(s)).await.unwrap();
    }
    handle.finish().await.unwrap();
    drop(handle);
    got.extend(second.await.unwrap());

    let want: Vec<(String, f64)> = (0..3)
        .map(|w| {
            let sum: f64 = (w * 10..w * 10 + 10).map(|s| value(0, s)).sum();
            (rfc3339(BASE + w * 10_000), sum / 10.0)
        })
        .collect();
    assert_eq!(got, want);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `forewarn replay` (the library's `replay`) pushes the history of a channel source
/// by the source's name: the windows are those of the readings.
#[cfg(feature = "history")]
#[tokio::test]
async fn history_of_a_channel_source_replays_by_name() {
    let dir = std::env::temp_dir().join(format!("fw-channel-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut csv = String::from("device,ts,v\n");
    for s in 0..SECONDS {
        csv.push_str(&format!("d1,{},{}\n", BASE + s * 1000 + 250, value(0, s)));
    }
    let data = dir.join("h.csv");
    std::fs::write(&data, csv).unwrap();
    let pipeline = Pipeline::builder()
        .query_sql("replay.sql", ONE)
        .build()
        .await
        .unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    let stats = forewarn::replay::replay(pipeline, &data, None, move |o| {
        g.lock().unwrap().push(o);
    })
    .await
    .unwrap();
    assert_eq!(stats.readings_in, SECONDS as u64);
    let got: Vec<(String, String, Value)> = got
        .lock()
        .unwrap()
        .iter()
        .map(|o| match o {
            Output::Row { topic, row: alert } => (
                topic.clone(),
                alert.window_start.to_string(),
                Value::Object(alert.columns.clone()),
            ),
            o => panic!("{o:?}"),
        })
        .collect();
    let want: Vec<(String, String, Value)> = (0..3)
        .map(|w| {
            let sum: f64 = (w * 10..w * 10 + 10).map(|s| value(0, s)).sum();
            (
                "averages".to_string(),
                rfc3339(BASE + w * 10_000),
                json!({"v": sum / 10.0, "n": 10}),
            )
        })
        .collect();
    assert_eq!(got, want);
    let _ = std::fs::remove_dir_all(&dir);
}
