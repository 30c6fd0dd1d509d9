use forewarn::{Output, Pipeline};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // This repository's queries/ and models/ (copy them next to your crate).
    let pipeline = Pipeline::builder()
        .query_file("queries/plant_health.sql")
        .models_dir("models")
        .build()
        .await?;
    let (handle, mut outputs) = pipeline.start();
    // Read while pushing: the output channel is bounded.
    let printer = tokio::spawn(async move {
        while let Some(out) = outputs.recv().await {
            match out {
                // The shipped query's sink has a lifecycle: it sends state changes.
                Output::Transition { topic, message } => {
                    println!("{topic}: {} {:?}", message.device, message.transition)
                }
                Output::State { topic, state } => println!("{topic}: {:?}", state.state),
                // Result rows of a sink without a lifecycle: anomaly alerts (the query
                // selects a score or calls a model) and plain window rows.
                Output::Alert { topic, alert } => println!("{topic}: {:?}", alert.score),
                Output::Row { topic, row } => println!("{topic}: {:?}", row.columns),
                Output::DeadLetter { topic, letter } => println!("{topic}: {}", letter.reason),
                // Output may gain kinds in later versions.
                _ => {}
            }
        }
    });
    // A minute of a healthy pump, a reading every 5 s.
    let start = forewarn::parse_rfc3339("2026-01-05T06:00:00Z").expect("valid time");
    for i in 0..12 {
        let reading = format!(
            r#"{{"ts": {}, "vibration": 2.2, "kurtosis": 3.0, "temperature": 40.5,
                "motor_current": 35.0, "pressure": 4.3, "load": 0.75, "ambient": 20.0}}"#,
            start + i * 5_000
        );
        let topic = "plant/site1/line1/pump-0001/telemetry";
        handle.push_json(topic, reading.into_bytes()).await?;
    }
    handle.finish().await?; // closes every open window and stops
    drop(handle);
    printer.await?; // the output channel ends once the pipeline has stopped
    Ok(())
}
