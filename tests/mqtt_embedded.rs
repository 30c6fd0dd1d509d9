//! End to end through the embedded rumqttd broker on a free loopback port.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_through_embedded_broker() {
    let broker = forewarn::mqtt::EmbeddedBroker::start().unwrap();
    assert!(broker.addr().ip().is_loopback());
    common::scenario_over_broker(&broker.url(), "rumqttd").await;
}
