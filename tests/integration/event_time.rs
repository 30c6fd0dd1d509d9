//! Event time beyond the basics: per-device watermarks, the late-data topic, idle
//! sources, processing time, and joins with a file table.

use std::time::Duration;

use forewarn::{Output, Pipeline, Reason, Timestamp};
use serde_json::json;

const BASE: i64 = 1_700_000_000_000;

fn source(options: &str) -> String {
    format!(
        "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
           WITH (connector = 'mqtt', topic = 'w/+', topic_template = 'w/{{device}}'{options});
         CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{{device}}');"
    )
}

const COUNT_QUERY: &str = "INSERT INTO out SELECT device, window_start, window_end, count(*) AS n
     FROM r GROUP BY tumble(interval '10 seconds'), device;";

async fn drain(mut rx: tokio::sync::mpsc::Receiver<Output>) -> Vec<Output> {
    let mut v = Vec::new();
    while let Some(o) = rx.recv().await {
        v.push(o);
    }
    v
}

/// Five devices report every second for a minute; `fast` reports with a clock ten
/// minutes ahead, interleaved with them.
async fn fleet_with_a_fast_clock(options: &str) -> (forewarn::EngineStats, Vec<Output>) {
    let p = Pipeline::builder()
        .query_sql("pd.sql", &(source(options) + COUNT_QUERY))
        .build()
        .await
        .unwrap();
    let (h, rx) = p.start();
    for s in 0..60i64 {
        for d in 0..5 {
            let payload = json!({"ts": BASE + s * 1000, "v": 1.0});
            h.push_json(&format!("w/d{d}"), payload.to_string().into_bytes())
                .await
                .unwrap();
        }
        let payload = json!({"ts": BASE + 600_000 + s * 1000, "v": 1.0});
        h.push_json("w/fast", payload.to_string().into_bytes())
            .await
            .unwrap();
        h.flush().await.unwrap();
    }
    let stats = h.finish().await.unwrap();
    drop(h);
    (stats, drain(rx).await)
}

fn windows_of(outs: &[Output], device: &str) -> Vec<(Timestamp, i64)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Row { row, .. } if row.device == device => {
                Some((row.window_start, row.columns["n"].as_i64().unwrap()))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_device_ten_minutes_ahead_does_not_make_the_fleet_late() {
    // One watermark per source: the fast clock drags it ten minutes ahead and every
    // other device's readings after the first one are late, each published with its reason.
    let (stats, outs) = fleet_with_a_fast_clock(", late_topic = 'plant/late/{device}'").await;
    let late = stats.rejected.get("late").copied().unwrap_or(0);
    assert_eq!(late, 5 * 59, "{stats:?}");
    let late_msgs: Vec<_> = outs
        .iter()
        .filter_map(|o| match o {
            Output::DeadLetter { topic, letter } if letter.reason == Reason::Late => Some(topic),
            _ => None,
        })
        .collect();
    assert_eq!(late_msgs.len() as u64, late, "every late row is published");
    assert!(late_msgs.iter().all(|t| t.starts_with("plant/late/d")));
    assert_eq!(late_msgs[0], "plant/late/d0");

    // Per-device watermarks: nobody is late, every device gets all six windows.
    let (stats, outs) = fleet_with_a_fast_clock(", watermark_key = 'device'").await;
    assert!(stats.rejected.is_empty(), "{stats:?}");
    for d in ["d0", "d4", "fast"] {
        let w = windows_of(&outs, d);
        assert_eq!(w.len(), 6, "{d}: {w:?}");
        assert!(w.iter().all(|(_, n)| *n == 10), "{d}: {w:?}");
    }
}

#[tokio::test]
async fn per_device_watermarks_close_windows_while_readings_arrive() {
    // Results come out as the slowest in-skew device passes a window, not only at the end.
    let p = Pipeline::builder()
        .query_sql(
            "pd.sql",
            &(source(", watermark_key = 'device', max_skew = '1 minute'") + COUNT_QUERY),
        )
        .build()
        .await
        .unwrap();
    let (h, mut rx) = p.start();
    for s in 0..25i64 {
        for d in ["a", "b"] {
            let payload = json!({"ts": BASE + s * 1000, "v": 1.0});
            h.push_json(&format!("w/{d}"), payload.to_string().into_bytes())
                .await
                .unwrap();
        }
        h.flush().await.unwrap();
    }
    // Watermark = 24 s - 2 s: the windows ending at 10 s and 20 s are out for both.
    let mut early = Vec::new();
    while let Ok(o) = rx.try_recv() {
        early.push(o);
    }
    assert_eq!(windows_of(&early, "a").len(), 2, "{early:?}");
    assert_eq!(windows_of(&early, "b").len(), 2);
    h.finish().await.unwrap();
}

#[tokio::test]
async fn an_idle_source_closes_its_last_window_after_the_timeout() {
    async fn emitted_within(options: &str, wait: Duration) -> usize {
        let p = Pipeline::builder()
            .query_sql("idle.sql", &(source(options) + COUNT_QUERY))
            .build()
            .await
            .unwrap();
        let (h, mut rx) = p.start();
        for s in 0..10i64 {
            let payload = json!({"ts": BASE + s * 1000, "v": 1.0});
            h.push_json("w/a", payload.to_string().into_bytes())
                .await
                .unwrap();
        }
        h.flush().await.unwrap();
        let got = tokio::time::timeout(wait, rx.recv()).await;
        match got {
            Ok(Some(Output::Row { row, .. })) => {
                assert_eq!(row.columns["n"], 10);
                1
            }
            Ok(other) => panic!("{other:?}"),
            Err(_) => 0,
        }
    }
    // The window [0, 10 s) needs the watermark at 10 s; the last reading is at 9 s with
    // a 2 s delay, so without more input it never closes...
    assert_eq!(emitted_within("", Duration::from_millis(2_500)).await, 0);
    // ...unless the source is allowed to go idle: after 1 s of silence the watermark
    // moves with the clock and the window closes about 3 s after the last reading.
    assert_eq!(
        emitted_within(", idle_timeout = '1 second'", Duration::from_secs(20)).await,
        1
    );
}

#[tokio::test]
async fn a_source_without_event_time_is_timed_by_arrival() {
    let sql = "CREATE TABLE r (device TEXT, v DOUBLE)
           WITH (connector = 'mqtt', topic = 'w/+', topic_template = 'w/{device}');
         CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
         INSERT INTO out SELECT device, window_start, window_end, count(*) AS n,
                max(arrival_time) - min(arrival_time) AS spread
         FROM r GROUP BY tumble(interval '1 second'), device;";
    let p = Pipeline::builder()
        .query_sql("pt.sql", sql)
        .build()
        .await
        .unwrap();
    let (h, mut rx) = p.start();
    let before = forewarn_core::duration_ms(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap(),
    );
    for _ in 0..3 {
        h.push_json("w/a", br#"{"v": 1.0}"#.to_vec()).await.unwrap();
    }
    h.flush().await.unwrap();
    // No finish: the wall clock alone closes the window.
    let o = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the window closes by the wall clock")
        .unwrap();
    let Output::Row { row, .. } = o else {
        panic!("{o:?}")
    };
    assert_eq!(row.columns["n"], 3);
    let start = row.window_start.as_millis();
    assert!(
        start >= before - 1_000 && start <= before + 1_000,
        "{row:?}"
    );
    h.finish().await.unwrap();
}

#[tokio::test]
async fn reference_tables_join_the_stream() {
    let dir = std::env::temp_dir().join(format!("forewarn-ref-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("assets.csv"),
        "device,kind,rated_v\npump-1,pump,2.0\nfan-1,fan,10.0\n",
    )
    .unwrap();
    let sql = format!(
        "{}
         CREATE TABLE assets (device TEXT, kind TEXT, rated_v DOUBLE)
           WITH (connector = 'file', path = 'assets.csv', format = 'csv');
         INSERT INTO out
         SELECT r.device, a.kind, window_start, window_end, avg(r.v) AS v, max(a.rated_v) AS rated,
                CASE WHEN avg(r.v) > max(a.rated_v) THEN 'over' ELSE 'ok' END AS status
         FROM r JOIN assets a ON r.device = a.device
         GROUP BY tumble(interval '10 seconds'), r.device, a.kind;",
        source("")
    );
    let file = dir.join("q.sql");
    std::fs::write(&file, &sql).unwrap();
    let p = Pipeline::builder().query_file(&file).build().await.unwrap();
    // The file table is the join's build side: panes stream the readings through it
    // instead of collecting them.
    let plan = &p.explain()[0];
    let partial = &plan[..plan.find("when a window closes").unwrap()];
    assert!(
        partial.find("DataSourceExec").unwrap() < partial.find("StreamingTableExec").unwrap(),
        "{plan}"
    );
    let (h, rx) = p.start();
    for (d, v) in [("pump-1", 3.0), ("fan-1", 3.0), ("unknown-1", 3.0)] {
        for s in 0..5 {
            let payload = json!({"ts": BASE + s * 1000, "v": v});
            h.push_json(&format!("w/{d}"), payload.to_string().into_bytes())
                .await
                .unwrap();
        }
    }
    h.finish().await.unwrap();
    drop(h);
    let mut got: Vec<(String, String, String)> = drain(rx)
        .await
        .into_iter()
        .filter_map(|o| match o {
            Output::Row { row, .. } => Some((
                row.device,
                row.columns["kind"].as_str().unwrap().to_string(),
                row.columns["status"].as_str().unwrap().to_string(),
            )),
            _ => None,
        })
        .collect();
    got.sort();
    let want = |d: &str, k: &str, s: &str| (d.to_string(), k.to_string(), s.to_string());
    assert_eq!(
        got,
        vec![want("fan-1", "fan", "ok"), want("pump-1", "pump", "over")]
    );

    // The sandbox: only files beside the query file.
    for bad in ["../assets.csv", "/etc/passwd"] {
        let f = dir.join("bad.sql");
        std::fs::write(&f, sql.replace("'assets.csv'", &format!("'{bad}'"))).unwrap();
        let e = Pipeline::builder()
            .query_file(&f)
            .build()
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("must be relative to the query file's directory"),
            "{e}"
        );
    }
    // A broken CSV names the table, the declaration and the problem.
    std::fs::write(
        dir.join("assets.csv"),
        "device,kind,rated_v\npump-1,pump,high\n",
    )
    .unwrap();
    let e = Pipeline::builder()
        .query_file(&file)
        .build()
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("file table 'assets'"), "{msg}");
    assert!(msg.contains("assets.csv"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}
