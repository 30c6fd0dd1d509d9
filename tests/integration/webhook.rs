//! Webhook sinks (`connector = 'webhook'`): each alert transition is POSTed as JSON to
//! a small HTTP server in the test, with the bearer token, after retrying a server
//! error; the bodies are exactly the transitions the same rule publishes over MQTT.

use crate::common;

use std::time::Duration;

use forewarn::mqtt::{self, RunOptions};
use forewarn::Output;

/// [`common::LIFECYCLE_SQL`] with its alerts sent to `url` instead of MQTT, with the
/// token in `token_file` beside the query file.
fn webhook_sql(url: &str, token_file: &str) -> String {
    let sql = common::LIFECYCLE_SQL.replace(
        "connector = 'mqtt', topic = 'forewarn/alerts/{device}',",
        &format!(
            "connector = 'webhook', url = '{url}', bearer_token_file = '{token_file}', timeout = '5 seconds',"
        ),
    );
    assert_ne!(sql, common::LIFECYCLE_SQL);
    sql
}

/// The transitions the rule publishes over MQTT, computed in-process.
async fn expected_transitions() -> Vec<String> {
    let (h, mut rx) = common::lifecycle_pipeline().await.start();
    for (t, p) in common::lifecycle_messages() {
        h.push_json(&t, p).await.unwrap();
    }
    h.finish().await.unwrap();
    drop(h);
    let mut v = Vec::new();
    while let Some(o) = rx.recv().await {
        if let Output::Transition { message, .. } = o {
            v.push(String::from_utf8(message.to_json()).unwrap());
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_are_posted_with_the_token_after_a_retry() {
    let expected = expected_transitions().await;
    assert!(
        expected.len() >= 2,
        "d2 raises and clears: {}",
        expected.len()
    );

    // The first request fails with 503: it is retried (1 s later), not lost.
    let (url, mut requests) = common::http::server(vec![503, 200]).await;
    let dir = std::env::temp_dir().join(format!("forewarn-webhook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").unwrap();

    let broker = mqtt::EmbeddedBroker::start().unwrap();
    let query_file = dir.join("delivery.sql").display().to_string();
    let pipeline = forewarn::Pipeline::builder()
        .query_sql(&query_file, &webhook_sql(&url, "token"))
        .model(common::model())
        .build()
        .await
        .unwrap();
    assert_eq!(pipeline.sinks()[0].connector.connector(), "webhook");
    let (tap, mut tapped) = tokio::sync::mpsc::channel(10_000);
    let running = mqtt::start(pipeline, &broker.url(), &RunOptions::new("wh"), Some(tap))
        .await
        .unwrap();
    let publisher = common::connected_publisher(&broker.url(), "wh-pub").await;
    let messages = common::lifecycle_messages();
    let n = messages.len() as u64;
    for (t, p) in messages {
        publisher.publish(&t, p, false).await.unwrap();
    }
    assert!(running.wait_for_messages(n, Duration::from_secs(30)).await);
    let stats = running.stop().await.unwrap();
    assert_eq!(stats.messages_in, n);

    let mut bodies = Vec::new();
    let mut first = true;
    while let Ok(r) = requests.try_recv() {
        assert!(r.head.starts_with("post /hook http/1.1"), "{}", r.head);
        assert!(
            r.head.contains("\r\nauthorization: bearer s3cret\r\n"),
            "{}",
            r.head
        );
        assert!(
            r.head.contains("\r\ncontent-type: application/json\r\n"),
            "{}",
            r.head
        );
        assert!(
            r.head.contains("\r\nx-forewarn-topic: webhook/alerts\r\n"),
            "{}",
            r.head
        );
        if first {
            // The 503'd request, sent again.
            first = false;
            continue;
        }
        bodies.push(r.body);
    }
    assert_eq!(bodies, expected, "the posted transitions");
    // The tap saw them too, and nothing of the webhook sink went to MQTT instead.
    let mut tapped_transitions = 0;
    while let Ok(o) = tapped.try_recv() {
        if let Output::Transition { topic, .. } = &o {
            assert_eq!(topic, "webhook/alerts");
            tapped_transitions += 1;
        }
    }
    assert_eq!(tapped_transitions, expected.len());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A webhook whose token cannot be read is refused when the pipeline starts, naming the
/// sink, rather than answered 401 for every alert later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_token_is_refused_at_start() {
    let broker = mqtt::EmbeddedBroker::start().unwrap();
    let pipeline = forewarn::Pipeline::builder()
        .query_sql(
            "delivery.sql",
            &webhook_sql("http://127.0.0.1:9/hook", "no-such-forewarn-token"),
        )
        .model(common::model())
        .build()
        .await
        .unwrap();
    let e = mqtt::start(pipeline, &broker.url(), &RunOptions::new("wh2"), None)
        .await
        .err()
        .expect("refused");
    let msg = e.to_string();
    assert!(
        msg.contains("sink 'alerts'") && msg.contains("no-such-forewarn-token"),
        "{msg}"
    );
}
