//! Time-domain features of one waveform, in its own unit.
//!
//! Sums run over four interleaved accumulators: the same sums in another order (equal
//! up to rounding), without one long chain of dependent additions.

/// `Σ f(x)` over `x`, in four interleaved partial sums.
fn sum(x: &[f64], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0; 4];
    let chunks = x.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..4 {
            acc[j] += f(c[j]);
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + rest.iter().map(|v| f(*v)).sum::<f64>()
}

/// Root mean square, sqrt(mean(x²)) (the mean is kept, as `rms` does).
pub fn rms(x: &[f64]) -> f64 {
    (sum(x, |v| v * v) / x.len() as f64).sqrt()
}

/// The largest absolute sample.
pub fn peak(x: &[f64]) -> f64 {
    x.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Peak over RMS; `None` for a silent waveform.
pub fn crest_factor(x: &[f64]) -> Option<f64> {
    let r = rms(x);
    (r > 0.0).then(|| peak(x) / r)
}

/// Pearson kurtosis m4 / m2² about the mean (3 for Gaussian noise, 1.5 for a sine), as
/// `kurtosis` computes it; `None` for a constant waveform.
pub fn kurtosis(x: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    let mean = sum(x, |v| v) / n;
    let (mut m2, mut m4) = ([0.0; 4], [0.0; 4]);
    let chunks = x.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..4 {
            let d = (c[j] - mean) * (c[j] - mean);
            m2[j] += d;
            m4[j] += d * d;
        }
    }
    let (mut m2, mut m4) = (
        (m2[0] + m2[1]) + (m2[2] + m2[3]),
        (m4[0] + m4[1]) + (m4[2] + m4[3]),
    );
    for v in rest {
        let d = (v - mean) * (v - mean);
        m2 += d;
        m4 += d * d;
    }
    (m2 > 0.0).then(|| n * m4 / (m2 * m2))
}
