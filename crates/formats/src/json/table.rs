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

use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::datatypes::SchemaRef;

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

impl JsonDecoder {
    /// `rows` readings given as the values of their fields (`value(row, f)`: field
    /// `names[f]` of reading `row`, `None` when absent), read column by column into
    /// this decoder's schema, each value converted exactly as [`decode_values`] converts
    /// it. `None` when the fields cannot be read this way: a name given twice (the
    /// payload keeps one of them), an arrival-time or waveform column.
    ///
    /// [`decode_values`]: JsonDecoder::decode_values
    pub fn read_table<'v>(
        &self,
        names: &[String],
        rows: usize,
        value: impl Fn(usize, usize) -> Option<Scalar<'v>>,
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
        let schema = Arc::new(Schema::new(vec![
            Field::new("device", DataType::Utf8, false),
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
        let table = decoder().read_table(&names, rows, cell).unwrap();
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
            .read_table(&names, rows.len(), |r, f| rows[r][f].clone())
            .unwrap();
        assert_eq!(t.key(0), t.key(1));
        for r in 2..rows.len() {
            assert_ne!(t.key(0), t.key(r), "row {r}");
        }
        // A name given twice: the payload keeps one, which only the text tells.
        let twice: Vec<String> = ["device", "device"].map(String::from).to_vec();
        assert!(decoder().read_table(&twice, 0, |_, _| None).is_none());
    }
}
