//! Memory: peak resident set size of a gateway-style process (the library pipeline, no
//! broker) running tumbling 10 s windows over a fleet, at 1k, 10k and 100k devices, and
//! at 10k devices over a stream ten times longer (state must not grow with the stream).
//!
//! `cargo bench --bench memory` runs each configuration in a fresh child process (so the
//! peaks do not mix) and prints a table. A child: `memory -- child DEVICES SECONDS`.
//! Each device sends one JSON reading per second, in event-time order; the query keeps
//! count, avg, max and min per device per window. Reported: the peak RSS (VmHWM); the
//! RSS of the same process before the pipeline started (runtime and allocator), as the
//! baseline; and the peak of the anonymous part of RSS (heap and stacks, sampled every
//! 10 ms), which leaves out the executable's code pages that running DataFusion maps in.
//! Code pages are clean and shared: the kernel can drop them under pressure and every
//! process running the binary shares them; heap cannot be dropped.

use std::process::Command;

use forewarn::{Output, Pipeline};

const SQL: &str = "
CREATE TABLE src (device TEXT, ts TIMESTAMP, v DOUBLE, t DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH (connector = 'mqtt', topic = 'b/+', topic_template = 'b/{device}');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
INSERT INTO out SELECT device, window_start, count(*) AS n, avg(v) AS avg_v, max(t) AS max_t, min(v) AS min_v
FROM src GROUP BY tumble(interval '10 seconds'), device;";

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn child(devices: usize, seconds: usize) {
    let before = status_kb("VmRSS:");
    let peak_anon = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Runs until the process exits.
    let peak = peak_anon.clone();
    std::thread::spawn(move || loop {
        peak.fetch_max(status_kb("RssAnon:"), std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_millis(10));
    });
    let p = Pipeline::builder()
        .query_sql("m.sql", SQL)
        .build()
        .await
        .unwrap();
    let (h, mut rx) = p.without_wall_clock().start();
    let drain = tokio::spawn(async move {
        let mut windows = 0u64;
        while let Some(o) = rx.recv().await {
            if matches!(o, Output::Row { .. }) {
                windows += 1;
            }
        }
        windows
    });
    let topics: Vec<String> = (0..devices).map(|d| format!("b/dev-{d:06}")).collect();
    for s in 0..seconds {
        let ts = 1_700_000_000_000i64 + s as i64 * 1000;
        for (d, topic) in topics.iter().enumerate() {
            let payload = format!(
                r#"{{"ts":{ts},"v":{},"t":{}}}"#,
                (d % 13) as f64 * 0.5,
                s % 7
            );
            h.push_json(topic, payload.into_bytes()).await.unwrap();
        }
    }
    let stats = h.finish().await.unwrap();
    drop(h);
    let windows = drain.await.unwrap();
    // One result per device per 10 s window.
    assert_eq!(windows as usize, devices * seconds.div_ceil(10));
    peak_anon.fetch_max(status_kb("RssAnon:"), std::sync::atomic::Ordering::Relaxed);
    println!(
        "{} {} {} {} {}",
        stats.readings_in,
        windows,
        before,
        status_kb("VmHWM:"),
        peak_anon.load(std::sync::atomic::Ordering::Relaxed)
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if args.first().map(String::as_str) == Some("child") {
        let devices = args[1].parse().unwrap();
        let seconds = args[2].parse().unwrap();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(child(devices, seconds));
        return;
    }
    let me = std::env::current_exe().unwrap();
    println!("memory: tumbling 10 s windows, one reading per device per second, JSON in");
    println!(
        "{:>9} {:>8} {:>11} {:>9} {:>13} {:>9} {:>10} {:>14}",
        "devices",
        "seconds",
        "readings",
        "windows",
        "baseline MiB",
        "peak MiB",
        "added MiB",
        "peak anon MiB"
    );
    for (devices, seconds) in [(1_000, 60), (10_000, 60), (10_000, 600), (100_000, 30)] {
        let out = Command::new(&me)
            .args(["child", &devices.to_string(), &seconds.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout);
        let v: Vec<u64> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        let mib = |kb: u64| kb as f64 / 1024.0;
        println!(
            "{devices:>9} {seconds:>8} {:>11} {:>9} {:>13.1} {:>9.1} {:>10.1} {:>14.1}",
            v[0],
            v[1],
            mib(v[2]),
            mib(v[3]),
            mib(v[3].saturating_sub(v[2])),
            mib(v[4])
        );
    }
}
