//! The device-health page and its API (`forewarn::http::Fleet`) over a real broker and
//! real HTTP on 127.0.0.1: the API's content equals what the test fed (scores computed
//! here with the model, bounds from the readings' times, transitions as an independent
//! MQTT subscriber received them); the live stream's first event lists the fleet;
//! commands are refused without a configured token (403), need it when one is (401)
//! and go through the engine's command path (the device turns `silenced`); and the
//! page in headless Chromium shows every device, the failing one as `alarm`.

use crate::common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use forewarn::http::{Fleet, HttpServer, RunningHttp};
use forewarn::mqtt::{self, EmbeddedBroker, MqttSource, SourceOptions};
use forewarn::{EngineConfig, Pipeline, TransitionMessage};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SQL: &str = "
CREATE TABLE readings (
  site TEXT, line TEXT, device TEXT, ts TIMESTAMP, v DOUBLE, t DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'mqtt', topic = 'plant/+/+/+/data',
        topic_template = 'plant/{site}/{line}/{device}/data');
CREATE TABLE alerts WITH (
  connector = 'mqtt', topic = 'forewarn/alerts/{device}',
  warning_at = '1.0', alarm_at = '3.0', clear_below = '0.8', raise_after = '2',
  clear_after = '2', severity = 'maintenance'
);
INSERT INTO alerts
SELECT device, site, line, window_start, window_end, avg(v) AS avg_v, max(t) AS max_t,
       anomaly_score('m', avg(v), max(t)) AS score,
       top_contributors('m', avg(v), max(t)) AS explanation
FROM readings GROUP BY tumble(interval '10 seconds'), device, site, line;
";

/// Devices: `dev-00` .. `dev-11`, sites `north`/`south`, lines `l1`..`l3`.
const DEVICES: usize = 12;
/// The failing one.
const BAD: &str = "dev-07";
/// Seconds of readings (one per second per device): windows [0,10) .. [50,60) close.
const SECONDS: i64 = 65;
const WINDOWS: i64 = 6;
const TOKEN: &str = "page-s3cret";

fn device(i: usize) -> (String, &'static str, &'static str) {
    let site = if i.is_multiple_of(2) {
        "north"
    } else {
        "south"
    };
    let line = ["l1", "l2", "l3"][i % 3];
    (format!("dev-{i:02}"), site, line)
}

/// A device's constant readings: (v, t).
fn values(dev: &str) -> (f64, f64) {
    if dev == BAD {
        (3.0, 70.0)
    } else {
        (1.0, 50.5)
    }
}

fn messages() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for s in 0..SECONDS {
        for i in 0..DEVICES {
            let (d, site, line) = device(i);
            let (v, t) = values(&d);
            let p = json!({"ts": common::BASE + s * 1000, "v": v, "t": t});
            out.push((
                format!("plant/{site}/{line}/{d}/data"),
                p.to_string().into_bytes(),
            ));
        }
    }
    out
}

/// One request over a fresh connection: status and body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = auth
        .map(|a| format!("authorization: Bearer {a}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{auth}\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

async fn get_json(addr: SocketAddr, path: &str, auth: Option<&str>) -> Value {
    let (status, body) = request(addr, "GET", path, auth, "").await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

fn ms(v: &Value) -> i64 {
    forewarn::parse_rfc3339(v.as_str().expect("a time")).expect("RFC 3339")
}

struct Setup {
    _broker: EmbeddedBroker,
    running: mqtt::MqttPipeline,
    /// Without a token (the browser's).
    open: RunningHttp,
    /// With [`TOKEN`].
    guarded: RunningHttp,
    query: String,
    transitions: Vec<TransitionMessage>,
}

/// The pipeline on an embedded broker, fed every message, its fleet served twice.
async fn setup() -> Setup {
    let broker = EmbeddedBroker::start().unwrap();
    let url = broker.url();
    let fleet = Fleet::new(EngineConfig::default().max_devices);
    let pipeline = Pipeline::builder()
        .query_sql("page.sql", SQL)
        .model(common::model())
        .config(EngineConfig {
            window_observer: Some(fleet.window_observer()),
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    fleet.describe(&pipeline);
    let query = pipeline.query_names().remove(0);
    let (mut sub, mut alerts) = MqttSource::start(SourceOptions::new(
        url.clone(),
        "page-watcher",
        vec!["forewarn/alerts/#".into()],
    ));
    sub.wait_connected(Duration::from_secs(10)).await.unwrap();
    let running = mqtt::start(
        pipeline,
        &url,
        &mqtt::RunOptions::new("page-engine"),
        Some(fleet.tap()),
    )
    .await
    .unwrap();
    let serve = |token: Option<&str>| {
        HttpServer::new(running.handle().clone(), "127.0.0.1:0".parse().unwrap())
            .token(token.map(str::to_string))
            .queries([query.clone()])
            .fleet(fleet.clone())
            .start()
    };
    let open = serve(None).await.unwrap();
    let guarded = serve(Some(TOKEN)).await.unwrap();
    let publisher = common::connected_publisher(&url, "page-plant").await;
    let all = messages();
    for (t, m) in &all {
        publisher.publish(t, m.clone(), false).await.unwrap();
    }
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    assert!(
        running
            .wait_for_messages(all.len() as u64, Duration::from_secs(30))
            .await
    );
    // Every device's windows are in once the last one's ring holds them all.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = get_json(open.addr(), "/api/devices", None).await;
        let mut full = 0;
        for d in list["devices"].as_array().unwrap() {
            let id = d["device"].as_str().unwrap();
            let detail = get_json(open.addr(), &format!("/api/devices/{id}"), None).await;
            full += usize::from(detail["windows"].as_array().unwrap().len() == WINDOWS as usize);
        }
        if full == DEVICES {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "windows never all arrived: {full} of {DEVICES}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let want = running.handle().stats().transitions_out as usize;
    let mut transitions = Vec::new();
    while transitions.len() < want {
        let m = tokio::time::timeout(Duration::from_secs(10), alerts.recv())
            .await
            .expect("every transition reaches the subscriber")
            .unwrap();
        transitions.push(serde_json::from_slice::<TransitionMessage>(&m.payload).unwrap());
    }
    sub.stop().await;
    Setup {
        _broker: broker,
        running,
        open,
        guarded,
        query,
        transitions,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_the_stream_commands_and_the_page_in_a_browser() {
    let s = setup().await;
    let model = common::model();
    let score_of = |dev: &str| {
        let (v, t) = values(dev);
        model.score_one(&[v, t]).unwrap()
    };
    // Preconditions of the expected states: the bad device is severe, the rest normal.
    assert!(score_of(BAD) >= 3.0, "{}", score_of(BAD));
    assert!(score_of("dev-00") < 0.8, "{}", score_of("dev-00"));

    // /api/queries: the query with its source, sink, model and thresholds.
    let q = get_json(s.open.addr(), "/api/queries", None).await;
    assert_eq!(
        q,
        json!([{
            "name": s.query,
            "sources": [{"name": "readings", "connector": "mqtt", "topic": "plant/+/+/+/data"}],
            "sinks": [{"name": "alerts", "connector": "mqtt", "topic": "forewarn/alerts/{device}"}],
            "models": ["m"],
            "lifecycle": {"score": "score", "warning_at": 1.0, "alarm_at": 3.0, "clear_below": 0.8}
        }])
    );

    // /api/devices: every device, in id order, with labels, state, last score and window.
    let list = get_json(s.open.addr(), "/api/devices", None).await;
    assert_eq!(list["untracked"], 0);
    let devices = list["devices"].as_array().unwrap();
    assert_eq!(devices.len(), DEVICES);
    let last_end = common::BASE + WINDOWS * 10_000;
    for (i, d) in devices.iter().enumerate() {
        let (id, site, line) = device(i);
        assert_eq!(d["device"], json!(id));
        assert_eq!(d["labels"], json!({"site": site, "line": line}), "{id}");
        assert_eq!(
            d["state"],
            json!(if id == BAD { "alarm" } else { "ok" }),
            "{id}"
        );
        assert!(
            (d["score"].as_f64().unwrap() - score_of(&id)).abs() < 1e-9,
            "{id}: {d}"
        );
        assert_eq!(ms(&d["last_seen"]), last_end, "{id}");
    }

    // /api/devices/{id}: the windows with their bounds and scores, the latest in full,
    // and the history equal to the transitions an MQTT subscriber received.
    let d = get_json(s.open.addr(), &format!("/api/devices/{BAD}"), None).await;
    let windows = d["windows"].as_array().unwrap();
    for (k, w) in windows.iter().enumerate() {
        let start = common::BASE + k as i64 * 10_000;
        assert_eq!(
            (ms(&w["window_start"]), ms(&w["window_end"])),
            (start, start + 10_000)
        );
        assert!((w["score"].as_f64().unwrap() - score_of(BAD)).abs() < 1e-9);
    }
    let (v, t) = values(BAD);
    let latest = &d["latest"];
    assert_eq!(latest["query"], json!(s.query));
    assert!((latest["features"]["avg_v"].as_f64().unwrap() - v).abs() < 1e-9);
    assert!((latest["features"]["max_t"].as_f64().unwrap() - t).abs() < 1e-9);
    assert_eq!(latest["features"]["site"], json!("south"));
    assert!(
        latest["explanation"]
            .as_str()
            .is_some_and(|e| e.contains('%')),
        "{latest}"
    );
    let mine: Vec<&TransitionMessage> = s.transitions.iter().filter(|t| t.device == BAD).collect();
    assert!(!mine.is_empty());
    assert!(
        s.transitions.iter().all(|t| t.device == BAD),
        "only {BAD} fails"
    );
    let history = d["history"].as_array().unwrap();
    assert_eq!(history.len(), mine.len());
    for (h, t) in history.iter().zip(&mine) {
        assert_eq!(h["event"], serde_json::to_value(t.transition).unwrap());
        assert_eq!(h["state"], serde_json::to_value(t.state).unwrap());
        assert_eq!(h["alert_id"], json!(t.alert_id));
        assert_eq!(ms(&h["window_end"]), t.window_end.as_millis());
        assert_eq!(h["explanation"], json!(t.explanation));
    }
    assert_eq!(history.last().unwrap()["state"], json!("alarm"));
    assert_eq!(d["health"]["state"], json!("alarm"));
    let (code, body) = request(s.open.addr(), "GET", "/api/devices/nope", None, "").await;
    assert_eq!(
        (
            code,
            serde_json::from_str::<Value>(&body).unwrap()["error"].clone()
        ),
        (404, json!("not_found"))
    );

    // The live stream: its first event (from 0) lists the whole fleet as compact rows.
    let first = first_event(
        s.guarded.addr(),
        &format!("/api/events?since=0&token={TOKEN}"),
    )
    .await;
    let rows = first["u"].as_array().unwrap();
    assert_eq!(rows.len(), DEVICES);
    let bad_row = rows.iter().find(|r| r[0] == json!(BAD)).unwrap();
    assert_eq!(bad_row[1], json!("alarm"));
    assert_eq!(bad_row[3], json!(last_end));
    assert_eq!(bad_row[4], json!({"site": "south", "line": "l2"}));
    // Without the token the stream is refused like the rest of the API.
    let (code, _) = request(s.guarded.addr(), "GET", "/api/events?since=0", None, "").await;
    assert_eq!(code, 401);
    let (code, _) = request(
        s.guarded.addr(),
        "GET",
        "/api/events?since=0&token=wrong",
        None,
        "",
    )
    .await;
    assert_eq!(code, 401);
    let (code, _) = request(s.guarded.addr(), "GET", "/api/devices", None, "").await;
    assert_eq!(code, 401);
    // The page's own files load without a token.
    let (code, html) = request(s.guarded.addr(), "GET", "/", None, "").await;
    assert_eq!(code, 200);
    assert!(html.contains("<script src=\"app.js\">"));

    // Commands: 403 without a configured token, 401 without the right one, 400 for a
    // malformed one, 202 and the engine's own effect with it.
    let silence = r#"{"action": "silence", "by": "test", "for": "2 hours"}"#;
    let path = format!("/api/devices/{BAD}/command");
    let (code, body) = request(s.open.addr(), "POST", &path, None, silence).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        json!("forbidden")
    );
    let (code, _) = request(s.guarded.addr(), "POST", &path, None, silence).await;
    assert_eq!(code, 401);
    let (code, _) = request(s.guarded.addr(), "POST", &path, Some("wrong"), silence).await;
    assert_eq!(code, 401);
    let (code, body) = request(
        s.guarded.addr(),
        "POST",
        &path,
        Some(TOKEN),
        r#"{"action": "explode"}"#,
    )
    .await;
    assert_eq!(code, 400, "{body}");
    // What the engine would dead-letter is refused here, with its reason: a silence
    // without a positive length, a device no rule with a lifecycle has seen.
    let (code, body) = request(
        s.guarded.addr(),
        "POST",
        &path,
        Some(TOKEN),
        r#"{"action": "silence", "by": "test", "for": "forever"}"#,
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("silence needs"), "{body}");
    let (code, body) = request(
        s.guarded.addr(),
        "POST",
        "/api/devices/ghost-9/command",
        Some(TOKEN),
        silence,
    )
    .await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        json!("unknown_device")
    );
    let commands_before = s.running.handle().stats().commands;
    let (code, body) = request(s.guarded.addr(), "POST", &path, Some(TOKEN), silence).await;
    assert_eq!(code, 202, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = get_json(
            s.guarded.addr(),
            &format!("/api/devices/{BAD}"),
            Some(TOKEN),
        )
        .await;
        if d["state"] == json!("silenced") {
            assert_eq!(
                d["health"]["state"],
                json!("alarm"),
                "silenced, still in alarm"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never silenced: {d}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.running.handle().stats().commands, commands_before + 1);
    let (code, _) = request(
        s.guarded.addr(),
        "POST",
        &path,
        Some(TOKEN),
        r#"{"action": "unsilence", "by": "test"}"#,
    )
    .await;
    assert_eq!(code, 202);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while get_json(s.open.addr(), &format!("/api/devices/{BAD}"), None).await["state"]
        != json!("alarm")
    {
        assert!(tokio::time::Instant::now() < deadline, "never unsilenced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    browser(s.open.addr()).await;
    s.open.stop().await;
    s.guarded.stop().await;
    s.running.stop().await.unwrap();
}

/// The first server-sent event's data on `path`, as JSON.
async fn first_event(addr: SocketAddr, path: &str) -> Value {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: test\r\naccept: text/event-stream\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("an event in time")
            .unwrap();
        assert!(n > 0, "stream closed: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        // Chunked: the event's `data:` line ends with a newline inside a chunk.
        if let Some(at) = text.find("data: ") {
            if let Some(end) = text[at..].find('\n') {
                return serde_json::from_str(&text[at + 6..at + end]).unwrap();
            }
        }
    }
}

/// Chromium, if installed.
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|b| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(b))
                    .find(|f| f.is_file())
            })
        })
}

/// Where the screenshot goes: `target/health-page/`.
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("health-page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium with `args`, killed after 60 s. Its output goes to files, not
/// pipes: a DOM dump larger than a pipe's buffer would block the browser on writing while
/// nobody reads it.
fn headless(bin: &PathBuf, profile: &std::path::Path, args: &[&str]) -> std::process::Output {
    let out_path = profile.with_extension(format!("{}.out", std::process::id()));
    let err_path = profile.with_extension(format!("{}.err", std::process::id()));
    let mut child = std::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            // Virtual time: the page's fetches finish before the DOM is dumped (the page
            // is loaded with ?live=0: the live stream would never let it settle).
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("chromium runs");
    // Never hang the suite on a browser that does not stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.wait().unwrap();
    let output = std::process::Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    };
    let _ = std::fs::remove_file(out_path);
    let _ = std::fs::remove_file(err_path);
    output
}

/// The page in headless Chromium: the DOM has one cell per device, the failing one in
/// `alarm`; a screenshot of the page with that device open is saved.
async fn browser(addr: SocketAddr) {
    let Some(bin) = chromium() else {
        eprintln!(
            "skipping the browser check: no chromium binary on PATH (apt-get install chromium)"
        );
        return;
    };
    let dir = artifacts();
    let url = format!("http://{addr}/?live=0");
    let shot = dir.join("health-page.png");
    let (dom, screenshot) = tokio::task::spawn_blocking(move || {
        let profile = dir.join("profile");
        let dom = headless(&bin, &profile, &["--dump-dom", &url]);
        let screenshot = headless(
            &bin,
            &profile,
            &[
                &format!("--screenshot={}", shot.display()),
                "--window-size=1280,900",
                &format!("{url}#device={BAD}"),
            ],
        );
        (dom, screenshot)
    })
    .await
    .unwrap();
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    assert!(
        html.contains("data-loaded=\"true\""),
        "the page did not load the fleet: {html}"
    );
    let cells: Vec<&str> = html
        .match_indices("class=\"dev ")
        .map(|(i, _)| &html[i..i + 120.min(html.len() - i)])
        .collect();
    assert_eq!(cells.len(), DEVICES, "{html}");
    assert_eq!(html.matches("data-state=\"alarm\"").count(), 1, "{html}");
    assert_eq!(
        html.matches("data-state=\"ok\"").count(),
        DEVICES - 1,
        "{html}"
    );
    assert!(
        html.contains(&format!("data-id=\"{BAD}\" data-state=\"alarm\"")),
        "{html}"
    );
    assert!(
        html.contains(&format!("data-total=\"{DEVICES}\"")),
        "{html}"
    );
    assert!(
        screenshot.status.success(),
        "{}",
        String::from_utf8_lossy(&screenshot.stderr)
    );
    let png = std::fs::read(artifacts().join("health-page.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

/// Figures for docs/operations.md (run by hand: `cargo test --test integration --
/// --ignored health_page::figures --nocapture`): the bytes of the fleet list with
/// 10,000 devices and of a live update where 100 of them changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn figures() {
    let fleet = Fleet::new(20_000);
    let window = |d: &str, end: i64, score: f64| forewarn::Alert {
        schema_version: 1,
        alert_id: String::new(),
        query: "q".into(),
        device: d.into(),
        window_start: forewarn::Timestamp::from_millis(end - 60_000),
        window_end: forewarn::Timestamp::from_millis(end),
        score: Some(score),
        model: None,
        features: serde_json::from_value(
            json!({"site": "north", "line": "l1", "vibration_floor": 1.5}),
        )
        .unwrap(),
    };
    for i in 0..10_000 {
        fleet.observe(&window(&format!("pump-{i:05}"), common::BASE, 0.3));
    }
    let (h, _outputs) = common::pipeline().await.start();
    let server = HttpServer::new(h, "127.0.0.1:0".parse().unwrap())
        .queries(["q"])
        .fleet(fleet.clone())
        .start()
        .await
        .unwrap();
    let addr = server.addr();
    let (seq, _) = fleet.devices();
    for i in 0..100 {
        fleet.observe(&window(
            &format!("pump-{:05}", i * 100),
            common::BASE + 60_000,
            1.7,
        ));
    }
    let (_, full) = request(addr, "GET", "/api/devices", None, "").await;
    let ev = first_event(addr, &format!("/api/events?since={seq}")).await;
    eprintln!(
        "GET /api/devices: {} bytes for 10000 devices; one update of 100 changed devices: {} bytes of JSON data",
        full.len(),
        ev.to_string().len()
    );
    // Load time in headless Chromium: the page with 10,000 devices against the same page
    // with none, same browser, same run, alternated (the machine is shared and noisy):
    // the difference is what the fleet costs to fetch, build and lay out.
    if let Some(bin) = chromium() {
        let (h0, _o0) = common::pipeline().await.start();
        let empty = HttpServer::new(h0, "127.0.0.1:0".parse().unwrap())
            .queries(["q"])
            .fleet(Fleet::new(10))
            .start()
            .await
            .unwrap();
        let (big, small) = (
            format!("http://{addr}/?live=0"),
            format!("http://{}/?live=0", empty.addr()),
        );
        let (t_big, t_small, cells) = tokio::task::spawn_blocking(move || {
            let profile = artifacts().join("profile-figures");
            let (mut t_big, mut t_small, mut cells) = (Vec::new(), Vec::new(), 0);
            for _ in 0..3 {
                for (url, times) in [(&big, &mut t_big), (&small, &mut t_small)] {
                    let t = std::time::Instant::now();
                    let out = headless(&bin, &profile, &["--dump-dom", url]);
                    times.push(t.elapsed().as_secs_f64());
                    if std::ptr::eq(url, &big) {
                        cells = String::from_utf8_lossy(&out.stdout)
                            .matches("class=\"dev ")
                            .count();
                    }
                }
            }
            t_big.sort_by(f64::total_cmp);
            t_small.sort_by(f64::total_cmp);
            (t_big[1], t_small[1], cells)
        })
        .await
        .unwrap();
        eprintln!(
            "headless Chromium --dump-dom, median of 3: {t_big:.2} s with 10000 devices ({cells} cells in the DOM), {t_small:.2} s with none: the fleet adds {:.2} s",
            t_big - t_small
        );
        empty.stop().await;
    }
    server.stop().await;
    // The engine's extra CPU for the page: the same input (10,000 devices, one reading
    // every second for 20 s: two windows each) through a pipeline alone, and through one
    // feeding a fleet view (window observer and output tap) with the page's live stream
    // open, alternated three times; CPU time of this process (user + system).
    let mut alone = Vec::new();
    let mut with_page = Vec::new();
    for _ in 0..3 {
        for page in [false, true] {
            let cpu = cpu_seconds();
            feed_fleet(page).await;
            let used = cpu_seconds() - cpu;
            if page {
                with_page.push(used)
            } else {
                alone.push(used)
            }
        }
    }
    alone.sort_by(f64::total_cmp);
    with_page.sort_by(f64::total_cmp);
    eprintln!(
        "CPU for 200,000 readings of 10,000 devices, median of 3: {:.2} s alone, {:.2} s with the fleet view and a live page: {:.1} % more",
        alone[1],
        with_page[1],
        100.0 * (with_page[1] / alone[1] - 1.0)
    );
}

/// This process's CPU time so far (user + system), seconds, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Pushes 20 s of readings of 10,000 devices through the scenario's queries; with `page`,
/// into a fleet view served with one live stream open and read.
async fn feed_fleet(page: bool) {
    let fleet = Fleet::new(20_000);
    let p = Pipeline::builder()
        .query_sql("page.sql", SQL)
        .model(common::model())
        .config(EngineConfig {
            window_observer: page.then(|| fleet.window_observer()),
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let (h, mut rx) = p.start();
    let tap = page.then(|| fleet.tap());
    let drain = tokio::spawn(async move {
        while let Some(o) = rx.recv().await {
            if let Some(t) = &tap {
                let _ = t.send(o).await;
            }
        }
    });
    let server = if page {
        let s = HttpServer::new(h.clone(), "127.0.0.1:0".parse().unwrap())
            .queries(["q"])
            .fleet(fleet.clone())
            .start()
            .await
            .unwrap();
        let addr = s.addr();
        let reader = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = vec![0u8; 65536];
            while c.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        Some((s, reader))
    } else {
        None
    };
    for s in 0..20i64 {
        for d in 0..10_000 {
            let body = format!(r#"{{"ts":{},"v":1.0,"t":50.5}}"#, common::BASE + s * 1000);
            h.push_json(
                &format!("plant/north/l{}/pump-{d:05}/data", d % 3),
                body.into_bytes(),
            )
            .await
            .unwrap();
        }
    }
    h.finish().await.unwrap();
    drop(h);
    drain.await.unwrap();
    if let Some((s, reader)) = server {
        // One more tick of the live stream, then stop.
        tokio::time::sleep(Duration::from_millis(600)).await;
        reader.abort();
        s.stop().await;
    }
}
