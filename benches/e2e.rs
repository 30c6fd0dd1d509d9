//! End to end through a real broker (mosquitto on loopback, started here): sustained
//! readings/s into a running pipeline, next to the broker's pass-through rate measured
//! with the same client library and no engine; and alert latency.
//!
//! `cargo bench --bench e2e [-- READINGS] [--only QOS/PER]` (default 200,000 readings, every
//! case; `--only 1/1`: QoS 1 with one reading per message alone, no latency run, for a
//! profile of one case). Needs `mosquitto` on PATH.
//!
//! * Throughput, for QoS 0 and 1, one reading per message and 10 per message: a
//!   publisher sends every message as fast as the client allows; the rate is readings
//!   received (by the subscriber, or decoded by the engine) over the time from the first
//!   publish to the last reading. Loss is counted, not hidden.
//! * Latency: 1 s tumbling windows, watermark = event time; a reading that moves the
//!   watermark past a window's end is published, and the time until the window's result
//!   reaches an external subscriber is measured (so it includes the broker hop in and
//!   the hop out, an upper bound of the time from the watermark passing).

#[path = "../tests/integration/common/mosquitto.rs"]
mod mosquitto;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use forewarn::mqtt::{BrokerUrl, MqttSink, MqttSource, QoS, RunOptions, SourceOptions};
use forewarn::{EngineConfig, Pipeline};

const SQL: &str = "
CREATE TABLE src (device TEXT, ts TIMESTAMP, v DOUBLE, t DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH (connector = 'mqtt', topic = 'b/+', topic_template = 'b/{device}');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
INSERT INTO out SELECT device, window_start, count(*) AS n, avg(v) AS avg_v, max(t) AS max_t
FROM src GROUP BY tumble(interval '10 seconds'), device;";

const LATENCY_SQL: &str = "
CREATE TABLE src (device TEXT, ts TIMESTAMP, v DOUBLE,
  WATERMARK FOR ts AS ts)
  WITH (connector = 'mqtt', topic = 'b/+', topic_template = 'b/{device}');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
INSERT INTO out SELECT device, window_start, count(*) AS n, avg(v) AS avg_v
FROM src GROUP BY tumble(interval '1 second'), device;";

const DEVICES: usize = 1000;

/// Messages carrying `readings` readings, `per` per message, device after device.
fn messages(readings: usize, per: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < readings {
        let d = (i / per) % DEVICES;
        let items: Vec<String> = (i..i + per)
            .map(|k| {
                let ts = 1_700_000_000_000i64 + (k / (DEVICES * per)) as i64 * 1000;
                format!(
                    r#"{{"ts":{ts},"v":{},"t":{}}}"#,
                    (k % 13) as f64 * 0.5,
                    k % 7
                )
            })
            .collect();
        let payload = if per == 1 {
            items[0].clone()
        } else {
            format!("[{}]", items.join(","))
        };
        out.push((format!("b/dev-{d:04}"), payload.into_bytes()));
        i += per;
    }
    out
}

async fn publish_all(url: &BrokerUrl, qos: QoS, id: &str, msgs: &[(String, Vec<u8>)]) {
    let mut p = MqttSink::start(url.clone(), id, qos);
    p.wait_connected(Duration::from_secs(10)).await.unwrap();
    for (t, m) in msgs {
        p.publish(t, m.clone(), false).await.unwrap();
    }
    let _ = p.flush(Duration::from_secs(60)).await;
    p.stop().await;
}

/// Waits until `count` stops growing for `idle`, or reaches `want`; returns the count
/// and when it last grew.
async fn settle(count: &AtomicU64, want: u64, idle: Duration) -> (u64, Instant) {
    let mut last = (count.load(Ordering::Relaxed), Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let n = count.load(Ordering::Relaxed);
        if n != last.0 {
            last = (n, Instant::now());
        }
        if n >= want || last.1.elapsed() > idle {
            return last;
        }
    }
}

async fn passthrough(
    url: &BrokerUrl,
    qos: QoS,
    msgs: &[(String, Vec<u8>)],
    per: usize,
) -> (f64, u64) {
    let mut o = SourceOptions::new(url.clone(), "bench-sub", vec!["b/#".into()]);
    o.qos = qos;
    let (mut src, mut rx) = MqttSource::start(o);
    src.wait_connected(Duration::from_secs(10)).await.unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let counter = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            // Count readings the way the engine would see them, without decoding.
            let n = if m.payload.first() == Some(&b'[') {
                per
            } else {
                1
            };
            g.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    let t0 = Instant::now();
    let want = (msgs.len() * per) as u64;
    let ((), (n, last)) = tokio::join!(
        publish_all(url, qos, "bench-pub-a", msgs),
        settle(&got, want, Duration::from_secs(3))
    );
    src.stop().await;
    counter.abort();
    (n as f64 / last.duration_since(t0).as_secs_f64(), want - n)
}

async fn engine(url: &BrokerUrl, qos: QoS, msgs: &[(String, Vec<u8>)], per: usize) -> (f64, u64) {
    let p = Pipeline::builder()
        .query_sql("e.sql", SQL)
        .build()
        .await
        .unwrap();
    let mut opts = RunOptions::new("bench-engine");
    opts.source_qos = qos;
    let mp = forewarn::mqtt::start(p, url, &opts, None).await.unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let h = mp.handle().clone();
    let g = got.clone();
    let poll = tokio::spawn(async move {
        loop {
            g.store(h.stats().readings_in, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let t0 = Instant::now();
    let want = (msgs.len() * per) as u64;
    let ((), (n, last)) = tokio::join!(
        publish_all(url, qos, "bench-pub-b", msgs),
        settle(&got, want, Duration::from_secs(3))
    );
    poll.abort();
    mp.stop().await.unwrap();
    (n as f64 / last.duration_since(t0).as_secs_f64(), want - n)
}

async fn latency(url: &BrokerUrl, batch_delay: Duration, trials: usize) -> (f64, f64, f64) {
    let cfg = EngineConfig {
        max_batch_delay: batch_delay,
        ..Default::default()
    };
    let p = Pipeline::builder()
        .query_sql("l.sql", LATENCY_SQL)
        .config(cfg)
        .build()
        .await
        .unwrap();
    let mp = forewarn::mqtt::start(p, url, &RunOptions::new("bench-lat"), None)
        .await
        .unwrap();
    let (mut sub, mut rx) = MqttSource::start(SourceOptions::new(
        url.clone(),
        "bench-lat-sub",
        vec!["o/#".into()],
    ));
    sub.wait_connected(Duration::from_secs(10)).await.unwrap();
    let mut publ = MqttSink::start(url.clone(), "bench-lat-pub", QoS::AtLeastOnce);
    publ.wait_connected(Duration::from_secs(10)).await.unwrap();
    let base = 1_700_000_000_000i64;
    let mut lat = Vec::new();
    publ.publish(
        "b/d1",
        format!(r#"{{"ts":{base},"v":1}}"#).into_bytes(),
        false,
    )
    .await
    .unwrap();
    for k in 1..=trials as i64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sent = Instant::now();
        // Event time k s: the watermark passes the end of window k-1.
        publ.publish(
            "b/d1",
            format!(r#"{{"ts":{},"v":1}}"#, base + k * 1000).into_bytes(),
            false,
        )
        .await
        .unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(matches!(m, Ok(Some(_))), "no result for window {k}");
        lat.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    sub.stop().await;
    publ.stop().await;
    mp.stop().await.unwrap();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.99), lat[lat.len() - 1])
}

fn main() {
    // As the `forewarn` command does (`forewarn run` is what a deployment runs); the
    // pass-through side runs in this process with it too.
    forewarn::keep_freed_memory();
    let Some(bin) = mosquitto::mosquitto_binary() else {
        eprintln!("e2e: mosquitto not found; install it (apt-get install mosquitto)");
        return;
    };
    let readings: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let dir = std::env::temp_dir().join(format!("fw-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Stock mosquitto drops QoS 1 messages beyond 1,000 queued per client; the same
    // raised limit applies to the baseline and the engine.
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 0\n"),
    )
    .unwrap();
    let broker = mosquitto::start_mosquitto_conf(&bin, port, &conf).expect("mosquitto starts");
    let url = BrokerUrl::parse(&format!("mqtt://127.0.0.1:{port}")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("e2e through mosquitto on loopback: {readings} readings, {DEVICES} devices");
        println!(
            "{:<5} {:>4} {:>18} {:>8} {:>16} {:>8} {:>7}",
            "qos", "per", "pass-through rd/s", "lost", "engine rd/s", "lost", "ratio"
        );
        for (qos, qn) in [(QoS::AtMostOnce, 0), (QoS::AtLeastOnce, 1)] {
            for per in [1, 10] {
                if only.as_ref().is_some_and(|o| *o != format!("{qn}/{per}")) {
                    continue;
                }
                let msgs = messages(readings, per);
                let (base, base_lost) = passthrough(&url, qos, &msgs, per).await;
                let (eng, eng_lost) = engine(&url, qos, &msgs, per).await;
                println!(
                    "{qn:<5} {per:>4} {base:>18.0} {base_lost:>8} {eng:>16.0} {eng_lost:>8} {:>7.2}",
                    eng / base
                );
            }
        }
        for delay in [Duration::from_millis(100), Duration::from_millis(5)] {
            if only.is_some() {
                break;
            }
            let (p50, p99, max) = latency(&url, delay, 200).await;
            println!(
                "alert latency (max_batch_delay {} ms, 200 windows): p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
                delay.as_millis()
            );
        }
    });
    drop(broker);
    std::fs::remove_dir_all(&dir).ok();
}
