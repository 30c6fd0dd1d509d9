//! End to end through mosquitto, a broker that is not ours. The test starts its own
//! `mosquitto -p <free port>` on loopback; it skips (with a message) where mosquitto
//! is not installed. `.ci/run` installs it, so CI always runs it.

use crate::common;

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

/// The kill -9 case the checkpoint alone does not cover: messages acknowledged right
/// after the last checkpoint, whose PUBACKs died with the process, come back (DUP)
/// after the restart. Given the previous run's ids (from that checkpoint), the source
/// acknowledges them again instead of delivering them a second time; the others are
/// delivered; afterwards the broker holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_of_what_the_last_run_acknowledged_is_not_delivered_twice() {
    use forewarn::mqtt::{BrokerUrl, MqttSource, SourceOptions};
    use std::time::Duration;
    let Some(bin) = mosquitto_binary() else {
        eprintln!("SKIPPED: mosquitto is not installed; .ci/run installs it");
        return;
    };
    let (_broker, port) = start_mosquitto(&bin);
    let url = BrokerUrl::new("127.0.0.1", port);
    let opts = |acked_before: Vec<u64>| {
        let mut o = SourceOptions::new(url.clone(), "redeliver-in", vec!["rd/#".into()]);
        o.clean_session = false;
        o.manual_acks = true;
        o.acked_before = acked_before;
        o
    };
    async fn take(
        rx: &mut tokio::sync::mpsc::Receiver<forewarn::mqtt::Incoming>,
        n: usize,
    ) -> Vec<forewarn::mqtt::Incoming> {
        let mut v = Vec::new();
        while v.len() < n {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(m)) => v.push(m),
                _ => break,
            }
        }
        v
    }
    // Run 1 takes five messages and stops before acknowledging any.
    let (mut s1, mut rx1) = MqttSource::start(opts(vec![]));
    s1.wait_connected(Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let publisher = common::connected_publisher(&url, "redeliver-plant").await;
    for i in 0..5 {
        publisher
            .publish(
                &format!("rd/{i}"),
                format!("{{\"i\": {i}}}").into_bytes(),
                false,
            )
            .await
            .unwrap();
    }
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    let first = take(&mut rx1, 5).await;
    assert_eq!(first.len(), 5);
    let ids: Vec<u64> = first.iter().map(|m| m.ack.as_ref().unwrap().id()).collect();
    s1.stop().await;
    drop(first);
    // Run 2 knows the first three were acknowledged at the last checkpoint.
    let (mut s2, mut rx2) = MqttSource::start(opts(ids[..3].to_vec()));
    s2.wait_connected(Duration::from_secs(10)).await.unwrap();
    let second = take(&mut rx2, 3).await;
    let topics: Vec<&str> = second.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(
        topics,
        ["rd/3", "rd/4"],
        "only the unacknowledged come back"
    );
    assert_eq!(s2.duplicates_dropped(), 3);
    for m in second {
        m.ack.unwrap().ack();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    s2.stop().await;
    // Run 3: the broker holds nothing any more.
    let (mut s3, mut rx3) = MqttSource::start(opts(vec![]));
    s3.wait_connected(Duration::from_secs(10)).await.unwrap();
    let third = take(&mut rx3, 1).await;
    assert!(
        third.is_empty(),
        "redelivered again: {:?}",
        third.iter().map(|m| &m.topic).collect::<Vec<_>>()
    );
    s3.stop().await;
}
