//! The DSP functions as DataFusion scalar UDFs: argument checking at planning time,
//! and the row loop (NULL in, NULL out).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type};
use datafusion::common::{exec_err, plan_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use super::bearing::{defect_hz, iso_zone, Defect, CLASSES};
use super::{envelope, spectral, time};

/// One DSP function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Dsp {
    WaveRms,
    WavePeak,
    WaveCrestFactor,
    WaveKurtosis,
    BandRms,
    SpectrumPeakHz,
    OrderAmplitude,
    VelocityRms,
    EnvelopeAmplitude,
    Bearing(Defect),
    IsoZone,
}

impl Dsp {
    /// Every function, as registered.
    pub(crate) const ALL: [Dsp; 14] = [
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

    pub(crate) fn name(self) -> &'static str {
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
    fn usage(self) -> &'static str {
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
    fn arities(self) -> &'static [usize] {
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
    fn takes_wave(self) -> bool {
        !matches!(self, Dsp::Bearing(_) | Dsp::IsoZone)
    }

    /// The value for one row: `wave` (when the function takes one) and the numeric
    /// arguments after it. `None` (SQL NULL) when the result is undefined.
    pub(crate) fn compute(self, wave: &[f64], a: &[f64]) -> Option<f64> {
        // Every spectral function needs a sample rate and samples.
        let spectral = || wave.len() >= 2 && a[0].is_finite() && a[0] > 0.0;
        let band = |lo: f64, hi: f64| lo.is_finite() && hi.is_finite() && lo <= hi;
        let v = match self {
            Dsp::WaveRms if !wave.is_empty() => time::rms(wave),
            Dsp::WavePeak if !wave.is_empty() => time::peak(wave),
            Dsp::WaveCrestFactor if !wave.is_empty() => time::crest_factor(wave)?,
            Dsp::WaveKurtosis if !wave.is_empty() => time::kurtosis(wave)?,
            Dsp::BandRms if spectral() && band(a[1], a[2]) => {
                spectral::band_rms(wave, a[0], a[1], a[2])
            }
            Dsp::SpectrumPeakHz if spectral() => {
                let (lo, hi) = match a {
                    [_, lo, hi] => (*lo, *hi),
                    _ => (0.0, a[0] / 2.0),
                };
                if !band(lo, hi) {
                    return None;
                }
                spectral::spectrum_peak_hz(wave, a[0], lo, hi)?
            }
            Dsp::OrderAmplitude if spectral() && a[1].is_finite() && a[2].is_finite() => {
                spectral::order_amplitude(wave, a[0], a[1], a[2])
            }
            Dsp::VelocityRms if spectral() => {
                let (lo, hi) = match a {
                    [_, lo, hi] => (*lo, *hi),
                    _ => spectral::ISO_BAND,
                };
                if !band(lo, hi) {
                    return None;
                }
                spectral::velocity_rms(wave, a[0], lo, hi)
            }
            Dsp::EnvelopeAmplitude if spectral() && band(a[1], a[2]) && a[3].is_finite() => {
                let tolerance = a.get(4).copied();
                if tolerance.is_some_and(|t| !(t >= 0.0 && t.is_finite())) {
                    return None;
                }
                envelope::envelope_amplitude(wave, a[0], a[1], a[2], a[3], tolerance)
            }
            Dsp::Bearing(d) => defect_hz(d, a[0], a[1], a[2], a[3], a[4])?,
            _ => return None,
        };
        v.is_finite().then_some(v)
    }
}

/// The type a waveform argument is cast to.
pub(crate) fn wave_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)))
}

/// A DSP function as a scalar UDF.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct DspUdf {
    f: Dsp,
    signature: Signature,
}

impl DspUdf {
    pub(crate) fn new(f: Dsp) -> Self {
        DspUdf {
            f,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn is_number(t: &DataType) -> bool {
    t.is_numeric() || t.is_null()
}

impl ScalarUDFImpl for DspUdf {
    fn name(&self) -> &str {
        self.f.name()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(match self.f {
            Dsp::IsoZone => DataType::Utf8,
            _ => DataType::Float64,
        })
    }
    // Checked when the query is planned, so `forewarn check` reports a misuse.
    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        let (name, usage) = (self.f.name(), self.f.usage());
        if !self.f.arities().contains(&args.len()) {
            return plan_err!("{name} takes {usage}, but got {} arguments", args.len());
        }
        args.iter()
            .enumerate()
            .map(|(i, t)| {
                let n = i + 1;
                if i == 0 && self.f.takes_wave() {
                    return match t {
                        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _)
                            if is_number(f.data_type()) =>
                        {
                            Ok(wave_type())
                        }
                        DataType::Null => Ok(wave_type()),
                        _ => plan_err!(
                            "{name} takes {usage}: argument 1 must be a waveform (DOUBLE[]), got {t}"
                        ),
                    };
                }
                if self.f == Dsp::IsoZone && i == 1 {
                    return match t {
                        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {
                            Ok(DataType::Utf8)
                        }
                        _ => plan_err!(
                            "{name} takes {usage}: argument 2 must be a machine class ({CLASSES}), got {t}"
                        ),
                    };
                }
                if is_number(t) {
                    Ok(DataType::Float64)
                } else {
                    plan_err!("{name} takes {usage}: argument {n} must be a number, got {t}")
                }
            })
            .collect()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let out: ArrayRef = if self.f == Dsp::IsoZone {
            Arc::new(zones(&arrays[0], &arrays[1], rows)?)
        } else {
            Arc::new(values(self.f, &arrays, rows)?)
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// The function over each row; NULL where an argument is NULL.
fn values(f: Dsp, arrays: &[ArrayRef], rows: usize) -> Result<Float64Array> {
    let skip = usize::from(f.takes_wave());
    let numbers: Vec<&Float64Array> = arrays[skip..]
        .iter()
        .map(|a| a.as_primitive::<Float64Type>())
        .collect();
    let waves = (skip == 1).then(|| arrays[0].as_list::<i32>());
    let mut a = vec![0.0; numbers.len()];
    let mut out = Vec::with_capacity(rows);
    for row in 0..rows {
        if numbers.iter().any(|n| n.is_null(row)) {
            out.push(None);
            continue;
        }
        for (slot, n) in a.iter_mut().zip(&numbers) {
            *slot = n.value(row);
        }
        let v = match waves {
            Some(w) if w.is_null(row) => None,
            Some(w) => {
                let samples = w.value(row);
                let samples = samples.as_primitive::<Float64Type>();
                // A NULL sample has no value to compute with.
                if samples.null_count() > 0 {
                    None
                } else {
                    f.compute(samples.values(), &a)
                }
            }
            None => f.compute(&[], &a),
        };
        out.push(v);
    }
    Ok(Float64Array::from(out))
}

/// `iso_zone` over each row; an unknown machine class is an error, not a NULL, since it
/// is a mistake in the query rather than in the data.
fn zones(v: &ArrayRef, class: &ArrayRef, rows: usize) -> Result<StringArray> {
    let v = v.as_primitive::<Float64Type>();
    let class = class.as_string::<i32>();
    let mut out = Vec::with_capacity(rows);
    for row in 0..rows {
        if v.is_null(row) || class.is_null(row) || !v.value(row).is_finite() {
            out.push(None);
            continue;
        }
        match iso_zone(v.value(row), class.value(row)) {
            Ok(z) => out.push(Some(z)),
            Err(()) => {
                return exec_err!(
                    "iso_zone: unknown machine class '{}' (use {CLASSES})",
                    class.value(row)
                )
            }
        }
    }
    Ok(StringArray::from(out))
}
