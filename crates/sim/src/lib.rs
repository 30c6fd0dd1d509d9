//! A deterministic plant simulator for Forewarn.
//!
//! Machines of three kinds (centrifugal pumps, motors with rolling bearings, and
//! compressors) report vibration RMS, vibration kurtosis, casing temperature,
//! motor current, discharge pressure, load and site ambient temperature.
//!
//! Healthy machines are not flat lines: they run duty cycles with load steps,
//! stop and restart (start-ups shake and draw current), and follow an ambient
//! temperature swing, so a fixed threshold on any one sensor raises false alarms.
//! Failing machines develop one failure along a P-F curve: the fault starts inside
//! normal variation at its onset and grows to a functional failure at a known
//! time. Nuisance events (sensor dropouts, planned stops) are not failures.
//! Everything is reproducible from the seed; each machine has its own random stream.

mod eval;
#[cfg(feature = "sparkplug")]
mod sparkplug;
mod waveform;

pub use eval::{summarize, AlertEvent, Summary};
#[cfg(feature = "sparkplug")]
pub use sparkplug::{SparkplugPlant, METRICS};
pub use waveform::{
    bearing_waveform, bpfo, EncodedWave, WaveformConfig, BEARING, RESONANCE_HZ, RPM,
};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

/// Machine kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Centrifugal pump.
    Pump,
    /// Electric motor (rolling-element bearings).
    Motor,
    /// Compressor.
    Compressor,
}

impl Kind {
    /// Prefix of device ids of this kind.
    pub fn prefix(&self) -> &'static str {
        match self {
            Kind::Pump => "pump",
            Kind::Motor => "motor",
            Kind::Compressor => "compressor",
        }
    }
    fn all() -> [Kind; 3] {
        [Kind::Pump, Kind::Motor, Kind::Compressor]
    }
}

/// Failure modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Rolling-bearing wear: vibration RMS and kurtosis rise, then temperature.
    BearingWear,
    /// Cooling or lubrication loss: temperature rises above what load and ambient explain.
    Overheating,
    /// Pump cavitation: discharge pressure sags, vibration becomes broadband and erratic.
    Cavitation,
}

/// Nuisance events that are not failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NuisanceKind {
    /// The device stops reporting for a while.
    SensorDropout,
    /// The machine is stopped on purpose and restarted.
    PlannedStop,
}

/// Ground truth of one failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureTruth {
    /// Mode.
    pub mode: FailureMode,
    /// When the fault starts (P on the P-F curve), epoch ms.
    pub onset_ms: i64,
    /// Functional failure (F), epoch ms.
    pub failure_ms: i64,
}

/// Ground truth of one nuisance event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NuisanceTruth {
    /// Kind.
    pub kind: NuisanceKind,
    /// Start, epoch ms.
    pub start_ms: i64,
    /// End, epoch ms.
    pub end_ms: i64,
}

/// Ground truth of one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineTruth {
    /// Device id, e.g. `pump-0007`.
    pub device: String,
    /// Kind.
    pub kind: Kind,
    /// Site topic level.
    pub site: String,
    /// Line topic level.
    pub line: String,
    /// The failure, if this machine fails.
    pub failure: Option<FailureTruth>,
    /// Nuisance events.
    pub nuisances: Vec<NuisanceTruth>,
}

/// Ground truth of a whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    /// Seed.
    pub seed: u64,
    /// First event time, epoch ms.
    pub start_ms: i64,
    /// Simulated span, ms.
    pub duration_ms: i64,
    /// Sample period, ms.
    pub period_ms: i64,
    /// Every machine.
    pub machines: Vec<MachineTruth>,
}

impl Truth {
    /// Devices of the machines that develop a failure.
    pub fn failing_devices(&self) -> Vec<&str> {
        self.machines
            .iter()
            .filter(|m| m.failure.is_some())
            .map(|m| m.device.as_str())
            .collect()
    }
}

/// Simulation parameters.
#[derive(Debug, Clone)]
pub struct PlantConfig {
    /// Seed: the same seed gives the same plant and the same readings.
    pub seed: u64,
    /// Number of machines (split evenly over the three kinds).
    pub machines: usize,
    /// Simulated span in seconds of event time.
    pub duration_s: i64,
    /// Seconds of event time between two readings of a machine.
    pub period_s: i64,
    /// Event time of the first reading, epoch ms.
    pub start_ms: i64,
    /// Fraction of machines that develop a failure (0 for healthy training history).
    pub failing_fraction: f64,
    /// Vibration waveforms of each machine's bearing (`None`: scalar readings only,
    /// the light default). A waveform rides on the machine's reading every
    /// `period_s`; it has its own random stream, so the scalar readings are the same
    /// with or without it.
    pub waveforms: Option<WaveformConfig>,
}

impl Default for PlantConfig {
    fn default() -> Self {
        PlantConfig {
            seed: 1,
            machines: 240,
            duration_s: 3600,
            period_s: 5,
            // 2026-01-05T06:00:00Z
            start_ms: 1_767_592_800_000,
            failing_fraction: 0.2,
            waveforms: None,
        }
    }
}

/// One reading, as published on `plant/{site}/{line}/{device}/telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Device id (also in the topic).
    #[serde(skip)]
    pub device: String,
    /// Event time, epoch ms.
    pub ts: i64,
    /// Vibration velocity RMS, mm/s.
    pub vibration: f64,
    /// Kurtosis of the vibration signal (3 for a healthy, Gaussian signal).
    pub kurtosis: f64,
    /// Casing/bearing temperature, °C (absent during a temperature-sensor dropout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Motor current, A.
    pub motor_current: f64,
    /// Discharge pressure, bar.
    pub pressure: f64,
    /// Load (0..1) reported by the controller.
    pub load: f64,
    /// Site ambient temperature, °C.
    pub ambient: f64,
    /// Shaft speed, rpm (with a waveform only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<f64>,
    /// The waveform's sample rate, Hz (with a waveform only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<f64>,
    /// Bearing acceleration waveform, m/s², f32le-encoded (see [`WaveformConfig`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<EncodedWave>,
}

/// How a nuisance is scheduled: its probability per machine, when it may start
/// (fractions of the run) and how long it lasts (ms).
struct NuisancePlan {
    kind: NuisanceKind,
    probability: f64,
    start: (f64, f64),
    duration_ms: (i64, i64),
}

const NUISANCES: [NuisancePlan; 2] = [
    NuisancePlan {
        kind: NuisanceKind::PlannedStop,
        probability: 0.5,
        start: (0.05, 0.85),
        duration_ms: (180_000, 480_000),
    },
    NuisancePlan {
        kind: NuisanceKind::SensorDropout,
        probability: 0.3,
        start: (0.05, 0.9),
        duration_ms: (60_000, 240_000),
    },
];

impl MachineTruth {
    /// Whether a nuisance of `kind` is under way at `now`.
    pub fn in_nuisance(&self, kind: NuisanceKind, now: i64) -> bool {
        self.nuisances
            .iter()
            .any(|n| n.kind == kind && now >= n.start_ms && now < n.end_ms)
    }
}

/// Nominal values of a machine kind.
struct Rated {
    vibration: f64,
    temp_rise: f64,
    current: f64,
    pressure: f64,
}

fn rated(kind: Kind) -> Rated {
    match kind {
        Kind::Pump => Rated {
            vibration: 2.8,
            temp_rise: 28.0,
            current: 42.0,
            pressure: 6.0,
        },
        Kind::Motor => Rated {
            vibration: 1.8,
            temp_rise: 35.0,
            current: 65.0,
            pressure: 0.0,
        },
        Kind::Compressor => Rated {
            vibration: 3.5,
            temp_rise: 45.0,
            current: 110.0,
            pressure: 8.5,
        },
    }
}

struct Machine {
    truth: MachineTruth,
    rng: ChaCha8Rng,
    /// The waveforms' own stream.
    wave_rng: ChaCha8Rng,
    /// Unit-to-unit variation of the rated values.
    unit: [f64; 4],
    load: f64,
    target_load: f64,
    next_load_change_ms: i64,
    running: bool,
    started_ms: i64,
    temperature: f64,
    site_phase: f64,
    site_offset: f64,
}

/// The simulated plant: call [`Plant::step`] for each sample period.
pub struct Plant {
    cfg: PlantConfig,
    machines: Vec<Machine>,
    tick: i64,
}

fn normal(rng: &mut ChaCha8Rng, sd: f64) -> f64 {
    Normal::new(0.0, sd).expect("sd > 0").sample(rng)
}

impl Plant {
    /// Builds the plant and schedules failures and nuisances.
    pub fn new(cfg: PlantConfig) -> Plant {
        let d = cfg.duration_s * 1000;
        let kinds = Kind::all();
        let mut counts = [0usize; 3];
        let mut plan_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_f00d);
        let n_fail = (cfg.machines as f64 * cfg.failing_fraction).round() as usize;
        // Choose the failing machines up front, spread over kinds.
        let mut failing: Vec<usize> = (0..cfg.machines).collect();
        for i in (1..failing.len()).rev() {
            failing.swap(i, plan_rng.gen_range(0..=i));
        }
        failing.truncate(n_fail);
        let machines = (0..cfg.machines)
            .map(|i| {
                let kind = kinds[i % 3];
                counts[i % 3] += 1;
                let device = format!("{}-{:04}", kind.prefix(), counts[i % 3]);
                let mut rng = ChaCha8Rng::seed_from_u64(
                    cfg.seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
                );
                let site_no = i % 4;
                let failure = failing.contains(&i).then(|| {
                    let mode = match kind {
                        Kind::Pump => [
                            FailureMode::BearingWear,
                            FailureMode::Overheating,
                            FailureMode::Cavitation,
                        ][rng.gen_range(0..3)],
                        _ => [FailureMode::BearingWear, FailureMode::Overheating]
                            [rng.gen_range(0..2)],
                    };
                    let onset = cfg.start_ms + (d as f64 * rng.gen_range(0.12..0.45)) as i64;
                    let pf = (d as f64 * rng.gen_range(0.3..0.45)) as i64;
                    FailureTruth {
                        mode,
                        onset_ms: onset,
                        failure_ms: (onset + pf).min(cfg.start_ms + d * 95 / 100),
                    }
                });
                // Each nuisance happens to a machine with its probability, starting somewhere in
                // the given fraction of the run and lasting the given number of ms.
                let mut nuisances = Vec::new();
                for n in &NUISANCES {
                    if rng.gen_bool(n.probability) {
                        let s =
                            cfg.start_ms + (d as f64 * rng.gen_range(n.start.0..n.start.1)) as i64;
                        nuisances.push(NuisanceTruth {
                            kind: n.kind,
                            start_ms: s,
                            end_ms: s + rng.gen_range(n.duration_ms.0..n.duration_ms.1),
                        });
                    }
                }
                let unit = [
                    1.0 + normal(&mut rng, 0.06),
                    1.0 + normal(&mut rng, 0.05),
                    1.0 + normal(&mut rng, 0.04),
                    1.0 + normal(&mut rng, 0.04),
                ];
                let load = [0.6, 0.75, 0.9][rng.gen_range(0..3)];
                let temperature = 20.0 + rated(kind).temp_rise * load * unit[1];
                Machine {
                    wave_rng: ChaCha8Rng::seed_from_u64(
                        cfg.seed.wrapping_mul(7_000_003).wrapping_add(i as u64) ^ 0x0a11_ce5e,
                    ),
                    truth: MachineTruth {
                        device,
                        kind,
                        site: format!("site{}", site_no + 1),
                        line: format!("line{}", i % 3 + 1),
                        failure,
                        nuisances,
                    },
                    rng,
                    unit,
                    load,
                    target_load: load,
                    next_load_change_ms: cfg.start_ms,
                    running: true,
                    started_ms: cfg.start_ms - 3_600_000,
                    temperature,
                    site_phase: site_no as f64 * 0.7,
                    site_offset: [0.0, 3.0, -2.0, 5.0][site_no],
                }
            })
            .collect();
        Plant {
            cfg,
            machines,
            tick: 0,
        }
    }

    /// Ground truth for the whole run.
    pub fn truth(&self) -> Truth {
        Truth {
            seed: self.cfg.seed,
            start_ms: self.cfg.start_ms,
            duration_ms: self.cfg.duration_s * 1000,
            period_ms: self.cfg.period_s * 1000,
            machines: self.machines.iter().map(|m| m.truth.clone()).collect(),
        }
    }

    /// Event time of the next step.
    pub fn now_ms(&self) -> i64 {
        self.cfg.start_ms + self.tick * self.cfg.period_s * 1000
    }

    /// Whether the simulated span is over.
    pub fn done(&self) -> bool {
        self.tick * self.cfg.period_s >= self.cfg.duration_s
    }

    /// Topic of a machine's readings.
    pub fn topic(t: &MachineTruth) -> String {
        format!("plant/{}/{}/{}/telemetry", t.site, t.line, t.device)
    }

    /// Advances one sample period; returns each reporting machine's topic and reading.
    pub fn step(&mut self) -> Vec<(String, Reading)> {
        let now = self.now_ms();
        let dt = self.cfg.period_s as f64;
        let span = (self.cfg.duration_s * 1000) as f64;
        let progress = (now - self.cfg.start_ms) as f64 / span;
        let mut out = Vec::with_capacity(self.machines.len());
        for m in &mut self.machines {
            let r = rated(m.truth.kind);
            // Ambient: one compressed day-night swing over the run, per-site phase and offset.
            let ambient = 18.0
                + m.site_offset
                + 7.0 * (std::f64::consts::TAU * progress + m.site_phase).sin()
                + normal(&mut m.rng, 0.2);
            let stopped = m.truth.in_nuisance(NuisanceKind::PlannedStop, now);
            if stopped && m.running {
                m.running = false;
            } else if !stopped && !m.running {
                m.running = true;
                m.started_ms = now;
            }
            // Duty cycle: load steps every 4 to 12 minutes.
            if now >= m.next_load_change_ms {
                m.target_load = [0.5, 0.6, 0.75, 0.9, 1.0][m.rng.gen_range(0..5)];
                m.next_load_change_ms = now + m.rng.gen_range(240_000..720_000);
            }
            let target = if m.running { m.target_load } else { 0.0 };
            m.load += (target - m.load) * (1.0 - (-dt / 20.0).exp());
            let load = m.load.clamp(0.0, 1.0);
            // Start-up: vibration and current transient over the first ~90 s after a start.
            let since_start = (now - m.started_ms) as f64 / 1000.0;
            let startup = if m.running && since_start < 90.0 {
                (-(since_start / 30.0)).exp()
            } else {
                0.0
            };
            let s = m.truth.failure.as_ref().map_or(0.0, |f| severity(f, now));
            let mode = m.truth.failure.as_ref().map(|f| f.mode);
            let running = if m.running { 1.0 } else { 0.0 };

            let mut vib = r.vibration * m.unit[0] * (0.55 + 0.45 * load) * running + 0.15;
            vib *= 1.0 + 1.6 * startup;
            let mut kurt = 3.0 + 0.8 * startup;
            let mut temp_target = ambient + r.temp_rise * m.unit[1] * load;
            let mut current =
                r.current * m.unit[2] * (0.25 + 0.75 * load) * running * (1.0 + 1.2 * startup);
            let mut pressure = r.pressure * m.unit[3] * load.powf(1.3) * running;
            let mut vib_noise = 0.05;
            match mode {
                Some(FailureMode::BearingWear) => {
                    vib *= 1.0 + 1.4 * s;
                    kurt += 5.0 * s;
                    temp_target += 8.0 * s * s;
                }
                Some(FailureMode::Overheating) => {
                    temp_target += 22.0 * s;
                    current *= 1.0 + 0.08 * s;
                }
                Some(FailureMode::Cavitation) => {
                    pressure *= 1.0 - 0.3 * s;
                    vib *= 1.0 + 0.6 * s;
                    vib_noise += 0.25 * s;
                    kurt += 1.5 * s;
                }
                None => {}
            }
            // The casing follows its target with a few minutes of thermal lag.
            m.temperature += (temp_target - m.temperature) * (1.0 - (-dt / 240.0).exp());
            let dropout = m.truth.in_nuisance(NuisanceKind::SensorDropout, now);
            // A bearing waveform every `period_s` while the machine runs.
            let wave =
                self.cfg.waveforms.as_ref().filter(|w| {
                    m.running && (self.tick * self.cfg.period_s) % w.period_s.max(1) == 0
                });
            let wave = wave.map(|w| {
                let defect = if mode == Some(FailureMode::BearingWear) {
                    s
                } else {
                    0.0
                };
                let x = bearing_waveform(&mut m.wave_rng, w, load, defect);
                (w.fs, EncodedWave::f32le(&x))
            });
            let reading = Reading {
                device: m.truth.device.clone(),
                ts: now,
                vibration: (vib * (1.0 + normal(&mut m.rng, vib_noise))).max(0.01),
                kurtosis: (kurt + normal(&mut m.rng, 0.25)).max(1.0),
                temperature: Some(m.temperature + normal(&mut m.rng, 0.4)),
                motor_current: (current * (1.0 + normal(&mut m.rng, 0.02))).max(0.0),
                pressure: (pressure + normal(&mut m.rng, 0.05)).max(0.0),
                load: (load + normal(&mut m.rng, 0.01)).clamp(0.0, 1.0),
                ambient,
                rpm: wave.as_ref().map(|_| RPM),
                fs: wave.as_ref().map(|(fs, _)| *fs),
                wave: wave.map(|(_, w)| w),
            };
            // A dropout silences the device; the machine keeps running underneath.
            if !dropout {
                out.push((Plant::topic(&m.truth), reading));
            }
        }
        self.tick += 1;
        out
    }
}

/// Fault severity on the P-F curve: 0 before onset, 1 at functional failure,
/// accelerating in between (quadratic), and staying failed afterwards.
pub fn severity(f: &FailureTruth, now: i64) -> f64 {
    if now <= f.onset_ms {
        return 0.0;
    }
    let x = (now - f.onset_ms) as f64 / (f.failure_ms - f.onset_ms).max(1) as f64;
    x.min(1.2).powi(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_by_seed() {
        let cfg = PlantConfig {
            machines: 30,
            duration_s: 120,
            ..Default::default()
        };
        let mut a = Plant::new(cfg.clone());
        let mut b = Plant::new(cfg.clone());
        assert_eq!(a.truth(), b.truth());
        for _ in 0..10 {
            assert_eq!(a.step(), b.step());
        }
        let c = Plant::new(PlantConfig { seed: 2, ..cfg });
        assert_ne!(a.truth(), c.truth());
    }

    #[test]
    fn waveforms_ride_along_without_changing_the_scalar_readings() {
        use base64::Engine as _;
        let cfg = PlantConfig {
            machines: 6,
            duration_s: 180,
            ..Default::default()
        };
        let mut a = Plant::new(cfg.clone());
        let mut b = Plant::new(PlantConfig {
            waveforms: Some(WaveformConfig::default()),
            ..cfg
        });
        let mut waves = 0;
        while !a.done() {
            let (ra, rb) = (a.step(), b.step());
            assert_eq!(ra.len(), rb.len());
            for ((ta, ra), (tb, mut rb)) in ra.into_iter().zip(rb) {
                assert_eq!(ta, tb);
                if let Some(w) = rb.wave.take() {
                    waves += 1;
                    assert_eq!((rb.fs, rb.rpm), (Some(10_000.0), Some(RPM)));
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(&w.data)
                        .unwrap();
                    assert_eq!((w.encoding.as_str(), bytes.len()), ("f32le", 4096 * 4));
                    (rb.fs, rb.rpm) = (None, None);
                }
                assert_eq!(ra, rb);
            }
        }
        // One a minute per running machine: at 0, 60 and 120 s.
        assert!((12..=18).contains(&waves), "{waves}");
        // A 6205 at 1800 rpm.
        assert!((bpfo(1800.0) - 107.543_545).abs() < 1e-5);
    }

    #[test]
    fn failures_are_scheduled_inside_the_run() {
        let p = Plant::new(PlantConfig::default());
        let t = p.truth();
        let failing: Vec<_> = t
            .machines
            .iter()
            .filter_map(|m| m.failure.as_ref())
            .collect();
        assert_eq!(failing.len(), 48);
        for f in failing {
            assert!(f.onset_ms > t.start_ms && f.failure_ms <= t.start_ms + t.duration_ms);
            assert!(f.failure_ms - f.onset_ms >= t.duration_ms / 5);
        }
        assert!(t
            .machines
            .iter()
            .filter(|m| m.failure.is_none())
            .any(|m| !m.nuisances.is_empty()));
    }

    #[test]
    fn a_single_sensor_threshold_is_not_enough() {
        // Healthy machines' temperature swings with load and ambient far beyond the
        // early rise of an overheating fault.
        let mut p = Plant::new(PlantConfig {
            machines: 60,
            failing_fraction: 0.0,
            ..Default::default()
        });
        let mut temps: Vec<f64> = vec![];
        while !p.done() {
            for (_, r) in p.step() {
                if r.device.starts_with("pump") {
                    temps.extend(r.temperature);
                }
            }
        }
        let (lo, hi) = temps
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), t| (a.min(*t), b.max(*t)));
        assert!(
            hi - lo > 22.0,
            "healthy pump temperatures span only {lo:.1}..{hi:.1}"
        );
    }
}
