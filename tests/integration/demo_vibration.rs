//! `forewarn demo --vibration` end to end: the binary's embedded broker, the simulated
//! bearing fleet with waveforms, the built-in envelope query; the machines it alerts on
//! are exactly those whose bearings the simulator wears, and it says so in its summary.

use std::collections::BTreeSet;
use std::process::Command;

use forewarn_sim::{FailureMode, Plant, PlantConfig, WaveformConfig};

#[test]
fn vibration_demo_alerts_exactly_the_worn_bearings() {
    let dir = std::env::temp_dir().join(format!("fw-demo-vib-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let summary = dir.join("summary.json");
    // An hour of plant time in a few seconds, from another directory: the query is
    // built into the binary.
    let out = Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .current_dir(&dir)
        .args(["demo", "--vibration", "--seed", "5", "--machines", "12"])
        .args([
            "--sim-seconds",
            "3600",
            "--failing",
            "0.5",
            "--duration",
            "6",
        ])
        .arg("--summary")
        .arg(&summary)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The simulator's own truth for the same plant.
    let truth = Plant::new(PlantConfig {
        seed: 5,
        machines: 12,
        duration_s: 3600,
        failing_fraction: 0.5,
        waveforms: Some(WaveformConfig::default()),
        ..Default::default()
    })
    .truth();
    let worn: BTreeSet<String> = truth
        .machines
        .iter()
        .filter(|m| {
            m.failure
                .as_ref()
                .is_some_and(|f| f.mode == FailureMode::BearingWear)
        })
        .map(|m| m.device.clone())
        .collect();
    // Other failure modes exist in this plant, and the query must not alert on them.
    let other_failures = truth
        .machines
        .iter()
        .filter(|m| m.failure.is_some() && !worn.contains(&m.device))
        .count();
    assert!(
        worn.len() >= 2 && other_failures >= 1,
        "{worn:?}, {other_failures}"
    );
    // Alerts printed as they arrived: one line per alert, on worn bearings only.
    let printed: BTreeSet<String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("BEARING"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(printed, worn, "{stdout}");
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    let set = |k: &str| -> BTreeSet<String> {
        s[k].as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(set("alerted"), worn);
    assert_eq!(set("worn"), worn);
    assert_eq!(s["failing"], worn.len());
    assert_eq!(s["detected_before_failure"], worn.len());
    assert_eq!(s["false_alert_machines"], 0);
    assert_eq!(s["early_alert_machines"], 0);
    let alerts = stdout.lines().filter(|l| l.starts_with("BEARING")).count();
    assert_eq!(s["alerts"], alerts);
    let _ = std::fs::remove_dir_all(&dir);
}
