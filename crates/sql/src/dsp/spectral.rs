//! Frequency-domain features: band RMS, the spectral peak, order amplitudes and ISO
//! velocity. Frequencies in Hz, amplitudes in the waveform's unit.

use super::fft::Spectrum;

/// The ISO 10816 / 20816 velocity band, Hz.
pub(crate) const ISO_BAND: (f64, f64) = (10.0, 1000.0);

/// RMS of the content between `lo` and `hi` Hz (bins whose centre lies in the band).
pub(crate) fn band_rms(x: &[f64], fs: f64, lo: f64, hi: f64) -> f64 {
    Spectrum::of(x, fs).band_power(lo, hi, |_| 1.0).sqrt()
}

/// Frequency of the strongest bin between `lo` and `hi` Hz, refined by a parabola
/// through it and its neighbours (so within half a bin of the true peak); `None` when
/// the band holds no bin or no power.
pub(crate) fn spectrum_peak_hz(x: &[f64], fs: f64, lo: f64, hi: f64) -> Option<f64> {
    let s = Spectrum::of(x, fs);
    let bins = s.bins(lo, hi);
    let k = bins
        .clone()
        .max_by(|a, b| s.power[*a].total_cmp(&s.power[*b]))?;
    if s.power[k] <= 0.0 {
        return None;
    }
    let mag = |i: usize| s.power.get(i).map_or(0.0, |p| p.sqrt());
    let (a, b, c) = (mag(k.wrapping_sub(1)), mag(k), mag(k + 1));
    let denom = a - 2.0 * b + c;
    let shift = if k > 0 && denom < 0.0 {
        (0.5 * (a - c) / denom).clamp(-0.5, 0.5)
    } else {
        0.0
    };
    Some((k as f64 + shift) * s.df)
}

/// Peak amplitude of the `order` × running-speed component (`rpm` / 60 Hz).
pub(crate) fn order_amplitude(x: &[f64], fs: f64, rpm: f64, order: f64) -> f64 {
    let s = Spectrum::of(x, fs);
    s.tone_amplitude(order * rpm / 60.0, s.df)
}

/// Velocity RMS in mm/s of an acceleration waveform in m/s², integrated in the frequency
/// domain (each bin's amplitude divided by 2πf) over `[lo, hi]` Hz.
pub(crate) fn velocity_rms(x: &[f64], fs: f64, lo: f64, hi: f64) -> f64 {
    let ms = Spectrum::of(x, fs).band_power(lo, hi, |f| {
        let w = 2.0 * std::f64::consts::PI * f;
        1.0 / (w * w)
    });
    ms.sqrt() * 1000.0
}
