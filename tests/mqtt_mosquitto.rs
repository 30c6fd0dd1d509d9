//! End to end through mosquitto, a broker that is not ours. The test starts its own
//! `mosquitto -p <free port>` on loopback; it skips (with a message) where mosquitto
//! is not installed. `.ci/run` installs it, so CI always runs it.

mod common;

use common::mosquitto::{mosquitto_binary, start_mosquitto};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_through_mosquitto() {
    let Some(bin) = mosquitto_binary() else {
        eprintln!(
            "SKIPPED: mosquitto is not installed (apt-get install mosquitto); .ci/run installs it"
        );
        return;
    };
    let (_broker, port) = start_mosquitto(&bin);
    let url = forewarn::mqtt::BrokerUrl::new("127.0.0.1", port);
    common::scenario_over_broker(&url, "mosquitto").await;
}
