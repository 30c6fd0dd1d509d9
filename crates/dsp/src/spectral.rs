//! Frequency-domain features: band RMS, the spectral peak, order amplitudes and ISO
//! velocity. Frequencies in Hz, amplitudes in the waveform's unit. Each reads a
//! waveform's [`WaveSpectrum`], so features of one waveform share its FFT.

use crate::fft::WaveSpectrum;

/// The ISO 10816 / 20816 velocity band, Hz.
pub const ISO_BAND: (f64, f64) = (10.0, 1000.0);

/// RMS of the content between `lo` and `hi` Hz (bins whose centre lies in the band).
pub fn band_rms(s: &WaveSpectrum, lo: f64, hi: f64) -> f64 {
    s.power().band_power(lo, hi, |_| 1.0).sqrt()
}

/// Frequency of the strongest bin between `lo` and `hi` Hz, refined by a parabola
/// through it and its neighbours (so within half a bin of the true peak); `None` when
/// the band holds no bin or no power.
pub fn spectrum_peak_hz(s: &WaveSpectrum, lo: f64, hi: f64) -> Option<f64> {
    let s = s.power();
    let bins = s.bins(lo, hi);
    let (k, pk) = bins
        .map(|k| (k, s.power(k)))
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    if pk <= 0.0 {
        return None;
    }
    let mag = |i: usize| s.power(i).sqrt();
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
pub fn order_amplitude(s: &WaveSpectrum, rpm: f64, order: f64) -> f64 {
    let s = s.power();
    s.tone_amplitude(order * rpm / 60.0, s.df)
}

/// Velocity RMS in mm/s of an acceleration waveform in m/s², integrated in the frequency
/// domain (each bin's amplitude divided by 2πf) over `[lo, hi]` Hz.
pub fn velocity_rms(s: &WaveSpectrum, lo: f64, hi: f64) -> f64 {
    let ms = s.power().band_power(lo, hi, |f| {
        let w = 2.0 * std::f64::consts::PI * f;
        1.0 / (w * w)
    });
    ms.sqrt() * 1000.0
}
