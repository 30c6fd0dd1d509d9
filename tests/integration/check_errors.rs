//! `forewarn check`'s messages: a table of wrong query files and the exact error each
//! produces, with its line and column.

use forewarn::Pipeline;

const GOOD: &str = "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
  WITH (connector = 'mqtt', topic = 'w/+', topic_template = 'w/{device}');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
INSERT INTO out SELECT device, window_start, avg(v) AS v
FROM r GROUP BY tumble(interval '10 seconds'), device;
";

/// (what to replace in GOOD, replacement, expected "line:column: message").
const CASES: &[(&str, &str, &str)] = &[
    ("avg(v) AS v", "avg(vv) AS v", "5:50: unknown column 'vv' in source 'r'; did you mean 'v'?"),
    ("tumble(interval '10 seconds')", "tumble(interval '10 parsecs')", "6:33: cannot read interval '10 parsecs': expected e.g. '10 seconds', '500 ms', '5 minutes'"),
    ("tumble(interval '10 seconds')", "hop(interval '4 seconds', interval '10 seconds')", "6:52: hop width (10000 ms) must be a multiple of its slide (4000 ms)"),
    ("tumble(interval '10 seconds')", "sliding(interval '10 seconds')", "5:17: a streaming query needs a window: GROUP BY tumble(interval '10 seconds'), <keys>"),
    ("tumble(interval '10 seconds'), device", "session(interval '0 seconds'), device", "6:34: window gap must be positive, got 0 ms"),
    ("GROUP BY tumble(interval '10 seconds'), device", "GROUP BY tumble(interval '10 seconds'), tumble(interval '1 minute'), device", "6:48: only one window function is allowed in GROUP BY"),
    ("FROM r GROUP", "FROM nope GROUP", "6:6: unknown source table 'nope'"),
    ("INSERT INTO out", "INSERT INTO outt", "5:1: unknown sink table 'outt' (declare it first with CREATE TABLE ... WITH (connector = 'mqtt', topic = '...'))"),
    ("connector = 'mqtt', topic = 'w/+'", "connector = 'kafka', topic = 'w/+'", "3:9: unknown connector 'kafka' (supported: 'mqtt', 'nats', 'file')"),
    ("connector = 'mqtt', topic = 'w/+'", "connector = 'nats', topic = 'w/+'", "3:9: nats source 'r' needs stream = '<JetStream stream>'"),
    ("connector = 'mqtt', topic = 'w/+'", "connector = 'nats', stream = 'S', topic = 'w/+'", "3:9: nats source 'r' needs partitions = '<N>', the N of the server's subject mapping"),
    ("connector = 'mqtt', topic = 'w/+'", "connector = 'nats', stream = 'S', partitions = '0', topic = 'w/+'", "3:43: partitions = '0' must be a whole number from 1 to 4096"),
    ("connector = 'mqtt', topic = 'w/+'", "connector = 'mqtt', stream = 'S', topic = 'w/+'", "3:29: 'stream' is an option of connector = 'nats'"),
    ("topic_template = 'w/{device}'", "topic_template = 'w/{machine}'", "3:44: topic_template captures '{machine}', but 'r' has no column 'machine'"),
    ("WATERMARK FOR ts AS ts - INTERVAL '2' SECOND", "WATERMARK FOR ts AS ts + INTERVAL '2' SECOND", "2:3: the watermark must be 'ts' or 'ts - INTERVAL ...', got 'ts + INTERVAL '2' SECOND'"),
    ("v DOUBLE,", "v DOUBLE, w BLOB,", "1:54: column 'w' has type BLOB, which is not supported (use TEXT, DOUBLE, BIGINT, BOOLEAN or TIMESTAMP)"),
    ("topic_template = 'w/{device}'", "topic_template = 'w/{device}', watermark_key = 'dev'", "3:75: watermark_key names column 'dev', which 'r' does not declare"),
    ("topic_template = 'w/{device}'", "topic_template = 'w/{device}', max_skew = '1 minute'", "3:75: max_skew applies to per-key watermarks: add watermark_key = '<column>'"),
    ("topic_template = 'w/{device}'", "topic_template = 'w/{device}', retries = '3'", "3:75: unknown option 'retries' for an mqtt source (allowed: connector, format, topic, topic_template, max_future, watermark_key, max_skew, idle_timeout, late_topic)"),
    ("INSERT INTO out", "COPY r TO '/tmp/x.csv';\nINSERT INTO out", "5:6: 'COPY r' is not allowed in a query file: only CREATE TABLE (sources and sinks) and INSERT INTO sink SELECT ... are"),
    ("INSERT INTO out", "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc/passwd';\nINSERT INTO out", "5:23: 'CREATE EXTERNAL TABLE' is not allowed in a query file: declare tables WITH (connector = 'mqtt' | 'file', ...)"),
    ("INSERT INTO out", "CREATE TABLE y AS SELECT * FROM r;\nINSERT INTO out", "5:14: 'CREATE TABLE ... AS SELECT' is not allowed in a query file: declare tables WITH (connector = 'mqtt' | 'file', ...)"),
    ("FROM r GROUP", "FROM r JOIN r2 ON r.device = r2.device GROUP", "6:13: unknown table 'r2' (declare it with CREATE TABLE ... WITH (connector = 'file', path = '...csv'))"),
    ("tumble(interval '10 seconds'), device", "session(interval '1 minute'), upper(device)", "6:47: session windows are keyed by columns of the source 'r'; 'upper(device)' is not one"),
    ("SELECT device, window_start", "SELECT device, tumble(interval '10 seconds'), window_start", "5:32: select window bounds as window_start and window_end, not with the window function"),
];

#[tokio::test]
async fn each_wrong_query_gets_its_exact_message() {
    // The base file is fine.
    Pipeline::builder()
        .query_sql("q.sql", GOOD)
        .build()
        .await
        .unwrap();
    let mut failures = Vec::new();
    for (from, to, want) in CASES {
        assert!(GOOD.contains(from), "case does not apply: {from}");
        let text = GOOD.replacen(from, to, 1);
        let got = match Pipeline::builder().query_sql("q.sql", &text).build().await {
            Ok(_) => "accepted".to_string(),
            Err(forewarn::EngineError::Sql(e)) => {
                format!("{}:{}: {}", e.line, e.column, e.message)
            }
            Err(e) => format!("not a located error: {e}"),
        };
        if got != *want {
            failures.push(format!("{to}\n   got: {got}\n  want: {want}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn errors_underline_the_offending_text() {
    let text = GOOD.replace("avg(v) AS v", "avg(vibraton) AS v");
    let e = Pipeline::builder()
        .query_sql("q.sql", &text)
        .build()
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "q.sql:5:50: error: unknown column 'vibraton' in source 'r'; did you mean 'v'?\n    5 | INSERT INTO out SELECT device, window_start, avg(vibraton) AS v\n      |                                                  ^^^^^^^^"
    );
}
