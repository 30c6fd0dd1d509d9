//! What a message carries: JSON text, one row of [`Readings`] (recorded history) given
//! as values, or all the rows of one that stand for a single array message (a
//! connector's, as Sparkplug B's: [`Readings::one_message`]). All are routed, checked
//! for repeats, admitted and decoded by the same code (`Runtime::on_json`); only how
//! the fields are read differs, so live input and replayed history cannot diverge.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};

use forewarn_formats::{DecodeOutcome, JsonDecoder, Readings, Scalar};

/// One message's content.
pub(super) enum Body<'a> {
    /// A JSON payload as received.
    Json(&'a [u8]),
    /// Row `row` of `rows`; `fields[i]` maps source `i`'s columns to `rows`' columns
    /// (`None`: read through the written payload, as when column names repeat).
    Row {
        rows: &'a dyn Readings,
        row: usize,
        fields: &'a [Option<Vec<Option<usize>>>],
    },
    /// Every row of `rows`, the elements of one JSON array message; `fields` as for
    /// [`Body::Row`].
    Array {
        rows: &'a dyn Readings,
        fields: &'a [Option<Vec<Option<usize>>>],
    },
}

impl Body<'_> {
    /// The payload bytes: for a row, the JSON its device would have sent (written here,
    /// for the dead letters that quote it).
    pub(super) fn payload(&self) -> Cow<'_, [u8]> {
        match self {
            Body::Json(p) => Cow::Borrowed(p),
            Body::Row { rows, row, .. } => Cow::Owned(rows.payload(*row)),
            Body::Array { rows, .. } => Cow::Owned(array_payload(*rows)),
        }
    }

    /// Whether this message repeats a recent one on `key` (see
    /// [`super::RecentMessages::repeated`]). A row's values are hashed instead of its
    /// payload: with distinct field names they are equal exactly when the payloads are.
    pub(super) fn repeated(&self, recent: &mut super::RecentMessages, key: &str) -> bool {
        match self {
            Body::Row {
                rows, row, fields, ..
            } if fields.iter().all(Option::is_some) => recent.repeated_by(|h| {
                // A tag unlike any payload's first byte keeps the two forms apart.
                0xffu8.hash(h);
                key.hash(h);
                for c in 0..rows.columns().len() {
                    hash_value(rows.value(*row, c).as_ref(), h);
                }
            }),
            Body::Array { rows, fields } if fields.iter().all(Option::is_some) => {
                recent.repeated_by(|h| {
                    // Unlike a payload's first byte, and a single row's tag.
                    0xfeu8.hash(h);
                    key.hash(h);
                    rows.len().hash(h);
                    for row in 0..rows.len() {
                        for c in 0..rows.columns().len() {
                            hash_value(rows.value(row, c).as_ref(), h);
                        }
                    }
                })
            }
            _ => recent.repeated(key, &self.payload()),
        }
    }

    /// Decodes the message on `topic` for source `i` with its decoder.
    pub(super) fn decode(&self, decoder: &mut JsonDecoder, i: usize, topic: &str) -> DecodeOutcome {
        match self {
            Body::Json(p) => decoder.decode(topic, p),
            Body::Row { rows, row, fields } => match &fields[i] {
                // A payload that may be over the limit is written and measured.
                Some(map) if rows.payload_bound(*row) <= decoder.max_payload() => {
                    decoder.decode_values(topic, |k| rows.value(*row, map[k]?))
                }
                _ => decoder.decode(topic, &rows.payload(*row)),
            },
            Body::Array { rows, fields } => match &fields[i] {
                Some(map) if array_bound(*rows) <= decoder.max_payload() => decoder
                    .decode_array_values(topic, rows.len(), |row, k| rows.value(row, map[k]?)),
                _ => decoder.decode(topic, &array_payload(*rows)),
            },
        }
    }

    /// Whether the payload is a JSON array (its readings are then numbered).
    pub(super) fn is_array(&self) -> bool {
        match self {
            Body::Json(p) => p.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'['),
            Body::Row { .. } => false,
            Body::Array { .. } => true,
        }
    }
}

/// The array message `rows` stand for: `[`, the rows' payloads joined by `,`, `]`.
fn array_payload(rows: &dyn Readings) -> Vec<u8> {
    let mut out = vec![b'['];
    for row in 0..rows.len() {
        if row > 0 {
            out.push(b',');
        }
        out.extend(rows.payload(row));
    }
    out.push(b']');
    out
}

/// An upper bound of the length of [`array_payload`].
fn array_bound(rows: &dyn Readings) -> usize {
    2 + (0..rows.len())
        .map(|row| rows.payload_bound(row) + 1)
        .sum::<usize>()
}

/// Each source's columns as `rows`' columns, matched by exact name as JSON keys are;
/// `None` for every source when `rows` names a column twice (its payload keeps one of
/// them, which only the written payload tells).
pub(super) fn field_maps(
    rows: &dyn Readings,
    schemas: impl Iterator<Item = datafusion::arrow::datatypes::SchemaRef>,
) -> Vec<Option<Vec<Option<usize>>>> {
    let names = rows.columns();
    let unique = names
        .iter()
        .enumerate()
        .all(|(i, n)| !names[..i].contains(n));
    schemas
        .map(|s| {
            unique.then(|| {
                s.fields()
                    .iter()
                    .map(|f| names.iter().position(|n| n == f.name()))
                    .collect()
            })
        })
        .collect()
}

fn hash_value(v: Option<&Scalar<'_>>, h: &mut impl Hasher) {
    match v {
        None | Some(Scalar::Null) => 0u8.hash(h),
        Some(Scalar::Bool(b)) => (1u8, b).hash(h),
        Some(Scalar::Int(i)) => (2u8, i).hash(h),
        Some(Scalar::Float(f)) => (3u8, f.to_bits()).hash(h),
        Some(Scalar::Str(s)) => (4u8, s.as_ref()).hash(h),
        Some(Scalar::Nested(k)) => (5u8, k).hash(h),
        // History cells are text; a decoded waveform, should one come, by its samples.
        Some(Scalar::Wave(Ok(v))) => {
            6u8.hash(h);
            for x in v {
                x.to_bits().hash(h);
            }
        }
        Some(Scalar::Wave(Err(e))) => (7u8, e.to_string()).hash(h),
    }
}
