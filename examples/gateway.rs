//! A gateway embedding Forewarn: no broker, the caller's tokio runtime, readings pushed
//! in as JSON and as an Arrow batch, alerts read from a channel.
//!
//! Run from the repository root: `cargo run --example gateway`. As a crate of your own
//! it needs `forewarn = { version = "0.1", default-features = false }` and
//! `tokio = { version = "1", features = ["macros", "rt-multi-thread"] }`, and the
//! repository's `queries/` and `models/` folders beside it.

use std::sync::Arc;

use forewarn::arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMillisecondArray};
use forewarn::arrow::record_batch::RecordBatch;
use forewarn::{Output, Pipeline};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pipeline = Pipeline::builder()
        .query_file("queries/plant_health.sql")
        .models_dir("models")
        .build()
        .await?;
    let schema = pipeline.sources()[0].schema.clone();
    let (handle, mut outputs) = pipeline.start();
    let printer = tokio::spawn(async move {
        while let Some(out) = outputs.recv().await {
            match out {
                Output::Alert { topic, alert } => println!(
                    "{topic}: {} score {:.2}",
                    alert.device,
                    alert.score.unwrap_or(f64::NAN)
                ),
                Output::Row { topic, row } => {
                    println!(
                        "{topic}: {} {} {:?}",
                        row.device, row.window_end, row.columns
                    )
                }
                Output::Transition { topic, message } => println!(
                    "{topic}: {} {:?} -> {:?} score {:.2}",
                    message.device,
                    message.previous,
                    message.state,
                    message.score.unwrap_or(f64::NAN)
                ),
                Output::State { topic, state } => println!("{topic}: {:?}", state.state),
                Output::DeadLetter { topic, letter } => {
                    println!("{topic}: {} ({})", letter.reason, letter.detail)
                }
                // Output may gain kinds in later versions.
                _ => {}
            }
        }
    });

    // Two minutes of a healthy pump, one reading every 5 s, as JSON messages.
    let start = forewarn::parse_rfc3339("2026-01-05T06:00:00Z").expect("valid time");
    for i in 0..24 {
        let reading = format!(
            r#"{{"ts": {}, "vibration": 2.2, "kurtosis": 3.0, "temperature": 40.5,
                "motor_current": 35.0, "pressure": 4.3, "load": 0.75, "ambient": 20.0}}"#,
            start + i * 5_000
        );
        handle
            .push_json(
                "plant/site1/line1/pump-0001/telemetry",
                reading.into_bytes(),
            )
            .await?;
    }
    // A third minute of a pump whose bearing is failing, as one Arrow batch.
    let n = 12;
    let col = |v: f64| Arc::new(Float64Array::from(vec![v; n])) as ArrayRef;
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["site1"; n])),
            Arc::new(StringArray::from(vec!["line1"; n])),
            Arc::new(StringArray::from(vec!["pump-0001"; n])),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                (0..n as i64).map(|i| start + 120_000 + i * 5_000),
            )),
            col(6.5),  // vibration
            col(7.5),  // kurtosis
            col(52.0), // temperature
            col(35.5), // motor_current
            col(4.3),  // pressure
            col(0.75), // load
            col(20.0), // ambient
        ],
    )?;
    handle.push_batch("telemetry", batch).await?;
    // A malformed message is dead-lettered, not fatal.
    handle
        .push_json("plant/site1/line1/pump-0001/telemetry", b"{oops".to_vec())
        .await?;

    let stats = handle.finish().await?;
    drop(handle);
    printer.await?;
    println!(
        "readings {}, windows {}, transitions {}, alerts {}, rows {}, rejected {:?}",
        stats.readings_in,
        stats.windows_closed,
        stats.transitions_out,
        stats.alerts_out,
        stats.rows_out,
        stats.rejected
    );
    Ok(())
}
