//! The command line at its edges (issue 16, "Trust at the edges"), through the built
//! binary: each error printed once; `--models` named in errors and optional for
//! `check`; `demo` from any directory; rejected readings reported and failing `replay`
//! and `train` beyond `--max-rejected`; broker URL schemes and host names that do not
//! resolve; default client ids, and the warning when two engines share one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::ckpt::Proc;

const BIN: &str = env!("CARGO_BIN_EXE_forewarn");

/// A fresh directory for one test.
fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fw-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `forewarn args` in `dir`: (exit code, stdout, stderr).
fn forewarn_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        // The defaults a user gets (the embedded broker's own log off).
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A query scoring with model `m`; `vv` is a misspelt column when `bad`.
fn query(bad: bool) -> String {
    format!(
        "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
  WITH (connector = 'mqtt', topic = 'w/+', topic_template = 'w/{{device}}');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{{device}}');
INSERT INTO out SELECT device, window_start, avg({}) AS v, anomaly_score('m', avg(v)) AS s
FROM r GROUP BY tumble(interval '10 seconds'), device;
",
        if bad { "vv" } else { "v" }
    )
}

/// A query without models, reading `w/+`.
const PLAIN: &str = "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
  WITH (connector = 'mqtt', topic = 'w/+', topic_template = 'w/{device}');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
INSERT INTO out SELECT device, window_start, avg(v) AS v
FROM r GROUP BY tumble(interval '10 seconds'), device;
";

/// `n` readings of device d1, one a second; the first `bad` have a text value.
fn history(n: usize, bad: usize) -> String {
    let mut s = String::from("device,ts,v\n");
    for i in 0..n {
        let v = if i < bad {
            "abc".to_string()
        } else {
            format!("{}", 1.0 + (i % 7) as f64 * 0.1)
        };
        s.push_str(&format!(
            "d1,{},{v}\n",
            1_700_000_000_000i64 + i as i64 * 1000
        ));
    }
    s
}

#[test]
fn every_subcommand_prints_a_query_error_once() {
    let dir = tmp("once");
    std::fs::write(dir.join("bad.sql"), query(true)).unwrap();
    std::fs::write(dir.join("d.csv"), history(30, 0)).unwrap();
    let located = "bad.sql:5:50: error: unknown column 'vv' in source 'r'; did you mean 'v'?\n    5 | INSERT INTO out SELECT device, window_start, avg(vv) AS v, anomaly_score('m', avg(v)) AS s\n      |                                                  ^^\n";
    let cases: &[&[&str]] = &[
        &["check", "bad.sql"],
        &[
            "run",
            "--broker",
            "mqtt://127.0.0.1:1",
            "--queries",
            "bad.sql",
        ],
        &["replay", "--data", "d.csv", "--queries", "bad.sql"],
        &[
            "train",
            "--queries",
            "bad.sql",
            "--data",
            "d.csv",
            "--out",
            "m.json",
        ],
        &["eval", "--queries", "bad.sql", "--data", "d.csv"],
        &["demo", "--queries", "bad.sql", "--duration", "1"],
    ];
    for args in cases {
        let (code, _, err) = forewarn_in(&dir, args);
        assert_eq!(code, 1, "{args:?}");
        // The diagnostic is the whole of stderr, once, with no "error: " in front.
        assert_eq!(err, located, "{args:?}");
    }
    // Other errors: one "error: " prefix, each cause once.
    let (code, _, err) = forewarn_in(
        &dir,
        &["replay", "--data", "d.csv", "--queries", "nope.sql"],
    );
    assert_eq!(
        (code, err.as_str()),
        (2, "error: --queries nope.sql: no such file or directory\n")
    );
    for cmd in ["train", "eval"] {
        let (code, _, err) = forewarn_in(
            &dir,
            &[
                cmd,
                "--queries",
                "bad.sql",
                "--data",
                "nope.csv",
                "--out",
                "m.json",
            ][..if cmd == "train" { 7 } else { 5 }],
        );
        assert_eq!(
            (code, err.as_str()),
            (2, "error: --data nope.csv: no such file or directory\n")
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn models_flag_is_named_and_check_works_without_models() {
    let dir = tmp("models");
    std::fs::write(dir.join("q.sql"), query(false)).unwrap();
    std::fs::write(dir.join("d.csv"), history(30, 0)).unwrap();
    // No ./models: check plans everything and says which models it could not check.
    let (code, out, err) = forewarn_in(&dir, &["check", "q.sql"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "ok: 1 queries (q)\n");
    assert_eq!(err, "note: not loaded, so the calls to them were not checked against them: m (no models: ./models does not exist; pass --models DIR)\n");
    // A directory is checked as one pipeline; query files below it are named as not
    // checked.
    let sub = dir.join("lines");
    std::fs::create_dir_all(sub.join("line2")).unwrap();
    std::fs::write(sub.join("q.sql"), query(false)).unwrap();
    std::fs::write(sub.join("line2").join("q.sql"), query(false)).unwrap();
    let (code, out, err) = forewarn_in(&dir, &["check", "lines"]);
    assert_eq!((code, out.as_str()), (0, "ok: 1 queries (q)\n"), "{err}");
    assert!(
        err.starts_with("note: not checked, in subdirectories of lines (each directory is a pipeline of its own; check it by name): lines/line2\n"),
        "{err}"
    );
    // ... still finding everything else.
    std::fs::write(dir.join("bad.sql"), query(true)).unwrap();
    let (code, _, err) = forewarn_in(&dir, &["check", "bad.sql"]);
    assert!(
        code == 1 && err.starts_with("bad.sql:5:50: error: unknown column 'vv'"),
        "{err}"
    );
    // A keyed call (key first) gets a keyed stand-in; a text feature is still refused.
    std::fs::write(
        dir.join("keyed.sql"),
        query(false).replace(
            "anomaly_score('m', avg(v))",
            "anomaly_score('k', device, avg(v))",
        ),
    )
    .unwrap();
    let (code, _, err) = forewarn_in(&dir, &["check", "keyed.sql"]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(
        dir.join("text.sql"),
        query(false).replace(
            "anomaly_score('m', avg(v))",
            "anomaly_score('t', avg(v), device)",
        ),
    )
    .unwrap();
    let (code, _, err) = forewarn_in(&dir, &["check", "text.sql"]);
    assert!(
        code == 1 && err.contains("features must be numeric"),
        "{err}"
    );
    // A directory given but missing names the flag and the path.
    let (code, _, err) = forewarn_in(&dir, &["check", "q.sql", "--models", "nodir"]);
    assert_eq!(
        (code, err.as_str()),
        (2, "error: --models nodir: no such directory\n")
    );
    // Commands that score need the models: the default is named with the way out.
    let want = "error: --models models: no such directory (default: ./models; pass --models DIR); the queries score with m\n";
    let (code, _, err) = forewarn_in(&dir, &["replay", "--data", "d.csv", "--queries", "q.sql"]);
    assert_eq!((code, err.as_str()), (2, want));
    let (code, _, err) = forewarn_in(
        &dir,
        &[
            "run",
            "--broker",
            "mqtt://127.0.0.1:1",
            "--queries",
            "q.sql",
        ],
    );
    assert_eq!((code, err.as_str()), (2, want));
    let (code, _, err) = forewarn_in(&dir, &["eval", "--queries", "q.sql", "--data", "d.csv"]);
    assert_eq!(
        (code, err.as_str()),
        (
            2,
            "error: --models models: no such directory (default: ./models; pass --models DIR)\n"
        )
    );
    // With a models directory that lacks the model, check reports it at the call.
    std::fs::create_dir_all(dir.join("models")).unwrap();
    let (code, _, err) = forewarn_in(&dir, &["check", "q.sql"]);
    assert!(
        code == 1
            && err.contains("unknown model 'm' in anomaly_score (loaded models: none)")
            && err.contains("note: the models directory models holds no model files (*.json): train one with `forewarn train --queries FILE --model NAME --out models/NAME.json ...`"),
        "{err}"
    );
    // Queries that call no model need no models directory.
    std::fs::remove_dir_all(dir.join("models")).unwrap();
    std::fs::write(dir.join("plain.sql"), PLAIN).unwrap();
    let (code, _, err) = forewarn_in(
        &dir,
        &[
            "replay",
            "--data",
            "d.csv",
            "--queries",
            "plain.sql",
            "--out",
            "o.jsonl",
        ],
    );
    assert_eq!(code, 0, "{err}");
    // Each line is the payload exactly as the sink publishes it (the alert format's
    // field order, not re-sorted by a parse) and its topic.
    let out = std::fs::read_to_string(dir.join("o.jsonl")).unwrap();
    assert!(out.lines().count() > 0, "{err}");
    for line in out.lines() {
        assert!(
            line.starts_with(r#"{"payload":{"schema_version":1,"alert_id":""#),
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v.as_object().map(|o| o.len()), Some(2), "{line}");
        assert!(v["topic"].is_string(), "{line}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The demo's queries and models are built in: it runs from a directory without them.
#[test]
fn demo_runs_from_any_directory() {
    let dir = tmp("demo");
    let (code, out, err) = forewarn_in(
        &dir,
        &[
            "demo",
            "--duration",
            "2",
            "--machines",
            "6",
            "--sim-seconds",
            "300",
            "--quiet",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    // Every shipped model is built in.
    let mut shipped: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("models"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().to_string())
            .collect();
    shipped.sort();
    assert!(
        out.contains(&format!(
            "queries: plant_health_1, plant_health_2, plant_health_3   models: {}",
            shipped.join(", ")
        )),
        "{out}"
    );
    assert!(
        out.contains("Detection against the simulator's ground truth"),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn rejected_readings_are_reported_and_fail_beyond_the_limit() {
    let dir = tmp("rejected");
    std::fs::write(dir.join("q.sql"), query(false)).unwrap();
    std::fs::write(dir.join("plain.sql"), PLAIN).unwrap();
    // 100 readings, 10 of them with a text value: 10 % rejected.
    std::fs::write(dir.join("d.csv"), history(100, 10)).unwrap();
    let (code, _, err) = forewarn_in(
        &dir,
        &[
            "replay",
            "--data",
            "d.csv",
            "--queries",
            "plain.sql",
            "--out",
            "o.jsonl",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(", readings 90, rejected 10 (wrong_type 10), "),
        "{err}"
    );
    assert!(err.ends_with("error: 10 of 100 readings (10.0 %) were rejected (wrong_type 10); see --dead-letters / --max-rejected\n"), "{err}");
    let (code, _, err) = forewarn_in(
        &dir,
        &[
            "replay",
            "--data",
            "d.csv",
            "--queries",
            "plain.sql",
            "--out",
            "o.jsonl",
            "--max-rejected",
            "10",
        ],
    );
    assert_eq!(code, 0, "{err}");
    // train: the same limit, before a model is written.
    let (code, _, err) = forewarn_in(
        &dir,
        &[
            "train",
            "--queries",
            "q.sql",
            "--data",
            "d.csv",
            "--kind",
            "robust",
            "--out",
            "m.json",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "replayed 100 readings of d.csv into 9 feature rows; 10 rejected (wrong_type 10)\n"
        ),
        "{err}"
    );
    assert!(err.ends_with("error: 10 of 100 readings (10.0 %) were rejected (wrong_type 10); see --dead-letters / --max-rejected\n"), "{err}");
    assert!(!dir.join("m.json").exists());
    // Allowed, with the rejected readings written out.
    std::fs::write(dir.join("d.csv"), history(200, 10)).unwrap();
    let (code, _, err) = forewarn_in(
        &dir,
        &[
            "train",
            "--queries",
            "q.sql",
            "--data",
            "d.csv",
            "--kind",
            "robust",
            "--out",
            "m.json",
            "--max-rejected",
            "5",
            "--dead-letters",
            "dead.jsonl",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let dead = std::fs::read_to_string(dir.join("dead.jsonl")).unwrap();
    assert_eq!(dead.lines().count(), 10);
    assert!(
        dead.lines()
            .all(|l| l.contains("\"reason\":\"wrong_type\"")),
        "{dead}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn broker_host_names_that_do_not_resolve_fail_at_start() {
    let dir = tmp("dns");
    std::fs::write(dir.join("plain.sql"), PLAIN).unwrap();
    let started = Instant::now();
    let (code, _, err) = forewarn_in(
        &dir,
        &[
            "run",
            "--broker",
            "tcp://no-such-broker.invalid:1883",
            "--queries",
            "plain.sql",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("error: cannot resolve the broker's host name 'no-such-broker.invalid': ")
            && err.ends_with("(broker mqtt://no-such-broker.invalid:1883); pass --retry-dns (or retry_dns = true) to wait for it\n"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // With --retry-dns it keeps trying (and says so) until stopped.
    let log = dir.join("retry.log");
    let p = Proc(
        Command::new(BIN)
            .args([
                "run",
                "--broker",
                "mqtt://no-such-broker.invalid",
                "--queries",
                "plain.sql",
                "--retry-dns",
            ])
            .current_dir(&dir)
            .env("RUST_LOG", "warn")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(2500));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("retrying (--retry-dns)"), "{text}");
    drop(p);
    for (url, why) in [
        ("http://127.0.0.1", "unknown scheme 'http://'"),
        ("127.0.0.1:1883", "no scheme"),
    ] {
        let (code, _, err) = forewarn_in(&dir, &["run", "--broker", url, "--queries", "plain.sql"]);
        assert!(
            code == 2
                && err.contains(why)
                && err.contains("tcp:// is the same, mqtts://, ssl:// and tls:// are TLS"),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `forewarn run` in `dir` on the broker at `port`, logging to `dir/log`.
fn engine(dir: &Path, port: u16, queries: &str, extra: &[&str], log: &str) -> Proc {
    Proc(
        Command::new(BIN)
            .args([
                "run",
                "--broker",
                &format!("tcp://127.0.0.1:{port}"),
                "--queries",
                queries,
            ])
            .args(extra)
            .current_dir(dir)
            .env("RUST_LOG", "warn,forewarn=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(log)).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn wait_for_log(file: &Path, what: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains(what) || Instant::now() >= deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const CLASH: &str = "probably another client is connected with the same client id";

/// Two engines with the same queries on one host have the same default client id: the
/// broker keeps dropping one for the other, and the log says why. Engines with other
/// queries get other ids and both receive every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_default_per_query_set_and_a_clash_is_named() {
    let broker = forewarn::mqtt::EmbeddedBroker::start().unwrap();
    let port = broker.addr().port();
    let dir = tmp("clientid");
    std::fs::write(dir.join("a.sql"), PLAIN).unwrap();
    std::fs::write(
        dir.join("b.sql"),
        PLAIN.replace("avg(v) AS v", "max(v) AS v"),
    )
    .unwrap();

    // The same queries: the same id, a fight, a warning.
    let one = engine(&dir, port, "a.sql", &[], "one.log");
    let two = engine(&dir, port, "a.sql", &[], "two.log");
    let mut warned = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !warned && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        warned = ["one.log", "two.log"]
            .iter()
            .any(|l| std::fs::read_to_string(dir.join(l)).is_ok_and(|t| t.contains(CLASH)));
    }
    let logs =
        ["one.log", "two.log"].map(|l| std::fs::read_to_string(dir.join(l)).unwrap_or_default());
    assert!(warned, "no clash warning:\n{}\n{}", logs[0], logs[1]);
    let id = |log: &str| {
        log.split("client_id=")
            .nth(1)
            .map(|s| s.split_whitespace().next().unwrap().to_string())
    };
    assert_eq!(id(&logs[0]), id(&logs[1]), "{}", logs[0]);
    drop((one, two));

    // Other queries: other ids; both engines get every message.
    let a = engine(&dir, port, "a.sql", &[], "a.log");
    let b = engine(&dir, port, "b.sql", &[], "b.log");
    for l in ["a.log", "b.log"] {
        let t = wait_for_log(&dir.join(l), "source connected", Duration::from_secs(20));
        assert!(t.contains("source connected"), "{t}");
    }
    // mqtt::start gives the broker 100 ms to install the subscriptions.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = forewarn::mqtt::BrokerUrl::new("127.0.0.1", port);
    let publisher = crate::common::connected_publisher(&url, "cli-edges-publisher").await;
    let n = 200;
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
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut ids = Vec::new();
    for (p, l) in [(a, "a.log"), (b, "b.log")] {
        p.terminate();
        let t = std::fs::read_to_string(dir.join(l)).unwrap();
        assert!(t.contains(&format!("stopped: messages {n}, ")), "{t}");
        assert!(!t.contains(CLASH), "{t}");
        ids.push(id(&t));
    }
    assert_ne!(ids[0], ids[1]);
    assert!(
        ids[0].as_deref().unwrap().starts_with("forewarn-"),
        "{ids:?}"
    );

    // With checkpoints the id is kept in the checkpoint directory and reused.
    let ck = dir.join("ck").display().to_string();
    let first = engine(&dir, port, "a.sql", &["--checkpoint-dir", &ck], "ck1.log");
    let t = wait_for_log(
        &dir.join("ck1.log"),
        "source connected",
        Duration::from_secs(20),
    );
    first.terminate();
    let kept = std::fs::read_to_string(dir.join("ck/client-id")).unwrap();
    assert_eq!(id(&t).as_deref(), Some(kept.trim()), "{t}");
    // The queries change: the id does not (the broker keeps the session under it).
    std::fs::write(
        dir.join("a.sql"),
        PLAIN.replace("avg(v) AS v", "avg(v) AS mean_v"),
    )
    .unwrap();
    let second = engine(&dir, port, "a.sql", &["--checkpoint-dir", &ck], "ck2.log");
    let t = wait_for_log(
        &dir.join("ck2.log"),
        "source connected",
        Duration::from_secs(20),
    );
    second.terminate();
    assert_eq!(id(&t).as_deref(), Some(kept.trim()), "{t}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The same through the library, on the embedded broker and on mosquitto (when
/// installed): two sources with one client id count the connections the broker keeps
/// closing; two with their own ids count none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_connections_are_counted_on_either_broker() {
    use forewarn::mqtt::{BrokerUrl, MqttSource, SourceOptions};
    let embedded = forewarn::mqtt::EmbeddedBroker::start().unwrap();
    let mut brokers = vec![("rumqttd", embedded.url(), None)];
    if let Some(bin) = crate::common::mosquitto::mosquitto_binary() {
        let (m, port) = crate::common::mosquitto::start_mosquitto(&bin);
        brokers.push(("mosquitto", BrokerUrl::new("127.0.0.1", port), Some(m)));
    } else {
        eprintln!("mosquitto not installed: the embedded broker only");
    }
    for (name, url, _keep) in &brokers {
        let source =
            |id: &str| MqttSource::start(SourceOptions::new(url.clone(), id, vec!["x/#".into()]));
        let (a, _ra) = source("edge-same");
        let (b, _rb) = source("edge-same");
        let (c, _rc) = source("edge-c");
        let (d, _rd) = source("edge-d");
        let deadline = Instant::now() + Duration::from_secs(15);
        while a.short_connections() + b.short_connections() < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (same, own) = (
            a.short_connections() + b.short_connections(),
            c.short_connections() + d.short_connections(),
        );
        assert!(same >= 3, "{name}: {same} short connections with one id");
        assert_eq!(own, 0, "{name}: distinct ids");
        for s in [a, b, c, d] {
            s.stop().await;
        }
    }
}

/// `forewarn config`: the printed defaults are a file `forewarn config --check` and
/// `forewarn run --config` take; a key of the flat layout says where it moved; a typo
/// names the key and its place, and `run` refuses it before connecting anywhere.
/// A backtest gives what the live engine would only under the live engine's settings:
/// `replay --config` applies the `[engine]` section (here the topic prefix and the
/// limit on devices), and the queries named in the file.
#[test]
fn replay_takes_the_live_engines_settings_from_its_config_file() {
    let dir = tmp("replay-config");
    std::fs::create_dir_all(dir.join("live")).unwrap();
    std::fs::write(dir.join("live/plain.sql"), PLAIN).unwrap();
    // Device d1 for 30 s, and one reading of d2 after its first.
    let mut lines: Vec<String> = history(30, 0).lines().map(String::from).collect();
    lines.insert(2, "d2,1700000001500,2.0".into());
    let data = lines.join("\n") + "\n";
    std::fs::write(dir.join("d.csv"), data).unwrap();
    std::fs::write(
        dir.join("live.toml"),
        "queries = \"live\"\n[engine]\ntopic_prefix = \"plant7\"\nmax_devices = 1\n",
    )
    .unwrap();
    let replay = |extra: &[&str]| {
        let mut args = vec![
            "replay",
            "--data",
            "d.csv",
            "--dead-letters",
            "--out",
            "o.jsonl",
        ];
        args.extend_from_slice(extra);
        let (code, _, err) = forewarn_in(&dir, &args);
        (
            code,
            err,
            std::fs::read_to_string(dir.join("o.jsonl")).unwrap_or_default(),
        )
    };
    let (code, err, out) = replay(&["--config", "live.toml", "--max-rejected", "100"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("rejected 1 (too_many_devices 1)"), "{err}");
    let dead: Vec<&str> = out.lines().filter(|l| l.contains("deadletter")).collect();
    assert_eq!(dead.len(), 1, "{out}");
    assert!(dead[0].contains("\"topic\":\"plant7/deadletter/"), "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("\"topic\":\"o/d1\""))
            .count(),
        3,
        "{out}"
    );
    // Without it: the defaults, and the queries named on the command line.
    let (code, err, out) = replay(&["--queries", "live/plain.sql"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("rejected 0"), "{err}");
    assert!(
        !out.contains("deadletter") && out.contains("\"topic\":\"o/d2\""),
        "{out}"
    );
    // A setting the engine refuses is named, with the file.
    std::fs::write(dir.join("bad.toml"), "[engine]\nmax_devices = 0\n").unwrap();
    let (code, err, _) = replay(&["--config", "bad.toml", "--queries", "live/plain.sql"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.toml") && err.contains("max_devices = 0"),
        "{err}"
    );
    // A missing file, or missing queries, is named where it was given.
    let (code, err, _) = replay(&["--config", "nope.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--config nope.toml: no such file or directory"),
        "{err}"
    );
    std::fs::write(dir.join("typo.toml"), "queries = \"liv\"\n").unwrap();
    let (code, err, _) = replay(&["--config", "typo.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("queries in typo.toml: liv: no such file or directory"),
        "{err}"
    );
    std::fs::write(
        dir.join("typo2.toml"),
        "queries = \"live\"\nmodels = \"modls\"\n",
    )
    .unwrap();
    let (code, err, _) = replay(&["--config", "typo2.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("models in typo2.toml: modls: no such directory"),
        "{err}"
    );
    let (code, err, _) = replay(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no queries: pass --queries FILE_OR_DIR"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The lines of [`history`]`(n, 0)` with an `anomaly` column, all healthy.
fn labelled(n: usize) -> Vec<String> {
    let mut lines: Vec<String> = history(n, 0).lines().map(|l| format!("{l},0")).collect();
    lines[0] = "device,ts,v,anomaly".into();
    lines
}

/// `train` and `eval --data` replay history with the live engine's `[engine]` settings
/// when given its config file: a device beyond `max_devices` is refused there as live.
#[test]
fn train_and_eval_take_the_live_engines_settings_from_its_config_file() {
    let dir = tmp("train-config");
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(dir.join("q.sql"), query(false)).unwrap();
    // Device d1 for 150 s, and one reading of d2 after its first; labelled, all healthy.
    let mut lines = labelled(150);
    lines.insert(2, "d2,1700000001500,2.0,0".into());
    std::fs::write(dir.join("d.csv"), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("live.toml"), "[engine]\nmax_devices = 1\n").unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--queries",
            "q.sql",
            "--data",
            "d.csv",
            "--kind",
            "robust",
            "--out",
            "models/m.json",
            "--max-rejected",
            "100",
            "--dead-letters",
            "dead.jsonl",
        ];
        args.extend_from_slice(extra);
        let (code, _, err) = forewarn_in(&dir, &args);
        let dead = std::fs::read_to_string(dir.join("dead.jsonl")).unwrap_or_default();
        (code, err, dead)
    };
    let (code, err, dead) = train(&["--config", "live.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("1 rejected (too_many_devices 1)"), "{err}");
    assert_eq!(dead.lines().count(), 1, "{dead}");
    assert!(dead.contains("\"reason\":\"too_many_devices\""), "{dead}");
    // Without it, d2 is a second device like any other.
    let (code, err, dead) = train(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("rejected ("), "{err}");
    assert_eq!(dead, "");
    // eval --data: the same refusal, noted.
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--queries", "q.sql", "--data", "d.csv"];
        args.extend_from_slice(extra);
        forewarn_in(&dir, &args)
    };
    let (code, _, err) = eval(&["--config", "live.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("note: ") && err.contains("too_many_devices 1"),
        "{err}"
    );
    let (code, _, err) = eval(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("too_many_devices"), "{err}");
    // A setting the engine refuses is named, with the file; a missing file by its flag.
    std::fs::write(dir.join("bad.toml"), "[engine]\nmax_devices = 0\n").unwrap();
    let (code, err, _) = train(&["--config", "bad.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.toml") && err.contains("max_devices = 0"),
        "{err}"
    );
    let (code, _, err) = eval(&["--config", "nope.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--config nope.toml: no such file or directory"),
        "{err}"
    );
    // A benchmark protocol runs on the defaults: the file is refused there.
    let (code, _, err) = forewarn_in(
        &dir,
        &[
            "eval",
            "--queries",
            "q.sql",
            "--protocol",
            "nab",
            ".",
            "--config",
            "live.toml",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// What would give figures no one could trust is refused before any is printed: a
/// history file without a declared column, a share of rejected readings over the
/// limit in `eval`, a model file `train` could not write. `eval` sorts on request and
/// scores a per-device model as `replay` does.
#[test]
fn backtests_refuse_what_would_silently_give_wrong_figures() {
    let dir = tmp("silent");
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(dir.join("q.sql"), query(false)).unwrap();
    std::fs::write(dir.join("p.sql"), PLAIN).unwrap();
    // `train --kind robust` of d.csv through `queries` into `out`, with `extra` flags.
    let train = |queries: &str, out: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--queries",
            queries,
            "--data",
            "d.csv",
            "--kind",
            "robust",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        forewarn_in(&dir, &args)
    };
    // `replay` of `data` through p.sql, with `extra` flags.
    let replay = |data: &str, extra: &[&str]| {
        let mut args = vec!["replay", "--queries", "p.sql", "--data", data];
        args.extend_from_slice(extra);
        forewarn_in(&dir, &args)
    };
    let lines = labelled(150);
    std::fs::write(dir.join("d.csv"), lines.join("\n") + "\n").unwrap();
    // A column the source declares is missing (here: in another case) in the file.
    let renamed = lines.join("\n").replacen("device,ts,v,", "device,ts,V,", 1) + "\n";
    std::fs::write(dir.join("renamed.csv"), renamed).unwrap();
    for args in [
        &["replay", "--queries", "p.sql", "--data", "renamed.csv"][..],
        &[
            "train",
            "--queries",
            "q.sql",
            "--data",
            "renamed.csv",
            "--out",
            "models/m.json",
        ],
    ] {
        let (code, _, err) = forewarn_in(&dir, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("renamed.csv: no column 'v' declared by source 'r' (the file's columns: 'device', 'ts', 'V', 'anomaly')")
                && err.contains("'V' differs from 'v' only in case"),
            "{err}"
        );
    }
    // The file refused, an earlier backtest's output is still there.
    std::fs::write(dir.join("earlier.jsonl"), "kept\n").unwrap();
    let (code, _, err) = replay("renamed.csv", &["--out", "earlier.jsonl"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("earlier.jsonl")).unwrap(),
        "kept\n"
    );
    // JSON lines whose readings all lack a declared field are refused alike.
    let json: String = (0..20)
        .map(|i| {
            format!(
                "{{\"device\": \"d1\", \"ts\": {}, \"V\": 1.5}}\n",
                1_700_000_000_000u64 + i * 1000
            )
        })
        .collect();
    std::fs::write(dir.join("renamed.jsonl"), &json).unwrap();
    let (code, _, err) = replay("renamed.jsonl", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("renamed.jsonl: no column 'v' declared by source 'r' (the file's columns: 'V', 'device', 'ts')")
            && err.contains("'V' differs from 'v' only in case"),
        "{err}"
    );
    // A field some reading has is enough: the others have it NULL, as live.
    std::fs::write(dir.join("some.jsonl"), json.replacen("\"V\"", "\"v\"", 1)).unwrap();
    let (code, out, err) = replay("some.jsonl", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"v\":1.5"), "{out}");
    // History out of time order stops the replay: --out keeps what it held, and no
    // window closed early by the stop is written anywhere.
    let mut unsorted = lines.clone();
    unsorted.swap(1, 40);
    std::fs::write(dir.join("unsorted.csv"), unsorted.join("\n") + "\n").unwrap();
    let (code, _, err) = replay("unsorted.csv", &["--out", "earlier.jsonl"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not in time order"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("earlier.jsonl")).unwrap(),
        "kept\n"
    );
    assert!(!dir.join("earlier.jsonl.partial").exists());
    let (code, out, err) = replay("unsorted.csv", &[]);
    assert_eq!(code, 2, "{err}");
    // The first reading (t = 39 s) opened [30, 40 s); the stop at the next one closes it.
    assert_eq!(out, "", "{err}");
    // Completed, the output replaces the file, and nothing is left beside it.
    let (code, _, err) = replay("unsorted.csv", &["--sort", "--out", "earlier.jsonl"]);
    assert_eq!(code, 0, "{err}");
    let sorted = std::fs::read_to_string(dir.join("earlier.jsonl")).unwrap();
    assert_eq!(sorted.lines().count(), 15, "{sorted}");
    assert!(!dir.join("earlier.jsonl.partial").exists());
    // train: a directory --out cannot be written in is named before any replay.
    let (code, _, err) = train("q.sql", "nodir/m.json", &[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err, "error: --out nodir/m.json: no such directory nodir\n");
    let (code, _, err) = train("q.sql", "d.csv/m.json", &[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err, "error: --out d.csv/m.json: d.csv is not a directory\n");
    let (code, _, err) = train("q.sql", "models", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: --out models: a directory"), "{err}");
    let (code, _, err) = train("q.sql", "models/m.json", &[]);
    assert_eq!(code, 0, "{err}");
    // eval: more rejected than --max-rejected fails; within it, a note.
    std::fs::write(dir.join("live.toml"), "[engine]\nmax_devices = 1\n").unwrap();
    let mut two = lines.clone();
    two.insert(2, "d2,1700000001500,2.0,0".into());
    std::fs::write(dir.join("two.csv"), two.join("\n") + "\n").unwrap();
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--queries", "q.sql", "--config", "live.toml"];
        args.extend_from_slice(extra);
        forewarn_in(&dir, &args)
    };
    let (code, out, err) = eval(&["--data", "two.csv", "--max-rejected", "0.5"]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.ends_with("error: 1 of 151 readings (0.7 %) were rejected (too_many_devices 1); see --max-rejected\n"),
        "{err}"
    );
    let (code, _, err) = eval(&["--data", "two.csv"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("note: 1 of 151 readings"), "{err}");
    // eval --sort: a reading 5 s back is refused in file order, taken sorted.
    let mut back = lines.clone();
    back.swap(20, 26);
    std::fs::write(dir.join("back.csv"), back.join("\n") + "\n").unwrap();
    let (code, _, err) = eval(&["--data", "back.csv"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not in time order") && err.contains("--sort"),
        "{err}"
    );
    let (code, _, err) = eval(&["--data", "back.csv", "--sort"]);
    assert_eq!(code, 0, "{err}");
    // A label column named in another case: the one the file has is named.
    let (code, _, err) = eval(&["--data", "d.csv", "--label", "Anomaly"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no usable 'Anomaly' label (true/false or 1/0; the column is missing, and 'anomaly' differs from it only in case (names are case-sensitive): pass --label anomaly)"),
        "{err}"
    );
    // A per-device model: the key is not one of its features.
    std::fs::write(
        dir.join("k.sql"),
        query(false).replace(
            "anomaly_score('m', avg(v))",
            "anomaly_score('k', device, avg(v))",
        ),
    )
    .unwrap();
    let (code, _, err) = train("k.sql", "models/k.json", &["--per-device"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = forewarn_in(&dir, &["eval", "--queries", "k.sql", "--data", "d.csv"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("windows scored with 'k'"), "{out}");
    // The key where a feature should be, or a feature where the key should be: named.
    std::fs::create_dir_all(dir.join("models2")).unwrap();
    std::fs::write(
        dir.join("two.sql"),
        query(false).replace(
            "anomaly_score('m', avg(v))",
            "anomaly_score('m', avg(v), max(v))",
        ),
    )
    .unwrap();
    let (code, _, err) = train("k.sql", "models2/k.json", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("the first argument of anomaly_score('k', ...), 'device', has no number in any window: if it is the device key, train with --per-device"),
        "{err}"
    );
    let (code, _, err) = train("two.sql", "models2/m.json", &["--per-device"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            "--per-device: the first argument of anomaly_score('m', ...) is the device key"
        ),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn config_prints_defaults_that_read_back_and_refuses_typos() {
    let dir = tmp("config");
    let (code, printed, err) = forewarn_in(&dir, &["config", "--print-default"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        printed.contains("\n[engine]\nmax_batch_rows = 4096\n"),
        "{printed}"
    );
    assert!(printed.contains("# broker = "), "{printed}");
    std::fs::write(dir.join("default.toml"), &printed).unwrap();
    let (code, checked, err) = forewarn_in(&dir, &["config", "--check", "default.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(checked.contains("max_batch_rows = 4096"), "{checked}");
    // A path that is not there is noted, not refused: the file may be for another machine.
    assert!(
        err.contains("note: queries = queries does not exist here: `forewarn run --config default.toml` would stop on it"),
        "{err}"
    );
    std::fs::create_dir(dir.join("queries")).unwrap();
    let (code, _, err) = forewarn_in(&dir, &["config", "--check", "default.toml"]);
    assert_eq!((code, err.as_str()), (0, ""));

    std::fs::write(dir.join("old.toml"), "checkpoint_keep = 5\n").unwrap();
    let (code, _, err) = forewarn_in(&dir, &["config", "--check", "old.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("'checkpoint_keep' is now 'keep' in the [checkpoint] section"),
        "{err}"
    );

    std::fs::write(dir.join("typo.toml"), "[engine]\nmax_devics = 5\n").unwrap();
    std::fs::write(dir.join("q.sql"), PLAIN).unwrap();
    let (code, _, err) = forewarn_in(
        &dir,
        &[
            "run",
            "--broker",
            "mqtt://127.0.0.1:9",
            "--queries",
            "q.sql",
            "--config",
            "typo.toml",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("typo.toml") && err.contains("unknown field `max_devics`"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
