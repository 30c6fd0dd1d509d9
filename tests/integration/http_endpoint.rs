//! The operations endpoint (`forewarn::http`) over real HTTP on 127.0.0.1: `/metrics`
//! scraped during a run over a real broker equals the engine's own counters and
//! parses as the Prometheus text exposition format; `/readyz` turns to 503 when the
//! broker stops and back to 200 when it returns; a token guards every endpoint but
//! `/healthz`; a non-loopback listener without a token is refused.

use crate::common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::mosquitto::{mosquitto_binary, start_mosquitto_conf};
use forewarn::http::{HttpError, HttpServer};
use forewarn::mqtt::{self, BrokerUrl};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One `GET` over a fresh connection: the status and the body.
async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = auth
        .map(|a| format!("authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n{auth}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// A sample's identity: the metric name and its labels, sorted.
type Series = (String, Vec<(String, String)>);

/// A strict parser of the Prometheus text exposition format (0.0.4): `# HELP` and
/// `# TYPE` lines, samples `name{label="value",...} value`, empty lines. Every sample
/// belongs to a family whose TYPE came before it; no TYPE twice, no series twice.
fn parse_exposition(text: &str) -> BTreeMap<Series, f64> {
    fn is_name(s: &str, colon: bool) -> bool {
        let mut c = s.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || (colon && f == ':'))
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || (colon && x == ':'))
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, arg) = (parts.next(), parts.next(), parts.next());
            let name = name.unwrap_or_else(|| panic!("{at}: no name"));
            assert!(is_name(name, true), "{at}: bad metric name");
            match kind {
                Some("HELP") => {}
                Some("TYPE") => {
                    let t = arg.unwrap_or_else(|| panic!("{at}: no type"));
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "{at}: unknown type"
                    );
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "{at}: TYPE given twice"
                    );
                }
                _ => panic!("{at}: a comment other than HELP or TYPE"),
            }
            continue;
        }
        assert!(!line.starts_with('#'), "{at}: malformed comment");
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("{at}: no value"));
        let name = &line[..name_end];
        assert!(is_name(name, true), "{at}: bad metric name");
        // A histogram's samples are its family's name with a suffix.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "{at}: sample before its TYPE");
        if name.ends_with("_bucket") && family != name {
            assert!(line.contains("le=\""), "{at}: a bucket without le");
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut r = r;
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    r = after;
                    break;
                }
                let eq = r
                    .find('=')
                    .unwrap_or_else(|| panic!("{at}: label without ="));
                let lname = &r[..eq];
                assert!(is_name(lname, false), "{at}: bad label name {lname:?}");
                r = r[eq + 1..]
                    .strip_prefix('"')
                    .unwrap_or_else(|| panic!("{at}: label value not quoted"));
                let mut value = String::new();
                let mut chars = r.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            _ => panic!("{at}: bad escape"),
                        },
                        Some((i, '"')) => break i,
                        Some((_, c)) => value.push(c),
                        None => panic!("{at}: unterminated label value"),
                    }
                };
                labels.push((lname.to_string(), value));
                r = &r[end + 1..];
                r = r.strip_prefix(',').unwrap_or(r);
            }
            rest = r;
        }
        let mut fields = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("{at}: no space before the value"))
            .split(' ');
        let v = fields.next().unwrap();
        let value: f64 = match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("{at}: value {v:?} not a number")),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .unwrap_or_else(|_| panic!("{at}: bad timestamp"));
        }
        assert!(fields.next().is_none(), "{at}: trailing fields");
        labels.sort();
        assert!(
            out.insert((name.to_string(), labels), value).is_none(),
            "{at}: series given twice"
        );
    }
    out
}

fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    (name.to_string(), l)
}

/// Every series the engine's counters give, with the value `stats` says.
fn expected_from(s: &forewarn::EngineStats, broker: bool) -> BTreeMap<Series, f64> {
    let mut e = BTreeMap::new();
    let mut put = |name: &str, labels: &[(&str, &str)], v: f64| {
        e.insert(series(name, labels), v);
    };
    for (name, v) in [
        ("forewarn_messages_total", s.messages_in),
        ("forewarn_readings_total", s.readings_in),
        ("forewarn_batches_total", s.batches),
        ("forewarn_results_total", s.results),
        ("forewarn_rows_total", s.rows_out),
        ("forewarn_alerts_total", s.alerts_out),
        ("forewarn_transitions_total", s.transitions_out),
        (
            "forewarn_transitions_silenced_total",
            s.transitions_silenced,
        ),
        ("forewarn_commands_total", s.commands),
        ("forewarn_states_total", s.states_out),
        ("forewarn_dead_letters_total", s.dead_letters_out),
        ("forewarn_query_errors_total", s.query_errors),
        ("forewarn_checkpoints_total", s.checkpoints),
        ("forewarn_checkpoint_failures_total", s.checkpoint_failures),
        ("forewarn_inputs_acked_total", s.inputs_acked),
        ("forewarn_outputs_replayed_total", s.outputs_replayed),
        ("forewarn_outputs_dropped_total", s.outputs_dropped),
        ("forewarn_model_reloads_total", s.model_reloads),
        (
            "forewarn_model_reloads_refused_total",
            s.model_reloads_refused,
        ),
        ("forewarn_state_bytes", s.state_bytes),
        ("forewarn_state_max_bytes", s.max_state_bytes),
        ("forewarn_open_windows", s.open_windows),
        ("forewarn_input_queue_messages", s.input_queue),
        ("forewarn_output_queue_messages", s.output_queue),
        ("forewarn_checkpoint_last_bytes", s.checkpoint_bytes),
    ] {
        put(name, &[], v as f64);
    }
    for (q, n) in &s.windows_closed_by_query {
        put("forewarn_windows_closed_total", &[("query", q)], *n as f64);
    }
    for (r, n) in &s.rejected {
        put("forewarn_rejected_total", &[("reason", r)], *n as f64);
    }
    for (src, g) in &s.sources {
        put("forewarn_devices", &[("source", src)], g.devices as f64);
        if let Some(lag) = g.lag_ms {
            put(
                "forewarn_watermark_lag_seconds",
                &[("source", src)],
                lag as f64 / 1000.0,
            );
        }
    }
    put(
        "forewarn_broker_connected",
        &[],
        if broker { 1.0 } else { 0.0 },
    );
    put("forewarn_outbox_dropped_total", &[], 0.0);
    e
}

/// Takes the histogram `name`'s series out of `scraped` and returns its sample count,
/// after checking the family is whole: cumulative buckets that never decrease, the
/// `+Inf` bucket equal to the count, a sum that is not negative.
fn take_histogram(scraped: &mut BTreeMap<Series, f64>, name: &str) -> f64 {
    let count = scraped
        .remove(&series(&format!("{name}_count"), &[]))
        .unwrap_or_else(|| panic!("{name}_count missing"));
    let sum = scraped
        .remove(&series(&format!("{name}_sum"), &[]))
        .unwrap_or_else(|| panic!("{name}_sum missing"));
    assert!(sum >= 0.0, "{name}_sum {sum}");
    let bucket = format!("{name}_bucket");
    let keys: Vec<Series> = scraped
        .keys()
        .filter(|(n, _)| *n == bucket)
        .cloned()
        .collect();
    let mut buckets: Vec<(f64, f64)> = keys
        .iter()
        .map(|k| {
            let le = &k.1.iter().find(|(l, _)| l == "le").expect("le").1;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (bound, scraped.remove(k).unwrap())
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 2, "{name}: {buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name}: {buckets:?}"
    );
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count), "{name}");
    count
}

/// Polls `/readyz` until it answers `want`, for at most `within`.
async fn wait_ready(addr: SocketAddr, want: u16, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (code, body) = get(addr, "/readyz", None).await;
        if code == want {
            return serde_json::from_str(&body).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {code} (wanted {want}): {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_equal_the_engine_counters_and_readiness_follows_the_broker() {
    let Some(bin) = mosquitto_binary() else {
        eprintln!("SKIPPED: mosquitto is not installed; .ci/run installs it");
        return;
    };
    let port = common::free_port();
    // With persistence, as a plant's broker runs: the engine's sessions (and the
    // outputs in flight when it stops) survive its restart.
    let dir = std::env::temp_dir().join(format!("forewarn-http-broker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    {
        // mosquitto started as root drops to the `mosquitto` user before saving.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n",
            dir.display()
        ),
    )
    .unwrap();
    let broker = start_mosquitto_conf(&bin, port, &conf).expect("mosquitto starts");
    let url = BrokerUrl::new("127.0.0.1", port);
    let pipeline = common::pipeline().await;
    let queries = pipeline.query_names();
    let running = mqtt::start(pipeline, &url, &mqtt::RunOptions::new("http-engine"), None)
        .await
        .unwrap();
    let status = running.broker_status();
    let (dropped, reconnects) = (status.clone(), status.clone());
    let server = HttpServer::new(running.handle().clone(), "127.0.0.1:0".parse().unwrap())
        .queries(queries.clone())
        .broker(move || status.connected())
        .counter(
            "forewarn_outbox_dropped_total",
            "Outgoing messages dropped from a full outbox.",
            move || dropped.outbox_dropped(),
        )
        .counter(
            "forewarn_broker_reconnects_total",
            "Reconnections to the broker.",
            move || reconnects.reconnects(),
        )
        .start()
        .await
        .unwrap();
    let addr = server.addr();
    assert!(addr.ip().is_loopback());

    let publisher = common::connected_publisher(&url, "http-plant").await;
    let messages = common::scenario_messages();
    for (t, p) in &messages {
        publisher.publish(t, p.clone(), false).await.unwrap();
    }
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    let sent = messages.len() as u64;
    assert!(
        running
            .wait_for_messages(sent, Duration::from_secs(20))
            .await
    );
    running.handle().flush().await.unwrap();

    // Scrape between two identical snapshots of the counters, so the scrape saw them.
    let h = running.handle().clone();
    let (stats, scraped) = loop {
        let before = h.stats();
        let (code, text) = get(addr, "/metrics", None).await;
        assert_eq!(code, 200, "{text}");
        if h.stats() == before {
            break (before, parse_exposition(&text));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The counters themselves, independently of the engine: every message in, the
    // scenario's 120 readings, its three bad messages by reason.
    assert_eq!(stats.messages_in, sent);
    assert_eq!(stats.readings_in, 120);
    let rejected: BTreeMap<String, u64> =
        [("bad_timestamp", 1), ("missing_field", 1), ("not_json", 1)]
            .into_iter()
            .map(|(r, n)| (r.to_string(), n))
            .collect();
    assert_eq!(stats.rejected, rejected);
    assert!(stats.windows_closed > 0 && stats.results > 0);
    // And the scrape: exactly the engine's counters, nothing more, nothing less. The
    // latencies: one decode per message (all on the one source), one window run per
    // micro-batch for each of the scenario's two queries.
    let mut scraped = scraped;
    assert_eq!(
        take_histogram(&mut scraped, "forewarn_decode_seconds"),
        sent as f64
    );
    assert_eq!(
        take_histogram(&mut scraped, "forewarn_window_seconds"),
        (stats.batches * 2) as f64
    );
    let mut want = expected_from(&stats, true);
    want.insert(series("forewarn_broker_reconnects_total", &[]), 0.0);
    assert_eq!(scraped, want);
    assert_eq!(
        scraped[&series("forewarn_rejected_total", &[("reason", "not_json")])],
        1.0
    );

    // Ready: queries loaded, broker connected.
    let r = wait_ready(addr, 200, Duration::from_secs(5)).await;
    assert_eq!(r["status"], "ready");
    assert_eq!(
        r["checks"][0]["detail"],
        format!("{} loaded: {}", queries.len(), queries.join(", "))
    );
    assert_eq!(
        r["checks"][1],
        serde_json::json!({"name": "broker", "ok": true, "detail": "connected"})
    );

    // The broker goes away: not ready, saying why; then it returns: ready again.
    broker.terminate();
    let r = wait_ready(addr, 503, Duration::from_secs(15)).await;
    assert_eq!(r["status"], "not_ready");
    assert_eq!(r["checks"][0]["ok"], true);
    assert_eq!(
        r["checks"][1],
        serde_json::json!({"name": "broker", "ok": false, "detail": "not connected"})
    );
    let (_, text) = get(addr, "/metrics", None).await;
    assert_eq!(
        parse_exposition(&text)[&series("forewarn_broker_connected", &[])],
        0.0
    );
    let _broker = start_mosquitto_conf(&bin, port, &conf).expect("mosquitto starts again");
    let r = wait_ready(addr, 200, Duration::from_secs(30)).await;
    assert_eq!(r["status"], "ready");
    // Each connection, input and output, came back once.
    let (_, text) = get(addr, "/metrics", None).await;
    assert_eq!(
        parse_exposition(&text)[&series("forewarn_broker_reconnects_total", &[])],
        2.0
    );

    server.stop().await;
    publisher.stop().await;
    running.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_all_but_healthz_and_a_public_listener_needs_one() {
    let p = common::pipeline().await;
    let queries = p.query_names();
    let (h, _outputs) = p.start();
    // Without a token, nothing but loopback.
    for public in ["0.0.0.0:0", "[::]:0", "192.0.2.1:9464"] {
        let e = HttpServer::new(h.clone(), public.parse().unwrap())
            .start()
            .await
            .err()
            .unwrap_or_else(|| panic!("{public} was bound without a token"));
        assert!(matches!(e, HttpError::NeedsToken(_)), "{e}");
        assert!(
            e.to_string()
                .contains("bearer_token_file or bearer_token_env"),
            "{e}"
        );
    }

    // The token as a file holds it, newline and all.
    let dir = std::env::temp_dir().join(format!("forewarn-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "s3cret-token\n").unwrap();
    let token = forewarn::http::read_token(Some(&file), None).unwrap();
    assert_eq!(token.as_deref(), Some("s3cret-token"));
    std::fs::write(&file, "\n").unwrap();
    assert!(matches!(
        forewarn::http::read_token(Some(&file), None),
        Err(HttpError::EmptyToken(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();

    let server = HttpServer::new(h.clone(), "127.0.0.1:0".parse().unwrap())
        .token(token)
        .queries(queries)
        .start()
        .await
        .unwrap();
    let addr = server.addr();
    for path in ["/metrics", "/readyz"] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cret-toke"),
            Some("Basic s3cret-token"),
        ] {
            let (code, body) = get(addr, path, auth).await;
            assert_eq!(code, 401, "{path} {auth:?}: {body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"], "unauthorized", "{body}");
        }
        let (code, body) = get(addr, path, Some("Bearer s3cret-token")).await;
        assert_eq!(code, 200, "{path}: {body}");
    }
    let (code, body) = get(addr, "/healthz", None).await;
    assert_eq!((code, body.as_str()), (200, r#"{"status":"alive"}"#));
    server.stop().await;

    // No query loaded: not ready, and the body says so.
    let server = HttpServer::new(h.clone(), "127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    let (code, body) = get(server.addr(), "/readyz", None).await;
    assert_eq!(code, 503);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"status": "not_ready", "checks": [{"name": "queries", "ok": false, "detail": "no query loaded"}]})
    );
    server.stop().await;
    h.finish().await.unwrap();
}

/// `forewarn run --config F` with `[http]` (and checkpoints) serves the endpoint and
/// prints its address; `--http` on a public address without a token is refused before
/// anything starts, naming the key.
#[cfg(feature = "cli")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forewarn_run_serves_the_configured_listener() {
    use common::ckpt::{forewarn_run, messages, SQL};
    let Some(bin) = mosquitto_binary() else {
        eprintln!("SKIPPED: mosquitto is not installed; .ci/run installs it");
        return;
    };
    let dir = std::env::temp_dir().join(format!("forewarn-http-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["queries", "models", "checkpoints"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("queries/ck.sql"), SQL).unwrap();
    let http_port = common::free_port();
    std::fs::write(
        dir.join("forewarn.toml"),
        format!(
            "[checkpoint]\ndir = \"checkpoints\"\ninterval_ms = 200\n[mqtt]\nclient_id = \"http-run\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n"
        ),
    )
    .unwrap();

    // A public address without a token: refused at once, naming the key.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .args([
            "run",
            "--broker",
            "mqtt://127.0.0.1:1",
            "--http",
            "0.0.0.0:9464",
            "--config",
        ])
        .arg(dir.join("forewarn.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[http] listen = \"0.0.0.0:9464\" is not a loopback address: set bearer_token_file or bearer_token_env"),
        "{err}"
    );

    let port = common::free_port();
    // With checkpoints the engine acknowledges input only once a checkpoint covers it:
    // the broker must let it hold that many, and queue the rest (stock mosquitto keeps
    // 1000 and drops what comes beyond).
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\nmax_queued_messages 100000\n"),
    )
    .unwrap();
    let _broker = start_mosquitto_conf(&bin, port, &conf).expect("mosquitto starts");
    let engine = forewarn_run(&dir, port, &[], "engine.log");
    let log = dir.join("engine.log");
    let printed = format!(
        "http: http://127.0.0.1:{http_port} (health page at /, /api, /metrics, /healthz, /readyz)"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&printed)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let url = BrokerUrl::new("127.0.0.1", port);
    let publisher = common::connected_publisher(&url, "http-run-plant").await;
    let all = messages();
    for (t, m) in &all {
        publisher.publish(t, m.clone(), false).await.unwrap();
    }
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    let sent = all.len() as f64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let scraped = loop {
        let (code, text) = get(addr, "/metrics", None).await;
        assert_eq!(code, 200);
        let m = parse_exposition(&text);
        if m[&series("forewarn_messages_total", &[])] == sent
            && m.get(&series("forewarn_checkpoints_total", &[])) >= Some(&1.0)
        {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(scraped[&series("forewarn_readings_total", &[])], sent);
    assert_eq!(scraped[&series("forewarn_broker_connected", &[])], 1.0);
    assert!(scraped.contains_key(&series("forewarn_checkpoint_age_seconds", &[])));
    // Ready, the checkpoint check included once checkpoints cover the input.
    let r = wait_ready(addr, 200, Duration::from_secs(10)).await;
    let names: Vec<&str> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["queries", "broker", "checkpoint"]);
    assert_eq!(r["checks"][2]["ok"], true);
    assert!(engine.terminate().success());
    publisher.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
