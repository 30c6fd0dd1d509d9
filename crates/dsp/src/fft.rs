//! FFTs with plans and scratch buffers cached per length and thread, the forward
//! transform of a waveform that every spectral feature of it shares, and the one-sided
//! Hann-windowed power spectrum they read, derived from it.

use std::cell::RefCell;

use realfft::num_complex::Complex;
use realfft::RealFftPlanner;
use rustfft::FftPlanner;

/// Per-thread plans and scratch: the planners keep one plan per length, so a stream of
/// waveforms of one length plans once; the buffers grow to the longest waveform seen and
/// are reused, so a feature allocates nothing per call but its result.
struct Plans {
    real: RealFftPlanner<f64>,
    complex: FftPlanner<f64>,
    input: Vec<f64>,
    scratch: Vec<Complex<f64>>,
}

thread_local! {
    static PLANS: RefCell<Plans> = RefCell::new(Plans {
        real: RealFftPlanner::new(),
        complex: FftPlanner::new(),
        input: Vec::new(),
        scratch: Vec::new(),
    });
}

/// The forward real FFT of `x` into `out` (length n → n/2 + 1 bins, unnormalised).
pub(crate) fn rfft_into(x: &[f64], out: &mut Vec<Complex<f64>>) {
    PLANS.with(|p| {
        let p = &mut *p.borrow_mut();
        let plan = p.real.plan_fft_forward(x.len());
        p.input.clear();
        p.input.extend_from_slice(x);
        out.clear();
        out.resize(x.len() / 2 + 1, Complex::new(0.0, 0.0));
        p.scratch
            .resize(plan.get_scratch_len(), Complex::new(0.0, 0.0));
        plan.process_with_scratch(&mut p.input, out, &mut p.scratch)
            .expect("buffers sized from the plan");
    })
}

/// The inverse complex FFT of `z` in place (unnormalised).
pub(crate) fn ifft(z: &mut [Complex<f64>]) {
    PLANS.with(|p| {
        let p = &mut *p.borrow_mut();
        let plan = p.complex.plan_fft_inverse(z.len());
        p.scratch
            .resize(plan.get_inplace_scratch_len(), Complex::new(0.0, 0.0));
        plan.process_with_scratch(z, &mut p.scratch);
    })
}

/// The forward transform of one waveform: computed once, read by every spectral
/// feature of it (`velocity_rms`, `band_rms`, the envelope's band-pass, ...).
#[derive(Debug, Clone)]
pub struct WaveSpectrum {
    /// Unnormalised real FFT of the samples as sent (mean kept), bins 0..=n/2.
    pub(crate) bins: Vec<Complex<f64>>,
    /// Samples in the waveform.
    pub(crate) n: usize,
    /// Sample rate, Hz.
    pub(crate) fs: f64,
}

impl WaveSpectrum {
    /// The transform of `x` sampled at `fs` Hz. `x` must not be empty.
    pub fn of(x: &[f64], fs: f64) -> WaveSpectrum {
        let mut bins = Vec::new();
        rfft_into(x, &mut bins);
        WaveSpectrum {
            bins,
            n: x.len(),
            fs,
        }
    }

    /// Samples in the waveform it was computed from.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the waveform was empty (never: [`WaveSpectrum::of`] needs samples).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Bytes held, for callers that bound a cache of spectra.
    pub fn bytes(&self) -> usize {
        self.bins.capacity() * std::mem::size_of::<Complex<f64>>()
    }

    /// The Hann-windowed power spectrum of the waveform with its mean removed.
    pub(crate) fn power(&self) -> Spectrum<'_> {
        Spectrum::new(&self.bins, self.n, self.fs)
    }
}

/// A one-sided power spectrum: `power(k)` is the mean square the signal holds in bin
/// `k` (at `k * df` Hz), so that the sum over all bins is the signal's mean square
/// (after its mean is removed). Hann-windowed, scaled by the window's power so that a
/// tone's power is preserved: a tone of peak amplitude A spreads A²/2 over its main
/// lobe (±2 bins).
///
/// Computed from the unwindowed DFT X: the periodic Hann window is
/// 0.5 − 0.25·e^{+iθ} − 0.25·e^{−iθ}, so the windowed bin k is
/// 0.5·X[k] − 0.25·X[k−1] − 0.25·X[k+1], and removing the mean zeroes X[0]. That is
/// the same spectrum as transforming `(x − mean)·w` (docs/sql.md "Spectra"), without a
/// second FFT per waveform.
pub(crate) struct Spectrum<'a> {
    /// The unwindowed DFT X, bins 0..=n/2.
    raw: &'a [Complex<f64>],
    n: usize,
    /// Bin spacing in Hz (fs / n).
    pub(crate) df: f64,
    /// 1 / (n · Σw²).
    norm: f64,
}

impl<'a> Spectrum<'a> {
    pub(crate) fn new(raw: &'a [Complex<f64>], n: usize, fs: f64) -> Spectrum<'a> {
        Spectrum {
            raw,
            n,
            df: fs / n as f64,
            norm: 1.0 / (n as f64 * hann_power(n)),
        }
    }

    /// Bins 0..=n/2.
    pub(crate) fn len(&self) -> usize {
        self.n / 2 + 1
    }

    /// X[k] of the signal with its mean removed, for any integer k (periodic, and
    /// X[n − k] = conj X[k] for a real signal), from the full transform.
    fn raw(b: &[Complex<f64>], n: usize, k: isize) -> Complex<f64> {
        let m = k.rem_euclid(n as isize) as usize;
        if m == 0 {
            Complex::new(0.0, 0.0)
        } else if m <= n / 2 {
            b[m]
        } else {
            b[n - m].conj()
        }
    }

    /// Mean square in bin `k` (0 outside 0..=n/2).
    pub(crate) fn power(&self, k: usize) -> f64 {
        if k >= self.len() {
            return 0.0;
        }
        let b = self.raw;
        let w = if k >= 2 && k + 1 < b.len() {
            // Inside the spectrum: the neighbours directly.
            b[k] * 0.5 - (b[k - 1] + b[k + 1]) * 0.25
        } else {
            let (n, i) = (self.n, k as isize);
            Self::raw(b, n, i) * 0.5 - (Self::raw(b, n, i - 1) + Self::raw(b, n, i + 1)) * 0.25
        };
        // Bins other than DC and Nyquist stand for their negative twin too.
        let twice = k != 0 && !(self.n.is_multiple_of(2) && k == self.n / 2);
        w.norm_sqr() * self.norm * if twice { 2.0 } else { 1.0 }
    }

    /// Indices of the bins whose centre frequency lies in `[lo, hi]` Hz (never DC).
    pub(crate) fn bins(&self, lo: f64, hi: f64) -> std::ops::Range<usize> {
        bin_range(self.df, self.len(), lo, hi)
    }

    /// Mean square in `[lo, hi]` Hz, each bin weighted by `weight(f)`.
    pub(crate) fn band_power(&self, lo: f64, hi: f64, weight: impl Fn(f64) -> f64) -> f64 {
        self.bins(lo, hi)
            .map(|k| self.power(k) * weight(k as f64 * self.df))
            .sum()
    }

    /// Peak amplitude of the tone near `f` Hz: from the power of the bins within
    /// `tolerance + 2 bins` of `f` (a Hann-windowed tone's main lobe is ±2 bins), so it
    /// does not depend on where the tone falls between bins.
    pub(crate) fn tone_amplitude(&self, f: f64, tolerance: f64) -> f64 {
        let (lo, hi) = tone_reach(f, tolerance, self.df);
        (2.0 * self.band_power(lo, hi, |_| 1.0)).sqrt()
    }
}

/// The band `[lo, hi]` Hz that [`Spectrum::tone_amplitude`] sums for a tone at `f`.
pub(crate) fn tone_reach(f: f64, tolerance: f64, df: f64) -> (f64, f64) {
    let reach = tolerance.max(0.0) + 2.0 * df;
    (f - reach, f + reach)
}

/// Bins (of `len`, spaced `df` Hz) whose centre lies in `[lo, hi]` Hz, never DC.
pub(crate) fn bin_range(df: f64, len: usize, lo: f64, hi: f64) -> std::ops::Range<usize> {
    let first = ((lo / df).ceil().max(1.0) as usize).min(len);
    let end = ((hi / df).floor() + 1.0).max(0.0) as usize;
    first..end.clamp(first, len)
}

/// Σw² of the periodic Hann window w[i] = sin²(πi/n): 3n/8 for n ≥ 3 (the cos 4πi/n
/// terms sum to zero), summed directly below.
fn hann_power(n: usize) -> f64 {
    if n >= 3 {
        3.0 * n as f64 / 8.0
    } else {
        (0..n)
            .map(|i| (std::f64::consts::PI * i as f64 / n as f64).sin().powi(4))
            .sum()
    }
}
