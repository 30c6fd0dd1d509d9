//! `forewarn simulate`: publish the simulated plant to a broker.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use forewarn::mqtt::{BrokerUrl, MqttSink, QoS};
use forewarn_sim::{Plant, PlantConfig, Truth};

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

/// Publishes the plant over `wall` seconds; returns the truth and the number of messages.
pub async fn publish_plant(
    url: &BrokerUrl,
    cfg: PlantConfig,
    wall: Duration,
) -> anyhow::Result<(Truth, u64)> {
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

pub async fn simulate(a: SimulateArgs) -> anyhow::Result<ExitCode> {
    let url = BrokerUrl::parse(&a.broker)?;
    url.resolve().await?;
    let cfg = a.plant.config();
    eprintln!(
        "simulating {} machines, {} s of event time over {:.0} s, publishing to {url}",
        cfg.machines, cfg.duration_s, a.duration
    );
    let (truth, n) = publish_plant(&url, cfg, Duration::from_secs_f64(a.duration)).await?;
    if let Some(p) = &a.truth {
        std::fs::write(p, serde_json::to_vec_pretty(&truth)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    eprintln!("published {n} readings");
    Ok(ExitCode::SUCCESS)
}
