//! `forewarn demo --sparkplug`: the simulated plant published as Sparkplug B edge nodes
//! (births, aliased data, deaths) detects the same failures as the same plant over JSON.
//! In process, the two runs push the same seed's readings through the shipped queries
//! (`queries/plant_health.sql` and `queries/sparkplug/plant_health.sql`) and models; the
//! Sparkplug messages go through the source's session exactly as the live input feeds it.
//! Then the CLI itself: `forewarn demo --sparkplug` over the embedded broker gives the
//! JSON demo's detection summary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use forewarn::connect::sparkplug::{Action, Session, SparkplugSource};
use forewarn::{Output, Pipeline, PipelineHandle, TransitionKind};
use forewarn_sim::{Plant, PlantConfig, SparkplugPlant};

/// The transitions of a run: (device, window end in ms, kind) → the whole message.
type Seen = BTreeMap<(String, i64, String), serde_json::Value>;

fn plant() -> Plant {
    Plant::new(PlantConfig {
        seed: 5,
        machines: 24,
        duration_s: 2400,
        ..Default::default()
    })
}

async fn pipeline(queries: &str) -> Pipeline {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Pipeline::builder()
        .query_file(root.join(queries))
        .models_dir(root.join("models"))
        .build()
        .await
        .unwrap()
}

/// Runs `feed` against `pipeline`: the transitions and the number of dead letters.
async fn run<F, Fut>(pipeline: Pipeline, feed: F) -> (Seen, usize)
where
    F: FnOnce(PipelineHandle) -> Fut,
    Fut: std::future::Future<Output = PipelineHandle>,
{
    let (handle, mut rx) = pipeline.start();
    let collector = tokio::spawn(async move {
        let (mut seen, mut dead) = (Seen::new(), 0);
        while let Some(o) = rx.recv().await {
            match o {
                Output::Transition { message, .. } => {
                    let kind = format!("{:?}", message.transition);
                    let end = message.window_end.as_millis();
                    let json = serde_json::to_value(&message).unwrap();
                    let key = (message.device.clone(), end, kind);
                    assert!(seen.insert(key, json).is_none(), "a transition twice");
                }
                Output::DeadLetter { letter, .. } => {
                    eprintln!("dead letter: {letter:?}");
                    dead += 1;
                }
                _ => {}
            }
        }
        (seen, dead)
    });
    let handle = feed(handle).await;
    handle.finish().await.unwrap();
    drop(handle);
    collector.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plant_over_sparkplug_detects_what_it_detects_over_json() {
    let (json, json_dead) = run(pipeline("queries/plant_health.sql").await, |h| async move {
        let mut plant = plant();
        while !plant.done() {
            for (topic, reading) in plant.step() {
                h.push_json(&topic, serde_json::to_vec(&reading).unwrap())
                    .await
                    .unwrap();
            }
        }
        h
    })
    .await;

    let spb_pipeline = pipeline("queries/sparkplug/plant_health.sql").await;
    // The source's session, built from its declared columns as the live input builds it.
    let source = &spb_pipeline.sources()[0];
    let settings = source.connector.get::<SparkplugSource>().unwrap().clone();
    let columns: Vec<String> = source
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut session = Session::new(settings, &columns, Some(&source.event_time));
    let name = source.name.clone();
    // NBIRTH, DBIRTH and DDATA messages; whether a DDATA had seq 0 (wrapped).
    let counted = std::sync::Arc::new(std::sync::Mutex::new(([0usize; 3], false)));
    let count = counted.clone();
    let (spb, spb_dead) = run(spb_pipeline, |h| async move {
        let mut plant = plant();
        let mut spb = SparkplugPlant::new(&plant.truth(), 0);
        let mut messages = spb.births(plant.now_ms());
        let mut feed = |messages: &mut Vec<(usize, (String, Vec<u8>))>| {
            let mut actions = Vec::new();
            let mut c = count.lock().unwrap();
            for (_, (topic, payload)) in messages.drain(..) {
                for (i, kind) in ["/NBIRTH/", "/DBIRTH/", "/DDATA/"].iter().enumerate() {
                    c.0[i] += usize::from(topic.contains(kind));
                }
                let p: forewarn::connect::sparkplug::proto::Payload =
                    prost::Message::decode(payload.as_slice()).unwrap();
                c.1 |= p.seq == Some(0) && topic.contains("/DDATA/");
                actions.extend(session.handle(&topic, &payload, 0));
            }
            actions
        };
        let mut actions = feed(&mut messages);
        while !plant.done() {
            for (_, reading) in plant.step() {
                messages.push(spb.encode(&reading).unwrap());
            }
            actions.extend(feed(&mut messages));
            for a in actions.drain(..) {
                match a {
                    Action::Rows(rows) => h.push_readings_to(&name, Box::new(rows)).await.unwrap(),
                    Action::Presence { device, online } => {
                        h.presence(&device, online).await.unwrap()
                    }
                    other => panic!("the plant's Sparkplug messages were refused: {other:?}"),
                }
            }
        }
        h
    })
    .await;
    let (counts, seqs_wrapped) = *counted.lock().unwrap();
    assert_eq!(counts[0], 12, "one edge node per site line");
    assert_eq!(counts[1], 24, "one DBIRTH per machine");
    assert!(
        counts[2] > 256 * 12 && seqs_wrapped,
        "seq wraps: {counts:?}"
    );
    assert_eq!((json_dead, spb_dead), (0, 0));
    println!(
        "{} transitions of {} machines; messages: {counts:?} (NBIRTH, DBIRTH, DDATA)",
        json.len(),
        json.keys().map(|k| &k.0).collect::<BTreeSet<_>>().len()
    );
    let devices: BTreeSet<&str> = json.keys().map(|k| k.0.as_str()).collect();
    assert!(
        devices.len() >= 3,
        "too few alerted machines to compare: {json:?}"
    );
    let raised = format!("{:?}", TransitionKind::Raised);
    assert!(json.keys().any(|k| k.2 == raised));
    // The same transitions of the same devices at the same window ends, exactly.
    assert_eq!(
        spb.keys().collect::<Vec<_>>(),
        json.keys().collect::<Vec<_>>()
    );
    // And the same messages: ids, states, scores, features and explanations (numbers to
    // 1e-9 relative, as sums may be added up in another order).
    for (k, want) in &json {
        assert!(
            crate::common::ckpt::same(&spb[k], want),
            "{k:?}:\n  sparkplug {}\n  json      {want}",
            spb[k]
        );
    }
}

/// The CLI over the embedded broker: `forewarn demo --sparkplug` (one MQTT connection
/// per edge node, NDEATH as will) prints the JSON demo's detection summary.
#[test]
fn the_sparkplug_demo_gives_the_json_demo_summary() {
    let dir = std::env::temp_dir().join(format!("fw-spb-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let demo = |extra: &[&str], summary: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_forewarn"))
            .args(["demo", "--quiet", "--no-http", "--duration", "4"])
            .args(["--machines", "24", "--sim-seconds", "1800", "--seed", "3"])
            .args(["--summary", summary])
            .args(extra)
            .current_dir(&dir)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(summary)).unwrap()).unwrap();
        (stdout, s)
    };
    let (json_out, json) = demo(&[], "json.json");
    let (spb_out, spb) = demo(&["--sparkplug"], "spb.json");
    assert!(spb_out.contains("over Sparkplug B"), "{spb_out}");
    for out in [&json_out, &spb_out] {
        assert!(
            out.contains("rejected 0,") && out.contains("dead letters 0"),
            "{out}"
        );
    }
    assert!(json["detected"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(spb, json);
    std::fs::remove_dir_all(&dir).ok();
}

/// `forewarn simulate --sparkplug` as an edge node should behave: an engine that starts
/// after the births gets `no_birth` for the first data and asks each edge node for a
/// rebirth; the simulator answers (NBIRTH again, each device's DBIRTH with its next
/// reading) and the readings flow. Killed, its connections leave their wills: every
/// machine and edge node is offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_answers_rebirth_requests_and_its_will_takes_the_plant_offline() {
    use forewarn::mqtt::{MqttSource, SourceOptions};
    use std::time::Duration;

    let broker = forewarn::mqtt::EmbeddedBroker::start().unwrap();
    // An independent subscriber sees the births go out before the engine starts.
    let (mut watch, mut births) = MqttSource::start(SourceOptions::new(
        broker.url(),
        "spb-births",
        vec!["spBv1.0/+/NBIRTH/+".into()],
    ));
    watch.wait_connected(Duration::from_secs(10)).await.unwrap();
    let url = format!("mqtt://127.0.0.1:{}", broker.addr().port());
    let mut sim = std::process::Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .args(["simulate", "--sparkplug", "--broker", &url])
        .args([
            "--machines",
            "6",
            "--sim-seconds",
            "3600",
            "--duration",
            "60",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // 6 machines: sites i % 4, lines i % 3, six edge nodes.
    let mut nodes = BTreeSet::new();
    while nodes.len() < 6 {
        let m = tokio::time::timeout(Duration::from_secs(30), births.recv())
            .await
            .expect("the simulator's NBIRTHs")
            .unwrap();
        nodes.insert(m.topic);
    }
    watch.stop().await;
    // Let data flow that the engine will not have seen the births of.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (tap, mut outputs) = tokio::sync::mpsc::channel::<Output>(100_000);
    let run = forewarn::mqtt::start(
        pipeline("queries/sparkplug/plant_health.sql").await,
        &broker.url(),
        &forewarn::mqtt::RunOptions::new("spb-late"),
        Some(tap),
    )
    .await
    .unwrap();
    let h = run.handle();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while h.stats().readings_in < 60 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Killed: no NDEATH of its own, the broker publishes the wills.
    sim.kill().unwrap();
    let out = sim.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let offline = |got: &[Output], device: &str| {
        got.iter().any(|o| matches!(o, Output::State { state, .. } if state.device == device && state.offline_since.is_some()))
    };
    let machines = [
        "pump-0001",
        "motor-0001",
        "compressor-0001",
        "pump-0002",
        "motor-0002",
        "compressor-0002",
    ];
    let edge_nodes = [
        "site1-line1",
        "site2-line2",
        "site3-line3",
        "site4-line1",
        "site1-line2",
        "site2-line3",
    ];
    let mut got: Vec<Output> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !machines.iter().chain(&edge_nodes).all(|d| offline(&got, d))
        && tokio::time::Instant::now() < deadline
    {
        if let Ok(Some(o)) = tokio::time::timeout(Duration::from_millis(100), outputs.recv()).await
        {
            got.push(o);
        }
    }
    let stats = run.stop().await.unwrap();
    while let Ok(o) = outputs.try_recv() {
        got.push(o);
    }
    for d in machines.iter().chain(&edge_nodes) {
        assert!(offline(&got, d), "{d} not offline after the will\n{stderr}");
    }
    assert!(stats.readings_in >= 60, "{stats:?}\n{stderr}");
    // Each edge node was asked for a rebirth and answered it.
    for n in edge_nodes {
        let group = n.split('-').next().unwrap();
        assert!(
            stderr.contains(&format!(
                "rebirth requested: spBv1.0/{group}/NBIRTH/{n} sent again"
            )),
            "{n}: {stderr}"
        );
    }
    // The data before the rebirths is refused as no_birth, and nothing else.
    let reasons: BTreeSet<String> = got
        .iter()
        .filter_map(|o| match o {
            Output::DeadLetter { letter, .. } => Some(format!("{:?}", letter.reason)),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, BTreeSet::from(["NoBirth".to_string()]));
}
