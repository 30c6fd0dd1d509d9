//! End to end through the embedded rumqttd broker on a free loopback port.

use crate::common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_through_embedded_broker() {
    let broker = forewarn::mqtt::EmbeddedBroker::start().unwrap();
    assert!(broker.addr().ip().is_loopback());
    common::scenario_over_broker(&broker.url(), "rumqttd").await;
}

/// The backtest gives exactly what the live pipeline published on the same messages:
/// the scenario recorded as JSON lines (bad messages included) and replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_gives_the_live_results() {
    let broker = forewarn::mqtt::EmbeddedBroker::start().unwrap();
    let mut live = common::scenario_over_broker(&broker.url(), "replay-live").await;

    let dir = std::env::temp_dir().join(format!("forewarn-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("recorded.jsonl");
    let mut text = String::new();
    for (topic, payload) in common::scenario_messages() {
        let payload = String::from_utf8_lossy(&payload).to_string();
        text.push_str(&serde_json::json!({"topic": topic, "payload": payload}).to_string());
        text.push('\n');
    }
    std::fs::write(&data, text).unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    let stats = forewarn::replay::replay(common::pipeline().await, &data, None, move |o| {
        let (topic, payload) = o.to_message();
        sink.lock().unwrap().push((
            topic,
            serde_json::from_slice::<serde_json::Value>(&payload).unwrap(),
        ));
    })
    .await
    .unwrap();
    assert_eq!(stats.readings_in, 120);
    let mut replayed = got.lock().unwrap().clone();
    let key = |x: &(String, serde_json::Value)| format!("{} {}", x.0, x.1);
    live.sort_by_key(key);
    replayed.sort_by_key(key);
    assert_eq!(live.len(), 12 + 1 + 3);
    assert_eq!(replayed, live);
    std::fs::remove_dir_all(&dir).unwrap();
}
