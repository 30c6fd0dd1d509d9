//! Vibration analysis on waveform columns (`DOUBLE[]`): time-domain features, spectra,
//! ISO velocity and severity zones, envelope analysis and bearing defect frequencies,
//! as scalar SQL functions. They run per reading in a pane's partial half, so a window
//! keeps only the aggregate state of their results, never the waveforms.
//!
//! Conventions (docs/sql.md "Vibration"): frequencies in Hz, amplitudes in the
//! waveform's unit; an "amplitude" is the peak amplitude of a sinusoid (A for
//! A·sin(2πft)), an RMS is a root mean square. Spectra are Hann-windowed with the mean
//! removed; FFT plans are cached per length and thread.

mod bearing;
mod envelope;
mod fft;
mod spectral;
mod time;
mod udf;

use datafusion::logical_expr::ScalarUDF;

/// Every DSP function, ready to register.
pub fn dsp_udfs() -> Vec<ScalarUDF> {
    udf::Dsp::ALL
        .into_iter()
        .map(|f| ScalarUDF::new_from_impl(udf::DspUdf::new(f)))
        .collect()
}

#[cfg(test)]
mod tests;
