//! Time-domain features of one waveform, in its own unit.

/// Root mean square, sqrt(mean(x²)) (the mean is kept, as `rms` does).
pub(crate) fn rms(x: &[f64]) -> f64 {
    (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt()
}

/// The largest absolute sample.
pub(crate) fn peak(x: &[f64]) -> f64 {
    x.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Peak over RMS; `None` for a silent waveform.
pub(crate) fn crest_factor(x: &[f64]) -> Option<f64> {
    let r = rms(x);
    (r > 0.0).then(|| peak(x) / r)
}

/// Pearson kurtosis m4 / m2² about the mean (3 for Gaussian noise, 1.5 for a sine), as
/// `kurtosis` computes it; `None` for a constant waveform.
pub(crate) fn kurtosis(x: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let (m2, m4) = x.iter().fold((0.0, 0.0), |(m2, m4), v| {
        let d = (v - mean) * (v - mean);
        (m2 + d, m4 + d * d)
    });
    (m2 > 0.0).then(|| n * m4 / (m2 * m2))
}
