//! Envelope analysis: band-pass around a resonance, Hilbert envelope, envelope
//! spectrum.

use std::cell::RefCell;

use realfft::num_complex::Complex;

use crate::fft::{ifft, rfft_into, Spectrum, WaveSpectrum};

thread_local! {
    /// The analytic signal, the envelope and its transform, reused across calls.
    #[allow(clippy::type_complexity)]
    static BUFFERS: RefCell<(Vec<Complex<f64>>, Vec<f64>, Vec<Complex<f64>>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// The envelope of the waveform band-passed to `[lo, hi]` Hz into `env`: |analytic
/// signal|, built in the frequency domain (bins outside the band zeroed, positive
/// frequencies doubled, negative ones zeroed, inverse FFT). A carrier of amplitude A has
/// envelope A.
fn envelope_into(
    s: &WaveSpectrum,
    lo: f64,
    hi: f64,
    z: &mut Vec<Complex<f64>>,
    env: &mut Vec<f64>,
) {
    let n = s.n;
    let df = s.fs / n as f64;
    z.clear();
    z.resize(n, Complex::new(0.0, 0.0));
    // Strictly positive frequencies below Nyquist: DC and Nyquist have no analytic twin.
    let first = ((lo / df).ceil().max(1.0)) as usize;
    let last = ((hi / df).floor().max(0.0) as usize).min((n - 1) / 2);
    let scale = 2.0 / n as f64;
    if first <= last {
        for (zk, b) in z[first..=last].iter_mut().zip(&s.bins[first..=last]) {
            *zk = b * scale;
        }
    }
    ifft(z);
    env.clear();
    env.resize(n, 0.0);
    magnitudes(z, env);
}

/// `out[i] = |z[i]|`, as sqrt(re² + im²) (no overflow short of 1e154).
fn magnitudes(z: &[Complex<f64>], out: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX, checked just above.
        unsafe { magnitudes_avx(z, out) };
        return;
    }
    magnitudes_plain(z, out);
}

/// The same loop compiled for AVX: four square roots per instruction (the envelope's
/// square roots cost as much as an FFT one at a time). Same results: both round the
/// same operations correctly.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn magnitudes_avx(z: &[Complex<f64>], out: &mut [f64]) {
    magnitudes_plain(z, out);
}

#[inline(always)]
fn magnitudes_plain(z: &[Complex<f64>], out: &mut [f64]) {
    for (o, c) in out.iter_mut().zip(z) {
        *o = (c.re * c.re + c.im * c.im).sqrt();
    }
}

/// The envelope of `x` band-passed to `[lo, hi]` Hz (see [`envelope_amplitude`]).
pub fn envelope(s: &WaveSpectrum, lo: f64, hi: f64) -> Vec<f64> {
    let (mut z, mut env) = (Vec::new(), Vec::new());
    envelope_into(s, lo, hi, &mut z, &mut env);
    env
}

/// Peak amplitude of the envelope's component at `freq` Hz (± `tolerance` Hz, plus the
/// two bins of the window's main lobe; `tolerance` defaults to one bin), in the
/// waveform's unit: the Hann-windowed spectrum of the envelope with its mean removed.
///
/// One real FFT of the envelope, windowed in the frequency domain (see `Spectrum`).
/// Evaluating only the few bins asked for (Goertzel, 8 bins per pass) measured slower
/// than this FFT: its recurrence is bound by the latency of its dependent
/// multiply-adds, about 10 cycles per sample.
pub fn envelope_amplitude(
    s: &WaveSpectrum,
    lo: f64,
    hi: f64,
    freq: f64,
    tolerance: Option<f64>,
) -> f64 {
    BUFFERS.with(|b| {
        let (z, env, bins) = &mut *b.borrow_mut();
        envelope_into(s, lo, hi, z, env);
        rfft_into(env, bins);
        let spectrum = Spectrum::new(bins, s.n, s.fs);
        spectrum.tone_amplitude(freq, tolerance.unwrap_or(spectrum.df))
    })
}
