//! The bad-input corpus (`tests/corpus/bad_input.tsv`): every case is pushed between
//! good readings and must end in exactly its expected outcome (accepted, or dead-lettered
//! with the expected reason); the good devices' windows must come out exactly as computed
//! here independently, and every message in is accounted for. Then the limits: a flood
//! of new device ids and of far-apart windows is refused and counted.

use std::collections::BTreeMap;

use forewarn::{EngineConfig, Output, Pipeline};

const BASE: i64 = 1_700_000_000_000;

const SQL: &str = "
CREATE TABLE telemetry (
  device TEXT, ts TIMESTAMP, vibration DOUBLE NOT NULL, temp DOUBLE, status TEXT,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (connector = 'mqtt', topic = 'plant/+/telemetry',
        topic_template = 'plant/{device}/telemetry', max_future = '1 hour');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'out/{device}');
INSERT INTO out SELECT device, window_start, window_end, count(*) AS n, sum(vibration) AS s
FROM telemetry GROUP BY tumble(interval '10 seconds'), device;
";

struct Case {
    line: usize,
    topic: String,
    payload: Vec<u8>,
    expect: Vec<String>,
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'x' if i + 3 < b.len() => {
                    out.push(u8::from_str_radix(&s[i + 2..i + 4], 16).expect("\\xNN"));
                    i += 4;
                    continue;
                }
                b't' => {
                    out.push(b'\t');
                    i += 2;
                    continue;
                }
                b'n' => {
                    out.push(b'\n');
                    i += 2;
                    continue;
                }
                b'\\' => {
                    out.push(b'\\');
                    i += 2;
                    continue;
                }
                _ => {}
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The corpus, with `TS` replaced by `ts`.
fn corpus(ts: i64) -> Vec<Case> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/corpus/bad_input.tsv"
    ))
    .unwrap();
    let topic = "plant/dx/telemetry".to_string();
    let mut cases = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() && !line.contains('\t') {
            continue;
        }
        let line_no = n + 1;
        if let Some(gen) = line.strip_prefix('@') {
            let (what, expect) = gen.split_once('\t').expect("@kind N<TAB>outcome");
            let (kind, size) = what.split_once(' ').expect("@kind N");
            let size: usize = size.parse().unwrap();
            let payload = match kind {
                "huge" => {
                    let head = format!("{{\"ts\": {ts}, \"vibration\": 1.0, \"pad\": \"");
                    let pad = size - head.len() - 2;
                    format!("{head}{}\"}}", "x".repeat(pad)).into_bytes()
                }
                "nested" => format!(
                    "{{\"ts\": {ts}, \"vibration\": {}1.0{}}}",
                    "[".repeat(size),
                    "]".repeat(size)
                )
                .into_bytes(),
                k => panic!("line {line_no}: unknown generator {k}"),
            };
            if kind == "huge" {
                assert_eq!(payload.len(), size);
            }
            cases.push(Case {
                line: line_no,
                topic: topic.clone(),
                payload,
                expect: vec![expect.to_string()],
            });
            continue;
        }
        let mut parts = line.splitn(3, '\t');
        let expect = parts.next().unwrap();
        let t = parts
            .next()
            .unwrap_or_else(|| panic!("line {line_no}: no topic"));
        let payload = parts.next().unwrap_or("");
        cases.push(Case {
            line: line_no,
            topic: t.to_string(),
            payload: unescape(&payload.replace("TS", &ts.to_string())),
            expect: expect.split(',').map(str::to_string).collect(),
        });
    }
    cases
}

/// Good readings: d1..d3, one a second for 60 s.
fn good(from_s: i64, to_s: i64) -> Vec<(String, i64, f64)> {
    let mut v = Vec::new();
    for s in from_s..to_s {
        for d in 1..=3 {
            v.push((
                format!("d{d}"),
                BASE + s * 1000 + d * 100,
                (s * 7 + d * 3) as f64 / 4.0,
            ));
        }
    }
    v
}

async fn push_good(h: &forewarn::PipelineHandle, rows: &[(String, i64, f64)]) {
    for (d, ts, v) in rows {
        let p = serde_json::json!({"ts": ts, "vibration": v}).to_string();
        h.push_json(&format!("plant/{d}/telemetry"), p.into_bytes())
            .await
            .unwrap();
    }
}

fn drain(rx: &mut tokio::sync::mpsc::Receiver<Output>, into: &mut Vec<Output>) -> Vec<String> {
    let mut reasons = Vec::new();
    while let Ok(o) = rx.try_recv() {
        if let Output::DeadLetter { letter, .. } = &o {
            reasons.push(letter.reason.to_string());
        }
        into.push(o);
    }
    reasons
}

#[tokio::test]
async fn every_corpus_case_has_its_outcome_and_good_data_flows_around_it() {
    let config = EngineConfig {
        max_payload_bytes: 4096,
        max_devices: 10,
        max_open_windows: 8,
        wall_clock: false,
        ..Default::default()
    };
    let p = Pipeline::builder()
        .query_sql("bad.sql", SQL)
        .config(config)
        .build()
        .await
        .unwrap();
    let (h, mut rx) = p.start();
    let mut outs = Vec::new();
    let first = good(0, 30);
    push_good(&h, &first).await;
    h.flush().await.unwrap();
    assert!(drain(&mut rx, &mut outs).is_empty());

    // Just behind the stream: the pane [20 s, 30 s) is still open.
    let ts = BASE + 29_000;
    let cases = corpus(ts);
    let mut accepted_dx = 0;
    let mut failures = Vec::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for c in &cases {
        let before = h.stats().readings_in;
        h.push_json(&c.topic, c.payload.clone()).await.unwrap();
        h.flush().await.unwrap();
        let mut got = drain(&mut rx, &mut outs);
        let accepted = (h.stats().readings_in - before) as usize;
        // Accepted readings that are then rejected by the window (late, future) count
        // as that rejection, not as `ok`.
        let ok_now = accepted.saturating_sub(
            got.iter()
                .filter(|r| ["late", "future_timestamp", "too_many_windows"].contains(&r.as_str()))
                .count(),
        );
        got.extend(std::iter::repeat_n("ok".to_string(), ok_now));
        got.sort();
        let mut want = c.expect.clone();
        want.sort();
        if got != want {
            failures.push(format!(
                "line {}: expected {want:?}, got {got:?} for {:?}",
                c.line,
                String::from_utf8_lossy(&c.payload[..c.payload.len().min(80)])
            ));
        }
        accepted_dx += ok_now;
        for o in got {
            *outcomes.entry(o).or_default() += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{} corpus cases, outcomes {outcomes:?}", cases.len());
    assert!(cases.len() >= 50, "the corpus has {} cases", cases.len());

    // The good stream goes on.
    let second = good(30, 60);
    push_good(&h, &second).await;
    h.flush().await.unwrap();
    drain(&mut rx, &mut outs);

    // A flood of new device ids: 4 devices so far (d1..d3, dx), 10 allowed.
    let last = BASE + 59_500;
    for k in 0..20 {
        let p = serde_json::json!({"ts": last, "vibration": 1.0}).to_string();
        h.push_json(&format!("plant/flood{k:02}/telemetry"), p.into_bytes())
            .await
            .unwrap();
    }
    h.flush().await.unwrap();
    let refused = drain(&mut rx, &mut outs);
    assert_eq!(refused, vec!["too_many_devices"; 14]);

    // A flood of windows: 20 readings 10 s apart in one message; one pane is open, 8
    // may be, so the 7 nearest are taken and the 13 furthest refused.
    let far: Vec<serde_json::Value> = (1..=20)
        .map(|k| serde_json::json!({"ts": last + k * 10_000, "vibration": 1.0}))
        .collect();
    h.push_json(
        "plant/d1/telemetry",
        serde_json::Value::Array(far).to_string().into_bytes(),
    )
    .await
    .unwrap();
    h.flush().await.unwrap();
    let refused = drain(&mut rx, &mut outs);
    assert_eq!(refused, vec!["too_many_windows"; 13]);

    let stats = h.finish().await.unwrap();
    drop(h);
    while let Some(o) = rx.recv().await {
        outs.push(o);
    }
    // Windows of the good devices, computed here (the window-flood rows of d1 fall in
    // later windows and are added to the expectation too).
    let mut want: BTreeMap<(String, i64), (i64, f64)> = BTreeMap::new();
    for (d, ts, v) in first.iter().chain(&second) {
        let e = want
            .entry((d.clone(), ts - ts.rem_euclid(10_000)))
            .or_default();
        e.0 += 1;
        e.1 += v;
    }
    for k in 1..=7 {
        let t = last + k * 10_000;
        let e = want
            .entry(("d1".into(), t - t.rem_euclid(10_000)))
            .or_default();
        e.0 += 1;
        e.1 += 1.0;
    }
    let mut have: BTreeMap<(String, i64), (i64, f64)> = BTreeMap::new();
    for o in &outs {
        if let Output::Row { row, .. } = o {
            have.insert(
                (row.device.clone(), row.window_start.as_millis()),
                (
                    row.columns["n"].as_i64().unwrap(),
                    row.columns["s"].as_f64().unwrap(),
                ),
            );
        }
    }
    for ((d, start), (n, s)) in &want {
        let (hn, hs) = have
            .get(&(d.clone(), *start))
            .unwrap_or_else(|| panic!("no window {d} {start}"));
        assert_eq!(hn, n, "{d} {start}");
        assert!((hs - s).abs() < 1e-9, "{d} {start}: {hs} vs {s}");
    }
    // dx: every accepted corpus reading, in one window.
    assert_eq!(
        have[&("dx".to_string(), BASE + 20_000)].0,
        accepted_dx as i64
    );
    // Nothing disappears: every message in is a reading taken or a dead letter.
    let dead: u64 = stats.rejected.values().sum();
    assert_eq!(stats.dead_letters_out, dead);
    let messages = (first.len() + second.len() + cases.len() + 20 + 1) as u64;
    assert_eq!(stats.messages_in, messages);
    eprintln!("stats: {stats:?}");
}

/// Over `max_state_bytes`, rows are refused (state_limit) but still move time, so
/// windows close, state shrinks and rows are taken again: the pipeline never wedges.
#[tokio::test]
async fn over_the_state_limit_rows_are_refused_and_time_moves_on() {
    let config = EngineConfig {
        max_state_bytes: 1,
        wall_clock: false,
        ..Default::default()
    };
    let p = Pipeline::builder()
        .query_sql("bad.sql", SQL)
        .config(config)
        .build()
        .await
        .unwrap();
    let (h, mut rx) = p.start();
    let rows = good(0, 60);
    for chunk in rows.chunks(6) {
        push_good(&h, chunk).await;
        h.flush().await.unwrap();
    }
    let stats = h.finish().await.unwrap();
    drop(h);
    let mut outs = Vec::new();
    while let Some(o) = rx.recv().await {
        outs.push(o);
    }
    let refused = stats.rejected.get("state_limit").copied().unwrap_or(0);
    let windows = outs
        .iter()
        .filter(|o| matches!(o, Output::Row { .. }))
        .count();
    eprintln!(
        "{} readings: {refused} refused, {} taken, {windows} window results",
        rows.len(),
        stats.readings_in as usize - refused as usize
    );
    assert!(refused > 0, "some rows were refused");
    assert!(
        (refused as usize) < rows.len(),
        "and some taken again once windows closed"
    );
    assert!(windows >= 6, "windows kept closing: {windows}");
    assert_eq!(stats.readings_in as usize, rows.len());
}
