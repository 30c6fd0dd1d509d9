//! Differential tests: for random streams, with rows out of order within the watermark
//! delay and random micro-batch boundaries, every window the streaming runtime emits
//! equals the same aggregation computed independently — by batch DataFusion over all
//! rows bucketed with `date_bin` for tumbling windows, and directly in Rust for hopping
//! and session windows.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::MemTable;
use datafusion::prelude::SessionContext;
use forewarn::{Output, Pipeline};
use proptest::prelude::*;

const BASE: i64 = 1_700_000_000_000;
const DELAY_MS: i64 = 3_000;

/// One reading: device, event time, value (maybe missing).
type Row = (String, i64, Option<f64>);

/// Window result: (device, start, end) → (count(*), count(v), sum(v), min(v), max(v)).
type Windows = BTreeMap<(String, i64, i64), (i64, i64, f64, Option<f64>, Option<f64>)>;

fn sql(window: &str) -> String {
    format!(
        "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '{}' SECOND)
           WITH (connector = 'mqtt', topic = 'w/+', topic_template = 'w/{{device}}');
         CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{{device}}');
         INSERT INTO out SELECT device, window_start, window_end, count(*) AS n, count(v) AS nv,
                sum(v) AS s, min(v) AS lo, max(v) AS hi
         FROM r GROUP BY {window}, device;",
        DELAY_MS / 1000
    )
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("v", DataType::Float64, true),
    ]))
}

fn batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                rows.iter().map(|r| r.1),
            )),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap()
}

/// A random stream: steps forward in time, each row pulled back by less than the
/// watermark delay (so nothing is late), values sometimes missing; and the sizes of
/// the batches it arrives in.
fn stream() -> impl Strategy<Value = (Vec<Row>, Vec<usize>)> {
    let row = (
        0u8..4,
        0i64..2_500,
        0i64..DELAY_MS,
        proptest::option::weighted(0.9, -1000i32..1000),
    );
    (
        proptest::collection::vec(row, 1..160),
        proptest::collection::vec(1usize..40, 1..20),
    )
        .prop_map(|(raw, chunks)| {
            let mut base = BASE;
            let rows = raw
                .into_iter()
                .map(|(d, step, jitter, v)| {
                    base += step;
                    (format!("d{d}"), base - jitter, v.map(|v| v as f64 / 8.0))
                })
                .collect();
            (rows, chunks)
        })
}

fn add(w: &mut Windows, key: (String, i64, i64), v: Option<f64>) {
    let e = w.entry(key).or_insert((0, 0, 0.0, None, None));
    e.0 += 1;
    if let Some(v) = v {
        e.1 += 1;
        e.2 += v;
        e.3 = Some(e.3.map_or(v, |m: f64| m.min(v)));
        e.4 = Some(e.4.map_or(v, |m: f64| m.max(v)));
    }
}

/// Runs `window` over the rows in the given batches and collects every emitted window.
async fn streaming(window: &str, rows: &[Row], chunks: &[usize]) -> Windows {
    let p = Pipeline::builder()
        .query_sql("d.sql", &sql(window))
        .build()
        .await
        .unwrap();
    let (h, mut rx) = p.start();
    let mut at = 0;
    for &c in chunks.iter().cycle() {
        if at >= rows.len() {
            break;
        }
        let end = (at + c).min(rows.len());
        h.push_batch("r", batch(&rows[at..end])).await.unwrap();
        at = end;
    }
    let stats = h.finish().await.unwrap();
    assert!(stats.rejected.is_empty(), "{stats:?}");
    drop(h);
    let mut got = Windows::new();
    while let Some(o) = rx.recv().await {
        // A plain aggregate query: its rows are window rows, not alerts.
        let Output::Row { row, .. } = o else {
            panic!("unexpected {o:?}")
        };
        let f = &row.columns;
        let key = (
            row.device.clone(),
            row.window_start.as_millis(),
            row.window_end.as_millis(),
        );
        let prev = got.insert(
            key,
            (
                f["n"].as_i64().unwrap(),
                f["nv"].as_i64().unwrap(),
                f["s"].as_f64().unwrap_or(0.0),
                f["lo"].as_f64(),
                f["hi"].as_f64(),
            ),
        );
        assert!(prev.is_none(), "window emitted twice: {row:?}");
    }
    got
}

/// Tumbling windows computed as one batch query with `date_bin`.
async fn batch_tumble(rows: &[Row], width_s: i64) -> Windows {
    let ctx = SessionContext::new();
    let t = MemTable::try_new(schema(), vec![vec![batch(rows)]]).unwrap();
    ctx.register_table("r", Arc::new(t)).unwrap();
    let q = format!(
        "SELECT device, CAST(date_bin(interval '{width_s} seconds', ts, timestamp '1970-01-01T00:00:00') AS BIGINT) AS ws,
                count(*) AS n, count(v) AS nv, coalesce(sum(v), 0) AS s, min(v) AS lo, max(v) AS hi
         FROM r GROUP BY device, ws"
    );
    let batches = ctx.sql(&q).await.unwrap().collect().await.unwrap();
    let mut w = Windows::new();
    for b in batches {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::{Float64Type, Int64Type};
        let dev = b.column(0).as_string::<i32>();
        let ws = b.column(1).as_primitive::<Int64Type>();
        let n = b.column(2).as_primitive::<Int64Type>();
        let nv = b.column(3).as_primitive::<Int64Type>();
        let s = b.column(4).as_primitive::<Float64Type>();
        let lo = b.column(5).as_primitive::<Float64Type>();
        let hi = b.column(6).as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            // date_bin on a millisecond timestamp cast to BIGINT gives milliseconds.
            let start = ws.value(i);
            let opt = |a: &datafusion::arrow::array::Float64Array| {
                use datafusion::arrow::array::Array;
                a.is_valid(i).then(|| a.value(i))
            };
            w.insert(
                (dev.value(i).to_string(), start, start + width_s * 1000),
                (n.value(i), nv.value(i), s.value(i), opt(lo), opt(hi)),
            );
        }
    }
    w
}

fn direct_hop(rows: &[Row], slide: i64, width: i64) -> Windows {
    let mut w = Windows::new();
    for (d, ts, v) in rows {
        let mut start = ts.div_euclid(slide) * slide;
        while start > ts - width {
            add(&mut w, (d.clone(), start, start + width), *v);
            start -= slide;
        }
    }
    w
}

/// Sessions per device: rows sorted by time, a new session whenever the next row is
/// `gap` or more after the previous one; a session ends `gap` after its last row.
fn direct_session(rows: &[Row], gap: i64) -> Windows {
    let mut by_dev: BTreeMap<&str, Vec<(i64, Option<f64>)>> = BTreeMap::new();
    for (d, ts, v) in rows {
        by_dev.entry(d).or_default().push((*ts, *v));
    }
    let mut w = Windows::new();
    for (d, mut rs) in by_dev {
        rs.sort_by_key(|r| r.0);
        let mut session: Vec<(i64, Option<f64>)> = Vec::new();
        let mut flush = |s: &mut Vec<(i64, Option<f64>)>| {
            if let (Some(first), Some(last)) = (s.first(), s.last()) {
                let key = (d.to_string(), first.0, last.0 + gap);
                for (_, v) in s.iter() {
                    add(&mut w, key.clone(), *v);
                }
            }
            s.clear();
        };
        for r in rs {
            if session.last().is_some_and(|l| r.0 - l.0 >= gap) {
                flush(&mut session);
            }
            session.push(r);
        }
        flush(&mut session);
    }
    w
}

fn assert_same(got: &Windows, want: &Windows) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, g) in got {
        let w = &want[k];
        prop_assert_eq!((g.0, g.1, g.3, g.4), (w.0, w.1, w.3, w.4), "window {:?}", k);
        prop_assert!(
            (g.2 - w.2).abs() <= 1e-9 * w.2.abs().max(1.0),
            "sum of {:?}: {} vs {}",
            k,
            g.2,
            w.2
        );
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn tumbling_windows_equal_batch_datafusion_with_date_bin((rows, chunks) in stream()) {
        let rt = runtime();
        let got = rt.block_on(streaming("tumble(interval '10 seconds')", &rows, &chunks));
        let want = rt.block_on(batch_tumble(&rows, 10));
        assert_same(&got, &want)?;
    }

    #[test]
    fn hopping_windows_equal_a_direct_computation((rows, chunks) in stream()) {
        let got = runtime().block_on(streaming("hop(interval '2 seconds', interval '6 seconds')", &rows, &chunks));
        assert_same(&got, &direct_hop(&rows, 2_000, 6_000))?;
    }

    #[test]
    fn session_windows_equal_a_direct_computation((rows, chunks) in stream()) {
        let got = runtime().block_on(streaming("session(interval '4 seconds')", &rows, &chunks));
        assert_same(&got, &direct_session(&rows, 4_000))?;
    }
}
