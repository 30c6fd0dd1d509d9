//! Vibration analysis on waveforms: time-domain features, spectra, ISO velocity and
//! severity zones, envelope analysis and bearing defect frequencies. Pure math on
//! `&[f64]` (no Arrow, no DataFusion): `forewarn-sql` wraps each function of
//! [`Dsp`] as a scalar SQL function.
//!
//! Conventions (docs/sql.md "Vibration"): frequencies in Hz, amplitudes in the
//! waveform's unit; an "amplitude" is the peak amplitude of a sinusoid (A for
//! A·sin(2πft)), an RMS is a root mean square. Spectra are Hann-windowed with the mean
//! removed; FFT plans and scratch buffers are cached per length and thread.
//!
//! The spectral functions read a [`WaveSpectrum`] (one forward FFT of the waveform), so
//! several features of one waveform can share it:
//!
//! ```
//! use forewarn_dsp::{spectral, envelope, WaveSpectrum};
//! let x: Vec<f64> = (0..1024).map(|i| (i as f64 * 0.3).sin()).collect();
//! let s = WaveSpectrum::of(&x, 10_000.0);
//! let v = spectral::velocity_rms(&s, 10.0, 1000.0);
//! let e = envelope::envelope_amplitude(&s, 2000.0, 4000.0, 107.5, None);
//! assert!(v.is_finite() && e.is_finite());
//! ```

pub mod bearing;
pub mod envelope;
mod fft;
mod functions;
pub mod spectral;
pub mod time;

pub use bearing::Defect;
pub use fft::WaveSpectrum;
pub use functions::Dsp;

#[cfg(test)]
mod tests;
