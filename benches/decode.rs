//! Decode: JSON payloads → Arrow batches through Forewarn's decoder (topic template,
//! schema validation, typed builders, micro-batches of 4,096 rows), against plain
//! `serde_json` parsing of the same bytes into structs: the floor any JSON decoder pays.
//!
//! `cargo bench --bench decode [-- MESSAGES]` (default 400,000 single-reading messages;
//! the array case uses the same number of readings in messages of 10). One core, best of
//! 10 interleaved rounds. Prints readings/s for each side and the ratio.
//!
//! `-- MESSAGES --only forewarn|serde [--per-message K]` runs one side once over the
//! single-reading case (or K readings per message), for counting its instructions with
//! callgrind: the decode loops are the functions `run_forewarn` and `run_serde`, so
//! `--toggle-collect='*run_forewarn*'` counts exactly the loop (see docs/benchmarks.md).
//!
//! With the feature `sparkplug` (on by default), also the same readings as Sparkplug B
//! DDATA messages (seven Double metrics by alias, each with its timestamp; births fed
//! before the clock starts), through the source's session to Arrow (its readings handed
//! over as typed values, decoded as the engine does with
//! `JsonDecoder::decode_array_values`), next to Forewarn's JSON decode of the same
//! readings in the same round.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use forewarn_formats::{JsonDecoder, TopicTemplate};
use serde::Deserialize;

/// The baseline's target: what a hand-written consumer would parse a reading into.
#[allow(dead_code)]
#[derive(Deserialize)]
struct Reading {
    ts: i64,
    vibration: Option<f64>,
    kurtosis: Option<f64>,
    temperature: Option<f64>,
    motor_current: Option<f64>,
    pressure: Option<f64>,
    load: Option<f64>,
    ambient: Option<f64>,
}

fn reading(i: usize) -> String {
    let f = |k: f64| k + (i % 97) as f64 * 0.013;
    format!(
        r#"{{"ts":{},"vibration":{:.3},"kurtosis":{:.3},"temperature":{:.2},"motor_current":{:.2},"pressure":{:.3},"load":{:.3},"ambient":{:.2}}}"#,
        1_700_000_000_000i64 + i as i64 * 1000,
        f(2.1),
        f(3.0),
        f(61.0),
        f(12.0),
        f(4.0),
        f(0.7),
        f(21.0)
    )
}

fn schema() -> Arc<Schema> {
    let mut fields = vec![
        Field::new("site", DataType::Utf8, true),
        Field::new("line", DataType::Utf8, true),
        Field::new("device", DataType::Utf8, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ];
    for f in forewarn_sim::METRICS {
        fields.push(Field::new(f, DataType::Float64, true));
    }
    Arc::new(Schema::new(fields))
}

struct Case {
    name: &'static str,
    /// (topic, payload, readings in it)
    messages: Vec<(String, Vec<u8>)>,
    readings: usize,
    array: bool,
}

fn case(name: &'static str, readings: usize, per_message: usize) -> Case {
    let mut messages = Vec::new();
    let mut i = 0;
    while i < readings {
        let topic = format!(
            "plant/site{}/line{}/pump-{:04}/telemetry",
            i % 3,
            i % 7,
            i % 10_000
        );
        let payload = if per_message == 1 {
            reading(i)
        } else {
            let items: Vec<String> = (i..i + per_message).map(reading).collect();
            format!("[{}]", items.join(","))
        };
        messages.push((topic, payload.into_bytes()));
        i += per_message;
    }
    Case {
        name,
        messages,
        readings,
        array: per_message > 1,
    }
}

/// Readings/s of Forewarn's decoder over the case.
fn forewarn(c: &Case) -> f64 {
    let template = TopicTemplate::parse("plant/{site}/{line}/{device}/telemetry").unwrap();
    let mut d = JsonDecoder::new(schema(), Some(template), 256 * 1024).unwrap();
    let start = Instant::now();
    let (accepted, rows) = run_forewarn(&mut d, c);
    let secs = start.elapsed().as_secs_f64();
    assert_eq!((accepted, rows), (c.readings, c.readings));
    c.readings as f64 / secs
}

/// The timed loop of the Forewarn side: (readings accepted, rows flushed). Never
/// inlined, so callgrind can count it alone.
#[inline(never)]
fn run_forewarn(d: &mut JsonDecoder, c: &Case) -> (usize, usize) {
    let mut accepted = 0;
    let mut rows = 0;
    for (topic, payload) in &c.messages {
        accepted += d.decode(topic, payload).accepted;
        if d.buffered_rows() >= 4096 {
            rows += d.flush().map_or(0, |b| b.num_rows());
        }
    }
    rows += d.flush().map_or(0, |b| b.num_rows());
    (accepted, rows)
}

/// Readings/s of serde_json into structs over the same bytes.
fn serde(c: &Case) -> f64 {
    let start = Instant::now();
    let n = run_serde(c);
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(n, c.readings);
    c.readings as f64 / secs
}

/// The timed loop of the serde_json side: readings parsed. Never inlined (see
/// [`run_forewarn`]).
#[inline(never)]
fn run_serde(c: &Case) -> usize {
    let mut n = 0;
    for (_, payload) in &c.messages {
        if c.array {
            let v: Vec<Reading> = serde_json::from_slice(payload).unwrap();
            n += v.len();
            black_box(v);
        } else {
            let r: Reading = serde_json::from_slice(payload).unwrap();
            n += 1;
            black_box(r);
        }
    }
    n
}

/// The Sparkplug B side: the readings of a case as DDATA messages of 12 edge nodes.
#[cfg(feature = "sparkplug")]
mod sparkplug {
    use super::*;
    use forewarn::connect::sparkplug::{Action, EdgeNode, Session, SparkplugSource};
    use forewarn_formats::Readings;

    // The simulated plant's metrics, in the order its births declare them.
    use forewarn_sim::METRICS;

    /// (births to feed untimed, DDATA messages to time), in publication order.
    pub struct Messages {
        births: Vec<(String, Vec<u8>)>,
        data: Vec<(String, Vec<u8>)>,
        readings: usize,
    }

    pub fn messages(c: &Case) -> Messages {
        let mut nodes: Vec<EdgeNode> = (0..12)
            .map(|n| EdgeNode::new(&format!("site{}", n % 3), &format!("node{n}"), 0))
            .collect();
        let mut births: Vec<(String, Vec<u8>)> = nodes.iter_mut().map(|n| n.birth(0)).collect();
        let mut data = Vec::new();
        for (topic, payload) in &c.messages {
            assert!(!c.array, "one reading per message");
            let device = topic.split('/').nth(3).expect("plant topic");
            let r: Reading = serde_json::from_slice(payload).unwrap();
            let values = [
                r.vibration,
                r.kurtosis,
                r.temperature,
                r.motor_current,
                r.pressure,
                r.load,
                r.ambient,
            ];
            let metrics: Vec<(&str, Option<f64>)> = METRICS.iter().copied().zip(values).collect();
            let n: usize = device[5..].parse::<usize>().unwrap() % nodes.len();
            let node = &mut nodes[n];
            if node.is_born(device) {
                data.push(node.device_data(device, r.ts, &metrics).unwrap());
            } else {
                births.push(node.device_birth(device, r.ts, &metrics));
            }
        }
        // Births carry readings too: only the DDATA ones are timed and counted.
        let readings = data.len();
        Messages {
            births,
            data,
            readings,
        }
    }

    fn schema() -> Arc<Schema> {
        let mut fields = vec![
            Field::new("group", DataType::Utf8, true),
            Field::new("edge_node", DataType::Utf8, true),
            Field::new("device", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ];
        for f in METRICS {
            fields.push(Field::new(f, DataType::Float64, true));
        }
        Arc::new(Schema::new(fields))
    }

    /// Readings/s of DDATA → session (aliases, seq) → typed rows → Arrow.
    pub fn decode(m: &Messages) -> f64 {
        let schema = schema();
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let settings = SparkplugSource {
            group: None,
            metric_map: vec![],
            rebirth_interval: 10_000,
        };
        let mut session = Session::new(settings, &columns, Some("ts"));
        for (topic, payload) in &m.births {
            session.handle(topic, payload, 0);
        }
        let mut d = JsonDecoder::new(schema, None, 256 * 1024).unwrap();
        let schema_columns = columns;
        let start = Instant::now();
        let (mut accepted, mut rows) = (0, 0);
        for (topic, payload) in &m.data {
            for a in session.handle(topic, payload, 0) {
                match a {
                    Action::Rows(r) => {
                        // The schema's columns among the rows', as the engine matches them
                        // for each message.
                        let map: Vec<Option<usize>> = schema_columns
                            .iter()
                            .map(|c| r.columns().iter().position(|k| k == c))
                            .collect();
                        accepted += d
                            .decode_array_values("", r.len(), |row, k| r.value(row, map[k]?))
                            .accepted
                    }
                    other => panic!("{other:?}"),
                }
            }
            if d.buffered_rows() >= 4096 {
                rows += d.flush().map_or(0, |b| b.num_rows());
            }
        }
        rows += d.flush().map_or(0, |b| b.num_rows());
        let secs = start.elapsed().as_secs_f64();
        assert_eq!((accepted, rows), (m.readings, m.readings));
        m.readings as f64 / secs
    }
}

/// `--only SIDE [--per-message K]`: one pass of one side, for callgrind.
fn only(n: usize, side: &str, per_message: usize) {
    let c = case("one side", n, per_message);
    let start = Instant::now();
    match side {
        "forewarn" => {
            let template = TopicTemplate::parse("plant/{site}/{line}/{device}/telemetry").unwrap();
            let mut d = JsonDecoder::new(schema(), Some(template), 256 * 1024).unwrap();
            assert_eq!(run_forewarn(&mut d, &c), (n, n));
        }
        "serde" => assert_eq!(run_serde(&c), n),
        other => panic!("--only takes forewarn or serde, not {other}"),
    }
    println!(
        "{side}: {n} readings, {per_message} per message, {:.3} s",
        start.elapsed().as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The value following `--name`, if given.
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let n: usize = args
        .iter()
        .enumerate()
        // Not a flag, nor a flag's value.
        .find(|(i, a)| {
            !a.starts_with('-')
                && (*i == 0 || !matches!(args[i - 1].as_str(), "--only" | "--per-message"))
        })
        .and_then(|(_, a)| a.parse().ok())
        .unwrap_or(400_000);
    if let Some(side) = flag("--only") {
        let k = flag("--per-message").map_or(1, |k| k.parse().expect("--per-message K"));
        return only(n, side, k);
    }
    println!("decode: {n} readings per case, best of 10 interleaved rounds, one core");
    println!(
        "{:<28} {:>16} {:>16} {:>8}",
        "case", "forewarn rd/s", "serde_json rd/s", "ratio"
    );
    for c in [
        case("one reading per message", n, 1),
        case("10 readings per message", n, 10),
    ] {
        let (mut best_f, mut best_s) = (0f64, 0f64);
        for _ in 0..10 {
            best_f = best_f.max(forewarn(&c));
            best_s = best_s.max(serde(&c));
        }
        println!(
            "{:<28} {:>16.0} {:>16.0} {:>8.2}",
            c.name,
            best_f,
            best_s,
            best_f / best_s
        );
    }
    #[cfg(feature = "sparkplug")]
    {
        let c = case("one reading per message", n, 1);
        let m = sparkplug::messages(&c);
        let (mut best_p, mut best_j) = (0f64, 0f64);
        for _ in 0..10 {
            best_p = best_p.max(sparkplug::decode(&m));
            best_j = best_j.max(forewarn(&c));
        }
        println!(
            "Sparkplug B DDATA (7 metrics by alias) -> Arrow {best_p:.0} rd/s; JSON -> Arrow {best_j:.0} rd/s; ratio {:.2}",
            best_p / best_j
        );
    }
}
