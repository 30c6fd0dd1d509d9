//! MQTT 5 against mosquitto (which speaks it): the scenario gives exactly what it gives
//! over 3.1.1; a shared subscription (`$share/{group}/...`) splits the input between
//! two engines, every message taken by exactly one; an MQTT 5 subscriber that is not
//! ours (Python paho-mqtt) sees the outputs' content type, ids as user properties and
//! a sink's message expiry. Skips where mosquitto (or, for the last, paho) is missing.

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::mosquitto::{mosquitto_binary, start_mosquitto};
use forewarn::mqtt::{self, BrokerUrl, MqttVersion};
use forewarn::Output;
use serde_json::Value;

fn sorted(v: Vec<(String, Value)>) -> Vec<String> {
    let mut k: Vec<String> = v.into_iter().map(|(t, p)| format!("{t} {p}")).collect();
    k.sort();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_gives_exactly_the_outputs_of_3_1_1() {
    let Some(bin) = mosquitto_binary() else {
        eprintln!("SKIPPED: mosquitto is not installed; .ci/run installs it");
        return;
    };
    let (_broker, port) = start_mosquitto(&bin);
    let url = BrokerUrl::new("127.0.0.1", port);
    let v311 =
        common::scenario_over_broker_with(&url, "v311", MqttVersion::V311, common::SQL).await;
    let v5 = common::scenario_over_broker_with(&url, "v5", MqttVersion::V5, common::SQL).await;
    assert_eq!(v5.len(), common::expected_windows().len() + 1 + 3);
    assert_eq!(sorted(v5), sorted(v311));
}

/// Two engines on `$share/fleet/test/+/data`: each reading and each bad message is
/// taken by exactly one of them (the bad ones come back as dead letters naming them).
async fn shared_subscription_splits(version: MqttVersion) {
    let Some(bin) = mosquitto_binary() else {
        eprintln!("SKIPPED: mosquitto is not installed; .ci/run installs it");
        return;
    };
    let (_broker, port) = start_mosquitto(&bin);
    let url = BrokerUrl::new("127.0.0.1", port);
    let sql = "
CREATE TABLE readings (device TEXT, ts TIMESTAMP, v DOUBLE)
WITH (connector = 'mqtt', topic = '$share/fleet/test/+/data', topic_template = 'test/{device}/data');
CREATE TABLE o WITH (connector = 'mqtt', topic = 'out/{device}');
INSERT INTO o SELECT device, count(*) AS n FROM readings GROUP BY tumble(interval '1 hour'), device;";
    let mut engines = Vec::new();
    let mut taps = Vec::new();
    for e in ["a", "b"] {
        let p = forewarn::Pipeline::builder()
            .query_sql("shared.sql", sql)
            .build()
            .await
            .unwrap();
        let mut opts = mqtt::RunOptions::new(&format!("shared-{e}-{version:?}"));
        opts.version = version;
        let (tx, rx) = tokio::sync::mpsc::channel(10_000);
        engines.push(mqtt::start(p, &url, &opts, Some(tx)).await.unwrap());
        taps.push(rx);
    }
    let publisher = common::connected_publisher(&url, "shared-plant").await;
    let n = 400;
    for i in 0..n {
        let d = format!("d{}", i % 4);
        let reading = format!("{{\"ts\": {}, \"v\": {i}}}", common::BASE + i * 1000);
        publisher
            .publish(&format!("test/{d}/data"), reading.into_bytes(), false)
            .await
            .unwrap();
        let marker = format!("marker-{i}");
        publisher
            .publish(&format!("test/{d}/data"), marker.into_bytes(), false)
            .await
            .unwrap();
    }
    publisher.flush(Duration::from_secs(20)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while engines
        .iter()
        .map(|e| e.handle().stats().messages_in)
        .sum::<u64>()
        < 2 * n as u64
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut markers: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_engine = Vec::new();
    let mut readings = 0;
    for (running, mut tap) in engines.into_iter().zip(taps) {
        let stats = running.stop().await.unwrap();
        readings += stats.readings_in;
        per_engine.push(stats.messages_in);
        while let Ok(o) = tap.try_recv() {
            if let Output::DeadLetter { letter, .. } = o {
                *markers.entry(letter.excerpt.clone()).or_default() += 1;
            }
        }
    }
    eprintln!("{version:?}: messages per engine {per_engine:?}");
    assert_eq!(
        per_engine.iter().sum::<u64>(),
        2 * n as u64,
        "{per_engine:?}"
    );
    assert!(
        per_engine.iter().all(|&m| m > 0),
        "both engines took some: {per_engine:?}"
    );
    assert_eq!(readings, n as u64);
    let want: BTreeMap<String, usize> = (0..n).map(|i| (format!("marker-{i}"), 1)).collect();
    assert_eq!(markers, want);
    publisher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_splits_the_input_between_two_engines_mqtt5() {
    shared_subscription_splits(MqttVersion::V5).await;
}

/// mosquitto also shares subscriptions with 3.1.1 clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_splits_the_input_between_two_engines_mqtt311() {
    shared_subscription_splits(MqttVersion::V311).await;
}

/// A Python paho-mqtt subscriber speaking MQTT 5: prints one JSON line per message
/// with its properties, after a first line `subscribed`.
const PAHO_SUBSCRIBER: &str = r#"
import json, sys
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
port, want = int(sys.argv[1]), int(sys.argv[2])
got = []
def on_connect(c, u, f, rc, props=None):
    c.subscribe([("out/windows/#", 1), ("forewarn/alerts/#", 1), ("forewarn/deadletter/#", 1)])
def on_subscribe(c, u, mid, codes, props=None):
    print("subscribed", flush=True)
def on_message(c, u, m):
    p = m.properties
    print(json.dumps({
        "topic": m.topic,
        "payload": json.loads(m.payload),
        "content_type": getattr(p, "ContentType", None),
        "user": [list(x) for x in getattr(p, "UserProperty", [])],
        "expiry": getattr(p, "MessageExpiryInterval", None),
    }), flush=True)
    got.append(1)
    if len(got) >= want:
        c.disconnect()
c = mqtt.Client(client_id="paho-v5", protocol=mqtt.MQTTv5)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", port)
c.loop_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_subscriber_sees_content_type_ids_and_expiry() {
    let Some(bin) = mosquitto_binary() else {
        eprintln!("SKIPPED: mosquitto is not installed; .ci/run installs it");
        return;
    };
    let paho = Command::new("python3")
        .args(["-c", "import paho.mqtt.client, paho.mqtt.properties"])
        .status()
        .is_ok_and(|s| s.success());
    if !paho {
        eprintln!("SKIPPED: Python paho-mqtt is not installed; .ci/run installs it");
        return;
    }
    let (_broker, port) = start_mosquitto(&bin);
    let url = BrokerUrl::new("127.0.0.1", port);
    let want = common::expected_windows().len() + 1 + 3;
    let mut child = Command::new("python3")
        .args(["-c", PAHO_SUBSCRIBER, &port.to_string(), &want.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let _ = tx.send(l.unwrap_or_default());
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(10), lines.recv()).await;
    assert_eq!(first.ok().flatten().as_deref(), Some("subscribed"));

    // The alerts sink's outputs expire after an hour; the windows sink's never.
    let sql = common::SQL.replace(
        "topic = 'forewarn/alerts/{device}', format = 'json'",
        "topic = 'forewarn/alerts/{device}', format = 'json', message_expiry = '1 hour'",
    );
    assert_ne!(sql, common::SQL);
    let published = common::scenario_over_broker_with(&url, "paho", MqttVersion::V5, &sql).await;

    let mut seen: Vec<Value> = Vec::new();
    while seen.len() < want {
        match tokio::time::timeout(Duration::from_secs(10), lines.recv()).await {
            Ok(Some(l)) => seen.push(serde_json::from_str(&l).unwrap()),
            _ => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    // paho saw what our own subscriber saw, payloads unchanged.
    let theirs: Vec<(String, Value)> = seen
        .iter()
        .map(|m| {
            (
                m["topic"].as_str().unwrap().to_string(),
                m["payload"].clone(),
            )
        })
        .collect();
    assert_eq!(sorted(theirs), sorted(published));
    for m in &seen {
        let topic = m["topic"].as_str().unwrap();
        assert_eq!(m["content_type"], "application/json", "{m}");
        // Scored rows (alerts and the scored window rows) carry their alert id.
        match m["payload"]["alert_id"].as_str() {
            Some(id) => assert_eq!(m["user"], serde_json::json!([["alert_id", id]]), "{m}"),
            None => {
                assert!(topic.starts_with("forewarn/deadletter/"), "{m}");
                assert_eq!(m["user"], serde_json::json!([]), "{m}");
            }
        }
        if topic.starts_with("forewarn/alerts/") {
            // The broker counts the interval down while it holds the message.
            let left = m["expiry"].as_u64().unwrap();
            assert!((3590..=3600).contains(&left), "{m}");
        } else {
            assert_eq!(m["expiry"], Value::Null, "{m}");
        }
    }
    assert_eq!(
        seen.iter()
            .filter(|m| m["topic"].as_str().unwrap().starts_with("forewarn/alerts/"))
            .count(),
        1
    );
}

/// A publish the broker refuses (an ACL without write access) comes back with its
/// reason code under MQTT 5: counted (and logged); 3.1.1 cannot tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_is_counted_with_mqtt5() {
    use common::mosquitto::start_mosquitto_conf;
    use forewarn::mqtt::{MqttSink, QoS};
    use std::sync::atomic::Ordering;
    let Some(bin) = mosquitto_binary() else {
        eprintln!("SKIPPED: mosquitto is not installed; .ci/run installs it");
        return;
    };
    let dir = std::env::temp_dir().join(format!("forewarn-mqtt5-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = common::free_port();
    let acl = dir.join("acl");
    std::fs::write(&acl, "topic read ro/#\ntopic readwrite rw/#\n").unwrap();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nacl_file {}\n",
            acl.display()
        ),
    )
    .unwrap();
    let _broker = start_mosquitto_conf(&bin, port, &conf).expect("mosquitto starts");
    let url = BrokerUrl::new("127.0.0.1", port);
    for (version, want) in [(MqttVersion::V5, 1), (MqttVersion::V311, 0)] {
        let mut sink = MqttSink::start_with(
            url.clone(),
            &format!("acl-{version:?}"),
            QoS::AtLeastOnce,
            true,
            version,
        );
        sink.wait_connected(Duration::from_secs(10)).await.unwrap();
        sink.publish("ro/x", b"{}".to_vec(), false).await.unwrap();
        sink.publish("rw/x", b"{}".to_vec(), false).await.unwrap();
        sink.flush(Duration::from_secs(10)).await.unwrap();
        let st = sink.stats();
        assert_eq!(st.acked.load(Ordering::Relaxed), 2, "{version:?}");
        assert_eq!(st.refused.load(Ordering::Relaxed), want, "{version:?}");
        sink.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
