//! The readings of one Sparkplug B message as typed values ([`Readings`]): the engine
//! decodes them exactly as the JSON array message they stand for, without that JSON
//! being written and parsed again; it is written only when a dead letter quotes it.

use std::borrow::Cow;
use std::sync::Arc;

use forewarn_formats::{Readings, Scalar};
use serde_json::{Map, Value as Json};

use super::proto::{data_type as dt, Value};

/// A metric's value as the JSON of its reading carries it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Val {
    Null,
    Bool(bool),
    Int(i64),
    /// An unsigned integer past `i64::MAX`: written as the integer, read as a JSON
    /// reader reads it (a float).
    Big(u64),
    /// Finite (a non-finite float is `Null`, as JSON cannot carry it).
    Float(f64),
    Str(String),
}

impl Val {
    /// A metric's value read by its data type (signed integers are sent as two's
    /// complement in the unsigned fields).
    pub(super) fn of(v: &Value, t: u32) -> Val {
        match v {
            Value::IntValue(x) => Val::Int(match t {
                dt::INT8 => i64::from(*x as i8),
                dt::INT16 => i64::from(*x as i16),
                dt::INT32 => i64::from(*x as i32),
                _ => i64::from(*x),
            }),
            Value::LongValue(x) => match t {
                dt::INT64 => Val::Int(*x as i64),
                _ => Val::unsigned(*x),
            },
            Value::FloatValue(x) => Val::float(f64::from(*x)),
            Value::DoubleValue(x) => Val::float(*x),
            Value::BooleanValue(b) => Val::Bool(*b),
            Value::StringValue(s) => Val::Str(s.clone()),
            Value::BytesValue(_) => Val::Null,
        }
    }

    /// An unsigned integer (a metric's, or a timestamp).
    pub(super) fn unsigned(x: u64) -> Val {
        i64::try_from(x).map_or(Val::Big(x), Val::Int)
    }

    fn float(x: f64) -> Val {
        if x.is_finite() {
            Val::Float(x)
        } else {
            Val::Null
        }
    }

    fn scalar(&self) -> Scalar<'_> {
        match self {
            Val::Null => Scalar::Null,
            Val::Bool(b) => Scalar::Bool(*b),
            Val::Int(i) => Scalar::Int(*i),
            // As a JSON reader takes an integer past i64.
            Val::Big(u) => Scalar::Float(*u as f64),
            Val::Float(f) => Scalar::Float(*f),
            Val::Str(s) => Scalar::Str(Cow::Borrowed(s)),
        }
    }

    fn json(&self) -> Json {
        match self {
            Val::Null => Json::Null,
            Val::Bool(b) => Json::Bool(*b),
            Val::Int(i) => Json::from(*i),
            Val::Big(u) => Json::from(*u),
            Val::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
            Val::Str(s) => Json::String(s.clone()),
        }
    }

    /// At least the length of [`json`](Self::json)'s text.
    fn bound(&self) -> usize {
        match self {
            Val::Null | Val::Bool(_) => 5,
            Val::Int(_) | Val::Big(_) => 20,
            // Shortest round-trip digits, sign, point and exponent.
            Val::Float(_) => 32,
            Val::Str(s) => text_bound(s),
        }
    }
}

/// At least the length of `s` as a JSON string: quotes, and at most `\u00XX` a byte.
fn text_bound(s: &str) -> usize {
    2 + 6 * s.len()
}

/// The readings of one Sparkplug message (one per distinct metric time), for the
/// source it was decoded for: each a row over the source's keys (its metric columns,
/// `group`, `edge_node`, `device` and event-time column as it declares them), `None`
/// where the message does not set one. They stand for one JSON array message
/// ([`message`](Self::message)) pushed by the source's name, so they have no topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub(super) keys: Arc<[String]>,
    pub(super) rows: Vec<Vec<Option<Val>>>,
}

impl Rows {
    /// The JSON array message these readings stand for, byte for byte as the engine's
    /// dead letters quote it.
    pub fn message(&self) -> Vec<u8> {
        let array: Vec<Json> = (0..self.rows.len()).map(|r| self.object(r)).collect();
        serde_json::to_vec(&array).expect("serialises")
    }

    fn object(&self, row: usize) -> Json {
        let map: Map<String, Json> = self
            .keys
            .iter()
            .zip(&self.rows[row])
            .filter_map(|(k, v)| Some((k.clone(), v.as_ref()?.json())))
            .collect();
        Json::Object(map)
    }
}

impl Readings for Rows {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn columns(&self) -> &[String] {
        &self.keys
    }

    fn topic(&self, _row: usize) -> &str {
        ""
    }

    fn value(&self, row: usize, column: usize) -> Option<Scalar<'_>> {
        self.rows[row][column].as_ref().map(Val::scalar)
    }

    fn payload(&self, row: usize) -> Vec<u8> {
        serde_json::to_vec(&self.object(row)).expect("serialises")
    }

    fn payload_bound(&self, row: usize) -> usize {
        let fields: usize = self
            .keys
            .iter()
            .zip(&self.rows[row])
            .filter_map(|(k, v)| Some(text_bound(k) + 2 + v.as_ref()?.bound()))
            .sum();
        2 + fields
    }

    fn one_message(&self) -> bool {
        true
    }
}
