//! Rows of a CSV or Parquet file kept as Arrow columns, each row read as the reading
//! its device would have sent: the engine takes them as values
//! ([`forewarn_formats::Readings`]), and writes a row's JSON only when a dead letter
//! quotes it (or a test publishes it).

use std::borrow::Cow;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringArray};
use datafusion::arrow::compute::{cast, interleave};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use forewarn_formats::{Readings, Scalar};
use serde_json::{Map, Value};

use crate::{Message, SourceShape};

/// Rows of a history file: its columns as text (CSV cells as written, Parquet values
/// cast to text, as they always were), typed per cell by the source's column of the
/// same name, with each row's topic and event time.
#[derive(Debug, Clone)]
pub struct Rows {
    names: Arc<[String]>,
    types: Arc<[DataType]>,
    columns: Vec<StringArray>,
    topics: Vec<String>,
    times: Vec<Option<i64>>,
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
        DataType::Int64 | DataType::Timestamp(..) => s.trim().parse::<i64>().ok().map(Scalar::Int),
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
    pub(crate) fn new(batch: &RecordBatch, shape: &SourceShape) -> Result<Self, String> {
        let schema = batch.schema();
        let mut names = Vec::new();
        let mut types = Vec::new();
        let mut columns = Vec::new();
        for (i, f) in schema.fields().iter().enumerate() {
            let text =
                cast(batch.column(i), &DataType::Utf8).map_err(|e| format!("{}: {e}", f.name()))?;
            names.push(f.name().clone());
            types.push(
                shape
                    .schema
                    .field_with_name(f.name())
                    .map(|t| t.data_type().clone())
                    .unwrap_or(DataType::Utf8),
            );
            columns.push(text.as_string::<i32>().clone());
        }
        let mut rows = Rows {
            names: names.into(),
            types: types.into(),
            columns,
            topics: Vec::new(),
            times: Vec::new(),
        };
        rows.locate(shape);
        Ok(rows)
    }

    /// Fills each row's topic and event time.
    fn locate(&mut self, shape: &SourceShape) {
        let n = self.columns.first().map_or(0, |c| c.len());
        self.times = (0..n)
            .map(|r| match self.field(r, shape.event_time.as_deref()?)? {
                Scalar::Str(s) => forewarn_core::parse_rfc3339(&s),
                Scalar::Int(i) => Some(i),
                _ => None,
            })
            .collect();
        self.topics = (0..n)
            .map(|r| shape.topic_with(|c| self.field(r, c).as_ref().and_then(level)))
            .collect();
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// The topic of row `row`.
    pub fn topic(&self, row: usize) -> &str {
        &self.topics[row]
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

    fn value_at(&self, row: usize, c: usize) -> Option<Scalar<'_>> {
        let col = &self.columns[c];
        if col.is_null(row) || col.value(row).is_empty() {
            // An empty cell is a missing value, as in a JSON payload.
            return None;
        }
        Some(cell(col.value(row), &self.types[c]))
    }

    /// Row `row` as the message its device would have sent.
    pub fn message(&self, row: usize) -> Message {
        Message {
            topic: self.topics[row].clone(),
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
        Rows {
            names: self.names.clone(),
            types: self.types.clone(),
            columns: self
                .columns
                .iter()
                .map(|c| c.slice(start, end - start))
                .collect(),
            topics: self.topics[start..end].to_vec(),
            times: self.times[start..end].to_vec(),
        }
    }

    /// The rows `at` (part, row) of `parts`, which have the same columns, in that order.
    pub fn gather(parts: &[Rows], at: &[(usize, usize)]) -> Result<Rows, String> {
        let first = parts.first().ok_or("no rows")?;
        let mut columns = Vec::new();
        for c in 0..first.names.len() {
            let arrays: Vec<&dyn Array> =
                parts.iter().map(|p| &p.columns[c] as &dyn Array).collect();
            let a: ArrayRef = interleave(&arrays, at).map_err(|e| e.to_string())?;
            columns.push(a.as_string::<i32>().clone());
        }
        Ok(Rows {
            names: first.names.clone(),
            types: first.types.clone(),
            columns,
            topics: at
                .iter()
                .map(|&(p, r)| parts[p].topics[r].clone())
                .collect(),
            times: at.iter().map(|&(p, r)| parts[p].times[r]).collect(),
        })
    }

    /// Whether `other` has the same columns (so the two can be gathered together).
    pub fn same_columns(&self, other: &Rows) -> bool {
        self.names == other.names && self.types == other.types
    }
}

impl Readings for Rows {
    fn len(&self) -> usize {
        self.topics.len()
    }

    fn columns(&self) -> &[String] {
        &self.names
    }

    fn topic(&self, row: usize) -> &str {
        &self.topics[row]
    }

    fn value(&self, row: usize, column: usize) -> Option<Scalar<'_>> {
        self.value_at(row, column)
    }

    fn payload(&self, row: usize) -> Vec<u8> {
        self.payload_of(row)
    }

    fn payload_bound(&self, row: usize) -> usize {
        // Every byte escaped as \u00XX at worst, a number written in at most 32 bytes.
        2 + (0..self.names.len())
            .filter(|&c| self.columns[c].is_valid(row))
            .map(|c| 6 * (self.names[c].len() + self.columns[c].value(row).len()) + 40)
            .sum::<usize>()
    }
}
