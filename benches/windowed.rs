//! Windowed aggregation: Forewarn's streaming runtime against the same query run as one
//! batch DataFusion query over the same rows, in the same process and run.
//!
//! `cargo bench --bench windowed [-- DEVICES ROWS [tumble|hop|session] [stream-only]]`
//! (defaults: 10,000 devices, 2,000,000 rows, tumble; `stream-only` skips the batch side,
//! for profiling the streaming side alone). Both sides use one target partition; the streaming
//! side is fed 10,000-row batches in event-time order, as the micro-batcher would, and
//! closes every window; the batch side gets all rows in memory up front. Prints
//! readings/s for each and the ratio.
//!
//! Batch formulations: tumbling windows with `date_bin`; hopping windows (slide 10 s,
//! width 30 s) by joining each row to its three window starts; sessions (gap 10 s; every
//! device pauses 15 s each minute) with `lag` and a running sum over each device's rows.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{AsArray, Float64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use forewarn::{ModelRegistry, QuerySet};
use forewarn_stream::WindowOperator;

fn streaming_sql(window: &str) -> String {
    format!("
CREATE TABLE src (device TEXT, ts TIMESTAMP, v DOUBLE, t DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH (connector = 'mqtt', topic = 'b/+', topic_template = 'b/{{device}}');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{{device}}');
INSERT INTO out SELECT device, window_start, count(*) AS n, avg(v) AS avg_v, max(t) AS max_t, min(v) AS min_v
FROM src GROUP BY {window}, device;")
}

fn batch_sql(mode: &str) -> &'static str {
    match mode {
        "tumble" => "SELECT device, date_bin(interval '10 seconds', ts) AS window_start, count(*) AS n, avg(v) AS avg_v, max(t) AS max_t, min(v) AS min_v
FROM src GROUP BY device, date_bin(interval '10 seconds', ts)",
        "hop" => "SELECT device, CAST(date_bin(interval '10 seconds', ts) AS BIGINT) - k.k * 10000 AS window_start, count(*) AS n, avg(v) AS avg_v, max(t) AS max_t, min(v) AS min_v
FROM src CROSS JOIN (VALUES (0), (1), (2)) AS k(k) GROUP BY 1, 2",
        "session" => "WITH marked AS (
  SELECT device, ts, v, t,
         CASE WHEN ts - lag(ts) OVER (PARTITION BY device ORDER BY ts) < interval '10 seconds' THEN 0 ELSE 1 END AS new_session
  FROM src),
numbered AS (
  SELECT device, ts, v, t, sum(new_session) OVER (PARTITION BY device ORDER BY ts ROWS UNBOUNDED PRECEDING) AS session
  FROM marked)
SELECT device, session, min(ts) AS window_start, count(*) AS n, avg(v) AS avg_v, max(t) AS max_t, min(v) AS min_v
FROM numbered GROUP BY device, session",
        other => panic!("unknown mode {other}: tumble, hop or session"),
    }
}

fn data(
    devices: usize,
    rows: usize,
    pauses: bool,
    schema: &datafusion::arrow::datatypes::SchemaRef,
) -> Vec<RecordBatch> {
    // Each device reports once per second; rows are in event-time order. With pauses,
    // every device is silent for the last 15 s of each minute (sessions end).
    let names: Vec<String> = (0..devices).map(|d| format!("dev-{d:05}")).collect();
    let mut out = Vec::new();
    let mut i = 0usize;
    let mut k = 0usize;
    while i < rows {
        let n = 10_000.min(rows - i);
        let mut idx: Vec<usize> = Vec::with_capacity(n);
        while idx.len() < n {
            if !(pauses && (k / devices) % 60 >= 45) {
                idx.push(k);
            }
            k += 1;
        }
        out.push(
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        idx.iter().map(|k| names[k % devices].as_str()),
                    )),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        idx.iter()
                            .map(|k| 1_700_000_000_000 + (k / devices) as i64 * 1000),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        idx.iter().map(|k| (k % 97) as f64 * 0.01),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        idx.iter().map(|k| 40.0 + (k % 13) as f64),
                    )),
                ],
            )
            .unwrap(),
        );
        i += n;
    }
    out
}

/// The sum of the `n` (count) column over `batches`.
fn counted(batches: &[RecordBatch]) -> i64 {
    batches
        .iter()
        .map(|b| {
            let n = b.column(b.schema().index_of("n").unwrap());
            datafusion::arrow::compute::sum(n.as_primitive::<Int64Type>()).unwrap_or(0)
        })
        .sum()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // As the `forewarn` command does; both sides run with it.
    forewarn::keep_freed_memory();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let devices = args.first().copied().unwrap_or(10_000);
    let rows = args.get(1).copied().unwrap_or(2_000_000);
    let mode = std::env::args()
        .skip(1)
        .find(|a| ["tumble", "hop", "session"].contains(&a.as_str()))
        .unwrap_or_else(|| "tumble".into());
    let stream_only = std::env::args().any(|a| a == "stream-only");
    let window = match mode.as_str() {
        "tumble" => "tumble(interval '10 seconds')",
        "hop" => "hop(interval '10 seconds', interval '30 seconds')",
        _ => "session(interval '10 seconds')",
    };
    let sql = streaming_sql(window);
    let mut set = QuerySet::default();
    set.add_file("bench.sql", &sql).unwrap();
    let ctx = forewarn_sql::streaming_context(Arc::new(ModelRegistry::new()));
    let q = Arc::new(
        forewarn_sql::compile(&ctx, &set.queries[0], &set.sources["src"], &sql)
            .await
            .unwrap(),
    );
    let schema = set.sources["src"].schema.clone();
    let batches = data(devices, rows, mode == "session", &schema);

    let batch_ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    batch_ctx
        .register_table(
            "src",
            Arc::new(MemTable::try_new(schema.clone(), vec![batches.clone()]).unwrap()),
        )
        .unwrap();

    let (mut best_stream, mut best_batch) = (f64::MAX, f64::MAX);
    for round in 0..3 {
        let t = Instant::now();
        let mut op = WindowOperator::new(q.clone());
        let (mut out_rows, mut out_n) = (0, 0);
        let mut peak_state = 0usize;
        for b in &batches {
            peak_state = peak_state.max(op.state_bytes());
            let results = op.process(b).await.unwrap().results;
            let batches: Vec<RecordBatch> = results.into_iter().map(|r| r.batch).collect();
            out_rows += batches.iter().map(|b| b.num_rows()).sum::<usize>();
            out_n += counted(&batches);
        }
        let results = op.finish().await.unwrap().results;
        let batches: Vec<RecordBatch> = results.into_iter().map(|r| r.batch).collect();
        out_rows += batches.iter().map(|b| b.num_rows()).sum::<usize>();
        out_n += counted(&batches);
        let stream_s = t.elapsed().as_secs_f64();
        // Rows come in time order, none late: each is counted once per window holding it.
        let per_row = if mode == "hop" { 3 } else { 1 };
        assert_eq!(
            out_n,
            (rows * per_row) as i64,
            "every reading counted once per window"
        );

        if stream_only {
            println!("round {round}: streaming {stream_s:.3} s, {out_rows} window rows");
            best_stream = best_stream.min(stream_s);
            continue;
        }
        let t = Instant::now();
        let res = batch_ctx
            .sql(batch_sql(&mode))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let batch_rows: usize = res.iter().map(|b| b.num_rows()).sum();
        let batch_s = t.elapsed().as_secs_f64();
        assert_eq!(
            out_rows, batch_rows,
            "both sides must produce the same windows"
        );
        // And count every reading as often: no row lost or aggregated twice.
        assert_eq!(
            out_n,
            counted(&res),
            "both sides must count the same readings"
        );
        println!("round {round}: streaming {stream_s:.3} s, batch {batch_s:.3} s, {out_rows} window rows, peak partial-aggregate state {peak_state} bytes");
        best_stream = best_stream.min(stream_s);
        best_batch = best_batch.min(batch_s);
    }
    if stream_only {
        let rs = rows as f64 / best_stream;
        println!("devices {devices}, rows {rows}, {window}");
        println!("streaming: {:.2} M readings/s", rs / 1e6);
        return;
    }
    let (rs, rb) = (rows as f64 / best_stream, rows as f64 / best_batch);
    println!("devices {devices}, rows {rows}, {window}");
    println!("streaming: {:.2} M readings/s   batch DataFusion: {:.2} M readings/s   ratio streaming/batch: {:.2}", rs / 1e6, rb / 1e6, rs / rb);
}
