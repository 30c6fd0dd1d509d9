//! Rows of a CSV or Parquet file kept as Arrow columns, each row read as the reading
//! its device would have sent: the engine takes them as values
//! ([`forewarn_formats::Readings`]), and writes a row's JSON only when a dead letter
//! quotes it (or a test publishes it).

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, StringArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::compute::{cast, interleave};
use datafusion::arrow::datatypes::{
    ArrowPrimitiveType, DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use datafusion::arrow::record_batch::RecordBatch;
use forewarn_formats::{JsonDecoder, Readings, Scalar, Table, Typed};
use serde_json::{Map, Value};

use crate::{Message, SourceShape};

/// Rows of a history file: its columns as text (CSV cells as written, Parquet values
/// cast to text, as they always were; a Parquet column already of its source column's
/// type is kept as it is and read as that text would be), typed per cell by the
/// source's column of the same name, with each row's event time and (rendered when
/// asked for) its topic. The rows are also read column by column into the source's
/// columns ([`Table`]), which the engine takes clean rows from.
#[derive(Debug, Clone)]
pub struct Rows {
    names: Arc<[String]>,
    types: Arc<[DataType]>,
    columns: Vec<Col>,
    shape: Arc<SourceShape>,
    /// Each row's topic, rendered when first asked for (a dead letter names it). The
    /// slots are made then too: a backtest asks for none, and made for every row of
    /// every chunk (with the pages they newly touched) they cost about a tenth of the
    /// time spent reading a Parquet file.
    topics: Arc<OnceLock<Box<[OnceLock<String>]>>>,
    len: usize,
    times: Vec<Option<i64>>,
    table: Option<Table>,
}

/// A column of a history file, downcast once (a backtest reads every cell of it).
#[derive(Debug, Clone)]
enum Col {
    /// Text cells (an empty cell is a missing value).
    Text(StringArray),
    /// Values of a type that reads as its own text would: `Float64` for a `DOUBLE`
    /// column...
    Float(Float64Array),
    /// ...`Int64` for a `BIGINT` or (`as_float`) a `DOUBLE` column...
    Int { values: Int64Array, as_float: bool },
    /// ...and `Boolean` for a `BOOLEAN` column.
    Bool(BooleanArray),
    /// A timestamp column (any unit, no zone or UTC) for a `TIMESTAMP` column: its
    /// fields are its text, as before, but the table reads each value's instant
    /// (`instants`, epoch ms), which is what that text parses to (years 1000 to 9999,
    /// where the text is plain; null elsewhere).
    Time {
        values: ArrayRef,
        instants: TimestampMillisecondArray,
    },
}

/// The instants (epoch ms) whose text is a plain four-digit-year timestamp.
const PLAIN_YEARS: std::ops::RangeInclusive<i64> = -30_610_224_000_000..=253_402_300_799_999;

impl Col {
    /// `column` for a source column of type `t` (`Utf8` when the source has none).
    fn of(column: &ArrayRef, t: &DataType) -> Result<Col, String> {
        match (column.data_type(), t) {
            (DataType::Float64, DataType::Float64) => {
                return Ok(Col::Float(column.as_primitive::<Float64Type>().clone()))
            }
            (DataType::Int64, DataType::Int64 | DataType::Float64) => {
                return Ok(Col::Int {
                    values: column.as_primitive::<Int64Type>().clone(),
                    as_float: *t == DataType::Float64,
                })
            }
            (DataType::Boolean, DataType::Boolean) => {
                return Ok(Col::Bool(column.as_boolean().clone()))
            }
            (DataType::Timestamp(_, tz), DataType::Timestamp(..))
                if tz
                    .as_deref()
                    .is_none_or(|z| matches!(z, "UTC" | "+00:00" | "Z")) =>
            {
                return Ok(Col::time(column.clone()))
            }
            _ => {}
        }
        let text = cast(column, &DataType::Utf8).map_err(|e| e.to_string())?;
        Ok(Col::Text(text.as_string::<i32>().clone()))
    }

    /// A [`Col::Time`] of `values`, a timestamp array.
    fn time(values: ArrayRef) -> Col {
        // The text's fraction is cut, not rounded, to milliseconds: a floor.
        fn floor<T: ArrowPrimitiveType<Native = i64>>(
            a: &ArrayRef,
            ms: impl Fn(i64) -> Option<i64>,
        ) -> TimestampMillisecondArray {
            a.as_primitive::<T>()
                .iter()
                .map(|v| v.and_then(&ms).filter(|ms| PLAIN_YEARS.contains(ms)))
                .collect()
        }
        let instants = match values.data_type() {
            DataType::Timestamp(TimeUnit::Second, _) => {
                floor::<TimestampSecondType>(&values, |s| s.checked_mul(1000))
            }
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                floor::<TimestampMillisecondType>(&values, Some)
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                floor::<TimestampMicrosecondType>(&values, |us| Some(us.div_euclid(1000)))
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                floor::<TimestampNanosecondType>(&values, |ns| Some(ns.div_euclid(1_000_000)))
            }
            _ => TimestampMillisecondArray::new_null(values.len()),
        };
        Col::Time { values, instants }
    }

    fn array(&self) -> &dyn Array {
        match self {
            Col::Text(a) => a,
            Col::Float(a) => a,
            Col::Int { values, .. } => values,
            Col::Bool(a) => a,
            Col::Time { values, .. } => values.as_ref(),
        }
    }

    /// The same kind of column over `a` (this column's rows sliced or gathered).
    fn like(&self, a: ArrayRef) -> Col {
        match self {
            Col::Text(_) => Col::Text(a.as_string::<i32>().clone()),
            Col::Float(_) => Col::Float(a.as_primitive::<Float64Type>().clone()),
            Col::Int { as_float, .. } => Col::Int {
                values: a.as_primitive::<Int64Type>().clone(),
                as_float: *as_float,
            },
            Col::Bool(_) => Col::Bool(a.as_boolean().clone()),
            Col::Time { .. } => Col::time(a),
        }
    }

    /// Rows `start..start + len`, without copying.
    fn slice(&self, start: usize, len: usize) -> Col {
        match self {
            Col::Text(a) => Col::Text(a.slice(start, len)),
            Col::Float(a) => Col::Float(a.slice(start, len)),
            Col::Int { values, as_float } => Col::Int {
                values: values.slice(start, len),
                as_float: *as_float,
            },
            Col::Bool(a) => Col::Bool(a.slice(start, len)),
            Col::Time { values, instants } => Col::Time {
                values: values.slice(start, len),
                instants: instants.slice(start, len),
            },
        }
    }

    /// The column as the values [`value`](Self::value) and [`instant`](Self::instant)
    /// give for a column of type `t`, when they come straight from its array: the
    /// table then converts it a column at a time.
    fn typed(&self, t: &DataType) -> Option<Typed> {
        Some(match self {
            // Text that is not a string column's is parsed cell by cell.
            Col::Text(a) if *t == DataType::Utf8 => Typed::Str(a.clone()),
            Col::Text(_) => return None,
            Col::Float(a) => Typed::Float(a.clone()),
            Col::Int {
                values,
                as_float: false,
            } => Typed::Int(values.clone()),
            Col::Int { values, .. } => Typed::Float(values.unary(|v| v as f64)),
            Col::Bool(a) => Typed::Bool(a.clone()),
            // Only when every value's text is plain, so that each reads as its instant.
            Col::Time { values, instants } if instants.null_count() == values.null_count() => {
                Typed::Millis(instants.clone())
            }
            Col::Time { .. } => return None,
        })
    }

    /// Value `row` as an instant in epoch ms, for a [`Col::Time`] column whose text
    /// is plain (see [`PLAIN_YEARS`]).
    #[inline]
    fn instant(&self, row: usize) -> Option<i64> {
        match self {
            Col::Time { instants, .. } if instants.is_valid(row) => Some(instants.value(row)),
            _ => None,
        }
    }

    /// Value `row` as the JSON value its device would have sent for a column of type
    /// `t` (`None`: missing), as [`cell`] reads its text.
    #[inline]
    fn value(&self, row: usize, t: &DataType) -> Option<Scalar<'_>> {
        Some(match self {
            // An empty cell is a missing value, as in a JSON payload.
            Col::Text(a) if a.is_null(row) || a.value(row).is_empty() => return None,
            Col::Text(a) => cell(a.value(row), t),
            Col::Float(a) if a.is_null(row) => return None,
            Col::Float(a) => match a.value(row) {
                v if v.is_finite() => Scalar::Float(v),
                // Not a number: the text (`NaN`, `inf`), for the decoder to refuse.
                _ => Scalar::Str(Cow::Owned(text_of(a, row))),
            },
            Col::Int { values, .. } if values.is_null(row) => return None,
            Col::Int { values, as_float } => match values.value(row) {
                v if *as_float => Scalar::Float(v as f64),
                v => Scalar::Int(v),
            },
            Col::Bool(a) if a.is_null(row) => return None,
            Col::Bool(a) => Scalar::Bool(a.value(row)),
            Col::Time { values, .. } if values.is_null(row) => return None,
            Col::Time { values, .. } => Scalar::Str(Cow::Owned(text_of(values, row))),
        })
    }
}

/// The text of one value, as a cast of the column to text writes it.
fn text_of(column: &dyn Array, row: usize) -> String {
    cast(&column.slice(row, 1), &DataType::Utf8)
        .map(|a| a.as_string::<i32>().value(0).to_string())
        .unwrap_or_default()
}

/// A text cell as the JSON value a device would have sent for a column of type `t`;
/// text that does not fit the type stays a string, for the decoder to reject.
pub(crate) fn cell<'a>(s: &'a str, t: &DataType) -> Scalar<'a> {
    let parsed = match t {
        DataType::Float64 => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Scalar::Float),
        // `3.0` is the number a device may send for a whole number (JSON has one number
        // type, and the decoder takes a whole float for an integer column, as it rounds
        // one for a timestamp): a CSV cell or a Parquet float column cast to text says
        // the same.
        DataType::Int64 | DataType::Timestamp(..) => {
            let s = s.trim();
            s.parse::<i64>().ok().map(Scalar::Int).or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(Scalar::Float)
            })
        }
        DataType::Boolean => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Some(Scalar::Bool(true)),
            "false" | "0" => Some(Scalar::Bool(false)),
            _ => None,
        },
        _ => None,
    };
    parsed.unwrap_or(Scalar::Str(Cow::Borrowed(s)))
}

/// `v` as a JSON value (the payload's field).
fn json(v: &Scalar<'_>) -> Value {
    match v {
        Scalar::Null | Scalar::Nested(_) => Value::Null,
        Scalar::Bool(b) => Value::Bool(*b),
        Scalar::Int(i) => Value::Number((*i).into()),
        Scalar::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Scalar::Str(s) => Value::String(s.to_string()),
        // History cells are text, never decoded waveforms; written as the samples.
        Scalar::Wave(Ok(v)) => Value::from(v.clone()),
        Scalar::Wave(Err(_)) => Value::Null,
    }
}

/// An upper bound of the length of `s` as a JSON string: quotes, and each byte that
/// must be escaped as `\u00XX` at worst.
fn json_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' => 2,
            0..=0x1f | 0x7f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// `v` as a topic level, written as the payload writes it.
fn level(v: &Scalar<'_>) -> Option<String> {
    match v {
        Scalar::Str(s) => Some(s.to_string()),
        Scalar::Null => None,
        other => Some(json(other).to_string()),
    }
}

impl Rows {
    /// The rows of `batch` (any column types) for `shape`.
    pub(crate) fn new(batch: &RecordBatch, shape: &Arc<SourceShape>) -> Result<Self, String> {
        let schema = batch.schema();
        let mut names = Vec::new();
        let mut types = Vec::new();
        let mut columns = Vec::new();
        for (i, f) in schema.fields().iter().enumerate() {
            let t = shape
                .schema
                .field_with_name(f.name())
                .map(|t| t.data_type().clone())
                .unwrap_or(DataType::Utf8);
            columns.push(Col::of(batch.column(i), &t).map_err(|e| format!("{}: {e}", f.name()))?);
            names.push(f.name().clone());
            types.push(t);
        }
        Ok(Rows::of(names.into(), types.into(), columns, shape.clone()))
    }

    /// Rows of these columns, with their topics, times and table.
    fn of(
        names: Arc<[String]>,
        types: Arc<[DataType]>,
        columns: Vec<Col>,
        shape: Arc<SourceShape>,
    ) -> Rows {
        let n = columns.first().map_or(0, |c| c.array().len());
        let mut rows = Rows {
            names,
            types,
            columns,
            shape,
            topics: Arc::default(),
            len: n,
            times: Vec::new(),
            table: None,
        };
        rows.table = rows.read_table();
        rows.times = rows.read_times();
        rows
    }

    /// The rows read column by column into the source's columns, as the engine's
    /// decoder for the source would read each row's fields.
    fn read_table(&self) -> Option<Table> {
        let decoder = JsonDecoder::new(
            self.shape.schema.clone(),
            self.shape.template.clone(),
            usize::MAX,
        )
        .ok()?;
        decoder.read_table(
            &self.names,
            self.len(),
            |row, c| match self.columns[c].instant(row) {
                Some(ms) => Some(Scalar::Int(ms)),
                None => self.value_at(row, c),
            },
            |c| self.columns[c].typed(&self.types[c]),
        )
    }

    /// Each row's event time: the table's, for a clean row, else read from its field.
    fn read_times(&self) -> Vec<Option<i64>> {
        let Some(name) = self.shape.event_time.as_deref() else {
            return vec![None; self.len()];
        };
        let clean = self.table.as_ref().and_then(|t| {
            let k = t.schema().index_of(name).ok()?;
            let c = t.columns()[k].as_primitive_opt::<TimestampMillisecondType>()?;
            Some((t, c))
        });
        (0..self.len())
            .map(|r| match clean {
                Some((t, c)) if t.clean(r) => Some(c.value(r)),
                _ => match self.field(r, name)? {
                    Scalar::Str(s) => forewarn_core::parse_rfc3339(&s),
                    Scalar::Int(i) => Some(i),
                    _ => None,
                },
            })
            .collect()
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The topic of row `row`.
    pub fn topic(&self, row: usize) -> &str {
        let slots = self
            .topics
            .get_or_init(|| (0..self.len).map(|_| OnceLock::new()).collect());
        slots[row].get_or_init(|| {
            self.shape
                .topic_with(|c| self.field(row, c).as_ref().and_then(level))
        })
    }

    /// The event time of row `row` (epoch ms), if readable.
    pub fn time(&self, row: usize) -> Option<i64> {
        self.times[row]
    }

    /// The field `name` of row `row`, as its payload holds it (of columns named alike,
    /// the last with a value, as a JSON object keeps the last of repeated keys).
    pub fn field(&self, row: usize, name: &str) -> Option<Scalar<'_>> {
        (0..self.names.len())
            .rev()
            .filter(|&c| self.names[c] == name)
            .find_map(|c| self.value_at(row, c))
    }

    #[inline]
    fn value_at(&self, row: usize, c: usize) -> Option<Scalar<'_>> {
        self.columns[c].value(row, &self.types[c])
    }

    /// Row `row` as the message its device would have sent.
    pub fn message(&self, row: usize) -> Message {
        Message {
            topic: self.topic(row).to_string(),
            payload: self.payload_of(row),
            time: self.times[row],
            recorded: false,
        }
    }

    fn payload_of(&self, row: usize) -> Vec<u8> {
        let mut m = Map::new();
        for c in 0..self.names.len() {
            if let Some(v) = self.value_at(row, c) {
                m.insert(self.names[c].clone(), json(&v));
            }
        }
        Value::Object(m).to_string().into_bytes()
    }

    /// Rows `start..end`.
    pub fn slice(&self, start: usize, end: usize) -> Rows {
        let columns = self
            .columns
            .iter()
            .map(|c| c.slice(start, end - start))
            .collect();
        Rows {
            names: self.names.clone(),
            types: self.types.clone(),
            columns,
            shape: self.shape.clone(),
            topics: Arc::new(match self.topics.get() {
                Some(t) => t[start..end].to_vec().into_boxed_slice().into(),
                None => OnceLock::new(),
            }),
            len: end - start,
            times: self.times[start..end].to_vec(),
            table: self.table.as_ref().map(|t| t.slice(start, end)),
        }
    }

    /// The rows `at` (part, row) of `parts`, which have the same columns, in that order.
    pub fn gather(parts: &[Rows], at: &[(usize, usize)]) -> Result<Rows, String> {
        let first = parts.first().ok_or("no rows")?;
        let mut columns = Vec::new();
        for c in 0..first.names.len() {
            let arrays: Vec<&dyn Array> = parts.iter().map(|p| p.columns[c].array()).collect();
            let a: ArrayRef = interleave(&arrays, at).map_err(|e| e.to_string())?;
            columns.push(first.columns[c].like(a));
        }
        Ok(Rows::of(
            first.names.clone(),
            first.types.clone(),
            columns,
            first.shape.clone(),
        ))
    }

    /// Whether `other` has the same columns (so the two can be gathered together).
    pub fn same_columns(&self, other: &Rows) -> bool {
        self.names == other.names
            && self.types == other.types
            && self
                .columns
                .iter()
                .zip(&other.columns)
                .all(|(a, b)| a.array().data_type() == b.array().data_type())
    }
}

impl Readings for Rows {
    fn len(&self) -> usize {
        self.len
    }

    fn columns(&self) -> &[String] {
        &self.names
    }

    fn topic(&self, row: usize) -> &str {
        Rows::topic(self, row)
    }

    fn value(&self, row: usize, column: usize) -> Option<Scalar<'_>> {
        self.value_at(row, column)
    }

    fn payload(&self, row: usize) -> Vec<u8> {
        self.payload_of(row)
    }

    fn payload_bound(&self, row: usize) -> usize {
        // `{`, `}`, and per field its quoted name, `:`, the value and a `,`: a value
        // written as a number takes at most 24 bytes, as a string its escaped text.
        2 + (0..self.names.len())
            .map(|c| match &self.columns[c] {
                Col::Text(a) if a.is_valid(row) && !a.value(row).is_empty() => {
                    json_len(&self.names[c]) + 2 + json_len(a.value(row)).max(24)
                }
                Col::Float(_) | Col::Int { .. } | Col::Bool(_)
                    if self.columns[c].array().is_valid(row) =>
                {
                    json_len(&self.names[c]) + 2 + 24
                }
                // Text such as `2026-01-05T06:00:00.123456789+00:00`, quoted.
                Col::Time { values, .. } if values.is_valid(row) => {
                    json_len(&self.names[c]) + 2 + 48
                }
                _ => 0,
            })
            .sum::<usize>()
    }

    fn payload_bound_max(&self) -> Option<usize> {
        // As `payload_bound` with each text column's longest value.
        Some(
            2 + (0..self.names.len())
                .map(|c| {
                    let name = json_len(&self.names[c]) + 2;
                    match &self.columns[c] {
                        Col::Text(a) => {
                            let longest = a
                                .offsets()
                                .windows(2)
                                .map(|w| (w[1] - w[0]) as usize)
                                .max()
                                .unwrap_or(0);
                            // Every byte escaped as `\u00XX` at worst.
                            name + (2 + 6 * longest).max(24)
                        }
                        Col::Float(_) | Col::Int { .. } | Col::Bool(_) => name + 24,
                        Col::Time { .. } => name + 48,
                    }
                })
                .sum::<usize>(),
        )
    }

    fn table(&self) -> Option<&Table> {
        self.table.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        TimestampMicrosecondArray, TimestampNanosecondArray, TimestampSecondArray,
    };

    /// The instant read from a timestamp column is the one its text parses to.
    #[test]
    fn a_timestamps_instant_is_what_its_text_parses_to() {
        let us: Vec<i64> = vec![
            0,
            1,
            999,
            1_000,
            -1,
            -500,
            -1_000,
            -1_001,
            1_764_547_200_012_345,
            -30_610_224_000_000_000,
            253_402_300_799_999_999,
            -62_135_596_800_000_000,
            i64::MAX / 2,
        ];
        let columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMicrosecondArray::from(us.clone())),
            Arc::new(TimestampMicrosecondArray::from(us.clone()).with_timezone("UTC")),
            Arc::new(TimestampNanosecondArray::from(
                us.iter()
                    .map(|u| u.saturating_mul(1000).saturating_add(7))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(TimestampSecondArray::from(
                us.iter().map(|u| u / 1_000_000).collect::<Vec<_>>(),
            )),
        ];
        let mut plain = 0;
        for a in columns {
            let col = Col::of(&a, &DataType::Timestamp(TimeUnit::Millisecond, None)).unwrap();
            assert!(matches!(col, Col::Time { .. }));
            for row in 0..a.len() {
                let text = text_of(&a, row);
                match col.instant(row) {
                    Some(ms) => {
                        plain += 1;
                        assert_eq!(forewarn_core::parse_rfc3339(&text), Some(ms), "{text}");
                    }
                    // Outside the plain years the text is read as it always was.
                    None => assert!(
                        forewarn_core::parse_rfc3339(&text)
                            .is_none_or(|ms| !PLAIN_YEARS.contains(&ms)),
                        "{text}"
                    ),
                }
            }
        }
        assert!(plain >= 40, "{plain}");
        // Another zone keeps the text.
        let berlin: ArrayRef =
            Arc::new(TimestampMicrosecondArray::from(vec![0]).with_timezone("+01:00"));
        let c = Col::of(&berlin, &DataType::Timestamp(TimeUnit::Millisecond, None)).unwrap();
        assert!(matches!(c, Col::Text(_)));
    }
}
