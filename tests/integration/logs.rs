//! Structured logs (issue 19, item 3) through the built binary: `--log-format json`
//! and `[log] format` make every line `forewarn run` writes to stderr one JSON object
//! with the stable keys, the events carry their values as fields, the flag overrides
//! the file, and a bad value is refused naming the key.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::common::ckpt::Proc;

const BIN: &str = env!("CARGO_BIN_EXE_forewarn");

/// A query without models, reading `w/+`.
const PLAIN: &str = "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
  WITH (connector = 'mqtt', topic = 'w/+', topic_template = 'w/{device}');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
INSERT INTO out SELECT device, window_start, avg(v) AS v
FROM r GROUP BY tumble(interval '10 seconds'), device;
";

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fw-logs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `forewarn run` on the broker at `port` with the default log filter (no RUST_LOG),
/// `extra` arguments before and after the subcommand, stderr to `dir/log`.
fn engine(dir: &Path, port: u16, global: &[&str], extra: &[&str], log: &str) -> Proc {
    Proc(
        Command::new(BIN)
            .args(global)
            .args([
                "run",
                "--broker",
                &format!("tcp://127.0.0.1:{port}"),
                "--queries",
                "plain.sql",
            ])
            .args(extra)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(log)).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn wait_for(file: &Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains(what) || Instant::now() >= deadline {
            assert!(text.contains(what), "no {what:?} in:\n{text}");
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every line parsed, with the stable keys checked: `timestamp` (RFC 3339, UTC, between
/// `from` and `to`), `level`, `target`, `message`.
fn parse_lines(text: &str, from: i64, to: i64) -> Vec<Map<String, Value>> {
    assert!(!text.is_empty());
    text.lines()
        .map(|l| {
            let Ok(Value::Object(o)) = serde_json::from_str::<Value>(l) else {
                panic!("not a JSON object: {l}")
            };
            let ts = o["timestamp"].as_str().unwrap();
            // 2026-12-05T02:57:55.428335Z
            let b = ts.as_bytes();
            assert!(
                ts.len() == 27
                    && b[4] == b'-'
                    && b[10] == b'T'
                    && b[19] == b'.'
                    && ts.ends_with('Z'),
                "{ts}"
            );
            let ms = forewarn::parse_rfc3339(ts).unwrap();
            assert!(from <= ms && ms <= to, "{ts} not within the run");
            assert!(
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&o["level"].as_str().unwrap()),
                "{l}"
            );
            assert!(o["target"].as_str().unwrap().starts_with("forewarn"), "{l}");
            assert!(o["message"].is_string(), "{l}");
            o
        })
        .collect()
}

/// The event whose message starts with `message`.
fn event<'a>(events: &'a [Map<String, Value>], message: &str) -> &'a Map<String, Value> {
    events
        .iter()
        .find(|e| e["message"].as_str().unwrap().starts_with(message))
        .unwrap_or_else(|| panic!("no {message:?} event in {events:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line_with_the_events_fields() {
    let broker = forewarn::mqtt::EmbeddedBroker::start().unwrap();
    let port = broker.addr().port();
    let dir = tmp("json");
    std::fs::write(dir.join("plain.sql"), PLAIN).unwrap();
    let from = now_ms();
    let p = engine(
        &dir,
        port,
        &["--log-format", "json"],
        &["--client-id", "logs-json"],
        "run.log",
    );
    wait_for(&dir.join("run.log"), "source connected");
    // mqtt::start gives the broker 100 ms to install the subscriptions.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = forewarn::mqtt::BrokerUrl::new("127.0.0.1", port);
    let publisher = crate::common::connected_publisher(&url, "logs-publisher").await;
    let n = 20;
    for i in 0..n {
        let payload = format!(
            "{{\"ts\": {}, \"v\": 1.0}}",
            1_700_000_000_000i64 + i * 1000
        );
        publisher
            .publish("w/d1", payload.into_bytes(), false)
            .await
            .unwrap();
    }
    // One that is not JSON: a rejection and a dead letter.
    publisher
        .publish("w/d1", b"not json".to_vec(), false)
        .await
        .unwrap();
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(p.terminate().success());
    let to = now_ms();
    let text = std::fs::read_to_string(dir.join("run.log")).unwrap();
    let events = parse_lines(&text, from, to);

    let starting = event(&events, "starting");
    assert_eq!(starting["client_id"], "logs-json");
    assert_eq!(starting["broker"], format!("mqtt://127.0.0.1:{port}"));
    assert_eq!(starting["target"], "forewarn::cli::run");
    assert_eq!(starting["level"], "INFO");
    for (role, id) in [("source", "logs-json-in"), ("sink", "logs-json-out")] {
        let c = event(&events, &format!("{role} connected"));
        assert_eq!(c["role"], role);
        assert_eq!(c["client_id"], id);
        assert_eq!(c["broker"], format!("mqtt://127.0.0.1:{port}"));
        assert_eq!(c["session_present"], false);
        assert_eq!(c["target"], format!("forewarn_mqtt::{role}"));
    }
    // The closing summary is an event too, its counters fields.
    let stopped = event(&events, "stopped: ");
    assert_eq!(stopped["messages"], n + 1, "{stopped:?}");
    assert_eq!(stopped["readings"], n);
    assert_eq!(stopped["rejected"], 1);
    assert_eq!(stopped["dead_letters"], 1);
    assert_eq!(stopped["checkpoints"], 0);
    assert_eq!(stopped["redeliveries_dropped"], 0);
    assert!(stopped["message"].as_str().unwrap().starts_with(&format!(
        "stopped: messages {}, readings {n}, rejected 1 (",
        n + 1
    )));
    // A fatal error is an event as well.
    let out = Command::new(BIN)
        .args(["--log-format", "json", "run", "--queries", "plain.sql"])
        .current_dir(&dir)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    let events = parse_lines(&err, from, now_ms());
    assert_eq!(events.len(), 1, "{err}");
    assert_eq!(events[0]["level"], "ERROR");
    assert!(events[0]["message"]
        .as_str()
        .unwrap()
        .starts_with("error: no broker: pass --broker"));
    std::fs::remove_dir_all(&dir).ok();
}

/// `[log] format` in the file; `--log-format` over it; a bad value refused by
/// `config --check` and `run`, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_format_comes_from_the_file_unless_the_flag_says_otherwise() {
    let broker = forewarn::mqtt::EmbeddedBroker::start().unwrap();
    let port = broker.addr().port();
    let dir = tmp("file");
    std::fs::write(dir.join("plain.sql"), PLAIN).unwrap();
    std::fs::write(dir.join("json.toml"), "[log]\nformat = \"json\"\n").unwrap();
    let from = now_ms();
    let cases = [
        ("file.log", vec![], true),
        ("flag.log", vec!["--log-format", "text"], false),
    ];
    for (log, flag, json) in cases {
        let p = engine(
            &dir,
            port,
            &[],
            &[&["--config", "json.toml"][..], &flag].concat(),
            log,
        );
        let text = wait_for(&dir.join(log), "source connected");
        drop(p);
        if json {
            let events = parse_lines(&text, from, now_ms());
            assert_eq!(event(&events, "source connected")["role"], "source");
        } else {
            assert!(
                text.lines().all(|l| !l.starts_with('{')) && text.contains(" INFO "),
                "{text}"
            );
        }
    }

    std::fs::write(dir.join("bad.toml"), "[log]\nformat = \"xml\"\n").unwrap();
    for args in [
        &["config", "--check", "bad.toml"][..],
        &["run", "--config", "bad.toml"],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(&dir)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.starts_with("error: bad.toml: "), "{err}");
        assert!(
            err.contains("[log] format must be \"text\" or \"json\", got \"xml\""),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
