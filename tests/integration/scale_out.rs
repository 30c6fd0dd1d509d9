//! Scale-out on NATS JetStream: `forewarn run --nats` workers against nats-servers the
//! tests start on loopback (JetStream in a temporary directory, the MQTT listener on,
//! the subject mapping Forewarn prints). The plant publishes over MQTT to the NATS
//! listener; an external MQTT subscriber collects what the workers publish, and it is
//! compared with an uninterrupted single-process run of the same readings. Skips where
//! nats-server is not installed (`.ci/run` installs it).

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ckpt::{compare, forewarn_run, messages, observe, reference, wait_for_all, Proc, SQL};
use common::free_port;
use forewarn::mqtt::BrokerUrl;
use forewarn::Pipeline;
use serde_json::Value;

const PARTITIONS: u32 = 4;
const LEASE_TTL_MS: u64 = 3000;

/// The checkpoint tests' queries, reading the partitioned stream.
fn sql() -> String {
    let from = "WITH (connector = 'mqtt', topic = 'ck/+'";
    assert!(SQL.contains(from));
    SQL.replace(
        from,
        &format!("WITH (connector = 'nats', stream = 'READINGS', partitions = '{PARTITIONS}', topic = 'ck/+'"),
    )
}

fn nats_server() -> Option<String> {
    [
        "nats-server",
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
    ]
    .into_iter()
    .find(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })
    .map(str::to_string)
}

/// One nats-server: client, MQTT and (in a cluster) route ports.
struct Node {
    proc: Option<Proc>,
    client: u16,
    mqtt: u16,
}

impl Node {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client)
    }
    fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.terminate();
        }
    }
}

/// Starts `n` nats-servers (a cluster when n > 1) with JetStream, MQTT and `mappings`.
fn start_nats(bin: &str, dir: &Path, n: usize, mappings: &str) -> Vec<Node> {
    let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for i in 0..n {
        let (client, mqtt) = (free_port(), free_port());
        let store = dir.join(format!("js-{i}"));
        std::fs::create_dir_all(&store).unwrap();
        let cluster = if n > 1 {
            let others: Vec<String> = routes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            format!(
                "cluster {{\n  name: fw\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                routes[i],
                others.join(", ")
            )
        } else {
            String::new()
        };
        let conf = dir.join(format!("nats-{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{client}\njetstream {{\n  store_dir: {store:?}\n}}\nmqtt {{\n  listen: 127.0.0.1:{mqtt}\n}}\n{cluster}{mappings}"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join(format!("nats-{i}.log"))).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        nodes.push(Node {
            proc: Some(Proc(child)),
            client,
            mqtt,
        });
    }
    // Up when every MQTT listener accepts connections (it opens once JetStream is ready).
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in &nodes {
        while std::net::TcpStream::connect(("127.0.0.1", node.mqtt)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start: {}",
                std::fs::read_to_string(dir.join("nats-0.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    nodes
}

/// A fresh directory with the queries, an empty models directory and the workers'
/// forewarn.toml (3 s leases, checkpoints every 200 ms, `replicas` copies).
async fn job_dir(name: &str, replicas: usize) -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("forewarn-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["queries", "models"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("queries/ck.sql"), sql()).unwrap();
    std::fs::write(
        dir.join("forewarn.toml"),
        format!(
            "[checkpoint]\ninterval_ms = 200\n[nats]\nlease_ttl_ms = {LEASE_TTL_MS}\nreplicas = {replicas}\njob = \"{name}\"\n"
        ),
    )
    .unwrap();
    // The server mapping, as `forewarn run --print-nats-mappings` prints it.
    let p = Pipeline::builder()
        .query_sql("ck.sql", &sql())
        .build()
        .await
        .unwrap();
    let mappings = forewarn::nats::server_mappings(&p).unwrap();
    (dir, mappings)
}

fn worker(dir: &Path, nats: &str, mqtt: u16, id: &str, partitions: &str) -> Proc {
    let extra = [
        "--nats",
        nats,
        "--partitions",
        partitions,
        "--worker-id",
        id,
    ];
    forewarn_run(dir, mqtt, &extra, &format!("{id}.log"))
}

fn log(dir: &Path, id: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{id}.log"))).unwrap_or_default()
}

/// Partitions each worker holds now, from the lease bucket.
async fn holders(nats: &str, job: &str) -> BTreeMap<u32, String> {
    let n = forewarn::nats::Nats::connect(nats).await.unwrap();
    // Replicas as the workers create the bucket, should this call come first.
    let replicas = if job == "cluster" { 3 } else { 1 };
    let leases = n
        .leases(
            "forewarn_leases",
            replicas,
            "test-observer",
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for k in 0..PARTITIONS {
        if let Some(v) = leases.holder(&format!("{job}.part.{k}")).await.unwrap() {
            out.insert(k, v.worker);
        }
    }
    out
}

/// The workers' logs in `dir`, for a failure message.
fn all_logs(dir: &Path) -> String {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    names.retain(|p| p.extension().is_some_and(|e| e == "log"));
    names.sort();
    names
        .iter()
        .map(|p| {
            format!(
                "--- {}\n{}",
                p.display(),
                std::fs::read_to_string(p).unwrap_or_default()
            )
        })
        .collect()
}

/// Waits until the leases are held as `want(holders)` says, or panics after `limit`
/// with the workers' logs in `dir`.
async fn wait_holders(
    nats: &str,
    job: &str,
    dir: &Path,
    limit: Duration,
    want: impl Fn(&BTreeMap<u32, String>) -> bool,
) -> BTreeMap<u32, String> {
    let start = Instant::now();
    loop {
        let h = holders(nats, job).await;
        if want(&h) {
            return h;
        }
        assert!(
            start.elapsed() < limit,
            "leases after {limit:?}: {h:?}\n{}",
            all_logs(dir)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes the data set over MQTT QoS 1 to the NATS listener; `during(i)` runs after
/// message i.
async fn publish(url: &BrokerUrl, mut during: impl FnMut(usize)) -> usize {
    let publisher = common::connected_publisher(url, "scale-plant").await;
    let all = messages();
    let sent = all.len();
    for (i, (t, m)) in all.into_iter().enumerate() {
        publisher.publish(&t, m, false).await.unwrap();
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        during(i);
    }
    publisher.flush(Duration::from_secs(30)).await.unwrap();
    sent
}

type Got = Arc<Mutex<Vec<(String, Value)>>>;

/// SIGTERM to every worker first, then waits for each: stopped one after the other, a
/// worker still running takes over the partitions the first one released.
fn stop_workers(workers: Vec<(Proc, &str)>, dir: &Path) {
    for (w, _) in &workers {
        w.sigterm();
    }
    for (mut w, id) in workers {
        let status = w.0.wait().unwrap();
        assert!(status.success(), "{id} exits cleanly: {}", log(dir, id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_over_four_partitions_match_one_process() {
    let Some(bin) = nats_server() else {
        eprintln!("SKIPPED: nats-server is not installed; .ci/run installs it");
        return;
    };
    let want = reference().await;
    let (dir, mappings) = job_dir("scale2", 1).await;
    let nodes = start_nats(&bin, &dir, 1, &mappings);
    let nats = nodes[0].url();
    let url = BrokerUrl::new("127.0.0.1", nodes[0].mqtt);
    let (sub, got): (_, Got) = observe(&url, "scale2-observer", false).await;
    let w1 = worker(&dir, &nats, nodes[0].mqtt, "w1", "auto");
    let w2 = worker(&dir, &nats, nodes[0].mqtt, "w2", "auto");
    // Each takes a fair share: two partitions.
    let h = wait_holders(&nats, "scale2", &dir, Duration::from_secs(30), |h| {
        h.len() == 4 && h.values().filter(|w| *w == "w1").count() == 2
    })
    .await;
    eprintln!("leases: {h:?}");
    let sent = publish(&url, |_| {}).await;
    wait_for_all(&want, &got).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_workers(vec![(w1, "w1"), (w2, "w2")], &dir);
    let mismatched = compare(&want, &got.lock().unwrap(), sent);
    assert!(mismatched.is_empty(), "{mismatched:?}");
    // Both workers did part of the work. At least two each, not exactly: under a loaded
    // machine a worker once handed a partition over and took it back (share computed as
    // 1 while NATS stalled), with the results still exact.
    for id in ["w1", "w2"] {
        let acquired = log(&dir, id).matches("partition acquired").count();
        assert!(acquired >= 2, "{id} acquired {acquired}: {}", log(&dir, id));
    }
    // The server put every reading in the partition Forewarn computes for its device.
    let n = forewarn::nats::Nats::connect(&nats).await.unwrap();
    let mut stored = 0;
    for k in 0..PARTITIONS {
        let mut r = n.read_partition("READINGS", k, None, 10_000).await.unwrap();
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), r.rx.recv()).await
        {
            let device = m.topic.strip_prefix("ck/").unwrap();
            assert_eq!(
                forewarn::nats::partition_of(device, PARTITIONS),
                k,
                "{}",
                m.topic
            );
            stored += 1;
        }
    }
    assert_eq!(stored, sent, "every reading stored once");
    // The job's partition count is fixed while its checkpoints exist.
    std::fs::write(
        dir.join("queries/ck.sql"),
        sql().replace("partitions = '4'", "partitions = '2'"),
    )
    .unwrap();
    let mut w3 = worker(&dir, &nats, nodes[0].mqtt, "w3", "auto");
    let status = w3.0.wait().unwrap();
    let l3 = log(&dir, "w3");
    assert!(!status.success(), "{l3}");
    assert!(
        l3.contains("runs stream/partitions READINGS/4, the queries declare READINGS/2"),
        "{l3}"
    );
    sub.stop().await;
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_one_worker_the_other_takes_over() {
    let Some(bin) = nats_server() else {
        eprintln!("SKIPPED: nats-server is not installed; .ci/run installs it");
        return;
    };
    let want = reference().await;
    let (dir, mappings) = job_dir("takeover", 1).await;
    let nodes = start_nats(&bin, &dir, 1, &mappings);
    let nats = nodes[0].url();
    let url = BrokerUrl::new("127.0.0.1", nodes[0].mqtt);
    let (sub, got): (_, Got) = observe(&url, "takeover-observer", false).await;
    let w1 = worker(&dir, &nats, nodes[0].mqtt, "w1", "auto");
    let w2 = worker(&dir, &nats, nodes[0].mqtt, "w2", "auto");
    wait_holders(&nats, "takeover", &dir, Duration::from_secs(30), |h| {
        h.len() == 4 && h.values().filter(|w| *w == "w1").count() == 2
    })
    .await;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    let total = messages().len();
    let kill_at = total / 4 + seed % (total / 2);
    let mut w2 = Some(w2);
    let mut killed_at = None;
    let sent = publish(&url, |i| {
        if i + 1 == kill_at {
            let mut w = w2.take().unwrap();
            w.0.kill().unwrap(); // SIGKILL
            w.0.wait().unwrap();
            killed_at = Some(Instant::now());
        }
    })
    .await;
    let killed_at = killed_at.expect("killed mid-stream");
    // The survivor holds all four once w2's leases expire.
    wait_holders(&nats, "takeover", &dir, Duration::from_secs(30), |h| {
        h.len() == 4 && h.values().all(|w| w == "w1")
    })
    .await;
    let takeover = killed_at.elapsed();
    eprintln!(
        "killed w2 after {kill_at} of {total} readings; w1 held all partitions {} ms after the kill (lease {LEASE_TTL_MS} ms)",
        takeover.as_millis()
    );
    wait_for_all(&want, &got).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_workers(vec![(w1, "w1")], &dir);
    let l1 = log(&dir, "w1");
    assert!(
        l1.matches("partition acquired").count() >= 4,
        "w1 took over: {l1}"
    );
    let mismatched = compare(&want, &got.lock().unwrap(), sent);
    assert!(mismatched.is_empty(), "{mismatched:?}");
    // Within the lease time plus a renewal period (and the poll's own slack).
    assert!(
        takeover < Duration::from_millis(LEASE_TTL_MS + LEASE_TTL_MS / 3 + 2000),
        "takeover took {takeover:?}"
    );
    sub.stop().await;
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The plant publishes over NATS itself (each reading acknowledged by JetStream, the
/// server mapping applies as for MQTT), and the worker publishes its outputs to a
/// separate MQTT broker: with nats-server 2.9.10 the MQTT listener of a cluster stalls
/// when a node goes (its internal streams report no quorum), see docs/scale-out.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_loses_a_node_mid_stream() {
    let Some(bin) = nats_server() else {
        eprintln!("SKIPPED: nats-server is not installed; .ci/run installs it");
        return;
    };
    let want = reference().await;
    let (dir, mappings) = job_dir("cluster", 3).await;
    let mut nodes = start_nats(&bin, &dir, 3, &mappings);
    let all_urls = nodes.iter().map(Node::url).collect::<Vec<_>>().join(",");
    // JetStream answers once the cluster has a leader: wait until the readings stream
    // (three copies) can be made.
    let n = forewarn::nats::Nats::connect(&all_urls).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = n
        .ensure_stream("READINGS", 3, Duration::from_secs(3600))
        .await
    {
        assert!(
            Instant::now() < deadline,
            "JetStream cluster not ready: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = forewarn::mqtt::EmbeddedBroker::start().unwrap();
    let (sub, got): (_, Got) = observe(&out.url(), "cluster-observer", false).await;
    let w1 = worker(&dir, &all_urls, out.addr().port(), "w1", "0-3");
    wait_holders(&all_urls, "cluster", &dir, Duration::from_secs(60), |h| {
        h.len() == 4
    })
    .await;
    let js = n.jetstream();
    let all = messages();
    let total = all.len();
    // Like a careful plant: each reading is stored (acknowledged) before the next, and
    // a failed publish (a leader election after the node goes) is retried with the same
    // message id, which the stream de-duplicates.
    let mut retries = 0;
    for (i, (t, m)) in all.into_iter().enumerate() {
        let subject = forewarn::nats::topic_to_subject(&t);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let msg = forewarn::nats::async_nats::jetstream::message::PublishMessage::build()
                .payload(m.clone().into())
                .message_id(format!("r{i}"));
            let stored = match js.send_publish(subject.clone(), msg).await {
                Ok(ack) => tokio::time::timeout(Duration::from_secs(10), ack)
                    .await
                    .is_ok_and(|r| r.is_ok()),
                Err(_) => false,
            };
            if stored {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "reading {i} not stored within 60 s"
            );
            retries += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if i + 1 == total / 2 {
            nodes[2].stop();
            eprintln!("node n2 stopped after {} of {total} readings", i + 1);
        }
    }
    eprintln!("publishes retried: {retries}");
    wait_for_all(&want, &got).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_workers(vec![(w1, "w1")], &dir);
    let mismatched = compare(&want, &got.lock().unwrap(), total);
    assert!(mismatched.is_empty(), "{mismatched:?}");
    sub.stop().await;
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
