//! Pushed batches and records, matched to a source's columns before they are sent.
//!
//! Matching is lenient only where nothing can be lost or misread: columns are found by
//! name in any order, a missing nullable column is filled with nulls, the engine-filled
//! `arrival_time` of a processing-time source may be left out, and a few types are cast
//! ([`castable`]). Anything else is the caller's mistake, returned as a [`BatchError`]
//! at once rather than dead-lettered later: a misspelt column would otherwise turn into
//! a column of nulls without a word. Bad *rows* (a null device, a NaN) are not errors:
//! they are dead-lettered by the pipeline with the same reason codes as JSON readings.

use std::sync::Arc;

use datafusion::arrow::array::{new_null_array, Array, ArrayRef};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use serde::Serialize;

/// Why a pushed batch or records do not fit a source. Returned to the caller; nothing
/// of such a batch is processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The batch has a column the source does not declare (a misspelt column would
    /// otherwise leave the declared one all null).
    #[error("source '{table}' has no column '{column}' (its columns: {})", .expected.join(", "))]
    UnknownColumn {
        /// The source.
        table: String,
        /// The column given.
        column: String,
        /// The source's columns.
        expected: Vec<String>,
    },
    /// The batch names a column twice.
    #[error("source '{table}': column '{column}' is given twice")]
    DuplicateColumn {
        /// The source.
        table: String,
        /// The column.
        column: String,
    },
    /// A column the source declares `NOT NULL` (or its device or event time) is absent.
    #[error("source '{table}': required column '{column}' ({expected}) is missing")]
    MissingColumn {
        /// The source.
        table: String,
        /// The column.
        column: String,
        /// Its type.
        expected: DataType,
    },
    /// A column's type cannot be read as the declared one without loss.
    #[error("source '{table}': column '{column}' is {got}, which cannot be read as {expected} without loss")]
    WrongType {
        /// The source.
        table: String,
        /// The column.
        column: String,
        /// The declared type.
        expected: DataType,
        /// The batch's type.
        got: DataType,
    },
    /// The records could not be turned into columns (`serde_arrow`'s message).
    #[error("source '{table}': records do not serialise into its columns: {message}")]
    Records {
        /// The source.
        table: String,
        /// Why.
        message: String,
    },
}

/// A source as pushed batches see it.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) schema: SchemaRef,
    /// The column the engine fills on arrival (processing-time sources), if any.
    pub(crate) arrival: Option<String>,
}

/// Time zones whose timestamps are UTC instants by name, so a zone-less column (the
/// engine's epoch milliseconds) holds the same values. Arrow stores every zoned
/// timestamp as UTC anyway; other zones are refused only because a caller who names
/// one may have stored local wall-clock times, which would be silently shifted.
fn is_utc(tz: &str) -> bool {
    matches!(
        tz,
        "UTC" | "utc" | "Etc/UTC" | "Z" | "+00:00" | "+0000" | "+00"
    )
}

/// Whether a column of type `got` may be read as the declared `want`: the same type;
/// a UTC or zone-less timestamp of any unit for a timestamp (micro- and nanoseconds are
/// truncated to the millisecond the windows use); `Float32` and integers of up to 32
/// bits for `DOUBLE` (exact in an `f64`); smaller integers for `BIGINT`; the other
/// string layouts for `TEXT`. `Int64` for `DOUBLE` is refused: above 2^53 it rounds.
pub(crate) fn castable(got: &DataType, want: &DataType) -> bool {
    use DataType as T;
    if got == want {
        return true;
    }
    match (got, want) {
        (T::Timestamp(_, tz), T::Timestamp(TimeUnit::Millisecond, want_tz)) => {
            let utc = |tz: &Option<Arc<str>>| tz.as_deref().is_none_or(is_utc);
            utc(tz) && utc(want_tz)
        }
        (
            T::Float32 | T::Int8 | T::Int16 | T::Int32 | T::UInt8 | T::UInt16 | T::UInt32,
            T::Float64,
        ) => true,
        (T::Int8 | T::Int16 | T::Int32 | T::UInt8 | T::UInt16 | T::UInt32, T::Int64) => true,
        (T::LargeUtf8 | T::Utf8View, T::Utf8) => true,
        (T::Dictionary(_, v), T::Utf8) => castable(v, want),
        _ => false,
    }
}

/// The source's columns, in its order and types, from `batch`; nullable throughout,
/// so that rows with a null where the source needs a value reach the pipeline, which
/// dead-letters them one by one (`missing_field`) as it does JSON readings.
pub(crate) fn conform(t: &Target, batch: &RecordBatch) -> Result<RecordBatch, BatchError> {
    let given = batch.schema();
    let table = || t.name.clone();
    for (i, f) in given.fields().iter().enumerate() {
        if given.fields()[..i].iter().any(|g| g.name() == f.name()) {
            return Err(BatchError::DuplicateColumn {
                table: table(),
                column: f.name().clone(),
            });
        }
        if t.schema.index_of(f.name()).is_err() {
            return Err(BatchError::UnknownColumn {
                table: table(),
                column: f.name().clone(),
                expected: t.schema.fields().iter().map(|f| f.name().clone()).collect(),
            });
        }
    }
    let rows = batch.num_rows();
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for want in t.schema.fields() {
        let column = match given.index_of(want.name()) {
            Ok(j) => {
                let got = given.field(j).data_type();
                if !castable(got, want.data_type()) {
                    return Err(BatchError::WrongType {
                        table: table(),
                        column: want.name().clone(),
                        expected: want.data_type().clone(),
                        got: got.clone(),
                    });
                }
                read_as(batch.column(j), want.data_type())
            }
            // Stamped by the pipeline when the batch arrives.
            Err(_) if t.arrival.as_deref() == Some(want.name().as_str()) => continue,
            Err(_) if want.is_nullable() => new_null_array(want.data_type(), rows),
            Err(_) => {
                return Err(BatchError::MissingColumn {
                    table: table(),
                    column: want.name().clone(),
                    expected: want.data_type().clone(),
                })
            }
        };
        fields.push(want.as_ref().clone().with_nullable(true));
        columns.push(column);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(
        RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options)
            .expect("columns cast to the fields' types, all of the batch's length"),
    )
}

/// `column` as `want`, which [`castable`] allowed.
fn read_as(column: &ArrayRef, want: &DataType) -> ArrayRef {
    if column.data_type() == want {
        return column.clone();
    }
    if let (DataType::Timestamp(_, _), DataType::Timestamp(unit, tz)) = (column.data_type(), want) {
        // Zoned timestamps are UTC instants: change the unit, keep the values' meaning
        // (a cast to a zone-less type could otherwise be read as local time).
        let same_zone = DataType::Timestamp(*unit, column_tz(column));
        let c = cast(column, &same_zone).expect("timestamp units always cast");
        let c = c
            .as_any()
            .downcast_ref::<datafusion::arrow::array::TimestampMillisecondArray>()
            .expect("millisecond timestamps")
            .clone()
            .with_timezone_opt(tz.clone());
        return Arc::new(c);
    }
    cast(column, want).expect("castable types cast")
}

fn column_tz(column: &ArrayRef) -> Option<Arc<str>> {
    match column.data_type() {
        DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    }
}

/// `records` as a batch for `t` (see [`crate::PipelineHandle::push_records`]): the
/// fields the records serialise, in the source's types.
pub(crate) fn from_records<T: Serialize>(
    t: &Target,
    records: &[T],
) -> Result<RecordBatch, BatchError> {
    use serde_arrow::schema::{SchemaLike, TracingOptions};
    let failed = |e: serde_arrow::Error| BatchError::Records {
        table: t.name.clone(),
        message: e.to_string(),
    };
    // The field names come from the records themselves; their types from the source,
    // so that e.g. an `i64` of epoch milliseconds fills a TIMESTAMP column.
    let traced =
        Vec::<FieldRef>::from_samples(records, TracingOptions::default().allow_null_fields(true))
            .map_err(failed)?;
    let mut fields = Vec::new();
    for f in &traced {
        match t.schema.field_with_name(f.name()) {
            Ok(want) => fields.push(Arc::new(want.clone().with_nullable(true))),
            Err(_) => {
                return Err(BatchError::UnknownColumn {
                    table: t.name.clone(),
                    column: f.name().clone(),
                    expected: t.schema.fields().iter().map(|f| f.name().clone()).collect(),
                })
            }
        }
    }
    let batch = serde_arrow::to_record_batch(&fields, &records).map_err(failed)?;
    conform(t, &batch)
}

/// The rows of a conformed batch that JSON decoding would have refused, with the
/// reason and the same words: a null where the source needs a value
/// (`missing_field`), a `NaN` or infinite `DOUBLE` (`non_finite`). The first bad
/// column, in the source's order, decides.
pub(crate) fn bad_rows(
    schema: &SchemaRef,
    batch: &RecordBatch,
) -> Vec<(usize, forewarn_core::Reason, String)> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Float64Type;
    use forewarn_formats::DecodeError;
    let mut bad: Vec<Option<(forewarn_core::Reason, String)>> = vec![None; batch.num_rows()];
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        let required = !f.is_nullable() && c.null_count() > 0;
        let floats = (*f.data_type() == DataType::Float64).then(|| c.as_primitive::<Float64Type>());
        if !required && floats.is_none() {
            continue;
        }
        for (row, slot) in bad.iter_mut().enumerate().filter(|(_, s)| s.is_none()) {
            let e = if c.is_null(row) {
                if !required {
                    continue;
                }
                DecodeError::Missing(f.name().clone())
            } else if floats.is_some_and(|v| !v.value(row).is_finite()) {
                DecodeError::NonFinite(f.name().clone())
            } else {
                continue;
            };
            *slot = Some((e.reason(), e.to_string()));
        }
    }
    bad.into_iter()
        .enumerate()
        .filter_map(|(row, b)| b.map(|(r, d)| (row, r, d)))
        .collect()
}

/// `Field` of `schema` named `name`, for tests.
#[cfg(test)]
fn field(schema: &SchemaRef, name: &str) -> datafusion::arrow::datatypes::Field {
    schema.field_with_name(name).unwrap().clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        Float32Array, Float64Array, Int32Array, Int64Array, LargeStringArray, StringArray,
        TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
        TimestampSecondArray,
    };
    use datafusion::arrow::datatypes::Field;
    use forewarn_core::Reason;

    fn target() -> Target {
        let schema = Arc::new(Schema::new(vec![
            Field::new("device", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("v", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
        ]));
        Target {
            name: "r".into(),
            schema,
            arrival: None,
        }
    }

    fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(cols).unwrap()
    }

    #[test]
    fn columns_in_any_order_missing_nullable_filled_and_types_cast() {
        let t = target();
        let b = batch(vec![
            ("v", Arc::new(Float32Array::from(vec![1.5, 2.25]))),
            (
                "ts",
                Arc::new(
                    TimestampNanosecondArray::from(vec![1_000_999_999, 2_000_000_000])
                        .with_timezone("UTC"),
                ),
            ),
            ("device", Arc::new(LargeStringArray::from(vec!["a", "b"]))),
        ]);
        let c = conform(&t, &b).unwrap();
        assert_eq!(c.num_columns(), 4);
        let names: Vec<String> = c
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["device", "ts", "v", "n"]);
        use datafusion::arrow::array::AsArray;
        assert_eq!(c.column(0).as_string::<i32>().value(1), "b");
        let ts = c
            .column(1)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(ts.values().to_vec(), vec![1_000, 2_000]);
        assert_eq!(
            *c.column(1).data_type(),
            *field(&t.schema, "ts").data_type()
        );
        let v = c.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(v.values().to_vec(), vec![1.5, 2.25]);
        assert_eq!(c.column(3).null_count(), 2);
        assert_eq!(*c.column(3).data_type(), DataType::Int64);
    }

    #[test]
    fn every_timestamp_unit_gives_the_same_instant() {
        let t = target();
        let at = 1_700_000_000_000i64;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(TimestampSecondArray::from(vec![at / 1000])),
            Arc::new(TimestampMillisecondArray::from(vec![at]).with_timezone("+00:00")),
            Arc::new(TimestampMicrosecondArray::from(vec![at * 1000]).with_timezone("Etc/UTC")),
            Arc::new(TimestampNanosecondArray::from(vec![at * 1_000_000])),
        ];
        for ts in cols {
            let b = batch(vec![
                ("device", Arc::new(StringArray::from(vec!["a"]))),
                ("ts", ts),
            ]);
            let c = conform(&t, &b).unwrap();
            let ts = c
                .column(1)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .unwrap();
            assert_eq!(ts.value(0), at);
            assert_eq!(ts.timezone(), None);
        }
    }

    #[test]
    fn unsafe_batches_are_errors_naming_the_column() {
        let t = target();
        let dev = || -> ArrayRef { Arc::new(StringArray::from(vec!["a"])) };
        let ts = || -> ArrayRef { Arc::new(TimestampMillisecondArray::from(vec![1])) };
        let e = conform(
            &t,
            &batch(vec![
                ("device", dev()),
                ("ts", ts()),
                ("vv", Arc::new(Float64Array::from(vec![1.0]))),
            ]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            BatchError::UnknownColumn {
                table: "r".into(),
                column: "vv".into(),
                expected: vec!["device".into(), "ts".into(), "v".into(), "n".into()]
            }
        );
        assert_eq!(
            e.to_string(),
            "source 'r' has no column 'vv' (its columns: device, ts, v, n)"
        );
        let e = conform(&t, &batch(vec![("device", dev())])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "source 'r': required column 'ts' (Timestamp(ms)) is missing"
        );
        let e = conform(
            &t,
            &batch(vec![
                ("device", dev()),
                ("ts", ts()),
                ("v", Arc::new(Int64Array::from(vec![1]))),
            ]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            BatchError::WrongType {
                table: "r".into(),
                column: "v".into(),
                expected: DataType::Float64,
                got: DataType::Int64
            }
        );
        let berlin: ArrayRef =
            Arc::new(TimestampMillisecondArray::from(vec![1]).with_timezone("Europe/Berlin"));
        assert!(matches!(
            conform(&t, &batch(vec![("device", dev()), ("ts", berlin)])),
            Err(BatchError::WrongType { column, .. }) if column == "ts"
        ));
        let e = conform(
            &t,
            &batch(vec![("device", dev()), ("ts", ts()), ("device", dev())]),
        );
        assert!(matches!(e, Err(BatchError::DuplicateColumn { column, .. }) if column == "device"));
        // Int32 is exact as BIGINT and as DOUBLE.
        let c = conform(
            &t,
            &batch(vec![
                ("device", dev()),
                ("ts", ts()),
                ("n", Arc::new(Int32Array::from(vec![7]))),
                ("v", Arc::new(Int32Array::from(vec![-3]))),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.column(2)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .value(0),
            -3.0
        );
        assert_eq!(
            c.column(3)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0),
            7
        );
    }

    #[test]
    fn bad_rows_get_the_json_reasons() {
        let t = target();
        let b = batch(vec![
            (
                "device",
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    None,
                    Some("c"),
                    Some("d"),
                ])),
            ),
            (
                "ts",
                Arc::new(TimestampMillisecondArray::from(vec![
                    Some(1),
                    Some(2),
                    None,
                    Some(4),
                ])),
            ),
            (
                "v",
                Arc::new(Float64Array::from(vec![
                    Some(1.0),
                    Some(f64::NAN),
                    None,
                    Some(f64::INFINITY),
                ])),
            ),
        ]);
        let c = conform(&t, &b).unwrap();
        assert_eq!(
            bad_rows(&t.schema, &c),
            vec![
                (
                    1,
                    Reason::MissingField,
                    "missing required field 'device'".into()
                ),
                (
                    2,
                    Reason::MissingField,
                    "missing required field 'ts'".into()
                ),
                (
                    3,
                    Reason::NonFinite,
                    "field 'v' is not a finite number".into()
                ),
            ]
        );
    }

    #[derive(Serialize)]
    struct Reading {
        device: String,
        ts: i64,
        v: Option<f32>,
    }

    #[test]
    fn records_serialise_into_the_sources_types() {
        let t = target();
        let rs = vec![
            Reading {
                device: "a".into(),
                ts: 1_000,
                v: Some(0.5),
            },
            Reading {
                device: "b".into(),
                ts: 2_000,
                v: None,
            },
        ];
        let c = from_records(&t, &rs).unwrap();
        assert_eq!(c.num_rows(), 2);
        let ts = c
            .column(1)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(ts.values().to_vec(), vec![1_000, 2_000]);
        let v = c.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!((v.value(0), v.is_null(1)), (0.5, true));
        assert_eq!(c.column(3).null_count(), 2);
        #[derive(Serialize)]
        struct Typo {
            device: String,
            ts: i64,
            vibraton: f64,
        }
        let e = from_records(
            &t,
            &[Typo {
                device: "a".into(),
                ts: 1,
                vibraton: 1.0,
            }],
        )
        .unwrap_err();
        assert!(matches!(e, BatchError::UnknownColumn { column, .. } if column == "vibraton"));
    }
}
