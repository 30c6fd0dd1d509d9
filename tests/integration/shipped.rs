//! The shipped queries and models over the simulated plant, through the library:
//! the demo's detection targets hold (at least 90 % of failing machines warned before
//! functional failure, no healthy machine alerted, at most 3 alert messages for a
//! failure), and every file in `queries/` gives its golden results.

use std::path::Path;

use forewarn::{Output, Pipeline};
use forewarn_sim::{summarize, AlertEvent, Plant, PlantConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_queries_and_models_meet_the_demo_targets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (handle, mut rx) = shipped(&root.join("queries")).await.start();
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        let mut messages: std::collections::BTreeMap<String, usize> = Default::default();
        let mut states = std::collections::BTreeSet::new();
        let mut first_why: std::collections::BTreeMap<String, String> = Default::default();
        while let Some(o) = rx.recv().await {
            match o {
                Output::Transition { message, .. } => {
                    *messages.entry(message.device.clone()).or_default() += 1;
                    if let Some(e) = &message.explanation {
                        first_why
                            .entry(message.device.clone())
                            .or_insert_with(|| e.clone());
                    }
                    if message.transition != forewarn::TransitionKind::Cleared {
                        events.push(AlertEvent {
                            device: message.device.clone(),
                            window_end_ms: message.window_end.as_millis(),
                        });
                    }
                }
                Output::State { state, .. } => {
                    states.insert(state.device);
                }
                Output::Alert { alert, .. } => {
                    panic!("the shipped sink has a lifecycle, rows are not published: {alert:?}")
                }
                Output::DeadLetter { letter, .. } => {
                    panic!("the simulator's output was rejected: {letter:?}")
                }
                other => panic!("an output of a kind this test does not know: {other:?}"),
            }
        }
        (events, messages, states, first_why)
    });
    // A different seed from the one the models were trained on (1001) and the demo's (1).
    let mut plant = Plant::new(PlantConfig {
        seed: 7,
        ..Default::default()
    });
    let truth = plant.truth();
    let n = push_plant(&handle, &mut plant).await;
    let stats = handle.finish().await.unwrap();
    drop(handle);
    let (events, messages, states, first_why) = collector.await.unwrap();
    assert_eq!(stats.readings_in, n);
    let s = summarize(&truth, &events);
    println!("{}", s.table());
    let failing = truth.failing_devices();
    let per_failing: Vec<usize> = failing
        .iter()
        .map(|d| messages.get(*d).copied().unwrap_or(0))
        .collect();
    println!(
        "alert messages per failing machine: max {}, total {} for {} machines; {} messages in all; {} devices with a state",
        per_failing.iter().max().unwrap(),
        per_failing.iter().sum::<usize>(),
        failing.len(),
        messages.values().sum::<usize>(),
        states.len()
    );
    // What the first alert of each failing machine names as its main contributor.
    let mut why_by_mode: std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<String, usize>,
    > = Default::default();
    for m in truth.machines.iter().filter(|m| m.failure.is_some()) {
        let top = first_why
            .get(&m.device)
            .and_then(|w| w.split(' ').next())
            .unwrap_or("-")
            .to_string();
        let mode = format!("{:?}", m.failure.as_ref().unwrap().mode);
        *why_by_mode.entry(mode).or_default().entry(top).or_default() += 1;
    }
    println!("top contributor of the first alert, by failure mode: {why_by_mode:?}");
    // The explanation points at the physics: kurtosis for bearing wear, the temperature
    // rise for overheating (cavitation is mixed).
    let hits = why_by_mode["BearingWear"].get("kurtosis").unwrap_or(&0)
        + why_by_mode["Overheating"]
            .get("temperature_rise")
            .unwrap_or(&0);
    let total: usize = why_by_mode["BearingWear"].values().sum::<usize>()
        + why_by_mode["Overheating"].values().sum::<usize>();
    assert!(
        hits * 4 >= total * 3,
        "explanations matched {hits} of {total}"
    );
    assert!(
        per_failing.iter().all(|n| *n <= 3),
        "a failure produced more than 3 alert messages: {messages:?}"
    );
    assert_eq!(
        stats.transitions_out as usize,
        messages.values().sum::<usize>()
    );
    assert_eq!(s.machines, 240);
    // Predictive maintenance: warned before the machine fails, not only detected.
    assert!(
        s.detected_before_failure * 10 >= s.failing * 9,
        "{} of {} failing machines warned before functional failure",
        s.detected_before_failure,
        s.failing
    );
    assert_eq!(
        s.false_alert_machines, 0,
        "{} of {} healthy machines falsely alerted",
        s.false_alert_machines, s.healthy
    );
}

/// Golden results: every file in `queries/`, over a small simulated plant, gives exactly
/// the alerts recorded in `tests/golden/<file>.jsonl` (numbers to 1e-9 relative).
/// After an intended change, regenerate with `UPDATE_GOLDEN=1 cargo test --test integration shipped::`
/// and review the diff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_results_for_every_shipped_query() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(root.join("queries"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for file in files {
        let (handle, mut rx) = shipped(&file).await.start();
        let collector = tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(o) = rx.recv().await {
                let (topic, payload) = o.to_message();
                let payload: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                out.push(serde_json::json!({"topic": topic, "payload": payload}));
            }
            out
        });
        let mut plant = Plant::new(PlantConfig {
            seed: 11,
            machines: 24,
            duration_s: 2400,
            ..Default::default()
        });
        push_plant(&handle, &mut plant).await;
        handle.finish().await.unwrap();
        drop(handle);
        let mut got = collector.await.unwrap();
        let key = |v: &serde_json::Value| {
            format!(
                "{} {} {}",
                v["payload"]["window_start"], v["topic"], v["payload"]["query"]
            )
        };
        got.sort_by_key(key);
        let stem = file.file_stem().unwrap().to_string_lossy().to_string();
        let golden = root.join("tests/golden").join(format!("{stem}.jsonl"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
            let text: String = got.iter().map(|v| format!("{v}\n")).collect();
            std::fs::write(&golden, text).unwrap();
            continue;
        }
        let want: Vec<serde_json::Value> = std::fs::read_to_string(&golden)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", golden.display()))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(!want.is_empty(), "{} records no alerts", golden.display());
        assert_eq!(got.len(), want.len(), "{stem}: number of results");
        for (g, w) in got.iter().zip(&want) {
            assert!(same(g, w), "{stem}:\n   got {g}\n  want {w}");
        }
    }
}

/// A pipeline of the shipped query file(s) at `queries` with the shipped models.
async fn shipped(queries: &Path) -> Pipeline {
    Pipeline::builder()
        .query_file(queries)
        .models_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("models"))
        .build()
        .await
        .unwrap()
}

/// Pushes the whole simulated run; returns the number of readings.
async fn push_plant(handle: &forewarn::PipelineHandle, plant: &mut Plant) -> u64 {
    let mut n = 0;
    while !plant.done() {
        for (topic, reading) in plant.step() {
            handle
                .push_json(&topic, serde_json::to_vec(&reading).unwrap())
                .await
                .unwrap();
            n += 1;
        }
    }
    n
}

/// Equal JSON, numbers to 1e-9 relative.
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::*;
    match (a, b) {
        (Number(x), Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        (Object(x), Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w)),
        _ => a == b,
    }
}
