//! Rows of recorded history read column by column into a source's Arrow columns, by
//! the same conversion rules ([`ColumnBuf::push`]) the decoder applies to each field of a
//! payload: the validation layer that live messages and replayed tables share.
//!
//! A row whose every value converts, with no required value missing and every topic
//! level it fills a valid one, is *clean*: the engine takes it straight from these
//! columns. Any other row is left to the message path (`decode_values`), which writes
//! the dead letter a live message would get; a clean row gives exactly the reading its
//! message would have given, so the two paths cannot diverge.

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};

use super::{ColumnBuf, JsonDecoder, Scalar};

/// History rows as one source's columns, with which rows are clean (see the module
/// documentation) and a key per row for the duplicate check.
#[derive(Debug, Clone)]
pub struct Table {
    schema: SchemaRef,
    template: Option<String>,
    columns: Vec<ArrayRef>,
    clean: Arc<[bool]>,
    keys: Arc<[u64]>,
    captured: Vec<usize>,
}

/// Seeds the per-value hash; fixed, so equal rows get equal keys in any batch.
const SEED: u64 = 0x5ee0_f0e3_a11e_b0a7;

/// A hash of one field value, as equal for equal values as the payloads they write.
fn value_hash(state: &foldhash::fast::FixedState, v: Option<&Scalar<'_>>) -> u64 {
    match v {
        None | Some(Scalar::Null) => state.hash_one(0u8),
        Some(Scalar::Bool(b)) => state.hash_one((1u8, b)),
        Some(Scalar::Int(i)) => state.hash_one((2u8, i)),
        Some(Scalar::Float(f)) => state.hash_one((3u8, f.to_bits())),
        Some(Scalar::Str(s)) => state.hash_one((4u8, s.as_ref())),
        Some(Scalar::Nested(k)) => state.hash_one((5u8, k)),
        Some(Scalar::Wave(w)) => {
            let mut h = state.build_hasher();
            6u8.hash(&mut h);
            match w {
                Ok(v) => v.iter().for_each(|x| x.to_bits().hash(&mut h)),
                Err(e) => e.to_string().hash(&mut h),
            }
            std::hash::Hasher::finish(&h)
        }
    }
}

/// A field's values already held in an Arrow type, each standing for one value a
/// payload could hold: [`JsonDecoder::read_table`] converts such a field a column at a
/// time, without a [`Scalar`] per value, when the decoder's column is of a type it fills
/// from them as it would from each value.
#[derive(Debug, Clone)]
pub enum Typed {
    /// Each value is the number [`Scalar::Float`] (a non-finite one included: the
    /// decoder refuses it); null is a missing value.
    Float(Float64Array),
    /// Each value is [`Scalar::Int`]; null is a missing value.
    Int(Int64Array),
    /// Each value is [`Scalar::Bool`]; null is a missing value.
    Bool(BooleanArray),
    /// Each value is [`Scalar::Int`] of these epoch milliseconds (any time zone is
    /// ignored); null is a missing value.
    Millis(TimestampMillisecondArray),
    /// Each value is [`Scalar::Str`]; null, and the empty string, are a missing value.
    Str(StringArray),
}

impl JsonDecoder {
    /// `rows` readings given as the values of their fields (`value(row, f)`: field
    /// `names[f]` of reading `row`, `None` when absent), read column by column into
    /// this decoder's schema, each value converted exactly as [`decode_values`] converts
    /// it. `None` when the fields cannot be read this way: a name given twice (the
    /// payload keeps one of them), an arrival-time or waveform column.
    ///
    /// `typed(f)` may give field `f`'s values as an Arrow array ([`Typed`]), which must
    /// hold the values `value` gives (where the decoder refuses a value, it may hold
    /// another value the decoder refuses); a column it fits is then converted a column
    /// at a time, to the same result.
    ///
    /// [`decode_values`]: JsonDecoder::decode_values
    pub fn read_table<'v>(
        &self,
        names: &[String],
        rows: usize,
        value: impl Fn(usize, usize) -> Option<Scalar<'v>>,
        typed: impl Fn(usize) -> Option<Typed>,
    ) -> Option<Table> {
        let unique = names
            .iter()
            .enumerate()
            .all(|(i, n)| !names[..i].contains(n));
        if !unique || self.columns.iter().any(|c| c.arrival || c.wave) {
            return None;
        }
        // The duplicate check compares whole payloads: every field counts, read or not.
        let state = foldhash::fast::FixedState::with_seed(SEED);
        let mix = |key: &mut u64, v: Option<&Scalar<'_>>| {
            *key =
                (key.rotate_left(23) ^ value_hash(&state, v)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        };
        let mut keys = vec![SEED; rows];
        let mut hashed = vec![false; names.len()];
        let mut clean = vec![true; rows];
        let mut columns = Vec::with_capacity(self.columns.len());
        for (k, col) in self.columns.iter().enumerate() {
            let field = names.iter().position(|n| *n == col.name);
            if let Some(f) = field {
                hashed[f] = true;
            }
            let dt = self.schema.field(k).data_type();
            let whole = field
                .and_then(&typed)
                .and_then(|t| take_typed(col, dt, &t, &mut clean, &mut keys, &mix));
            if let Some(column) = whole {
                columns.push(column);
                continue;
            }
            let mut b = ColumnBuf::new(self.schema.field(k).data_type())
                .expect("the decoder's schema has column types");
            for (row, ok) in clean.iter_mut().enumerate() {
                let v = field.and_then(|f| value(row, f));
                if field.is_some() {
                    mix(&mut keys[row], v.as_ref());
                }
                // A captured level is the field's value written into the topic: it must
                // be one level that the template reads back as the same text.
                if col.topic_capture.is_some() && !matches!(&v, Some(Scalar::Str(s)) if is_level(s))
                {
                    *ok = false;
                }
                match &v {
                    None | Some(Scalar::Null) => {
                        *ok &= col.nullable;
                        b.push_null();
                    }
                    Some(v) => {
                        if b.push(&col.name, v).is_err() {
                            *ok = false;
                            b.push_null();
                        }
                    }
                }
            }
            columns.push(b.finish());
        }
        for f in (0..names.len()).filter(|&f| !hashed[f]) {
            for (row, key) in keys.iter_mut().enumerate() {
                mix(key, value(row, f).as_ref());
            }
        }
        let captured = self
            .template
            .as_ref()
            .map(|t| {
                t.captures()
                    .map(|c| {
                        self.columns
                            .iter()
                            .position(|col| col.name == c)
                            .expect("captures are columns")
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Table {
            schema: self.schema.clone(),
            template: self.template.as_ref().map(|t| t.as_str().to_string()),
            columns,
            clean: clean.into(),
            keys: keys.into(),
            captured,
        })
    }
}

/// The column of type `dt` that decoding each value of `t` into `col` builds, with
/// the rows that do not convert marked not clean and each value mixed into its row's
/// key, as the value-by-value loop of `read_table` does (its values at rows that are
/// not clean may differ: those rows are never taken from the table). `None` when this
/// column is not filled that way from `t`.
fn take_typed(
    col: &super::Column,
    dt: &DataType,
    t: &Typed,
    clean: &mut [bool],
    keys: &mut [u64],
    mix: &impl Fn(&mut u64, Option<&Scalar<'_>>),
) -> Option<ArrayRef> {
    // Each row: its value (`None`: missing) and whether the column takes it.
    fn each<T>(
        col: &super::Column,
        values: impl Iterator<Item = Option<T>>,
        clean: &mut [bool],
        keys: &mut [u64],
        mix: &impl Fn(&mut u64, Option<&Scalar<'_>>),
        scalar: impl Fn(&T) -> (Scalar<'_>, bool),
    ) {
        for ((v, ok), key) in values.zip(clean.iter_mut()).zip(keys.iter_mut()) {
            match v {
                None => {
                    mix(key, None);
                    // A captured level cannot be missing: the topic has it.
                    *ok &= col.nullable && col.topic_capture.is_none();
                }
                Some(v) => {
                    let (s, takes) = scalar(&v);
                    mix(key, Some(&s));
                    *ok &= takes;
                }
            }
        }
    }
    // A captured level must be a string that is one level: only `Str` is checked here.
    if col.topic_capture.is_some() && !matches!(t, Typed::Str(_)) {
        return None;
    }
    let column: ArrayRef = match (dt, t) {
        (DataType::Float64, Typed::Float(a)) => {
            each(col, a.iter(), clean, keys, mix, |&f| {
                (Scalar::Float(f), f.is_finite())
            });
            Arc::new(a.clone())
        }
        (DataType::Int64, Typed::Int(a)) => {
            each(col, a.iter(), clean, keys, mix, |&i| (Scalar::Int(i), true));
            Arc::new(a.clone())
        }
        (DataType::Boolean, Typed::Bool(a)) => {
            each(col, a.iter(), clean, keys, mix, |&b| {
                (Scalar::Bool(b), true)
            });
            Arc::new(a.clone())
        }
        (DataType::Timestamp(TimeUnit::Millisecond, tz), Typed::Millis(a)) => {
            each(col, a.iter(), clean, keys, mix, |&ms| {
                (Scalar::Int(ms), true)
            });
            let ms = TimestampMillisecondArray::new(a.values().clone(), a.nulls().cloned());
            Arc::new(ms.with_timezone_opt(tz.clone()))
        }
        (DataType::Utf8, Typed::Str(a)) => {
            // The empty string is a missing value: null in the column.
            let present = a.iter().map(|v| v.filter(|s| !s.is_empty()));
            let capture = col.topic_capture.is_some();
            each(col, present, clean, keys, mix, |s| {
                (
                    Scalar::Str(std::borrow::Cow::Borrowed(s)),
                    !capture || is_level(s),
                )
            });
            if a.iter().flatten().any(str::is_empty) {
                let valid: Vec<bool> = a.iter().map(|v| v.is_some_and(|s| !s.is_empty())).collect();
                let nulls = NullBuffer::from(valid);
                Arc::new(StringArray::new(
                    a.offsets().clone(),
                    a.values().clone(),
                    Some(nulls),
                ))
            } else {
                Arc::new(a.clone())
            }
        }
        _ => return None,
    };
    Some(column)
}

/// Whether `s` written as a topic level is read back as `s` by any template and
/// routed like the other rows: not empty, no level separator, no wildcard.
fn is_level(s: &str) -> bool {
    !s.is_empty() && !s.bytes().any(|b| matches!(b, b'/' | b'+' | b'#' | 0))
}

impl Table {
    /// The schema the columns were read for (the source's).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The source's topic template the rows' topics are rendered from, if any.
    pub fn template(&self) -> Option<&str> {
        self.template.as_deref()
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.clean.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.clean.is_empty()
    }

    /// The columns, in the schema's order and types; null where a row is not clean.
    pub fn columns(&self) -> &[ArrayRef] {
        &self.columns
    }

    /// Whether row `row` is clean: it decodes to the values in [`columns`](Self::columns)
    /// and its topic is one the template reads back.
    pub fn clean(&self, row: usize) -> bool {
        self.clean[row]
    }

    /// Row `row`'s key for the duplicate check: equal for rows whose payloads are equal
    /// (the same fields with the same values), and different otherwise but for a hash
    /// collision.
    pub fn key(&self, row: usize) -> u64 {
        self.keys[row]
    }

    /// The columns the template's captures fill, in the template's order (their values
    /// are the rows' topic levels).
    pub fn captured(&self) -> &[usize] {
        &self.captured
    }

    /// Rows `start..end`.
    pub fn slice(&self, start: usize, end: usize) -> Table {
        Table {
            schema: self.schema.clone(),
            template: self.template.clone(),
            columns: self
                .columns
                .iter()
                .map(|c| c.slice(start, end - start))
                .collect(),
            clean: self.clean[start..end].into(),
            keys: self.keys[start..end].into(),
            captured: self.captured.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::arrow::util::display::array_value_to_string;

    use super::*;
    use crate::TopicTemplate;

    fn decoder() -> JsonDecoder {
        decoder_of(false)
    }

    /// The test source; `nullable`: its captured `device` column too.
    fn decoder_of(nullable: bool) -> JsonDecoder {
        let schema = Arc::new(Schema::new(vec![
            Field::new("device", DataType::Utf8, nullable),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("v", DataType::Float64, true),
            Field::new("n", DataType::Int64, false),
            Field::new("ok", DataType::Boolean, true),
            Field::new("note", DataType::Utf8, true),
        ]));
        let t = TopicTemplate::parse("p/{device}/data").unwrap();
        JsonDecoder::new(schema, Some(t), usize::MAX).unwrap()
    }

    /// Field values of every kind, good and bad for each column.
    fn values() -> Vec<Option<Scalar<'static>>> {
        let s = |x: &'static str| Some(Scalar::Str(Cow::Borrowed(x)));
        vec![
            None,
            Some(Scalar::Null),
            s(""),
            s("d1"),
            s("a/b"),
            s("+"),
            s("NaN"),
            s("2026-01-05T06:00:00Z"),
            s("yesterday"),
            s("1.5"),
            Some(Scalar::Int(3)),
            Some(Scalar::Int(i64::MAX)),
            Some(Scalar::Float(1.5)),
            Some(Scalar::Float(8.0)),
            Some(Scalar::Float(f64::NAN)),
            Some(Scalar::Float(1e300)),
            Some(Scalar::Bool(true)),
            Some(Scalar::Nested("an object")),
        ]
    }

    #[test]
    fn a_row_is_clean_exactly_when_its_message_decodes_and_gives_the_same_values() {
        let names: Vec<String> = ["note", "device", "ts", "v", "n", "ok", "extra"]
            .map(String::from)
            .to_vec();
        let vals = values();
        // Rows cycling through the values with a different stride per column, so the
        // combinations vary.
        let rows = 4000;
        let cell = |row: usize, f: usize| {
            let k = (row * (2 * f + 3) + row / (f + 1) + f) % vals.len();
            // Every fourth row has good values of the columns' own kinds.
            match (row % 4, names[f].as_str()) {
                (0, "device") => Some(Scalar::Str(Cow::Owned(format!("d{}", row % 7)))),
                (0, "ts") => Some(Scalar::Int(row as i64)),
                (0, "n") => Some(Scalar::Int(2)),
                (0, "v") => Some(Scalar::Float(row as f64 * 0.5)),
                (0, "ok") => row.is_multiple_of(8).then_some(Scalar::Bool(false)),
                (0, "note") => Some(Scalar::Str(Cow::Borrowed("x"))),
                _ => vals[k].clone(),
            }
        };
        let table = decoder().read_table(&names, rows, cell, |_| None).unwrap();
        let (mut clean, mut refused) = (0, 0);
        for row in 0..rows {
            let topic = match cell(row, 1) {
                Some(Scalar::Str(d)) => format!("p/{d}/data"),
                _ => "p//data".to_string(),
            };
            let mut d = decoder();
            let out = d.decode_values(&topic, |k| {
                let name = d_name(k);
                cell(row, names.iter().position(|n| n == name).unwrap())
            });
            assert_eq!(table.clean(row), out.accepted == 1, "row {row}: {out:?}");
            if out.accepted == 1 {
                clean += 1;
                let batch = d.flush().unwrap();
                for (k, c) in table.columns().iter().enumerate() {
                    assert_eq!(
                        array_value_to_string(c, row).unwrap(),
                        array_value_to_string(batch.column(k), 0).unwrap(),
                        "row {row} column {k}"
                    );
                }
            } else {
                refused += 1;
            }
        }
        assert!(
            clean >= 1000 && refused > 1000,
            "{clean} clean, {refused} refused"
        );
    }

    /// The decoder's column names, in schema order.
    fn d_name(k: usize) -> &'static str {
        ["device", "ts", "v", "n", "ok", "note"][k]
    }

    #[test]
    fn equal_rows_have_equal_keys_and_any_field_tells_rows_apart() {
        let names: Vec<String> = ["device", "ts", "n", "extra"].map(String::from).to_vec();
        let rows: Vec<[Option<Scalar<'static>>; 4]> = vec![
            [
                Some(Scalar::Str("d1".into())),
                Some(Scalar::Int(1)),
                Some(Scalar::Int(2)),
                None,
            ],
            [
                Some(Scalar::Str("d1".into())),
                Some(Scalar::Int(1)),
                Some(Scalar::Int(2)),
                None,
            ],
            [
                Some(Scalar::Str("d1".into())),
                Some(Scalar::Int(1)),
                Some(Scalar::Int(2)),
                Some(Scalar::Str("x".into())),
            ],
            [
                Some(Scalar::Str("d1".into())),
                Some(Scalar::Int(1)),
                Some(Scalar::Float(2.0)),
                None,
            ],
            [
                Some(Scalar::Str("d2".into())),
                Some(Scalar::Int(1)),
                Some(Scalar::Int(2)),
                None,
            ],
        ];
        let t = decoder()
            .read_table(&names, rows.len(), |r, f| rows[r][f].clone(), |_| None)
            .unwrap();
        assert_eq!(t.key(0), t.key(1));
        for r in 2..rows.len() {
            assert_ne!(t.key(0), t.key(r), "row {r}");
        }
        // A name given twice: the payload keeps one, which only the text tells.
        let twice: Vec<String> = ["device", "device"].map(String::from).to_vec();
        assert!(decoder()
            .read_table(&twice, 0, |_, _| None, |_| None)
            .is_none());
    }

    /// Arrays for the fields `note, device, ts, v, n, ok, extra`, cycling through good
    /// and bad values of each type: nulls, empty strings, strings that are not one
    /// topic level, non-finite numbers.
    fn typed_fields(rows: usize) -> Vec<Typed> {
        let texts = ["", "x", "d1", "a/b", "+", "d2", "é"];
        let str_col = |stride: usize, nulls: usize| {
            Typed::Str(StringArray::from_iter((0..rows).map(|r| {
                (r % nulls != 0).then(|| texts[(r * stride + r / 5) % texts.len()])
            })))
        };
        let floats = [
            0.5,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            1e300,
            2.0,
            f64::NEG_INFINITY,
        ];
        vec![
            str_col(3, 7),
            str_col(5, 11),
            Typed::Millis(TimestampMillisecondArray::from_iter(
                (0..rows).map(|r| (r % 13 != 0).then_some(r as i64 * 997 - 3000)),
            )),
            Typed::Float(Float64Array::from_iter(
                (0..rows).map(|r| (r % 9 != 0).then(|| floats[(r * 3) % floats.len()])),
            )),
            Typed::Int(Int64Array::from_iter(
                (0..rows).map(|r| (r % 17 != 0).then_some((r as i64 % 5) - 2)),
            )),
            Typed::Bool(BooleanArray::from_iter(
                (0..rows).map(|r| (r % 6 != 0).then_some(r % 4 == 1)),
            )),
            Typed::Int(Int64Array::from_iter((0..rows).map(|r| Some(r as i64 % 3)))),
        ]
    }

    /// The value a payload holds for row `row` of a typed field.
    fn scalar_of(t: &Typed, row: usize) -> Option<Scalar<'_>> {
        match t {
            Typed::Float(a) => a.is_valid(row).then(|| Scalar::Float(a.value(row))),
            Typed::Int(a) => a.is_valid(row).then(|| Scalar::Int(a.value(row))),
            Typed::Bool(a) => a.is_valid(row).then(|| Scalar::Bool(a.value(row))),
            Typed::Millis(a) => a.is_valid(row).then(|| Scalar::Int(a.value(row))),
            Typed::Str(a) => (a.is_valid(row) && !a.value(row).is_empty())
                .then(|| Scalar::Str(Cow::Borrowed(a.value(row)))),
        }
    }

    #[test]
    fn typed_columns_give_what_their_values_give_one_by_one() {
        let names: Vec<String> = ["note", "device", "ts", "v", "n", "ok", "extra"]
            .map(String::from)
            .to_vec();
        let rows = 3000;
        let fields = typed_fields(rows);
        let value = |r: usize, f: usize| scalar_of(&fields[f], r);
        // A captured level may be missing from a nullable column: still not clean.
        for nullable in [false, true] {
            let by_value = decoder_of(nullable)
                .read_table(&names, rows, value, |_| None)
                .unwrap();
            let by_column = decoder_of(nullable)
                .read_table(&names, rows, value, |f| Some(fields[f].clone()))
                .unwrap();
            let clean: Vec<u32> = (0..rows as u32)
                .filter(|&r| by_value.clean(r as usize))
                .collect();
            assert!(
                clean.len() > 100 && clean.len() < rows / 2,
                "{} clean",
                clean.len()
            );
            for r in 0..rows {
                assert_eq!(by_column.clean(r), by_value.clean(r), "row {r}");
                assert_eq!(by_column.key(r), by_value.key(r), "row {r}");
            }
            let idx = datafusion::arrow::array::UInt32Array::from(clean);
            for (k, (a, b)) in by_column
                .columns()
                .iter()
                .zip(by_value.columns())
                .enumerate()
            {
                let take = |c| datafusion::arrow::compute::take(c, &idx, None).unwrap();
                assert_eq!(take(a).as_ref(), take(b).as_ref(), "column {k}");
                assert_eq!(a.data_type(), b.data_type(), "column {k}");
            }
        }
    }
}
