//! History rows pushed as Arrow batches give exactly what publishing each row's JSON
//! message gives: the same outputs byte for byte, in the same order, and the same
//! counters, bad rows of every kind included.

use std::path::{Path, PathBuf};

use forewarn::replay::{self, Order};
use forewarn::{EngineConfig, EngineStats, Output, Pipeline};

const SQL: &str = "
CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE, n BIGINT NOT NULL, ok BOOLEAN,
  note TEXT, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
  WITH (connector = 'mqtt', topic = 'plant/+/telemetry',
        topic_template = 'plant/{device}/telemetry', max_future = '1 hour');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
INSERT INTO out SELECT device, window_start, count(*) AS c, sum(v) AS s, max(n) AS m
FROM r GROUP BY tumble(interval '10 seconds'), device;
";

/// One row of every kind the decoder refuses, good rows around them, a resent row and
/// devices beyond `max_devices`.
fn csv() -> String {
    let long = "x".repeat(400);
    let rows = [
        "device,ts,v,n,ok,note,extra",
        "d1,2026-01-05T06:00:00Z,1.5,1,true,a,e1",
        "d2,1767592801000,2,2,false,,e2",
        // The same row again: a resent message.
        "d1,2026-01-05T06:00:00Z,1.5,1,true,a,e1",
        // Differs only in a column no source reads: another message.
        "d1,2026-01-05T06:00:00Z,1.5,1,true,a,e9",
        "d1,2026-01-05T06:00:02Z,3,,true,a,",
        "d1,yesterday,3,3,true,a,",
        "d2,2026-01-05T06:00:03Z,abc,3,true,a,",
        "d2,2026-01-05T06:00:03Z,NaN,3,true,a,",
        "d2,2026-01-05T06:00:03Z,inf,3,1,a,",
        "d2,2026-01-05T06:00:04Z,4,1.5,0,a,",
        // A whole number written as a float: the number a device may send for it.
        "d2,2026-01-05T06:00:04Z,4,4.0,false,b,",
        "d2,2026-01-05T06:00:04Z,4,4,maybe,a,",
        ",2026-01-05T06:00:05Z,5,5,true,a,",
        "a/b,2026-01-05T06:00:05Z,5,5,true,a,",
        "d3,2026-01-05T06:00:06Z,6,6,true,\"quoted, \"\"note\"\"\",",
        "d4,2026-01-05T06:00:06Z,6,6,true,a,",
        &format!("d3,2026-01-05T06:00:07Z,7,7,true,{long},"),
        "d3,2027-01-05T06:00:07Z,7,7,true,a,",
        "d1,2026-01-05T06:00:08Z,1e3,8,TRUE,a,",
        "d2,2026-01-05T06:00:12Z,-0.0,9,false,a,",
        "d3,2026-01-05T06:00:25Z,12,10,true,a,",
        "d1,2026-01-05T06:00:26Z,13,11,true,a,",
    ];
    rows.join("\n") + "\n"
}

fn config() -> EngineConfig {
    EngineConfig {
        max_devices: 3,
        max_payload_bytes: 300,
        // Micro-batches close at a fixed number of readings only, so both paths cut
        // them at the same rows whatever the timing.
        max_batch_rows: 3,
        max_batch_delay: std::time::Duration::from_secs(3600),
        flush_when_idle: false,
        wall_clock: false,
        ..Default::default()
    }
}

async fn pipeline() -> Pipeline {
    pipeline_of(SQL).await
}

async fn pipeline_of(sql: &str) -> Pipeline {
    Pipeline::builder()
        .query_sql("h.sql", sql)
        .config(config())
        .build()
        .await
        .unwrap()
        .without_wall_clock()
}

/// A file `name` holding `text`, in a directory removed when the first value drops.
fn file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    (dir, p)
}

type Published = Vec<(String, Vec<u8>)>;

/// Each row published as its JSON message, one at a time (by source name, `to`).
async fn as_messages(data: &Path, order: Order) -> (Published, EngineStats) {
    as_messages_of(SQL, data, order, None).await
}

async fn as_messages_of(
    sql: &str,
    data: &Path,
    order: Order,
    to: Option<&str>,
) -> (Published, EngineStats) {
    messages_through(pipeline_of(sql).await, data, order, to).await
}

/// Each row's message published alone through `p` (by source name, `to`).
async fn messages_through(
    p: Pipeline,
    data: &Path,
    order: Order,
    to: Option<&str>,
) -> (Published, EngineStats) {
    let messages: Vec<_> = replay::ordered_messages(&p, data, None, order)
        .unwrap()
        .map(|m| m.unwrap())
        .collect();
    let (h, mut rx) = p.start();
    let collect = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(o) = rx.recv().await {
            out.push(o.to_message());
        }
        out
    });
    for m in messages {
        match to {
            Some(name) => h.push_to(name, m.payload).await.unwrap(),
            None => h.push_json(&m.topic, m.payload).await.unwrap(),
        }
    }
    let stats = h.finish().await.unwrap();
    drop(h);
    (collect.await.unwrap(), stats)
}

/// The file replayed, its rows pushed as batches.
async fn as_batches(data: &Path, order: Order) -> (Published, EngineStats) {
    as_batches_of(SQL, data, order).await
}

async fn as_batches_of(sql: &str, data: &Path, order: Order) -> (Published, EngineStats) {
    batches_through(pipeline_of(sql).await, data, order).await
}

/// The file replayed through `p`, its rows pushed as batches.
async fn batches_through(p: Pipeline, data: &Path, order: Order) -> (Published, EngineStats) {
    let (tx, rx) = std::sync::mpsc::channel();
    let stats = replay::replay_ordered(p, data, None, order, move |o: Output| {
        let _ = tx.send(o.to_message());
    })
    .await
    .unwrap();
    (rx.try_iter().collect(), stats)
}

fn reasons(out: &Published) -> Vec<String> {
    out.iter()
        .filter(|(t, _)| t.contains("/deadletter/"))
        .map(|(_, p)| {
            let v: serde_json::Value = serde_json::from_slice(p).unwrap();
            v["reason"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test]
async fn rows_as_batches_give_the_outputs_of_their_messages_byte_for_byte() {
    let (_dir, data) = file("h.csv", &csv());
    for order in [Order::Check, Order::Sort] {
        let (messages, m_stats) = as_messages(&data, order).await;
        let (batches, b_stats) = as_batches(&data, order).await;
        // Every kind of refusal is there, in file order (the independent expectation).
        let expected = [
            "duplicate",
            "missing_field",
            "bad_timestamp",
            "wrong_type",
            "non_finite",
            "non_finite",
            "wrong_type",
            "wrong_type",
            "topic_mismatch",
            // A device id with a `/` makes a topic no source subscribes to.
            "unknown_topic",
            "too_many_devices",
            "too_large",
            "future_timestamp",
        ];
        let mut got = reasons(&batches);
        if order == Order::Sort {
            // Sorted by time, the unreadable time goes first and the far future last.
            got.sort();
            let mut e = expected.map(String::from).to_vec();
            e.sort();
            assert_eq!(got, e);
        } else {
            assert_eq!(got, expected);
        }
        assert_eq!(
            messages.len(),
            batches.len(),
            "{order:?}: {messages:#?}\n{batches:#?}"
        );
        for (a, b) in messages.iter().zip(&batches) {
            assert_eq!(
                (a.0.as_str(), String::from_utf8_lossy(&a.1)),
                (b.0.as_str(), String::from_utf8_lossy(&b.1)),
                "{order:?}"
            );
        }
        assert_eq!(m_stats.messages_in, b_stats.messages_in);
        assert_eq!(m_stats.readings_in, b_stats.readings_in);
        assert_eq!(m_stats.rejected, b_stats.rejected);
        assert_eq!(b_stats.messages_in, 22);
        // Rows 1, 2, 4, 11, 15, 18 to 22 decode cleanly and are taken from the columns;
        // the others (refused, a repeat, a device over the limit) as their messages.
        assert_eq!(b_stats.readings_from_columns, 10, "{order:?}");
        assert_eq!(m_stats.readings_from_columns, 0);
        // Windows closed: d1 [06:00:00, 06:00:10) has two readings (1.5 and the row
        // differing in `extra`) and 1e3.
        let d1 = batches
            .iter()
            .find(|(t, _)| t == "o/d1")
            .map(|(_, p)| serde_json::from_slice::<serde_json::Value>(p).unwrap())
            .unwrap();
        assert_eq!(d1["features"]["c"], 3);
        assert_eq!(d1["features"]["s"], 1003.0);
    }
}

#[tokio::test]
async fn an_out_of_order_row_stops_replay_after_the_rows_before_it() {
    let text =
        "device,ts,v,n,ok,note\nd1,2026-01-05T06:00:10Z,1,1,,\nd1,2026-01-05T06:00:00Z,2,2,,\n";
    let (_dir, data) = file("late.csv", text);
    let (tx, rx) = std::sync::mpsc::channel();
    let e = replay::replay_ordered(pipeline().await, &data, None, Order::Check, move |o| {
        let _ = tx.send(o.to_message());
    })
    .await
    .unwrap_err();
    // Stopping closed d1's open window after one of its rows: that result would carry
    // the complete window's id, so it is not given.
    let got: Published = rx.try_iter().collect();
    assert_eq!(got, Published::new());
    assert!(
        e.to_string().contains(
            "not in time order: reading 2 (plant/d1/telemetry, 2026-01-05T06:00:00.000Z) is 10 s behind reading 1"
        ),
        "{e}"
    );
}

#[tokio::test]
async fn rows_for_a_source_without_topic_are_pushed_by_its_name() {
    let sql = "
CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE NOT NULL,
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) WITH (connector = 'channel');
CREATE TABLE out WITH (connector = 'channel');
INSERT INTO out SELECT device, window_start, count(*) AS c FROM r
GROUP BY tumble(interval '10 seconds'), device;
";
    let text = "device,ts,v\nd1,1000,1\nd1,1500,\nd1,1500,\nd5,2000,2\nd1,20000,3\n";
    let (_dir, data) = file("chan.csv", text);
    let (messages, m_stats) = as_messages_of(sql, &data, Order::Check, Some("r")).await;
    let (batches, b_stats) = as_batches_of(sql, &data, Order::Check).await;
    assert_eq!(messages, batches);
    assert_eq!(m_stats.rejected, b_stats.rejected);
    assert_eq!(reasons(&batches), ["missing_field", "duplicate"]);
    // A message pushed by name has no topic, nor has its row.
    let letter: serde_json::Value = serde_json::from_slice(
        &batches
            .iter()
            .find(|(t, _)| t.contains("/deadletter/"))
            .unwrap()
            .1,
    )
    .unwrap();
    assert_eq!(letter["source_topic"].as_str().unwrap_or(""), "");
    assert_eq!(letter["source"], "r");
}

/// A Parquet file whose columns keep their types (microsecond timestamps, doubles, integers,
/// booleans) gives what its rows' messages give, byte for byte: timestamps at and around
/// the millisecond, non-finite doubles, nulls and a repeated row.
#[tokio::test]
async fn typed_parquet_columns_give_the_outputs_of_their_messages() {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use datafusion::arrow::record_batch::RecordBatch;

    let sql = "
CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE, n BIGINT NOT NULL, ok BOOLEAN,
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
  WITH (connector = 'mqtt', topic = 'plant/+/telemetry',
        topic_template = 'plant/{device}/telemetry', max_future = '1 hour');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
INSERT INTO out SELECT device, window_start, count(*) AS c, sum(v) AS s, max(n) AS m,
  bool_or(ok) AS any_ok
FROM r GROUP BY tumble(interval '10 seconds'), device;
";
    let base = 1_767_592_800_000_000i64; // 2026-01-05T06:00:00Z in microseconds
    let us = |s: f64| base + (s * 1e6) as i64;
    // device, ts (µs), v, n, ok
    type Row<'a> = (
        Option<&'a str>,
        Option<i64>,
        Option<f64>,
        Option<i64>,
        Option<bool>,
    );
    let rows: Vec<Row> = vec![
        (Some("d1"), Some(us(0.0)), Some(1.5), Some(1), Some(true)),
        (Some("d2"), Some(us(0.0004)), Some(2.0), Some(2), None),
        // The same row again: a resent message.
        (Some("d1"), Some(us(0.0)), Some(1.5), Some(1), Some(true)),
        (
            Some("d1"),
            Some(us(1.0009)),
            Some(f64::NAN),
            Some(3),
            Some(false),
        ),
        (
            Some("d2"),
            Some(us(2.0)),
            Some(f64::INFINITY),
            Some(3),
            Some(false),
        ),
        (Some("d2"), Some(us(2.5)), None, None, Some(false)),
        (None, Some(us(3.0)), Some(3.0), Some(3), Some(true)),
        (Some("d3"), None, Some(3.0), Some(3), Some(true)),
        (
            Some("d3"),
            Some(us(4.999_999)),
            Some(-0.0),
            Some(i64::MAX),
            None,
        ),
        (Some("a/b"), Some(us(5.0)), Some(5.0), Some(5), Some(true)),
        (Some("d1"), Some(us(25.0)), Some(7.0), Some(7), Some(true)),
    ];
    let batch = RecordBatch::try_from_iter(vec![
        (
            "device",
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        (
            "ts",
            Arc::new(TimestampMicrosecondArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        ),
        (
            "v",
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ),
        (
            "n",
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )),
        ),
        (
            "ok",
            Arc::new(BooleanArray::from(
                rows.iter().map(|r| r.4).collect::<Vec<_>>(),
            )),
        ),
    ])
    .unwrap();
    let (_dir, data) = file("typed.parquet", "");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&data).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let (messages, m_stats) = as_messages_of(sql, &data, Order::Sort, None).await;
    let (batches, b_stats) = as_batches_of(sql, &data, Order::Sort).await;
    let mut got = reasons(&batches);
    got.sort();
    assert_eq!(
        got,
        [
            "duplicate",
            "missing_field",
            "missing_field",
            "non_finite",
            "non_finite",
            // A null device leaves an empty topic level.
            "topic_mismatch",
            "unknown_topic",
        ],
        "{batches:#?}"
    );
    assert_eq!(messages.len(), batches.len(), "{messages:#?}\n{batches:#?}");
    for (a, b) in messages.iter().zip(&batches) {
        assert_eq!(
            (a.0.as_str(), String::from_utf8_lossy(&a.1)),
            (b.0.as_str(), String::from_utf8_lossy(&b.1))
        );
    }
    assert_eq!(m_stats.readings_in, b_stats.readings_in);
    assert_eq!(m_stats.rejected, b_stats.rejected);
    // d1 at 0 s, d2 at 0.0004 s, d3 at 4.999999 s and d1 at 25 s come from the columns.
    assert_eq!(b_stats.readings_from_columns, 4);
}

/// Windows of 2,600 devices: each result is turned into outputs in pieces of 1,024 rows,
/// one piece per output thread. One thread and three give the same outputs byte for
/// byte, in window order, one per device and window, with the counts and sums the file
/// gives.
#[tokio::test]
async fn a_large_window_gives_the_same_outputs_on_one_output_thread_and_on_several() {
    const DEVICES: usize = 2_600;
    // Three windows: readings at 0 s and 1 s, at 10 s, at 20 s (value: the device's
    // number plus the second), then one far reading of d0 that closes all three
    // together and whose window closes at the end.
    let mut text = String::from("device,ts,v,n,ok,note\n");
    for s in [0, 1, 10, 20] {
        for d in 0..DEVICES {
            text += &format!(
                "d{d:04},{},{},1,true,a\n",
                1_767_592_800_000u64 + s * 1000,
                d as u64 + s
            );
        }
    }
    text += "d0000,2026-01-05T06:01:00Z,0,1,true,a\n";
    let (_dir, data) = file("fleet.csv", &text);
    let mut runs = Vec::new();
    for threads in [1, 3] {
        let config = EngineConfig {
            max_devices: DEVICES,
            max_batch_rows: 100_000,
            output_threads: threads,
            ..config()
        };
        let p = Pipeline::builder()
            .query_sql("h.sql", SQL)
            .config(config)
            .build()
            .await
            .unwrap()
            .without_wall_clock();
        let (tx, rx) = std::sync::mpsc::channel();
        replay::replay_ordered(p, &data, None, Order::Check, move |o: Output| {
            let _ = tx.send(o.to_message());
        })
        .await
        .unwrap();
        runs.push(rx.try_iter().collect::<Published>());
    }
    assert_eq!(runs[0].len(), 3 * DEVICES + 1);
    assert!(
        runs[0] == runs[1],
        "three output threads changed the outputs"
    );
    // Independently: window order, and each device's count and sum in each window.
    let mut last = String::new();
    let mut seen = std::collections::BTreeSet::new();
    for (topic, payload) in &runs[1] {
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        let start = v["window_start"].as_str().unwrap().to_string();
        assert!(start >= last, "{start} after {last}");
        last = start.clone();
        let d: u64 = v["device"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(topic, &format!("o/d{d:04}"));
        let (c, s) = match &start[..] {
            "2026-01-05T06:00:00.000Z" => (2, 2 * d + 1),
            "2026-01-05T06:00:10.000Z" => (1, d + 10),
            "2026-01-05T06:00:20.000Z" => (1, d + 20),
            _ => (1, 0),
        };
        assert_eq!(v["features"]["c"], c, "{v}");
        assert_eq!(v["features"]["s"].as_f64(), Some(s as f64), "{v}");
        assert!(seen.insert((start, d)), "twice: {v}");
    }
}

/// Thousands of clean rows, taken from the columns in many blocks (each checked for
/// repeats and then admitted as a whole, see `Runtime::admit_block`), with flushes in
/// between: resent rows, devices beyond the limit that first appear deep in the file,
/// and bad rows between the blocks give the dead letters a row-by-row model of the two
/// checks gives, in file order, and the outputs of publishing each row's message, byte
/// for byte.
#[tokio::test]
async fn repeats_and_devices_over_the_limit_are_judged_alike_in_every_run_of_rows() {
    const ROWS: usize = 6_000;
    const MAX_DEVICES: usize = 45;
    let mut lines: Vec<String> = Vec::with_capacity(ROWS);
    for i in 0..ROWS {
        let line = if i > 200 && i % 37 == 0 {
            // A row resent up to 151 rows (1.51 s) later (never a resent one: its own
            // time may be further back).
            let j = i - (i % 150 + 1);
            lines[if j % 37 == 0 { j - 1 } else { j }].clone()
        } else {
            // A new device every 90 rows: the 46th first appears at row 4,050.
            let active = (1 + i / 90).min(60);
            let v = match i % 1499 == 5 {
                true => "abc".to_string(),
                false => i.to_string(),
            };
            let ts = 1_767_592_800_000u64 + 10 * i as u64;
            format!("d{:02},{ts},{v},{i},true,a", (i * 7) % active)
        };
        lines.push(line);
    }
    let text = format!("device,ts,v,n,ok,note\n{}\n", lines.join("\n"));
    // The model: every line is a message; a repeat of an earlier one is a duplicate
    // (the window of 65,536 holds them all); otherwise its device is admitted or
    // refused, then its value decoded.
    let mut expected = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut admitted = std::collections::HashSet::new();
    let mut taken = 0;
    for line in &lines {
        if !seen.insert(line.clone()) {
            expected.push("duplicate");
            continue;
        }
        let device = line.split(',').next().unwrap();
        if !admitted.contains(device) {
            if admitted.len() == MAX_DEVICES {
                expected.push("too_many_devices");
                continue;
            }
            admitted.insert(device.to_string());
        }
        match line.contains(",abc,") {
            true => expected.push("wrong_type"),
            false => taken += 1,
        }
    }
    let (_dir, data) = file("runs.csv", &text);
    let config = EngineConfig {
        max_devices: MAX_DEVICES,
        max_batch_rows: 250,
        ..config()
    };
    let build = || async {
        Pipeline::builder()
            .query_sql("h.sql", SQL)
            .config(config.clone())
            .build()
            .await
            .unwrap()
            .without_wall_clock()
    };
    let (one_by_one, _) = messages_through(build().await, &data, Order::Check, None).await;
    let (batches, stats) = batches_through(build().await, &data, Order::Check).await;

    let got = reasons(&batches);
    assert!(
        expected
            .iter()
            .filter(|r| **r == "too_many_devices")
            .count()
            > 100
    );
    assert!(expected.iter().filter(|r| **r == "duplicate").count() > 100);
    assert_eq!(got, expected);
    assert_eq!(stats.messages_in, ROWS as u64);
    // All but the rows of the bad values, the repeats and the refused devices came
    // from the columns.
    assert_eq!(stats.readings_from_columns, taken);
    let counted: u64 = batches
        .iter()
        .filter(|(t, _)| t.starts_with("o/"))
        .map(|(_, p)| {
            let v: serde_json::Value = serde_json::from_slice(p).unwrap();
            v["features"]["c"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(counted, taken, "every reading taken is in a window");
    assert!(
        one_by_one == batches,
        "batches and messages differ: {} against {} outputs",
        batches.len(),
        one_by_one.len()
    );
}
