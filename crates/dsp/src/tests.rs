//! Each feature against the value known by construction of a synthetic signal.

use std::f64::consts::PI;

use crate::bearing::{defect_hz, iso_zone, Defect};
use crate::Dsp;

const FS: f64 = 10_240.0;
const N: usize = 4096;

/// `sum of amplitude * sin(2π f t + phase)` over `tones`, N samples at FS.
fn tones(tones: &[(f64, f64, f64)]) -> Vec<f64> {
    (0..N)
        .map(|i| {
            let t = i as f64 / FS;
            tones
                .iter()
                .map(|(a, f, p)| a * (2.0 * PI * f * t + p).sin())
                .sum()
        })
        .collect()
}

/// Deterministic uniform noise in [-a, a].
fn noise(a: f64, seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        a * ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
    }
}

fn close(got: f64, want: f64, rel: f64) {
    assert!(
        (got - want).abs() <= rel * want.abs(),
        "got {got}, want {want} (±{}%)",
        rel * 100.0
    );
}

fn f(d: Dsp, wave: &[f64], args: &[f64]) -> f64 {
    d.compute(wave, args).expect("defined")
}

#[test]
fn time_features_of_a_sine() {
    // 50 whole periods: the sample moments equal the continuous ones.
    let a = 3.0;
    let x = tones(&[(a, 125.0, 0.3)]);
    close(f(Dsp::WaveRms, &x, &[]), a / 2f64.sqrt(), 1e-9);
    close(f(Dsp::WavePeak, &x, &[]), a, 1e-3);
    close(f(Dsp::WaveCrestFactor, &x, &[]), 2f64.sqrt(), 1e-3);
    close(f(Dsp::WaveKurtosis, &x, &[]), 1.5, 1e-9);
    assert_eq!(Dsp::WaveKurtosis.compute(&[2.0; 8], &[]), None);
    assert_eq!(Dsp::WaveCrestFactor.compute(&[0.0; 8], &[]), None);
    assert_eq!(Dsp::WaveRms.compute(&[], &[]), None);
}

#[test]
fn a_tone_comes_out_at_its_amplitude_and_frequency() {
    // Off-bin frequencies (bins are 2.5 Hz), with other tones and noise around.
    let (a1, f1, a2, f2) = (2.5, 29.7 * 1.0, 0.8, 29.7 * 2.0);
    let mut n = noise(0.05, 7);
    let x: Vec<f64> = tones(&[(a1, f1, 0.1), (a2, f2, 1.3), (1.0, 1234.5, 0.0)])
        .into_iter()
        .map(|v| v + n() + 0.7)
        .collect();
    let rpm = 29.7 * 60.0;
    close(f(Dsp::OrderAmplitude, &x, &[FS, rpm, 1.0]), a1, 0.01);
    close(f(Dsp::OrderAmplitude, &x, &[FS, rpm, 2.0]), a2, 0.01);
    // Band RMS of one tone (the noise's share in 40 Hz is ~0.002).
    close(
        f(Dsp::BandRms, &x, &[FS, 1200.0, 1270.0]),
        1.0 / 2f64.sqrt(),
        0.01,
    );
    // Everything but DC and the noise: Parseval over the whole band.
    let all = ((a1 * a1 + a2 * a2 + 1.0) / 2.0f64).sqrt();
    close(f(Dsp::BandRms, &x, &[FS, 0.0, FS / 2.0]), all, 0.01);
    let df = FS / N as f64;
    let peak = f(Dsp::SpectrumPeakHz, &x, &[FS]);
    assert!((peak - f1).abs() <= df, "{peak}");
    let peak = f(Dsp::SpectrumPeakHz, &x, &[FS, 1000.0, 2000.0]);
    assert!((peak - 1234.5).abs() <= df, "{peak}");
    // Undefined inputs are NULL, not a number.
    assert_eq!(Dsp::BandRms.compute(&x, &[0.0, 1.0, 2.0]), None);
    assert_eq!(Dsp::BandRms.compute(&x, &[FS, 20.0, 10.0]), None);
    assert_eq!(
        Dsp::SpectrumPeakHz.compute(&x, &[FS, 20_000.0, 30_000.0]),
        None
    );
}

#[test]
fn velocity_of_an_acceleration_tone() {
    // a(t) = A sin(2πft) m/s² → v(t) = A/(2πf) (−cos) m/s: RMS A/(2πf√2), in mm/s.
    for (a, freq) in [(4.0, 80.3), (10.0, 497.0), (1.0, 24.9)] {
        let x = tones(&[(a, freq, 0.4)]);
        let want = a / (2.0 * PI * freq) / 2f64.sqrt() * 1000.0;
        close(f(Dsp::VelocityRms, &x, &[FS]), want, 0.01);
    }
    // A tone outside the band is left out.
    let x = tones(&[(4.0, 80.3, 0.0), (50.0, 3000.0, 0.0)]);
    let want = 4.0 / (2.0 * PI * 80.3) / 2f64.sqrt() * 1000.0;
    close(f(Dsp::VelocityRms, &x, &[FS]), want, 0.01);
    close(f(Dsp::VelocityRms, &x, &[FS, 50.0, 100.0]), want, 0.01);
}

#[test]
fn envelope_of_an_amplitude_modulated_carrier() {
    // (1 + m cos 2π fm t) sin 2π fc t: the envelope is 1 + m cos 2π fm t.
    let (m, fm, fc) = (0.4, 50.0, 2500.0);
    let x: Vec<f64> = (0..N)
        .map(|i| {
            let t = i as f64 / FS;
            (1.0 + m * (2.0 * PI * fm * t).cos()) * (2.0 * PI * fc * t).sin()
        })
        .collect();
    close(
        f(Dsp::EnvelopeAmplitude, &x, &[FS, 2000.0, 3000.0, fm]),
        m,
        0.01,
    );
    close(
        f(
            Dsp::EnvelopeAmplitude,
            &x,
            &[FS, 2000.0, 3000.0, fm - 3.0, 5.0],
        ),
        m,
        0.01,
    );
    assert!(f(Dsp::EnvelopeAmplitude, &x, &[FS, 2000.0, 3000.0, 3.7 * fm]) < 0.01 * m);
}

/// A bearing with an outer-race defect: an impulse at every BPFO period rings the
/// structure's 3 kHz resonance, buried under running-speed tones and noise.
fn defective(bpfo: f64, impulse: f64, seed: u64) -> Vec<f64> {
    let mut n = noise(0.3, seed);
    let ring = |t: f64| (-t / 0.0008).exp() * (2.0 * PI * 3000.0 * t).sin();
    (0..N)
        .map(|i| {
            let t = i as f64 / FS;
            let since = t % (1.0 / bpfo);
            let ringing = impulse * (ring(since) + ring(since + 1.0 / bpfo));
            2.0 * (2.0 * PI * 30.0 * t).sin() + 0.5 * (2.0 * PI * 60.0 * t).sin() + ringing + n()
        })
        .collect()
}

#[test]
fn an_outer_race_defect_shows_in_the_envelope_at_bpfo() {
    let bpfo = defect_hz(Defect::Bpfo, 1800.0, 9.0, 7.94, 39.04, 0.0).unwrap();
    let x = defective(bpfo, 1.0, 3);
    let band = [FS, 2000.0, 4000.0];
    let at = |x: &[f64], freq: f64| {
        f(
            Dsp::EnvelopeAmplitude,
            x,
            &[band[0], band[1], band[2], freq],
        )
    };
    let on = at(&x, bpfo);
    for off in [0.63 * bpfo, 1.37 * bpfo, 1.5 * bpfo] {
        assert!(
            on > 5.0 * at(&x, off),
            "{on} vs {} at {off} Hz",
            at(&x, off)
        );
    }
    // A healthy bearing (same tones and noise, no impulses) shows nothing there.
    let healthy = defective(bpfo, 0.0, 3);
    assert!(
        on > 5.0 * at(&healthy, bpfo),
        "{on} vs {}",
        at(&healthy, bpfo)
    );
    // Scalar statistics barely move: what the envelope is for.
    let ratio = f(Dsp::WaveRms, &x, &[]) / f(Dsp::WaveRms, &healthy, &[]);
    assert!(ratio < 1.2, "{ratio}");
}

#[test]
fn bearing_frequencies_match_hand_computation() {
    // 6205 at 1800 rpm: 9 balls of 7.94 mm on a 39.04 mm pitch circle, 0°.
    let hz = |d, rpm, n, bd, pd, a| defect_hz(d, rpm, n, bd, pd, a).unwrap();
    let g = (1800.0, 9.0, 7.94, 39.04, 0.0);
    for (d, want) in [
        (Defect::Bpfo, 107.543_545),
        (Defect::Bpfi, 162.456_455),
        (Defect::Bsf, 70.702_431),
        (Defect::Ftf, 11.949_283),
    ] {
        close(hz(d, g.0, g.1, g.2, g.3, g.4), want, 1e-7);
    }
    // An angular-contact bearing: 16 balls of 12 mm, 80 mm pitch, 15°, 1480 rpm.
    for (d, want) in [
        (Defect::Bpfo, 168.741_929),
        (Defect::Bpfi, 225.924_738),
        (Defect::Bsf, 80.496_149),
        (Defect::Ftf, 10.546_371),
    ] {
        close(hz(d, 1480.0, 16.0, 12.0, 80.0, 15.0), want, 1e-7);
    }
    assert_eq!(defect_hz(Defect::Bpfo, 1800.0, 9.0, 40.0, 39.0, 0.0), None);
    assert_eq!(defect_hz(Defect::Bpfo, 1800.0, 0.0, 7.9, 39.0, 0.0), None);
}

#[test]
fn iso_zones_by_class() {
    assert_eq!(iso_zone(0.5, "I"), Some("A"));
    assert_eq!(iso_zone(0.71, "I"), Some("B"));
    assert_eq!(iso_zone(2.0, "ii"), Some("B"));
    assert_eq!(iso_zone(4.5, "III"), Some("C"));
    assert_eq!(iso_zone(17.9, "IV"), Some("C"));
    assert_eq!(iso_zone(18.0, " IV "), Some("D"));
    assert_eq!(iso_zone(1.0, "V"), None);
}

/// The definition of docs/sql.md "Spectra", directly: `x − mean` under the periodic
/// Hann window, an O(n²) DFT, one-sided and scaled by the window's power.
fn direct_power(x: &[f64]) -> Vec<f64> {
    let n = x.len();
    let mean = x.iter().sum::<f64>() / n as f64;
    let w: Vec<f64> = (0..n)
        .map(|i| (PI * i as f64 / n as f64).sin().powi(2))
        .collect();
    let s2: f64 = w.iter().map(|w| w * w).sum();
    (0..=n / 2)
        .map(|k| {
            let (re, im) = (0..n).fold((0.0, 0.0), |(re, im), i| {
                let a = -2.0 * PI * (i * k % n) as f64 / n as f64;
                let v = (x[i] - mean) * w[i];
                (re + v * a.cos(), im + v * a.sin())
            });
            let twice = k != 0 && !(n.is_multiple_of(2) && k == n / 2);
            (re * re + im * im) / (n as f64 * s2) * if twice { 2.0 } else { 1.0 }
        })
        .collect()
}

#[test]
fn spectra_from_one_fft_equal_the_windowed_definition_at_every_length() {
    // Even and odd lengths, the smallest ones too: the windowed bins are derived from
    // the unwindowed FFT through its neighbours and conjugate symmetry.
    for n in [2usize, 3, 4, 5, 7, 64, 255, 1000] {
        let fs = 1000.0;
        let mut noise = noise(1.0, n as u64);
        let x: Vec<f64> = (0..n)
            .map(|i| 0.5 + (2.0 * PI * 37.0 * i as f64 / fs).sin() + noise())
            .collect();
        let p = direct_power(&x);
        let df = fs / n as f64;
        for (k, pk) in p.iter().enumerate() {
            // One bin alone: band_rms over a quarter bin around it (never DC).
            let (lo, hi) = ((k as f64 - 0.25) * df, (k as f64 + 0.25) * df);
            let got = f(Dsp::BandRms, &x, &[fs, lo, hi]);
            let want = if k == 0 { 0.0 } else { pk.sqrt() };
            assert!(
                (got - want).abs() <= 1e-9 * (1.0 + want),
                "n {n} bin {k}: {got} vs {want}"
            );
        }
        // The velocity weighting over the whole band.
        let want: f64 = (1..p.len())
            .map(|k| p[k] / (2.0 * PI * k as f64 * df).powi(2))
            .sum::<f64>()
            .sqrt()
            * 1000.0;
        let got = f(Dsp::VelocityRms, &x, &[fs, 0.0, fs]);
        assert!((got - want).abs() <= 1e-9 * want, "n {n}: {got} vs {want}");
    }
}
