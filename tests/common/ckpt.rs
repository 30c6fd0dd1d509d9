//! The data set of the checkpoint and crash tests: tumbling, hopping and session
//! windows and a rule with a lifecycle over six devices.
#![allow(dead_code)]

use serde_json::Value;

pub const BASE: i64 = 1_700_000_000_000;

/// Tumbling, hopping and session windows, and a rule with a lifecycle.
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
