//! Helpers for the unit tests: operators for queries compiled from SQL over a source
//! `r (device TEXT, ts TIMESTAMP, v DOUBLE)` with a 2 s watermark delay, its batches,
//! and the results read back as plain values.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, AsArray, Float64Array, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use forewarn_core::Millis;
use forewarn_sql::{time_type, CompiledQuery, QuerySet};

use crate::{WindowOperator, WindowResult};

/// A compiled query and its source's schema.
pub(crate) struct Fixture {
    pub(crate) q: Arc<CompiledQuery>,
    pub(crate) schema: SchemaRef,
}

/// The first query of `sql` (declaring source `r`), compiled, with the source's schema.
pub(crate) async fn compiled(sql: &str) -> Fixture {
    let mut set = QuerySet::default();
    set.add_file("t.sql", sql).unwrap();
    let ctx = forewarn_sql::streaming_context(Arc::new(forewarn_scorer::ModelRegistry::new()));
    let q = forewarn_sql::compile(&ctx, &set.queries[0], &set.sources["r"], sql)
        .await
        .unwrap();
    Fixture {
        q: Arc::new(q),
        schema: set.sources["r"].schema.clone(),
    }
}

/// `SELECT device, window_start, window_end, count(*) AS n, sum(v) AS s FROM r
/// {filter} GROUP BY {window}, device`, with `options` added to the source's.
pub(crate) async fn fixture(window: &str, filter: &str, options: &str) -> Fixture {
    let sql = format!(
        "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
           WITH (connector = 'mqtt', topic = 'w/+', topic_template = 'w/{{device}}'{options});
         CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{{device}}');
         INSERT INTO out SELECT device, window_start, window_end, count(*) AS n, sum(v) AS s
         FROM r {filter} GROUP BY {window}, device;"
    );
    compiled(&sql).await
}

impl Fixture {
    pub(crate) fn operator(&self) -> WindowOperator {
        WindowOperator::new(self.q.clone())
    }

    /// A source batch of `(device, event time, v)` rows.
    pub(crate) fn batch(&self, rows: &[(&str, Option<Millis>, f64)]) -> RecordBatch {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(TimestampMillisecondArray::from_iter(
                rows.iter().map(|r| r.1),
            )),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
        ];
        // Nullable, so that a row may lack its event time.
        let schema = Schema::new(
            self.schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        );
        RecordBatch::try_new(Arc::new(schema), cols).unwrap()
    }

    /// A batch of rows that all have an event time.
    pub(crate) fn rows(&self, rows: &[(&str, Millis, f64)]) -> RecordBatch {
        let rows: Vec<_> = rows.iter().map(|&(d, t, v)| (d, Some(t), v)).collect();
        self.batch(&rows)
    }
}

/// One output row: (window_start, window_end, device, n, s).
pub(crate) type Row = (Millis, Millis, String, i64, f64);

/// The output rows of `results`, sorted.
pub(crate) fn output(results: &[WindowResult]) -> Vec<Row> {
    let mut out = Vec::new();
    for r in results {
        let b = &r.batch;
        let col = |name: &str| b.column(b.schema().index_of(name).unwrap()).clone();
        let ws = cast(&col("window_start"), &time_type()).unwrap();
        let we = cast(&col("window_end"), &time_type()).unwrap();
        let d = cast(&col("device"), &DataType::Utf8).unwrap();
        let n = cast(&col("n"), &DataType::Int64).unwrap();
        let s = cast(&col("s"), &DataType::Float64).unwrap();
        for i in 0..b.num_rows() {
            out.push((
                ws.as_primitive::<TimestampMillisecondType>().value(i),
                we.as_primitive::<TimestampMillisecondType>().value(i),
                d.as_string::<i32>().value(i).to_string(),
                n.as_primitive::<Int64Type>().value(i),
                s.as_primitive::<Float64Type>().value(i),
            ));
        }
    }
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

/// An expected output row.
pub(crate) fn row(ws: Millis, we: Millis, d: &str, n: i64, s: f64) -> Row {
    (ws, we, d.to_string(), n, s)
}
