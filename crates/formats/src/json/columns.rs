//! The decoder's pending columns. Each field is converted by its column's type and
//! appended at once; when a reading turns out to be rejected (a later field of the
//! wrong type, a required one missing), or a whole message is given up by the fast
//! path, every column is cut back to the rows it held before. Plain vectors rather than
//! Arrow's builders, because those cannot be cut back: without that, each reading went
//! through a buffer of converted cells first, which cost as much as parsing it.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, StringArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, FieldRef, TimeUnit};

use super::Scalar;
use crate::DecodeError;

/// The values of one column, by type. Null rows hold a placeholder value.
#[derive(Debug)]
enum Values {
    F64(Vec<f64>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
    /// Epoch milliseconds, and the column's time zone.
    Ts(Vec<i64>, Option<Arc<str>>),
    /// UTF-8 bytes of every row, and where each row's start (one more than the rows).
    Str(Vec<i32>, Vec<u8>),
    /// Samples of every row, where each row's start (one more than the rows), and the
    /// list's item field.
    Wave(Vec<i32>, Vec<f64>, FieldRef),
}

/// One column of the pending batch.
#[derive(Debug)]
pub(super) struct ColumnBuf {
    values: Values,
    /// The rows holding null, ascending (usually none).
    nulls: Vec<usize>,
}

/// Row starts for an empty variable-length column.
fn starts() -> Vec<i32> {
    vec![0]
}

/// The start after `len` more bytes or samples; a batch past `i32::MAX` of them cannot
/// be one Arrow array (Arrow's own builders stop there too).
fn next_start(len: usize) -> i32 {
    i32::try_from(len).expect("a batch's strings or samples exceed i32::MAX")
}

impl ColumnBuf {
    /// An empty column of type `dt`; `None` for a type JSON sources do not fill.
    pub(super) fn new(dt: &DataType) -> Option<Self> {
        let values = match dt {
            DataType::Float64 => Values::F64(Vec::new()),
            DataType::Int64 => Values::I64(Vec::new()),
            DataType::Utf8 => Values::Str(starts(), Vec::new()),
            DataType::Boolean => Values::Bool(Vec::new()),
            DataType::Timestamp(TimeUnit::Millisecond, tz) => Values::Ts(Vec::new(), tz.clone()),
            // The schema's own item field, so the finished array matches it exactly.
            DataType::List(item) if item.data_type() == &DataType::Float64 => {
                Values::Wave(starts(), Vec::new(), item.clone())
            }
            _ => return None,
        };
        Some(ColumnBuf {
            values,
            nulls: Vec::new(),
        })
    }

    /// Rows held.
    pub(super) fn len(&self) -> usize {
        match &self.values {
            Values::F64(v) => v.len(),
            Values::I64(v) | Values::Ts(v, _) => v.len(),
            Values::Bool(v) => v.len(),
            Values::Str(s, _) | Values::Wave(s, _, _) => s.len() - 1,
        }
    }

    /// Waveform samples held (0 for other columns).
    pub(super) fn samples(&self) -> usize {
        match &self.values {
            Values::Wave(_, v, _) => v.len(),
            _ => 0,
        }
    }

    /// Appends a null.
    pub(super) fn push_null(&mut self) {
        self.nulls.push(self.len());
        match &mut self.values {
            Values::F64(v) => v.push(0.0),
            Values::I64(v) | Values::Ts(v, _) => v.push(0),
            Values::Bool(v) => v.push(false),
            Values::Str(s, b) => s.push(next_start(b.len())),
            Values::Wave(s, v, _) => s.push(next_start(v.len())),
        }
    }

    /// Appends an epoch-milliseconds value to a timestamp column (an arrival time).
    pub(super) fn push_time(&mut self, ms: i64) {
        match &mut self.values {
            Values::Ts(v, _) => v.push(ms),
            _ => self.push_null(),
        }
    }

    /// Converts the field `field`'s value `v` to this column's type and appends it (a
    /// JSON null as null), or says why it does not convert, appending nothing. These
    /// are the conversion rules of every JSON source, live and replayed.
    #[inline(always)]
    pub(super) fn push(&mut self, field: &str, v: &Scalar<'_>) -> Result<(), DecodeError> {
        let wrong = |expected| DecodeError::WrongType {
            field: field.to_string(),
            expected,
            got: v.type_name(),
        };
        match (&mut self.values, v) {
            (_, Scalar::Null) => self.push_null(),
            (Values::F64(x), Scalar::Float(f)) if f.is_finite() => x.push(*f),
            (Values::F64(x), Scalar::Int(i)) => x.push(*i as f64),
            (Values::F64(_), Scalar::Float(_)) => {
                return Err(DecodeError::NonFinite(field.to_string()))
            }
            (Values::F64(_), Scalar::Str(s)) if is_non_finite_word(s) => {
                return Err(DecodeError::NonFinite(field.to_string()))
            }
            (Values::F64(_), _) => return Err(wrong("a number")),
            (Values::I64(x), Scalar::Int(i)) => x.push(*i),
            (Values::I64(x), Scalar::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                x.push(*f as i64)
            }
            (Values::I64(_), _) => return Err(wrong("an integer")),
            (Values::Str(s, b), Scalar::Str(v)) => {
                b.extend_from_slice(v.as_bytes());
                s.push(next_start(b.len()));
            }
            (Values::Str(..), _) => return Err(wrong("a string")),
            (Values::Bool(x), Scalar::Bool(b)) => x.push(*b),
            (Values::Bool(_), _) => return Err(wrong("a boolean")),
            (Values::Ts(x, _), Scalar::Int(i)) => x.push(*i),
            (Values::Ts(x, _), Scalar::Float(f)) if f.is_finite() && f.abs() < 9.0e15 => {
                x.push(f.round() as i64)
            }
            (Values::Ts(x, _), Scalar::Str(s)) => match forewarn_core::parse_rfc3339(s) {
                Some(ms) => x.push(ms),
                None => {
                    return Err(DecodeError::BadTimestamp {
                        field: field.to_string(),
                        value: s.chars().take(64).collect(),
                    })
                }
            },
            (Values::Ts(..), _) => return Err(wrong("a timestamp")),
            (Values::Wave(s, x, _), Scalar::Wave(Ok(w))) => {
                x.extend_from_slice(w);
                s.push(next_start(x.len()));
            }
            (Values::Wave(..), Scalar::Wave(Err(e))) => return Err((**e).clone()),
            (Values::Wave(..), _) => {
                return Err(wrong("an array of numbers or an encoded waveform"))
            }
        }
        Ok(())
    }

    /// Cuts the column back to its first `len` rows.
    pub(super) fn truncate(&mut self, len: usize) {
        while self.nulls.last().is_some_and(|&r| r >= len) {
            self.nulls.pop();
        }
        match &mut self.values {
            Values::F64(v) => v.truncate(len),
            Values::I64(v) | Values::Ts(v, _) => v.truncate(len),
            Values::Bool(v) => v.truncate(len),
            Values::Str(s, b) => {
                if let Some(&end) = s.get(len) {
                    b.truncate(end as usize);
                    s.truncate(len + 1);
                }
            }
            Values::Wave(s, v, _) => {
                if let Some(&end) = s.get(len) {
                    v.truncate(end as usize);
                    s.truncate(len + 1);
                }
            }
        }
    }

    /// The rows held, as an Arrow array; the column starts empty again, with room for
    /// as many rows.
    pub(super) fn finish(&mut self) -> ArrayRef {
        let len = self.len();
        let nulls = (!self.nulls.is_empty()).then(|| {
            let mut valid = vec![true; len];
            for &r in &self.nulls {
                valid[r] = false;
            }
            NullBuffer::new(BooleanBuffer::from(valid))
        });
        self.nulls.clear();
        // Taken with room for a batch like this one, so the next fills without growing.
        fn take<T>(v: &mut Vec<T>) -> Vec<T> {
            std::mem::replace(v, Vec::with_capacity(v.len()))
        }
        fn take_starts(s: &mut Vec<i32>) -> OffsetBuffer<i32> {
            let mut next = Vec::with_capacity(s.len());
            next.push(0);
            OffsetBuffer::new(std::mem::replace(s, next).into())
        }
        match &mut self.values {
            Values::F64(v) => Arc::new(Float64Array::new(take(v).into(), nulls)),
            Values::I64(v) => Arc::new(Int64Array::new(take(v).into(), nulls)),
            Values::Bool(v) => Arc::new(BooleanArray::new(BooleanBuffer::from(take(v)), nulls)),
            Values::Ts(v, tz) => Arc::new(
                TimestampMillisecondArray::new(take(v).into(), nulls).with_timezone_opt(tz.clone()),
            ),
            Values::Str(s, b) => Arc::new(StringArray::new(
                take_starts(s),
                Buffer::from_vec(take(b)),
                nulls,
            )),
            Values::Wave(s, v, item) => Arc::new(ListArray::new(
                item.clone(),
                take_starts(s),
                Arc::new(Float64Array::new(take(v).into(), None)),
                nulls,
            )),
        }
    }
}

/// A string naming a non-finite number ("NaN", "Infinity"), which a number column
/// rejects as non-finite rather than as the wrong type.
fn is_non_finite_word(s: &str) -> bool {
    matches!(
        s.trim().to_ascii_lowercase().as_str(),
        "nan" | "inf" | "-inf" | "+inf" | "infinity" | "-infinity" | "+infinity"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        ArrayBuilder, BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, StringBuilder,
        TimestampMillisecondBuilder,
    };
    use datafusion::arrow::datatypes::Field;
    use std::borrow::Cow;

    /// A value of `kind` drawn from `r`, or null.
    fn value(kind: usize, r: u64) -> Scalar<'static> {
        if r.is_multiple_of(5) {
            return Scalar::Null;
        }
        match kind {
            0 => Scalar::Float(r as f64 / 7.0),
            1 | 3 => Scalar::Int(r as i64 - 1000),
            2 => Scalar::Bool(r.is_multiple_of(2)),
            4 => Scalar::Str(Cow::Owned("é".repeat((r % 4) as usize) + &r.to_string())),
            _ => Scalar::Wave(Ok((0..r % 5).map(|k| k as f64 + 0.5).collect())),
        }
    }

    /// Appends `v` with Arrow's own builder for the kind: the reference.
    fn reference(b: &mut dyn ArrayBuilder, kind: usize, v: &Scalar<'_>) {
        let any = b.as_any_mut();
        match (kind, v) {
            (0, Scalar::Float(f)) => any
                .downcast_mut::<Float64Builder>()
                .unwrap()
                .append_value(*f),
            (0, _) => any.downcast_mut::<Float64Builder>().unwrap().append_null(),
            (1, Scalar::Int(i)) => any.downcast_mut::<Int64Builder>().unwrap().append_value(*i),
            (1, _) => any.downcast_mut::<Int64Builder>().unwrap().append_null(),
            (2, Scalar::Bool(x)) => any
                .downcast_mut::<BooleanBuilder>()
                .unwrap()
                .append_value(*x),
            (2, _) => any.downcast_mut::<BooleanBuilder>().unwrap().append_null(),
            (3, Scalar::Int(i)) => any
                .downcast_mut::<TimestampMillisecondBuilder>()
                .unwrap()
                .append_value(*i),
            (3, _) => any
                .downcast_mut::<TimestampMillisecondBuilder>()
                .unwrap()
                .append_null(),
            (4, Scalar::Str(s)) => any.downcast_mut::<StringBuilder>().unwrap().append_value(s),
            (4, _) => any.downcast_mut::<StringBuilder>().unwrap().append_null(),
            (_, Scalar::Wave(Ok(w))) => {
                let l = any.downcast_mut::<ListBuilder<Float64Builder>>().unwrap();
                l.values().append_slice(w);
                l.append(true);
            }
            _ => any
                .downcast_mut::<ListBuilder<Float64Builder>>()
                .unwrap()
                .append_null(),
        }
    }

    #[test]
    fn pushes_and_cuts_give_what_arrows_builders_give() {
        let item = Arc::new(Field::new("item", DataType::Float64, true));
        let types = [
            DataType::Float64,
            DataType::Int64,
            DataType::Boolean,
            DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
            DataType::Utf8,
            DataType::List(item.clone()),
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (kind, dt) in types.iter().enumerate() {
            let mut col = ColumnBuf::new(dt).unwrap();
            for round in 0..20 {
                // The rows that stay, as values: rebuilt into Arrow's builder at the end.
                let mut kept: Vec<Scalar<'static>> = Vec::new();
                for _ in 0..(next() % 300) {
                    if next() % 8 == 0 {
                        // A rejected reading: rows pushed and cut back off.
                        let len = col.len();
                        for _ in 0..(next() % 4) {
                            col.push("f", &value(kind, next())).unwrap();
                        }
                        col.truncate(len);
                    } else {
                        let v = value(kind, next());
                        col.push("f", &v).unwrap();
                        kept.push(v);
                    }
                    assert_eq!(col.len(), kept.len());
                }
                let mut b: Box<dyn ArrayBuilder> = match kind {
                    0 => Box::new(Float64Builder::new()),
                    1 => Box::new(Int64Builder::new()),
                    2 => Box::new(BooleanBuilder::new()),
                    3 => Box::new(TimestampMillisecondBuilder::new().with_timezone("+00:00")),
                    4 => Box::new(StringBuilder::new()),
                    _ => Box::new(ListBuilder::new(Float64Builder::new()).with_field(item.clone())),
                };
                kept.iter().for_each(|v| reference(b.as_mut(), kind, v));
                let want = b.finish();
                let got = col.finish();
                assert_eq!(got.data_type(), dt);
                assert_eq!(&got, &want, "kind {kind} round {round}");
                assert_eq!(col.len(), 0);
            }
        }
    }
}
