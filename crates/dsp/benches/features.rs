//! DSP throughput for the whole feature set of the shipped bearing query
//! (queries/vibration/bearing_envelope.sql): per waveform, `envelope_amplitude` at BPFO
//! in 2-4 kHz, `velocity_rms` twice (the query names it twice), `iso_zone` of it and
//! `wave_kurtosis`. Waveforms are the simulator's drive-end bearings (4,096 samples at
//! 10 kHz), half healthy and half with an outer-race defect.
//!
//! `cargo bench -p forewarn-dsp [-- WAVEFORMS]` (default 4,000 per round). One core,
//! best of 5 interleaved rounds, three ways:
//! - `baseline`: the functions as first written (a windowed FFT per spectral call, the
//!   envelope's whole spectrum), kept here to measure against;
//! - `per call`: today's functions, each computing its own FFT of the waveform;
//! - `shared FFT`: the same with one FFT per waveform shared by every feature, as the
//!   SQL functions do within a batch.
//!
//! Every way's values are checked against the baseline's before timing.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use forewarn_dsp::bearing::{defect_hz, iso_zone};
use forewarn_dsp::{Defect, Dsp, WaveSpectrum};
use forewarn_sim::{bearing_waveform, WaveformConfig, BEARING, RPM};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The features of one waveform: envelope at BPFO, velocity (twice), zone, kurtosis.
type Features = (f64, f64, f64, &'static str, f64);

/// One way of computing the features of a waveform (samples, rate, BPFO).
type Way = fn(&[f64], f64, f64) -> Features;

/// A named piece of the work, timed alone.
type Part<'a> = (&'static str, Box<dyn Fn() + 'a>);

fn bpfo() -> f64 {
    let (n, d, pd, a) = BEARING;
    defect_hz(Defect::Bpfo, RPM, n, d, pd, a).expect("a bearing")
}

fn per_call(x: &[f64], fs: f64, bpfo: f64) -> Features {
    let env = Dsp::EnvelopeAmplitude
        .compute(x, &[fs, 2000.0, 4000.0, bpfo])
        .unwrap();
    let v1 = Dsp::VelocityRms.compute(x, &[fs]).unwrap();
    let v2 = Dsp::VelocityRms.compute(x, &[fs]).unwrap();
    let zone = iso_zone((v1 + v2) / 2.0, "I").unwrap();
    let k = Dsp::WaveKurtosis.compute(x, &[]).unwrap();
    (env, v1, v2, zone, k)
}

fn shared(x: &[f64], fs: f64, bpfo: f64) -> Features {
    let s = Arc::new(WaveSpectrum::of(x, fs));
    let get = |_: &[f64], _: f64| s.clone();
    let env = Dsp::EnvelopeAmplitude
        .compute_with(x, &[fs, 2000.0, 4000.0, bpfo], get)
        .unwrap();
    let v1 = Dsp::VelocityRms.compute_with(x, &[fs], get).unwrap();
    let v2 = Dsp::VelocityRms.compute_with(x, &[fs], get).unwrap();
    let zone = iso_zone((v1 + v2) / 2.0, "I").unwrap();
    let k = Dsp::WaveKurtosis.compute(x, &[]).unwrap();
    (env, v1, v2, zone, k)
}

fn baseline_features(x: &[f64], fs: f64, bpfo: f64) -> Features {
    let env = baseline::envelope_amplitude(x, fs, 2000.0, 4000.0, bpfo);
    let v1 = baseline::velocity_rms(x, fs, 10.0, 1000.0);
    let v2 = baseline::velocity_rms(x, fs, 10.0, 1000.0);
    let zone = iso_zone((v1 + v2) / 2.0, "I").unwrap();
    let k = forewarn_dsp::time::kurtosis(x).unwrap();
    (env, v1, v2, zone, k)
}

/// Seconds this thread has run on a CPU, so a figure does not depend on what else the
/// machine runs (wall time where the clock is missing).
fn cpu_seconds() -> Option<f64> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    (rc == 0).then_some(t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9)
}

/// Seconds `f` took: on-CPU time where known, else wall time.
fn timed(f: impl FnOnce()) -> f64 {
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    f();
    match (cpu, cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => wall.elapsed().as_secs_f64(),
    }
}

/// Waveforms/s of `f` over `n` waveforms drawn in turn from `waves`.
fn rate(f: Way, waves: &[Vec<f64>], fs: f64, n: usize) -> f64 {
    let b = bpfo();
    n as f64
        / timed(|| {
            for i in 0..n {
                black_box(f(black_box(&waves[i % waves.len()]), fs, b));
            }
        })
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(4000);
    let cfg = WaveformConfig::default();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let waves: Vec<Vec<f64>> = (0..64)
        .map(|i| {
            let severity = if i % 2 == 0 { 0.0 } else { i as f64 / 64.0 };
            bearing_waveform(&mut rng, &cfg, 0.7, severity)
        })
        .collect();
    let b = bpfo();
    // Same values as the baseline (rounding aside), healthy and defective alike.
    let mut worst = 0f64;
    for x in &waves {
        let want = baseline_features(x, cfg.fs, b);
        for got in [per_call(x, cfg.fs, b), shared(x, cfg.fs, b)] {
            assert_eq!(got.3, want.3);
            for (g, w) in [
                (got.0, want.0),
                (got.1, want.1),
                (got.2, want.2),
                (got.4, want.4),
            ] {
                let rel = (g - w).abs() / w.abs().max(1e-300);
                assert!(rel < 1e-9, "{g} vs baseline {w}");
                worst = worst.max(rel);
            }
        }
    }
    println!(
        "bearing query features on {} waveforms of {} samples at {} Hz (half with an outer-race defect), one core, best of 5 (time on CPU)",
        n, cfg.samples, cfg.fs
    );
    println!("largest relative difference from the baseline: {worst:.1e}");
    let ways: [(&str, Way); 3] = [
        ("baseline (first version)", baseline_features),
        ("per call (one FFT per function)", per_call),
        ("shared FFT (as in SQL)", shared),
    ];
    let mut best = [0f64; 3];
    for _ in 0..5 {
        for (b, (_, f)) in best.iter_mut().zip(&ways) {
            *b = b.max(rate(*f, &waves, cfg.fs, n));
        }
    }
    println!("{:<34} {:>12} {:>14}", "way", "waveforms/s", "µs/waveform");
    for ((name, _), b) in ways.iter().zip(best) {
        println!("{name:<34} {b:>12.0} {:>14.1}", 1e6 / b);
    }
    // Where the time goes, per waveform.
    println!("where the time goes (shared FFT), per waveform:");
    let x = &waves[1];
    let s = Arc::new(WaveSpectrum::of(x, cfg.fs));
    let inverse = rustfft::FftPlanner::<f64>::new().plan_fft_inverse(cfg.samples);
    let z = std::cell::RefCell::new(vec![
        realfft::num_complex::Complex::new(0.5, 0.1);
        cfg.samples
    ]);
    let parts: [Part; 5] = [
        (
            "forward FFT",
            Box::new(|| {
                black_box(WaveSpectrum::of(black_box(x), cfg.fs));
            }),
        ),
        (
            "velocity_rms (from the FFT)",
            Box::new(|| {
                black_box(forewarn_dsp::spectral::velocity_rms(&s, 10.0, 1000.0));
            }),
        ),
        (
            "envelope_amplitude (from the FFT)",
            Box::new(|| {
                black_box(forewarn_dsp::envelope::envelope_amplitude(
                    &s, 2000.0, 4000.0, b, None,
                ));
            }),
        ),
        (
            "  of which: its inverse complex FFT",
            Box::new(|| inverse.process(&mut z.borrow_mut())),
        ),
        (
            "wave_kurtosis",
            Box::new(|| {
                black_box(forewarn_dsp::time::kurtosis(black_box(x)));
            }),
        ),
    ];
    for (name, f) in &parts {
        let best = (0..5)
            .map(|_| {
                timed(|| {
                    for _ in 0..n / 4 {
                        f();
                    }
                }) / (n / 4) as f64
            })
            .fold(f64::MAX, f64::min);
        println!("  {name:<40} {:>8.1} µs", best * 1e6);
    }
}

/// The first version of the spectral functions: every call windows the waveform and
/// runs its own FFT; the envelope's whole Hann spectrum is computed to read a few bins.
mod baseline {
    use realfft::num_complex::Complex;
    use realfft::RealFftPlanner;
    use rustfft::FftPlanner;
    use std::cell::RefCell;

    thread_local! {
        static PLANS: RefCell<(RealFftPlanner<f64>, FftPlanner<f64>)> =
            RefCell::new((RealFftPlanner::new(), FftPlanner::new()));
    }

    fn rfft(x: &[f64]) -> Vec<Complex<f64>> {
        let plan = PLANS.with(|p| p.borrow_mut().0.plan_fft_forward(x.len()));
        let mut input = x.to_vec();
        let mut out = plan.make_output_vec();
        plan.process(&mut input, &mut out).unwrap();
        out
    }

    fn power(x: &[f64], fs: f64) -> (Vec<f64>, f64) {
        let n = x.len();
        let mean = x.iter().sum::<f64>() / n as f64;
        let w: Vec<f64> = (0..n)
            .map(|i| (std::f64::consts::PI * i as f64 / n as f64).sin().powi(2))
            .collect();
        let windowed: Vec<f64> = x.iter().zip(&w).map(|(v, w)| (v - mean) * w).collect();
        let s2: f64 = w.iter().map(|w| w * w).sum();
        let norm = 1.0 / (n as f64 * s2);
        let p = rfft(&windowed)
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let twice = k != 0 && !(n.is_multiple_of(2) && k == n / 2);
                c.norm_sqr() * norm * if twice { 2.0 } else { 1.0 }
            })
            .collect();
        (p, fs / n as f64)
    }

    fn band_power(p: &[f64], df: f64, lo: f64, hi: f64, weight: impl Fn(f64) -> f64) -> f64 {
        let first = ((lo / df).ceil().max(1.0) as usize).min(p.len());
        let end = (((hi / df).floor() + 1.0).max(0.0) as usize).clamp(first, p.len());
        (first..end).map(|k| p[k] * weight(k as f64 * df)).sum()
    }

    pub fn velocity_rms(x: &[f64], fs: f64, lo: f64, hi: f64) -> f64 {
        let (p, df) = power(x, fs);
        band_power(&p, df, lo, hi, |f| {
            1.0 / (2.0 * std::f64::consts::PI * f).powi(2)
        })
        .sqrt()
            * 1000.0
    }

    pub fn envelope_amplitude(x: &[f64], fs: f64, lo: f64, hi: f64, f: f64) -> f64 {
        let n = x.len();
        let bins = rfft(x);
        let df = fs / n as f64;
        let mut z = vec![Complex::new(0.0, 0.0); n];
        let first = ((lo / df).ceil().max(1.0)) as usize;
        let last = ((hi / df).floor().max(0.0) as usize).min((n - 1) / 2);
        for k in first..=last {
            z[k] = bins[k] * (2.0 / n as f64);
        }
        let plan = PLANS.with(|p| p.borrow_mut().1.plan_fft_inverse(n));
        plan.process(&mut z);
        let env: Vec<f64> = z.iter().map(|c| c.norm()).collect();
        let (p, df) = power(&env, fs);
        let reach = df + 2.0 * df;
        (2.0 * band_power(&p, df, f - reach, f + reach, |_| 1.0)).sqrt()
    }
}
