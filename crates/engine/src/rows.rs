//! Arrow rows → JSON objects, for alerts and dead letters.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int32Type, Int64Type, TimeUnit, TimestampMillisecondType,
    UInt64Type,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::array_value_to_string;
use serde_json::{Map, Value};

/// Row `i` of `batch` as a JSON object. Non-finite floats become null.
pub fn row_to_json(batch: &RecordBatch, i: usize) -> Map<String, Value> {
    row_to_json_except(batch, i, &[])
}

/// [`row_to_json`] without the columns whose index `skip` marks `true` (a shorter
/// `skip` leaves the rest in).
pub fn row_to_json_except(batch: &RecordBatch, i: usize, skip: &[bool]) -> Map<String, Value> {
    let mut m = Map::new();
    let schema = batch.schema_ref();
    for (k, (f, col)) in schema.fields().iter().zip(batch.columns()).enumerate() {
        if !skip.get(k).copied().unwrap_or(false) {
            m.insert(f.name().clone(), cell(col.as_ref(), i));
        }
    }
    m
}

fn num(v: f64) -> Value {
    serde_json::Number::from_f64(v)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Value `i` of `a` as JSON (as [`row_to_json`] writes it).
pub(crate) fn cell(a: &dyn Array, i: usize) -> Value {
    if a.is_null(i) {
        return Value::Null;
    }
    match a.data_type() {
        DataType::Float64 => num(a.as_primitive::<Float64Type>().value(i)),
        DataType::Float32 => num(a.as_primitive::<Float32Type>().value(i) as f64),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i).into(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).into(),
        DataType::UInt64 => a.as_primitive::<UInt64Type>().value(i).into(),
        DataType::Boolean => a.as_boolean().value(i).into(),
        DataType::Utf8 => a.as_string::<i32>().value(i).into(),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            forewarn_core::format_rfc3339(a.as_primitive::<TimestampMillisecondType>().value(i))
                .into()
        }
        // A waveform (or any list): a JSON array of its items.
        DataType::List(_) => {
            let items = a.as_list::<i32>().value(i);
            Value::Array((0..items.len()).map(|j| cell(&items, j)).collect())
        }
        _ => array_value_to_string(a, i)
            .map(Value::String)
            .unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::ListArray;
    use datafusion::arrow::datatypes::Float64Type;

    use super::*;

    #[test]
    fn a_waveform_is_a_json_array() {
        let waves = ListArray::from_iter_primitive::<Float64Type, _, _>(vec![
            Some(vec![Some(1.5), Some(-2.0)]),
            None,
        ]);
        let a: Arc<dyn Array> = Arc::new(waves);
        assert_eq!(cell(a.as_ref(), 0), serde_json::json!([1.5, -2.0]));
        assert_eq!(cell(a.as_ref(), 1), Value::Null);
    }
}
