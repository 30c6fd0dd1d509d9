//! `forewarn simulate`: publish the simulated plant to a broker.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use forewarn::connect::sparkplug::{is_rebirth_request, Publication};
use forewarn::mqtt::{BrokerUrl, LastWill, MqttSink, MqttSource, QoS, SourceOptions};
use forewarn_sim::{Plant, PlantConfig, SparkplugPlant, Truth};

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Broker URL, e.g. mqtt://127.0.0.1:1883 (tcp:// too; mqtts://, ssl:// or tls:// for TLS).
    #[arg(long)]
    broker: String,
    #[command(flatten)]
    plant: PlantArgs,
    /// Wall-clock seconds over which the simulated span is played.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Write the ground truth (which machine fails, how, from when) as JSON here.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Publish as Sparkplug B edge nodes (one per site line, group = site) instead of
    /// JSON on plant/{site}/{line}/{device}/telemetry.
    #[arg(long, conflicts_with = "waveforms")]
    sparkplug: bool,
}

/// Options shared by every command that simulates the plant.
#[derive(clap::Args, Debug, Clone)]
pub struct PlantArgs {
    /// Seed: the same seed gives the same plant.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Machines (split over pumps, motors and compressors).
    #[arg(long, default_value_t = 240)]
    pub machines: usize,
    /// Simulated span, seconds of event time.
    #[arg(long, default_value_t = 3600)]
    pub sim_seconds: i64,
    /// Fraction of machines that develop a failure.
    #[arg(long, default_value_t = 0.2)]
    pub failing: f64,
    /// Also send each machine's bearing vibration waveform (4,096 samples at 10 kHz,
    /// f32le, once a minute) with `rpm` and `fs` fields, for queries/vibration/.
    #[arg(long)]
    pub waveforms: bool,
}

impl PlantArgs {
    pub fn config(&self) -> PlantConfig {
        PlantConfig {
            seed: self.seed,
            machines: self.machines,
            duration_s: self.sim_seconds,
            failing_fraction: self.failing,
            waveforms: self.waveforms.then(forewarn_sim::WaveformConfig::default),
            ..Default::default()
        }
    }
}

/// Publishes the plant over `wall` seconds, as JSON or as Sparkplug B; returns the truth
/// and the number of readings.
pub async fn publish_plant(
    url: &BrokerUrl,
    cfg: PlantConfig,
    wall: Duration,
    sparkplug: bool,
) -> anyhow::Result<(Truth, u64)> {
    if sparkplug {
        return publish_sparkplug(url, cfg, wall).await;
    }
    let mut sink = MqttSink::start(
        url.clone(),
        &format!("forewarn-sim-{}", cfg.seed),
        QoS::AtLeastOnce,
    );
    sink.wait_connected(Duration::from_secs(10))
        .await
        .context("simulator could not connect")?;
    let mut plant = Plant::new(cfg.clone());
    let truth = plant.truth();
    let speed = cfg.duration_s as f64 / wall.as_secs_f64().max(0.001);
    let t0 = tokio::time::Instant::now();
    let mut n = 0u64;
    while !plant.done() {
        let sim_elapsed = (plant.now_ms() - cfg.start_ms) as f64 / 1000.0;
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(sim_elapsed / speed)).await;
        for (topic, reading) in plant.step() {
            sink.publish(&topic, serde_json::to_vec(&reading)?, false)
                .await?;
            n += 1;
        }
    }
    sink.flush(Duration::from_secs(60)).await?;
    sink.stop().await;
    Ok((truth, n))
}

/// The plant as Sparkplug B edge nodes, each on a connection of its own whose will is
/// its NDEATH. A rebirth request (NCMD `Node Control/Rebirth`) makes the node send its
/// NBIRTH again and each device its DBIRTH with its next reading. Published with QoS 1:
/// the specification asks QoS 0 for births and data, but a lost DBIRTH would leave a
/// device unreadable, and the demo compares detection reading for reading.
async fn publish_sparkplug(
    url: &BrokerUrl,
    cfg: PlantConfig,
    wall: Duration,
) -> anyhow::Result<(Truth, u64)> {
    let mut plant = Plant::new(cfg.clone());
    let truth = plant.truth();
    let mut spb = SparkplugPlant::new(&truth, 0);
    let mut sinks = Vec::new();
    for (i, n) in spb.nodes().iter().enumerate() {
        let (topic, payload) = spb.death(i);
        let will = LastWill {
            topic,
            payload,
            qos: QoS::AtLeastOnce,
            retain: false,
        };
        let id = format!("forewarn-sim-{}-{}-{}", cfg.seed, n.group(), n.node());
        sinks.push(MqttSink::start_with_will(
            url.clone(),
            &id,
            QoS::AtLeastOnce,
            will,
        ));
    }
    for s in &mut sinks {
        s.wait_connected(Duration::from_secs(10))
            .await
            .context("simulator could not connect")?;
    }
    // Rebirth requests from hosts (the engine, when it started after the births).
    let filters = spb
        .nodes()
        .iter()
        .map(|n| format!("spBv1.0/{}/NCMD/{}", n.group(), n.node()))
        .collect();
    let (mut commands, mut ncmd) = MqttSource::start(SourceOptions::new(
        url.clone(),
        &format!("forewarn-sim-{}-ncmd", cfg.seed),
        filters,
    ));
    commands.wait_connected(Duration::from_secs(10)).await?;
    for b in spb.births(plant.now_ms()) {
        send(&sinks, b).await?;
    }
    let speed = cfg.duration_s as f64 / wall.as_secs_f64().max(0.001);
    let t0 = tokio::time::Instant::now();
    let mut n = 0u64;
    while !plant.done() {
        let sim_elapsed = (plant.now_ms() - cfg.start_ms) as f64 / 1000.0;
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(sim_elapsed / speed)).await;
        while let Ok(m) = ncmd.try_recv() {
            let mut parts = m.topic.split('/').skip(1);
            let (Some(group), _, Some(node)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if is_rebirth_request(&m.payload) {
                if let Some(b) = spb.rebirth(group, node, plant.now_ms()) {
                    eprintln!("rebirth requested: spBv1.0/{group}/NBIRTH/{node} sent again");
                    send(&sinks, b).await?;
                }
            }
        }
        for (_, reading) in plant.step() {
            send(&sinks, spb.encode(&reading)?).await?;
            n += 1;
        }
    }
    commands.stop().await;
    // The plant stops: each edge node says so before disconnecting (a clean disconnect
    // does not fire the will).
    for (i, s) in sinks.iter().enumerate() {
        let (topic, payload) = spb.death(i);
        s.publish(&topic, payload, false).await?;
    }
    for s in sinks {
        s.flush(Duration::from_secs(60)).await?;
        s.stop().await;
    }
    Ok((truth, n))
}

/// Publishes a message on the connection of its edge node.
async fn send(
    sinks: &[MqttSink],
    (i, (topic, payload)): (usize, Publication),
) -> anyhow::Result<()> {
    Ok(sinks[i].publish(&topic, payload, false).await?)
}

pub async fn simulate(a: SimulateArgs) -> anyhow::Result<ExitCode> {
    let url = BrokerUrl::parse(&a.broker)?;
    url.resolve().await?;
    let cfg = a.plant.config();
    eprintln!(
        "simulating {} machines, {} s of event time over {:.0} s, publishing {} to {url}",
        cfg.machines,
        cfg.duration_s,
        a.duration,
        if a.sparkplug {
            "Sparkplug B (group = site, edge node = line)"
        } else {
            "JSON"
        }
    );
    let (truth, n) =
        publish_plant(&url, cfg, Duration::from_secs_f64(a.duration), a.sparkplug).await?;
    if let Some(p) = &a.truth {
        std::fs::write(p, serde_json::to_vec_pretty(&truth)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    eprintln!("published {n} readings");
    Ok(ExitCode::SUCCESS)
}
