//! Waveforms: decode cost of 4,096 samples sent as a JSON array against the compact
//! encodings (base64 `f32le`, `i16le`), and the DSP functions' throughput on them.
//!
//! `cargo bench --bench waveform [-- MESSAGES]` (default 2,000 messages of one reading
//! with 4,096 samples at 10.24 kHz). One core, best of 5 interleaved rounds. Prints
//! messages/s and samples/s per encoding, then waveforms/s per DSP function and for the
//! feature set of a bearing query (velocity, band RMS, 1× amplitude, kurtosis, envelope
//! at BPFO), which share each waveform's FFT. The DSP math alone, in release:
//! `cargo bench -p forewarn-dsp`.

use std::f64::consts::PI;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use datafusion::arrow::array::{ArrayRef, ListArray};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema, TimeUnit};
use datafusion::common::config::ConfigOptions;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF};
use forewarn_formats::JsonDecoder;

const SAMPLES: usize = 4096;
const FS: f64 = 10_240.0;

/// Reading `i`: an accelerometer's 1× and 2× tones, a bearing's ringing, noise.
fn wave(i: usize) -> Vec<f64> {
    let mut s = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..SAMPLES)
        .map(|k| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let t = k as f64 / FS;
            2.0 * (2.0 * PI * 29.6 * t).sin()
                + 0.5 * (2.0 * PI * 59.2 * t).sin()
                + 0.4 * (-(t % (1.0 / 107.5)) / 0.0008).exp() * (2.0 * PI * 3000.0 * t).sin()
                + ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.2
        })
        .collect()
}

fn payload(encoding: &str, x: &[f64], ts: i64) -> Vec<u8> {
    let b64 = |b: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(b);
    let wave = match encoding {
        // What a device printing its f32 samples sends: 6 significant digits.
        "json array" => {
            let items: Vec<String> = x.iter().map(|v| format!("{v:.5}")).collect();
            format!("[{}]", items.join(","))
        }
        "f32le" => format!(
            r#"{{"encoding":"f32le","data":"{}"}}"#,
            b64(x.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect())
        ),
        _ => format!(
            r#"{{"encoding":"i16le","scale":0.0005,"data":"{}"}}"#,
            b64(x
                .iter()
                .flat_map(|&v| ((v / 0.0005).round() as i16).to_le_bytes())
                .collect())
        ),
    };
    format!(r#"{{"ts":{ts},"fs":{FS},"wave":{wave}}}"#).into_bytes()
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("fs", DataType::Float64, true),
        Field::new(
            "wave",
            DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
            true,
        ),
    ]))
}

/// Messages/s of the decoder over `messages`.
fn decode(messages: &[Vec<u8>]) -> f64 {
    let mut d = JsonDecoder::new(schema(), None, 1 << 20).unwrap();
    let start = Instant::now();
    let mut accepted = 0;
    for (i, p) in messages.iter().enumerate() {
        accepted += d.decode("vib/pump-1", p).accepted;
        if i % 64 == 63 {
            std::hint::black_box(d.flush());
        }
    }
    std::hint::black_box(d.flush());
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(accepted, messages.len());
    messages.len() as f64 / secs
}

/// Waveforms/s of `calls` (function name, numeric arguments after the waveform) over
/// `waves`.
fn dsp(udfs: &[ScalarUDF], calls: &[(&str, Vec<f64>)], waves: &ArrayRef) -> f64 {
    let rows = waves.len();
    let start = Instant::now();
    for (name, numbers) in calls {
        let udf = udfs.iter().find(|u| u.name() == *name).unwrap();
        let mut args = vec![ColumnarValue::Array(waves.clone())];
        let mut arg_fields = vec![Arc::new(Field::new(
            "wave",
            waves.data_type().clone(),
            true,
        ))];
        for (i, v) in numbers.iter().enumerate() {
            args.push(ColumnarValue::Scalar(ScalarValue::Float64(Some(*v))));
            arg_fields.push(Arc::new(Field::new(
                format!("a{i}"),
                DataType::Float64,
                true,
            )));
        }
        let out = udf
            .invoke_with_args(ScalarFunctionArgs {
                args,
                arg_fields,
                number_rows: rows,
                return_field: Arc::new(Field::new(*name, DataType::Float64, true)),
                config_options: Arc::new(ConfigOptions::default()),
            })
            .unwrap();
        std::hint::black_box(out);
    }
    rows as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let waves: Vec<Vec<f64>> = (0..64).map(wave).collect();
    println!("waveform decode: {n} messages of {SAMPLES} samples, best of 5 interleaved rounds, one core");
    println!(
        "{:<12} {:>14} {:>12} {:>16}",
        "encoding", "bytes/message", "messages/s", "samples/s"
    );
    let encodings = ["json array", "f32le", "i16le"];
    let cases: Vec<Vec<Vec<u8>>> = encodings
        .iter()
        .map(|e| {
            (0..n)
                .map(|i| payload(e, &waves[i % waves.len()], i as i64))
                .collect()
        })
        .collect();
    let mut best = [0f64; 3];
    for _ in 0..5 {
        for (b, c) in best.iter_mut().zip(&cases) {
            *b = b.max(decode(c));
        }
    }
    for ((e, c), b) in encodings.iter().zip(&cases).zip(best) {
        println!(
            "{:<12} {:>14} {:>12.0} {:>16.0}",
            e,
            c[0].len(),
            b,
            b * SAMPLES as f64
        );
    }
    println!(
        "f32le decodes {:.1}x faster than the JSON array, i16le {:.1}x",
        best[1] / best[0],
        best[2] / best[0]
    );

    let udfs = forewarn_sql::dsp_udfs();
    // A new batch (new buffers) per round: the functions share a waveform's FFT within
    // a batch, and a batch measured twice would find every FFT already done.
    let list = || -> ArrayRef {
        Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>(
            (0..256).map(|i| Some(waves[i % waves.len()].iter().map(|&v| Some(v)))),
        ))
    };
    let bpfo = 107.5;
    let features: Vec<(&str, Vec<f64>)> = vec![
        ("velocity_rms", vec![FS]),
        ("band_rms", vec![FS, 10.0, 1000.0]),
        ("order_amplitude", vec![FS, 1776.0, 1.0]),
        ("wave_kurtosis", vec![]),
        ("envelope_amplitude", vec![FS, 2000.0, 4000.0, bpfo]),
    ];
    println!("\nDSP on {SAMPLES}-sample waveforms, one core, best of 5");
    println!("{:<40} {:>14}", "function", "waveforms/s");
    for f in &features {
        let best = (0..5)
            .map(|_| dsp(&udfs, std::slice::from_ref(f), &list()))
            .fold(0.0, f64::max);
        println!("{:<40} {:>14.0}", f.0, best);
    }
    let best = (0..5)
        .map(|_| dsp(&udfs, &features, &list()))
        .fold(0.0, f64::max);
    println!("{:<40} {:>14.0}", "the bearing query's five features", best);
}
