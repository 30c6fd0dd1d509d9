//! `forewarn demo`: the whole system on one machine with zero setup.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use forewarn::mqtt::{self, BrokerUrl, MqttSource, SourceOptions};
use forewarn::{DeviceState, Pipeline, TransitionKind, TransitionMessage};
use forewarn_sim::{summarize, AlertEvent};

use super::simulate::{publish_plant, PlantArgs};

/// The demo's queries and models, built into the binary so that `forewarn demo` works
/// from any directory (e.g. after `cargo install`): (file name for messages, contents).
const SHIPPED_QUERIES: &[(&str, &str)] = &[(
    "queries/plant_health.sql",
    include_str!("../../queries/plant_health.sql"),
)];
/// With `--sparkplug`: the same windows, features and models reading Sparkplug B.
const SHIPPED_SPARKPLUG_QUERIES: &[(&str, &str)] = &[(
    "queries/sparkplug/plant_health.sql",
    include_str!("../../queries/sparkplug/plant_health.sql"),
)];
const SHIPPED_MODELS: &[(&str, &str)] = &[
    (
        "models/compressor_gmm.json",
        include_str!("../../models/compressor_gmm.json"),
    ),
    (
        "models/motor_gmm.json",
        include_str!("../../models/motor_gmm.json"),
    ),
    (
        "models/pump_gmm.json",
        include_str!("../../models/pump_gmm.json"),
    ),
];

/// Where the demo serves its health page unless told otherwise.
const DEFAULT_HTTP: &str = "127.0.0.1:9464";

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Wall-clock seconds the demo runs (the simulated span, --sim-seconds, is compressed
    /// into it).
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Use this broker instead of starting the embedded one.
    #[arg(long)]
    broker: Option<String>,
    /// Query file or directory [default: the shipped queries/plant_health.sql, built in].
    #[arg(long, value_name = "PATH")]
    queries: Option<PathBuf>,
    /// Models directory [default: the shipped models/*.json, built in].
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,
    /// Also write the detection summary as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Print only the summary, not each alert.
    #[arg(long)]
    pub quiet: bool,
    /// Serve the device-health page (/), its API (/api), /metrics, /healthz and /readyz
    /// on this loopback address while the demo runs [default: 127.0.0.1:9464, or a
    /// free port when that one is taken].
    #[arg(long, value_name = "IP:PORT")]
    http: Option<std::net::SocketAddr>,
    /// Do not start the HTTP listener.
    #[arg(long, conflicts_with = "http")]
    no_http: bool,
    /// The plant publishes Sparkplug B (one edge node per site line, group = site: NBIRTH,
    /// DBIRTH, aliased DDATA, NDEATH as will) instead of JSON, and the shipped query reads
    /// it (queries/sparkplug/plant_health.sql, built in): the same models, the same
    /// device ids.
    #[arg(long, conflicts_with = "waveforms")]
    sparkplug: bool,
    /// Run the bearing fleet instead: machines sending vibration waveforms (some
    /// bearings developing an outer-race defect) through the shipped envelope query
    /// queries/vibration/bearing_envelope.sql. It serves no health page (`--http` is
    /// refused, `--no-http` changes nothing).
    #[arg(long, conflicts_with_all = ["queries", "models", "http", "sparkplug"])]
    vibration: bool,
    #[command(flatten)]
    plant: PlantArgs,
}

pub async fn demo(a: DemoArgs) -> anyhow::Result<ExitCode> {
    if a.vibration {
        let v = super::demo_vibration::VibrationDemo {
            duration: a.duration,
            broker: a.broker,
            quiet: a.quiet,
            summary: a.summary,
            plant: a.plant,
        };
        return super::demo_vibration::run(v, start_embedded).await;
    }
    let mut b = Pipeline::builder();
    b = match &a.queries {
        Some(q) => b.query_file(q),
        None if a.sparkplug => SHIPPED_SPARKPLUG_QUERIES
            .iter()
            .fold(b, |b, (file, sql)| b.query_sql(file, sql)),
        None => SHIPPED_QUERIES
            .iter()
            .fold(b, |b, (file, sql)| b.query_sql(file, sql)),
    };
    match &a.models {
        Some(m) => {
            let dir = super::models_dir(Some(m))?.expect("given");
            b = b.models_dir(dir);
        }
        None => {
            for (file, json) in SHIPPED_MODELS {
                let path = std::path::Path::new(file);
                let mut m = forewarn::Model::from_json(path, json.as_bytes())?;
                // As when loading the directory: the file stem is the name.
                if let Some(stem) = path.file_stem() {
                    m.name = stem.to_string_lossy().into_owned();
                }
                b = b.model(m);
            }
        }
    }
    // The health page's view of the fleet, fed only while the listener serves it.
    let cfg = forewarn::EngineConfig::default();
    let fleet = (!a.no_http).then(|| forewarn::http::Fleet::new(cfg.max_devices));
    b = b.config(forewarn::EngineConfig {
        window_observer: fleet.as_ref().map(|f| f.window_observer()),
        ..cfg
    });
    // Loaded first: a wrong query file fails before anything starts.
    let pipeline = b.build().await?;
    if let Some(f) = &fleet {
        f.describe(&pipeline);
    }

    let url = match &a.broker {
        Some(u) => {
            let url = BrokerUrl::parse(u)?;
            url.resolve().await?;
            url
        }
        None => start_embedded()?,
    };
    println!("broker: {url}");
    println!(
        "  watch alerts with: mosquitto_sub -h {} -p {} -t 'forewarn/alerts/#' -v",
        url.host, url.port
    );
    println!(
        "  fleet health (retained): mosquitto_sub -h {} -p {} -t 'forewarn/state/#' -v",
        url.host, url.port
    );
    println!(
        "queries: {}   models: {}",
        pipeline.query_names().join(", "),
        pipeline.models().names().join(", ")
    );

    // An independent subscriber: what an operator's dashboard would see.
    let (mut sub, mut alerts_rx) = MqttSource::start(SourceOptions::new(
        url.clone(),
        "forewarn-demo-subscriber",
        vec!["forewarn/alerts/#".into()],
    ));
    sub.wait_connected(Duration::from_secs(10)).await?;
    let quiet = a.quiet;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = received.clone();
    let printer = tokio::spawn(async move {
        let mut seen: Vec<TransitionMessage> = Vec::new();
        while let Some(m) = alerts_rx.recv().await {
            match serde_json::from_slice::<TransitionMessage>(&m.payload) {
                Ok(t) => {
                    if !quiet {
                        print_transition(&t);
                    }
                    seen.push(t);
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => eprintln!("unreadable alert on {}: {e}", m.topic),
            }
        }
        seen
    });

    let queries_loaded = pipeline.query_names();
    let running = mqtt::start(
        pipeline,
        &url,
        &mqtt::RunOptions::new("forewarn-engine"),
        fleet.as_ref().map(|f| f.tap()),
    )
    .await?;
    let http = match fleet {
        Some(fleet) => {
            let server = |addr| {
                super::run::ops_server(&running, addr, queries_loaded.clone()).fleet(fleet.clone())
            };
            let h = match a.http {
                Some(addr) => server(addr).start().await?,
                // The default port, or any free one when another program holds it.
                None => match server(DEFAULT_HTTP.parse()?).start().await {
                    Ok(h) => h,
                    Err(_) => server("127.0.0.1:0".parse()?).start().await?,
                },
            };
            println!(
                "health page: http://{}/   (also /api/devices, /metrics, /healthz, /readyz)",
                h.addr()
            );
            Some(h)
        }
        None => None,
    };
    let cfg = a.plant.config();
    println!(
        "simulating {} machines ({:.0}% developing a failure), {} s of plant time in {:.0} s{} ...\n",
        cfg.machines,
        cfg.failing_fraction * 100.0,
        cfg.duration_s,
        a.duration,
        if a.sparkplug {
            ", over Sparkplug B (spBv1.0/{site}/…/{site}-{line}/{device})"
        } else {
            ""
        }
    );
    let (truth, published) =
        publish_plant(&url, cfg, Duration::from_secs_f64(a.duration), a.sparkplug).await?;
    if !running
        .wait_for_messages(published, Duration::from_secs(60))
        .await
    {
        eprintln!(
            "warning: the engine received {} of {published} readings",
            running.handle().stats().messages_in
        );
    }
    if let Some(h) = http {
        h.stop().await;
    }
    let stats = running.stop().await?;
    // Every alert the engine published has been acknowledged by the broker; give the
    // subscriber a moment to receive the last ones.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if received.load(std::sync::atomic::Ordering::Relaxed) >= stats.transitions_out {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sub.stop().await;
    let alerts = printer.await?;
    let events: Vec<AlertEvent> = alerts
        .iter()
        .filter(|t| t.transition != TransitionKind::Cleared)
        .map(|t| AlertEvent {
            device: t.device.clone(),
            window_end_ms: t.window_end.as_millis(),
        })
        .collect();
    let summary = summarize(&truth, &events);
    println!(
        "\nreadings published {published}; engine: {}",
        stats.summary()
    );
    let refused: u64 = stats.rejected.values().sum();
    if stats.readings_in < published || refused > 0 {
        let reasons: Vec<String> = stats
            .rejected
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        println!(
            "WARNING: the detection below ran on partial data: {} of {published} readings \
             reached the engine{}{}",
            stats.readings_in,
            if refused > 0 { ", refused: " } else { "" },
            reasons.join(", ")
        );
        if a.sparkplug {
            println!(
                "  (Sparkplug B data is lost when the broker drops messages for a slow \
                 subscriber, e.g. mosquitto's max_queued_messages, and every gap costs \
                 a rebirth: see docs/connectors.md, Sparkplug B)"
            );
        }
    }
    let failing = truth.failing_devices();
    let per_machine = |d: &str| alerts.iter().filter(|t| t.device == d).count();
    if !failing.is_empty() {
        let counts: Vec<usize> = failing.iter().map(|d| per_machine(d)).collect();
        println!(
            "alert messages per failing machine: mean {:.1}, max {}",
            counts.iter().sum::<usize>() as f64 / counts.len() as f64,
            counts.iter().max().copied().unwrap_or(0)
        );
    }
    fleet_state(&url).await?;
    println!(
        "\nDetection against the simulator's ground truth:\n{}",
        summary.table()
    );
    if let Some(p) = &a.summary {
        std::fs::write(p, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", p.display()))?;
        println!("summary written to {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// What a dashboard connecting after the run sees: the retained state of every device.
async fn fleet_state(url: &BrokerUrl) -> anyhow::Result<()> {
    let mut opts = SourceOptions::new(
        url.clone(),
        "forewarn-demo-late-subscriber",
        vec!["forewarn/state/#".into()],
    );
    // rumqttd hands a new QoS 1 subscription only as many retained messages as it has
    // free in-flight slots (the rest are dropped); at QoS 0 it sends up to its outgoing
    // packet limit (1000 in the embedded broker's configuration).
    opts.qos = mqtt::QoS::AtMostOnce;
    let (mut sub, mut rx) = MqttSource::start(opts);
    sub.wait_connected(Duration::from_secs(10)).await?;
    let mut by_health: std::collections::BTreeMap<String, usize> = Default::default();
    let mut devices = 0;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await {
        if let Ok(s) = serde_json::from_slice::<DeviceState>(&m.payload) {
            *by_health
                .entry(format!("{:?}", s.state).to_lowercase())
                .or_default() += 1;
            devices += 1;
        }
    }
    sub.stop().await;
    println!(
        "fleet health seen by a subscriber connecting now (retained forewarn/state/#): {devices} devices, {}",
        by_health
            .iter()
            .map(|(h, n)| format!("{h} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn print_transition(t: &TransitionMessage) {
    let time = |t: &forewarn_core::Timestamp| {
        let s = t.to_string();
        s.get(11..19).unwrap_or(&s).to_string()
    };
    let last = t.windows.last();
    let feats: Vec<String> = last
        .map(|w| {
            w.features
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.as_f64().map_or(v.to_string(), |f| format!("{f:.2}"))
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let why = match &t.explanation {
        Some(e) => format!("why: {e}"),
        None => feats.join(" "),
    };
    println!(
        "{:<9} {:<16} {:<7} {}–{}  score {:>5.2}  {}  {}",
        format!("{:?}", t.transition).to_uppercase(),
        t.device,
        format!("{:?}", t.state).to_lowercase(),
        time(&t.window_start),
        time(&t.window_end),
        t.score.unwrap_or(f64::NAN),
        t.model.as_deref().unwrap_or("-"),
        why
    );
}

#[cfg(feature = "broker")]
fn start_embedded() -> anyhow::Result<BrokerUrl> {
    Ok(mqtt::EmbeddedBroker::start()?.url())
}

#[cfg(not(feature = "broker"))]
fn start_embedded() -> anyhow::Result<BrokerUrl> {
    anyhow::bail!(
        "this build has no embedded broker (feature 'broker'); pass --broker mqtt://HOST:PORT"
    )
}
