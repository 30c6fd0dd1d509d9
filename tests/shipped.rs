//! The shipped queries and models over the simulated plant, through the library:
//! the demo's detection targets hold (at least 90 % of failing machines detected,
//! at most 5 % of healthy machines falsely alerted).

use std::path::Path;

use forewarn::{Output, Pipeline};
use forewarn_sim::{summarize, AlertEvent, Plant, PlantConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_queries_and_models_meet_the_demo_targets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pipeline = Pipeline::builder()
        .query_file(root.join("queries"))
        .models_dir(root.join("models"))
        .build()
        .await
        .unwrap();
    let (handle, mut rx) = pipeline.start();
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(o) = rx.recv().await {
            match o {
                Output::Alert { alert, .. } => events.push(AlertEvent {
                    device: alert.device.clone(),
                    window_end_ms: forewarn_core::parse_rfc3339(&alert.window_end).unwrap(),
                }),
                Output::DeadLetter { letter, .. } => {
                    panic!("the simulator's output was rejected: {letter:?}")
                }
            }
        }
        events
    });
    // A different seed from the one the models were trained on (1001) and the demo's (1).
    let mut plant = Plant::new(PlantConfig {
        seed: 7,
        ..Default::default()
    });
    let truth = plant.truth();
    let mut n = 0u64;
    while !plant.done() {
        for (topic, reading) in plant.step() {
            handle
                .push_json(&topic, serde_json::to_vec(&reading).unwrap())
                .await
                .unwrap();
            n += 1;
        }
    }
    let stats = handle.finish().await.unwrap();
    drop(handle);
    let events = collector.await.unwrap();
    assert_eq!(stats.readings_in, n);
    let s = summarize(&truth, &events);
    println!("{}", s.table());
    assert_eq!(s.machines, 240);
    assert!(
        s.detected * 10 >= s.failing * 9,
        "detected {} of {}",
        s.detected,
        s.failing
    );
    assert!(
        s.false_alert_machines * 20 <= s.healthy,
        "{} of {} healthy machines falsely alerted",
        s.false_alert_machines,
        s.healthy
    );
}
