//! Window results against an independent computation in plain Rust, for tumbling and
//! hopping windows, with rows arriving out of order within the watermark delay.

use std::collections::BTreeMap;

use forewarn::{Output, Pipeline};
use serde_json::Value;

const BASE: i64 = 1_700_000_000_000;

fn sql(window: &str) -> String {
    format!(
        "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '3' SECOND)
           WITH (connector = 'mqtt', topic = 'w/+', topic_template = 'w/{{device}}');
         CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{{device}}');
         INSERT INTO out SELECT device, window_start, window_end, count(*) AS n, sum(v) AS s, max(v) AS mx
         FROM r GROUP BY {window}, device;"
    )
}

/// Deterministic pseudo-random rows: 4 devices, ~2 rows/s over 60 s, shuffled within 2 s.
fn rows() -> Vec<(String, i64, f64)> {
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::new();
    for i in 0..480 {
        let d = format!("d{}", next() % 4);
        let jitter = (next() % 2000) as i64;
        let ts = BASE + i * 125 + 2000 - jitter; // up to 2 s out of order, inside the 3 s delay
        out.push((d, ts, (next() % 1000) as f64 / 10.0));
    }
    out
}

/// Pushes [`rows`] as JSON, flushing whenever `ts % flush_mod == 0` so that micro-batches
/// are small and windows close while rows are still arriving.
async fn push_rows(h: &forewarn::PipelineHandle, flush_mod: i64) {
    for (d, ts, v) in rows() {
        let payload = serde_json::to_vec(&serde_json::json!({"ts": ts, "v": v})).unwrap();
        h.push_json(&format!("w/{d}"), payload).await.unwrap();
        if ts % flush_mod == 0 {
            h.flush().await.unwrap();
        }
    }
}

async fn run(window: &str) -> Vec<Value> {
    let p = Pipeline::builder()
        .query_sql("w.sql", &sql(window))
        .build()
        .await
        .unwrap();
    let (h, mut rx) = p.start();
    push_rows(&h, 7).await;
    let stats = h.finish().await.unwrap();
    drop(h);
    assert_eq!(
        stats.rejected.get("late"),
        None,
        "no row is late within the delay"
    );
    let mut out = vec![];
    while let Some(o) = rx.recv().await {
        // Plain aggregates: window rows, in the published (alert) format.
        if let Output::Row { row, .. } = o {
            out.push(serde_json::to_value(row).unwrap());
        }
    }
    out
}

/// (device, window start) → (count, sum, max), computed directly.
fn expected(slide: i64, width: i64) -> BTreeMap<(String, i64), (i64, f64, f64)> {
    let mut m: BTreeMap<(String, i64), (i64, f64, f64)> = BTreeMap::new();
    for (d, ts, v) in rows() {
        let last = ts.div_euclid(slide) * slide;
        let mut start = last;
        while start > ts - width {
            let e = m.entry((d.clone(), start)).or_insert((0, 0.0, f64::MIN));
            e.0 += 1;
            e.1 += v;
            e.2 = e.2.max(v);
            start -= slide;
        }
    }
    m
}

fn check(got: &[Value], slide: i64, width: i64) {
    let want = expected(slide, width);
    assert_eq!(got.len(), want.len());
    for a in got {
        let start = forewarn_core::parse_rfc3339(a["window_start"].as_str().unwrap()).unwrap();
        let end = forewarn_core::parse_rfc3339(a["window_end"].as_str().unwrap()).unwrap();
        assert_eq!(end - start, width);
        let (n, s, mx) = want[&(a["device"].as_str().unwrap().to_string(), start)];
        let f = &a["features"];
        assert_eq!(f["n"].as_i64(), Some(n), "{a}");
        assert!((f["s"].as_f64().unwrap() - s).abs() < 1e-9, "{a}");
        assert_eq!(f["mx"].as_f64(), Some(mx), "{a}");
    }
}

#[tokio::test]
async fn tumbling_windows_match_a_direct_computation() {
    let got = run("tumble(interval '10 seconds')").await;
    check(&got, 10_000, 10_000);
}

#[tokio::test]
async fn hopping_windows_match_a_direct_computation() {
    let got = run("hop(interval '5 seconds', interval '15 seconds')").await;
    check(&got, 5_000, 15_000);
}

#[tokio::test]
async fn hop_width_must_be_a_multiple_of_the_slide() {
    let e = Pipeline::builder()
        .query_sql(
            "w.sql",
            &sql("hop(interval '4 seconds', interval '10 seconds')"),
        )
        .build()
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("hop width (10000 ms) must be a multiple of its slide (4000 ms)"),
        "{e}"
    );
}

#[tokio::test]
async fn condition_monitoring_aggregates_work_across_panes() {
    // Hop windows merge several panes' partial states, so this exercises state merging.
    let sql = "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '3' SECOND)
           WITH (connector = 'mqtt', topic = 'w/+', topic_template = 'w/{device}');
         CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
         INSERT INTO out SELECT device, window_start, rms(v) AS rms, kurtosis(v) AS k, skewness(v) AS sk,
                crest_factor(v) AS cf, peak_to_peak(v) AS p2p
         FROM r GROUP BY hop(interval '5 seconds', interval '15 seconds'), device;";
    let p = Pipeline::builder()
        .query_sql("m.sql", sql)
        .build()
        .await
        .unwrap();
    let (h, mut rx) = p.start();
    push_rows(&h, 5).await;
    h.finish().await.unwrap();
    drop(h);
    let mut groups: BTreeMap<(String, i64), Vec<f64>> = BTreeMap::new();
    for (d, ts, v) in rows() {
        let mut start = ts.div_euclid(5000) * 5000;
        while start > ts - 15_000 {
            groups.entry((d.clone(), start)).or_default().push(v);
            start -= 5000;
        }
    }
    let mut n = 0;
    while let Some(o) = rx.recv().await {
        let Output::Row { row: alert, .. } = o else {
            continue;
        };
        let start = alert.window_start.as_millis();
        let xs = &groups[&(alert.device.clone(), start)];
        let k = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / k;
        let c = |p: i32| xs.iter().map(|x| (x - mean).powi(p)).sum::<f64>() / k;
        let rms = (xs.iter().map(|x| x * x).sum::<f64>() / k).sqrt();
        let (mn, mx) = xs
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
        let f = |name: &str| alert.columns[name].as_f64();
        let close =
            |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() <= 1e-9 * b.abs().max(1.0));
        assert!(close(f("rms"), rms), "{alert:?}");
        assert!(close(f("p2p"), mx - mn), "{alert:?}");
        assert!(close(f("cf"), mx.abs().max(mn.abs()) / rms), "{alert:?}");
        if xs.len() > 1 && c(2) > 0.0 {
            assert!(close(f("k"), c(4) / (c(2) * c(2))), "{alert:?}");
            assert!(close(f("sk"), c(3) / c(2).powf(1.5)), "{alert:?}");
        }
        n += 1;
    }
    assert_eq!(n, groups.len());
}

/// State grows with open panes × keys, not with rows: 100× more rows into the same
/// windows and keys leave the partial aggregates' reserved memory where it was, for
/// tumbling windows and for sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_does_not_grow_with_rows() {
    use datafusion::arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    async fn state_after(window: &str, rows_per_device: usize) -> usize {
        let sql = sql(window);
        let mut set = forewarn::QuerySet::default();
        set.add_file("s.sql", &sql).unwrap();
        let ctx = forewarn_sql::streaming_context(Arc::new(forewarn::ModelRegistry::new()));
        let q = Arc::new(
            forewarn_sql::compile(&ctx, &set.queries[0], &set.sources["r"], &sql)
                .await
                .unwrap(),
        );
        let schema = set.sources["r"].schema.clone();
        let mut op = forewarn_stream::WindowOperator::new(q);
        for chunk in 0..rows_per_device / 10 {
            let n = 100 * 10;
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        (0..n).map(|i| format!("dev-{}", i % 100)),
                    )),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        (0..n).map(|i| BASE + (chunk * 10 + i / 100) as i64),
                    )),
                    Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64))),
                ],
            )
            .unwrap();
            let out = op.process(&batch).await.unwrap();
            assert!(out.results.is_empty(), "the windows stay open");
        }
        // Let the pane's aggregate task drain its input channel.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(op.open_panes(), 1);
        if window.starts_with("session") {
            assert_eq!(op.open_sessions(), 100, "one open session per device");
        }
        // The aggregates' reservations, and what is held outside them (a small pane's
        // collected rows).
        op.state_bytes() + op.held_state_bytes()
    }
    for window in [
        "tumble(interval '1 hour')",
        "session(interval '10 minutes')",
    ] {
        let small = state_after(window, 10).await; // 1,000 rows
        let large = state_after(window, 1_000).await; // 100,000 rows
        println!(
            "{window}: partial aggregate state {small} bytes after 1,000 rows, {large} bytes after 100,000 rows"
        );
        check_state(small, large);
    }
}

fn check_state(small: usize, large: usize) {
    assert!(
        small > 0,
        "the state is measured (the memory pool's reservations and held batches)"
    );
    assert!(
        large <= small * 2,
        "state grew from {small} to {large} bytes for 100x the rows"
    );
    assert!(
        large < 100_000 * 24 / 10,
        "state {large} bytes is not a fraction of the 2.4 MB of raw values"
    );
}
