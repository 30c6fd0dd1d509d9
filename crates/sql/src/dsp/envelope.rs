//! Envelope analysis: band-pass around a resonance, Hilbert envelope, envelope
//! spectrum.

use realfft::num_complex::Complex;

use super::fft::{ifft, rfft, Spectrum};

/// The envelope of `x` band-passed to `[lo, hi]` Hz: |analytic signal|, built in the
/// frequency domain (bins outside the band zeroed, positive frequencies doubled,
/// negative ones zeroed, inverse FFT). A carrier of amplitude A has envelope A.
pub(crate) fn envelope(x: &[f64], fs: f64, lo: f64, hi: f64) -> Vec<f64> {
    let n = x.len();
    let bins = rfft(x);
    let df = fs / n as f64;
    let mut z = vec![Complex::new(0.0, 0.0); n];
    // Strictly positive frequencies below Nyquist: DC and Nyquist have no analytic twin.
    let first = ((lo / df).ceil().max(1.0)) as usize;
    let last = ((hi / df).floor().max(0.0) as usize).min((n - 1) / 2);
    let scale = 2.0 / n as f64;
    for k in first..=last {
        z[k] = bins[k] * scale;
    }
    ifft(&mut z);
    z.iter().map(|c| c.norm()).collect()
}

/// Peak amplitude of the envelope's component at `freq` Hz (± `tolerance` Hz, plus the
/// two bins of the window's main lobe), in the waveform's unit.
pub(crate) fn envelope_amplitude(
    x: &[f64],
    fs: f64,
    lo: f64,
    hi: f64,
    freq: f64,
    tolerance: Option<f64>,
) -> f64 {
    let env = envelope(x, fs, lo, hi);
    let s = Spectrum::of(&env, fs);
    s.tone_amplitude(freq, tolerance.unwrap_or(s.df))
}
