//! Waveform values (`DOUBLE[]` columns): a JSON array of numbers, or the compact
//! encoding `{"encoding": "f32le" | "i16le", "scale": S, "data": "<base64>"}` where each
//! sample is `raw * scale` (`scale` defaults to 1). A bad waveform is never a syntax
//! error of the message: the value is consumed and its reading rejected with a reason.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Scalar, ScalarVisitor};
use crate::DecodeError;

/// Samples one waveform value may hold unless the source sets `max_samples`.
pub const DEFAULT_MAX_SAMPLES: usize = 65_536;

/// Reads one waveform column's value.
pub(super) struct WaveSeed<'a> {
    pub(super) field: &'a str,
    pub(super) max_samples: usize,
}

impl WaveSeed<'_> {
    fn bad(&self, why: impl Into<String>) -> DecodeError {
        DecodeError::BadWaveform {
            field: self.field.to_string(),
            why: why.into(),
        }
    }

    fn too_many(&self) -> DecodeError {
        DecodeError::TooManySamples {
            field: self.field.to_string(),
            limit: self.max_samples,
        }
    }

    /// Samples from the encoded object's parts.
    fn decode_encoded(
        &self,
        encoding: Option<Cow<'_, str>>,
        scale: Option<f64>,
        data: Option<Cow<'_, str>>,
    ) -> Result<Vec<f64>, DecodeError> {
        let encoding = encoding.ok_or_else(|| self.bad("no \"encoding\""))?;
        let size = match encoding.as_ref() {
            "f32le" => 4,
            "i16le" => 2,
            other => {
                return Err(self.bad(format!(
                    "unknown encoding '{}' (use \"f32le\" or \"i16le\")",
                    other.chars().take(32).collect::<String>()
                )))
            }
        };
        let scale = scale.unwrap_or(1.0);
        let data = data.ok_or_else(|| self.bad("no \"data\""))?;
        // Refuse before decoding: base64 holds 3 bytes per 4 characters.
        if data.len() / 4 * 3 > self.max_samples.saturating_mul(size).saturating_add(3) {
            return Err(self.too_many());
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.as_bytes())
            .map_err(|e| self.bad(format!("\"data\" is not base64: {e}")))?;
        if bytes.len() % size != 0 {
            return Err(self.bad(format!(
                "{} bytes is not a whole number of {encoding} samples",
                bytes.len()
            )));
        }
        let n = bytes.len() / size;
        if n > self.max_samples {
            return Err(self.too_many());
        }
        let samples: Vec<f64> = if size == 4 {
            bytes
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])) * scale)
                .collect()
        } else {
            bytes
                .chunks_exact(2)
                .map(|c| f64::from(i16::from_le_bytes([c[0], c[1]])) * scale)
                .collect()
        };
        if samples.is_empty() {
            return Err(self.bad("no samples"));
        }
        if samples.iter().any(|x| !x.is_finite()) {
            return Err(DecodeError::NonFinite(self.field.to_string()));
        }
        Ok(samples)
    }
}

impl<'de> de::DeserializeSeed<'de> for WaveSeed<'_> {
    type Value = Scalar<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for WaveSeed<'_> {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a waveform")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut samples = Vec::new();
        let mut problem = None;
        let mut i = 0usize;
        // The whole array is consumed whatever it holds, so the rest of the message
        // still parses and only this reading is refused.
        while let Some(v) = seq.next_element::<Scalar<'de>>()? {
            if problem.is_none() {
                match v {
                    _ if i >= self.max_samples => problem = Some(self.too_many()),
                    Scalar::Int(x) => samples.push(x as f64),
                    Scalar::Float(x) => samples.push(x),
                    other => {
                        problem = Some(self.bad(format!("sample {i} is {}", other.type_name())))
                    }
                }
            }
            i += 1;
        }
        Ok(Scalar::Wave(
            match problem {
                Some(e) => Err(e),
                None if samples.is_empty() => Err(self.bad("no samples")),
                None => Ok(samples),
            }
            .map_err(Box::new),
        ))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut encoding, mut scale, mut data) = (None, None, None);
        let mut problem = None;
        while let Some(k) = map.next_key::<Cow<'de, str>>()? {
            let v = match k.as_ref() {
                "encoding" | "scale" | "data" => map.next_value::<Scalar<'de>>()?,
                other => {
                    map.next_value::<IgnoredAny>()?;
                    problem.get_or_insert_with(|| {
                        self.bad(format!(
                            "unknown key '{}' (expected encoding, scale, data)",
                            other.chars().take(32).collect::<String>()
                        ))
                    });
                    continue;
                }
            };
            match (k.as_ref(), v) {
                ("encoding", Scalar::Str(s)) => encoding = Some(s),
                ("data", Scalar::Str(s)) => data = Some(s),
                ("scale", Scalar::Int(x)) => scale = Some(x as f64),
                ("scale", Scalar::Float(x)) => scale = Some(x),
                (key, v) => {
                    problem.get_or_insert_with(|| {
                        let want = if key == "scale" {
                            "a number"
                        } else {
                            "a string"
                        };
                        self.bad(format!("\"{key}\" should be {want}, got {}", v.type_name()))
                    });
                }
            }
        }
        Ok(Scalar::Wave(
            match problem {
                Some(e) => Err(e),
                None => self.decode_encoded(encoding, scale, data),
            }
            .map_err(Box::new),
        ))
    }
    // Scalars are what they are: the column's conversion refuses them as `wrong_type`,
    // exactly as when the fast path reads them.
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        ScalarVisitor.visit_unit()
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        ScalarVisitor.visit_none()
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        ScalarVisitor.visit_bool(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        ScalarVisitor.visit_i64(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        ScalarVisitor.visit_u64(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        ScalarVisitor.visit_f64(v)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        ScalarVisitor.visit_borrowed_str(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        ScalarVisitor.visit_str(v)
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        ScalarVisitor.visit_string(v)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use base64::Engine as _;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema, TimeUnit};
    use forewarn_core::Reason;

    use crate::JsonDecoder;

    fn decoders(max_samples: usize) -> [JsonDecoder; 2] {
        let schema = Arc::new(Schema::new(vec![
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
        ]));
        let fast = JsonDecoder::new(schema.clone(), None, 1 << 20)
            .unwrap()
            .with_max_samples(max_samples);
        let mut slow = JsonDecoder::new(schema, None, 1 << 20)
            .unwrap()
            .with_max_samples(max_samples);
        slow.fast = false;
        [fast, slow]
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// The samples of each row of the decoded batch (`None` for a NULL waveform).
    fn rows(d: &mut JsonDecoder) -> Vec<Option<Vec<f64>>> {
        let b = d.flush().expect("rows");
        let list = b.column(2).as_list::<i32>();
        (0..b.num_rows())
            .map(|r| {
                (!list.is_null(r)).then(|| {
                    list.value(r)
                        .as_primitive::<Float64Type>()
                        .values()
                        .to_vec()
                })
            })
            .collect()
    }

    #[test]
    fn arrays_and_both_encodings_decode_to_the_same_samples() {
        let samples = [0.5f32, -1.25, 3.0, 1e-3];
        let f32s: Vec<u8> = samples.iter().flat_map(|x| x.to_le_bytes()).collect();
        let raw = [100i16, -32768, 32767, 0];
        let i16s: Vec<u8> = raw.iter().flat_map(|x| x.to_le_bytes()).collect();
        let payload = format!(
            r#"[{{"ts": 1, "fs": 10240, "wave": [0.5, -1.25, 3, 0.001]}},
                {{"ts": 2, "wave": {{"encoding": "f32le", "data": "{}"}}}},
                {{"ts": 3, "wave": {{"data": "{}", "scale": 0.01, "encoding": "i16le"}}}},
                {{"ts": 4, "wave": null}}]"#,
            b64(&f32s),
            b64(&i16s)
        );
        for mut d in decoders(16) {
            let o = d.decode("t", payload.as_bytes());
            assert_eq!((o.accepted, o.rejected.len()), (4, 0), "{o:?}");
            assert_eq!(d.buffered_samples(), 12);
            let want_f32: Vec<f64> = samples.iter().map(|&x| f64::from(x)).collect();
            let want_i16: Vec<f64> = raw.iter().map(|&x| f64::from(x) * 0.01).collect();
            assert_eq!(
                rows(&mut d),
                vec![
                    Some(vec![0.5, -1.25, 3.0, 0.001]),
                    Some(want_f32),
                    Some(want_i16),
                    None
                ]
            );
            assert_eq!(d.buffered_samples(), 0);
        }
    }

    #[test]
    fn bad_waveforms_are_rejected_with_a_reason_and_the_rest_kept() {
        let long: Vec<u8> = (0..5).flat_map(|_| 1.0f32.to_le_bytes()).collect();
        let cases = [
            ("[1, 2, 3, 4, 5]", Reason::TooManySamples),
            (
                &*format!(r#"{{"encoding": "f32le", "data": "{}"}}"#, b64(&long)),
                Reason::TooManySamples,
            ),
            (
                &*format!(r#"{{"encoding": "f32le", "data": "{}"}}"#, b64(&[0; 4000])),
                Reason::TooManySamples,
            ),
            ("[]", Reason::BadWaveform),
            ("[1, \"2\"]", Reason::BadWaveform),
            ("[1, [2]]", Reason::BadWaveform),
            ("[1, null]", Reason::BadWaveform),
            (
                r#"{"encoding": "f64le", "data": "AAAAAA=="}"#,
                Reason::BadWaveform,
            ),
            (
                r#"{"encoding": "f32le", "data": "not base64!"}"#,
                Reason::BadWaveform,
            ),
            (
                r#"{"encoding": "f32le", "data": "AAAAAAA="}"#,
                Reason::BadWaveform,
            ),
            (r#"{"encoding": "i16le"}"#, Reason::BadWaveform),
            (r#"{"data": "AAAA"}"#, Reason::BadWaveform),
            (
                r#"{"encoding": "i16le", "data": "AAAA", "rate": 1}"#,
                Reason::BadWaveform,
            ),
            (
                r#"{"encoding": "i16le", "data": "AAAA", "scale": "2"}"#,
                Reason::BadWaveform,
            ),
            (r#"{"encoding": "i16le", "data": ""}"#, Reason::BadWaveform),
            (
                &*format!(
                    r#"{{"encoding": "f32le", "data": "{}"}}"#,
                    b64(&f32::NAN.to_le_bytes())
                ),
                Reason::NonFinite,
            ),
            ("1.5", Reason::WrongType),
            ("\"abc\"", Reason::WrongType),
        ];
        for (wave, reason) in cases {
            let payload = format!(r#"[{{"ts": 1, "wave": {wave}}}, {{"ts": 2, "wave": [7]}}]"#);
            for mut d in decoders(4) {
                let o = d.decode("t", payload.as_bytes());
                assert_eq!(o.accepted, 1, "{wave}: {o:?}");
                assert_eq!(o.rejected.len(), 1, "{wave}");
                assert_eq!(o.rejected[0].index, Some(0));
                assert_eq!(o.rejected[0].error.reason(), reason, "{wave}: {o:?}");
                assert_eq!(rows(&mut d), vec![Some(vec![7.0])]);
            }
        }
    }
}
