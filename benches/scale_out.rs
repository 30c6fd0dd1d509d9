//! Scale-out throughput: one `forewarn run --nats` worker holding all four partitions,
//! next to two workers holding two each, over the same readings preloaded into a
//! JetStream stream (nats-server on loopback, started here).
//!
//! `cargo bench --bench scale_out [-- READINGS]` (default 200,000: 1,000 devices, one
//! reading a second each). Needs `nats-server` on PATH.
//!
//! The rate is readings over the time from the moment every partition's lease is held
//! (the workers then read the backlog as fast as they can) to the moment an external
//! MQTT subscriber has every window result (tumbling 10 s per device, published QoS 1 to
//! the NATS MQTT listener). Each configuration runs twice, alternating, under a fresh job
//! name (so without checkpoints).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use forewarn::mqtt::{BrokerUrl, MqttSource, SourceOptions};
use forewarn::nats::{topic_to_subject, Nats};
use forewarn::Pipeline;

const PARTITIONS: u32 = 4;
const DEVICES: usize = 1000;
const SQL: &str = "
CREATE TABLE src (device TEXT, ts TIMESTAMP, v DOUBLE, t DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH (connector = 'nats', stream = 'BENCH', partitions = '4', topic = 'b/+',
        topic_template = 'b/{device}');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
INSERT INTO out SELECT device, window_start, count(*) AS n, avg(v) AS avg_v, max(t) AS max_t
FROM src GROUP BY tumble(interval '10 seconds'), device;";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let readings: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let dir = std::env::temp_dir().join(format!("forewarn-bench-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("queries")).unwrap();
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(dir.join("queries/b.sql"), SQL).unwrap();
    let p = Pipeline::builder()
        .query_sql("b.sql", SQL)
        .build()
        .await
        .unwrap();
    let mappings = forewarn::nats::server_mappings(&p).unwrap();
    drop(p);
    let (client, mqtt) = (free_port(), free_port());
    std::fs::write(
        dir.join("nats.conf"),
        format!(
            "server_name: bench\nlisten: 127.0.0.1:{client}\njetstream {{\n  store_dir: {:?}\n}}\nmqtt {{\n  listen: 127.0.0.1:{mqtt}\n}}\n{mappings}",
            dir.join("js")
        ),
    )
    .unwrap();
    let _server = Proc(
        Command::new("nats-server")
            .arg("-c")
            .arg(dir.join("nats.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", mqtt)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("nats://127.0.0.1:{client}");
    let nats = Nats::connect(&url).await.unwrap();
    nats.ensure_stream("BENCH", 1, Duration::from_secs(3600))
        .await
        .unwrap();
    // Preload: one reading a second per device, acknowledged by JetStream.
    let js = nats.jetstream();
    let mut pending = std::collections::VecDeque::new();
    for i in 0..readings {
        let d = i % DEVICES;
        let ts = 1_700_000_000_000i64 + (i / DEVICES) as i64 * 1000;
        let payload = format!(
            r#"{{"ts":{ts},"v":{},"t":{}}}"#,
            (i % 13) as f64 * 0.5,
            i % 7
        );
        pending.push_back(
            js.publish(topic_to_subject(&format!("b/d{d}")), payload.into())
                .await
                .unwrap(),
        );
        while pending.len() > 1000 {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    for a in pending {
        a.await.unwrap();
    }
    let seconds = readings.div_ceil(DEVICES);
    // Windows the watermark closes: every 10 s window ending at or before the last
    // reading's time minus the 1 s delay.
    let expected = ((seconds as i64 - 1 - 1) / 10) as u64 * DEVICES as u64;
    let out = BrokerUrl::new("127.0.0.1", mqtt);
    println!(
        "scale-out: {readings} readings of {DEVICES} devices preloaded into a 4-partition stream; {expected} window results per run"
    );
    println!(
        "{:<34} {:>14} {:>10}",
        "configuration", "readings/s", "seconds"
    );
    let mut rates: Vec<(usize, f64)> = Vec::new();
    for (run, workers) in [1usize, 2, 1, 2].into_iter().enumerate() {
        let job = format!("bench{run}");
        std::fs::write(
            dir.join(format!("{job}.toml")),
            format!("[nats]\njob = \"{job}\"\nlease_ttl_ms = 3000\n"),
        )
        .unwrap();
        let counted = Arc::new(AtomicU64::new(0));
        let mut opts =
            SourceOptions::new(out.clone(), &format!("{job}-observer"), vec!["o/#".into()]);
        opts.capacity = 100_000;
        let (sub, mut rx) = MqttSource::start(opts);
        let c = counted.clone();
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut sub = sub;
        sub.wait_connected(Duration::from_secs(10)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sets: &[&str] = if workers == 1 {
            &["0-3"]
        } else {
            &["0,1", "2,3"]
        };
        let procs: Vec<Proc> = sets
            .iter()
            .enumerate()
            .map(|(i, set)| {
                Proc(
                    Command::new(env!("CARGO_BIN_EXE_forewarn"))
                        .args(["run", "--broker", &format!("mqtt://127.0.0.1:{mqtt}")])
                        .args(["--nats", &url, "--partitions", set])
                        .args(["--worker-id", &format!("w{i}")])
                        .arg("--queries")
                        .arg(dir.join("queries"))
                        .arg("--models")
                        .arg(dir.join("models"))
                        .arg("--config")
                        .arg(dir.join(format!("{job}.toml")))
                        .env("RUST_LOG", "error")
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap(),
                )
            })
            .collect();
        // t0: every partition held.
        let leases = nats
            .leases(
                "forewarn_leases",
                1,
                "bench-observer",
                Duration::from_secs(1),
            )
            .await
            .unwrap();
        loop {
            let mut held = 0;
            for k in 0..PARTITIONS {
                if leases
                    .holder(&format!("{job}.part.{k}"))
                    .await
                    .unwrap()
                    .is_some()
                {
                    held += 1;
                }
            }
            if held == PARTITIONS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(600);
        while counted.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let got = counted.load(Ordering::Relaxed);
        assert!(got >= expected, "only {got} of {expected} window results");
        let rate = readings as f64 / secs;
        println!(
            "{:<34} {:>14.0} {:>10.2}",
            format!("{workers} worker(s), {} partitions each", 4 / workers),
            rate,
            secs
        );
        rates.push((workers, rate));
        drop(procs);
        sub.stop().await;
    }
    let mean = |w: usize| {
        let v: Vec<f64> = rates.iter().filter(|r| r.0 == w).map(|r| r.1).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    println!(
        "two workers / one worker: {:.2} (both on this 2-core machine, with nats-server)",
        mean(2) / mean(1)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
