//! Vibration waveforms of a machine's drive-end bearing (a 6205: 9 balls of 7.94 mm on a
//! 39.04 mm pitch circle, 0° contact), for the vibration functions of the SQL layer.
//!
//! Healthy: 1×, 2× and 3× running speed and broadband noise, in m/s². A developing
//! outer-race defect adds an impulse at every ball pass (BPFO, with 1 % slip jitter)
//! that rings the structure's resonance near 3 kHz; its strength grows with the fault's
//! severity on the P-F curve, so the envelope at BPFO rises long before overall RMS.

use base64::Engine as _;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

/// When and how waveforms are sampled (off unless [`crate::PlantConfig::waveforms`] is set).
#[derive(Debug, Clone, PartialEq)]
pub struct WaveformConfig {
    /// Samples per waveform.
    pub samples: usize,
    /// Sample rate, Hz.
    pub fs: f64,
    /// Seconds of event time between two waveforms of a machine.
    pub period_s: i64,
}

impl Default for WaveformConfig {
    fn default() -> Self {
        WaveformConfig {
            samples: 4096,
            fs: 10_000.0,
            period_s: 60,
        }
    }
}

/// The bearing's geometry: rolling elements, their diameter and the pitch diameter
/// (mm), contact angle (degrees). The shipped query passes the same numbers to `bpfo`.
pub const BEARING: (f64, f64, f64, f64) = (9.0, 7.94, 39.04, 0.0);

/// Shaft speed of every simulated machine, rpm (a 4-pole motor on 50 Hz with slip).
pub const RPM: f64 = 1480.0;

/// The structural resonance the defect's impulses ring, Hz.
pub const RESONANCE_HZ: f64 = 3000.0;

/// Outer-race ball pass frequency of [`BEARING`] at `rpm`, Hz.
pub fn bpfo(rpm: f64) -> f64 {
    let (n, d, pd, angle) = BEARING;
    n / 2.0 * rpm / 60.0 * (1.0 - d / pd * angle.to_radians().cos())
}

/// A waveform in the compact encoding the SQL layer reads:
/// `{"encoding": "f32le", "data": "<base64>"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncodedWave {
    /// Always `f32le`.
    pub encoding: String,
    /// Little-endian f32 samples, base64.
    pub data: String,
}

impl EncodedWave {
    /// Encodes `x` as f32 samples.
    pub fn f32le(x: &[f64]) -> EncodedWave {
        let bytes: Vec<u8> = x.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect();
        EncodedWave {
            encoding: "f32le".into(),
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }
}

/// One acceleration waveform (m/s²) of a machine running at `load` (0..1) with an
/// outer-race defect of `severity` (0 healthy, 1 functional failure).
pub fn bearing_waveform(
    rng: &mut ChaCha8Rng,
    cfg: &WaveformConfig,
    load: f64,
    severity: f64,
) -> Vec<f64> {
    let fr = RPM / 60.0;
    let phase: [f64; 3] = std::array::from_fn(|_| rng.gen_range(0.0..std::f64::consts::TAU));
    let amp = [0.8 * (0.5 + 0.5 * load), 0.3, 0.1];
    let noise = Normal::new(0.0, 0.4).expect("sd > 0");
    let mut x: Vec<f64> = (0..cfg.samples)
        .map(|i| {
            let t = i as f64 / cfg.fs;
            (0..3)
                .map(|h| {
                    amp[h] * (std::f64::consts::TAU * fr * (h + 1) as f64 * t + phase[h]).sin()
                })
                .sum::<f64>()
                + noise.sample(rng)
        })
        .collect();
    if severity > 0.0 {
        let period = 1.0 / bpfo(RPM);
        let strength = 6.0 * severity;
        let mut at = rng.gen_range(0.0..period);
        let span = cfg.samples as f64 / cfg.fs;
        while at < span {
            let start = (at * cfg.fs).ceil() as usize;
            // Each impact rings the resonance for a few ms.
            let ring = (0.006 * cfg.fs) as usize;
            for (i, v) in x.iter_mut().enumerate().skip(start).take(ring) {
                let t = i as f64 / cfg.fs - at;
                *v += strength
                    * (-t / 0.0008).exp()
                    * (std::f64::consts::TAU * RESONANCE_HZ * t).sin();
            }
            at += period * (1.0 + rng.gen_range(-0.01..0.01));
        }
    }
    x
}
