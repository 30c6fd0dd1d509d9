//! The data set of the checkpoint and crash tests: tumbling, hopping and session
//! windows, a rule with a lifecycle, and a rule whose online detector learns each device,
//! over six devices.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use forewarn::mqtt::{BrokerUrl, MqttSource, SourceOptions};
use forewarn::{EngineConfig, Pipeline};
use serde_json::Value;

pub const BASE: i64 = 1_700_000_000_000;

/// Tumbling, hopping and session windows, a rule with a lifecycle, and one with an
/// online detector (its learned state must survive a restart like window state).
pub const SQL: &str = "
CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
  WITH (connector = 'mqtt', topic = 'ck/+', topic_template = 'ck/{device}');
CREATE TABLE tumbled WITH (connector = 'mqtt', topic = 'out/tumble/{device}');
CREATE TABLE hopped WITH (connector = 'mqtt', topic = 'out/hop/{device}');
CREATE TABLE sessions WITH (connector = 'mqtt', topic = 'out/session/{device}');
CREATE TABLE rule WITH (connector = 'mqtt', topic = 'out/rule/{device}',
  warning_at = '50', clear_below = '40', raise_after = '2', clear_after = '2');
INSERT INTO tumbled SELECT device, window_start, window_end, count(*) AS n, sum(v) AS s,
  min(v) AS lo, max(v) AS hi, stddev(v) AS sd
  FROM r GROUP BY tumble(interval '10 seconds'), device;
INSERT INTO hopped SELECT device, window_start, window_end, count(*) AS n, avg(v) AS a
  FROM r GROUP BY hop(interval '2 seconds', interval '10 seconds'), device;
INSERT INTO sessions SELECT device, window_start, window_end, count(*) AS n, max(v) AS hi
  FROM r GROUP BY session(interval '3 seconds'), device;
INSERT INTO rule SELECT device, window_start, window_end, avg(v) AS score
  FROM r GROUP BY tumble(interval '5 seconds'), device;
CREATE TABLE learned WITH (connector = 'mqtt', topic = 'out/learned/{device}',
  detector = 'online', warmup = '12 windows', warning_at = '3');
INSERT INTO learned SELECT device, window_start, window_end, avg(v) AS v
  FROM r GROUP BY tumble(interval '2 seconds'), device;
";

/// Six devices over 200 s, one reading a second each, slightly out of order; d1 runs
/// hot twice (alerts raise and clear), d3 goes silent every 30 s (sessions end).
pub fn messages() -> Vec<(String, Vec<u8>)> {
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::new();
    for s in 0..200i64 {
        for d in 0..6 {
            if d == 3 && (s % 30) >= 24 {
                continue;
            }
            let hot = d == 1 && ((40..70).contains(&s) || (120..150).contains(&s));
            let v = if hot { 60.0 } else { 20.0 } + (next() % 1000) as f64 / 100.0;
            let ts = BASE + s * 1000 + (next() % 900) as i64;
            out.push((
                format!("ck/d{d}"),
                serde_json::json!({"ts": ts, "v": v})
                    .to_string()
                    .into_bytes(),
            ));
        }
    }
    out
}

/// JSON equality up to rounding: a checkpoint seals a pane's partial sums, so a sum
/// may be added up in another order and differ in the last bits.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Window results by alert id, transitions by event id; device state is not compared.
pub fn key(topic: &str, v: &Value) -> Option<String> {
    if topic.starts_with("forewarn/") {
        return None;
    }
    let id = v.get("event_id").or_else(|| v.get("alert_id"))?;
    Some(format!("{topic} {}", id.as_str()?))
}

/// An external subscriber to everything the engine publishes under `out/`, collecting
/// (topic, JSON); `persistent` keeps its session across a broker restart.
pub async fn observe(
    url: &BrokerUrl,
    id: &str,
    persistent: bool,
) -> (MqttSource, Arc<Mutex<Vec<(String, Value)>>>) {
    let mut opts = SourceOptions::new(url.clone(), id, vec!["out/#".into()]);
    opts.capacity = 100_000;
    opts.clean_session = !persistent;
    let (mut sub, mut rx) = MqttSource::start(opts);
    sub.wait_connected(Duration::from_secs(10)).await.unwrap();
    let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let g = got.clone();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            g.lock().unwrap().push((m.topic, v));
        }
    });
    (sub, got)
}

/// Every reference output arrived, with the same content; repeats carry the same id
/// and content. Prints the figures.
pub fn compare(
    want: &BTreeMap<String, Value>,
    got: &[(String, Value)],
    sent: usize,
) -> Vec<String> {
    let mut have: BTreeMap<String, Value> = BTreeMap::new();
    let mut duplicates = Vec::new();
    let mut mismatched = Vec::new();
    for (t, v) in got {
        let Some(k) = key(t, v) else { continue };
        match have.get(&k) {
            Some(prev) => {
                if !same(prev, v) {
                    mismatched.push(format!("{k}: {prev} then {v}"));
                }
                duplicates.push(k);
            }
            None => {
                have.insert(k, v.clone());
            }
        }
    }
    let lost: Vec<&String> = want.keys().filter(|k| !have.contains_key(*k)).collect();
    let unexpected: Vec<&String> = have.keys().filter(|k| !want.contains_key(*k)).collect();
    let transitions = want
        .values()
        .filter(|v| v.get("event_id").is_some())
        .count();
    eprintln!(
        "readings sent {sent}; compared {} window results and {transitions} transitions; lost {}; duplicates {} {:?}",
        want.len() - transitions,
        lost.len(),
        duplicates.len(),
        duplicates.iter().take(5).collect::<Vec<_>>()
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(
        unexpected.is_empty(),
        "not in the reference: {unexpected:?}"
    );
    for (k, v) in want {
        if !same(&have[k], v) {
            mismatched.push(format!("{k}: {} vs the reference {v}", have[k]));
        }
    }
    mismatched
}

/// Waits until every reference output has arrived (or 90 s).
pub async fn wait_for_all(want: &BTreeMap<String, Value>, got: &Arc<Mutex<Vec<(String, Value)>>>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let have: std::collections::BTreeSet<String> = got
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(t, v)| key(t, v))
            .collect();
        if want.keys().all(|k| have.contains(k)) || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Outputs of an uninterrupted run whose windows the stream's own watermark closes
/// (the engine is stopped without closing the rest), keyed by topic and id.
pub async fn reference() -> BTreeMap<String, Value> {
    let p = Pipeline::builder()
        .query_sql("ck.sql", SQL)
        .config(EngineConfig {
            wall_clock: false,
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let (h, mut rx) = p.start();
    for (t, m) in messages() {
        h.push_json(&t, m).await.unwrap();
    }
    h.flush().await.unwrap();
    let mut out = BTreeMap::new();
    while let Ok(o) = rx.try_recv() {
        let (topic, payload) = o.to_message();
        if let Some(k) = key(&topic, &serde_json::from_slice(&payload).unwrap()) {
            out.insert(k, serde_json::from_slice(&payload).unwrap());
        }
    }
    out
}

/// A child process killed when dropped (a failing test leaves nothing running).
pub struct Proc(pub Child);

impl Proc {
    /// Sends SIGTERM (the operator's stop) without waiting.
    pub fn sigterm(&self) {
        Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("run kill");
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.sigterm();
        self.0.wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `forewarn run` on the broker at `mqtt_port` with the queries, models and
/// `forewarn.toml` set out in `dir`, and `extra` arguments; its log goes to `dir/log`.
#[cfg(feature = "cli")]
pub fn forewarn_run(dir: &Path, mqtt_port: u16, extra: &[&str], log: &str) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_forewarn"))
            .args(["run", "--broker", &format!("mqtt://127.0.0.1:{mqtt_port}")])
            .args(extra)
            .arg("--queries")
            .arg(dir.join("queries"))
            .arg("--models")
            .arg(dir.join("models"))
            .arg("--config")
            .arg(dir.join("forewarn.toml"))
            .env("RUST_LOG", "warn,forewarn=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(log)).unwrap())
            .spawn()
            .expect("start forewarn"),
    )
}
