//! Checkpoints through the library: a pipeline killed mid-stream (its tokio runtime
//! dropped, so no shutdown code runs) and restarted from its checkpoint directory, fed
//! again every message it had not acknowledged, gives every output of an uninterrupted
//! run; extra outputs are exact repeats with the same ids. Also: taking checkpoints does
//! not change results, damaged files are skipped, and a changed query is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common;

use common::ckpt::{messages, same, SQL};
use forewarn::{CheckpointConfig, EngineConfig, EngineError, Output, Pipeline};
use serde_json::Value;

fn config(dir: Option<&Path>, max_unacked: usize) -> EngineConfig {
    let mut c = EngineConfig {
        wall_clock: false,
        ..Default::default()
    };
    if let Some(d) = dir {
        let mut k = CheckpointConfig::new(d);
        k.max_unacked = max_unacked;
        k.interval = Duration::from_secs(3600);
        k.idle = Duration::from_secs(3600);
        k.confirm_outputs = true;
        c.checkpoint = Some(k);
    }
    c
}

async fn pipeline(sql: &str, cfg: EngineConfig) -> Result<Pipeline, EngineError> {
    Pipeline::builder()
        .query_sql("ck.sql", sql)
        .config(cfg)
        .build()
        .await
}

/// An output as (id, JSON) for comparison; device state is compared separately.
fn key(o: &Output) -> Option<(String, Value)> {
    match o {
        Output::Alert { topic, alert } => Some((
            format!("{topic} {}", alert.alert_id),
            serde_json::to_value(alert).unwrap(),
        )),
        Output::Row { topic, row } => Some((
            format!("{topic} {}", row.id),
            serde_json::to_value(row).unwrap(),
        )),
        Output::Transition { topic, message } => Some((
            format!("{topic} {}", message.event_id),
            serde_json::to_value(message).unwrap(),
        )),
        _ => None,
    }
}

/// Every output of an uninterrupted run, without checkpoints.
async fn reference() -> Vec<Output> {
    let p = pipeline(SQL, config(None, 0)).await.unwrap();
    let (h, mut rx) = p.start();
    let collect = tokio::spawn(async move {
        let mut v = Vec::new();
        while let Some(o) = rx.recv().await {
            v.push(o);
        }
        v
    });
    for (t, m) in messages() {
        h.push_json(&t, m).await.unwrap();
    }
    h.finish().await.unwrap();
    drop(h);
    collect.await.unwrap()
}

/// Runs the messages from `from` on, with acks; kills the pipeline after `crash_after`
/// messages (if given) by dropping its runtime. Returns the outputs received and
/// confirmed, and how many messages were acknowledged in all.
fn run_phase(
    dir: &Path,
    from: usize,
    crash_after: Option<usize>,
    max_unacked: usize,
) -> (Vec<Output>, usize, Option<u64>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outs = Arc::new(Mutex::new(Vec::new()));
    let acked = Arc::new(AtomicU64::new(from as u64));
    let o2 = outs.clone();
    let a2 = acked.clone();
    let restored = rt.block_on(async move {
        let p = pipeline(SQL, config(Some(dir), max_unacked)).await.unwrap();
        let restored = p.restored_checkpoint();
        let (h, mut rx) = p.start();
        let h2 = h.clone();
        // The consumer records each output, then confirms it.
        tokio::spawn(async move {
            let mut n = 0;
            while let Some(o) = rx.recv().await {
                o2.lock().unwrap().push(o);
                n += 1;
                h2.confirm_outputs(n);
            }
        });
        let all = messages();
        let end = crash_after.map_or(all.len(), |c| (from + c).min(all.len()));
        for (i, (t, m)) in all.into_iter().enumerate().take(end).skip(from) {
            let a = a2.clone();
            let ack = Box::new(move || {
                // Acks come in order: message i acknowledged means 0..=i are.
                let prev = a.fetch_max(i as u64 + 1, Ordering::SeqCst);
                assert!(prev <= i as u64 + 1);
            });
            h.push(
                forewarn::Envelope::new(t.as_str(), m)
                    .with(forewarn::Delivery::Ack { ack, id: None }),
            )
            .await
            .unwrap();
        }
        if crash_after.is_some() {
            // Let it process what it took, and the consumer record what came out.
            h.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        } else {
            h.finish().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        restored
    });
    // Dropping the runtime cancels every task mid-flight: nothing shuts down cleanly.
    drop(rt);
    let outs = outs.lock().unwrap().clone();
    (outs, acked.load(Ordering::SeqCst) as usize, restored)
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("forewarn-ck-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn a_killed_pipeline_restarts_from_its_checkpoint_without_losing_anything() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reference = rt.block_on(reference());
    drop(rt);
    let want: BTreeMap<String, Value> = reference.iter().filter_map(key).collect();
    assert!(want.len() > 600, "a substantial reference: {}", want.len());
    let transitions = reference
        .iter()
        .filter(|o| matches!(o, Output::Transition { .. }))
        .count();
    // d1 raises and clears twice, under the threshold rule and under the learned one.
    assert_eq!(transitions, 8, "d1 raises and clears twice under each rule");
    let total = messages().len();
    // Crash points at different phases of panes and checkpoints.
    for (crash_after, max_unacked) in [(1000usize, 97usize), (333, 50), (1, 1000)] {
        let dir = tempdir(&format!("{crash_after}"));
        let (mut got, acked, restored) = run_phase(&dir, 0, Some(crash_after), max_unacked);
        assert_eq!(restored, None);
        assert!(acked <= crash_after);
        // The source redelivers everything not acknowledged.
        let (more, acked2, restored) = run_phase(&dir, acked, None, max_unacked);
        assert_eq!(acked2, total, "every message acknowledged in the end");
        if acked > 0 {
            assert!(restored.is_some(), "continued from a checkpoint");
        }
        got.extend(more);
        let mut have: BTreeMap<String, Value> = BTreeMap::new();
        let mut duplicates = 0;
        for (k, v) in got.iter().filter_map(key) {
            match have.get(&k) {
                Some(prev) => {
                    assert!(
                        same(prev, &v),
                        "a repeated id carries the same content: {k}: {prev} vs {v}"
                    );
                    duplicates += 1;
                }
                None => {
                    have.insert(k, v);
                }
            }
        }
        let missing: Vec<&String> = want.keys().filter(|k| !have.contains_key(*k)).collect();
        assert!(missing.is_empty(), "lost outputs: {missing:?}");
        let extra: Vec<&String> = have.keys().filter(|k| !want.contains_key(*k)).collect();
        assert!(extra.is_empty(), "outputs the reference lacks: {extra:?}");
        for (k, v) in &want {
            assert!(same(&have[k], v), "{k}: {} vs {v}", have[k]);
        }
        // Device health at the end is the reference's.
        let last_state = |v: &[Output]| -> BTreeMap<String, Value> {
            let mut m = BTreeMap::new();
            for o in v {
                if let Output::State { state, .. } = o {
                    m.insert(state.device.clone(), serde_json::to_value(state).unwrap());
                }
            }
            m
        };
        let (a, b) = (last_state(&got), last_state(&reference));
        assert_eq!(a.len(), b.len());
        for (d, s) in &a {
            assert!(same(s, &b[d]), "state of {d}: {s} vs {}", b[d]);
        }
        eprintln!(
            "crash after {crash_after}: acked {acked} before the crash, {} outputs compared, {duplicates} duplicates",
            want.len()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn checkpoints_do_not_change_results() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reference = rt.block_on(reference());
    drop(rt);
    let dir = tempdir("same");
    // A checkpoint every 7 messages seals the open panes over and over.
    let (got, acked, _) = run_phase(&dir, 0, None, 7);
    assert_eq!(acked, messages().len());
    // Per query, the same outputs in the same order (queries interleave differently:
    // a checkpoint closes the micro-batch).
    let by_query = |v: &[Output]| {
        let mut m: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
        for (k, v) in v.iter().filter_map(key) {
            m.entry(k.split('/').nth(1).unwrap().to_string())
                .or_default()
                .push((k, v));
        }
        m
    };
    let (a, b) = (by_query(&reference), by_query(&got));
    assert_eq!(a.len(), 5);
    for (q, a) in &a {
        let b = &b[q];
        assert_eq!(a.len(), b.len(), "{q}");
        for ((ka, va), (kb, vb)) in a.iter().zip(b) {
            assert_eq!(ka, kb, "same outputs in the same order");
            assert!(same(va, vb), "{ka}: {va} vs {vb}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "fwc"))
        .collect();
    v.sort();
    v
}

#[test]
fn damaged_checkpoints_are_skipped_and_changed_queries_refused() {
    let dir = tempdir("damage");
    run_phase(&dir, 0, Some(500), 100);
    let f = files(&dir);
    assert_eq!(f.len(), 3, "three kept: {f:?}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let newest = rt.block_on(async {
        pipeline(SQL, config(Some(&dir), 100))
            .await
            .unwrap()
            .restored_checkpoint()
            .unwrap()
    });
    assert_eq!(newest, 5);
    // Truncate the newest: the one before is used.
    let bytes = std::fs::read(&f[2]).unwrap();
    std::fs::write(&f[2], &bytes[..bytes.len() / 2]).unwrap();
    // Flip one byte in the middle of the second newest: skipped too.
    let mut b1 = std::fs::read(&f[1]).unwrap();
    let mid = b1.len() / 2;
    b1[mid] ^= 0x55;
    std::fs::write(&f[1], &b1).unwrap();
    let restored = rt.block_on(async {
        pipeline(SQL, config(Some(&dir), 100))
            .await
            .unwrap()
            .restored_checkpoint()
    });
    assert_eq!(restored, Some(3));
    // A changed condition (HAVING) reads the same state: accepted.
    let having = SQL.replace(
        "GROUP BY tumble(interval '10 seconds'), device;",
        "GROUP BY tumble(interval '10 seconds'), device HAVING count(*) > 2;",
    );
    assert_ne!(having, SQL);
    rt.block_on(pipeline(&having, config(Some(&dir), 100)))
        .expect("a changed HAVING keeps the state");
    // A changed window does not: the error names the query.
    let wider = SQL.replace(
        "tumble(interval '5 seconds')",
        "tumble(interval '6 seconds')",
    );
    let e = rt
        .block_on(pipeline(&wider, config(Some(&dir), 100)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("does not fit the queries") && e.contains("query 'ck_4'"),
        "{e}"
    );
    // All damaged: refused, with each file's problem.
    let bytes = std::fs::read(&f[0]).unwrap();
    std::fs::write(&f[0], &bytes[..20]).unwrap();
    let e = rt
        .block_on(pipeline(SQL, config(Some(&dir), 100)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no valid checkpoint"), "{e}");
    assert!(
        e.contains("checksum mismatch") && e.contains("truncated"),
        "{e}"
    );
    let names: BTreeSet<_> = f.iter().map(|p| p.display().to_string()).collect();
    for n in names {
        assert!(e.contains(&n), "names {n}: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `finish()` ends the input: it closes every window, emits it, and then checkpoints.
/// A later start from the same directory continues after those windows: readings that
/// fall in one already emitted are late (counted), never a second version of it under
/// the same id; later windows open and close as usual.
#[test]
fn a_restart_after_finish_never_gives_one_id_two_contents() {
    let dir = tempdir("finish");
    const SQL: &str = "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH (connector = 'mqtt', topic = 'w/+', topic_template = 'w/{device}');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
INSERT INTO out SELECT device, window_start, count(*) AS n, sum(v) AS total
FROM r GROUP BY tumble(interval '10 seconds'), device;";
    // One reading a second; run 1 sends seconds 0-14, run 2 seconds 15-34.
    let run = |from: i64, to: i64| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut cfg = config(Some(&dir), 1000);
        // An output counts as delivered once it is in the channel.
        cfg.checkpoint.as_mut().unwrap().confirm_outputs = false;
        rt.block_on(async {
            let p = pipeline(SQL, cfg).await.unwrap();
            let (h, mut rx) = p.start();
            let collect = tokio::spawn(async move {
                let mut v = Vec::new();
                while let Some(o) = rx.recv().await {
                    if let Output::Row { row, .. } = o {
                        v.push((row.id.clone(), serde_json::to_value(&row.columns).unwrap()));
                    }
                }
                v
            });
            for s in from..to {
                let ts = 1_767_600_000_000i64 + s * 1000; // 2026-01-05T08:00:00Z
                h.push_json("w/d1", format!(r#"{{"ts":{ts},"v":{s}}}"#).into_bytes())
                    .await
                    .unwrap();
            }
            let stats = h.finish().await.unwrap();
            drop(h);
            (collect.await.unwrap(), stats)
        })
    };
    // A run that ends before any reading leaves nothing closed: the next starts afresh.
    let (none, _) = run(0, 0);
    assert!(none.is_empty());
    let (first, _) = run(0, 15);
    let (second, stats) = run(15, 35);
    let n = |v: &[(String, Value)]| {
        v.iter()
            .map(|(_, f)| f["n"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    // Run 1: [0, 10) whole, [10, 20) with the 5 readings it had at the end of its input.
    assert_eq!(n(&first), [10, 5], "{first:?}");
    // Run 2: seconds 15-19 fall in [10, 20), emitted already: late. Then [20, 30) and
    // [30, 40) as usual.
    assert_eq!(n(&second), [10, 5], "{second:?}");
    assert_eq!(stats.rejected.get("late"), Some(&5), "{stats:?}");
    let ids: BTreeMap<&str, &Value> = first.iter().map(|(i, f)| (i.as_str(), f)).collect();
    for (id, f) in &second {
        assert!(
            ids.get(id.as_str()).is_none_or(|g| *g == f),
            "{id}: {f} after {:?}",
            ids[id.as_str()]
        );
    }
    let sums: Vec<f64> = second
        .iter()
        .map(|(_, f)| f["total"].as_f64().unwrap())
        .collect();
    assert_eq!(
        sums,
        [(20..30).sum::<i64>() as f64, (30..35).sum::<i64>() as f64]
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A restarted pipeline announces every restored device's state, silences included,
/// before any new input: a view built from the outputs (the health page) knows the fleet
/// at once, and the retained state a subscriber sees is the one it had.
#[test]
fn a_restart_announces_the_restored_device_states() {
    let dir = tempdir("states");
    const SQL: &str = "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH (connector = 'mqtt', topic = 'w/+', topic_template = 'w/{device}');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}', warning_at = '5',
  clear_below = '1');
INSERT INTO out SELECT device, window_start, window_end, avg(v) AS score
FROM r GROUP BY tumble(interval '10 seconds'), device;";
    let run = |readings: &[(&str, i64, f64)], command: Option<(&str, &str)>| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut cfg = config(Some(&dir), 1000);
        cfg.checkpoint.as_mut().unwrap().confirm_outputs = false;
        cfg.wall_clock = true;
        rt.block_on(async {
            let p = pipeline(SQL, cfg).await.unwrap();
            let (h, mut rx) = p.start();
            let collect = tokio::spawn(async move {
                let mut v = Vec::new();
                while let Some(o) = rx.recv().await {
                    if let Output::State { state, .. } = o {
                        v.push(state);
                    }
                }
                v
            });
            for (d, s, v) in readings {
                let ts = 1_767_600_000_000i64 + s * 1000;
                h.push_json(
                    &format!("w/{d}"),
                    format!(r#"{{"ts":{ts},"v":{v}}}"#).into_bytes(),
                )
                .await
                .unwrap();
            }
            if let Some((d, c)) = command {
                // The windows first (a command for a device no rule has seen is refused).
                h.flush().await.unwrap();
                h.command(d, c.as_bytes().to_vec()).await.unwrap();
            }
            h.finish().await.unwrap();
            drop(h);
            collect.await.unwrap()
        })
    };
    // Run 1: d1 in warning, d2 ok; d1 silenced for two hours.
    let readings: Vec<(&str, i64, f64)> = (0..12)
        .flat_map(|s| [("d1", s, 9.0), ("d2", s, 0.5)])
        .collect();
    let first = run(
        &readings,
        Some((
            "d1",
            r#"{"action": "silence", "by": "ann", "for": "2 hours"}"#,
        )),
    );
    let last_of = |v: &[forewarn::DeviceState], d: &str| {
        v.iter().rev().find(|s| s.device == d).cloned().unwrap()
    };
    let (d1, d2) = (last_of(&first, "d1"), last_of(&first, "d2"));
    assert_eq!(d1.state, forewarn::Health::Warning, "{d1:?}");
    assert!(d1.silenced_until.is_some(), "{d1:?}");
    // Run 2, no input at all: both states come back as they were.
    let second = run(&[], None);
    let mut got: Vec<_> = second
        .iter()
        .map(|s| (s.device.clone(), s.clone()))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![("d1".to_string(), d1), ("d2".to_string(), d2)],
        "{second:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
