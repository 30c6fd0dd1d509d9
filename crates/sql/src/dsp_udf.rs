//! The DSP functions of `forewarn-dsp` as DataFusion scalar UDFs: argument checking at
//! planning time, and the row loop (NULL in, NULL out). Functions of one waveform share
//! its FFT through [`SpectrumCache`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, StringArray};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{plan_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use forewarn_dsp::bearing::{iso_zone, CLASSES};
use forewarn_dsp::{Dsp, WaveSpectrum};

/// Every DSP function, ready to register.
pub fn dsp_udfs() -> Vec<ScalarUDF> {
    Dsp::ALL
        .into_iter()
        .map(|f| ScalarUDF::new_from_impl(DspUdf::new(f)))
        .collect()
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

/// `t` as the SQL type a query declares (TEXT, not Utf8).
fn sql_type(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "TEXT".into(),
        DataType::Float64 | DataType::Float32 => "DOUBLE".into(),
        DataType::Int64 | DataType::Int32 | DataType::Int16 | DataType::Int8 => "BIGINT".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Timestamp(..) => "TIMESTAMP".into(),
        DataType::List(f) | DataType::LargeList(f) => format!("{}[]", sql_type(f.data_type())),
        other => other.to_string(),
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
    // A literal machine class is checked when the query is planned (`forewarn check`),
    // not at the first window (which would lose that window's results).
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        if self.f == Dsp::IsoZone {
            if let Some(Some(class)) = args.scalar_arguments.get(1) {
                if let Some(Some(c)) = class.try_as_str() {
                    if iso_zone(0.0, c).is_none() {
                        return plan_err!("iso_zone: unknown machine class '{c}' (use {CLASSES})");
                    }
                }
            }
        }
        let types: Vec<DataType> = args
            .arg_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        Ok(Arc::new(Field::new(
            self.name(),
            self.return_type(&types)?,
            true,
        )))
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
                            "{name} takes {usage}: argument 1 must be a waveform (DOUBLE[]), got {}", sql_type(t)
                        ),
                    };
                }
                if self.f == Dsp::IsoZone && i == 1 {
                    return match t {
                        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {
                            Ok(DataType::Utf8)
                        }
                        _ => plan_err!(
                            "{name} takes {usage}: argument 2 must be a machine class ({CLASSES}), got {}", sql_type(t)
                        ),
                    };
                }
                if is_number(t) {
                    Ok(DataType::Float64)
                } else {
                    plan_err!(
                        "{name} takes {usage}: argument {n} must be a number, got {}",
                        sql_type(t)
                    )
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
    let samples = waves.map(|w| w.values().as_primitive::<Float64Type>());
    if let (true, Some(s)) = (f.spectral(), samples) {
        SPECTRA.with(|c| c.borrow_mut().batch(s.values().inner()));
    }
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
        let v = match (waves, samples) {
            (Some(w), _) if w.is_null(row) => None,
            (Some(w), Some(s)) => {
                let offsets = w.value_offsets();
                let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                // A NULL sample has no value to compute with.
                let has_null = s
                    .nulls()
                    .is_some_and(|n| n.slice(start, end - start).null_count() > 0);
                if has_null {
                    None
                } else {
                    f.compute_with(&s.values()[start..end], &a, |x, fs| {
                        SPECTRA.with(|c| c.borrow_mut().get(x, fs))
                    })
                }
            }
            _ => f.compute(&[], &a),
        };
        out.push(v);
    }
    Ok(Float64Array::from(out))
}

/// Spectra held per thread at most, in bytes: a batch of waveforms larger than this
/// computes the rest per call (correct, only slower).
const MAX_CACHED_BYTES: usize = 32 << 20;

/// Sample buffers larger than this are not held (nor their spectra cached).
const MAX_HELD_BYTES: usize = 64 << 20;

thread_local! {
    static SPECTRA: RefCell<SpectrumCache> = RefCell::new(SpectrumCache::default());
}

/// The FFTs of the waveforms of the batch being evaluated, so `velocity_rms`,
/// `envelope_amplitude`, ... of one waveform transform it once: DataFusion evaluates
/// each function over the whole batch in turn, all reading the same samples buffer.
///
/// Keyed by the samples' address, length and sample rate, which is sound because the
/// cache holds a reference to the buffer they live in: while it is held, the memory
/// cannot be freed and reused by another waveform, and Arrow buffers are immutable
/// while shared. A call on another buffer (the next batch) empties the cache, so a
/// thread holds at most one batch's samples (up to 64 MiB) beyond its evaluation.
#[derive(Default)]
struct SpectrumCache {
    owner: Option<Buffer>,
    spectra: HashMap<(usize, usize, u64), Arc<WaveSpectrum>>,
    bytes: usize,
}

impl SpectrumCache {
    /// Starts serving the batch whose samples are `buffer` (keeps the cache when it is
    /// the same buffer).
    fn batch(&mut self, buffer: &Buffer) {
        let same = self
            .owner
            .as_ref()
            .is_some_and(|o| o.as_ptr() == buffer.as_ptr() && o.len() == buffer.len());
        if !same {
            self.spectra.clear();
            self.bytes = 0;
            // A batch is held until this thread's next one: not a very large one.
            self.owner = (buffer.len() <= MAX_HELD_BYTES).then(|| buffer.clone());
        }
    }

    /// The spectrum of `x` (a slice of the current buffer) at `fs` Hz.
    fn get(&mut self, x: &[f64], fs: f64) -> Arc<WaveSpectrum> {
        let inside = self.owner.as_ref().is_some_and(|o| {
            let base = o.as_ptr() as usize;
            let at = x.as_ptr() as usize;
            at >= base && at + std::mem::size_of_val(x) <= base + o.len()
        });
        if !inside {
            return Arc::new(WaveSpectrum::of(x, fs));
        }
        let key = (x.as_ptr() as usize, x.len(), fs.to_bits());
        if let Some(s) = self.spectra.get(&key) {
            return s.clone();
        }
        let s = Arc::new(WaveSpectrum::of(x, fs));
        if self.bytes + s.bytes() <= MAX_CACHED_BYTES {
            self.bytes += s.bytes();
            self.spectra.insert(key, s.clone());
        }
        s
    }
}

/// `iso_zone` over each row; NULL for an unknown machine class read from a column (a
/// literal one is refused when the query is planned), rather than failing the batch.
fn zones(v: &ArrayRef, class: &ArrayRef, rows: usize) -> Result<StringArray> {
    let v = v.as_primitive::<Float64Type>();
    let class = class.as_string::<i32>();
    let mut out = Vec::with_capacity(rows);
    for row in 0..rows {
        if v.is_null(row) || class.is_null(row) || !v.value(row).is_finite() {
            out.push(None);
            continue;
        }
        out.push(iso_zone(v.value(row), class.value(row)));
    }
    Ok(StringArray::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_types_are_checked_when_planned() {
        let udf = |d| DspUdf::new(d);
        let list = wave_type();
        assert_eq!(
            udf(Dsp::BandRms)
                .coerce_types(&[
                    list.clone(),
                    DataType::Int64,
                    DataType::Float64,
                    DataType::Int32
                ])
                .unwrap(),
            vec![
                list.clone(),
                DataType::Float64,
                DataType::Float64,
                DataType::Float64
            ]
        );
        let e = udf(Dsp::BandRms)
            .coerce_types(&[
                DataType::Float64,
                DataType::Float64,
                DataType::Float64,
                DataType::Float64,
            ])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("argument 1 must be a waveform (DOUBLE[]), got DOUBLE"),
            "{e}"
        );
        let e = udf(Dsp::SpectrumPeakHz)
            .coerce_types(&[list.clone(), DataType::Float64, DataType::Float64])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spectrum_peak_hz(wave, fs [, lo_hz, hi_hz]), but got 3 arguments"),
            "{e}"
        );
        let e = udf(Dsp::VelocityRms)
            .coerce_types(&[list, DataType::Utf8])
            .unwrap_err()
            .to_string();
        assert!(e.contains("argument 2 must be a number, got TEXT"), "{e}");
        let e = udf(Dsp::IsoZone)
            .coerce_types(&[DataType::Float64, DataType::Int64])
            .unwrap_err()
            .to_string();
        assert!(e.contains("argument 2 must be a machine class"), "{e}");
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;
    use datafusion::arrow::array::ListArray;
    use datafusion::common::config::ConfigOptions;
    use datafusion::common::ScalarValue;
    use datafusion::logical_expr::ScalarFunctionArgs;

    const FS: f64 = 10_000.0;

    /// Waveform `i`: a tone and a ringing burst whose frequencies depend on `i`.
    fn wave(i: usize, n: usize) -> Vec<f64> {
        (0..n)
            .map(|k| {
                let t = k as f64 / FS;
                let f = 50.0 + 37.0 * i as f64;
                (2.0 * std::f64::consts::PI * f * t).sin()
                    + (1.0 + i as f64)
                        * (-(t % 0.009) / 0.0008).exp()
                        * (2.0 * std::f64::consts::PI * 3000.0 * t).sin()
            })
            .collect()
    }

    fn call(f: Dsp, waves: &ArrayRef, numbers: &[f64]) -> Vec<Option<f64>> {
        let mut args = vec![ColumnarValue::Array(waves.clone())];
        let mut arg_fields = vec![Arc::new(Field::new("w", wave_type(), true))];
        for (i, v) in numbers.iter().enumerate() {
            args.push(ColumnarValue::Scalar(ScalarValue::Float64(Some(*v))));
            arg_fields.push(Arc::new(Field::new(
                format!("a{i}"),
                DataType::Float64,
                true,
            )));
        }
        let out = DspUdf::new(f)
            .invoke_with_args(ScalarFunctionArgs {
                args,
                arg_fields,
                number_rows: waves.len(),
                return_field: Arc::new(Field::new("out", DataType::Float64, true)),
                config_options: Arc::new(ConfigOptions::default()),
            })
            .unwrap();
        let ColumnarValue::Array(a) = out else {
            panic!("an array")
        };
        a.as_primitive::<Float64Type>().iter().collect()
    }

    fn list(waves: &[Vec<f64>]) -> ArrayRef {
        Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>(
            waves.iter().map(|w| Some(w.iter().map(|&v| Some(v)))),
        ))
    }

    /// Spectra shared between functions and calls never leak from one waveform to
    /// another: every value equals the function computed alone on that waveform,
    /// across batches (freed and reallocated, possibly at the same address), slices of
    /// one buffer, and rows of the same length.
    #[test]
    fn shared_spectra_match_each_waveform_computed_alone() {
        let calls: [(Dsp, Vec<f64>); 4] = [
            (Dsp::VelocityRms, vec![FS]),
            (Dsp::EnvelopeAmplitude, vec![FS, 2000.0, 4000.0, 111.1]),
            (Dsp::BandRms, vec![FS, 10.0, 1000.0]),
            (Dsp::VelocityRms, vec![FS]),
        ];
        for round in 0..4 {
            let waves: Vec<Vec<f64>> = (0..5).map(|i| wave(i + 5 * round, 1024)).collect();
            let array = list(&waves);
            // A slice of the same buffer: other rows, same samples' memory.
            let sliced = array.slice(2, 3);
            for (f, numbers) in &calls {
                for (arr, rows) in [(&array, &waves[..]), (&sliced, &waves[2..])] {
                    let got = call(*f, arr, numbers);
                    let want: Vec<Option<f64>> =
                        rows.iter().map(|w| f.compute(w, numbers)).collect();
                    assert_eq!(got, want, "{} in round {round}", f.name());
                }
            }
            drop(array);
        }
        // Different rows give different values (a cache that mixed them up would not).
        let waves: Vec<Vec<f64>> = (0..3).map(|i| wave(i, 1024)).collect();
        let v = call(Dsp::VelocityRms, &list(&waves), &[FS]);
        assert!(v[0] != v[1] && v[1] != v[2], "{v:?}");
    }
}
