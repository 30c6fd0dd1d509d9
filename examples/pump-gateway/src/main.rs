//! A Modbus-style gateway embedding Forewarn: register values polled into memory →
//! an Arrow batch per minute → the pipeline → alert transitions and device states,
//! handed to the gateway's own MQTT client with [`Output::to_message`] (printed here).
//!
//! It needs no async runtime and no broker: [`BlockingPipeline`] runs the pipeline on
//! its own thread. Run it with `cargo run -p pump-gateway`.

use std::sync::Arc;

use forewarn::arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMillisecondArray};
use forewarn::arrow::record_batch::RecordBatch;
use forewarn::blocking::BlockingPipeline;
use forewarn::{EngineError, Output, Pipeline};

/// The query, built into the binary (a gateway may as well read it from a file).
const QUERY: &str = include_str!("../pump.sql");
/// The pumps this gateway polls; the second one's bearing is failing.
const PUMPS: [&str; 2] = ["pump-0001", "pump-0002"];
/// Seconds between polls.
const POLL_S: i64 = 5;

/// One poll of a pump's holding registers: raw 16-bit values, as Modbus returns them.
struct Registers {
    /// Vibration, 0.01 mm/s per count.
    vibration: u16,
    /// Bearing temperature, 0.1 degC per count.
    temperature: u16,
}

/// What the pump `p` reads at second `t` (a stand-in for a Modbus read): healthy pumps
/// run at 2.2 mm/s; pump-0002's vibration climbs from minute 4 as its bearing wears.
fn poll(p: usize, t: i64) -> Registers {
    let wear = if p == 1 && t >= 240 {
        (t - 240) as f64 / 60.0
    } else {
        0.0
    };
    let ripple = ((t / POLL_S) % 3) as f64 * 0.05;
    Registers {
        vibration: ((2.2 + 1.8 * wear + ripple) * 100.0).round() as u16,
        temperature: ((41.0 + 2.0 * wear) * 10.0).round() as u16,
    }
}

/// Polls `minutes` of both pumps starting at `start_ms`, pushing a batch per minute,
/// and returns every output in the order the pipeline produced it.
fn run(start_ms: i64, minutes: i64) -> Result<Vec<Output>, EngineError> {
    let pipeline = BlockingPipeline::build(Pipeline::builder().query_sql("pump.sql", QUERY))?;
    let mut outputs = Vec::new();
    for minute in 0..minutes {
        let (mut device, mut ts, mut vibration, mut temperature) = (vec![], vec![], vec![], vec![]);
        for t in (minute * 60..(minute + 1) * 60).step_by(POLL_S as usize) {
            for (p, name) in PUMPS.iter().enumerate() {
                let r = poll(p, t);
                device.push(*name);
                ts.push(start_ms + t * 1000);
                vibration.push(f64::from(r.vibration) * 0.01);
                temperature.push(f64::from(r.temperature) * 0.1);
            }
        }
        // Columns are matched by name; the timestamp may be in any unit, UTC.
        let batch = RecordBatch::try_from_iter([
            ("device", Arc::new(StringArray::from(device)) as ArrayRef),
            (
                "ts",
                Arc::new(TimestampMillisecondArray::from(ts)) as ArrayRef,
            ),
            (
                "vibration",
                Arc::new(Float64Array::from(vibration)) as ArrayRef,
            ),
            (
                "temperature",
                Arc::new(Float64Array::from(temperature)) as ArrayRef,
            ),
        ])
        .expect("columns of equal length");
        pipeline.push_batch("registers", batch)?;
        // Wait until the minute is processed, so its outputs are published now rather
        // than on a later cycle; then read them (the output channel is bounded).
        pipeline.flush()?;
        while let Some(out) = pipeline.poll() {
            outputs.push(out);
        }
    }
    // Close the last windows; their outputs wait in `poll`.
    let stats = pipeline.finish()?;
    while let Some(out) = pipeline.poll() {
        outputs.push(out);
    }
    eprintln!("{}", stats.summary());
    Ok(outputs)
}

fn main() -> Result<(), EngineError> {
    let start = forewarn::parse_rfc3339("2026-01-05T06:00:00Z").expect("a valid time");
    for out in run(start, 10)? {
        if let Output::Transition { message, .. } = &out {
            eprintln!(
                "{} {:?}: {:?} -> {:?}, score {:.2}",
                message.device,
                message.transition,
                message.previous,
                message.state,
                message.score.unwrap_or(f64::NAN)
            );
        }
        // Your MQTT client publishes this (retained when `out.retained()`).
        let (topic, payload) = out.to_message();
        println!("{topic} {}", String::from_utf8_lossy(&payload));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use forewarn::{Health, TransitionKind};

    /// The failing pump is warned, then alarmed, once its mean vibration has been above
    /// 4.5 and then 7.2 mm/s for two minutes; the healthy one never is.
    #[test]
    fn the_failing_pump_raises_a_transition() {
        let start = forewarn::parse_rfc3339("2026-01-05T06:00:00Z").unwrap();
        let outs = run(start, 10).unwrap();
        let transitions: Vec<_> = outs
            .iter()
            .filter_map(|o| match o {
                Output::Transition { topic, message } => Some((
                    topic.as_str(),
                    message.device.as_str(),
                    message.transition,
                    message.state,
                    message.window_start.as_millis() - start,
                )),
                _ => None,
            })
            .collect();
        // Independently: minute m's mean vibration is 2.2 + ripple (0.05 on average)
        // + 1.8 × the wear averaged over the minute. Score = mean / 4.5.
        let mean = |m: i64| {
            let ts: Vec<i64> = (m * 60..(m + 1) * 60).step_by(5).collect();
            ts.iter()
                .map(|&t| f64::from(poll(1, t).vibration) * 0.01)
                .sum::<f64>()
                / ts.len() as f64
        };
        // raise_after = 2: the second of two windows in a row at or above warning_at
        // (1.0) raises; the second of two at or above alarm_at (1.6) escalates.
        let second_in_a_row = |limit: f64| {
            (1..10)
                .find(|&m| mean(m - 1) / 4.5 >= limit && mean(m) / 4.5 >= limit)
                .expect("reached")
                * 60_000
        };
        let (raised_at, alarm_at) = (second_in_a_row(1.0), second_in_a_row(1.6));
        assert_eq!(
            transitions,
            [
                (
                    "pump_alerts",
                    "pump-0002",
                    TransitionKind::Raised,
                    Health::Warning,
                    raised_at
                ),
                (
                    "pump_alerts",
                    "pump-0002",
                    TransitionKind::Escalated,
                    Health::Alarm,
                    alarm_at
                ),
            ]
        );
        // Every window of both pumps was scored: device states say where each stands.
        let last_state = |d: &str| {
            outs.iter().rev().find_map(|o| match o {
                Output::State { state, .. } if state.device == d => Some(state.state),
                _ => None,
            })
        };
        assert_eq!(last_state("pump-0002"), Some(Health::Alarm));
        assert!(matches!(last_state("pump-0001"), None | Some(Health::Ok)));
    }
}
