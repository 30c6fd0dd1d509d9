//! FFTs with plans and Hann windows cached per length and thread, and the one-sided
//! power spectrum every spectral function reads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::RealFftPlanner;
use rustfft::FftPlanner;

/// Per-thread plans: the planners keep one plan per length, so a stream of waveforms of
/// one length plans once.
struct Plans {
    real: RealFftPlanner<f64>,
    complex: FftPlanner<f64>,
    hann: HashMap<usize, Arc<[f64]>>,
}

thread_local! {
    static PLANS: RefCell<Plans> = RefCell::new(Plans {
        real: RealFftPlanner::new(),
        complex: FftPlanner::new(),
        hann: HashMap::new(),
    });
}

/// Windows cached at most; beyond, a new length is computed and not kept (a hostile
/// stream of ever-new lengths must not grow memory).
const MAX_CACHED_WINDOWS: usize = 64;

/// The periodic Hann window of length `n`.
fn hann(n: usize) -> Arc<[f64]> {
    PLANS.with(|p| {
        let mut p = p.borrow_mut();
        if let Some(w) = p.hann.get(&n) {
            return w.clone();
        }
        let w: Arc<[f64]> = (0..n)
            .map(|i| {
                let s = (std::f64::consts::PI * i as f64 / n as f64).sin();
                s * s
            })
            .collect();
        if p.hann.len() < MAX_CACHED_WINDOWS {
            p.hann.insert(n, w.clone());
        }
        w
    })
}

/// The forward real FFT of `x` (length n → n/2 + 1 bins, unnormalised).
pub(crate) fn rfft(x: &[f64]) -> Vec<Complex<f64>> {
    let plan = PLANS.with(|p| p.borrow_mut().real.plan_fft_forward(x.len()));
    let mut input = x.to_vec();
    let mut out = plan.make_output_vec();
    plan.process(&mut input, &mut out)
        .expect("buffers come from the plan");
    out
}

/// The inverse complex FFT of `z` in place (unnormalised).
pub(crate) fn ifft(z: &mut [Complex<f64>]) {
    let plan = PLANS.with(|p| p.borrow_mut().complex.plan_fft_inverse(z.len()));
    plan.process(z);
}

/// A one-sided power spectrum: `power[k]` is the mean square the signal holds in bin
/// `k` (at `k * df` Hz), so that the sum over all bins is the signal's mean square
/// (after its mean is removed). Hann-windowed, scaled by the window's power so that a
/// tone's power is preserved: a tone of peak amplitude A spreads A²/2 over its
/// main lobe (±2 bins).
#[derive(Debug, Clone)]
pub(crate) struct Spectrum {
    /// Mean square per bin, bins 0..=n/2.
    pub(crate) power: Vec<f64>,
    /// Bin spacing in Hz (fs / n).
    pub(crate) df: f64,
}

impl Spectrum {
    /// The spectrum of `x` sampled at `fs` Hz. `x` must not be empty.
    pub(crate) fn of(x: &[f64], fs: f64) -> Spectrum {
        let n = x.len();
        let mean = x.iter().sum::<f64>() / n as f64;
        let w = hann(n);
        let windowed: Vec<f64> = x
            .iter()
            .zip(w.iter())
            .map(|(v, w)| (v - mean) * w)
            .collect();
        let s2: f64 = w.iter().map(|w| w * w).sum();
        let bins = rfft(&windowed);
        let norm = 1.0 / (n as f64 * s2);
        let power = bins
            .iter()
            .enumerate()
            .map(|(k, c)| {
                // Bins other than DC and Nyquist stand for their negative twin too.
                let twice = k != 0 && !(n.is_multiple_of(2) && k == n / 2);
                c.norm_sqr() * norm * if twice { 2.0 } else { 1.0 }
            })
            .collect();
        Spectrum {
            power,
            df: fs / n as f64,
        }
    }

    /// Indices of the bins whose centre frequency lies in `[lo, hi]` Hz (never DC).
    pub(crate) fn bins(&self, lo: f64, hi: f64) -> std::ops::Range<usize> {
        let last = self.power.len();
        let first = ((lo / self.df).ceil().max(1.0) as usize).min(last);
        let end = ((hi / self.df).floor() + 1.0).max(0.0) as usize;
        first..end.clamp(first, last)
    }

    /// Mean square in `[lo, hi]` Hz, each bin weighted by `weight(f)`.
    pub(crate) fn band_power(&self, lo: f64, hi: f64, weight: impl Fn(f64) -> f64) -> f64 {
        self.bins(lo, hi)
            .map(|k| self.power[k] * weight(k as f64 * self.df))
            .sum()
    }

    /// Peak amplitude of the tone near `f` Hz: from the power of the bins within
    /// `tolerance + 2 bins` of `f` (a Hann-windowed tone's main lobe is ±2 bins), so it
    /// does not depend on where the tone falls between bins.
    pub(crate) fn tone_amplitude(&self, f: f64, tolerance: f64) -> f64 {
        let reach = tolerance.max(0.0) + 2.0 * self.df;
        (2.0 * self.band_power(f - reach, f + reach, |_| 1.0)).sqrt()
    }
}
