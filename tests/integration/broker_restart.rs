//! Delivery across a broker restart: the test stops its own mosquitto (SIGTERM, with
//! persistence so sessions survive) while the engine keeps producing alert transitions,
//! starts it again on the same port, and checks that every transition arrives, and that
//! de-duplicating by `event_id` leaves each exactly once (QoS 1 is at least once: a
//! publish the broker stored but had not acknowledged when it stopped is sent again).
//! Skips where mosquitto is not installed.

use crate::common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::Duration;

use common::mosquitto::{mosquitto_binary, start_mosquitto_conf};
use forewarn::mqtt::{self, BrokerUrl, MqttSource, SourceOptions};
use serde_json::{json, Value};

const DEVICES: i64 = 12;

/// 200 s of 12 devices; device k misbehaves from 20 + 10k s to 60 + 10k s, so each
/// device has one episode (raised, then cleared) and episodes keep starting and ending.
fn readings() -> Vec<(i64, String, Vec<u8>)> {
    let mut out = Vec::new();
    for s in 0..200i64 {
        for k in 0..DEVICES {
            let bad = (20 + 10 * k..60 + 10 * k).contains(&s);
            let (v, t) = if bad { (1.8, 58.0) } else { (1.0, 50.5) };
            let payload = json!({"ts": common::BASE + s * 1000, "v": v, "t": t});
            out.push((
                s,
                format!("test/d{k:02}/data"),
                payload.to_string().into_bytes(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_arrives_once_across_a_broker_restart() {
    let Some(bin) = mosquitto_binary() else {
        eprintln!("SKIPPED: mosquitto is not installed; .ci/run installs it");
        return;
    };
    let dir = std::env::temp_dir().join(format!("forewarn-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // mosquitto started as root drops to the `mosquitto` user before saving its database.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            // Unlimited queues: stock mosquitto drops QoS 1 messages beyond 1000 queued
            // for a slow subscriber, which a busy CI machine can make the engine.
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 0\n",
            dir.display()
        ),
    )
    .unwrap();
    let broker = start_mosquitto_conf(&bin, port, &conf).expect("mosquitto starts");
    let url = BrokerUrl::new("127.0.0.1", port);

    // The observer keeps its session (clean session off): the broker queues its alerts
    // while it is away and restores its subscription after the restart.
    let mut opts = SourceOptions::new(
        url.clone(),
        "restart-observer",
        vec!["forewarn/alerts/#".into()],
    );
    opts.clean_session = false;
    let (mut observer, mut alerts) = MqttSource::start(opts);
    observer
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();

    let pipeline = common::lifecycle_pipeline().await;
    let running = mqtt::start(
        pipeline,
        &url,
        &mqtt::RunOptions::new("engine-restart"),
        None,
    )
    .await
    .unwrap();
    let publisher = common::connected_publisher(&url, "plant-restart").await;
    let data = readings();
    let (first, second): (Vec<_>, Vec<_>) = data.into_iter().partition(|(s, _, _)| *s < 100);
    for (_, t, p) in &first {
        publisher.publish(t, p.clone(), false).await.unwrap();
    }
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    assert!(
        running
            .wait_for_messages(first.len() as u64, Duration::from_secs(60))
            .await,
        "the engine received {} of {} readings",
        running.handle().stats().messages_in,
        first.len()
    );
    publisher.stop().await;
    running.handle().flush().await.unwrap();
    let before = running.handle().stats().transitions_out;
    assert!(before > 0, "episodes were raised before the restart");

    // The broker goes away; the gateway keeps feeding readings (here straight into the
    // pipeline), so transitions are produced while nothing can be published.
    broker.terminate();
    for (_, t, p) in &second {
        running.handle().push_json(t, p.clone()).await.unwrap();
    }
    running.handle().flush().await.unwrap();
    let during = running.handle().stats().transitions_out;
    assert!(
        during > before,
        "transitions were produced while the broker was down"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let _broker = start_mosquitto_conf(&bin, port, &conf).expect("mosquitto restarts");
    assert_eq!(running.outbox_dropped(), 0, "the outbox held everything");
    let stats = running.stop().await.unwrap();
    let expected = stats.transitions_out as usize;
    assert_eq!(expected, 2 * DEVICES as usize, "{stats:?}");

    // event_id → (payload, copies received)
    let mut by_event: BTreeMap<String, (Value, usize)> = BTreeMap::new();
    fn receive(by_event: &mut BTreeMap<String, (Value, usize)>, v: Value) {
        let id = v["event_id"].as_str().unwrap().to_string();
        let e = by_event.entry(id).or_insert((v.clone(), 0));
        assert_eq!(e.0, v, "a redelivery carries the same message");
        e.1 += 1;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while by_event.len() < expected {
        match tokio::time::timeout_at(deadline, alerts.recv()).await {
            Ok(Some(m)) => receive(&mut by_event, serde_json::from_slice(&m.payload).unwrap()),
            _ => break,
        }
    }
    // Anything trailing behind is a redelivery, never a new transition.
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), alerts.recv()).await {
        receive(&mut by_event, serde_json::from_slice(&m.payload).unwrap());
    }
    observer.stop().await;
    assert_eq!(
        by_event.len(),
        expected,
        "distinct transitions received: {by_event:?}"
    );
    let copies: usize = by_event.values().map(|(_, n)| n).sum();
    println!(
        "{expected} transitions, {copies} messages received ({} redelivered)",
        copies - expected
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// With the broker gone and the outbox full, the pipeline keeps going: outputs beyond
/// the bound are shed (non-critical first), counted, and nothing blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_sheds_instead_of_blocking_the_pipeline() {
    let Some(bin) = mosquitto_binary() else {
        eprintln!("SKIPPED: mosquitto is not installed; .ci/run installs it");
        return;
    };
    let (broker, port) = common::mosquitto::start_mosquitto(&bin);
    let url = BrokerUrl::new("127.0.0.1", port);
    let pipeline = common::lifecycle_pipeline().await;
    let mut opts = mqtt::RunOptions::new("engine-shed");
    opts.max_outbox = 100;
    let running = mqtt::start(pipeline, &url, &opts, None).await.unwrap();
    broker.terminate();
    // 5,000 unreadable messages: 5,000 dead letters, far more than every queue between
    // the pipeline and the socket holds.
    let pushing = async {
        for i in 0..5_000 {
            running
                .handle()
                .push_json("test/d00/data", format!("not json {i}").into_bytes())
                .await
                .unwrap();
        }
        running.handle().flush().await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(30), pushing)
        .await
        .expect("the pipeline is not blocked by the missing broker");
    let stats = running.handle().stats();
    assert_eq!(stats.dead_letters_out, 5_000);
    // Everything beyond the outbox and the client's own queue was shed and counted.
    let dropped = running.outbox_dropped();
    assert!(dropped >= 5_000 - 100 - 1_024 - 1_024, "dropped {dropped}");
}

/// A broker restarted without persistence has lost the retained device states: once the
/// engine reconnects (the broker has no session for it), it publishes every device's
/// state again, so a new subscriber to `forewarn/state/#` sees the whole fleet at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_states_are_published_again_after_a_broker_lost_them() {
    let Some(bin) = mosquitto_binary() else {
        eprintln!("SKIPPED: mosquitto is not installed; .ci/run installs it");
        return;
    };
    let (broker, port) = common::mosquitto::start_mosquitto(&bin);
    let url = BrokerUrl::new("127.0.0.1", port);
    let running = mqtt::start(
        common::lifecycle_pipeline().await,
        &url,
        &mqtt::RunOptions::new("engine-retained"),
        None,
    )
    .await
    .unwrap();
    // Forty seconds of the twelve devices: every device has a state.
    for (_, t, p) in readings().into_iter().filter(|(s, _, _)| *s < 40) {
        running.handle().push_json(&t, p).await.unwrap();
    }
    running.handle().flush().await.unwrap();
    let states = |tag: &'static str| {
        let url = url.clone();
        async move {
            let (mut sub, mut rx) = MqttSource::start(SourceOptions::new(
                url,
                tag,
                vec!["forewarn/state/#".into()],
            ));
            sub.wait_connected(Duration::from_secs(10)).await.unwrap();
            let mut seen = std::collections::BTreeSet::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while seen.len() < DEVICES as usize {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(m)) => {
                        seen.insert(m.topic);
                    }
                    _ => break,
                }
            }
            sub.stop().await;
            seen
        }
    };
    assert_eq!(states("retained-before").await.len(), DEVICES as usize);

    // Restarted without persistence: no sessions, no retained messages.
    broker.terminate();
    let _broker = common::mosquitto::start_mosquitto_on(&bin, port).expect("mosquitto restarts");
    let after = states("retained-after").await;
    assert_eq!(
        after.len(),
        DEVICES as usize,
        "states after the restart: {after:?}"
    );
    running.stop().await.unwrap();
}
