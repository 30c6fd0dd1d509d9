//! `forewarn demo --vibration`: the simulated fleet with bearing vibration waveforms
//! (4,096 samples at 10 kHz per machine once a minute, some bearings developing an
//! outer-race defect) through the shipped envelope-analysis query, its bearing alerts
//! printed as they arrive and scored against the simulator's ground truth.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use forewarn::mqtt::{self, BrokerUrl, MqttSource, SourceOptions};
use forewarn::{Pipeline, WindowRow};
use forewarn_sim::{summarize, AlertEvent, FailureMode, Summary, Truth};
use serde::Serialize;

use super::simulate::{publish_plant, PlantArgs};

/// The bearing query, built into the binary like the default demo's queries.
const BEARING_QUERY: (&str, &str) = (
    "queries/vibration/bearing_envelope.sql",
    include_str!("../../queries/vibration/bearing_envelope.sql"),
);

/// What the vibration demo needs of `forewarn demo`'s options.
pub struct VibrationDemo {
    /// Wall-clock seconds over which the simulated span is played.
    pub duration: f64,
    /// A broker to use instead of the embedded one.
    pub broker: Option<String>,
    /// Print only the summary.
    pub quiet: bool,
    /// Also write the summary as JSON here.
    pub summary: Option<PathBuf>,
    /// The plant (waveforms are turned on).
    pub plant: PlantArgs,
}

/// The JSON written by `--summary`: the usual detection figures (scored on bearing
/// wear only), and which machines were alerted and which bearings wore.
#[derive(Serialize)]
struct VibrationSummary {
    #[serde(flatten)]
    summary: Summary,
    /// Machines with at least one bearing alert, sorted.
    alerted: Vec<String>,
    /// Machines whose bearing develops an outer-race defect, sorted.
    worn: Vec<String>,
}

/// The truth as the bearing query sees it: only bearing wear is a failure it should
/// find; a machine failing otherwise counts as healthy (an alert there is false).
fn bearing_truth(truth: &Truth) -> Truth {
    let mut t = truth.clone();
    for m in &mut t.machines {
        if m.failure
            .as_ref()
            .is_some_and(|f| f.mode != FailureMode::BearingWear)
        {
            m.failure = None;
        }
    }
    t
}

/// Runs the vibration demo.
pub async fn run(
    a: VibrationDemo,
    embedded: fn() -> anyhow::Result<BrokerUrl>,
) -> anyhow::Result<ExitCode> {
    let (file, sql) = BEARING_QUERY;
    let pipeline = Pipeline::builder().query_sql(file, sql).build().await?;
    let url = match &a.broker {
        Some(u) => {
            let url = BrokerUrl::parse(u)?;
            url.resolve().await?;
            url
        }
        None => embedded()?,
    };
    println!("broker: {url}");
    println!(
        "  watch bearing alerts with: mosquitto_sub -h {} -p {} -t 'forewarn/bearing/#' -v",
        url.host, url.port
    );
    println!("query: {file} (envelope at BPFO in 2-4 kHz, ISO 10816 velocity and zone, kurtosis)");

    let (mut sub, mut rx) = MqttSource::start(SourceOptions::new(
        url.clone(),
        "forewarn-demo-vibration-subscriber",
        vec!["forewarn/bearing/#".into()],
    ));
    sub.wait_connected(Duration::from_secs(10)).await?;
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let quiet = a.quiet;
    let printer = tokio::spawn(async move {
        let mut seen: Vec<WindowRow> = Vec::new();
        while let Some(m) = rx.recv().await {
            match serde_json::from_slice::<WindowRow>(&m.payload) {
                Ok(r) => {
                    if !quiet {
                        print_alert(&r);
                    }
                    seen.push(r);
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => eprintln!("unreadable bearing alert on {}: {e}", m.topic),
            }
        }
        seen
    });

    let running = mqtt::start(
        pipeline,
        &url,
        &mqtt::RunOptions::new("forewarn-engine"),
        None,
    )
    .await?;
    let mut plant = a.plant.clone();
    plant.waveforms = true;
    let cfg = plant.config();
    println!(
        "simulating {} machines with bearing waveforms ({:.0}% developing a failure), {} s of plant time in {:.0} s ...\n",
        cfg.machines,
        cfg.failing_fraction * 100.0,
        cfg.duration_s,
        a.duration
    );
    let (truth, published) =
        publish_plant(&url, cfg, Duration::from_secs_f64(a.duration), false).await?;
    if !running
        .wait_for_messages(published, Duration::from_secs(120))
        .await
    {
        eprintln!(
            "warning: the engine received {} of {published} readings",
            running.handle().stats().messages_in
        );
    }
    let stats = running.stop().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline
        && received.load(Ordering::Relaxed) < stats.rows_out
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sub.stop().await;
    let alerts = printer.await?;

    let truth = bearing_truth(&truth);
    let events: Vec<AlertEvent> = alerts
        .iter()
        .map(|r| AlertEvent {
            device: r.device.clone(),
            window_end_ms: r.window_end.as_millis(),
        })
        .collect();
    let summary = summarize(&truth, &events);
    let mut per_machine: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &alerts {
        *per_machine.entry(r.device.as_str()).or_default() += 1;
    }
    let worn: Vec<String> = truth
        .failing_devices()
        .into_iter()
        .map(str::to_string)
        .collect();
    println!(
        "\nreadings published {published}; engine: {}",
        stats.summary()
    );
    println!(
        "bearing alerts: {} on {} machines; worn bearings: {}",
        alerts.len(),
        per_machine.len(),
        worn.join(", ")
    );
    println!(
        "\nDetection of bearing wear against the simulator's ground truth (other failure modes count as healthy here):\n{}",
        summary.table()
    );
    if let Some(p) = &a.summary {
        let mut worn = worn;
        worn.sort();
        let out = VibrationSummary {
            summary,
            alerted: per_machine.keys().map(|d| d.to_string()).collect(),
            worn,
        };
        std::fs::write(p, serde_json::to_vec_pretty(&out)?)
            .with_context(|| format!("writing {}", p.display()))?;
        println!("summary written to {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_alert(r: &WindowRow) {
    let s = r.window_end.to_string();
    let end = s.get(11..19).unwrap_or(&s);
    let num = |k: &str| {
        r.columns
            .get(k)
            .and_then(|v| v.as_f64())
            .unwrap_or(f64::NAN)
    };
    let zone = r
        .columns
        .get("iso_zone")
        .and_then(|v| v.as_str())
        .unwrap_or("-");
    println!(
        "BEARING  {:<16} window end {end}  envelope at BPFO {:.3} m/s²  velocity {:.2} mm/s (zone {zone})  kurtosis {:.2}",
        r.device,
        num("outer_race"),
        num("velocity_mm_s"),
        num("kurtosis")
    );
}
