//! The catalogue of DSP functions as SQL calls them: names, argument shapes, and the
//! value of one call on one waveform (NULL where the result is undefined).

use std::sync::Arc;

use crate::bearing::{defect_hz, Defect};
use crate::fft::WaveSpectrum;
use crate::{envelope, spectral, time};

/// One DSP function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dsp {
    /// `wave_rms(wave)`.
    WaveRms,
    /// `wave_peak(wave)`.
    WavePeak,
    /// `wave_crest_factor(wave)`.
    WaveCrestFactor,
    /// `wave_kurtosis(wave)`.
    WaveKurtosis,
    /// `band_rms(wave, fs, lo_hz, hi_hz)`.
    BandRms,
    /// `spectrum_peak_hz(wave, fs [, lo_hz, hi_hz])`.
    SpectrumPeakHz,
    /// `order_amplitude(wave, fs, rpm, order)`.
    OrderAmplitude,
    /// `velocity_rms(wave, fs [, lo_hz, hi_hz])`.
    VelocityRms,
    /// `envelope_amplitude(wave, fs, band_lo_hz, band_hi_hz, freq_hz [, tolerance_hz])`.
    EnvelopeAmplitude,
    /// `bpfo`, `bpfi`, `bsf`, `ftf` from bearing geometry.
    Bearing(Defect),
    /// `iso_zone(velocity_rms_mm_s, machine_class)`.
    IsoZone,
}

impl Dsp {
    /// Every function, as registered.
    pub const ALL: [Dsp; 14] = [
        Dsp::WaveRms,
        Dsp::WavePeak,
        Dsp::WaveCrestFactor,
        Dsp::WaveKurtosis,
        Dsp::BandRms,
        Dsp::SpectrumPeakHz,
        Dsp::OrderAmplitude,
        Dsp::VelocityRms,
        Dsp::EnvelopeAmplitude,
        Dsp::Bearing(Defect::Bpfo),
        Dsp::Bearing(Defect::Bpfi),
        Dsp::Bearing(Defect::Bsf),
        Dsp::Bearing(Defect::Ftf),
        Dsp::IsoZone,
    ];

    /// The SQL name.
    pub fn name(self) -> &'static str {
        match self {
            Dsp::WaveRms => "wave_rms",
            Dsp::WavePeak => "wave_peak",
            Dsp::WaveCrestFactor => "wave_crest_factor",
            Dsp::WaveKurtosis => "wave_kurtosis",
            Dsp::BandRms => "band_rms",
            Dsp::SpectrumPeakHz => "spectrum_peak_hz",
            Dsp::OrderAmplitude => "order_amplitude",
            Dsp::VelocityRms => "velocity_rms",
            Dsp::EnvelopeAmplitude => "envelope_amplitude",
            Dsp::Bearing(Defect::Bpfo) => "bpfo",
            Dsp::Bearing(Defect::Bpfi) => "bpfi",
            Dsp::Bearing(Defect::Bsf) => "bsf",
            Dsp::Bearing(Defect::Ftf) => "ftf",
            Dsp::IsoZone => "iso_zone",
        }
    }

    /// The call's shape, for error messages.
    pub fn usage(self) -> &'static str {
        match self {
            Dsp::WaveRms => "wave_rms(wave)",
            Dsp::WavePeak => "wave_peak(wave)",
            Dsp::WaveCrestFactor => "wave_crest_factor(wave)",
            Dsp::WaveKurtosis => "wave_kurtosis(wave)",
            Dsp::BandRms => "band_rms(wave, fs, lo_hz, hi_hz)",
            Dsp::SpectrumPeakHz => "spectrum_peak_hz(wave, fs [, lo_hz, hi_hz])",
            Dsp::OrderAmplitude => "order_amplitude(wave, fs, rpm, order)",
            Dsp::VelocityRms => "velocity_rms(wave, fs [, lo_hz, hi_hz])",
            Dsp::EnvelopeAmplitude => {
                "envelope_amplitude(wave, fs, band_lo_hz, band_hi_hz, freq_hz [, tolerance_hz])"
            }
            Dsp::Bearing(Defect::Bpfo) => "bpfo(rpm, n_balls, ball_d, pitch_d, contact_angle_deg)",
            Dsp::Bearing(Defect::Bpfi) => "bpfi(rpm, n_balls, ball_d, pitch_d, contact_angle_deg)",
            Dsp::Bearing(Defect::Bsf) => "bsf(rpm, n_balls, ball_d, pitch_d, contact_angle_deg)",
            Dsp::Bearing(Defect::Ftf) => "ftf(rpm, n_balls, ball_d, pitch_d, contact_angle_deg)",
            Dsp::IsoZone => "iso_zone(velocity_rms_mm_s, machine_class)",
        }
    }

    /// Argument counts accepted.
    pub fn arities(self) -> &'static [usize] {
        match self {
            Dsp::WaveRms | Dsp::WavePeak | Dsp::WaveCrestFactor | Dsp::WaveKurtosis => &[1],
            Dsp::BandRms | Dsp::OrderAmplitude => &[4],
            Dsp::SpectrumPeakHz | Dsp::VelocityRms => &[2, 4],
            Dsp::EnvelopeAmplitude => &[5, 6],
            Dsp::Bearing(_) => &[5],
            Dsp::IsoZone => &[2],
        }
    }

    /// Whether the first argument is a waveform.
    pub fn takes_wave(self) -> bool {
        !matches!(self, Dsp::Bearing(_) | Dsp::IsoZone)
    }

    /// Whether the function reads the waveform's spectrum (its first numeric argument
    /// is then the sample rate).
    pub fn spectral(self) -> bool {
        matches!(
            self,
            Dsp::BandRms
                | Dsp::SpectrumPeakHz
                | Dsp::OrderAmplitude
                | Dsp::VelocityRms
                | Dsp::EnvelopeAmplitude
        )
    }

    /// The value for one row: `wave` (when the function takes one) and the numeric
    /// arguments after it. `None` (SQL NULL) when the result is undefined. Computes the
    /// waveform's FFT; see [`Dsp::compute_with`] to share it between functions.
    pub fn compute(self, wave: &[f64], a: &[f64]) -> Option<f64> {
        self.compute_with(wave, a, |x, fs| Arc::new(WaveSpectrum::of(x, fs)))
    }

    /// As [`Dsp::compute`], taking the waveform's spectrum from `spectrum(wave, fs)`,
    /// called at most once and only for a spectral function with valid arguments. It
    /// must return [`WaveSpectrum::of`] of exactly those samples and rate (e.g. from a
    /// cache that knows the waveform has not changed).
    pub fn compute_with(
        self,
        wave: &[f64],
        a: &[f64],
        spectrum: impl FnOnce(&[f64], f64) -> Arc<WaveSpectrum>,
    ) -> Option<f64> {
        // Every spectral function needs a sample rate and samples.
        let spectral = || wave.len() >= 2 && a[0].is_finite() && a[0] > 0.0;
        let band = |lo: f64, hi: f64| lo.is_finite() && hi.is_finite() && lo <= hi;
        let v = match self {
            Dsp::WaveRms if !wave.is_empty() => time::rms(wave),
            Dsp::WavePeak if !wave.is_empty() => time::peak(wave),
            Dsp::WaveCrestFactor if !wave.is_empty() => time::crest_factor(wave)?,
            Dsp::WaveKurtosis if !wave.is_empty() => time::kurtosis(wave)?,
            Dsp::BandRms if spectral() && band(a[1], a[2]) => {
                spectral::band_rms(&spectrum(wave, a[0]), a[1], a[2])
            }
            Dsp::SpectrumPeakHz if spectral() => {
                let (lo, hi) = match a {
                    [_, lo, hi] => (*lo, *hi),
                    _ => (0.0, a[0] / 2.0),
                };
                if !band(lo, hi) {
                    return None;
                }
                spectral::spectrum_peak_hz(&spectrum(wave, a[0]), lo, hi)?
            }
            Dsp::OrderAmplitude if spectral() && a[1].is_finite() && a[2].is_finite() => {
                spectral::order_amplitude(&spectrum(wave, a[0]), a[1], a[2])
            }
            Dsp::VelocityRms if spectral() => {
                let (lo, hi) = match a {
                    [_, lo, hi] => (*lo, *hi),
                    _ => spectral::ISO_BAND,
                };
                if !band(lo, hi) {
                    return None;
                }
                spectral::velocity_rms(&spectrum(wave, a[0]), lo, hi)
            }
            Dsp::EnvelopeAmplitude if spectral() && band(a[1], a[2]) && a[3].is_finite() => {
                let tolerance = a.get(4).copied();
                if tolerance.is_some_and(|t| !(t >= 0.0 && t.is_finite())) {
                    return None;
                }
                envelope::envelope_amplitude(&spectrum(wave, a[0]), a[1], a[2], a[3], tolerance)
            }
            Dsp::Bearing(d) => defect_hz(d, a[0], a[1], a[2], a[3], a[4])?,
            _ => return None,
        };
        v.is_finite().then_some(v)
    }
}
