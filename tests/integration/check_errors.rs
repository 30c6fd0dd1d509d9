//! `forewarn check`'s messages: a table of wrong query files and the exact error each
//! produces, with its line and column.

use forewarn::{Pipeline, SqlErrorKind};

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
    ("connector = 'mqtt', topic = 'w/+'", "connector = 'kafka', topic = 'w/+'", "3:9: unknown connector 'kafka' (supported: 'mqtt', 'nats', 'file', 'webhook', 'channel', 'sparkplug')"),
    ("connector = 'mqtt', topic = 'w/+'", "connector = 'nats', topic = 'w/+'", "3:9: nats source 'r' needs stream = '<JetStream stream>'"),
    ("connector = 'mqtt', topic = 'w/+'", "connector = 'nats', stream = 'S', topic = 'w/+'", "3:9: nats source 'r' needs partitions = '<N>', the N of the server's subject mapping"),
    ("connector = 'mqtt', topic = 'w/+'", "connector = 'nats', stream = 'S', partitions = '0', topic = 'w/+'", "3:43: partitions = '0' must be a whole number from 1 to 4096"),
    ("connector = 'mqtt', topic = 'w/+'", "connector = 'mqtt', stream = 'S', topic = 'w/+'", "3:29: 'stream' is an option of connector = 'nats'"),
    ("connector = 'mqtt', topic = 'w/+'", "connector = 'webhook', topic = 'w/+'", "3:9: a webhook only sends: declare it as a sink (no columns)"),
    ("connector = 'mqtt', topic = 'o/{device}'", "connector = 'webhook'", "4:24: webhook sink 'out' needs url = 'http://...' or 'https://...'"),
    ("connector = 'mqtt', topic = 'o/{device}'", "connector = 'webhook', url = 'ftp://cmms/hook'", "4:47: url 'ftp://cmms/hook' must start with http:// or https://"),
    ("connector = 'mqtt', topic = 'o/{device}'", "connector = 'webhook', url = 'http://cmms/hook', retries = 'many'", "4:73: retries = 'many' must be a whole number from 0 to 1000"),
    ("connector = 'mqtt', topic = 'o/{device}'", "connector = 'webhook', url = 'http://cmms/hook', bearer_token_file = '/etc/hostname'", "4:73: bearer_token_file '/etc/hostname' must be relative to the query file's directory and stay inside it (no '..', no absolute paths)"),
    ("connector = 'mqtt', topic = 'o/{device}'", "connector = 'webhook', url = 'http://ops:pw@cmms/hook'", "4:47: url 'http://ops:pw@cmms/hook' carries credentials: a password in a URL ends up in logs; give the token with bearer_token_file or bearer_token_env"),
    ("topic = 'o/{device}'", "topic = 'o/{device}', url = 'http://cmms/hook'", "4:66: 'url' is an option of connector = 'webhook'"),
    ("connector = 'mqtt', topic = 'o/{device}'", "connector = 'nats', topic = 'o/{device}'", "4:24: sinks publish over MQTT (connector = 'mqtt'); with NATS, point the engine's broker at the NATS server's MQTT listener"),
    ("topic_template = 'w/{device}'", "topic_template = 'w/{machine}'", "3:44: topic_template captures '{machine}', but 'r' has no column 'machine'"),
    ("WATERMARK FOR ts AS ts - INTERVAL '2' SECOND", "WATERMARK FOR ts AS ts + INTERVAL '2' SECOND", "2:3: the watermark must be 'ts' or 'ts - INTERVAL ...', got 'ts + INTERVAL '2' SECOND'"),
    ("v DOUBLE,", "v DOUBLE, w BLOB,", "1:54: column 'w' has type BLOB, which is not supported (use TEXT, DOUBLE, BIGINT, BOOLEAN, TIMESTAMP or DOUBLE[])"),
    ("topic_template = 'w/{device}'", "topic_template = 'w/{device}', watermark_key = 'dev'", "3:75: watermark_key names column 'dev', which 'r' does not declare"),
    ("topic_template = 'w/{device}'", "topic_template = 'w/{device}', max_skew = '1 minute'", "3:75: max_skew applies to per-key watermarks: add watermark_key = '<column>'"),
    ("topic = 'o/{device}'", "topic = 'o/{device}', message_expiry = '500 milliseconds'", "4:66: message_expiry is whole seconds in MQTT 5: give at least '1 second'"),
    ("topic = 'o/{device}'", "topic = 'o/{device}', false_alert = '1 per device-month'", "4:66: unknown option 'false_alert' for an mqtt sink (allowed: connector, format, topic, device_column, score, warning_at, alarm_at, clear_below, raise_after, clear_after, cooldown, severity, offline_after, detector, features, warmup, horizon, false_alerts, season, message_expiry); did you mean 'false_alerts'?"),
    ("topic_template = 'w/{device}'", "topic_template = 'w/{device}', retries = '3'", "3:75: unknown option 'retries' for an mqtt source (allowed: connector, format, topic, topic_template, max_future, watermark_key, max_skew, idle_timeout, late_topic, max_samples)"),
    ("INSERT INTO out", "COPY r TO '/tmp/x.csv';\nINSERT INTO out", "5:6: 'COPY r' is not allowed in a query file: only CREATE TABLE (sources and sinks) and INSERT INTO sink SELECT ... are"),
    ("INSERT INTO out", "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc/passwd';\nINSERT INTO out", "5:23: 'CREATE EXTERNAL TABLE' is not allowed in a query file: declare tables WITH (connector = 'mqtt' | 'file', ...)"),
    ("INSERT INTO out", "CREATE TABLE y AS SELECT * FROM r;\nINSERT INTO out", "5:14: 'CREATE TABLE ... AS SELECT' is not allowed in a query file: declare tables WITH (connector = 'mqtt' | 'file', ...)"),
    ("FROM r GROUP", "FROM r JOIN r2 ON r.device = r2.device GROUP", "6:13: unknown table 'r2' (declare it with CREATE TABLE ... WITH (connector = 'file', path = '...csv'))"),
    ("tumble(interval '10 seconds'), device", "session(interval '1 minute'), upper(device)", "6:47: session windows are keyed by columns of the source 'r'; 'upper(device)' is not one"),
    ("SELECT device, window_start", "SELECT device, tumble(interval '10 seconds'), window_start", "5:32: select window bounds as window_start and window_end, not with the window function"),
    // Sparkplug sources.
    ("connector = 'mqtt', topic = 'w/+', topic_template = 'w/{device}'", "connector = 'sparkplug', group = 'Plant1', metric_map = 'Motor/Bearing Temp=v'", "accepted"),
    ("connector = 'mqtt', topic = 'w/+', topic_template = 'w/{device}'", "connector = 'sparkplug', topic = 'w/+'", "3:34: 'topic' does not apply to a sparkplug source: a sparkplug source subscribes to spBv1.0/{group}/# itself: name the group with group = '...'"),
    ("connector = 'mqtt', topic = 'w/+', topic_template = 'w/{device}'", "connector = 'sparkplug', metric_map = 'Motor/Speed'", "3:34: metric_map entry 'Motor/Speed' should be 'metric name=column'"),
    ("connector = 'mqtt', topic = 'w/+', topic_template = 'w/{device}'", "connector = 'sparkplug', group = 'a/b'", "3:34: group = 'a/b' must be one Sparkplug group id (no '/', '+' or '#'), or '#' for all"),
    ("connector = 'mqtt', topic = 'o/{device}'", "connector = 'sparkplug', topic = 'o/{device}'", "4:24: a sparkplug table is a source: alerts go out with connector = 'mqtt' (or 'webhook')"),
    // Sinks against the columns their query selects.
    ("topic = 'o/{device}');\nINSERT INTO out SELECT device,", "topic = 'o/{machine}/{v}');\nINSERT INTO out SELECT device AS machine,", "4:44: topic 'o/{machine}/{v}' captures '{machine}' and '{v}', and query 'q' selects no column 'device': say which names the device with device_column = '<column>'"),
    ("topic = 'o/{device}'", "topic = 'o/{device}', device_column = 'dev'", "4:66: device_column = 'dev' names no output column of query 'q' (its columns: device, window_start, v); did you mean 'device'?"),
    ("topic = 'o/{device}'", "topic = 'o/{site}/{device}'", "4:44: topic captures '{site}', but query 'q' selects no column 'site' (its columns: device, window_start, v)"),
    ("topic = 'o/{device}'", "topic = 'o/+'", "4:44: a sink publishes on topic 'o/+': it cannot contain the wildcards '+' or '#' (use {column} levels)"),
    ("topic = 'o/{device}'", "topic = 'o/{device}', warning_at = '1', score = 'scor'", "4:84: score = 'scor' names no output column of query 'q' (its columns: device, window_start, v)"),
    ("topic = 'o/{device}'", "topic = 'o/{device}', warning_at = '1'", "4:66: the lifecycle reads each window's score from column 'score', which query 'q' does not select (its columns: device, window_start, v): select it (... AS score) or add score = '<column>'"),
    ("topic = 'o/{device}'", "topic = 'o/{device}', warning_at = '1', score = 'device'", "4:84: the score column 'device' of query 'q' is TEXT, not a number"),
    ("topic = 'o/{device}'", "topic = 'o/{device}', warning_at = '1', score = 'v', raise_after = '0'", "4:97: raise_after must be a whole number of windows, at least 1, got '0'"),
    ("topic = 'o/{device}'", "topic = 'o/{device}', warning_at = '1', score = 'v', clear_below = '2'", "4:97: clear_below (2) must not exceed warning_at (1)"),
    ("topic = 'o/{device}'", "topic = 'o/{device}', warning_at = '2', score = 'v', alarm_at = '1'", "4:97: alarm_at (1) must not be below warning_at (2)"),
    ("topic = 'o/{device}'", "topic = 'o/{device}', warning_at = '1', score = 'v', cooldown = '-5 minutes'", "4:97: cooldown cannot be negative"),
    ("topic = 'o/{device}'", "topic = 'o/{device}', warning_at = '1', score = 'v', offline_after = '0 seconds'", "4:97: offline_after must be a positive interval such as '5 minutes', got '0 seconds'"),
    ("topic = 'o/{device}'", "topic = 'o/{device}', score = 'v'", "4:66: 'score' belongs to an alert lifecycle: add warning_at = '<score>'"),
    // A source's template against its subscription.
    ("topic_template = 'w/{device}'", "topic_template = 'w/{device}/x'", "3:44: topic_template 'w/{device}/x' has 3 levels, but topic 'w/+' matches topics of 2 levels: no message can match both"),
    ("topic = 'w/+', topic_template = 'w/{device}'", "topic = 'a/+/b', topic_template = 'a/{device}/c'", "3:46: topic_template 'a/{device}/c' has 'c' at level 3, but topic 'a/+/b' has 'b': no message can match both"),
    ("topic = 'w/+', topic_template = 'w/{device}'", "topic = 'w/+/#', topic_template = 'w/{device}'", "accepted"),
    ("topic = 'w/+', topic_template = 'w/{device}'", "topic = 'w/#', topic_template = 'w/{device}/+/x'", "accepted"),
    ("topic = 'w/+', topic_template = 'w/{device}'", "topic = 'w/+/+/#', topic_template = 'w/{device}'", "3:48: topic_template 'w/{device}' has 2 levels, but topic 'w/+/+/#' matches topics of 3 or more levels: no message can match both"),
    ("topic_template = 'w/{device}'", "topic_template = 'w/#/{device}'", "3:44: topic_template: bad topic template 'w/#/{device}': '#' may only be the last level"),
    // Planning errors, at what they name.
    ("avg(v) AS v", "kurtosys(v) AS v", "5:46: unknown function 'kurtosys'; did you mean 'kurtosis'?"),
    ("avg(v) AS v", "avg(v) AS a, v + 1 AS b", "5:59: column 'v' in SELECT is neither a GROUP BY key nor inside an aggregate function: aggregate it (avg(v), max(v), last_value(v), ...) or add it to GROUP BY"),
    ("device;", "device HAVING r.v > 1;", "6:62: column 'r.v' in HAVING is neither a GROUP BY key nor inside an aggregate function: aggregate it (avg(v), max(v), last_value(v), ...) or add it to GROUP BY"),
    ("SELECT device, window_start, avg(v) AS v", "SELECT *", "5:24: * brings in column 'ts', which is neither a GROUP BY key nor aggregated: list the columns to select instead of *"),
    ("avg(v) AS v", "avg(v) AS v, r.*", "5:59: r.* brings in a second column 'device' (SELECT item 1 already selects it): list the columns to select instead of r.*"),
    ("avg(v) AS v", "avg(v) AS w, sum(v) OVER () AS s", "5:63: column 'v' in SELECT is neither a GROUP BY key nor inside an aggregate function: aggregate it (avg(v), max(v), last_value(v), ...) or add it to GROUP BY"),
    ("avg(v) AS v", "avg(v) AS v, max(v) FILTER (WHERE v > 1) AS m", "accepted"),
    ("avg(v) AS v", "avg(v) AS v, device", "5:59: SELECT item 4 ('device') has the same output name as item 1: give one of them another name with AS"),
    ("avg(v) AS v", "avg(device) AS v", "5:46: no signature of avg takes (Utf8); its signatures: avg(Decimal), avg(Duration), avg(Float64)"),
    // The vibration functions check their own arguments.
    ("avg(v) AS v", "avg(band_rms(v, 100, 10, 20)) AS v", "5:50: band_rms takes band_rms(wave, fs, lo_hz, hi_hz): argument 1 must be a waveform (DOUBLE[]), got DOUBLE"),
    ("avg(v) AS v", "avg(wave_rms(v, v)) AS v", "5:50: wave_rms takes wave_rms(wave), but got 2 arguments"),
    ("avg(v) AS v", "max(iso_zone(v, 2)) AS v", "5:50: iso_zone takes iso_zone(velocity_rms_mm_s, machine_class): argument 2 must be a machine class ('I', 'II', 'III', 'IV'), got BIGINT"),
    ("avg(v) AS v", "max(iso_zone(v, 'V')) AS v", "5:50: iso_zone: unknown machine class 'V' (use 'I', 'II', 'III', 'IV')"),
    ("avg(v) AS v", "avg(bpfo(v, 9, 7.94, 39.04, 0)) AS v", "accepted"),
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

/// The chiller plant of `tests/streaming/sink_device_column.slt`: the sink topic captures
/// the site before the device.
const CHILLERS: &str = "CREATE TABLE chillers (site TEXT, device TEXT, ts TIMESTAMP, temp DOUBLE,
  WATERMARK FOR ts AS ts)
  WITH (connector = 'mqtt', topic = 'factory/+/chiller/+/data',
        topic_template = 'factory/{site}/chiller/{device}/data');
CREATE TABLE chiller_alerts WITH (connector = 'mqtt',
  topic = 'factory/{site}/chiller/{device}/alerts',
  score = 'temp', warning_at = '10', clear_below = '8', raise_after = '2', clear_after = '2');
INSERT INTO chiller_alerts
SELECT site, device, window_start, window_end, max(temp) AS temp
FROM chillers GROUP BY tumble(interval '10 seconds'), site, device;
";

/// Runs `sql` over chillers c1 (too warm in its first two windows) and c2 (fine) of site
/// s1; returns every output as (topic, JSON).
async fn run_chillers(sql: &str) -> Vec<(String, serde_json::Value)> {
    let p = Pipeline::builder()
        .query_sql("case.sql", sql)
        .build()
        .await
        .unwrap();
    let (h, mut rx) = p.start();
    for (i, (c1, c2)) in [(12, 5), (12, 5), (5, 5), (5, 5), (5, 5)]
        .iter()
        .enumerate()
    {
        for (d, t) in [("c1", c1), ("c2", c2)] {
            let payload = format!(r#"{{"ts": "2026-01-05T06:00:{}0Z", "temp": {t}}}"#, i);
            h.push_json(
                &format!("factory/s1/chiller/{d}/data"),
                payload.into_bytes(),
            )
            .await
            .unwrap();
        }
    }
    h.finish().await.unwrap();
    drop(h);
    let mut out = Vec::new();
    while let Some(o) = rx.recv().await {
        let (topic, payload) = o.to_message();
        out.push((topic, serde_json::from_slice(&payload).unwrap()));
    }
    out
}

#[tokio::test]
async fn the_device_is_the_device_column_not_the_first_capture() {
    let got = run_chillers(CHILLERS).await;
    let summary: Vec<String> = got
        .iter()
        .map(|(topic, v)| {
            let what = v.get("transition").or_else(|| v.get("state")).unwrap();
            format!("{topic} {} {}", v["device"], what)
        })
        .collect();
    assert_eq!(
        summary,
        [
            "forewarn/state/c1 \"c1\" \"ok\"",
            "forewarn/state/c2 \"c2\" \"ok\"",
            "factory/s1/chiller/c1/alerts \"c1\" \"raised\"",
            "forewarn/state/c1 \"c1\" \"warning\"",
            "factory/s1/chiller/c1/alerts \"c1\" \"cleared\"",
            "forewarn/state/c1 \"c1\" \"ok\"",
        ],
        "{got:#?}"
    );

    // Several captures and no device column: device_column says which one it is.
    let sql = CHILLERS
        .replace("{device}/alerts", "{unit}/alerts")
        .replace("SELECT site, device,", "SELECT site, device AS unit,");
    let e = Pipeline::builder()
        .query_sql("case.sql", &sql)
        .build()
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "case.sql:6:3: error: topic 'factory/{site}/chiller/{unit}/alerts' captures '{site}' and '{unit}', and query 'case' selects no column 'device': say which names the device with device_column = '<column>'\n    6 |   topic = 'factory/{site}/chiller/{unit}/alerts',\n      |   ^^^^^"
    );
    let sql = sql.replace("score = 'temp'", "device_column = 'unit', score = 'temp'");
    let got = run_chillers(&sql).await;
    let states: Vec<&str> = got
        .iter()
        .filter(|(t, _)| t.starts_with("forewarn/state/"))
        .map(|(t, _)| t.as_str())
        .collect();
    assert_eq!(
        states,
        [
            "forewarn/state/c1",
            "forewarn/state/c2",
            "forewarn/state/c1",
            "forewarn/state/c1"
        ]
    );
}

#[tokio::test]
async fn a_bad_reference_cell_is_shown_in_the_csv_file() {
    let dir = std::env::temp_dir().join(format!("forewarn-check-csv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sql = GOOD.replace(
        "INSERT INTO out",
        "CREATE TABLE assets (device TEXT, kind TEXT, rated_v DOUBLE)
  WITH (connector = 'file', path = 'assets.csv');
INSERT INTO out",
    ) .replace("FROM r GROUP BY tumble(interval '10 seconds'), device", "FROM r JOIN assets a ON r.device = a.device GROUP BY tumble(interval '10 seconds'), r.device")
    .replace("SELECT device,", "SELECT r.device,");
    std::fs::write(dir.join("q.sql"), &sql).unwrap();
    let csv = dir.join("assets.csv");
    let check = |content: &str| {
        std::fs::write(&csv, content).unwrap();
        let file = dir.join("q.sql");
        async move {
            match Pipeline::builder().query_file(&file).build().await {
                Ok(_) => "accepted".to_string(),
                Err(e) => e.to_string(),
            }
        }
    };
    let d = csv.display();
    let q = dir.join("q.sql");
    let q = q.display();
    assert_eq!(
        check("device,kind,rated_v\nw1,pump,2.0\n").await,
        "accepted"
    );
    assert_eq!(
        check("device,kind,rated_v\nw1,pump,2.0\nw2,fan,high\n").await,
        format!("{d}:3:8: error: file table 'assets' ({q}:5): cannot read 'high' as DOUBLE for column 'rated_v'\n    3 | w2,fan,high\n      |        ^^^^")
    );
    assert_eq!(
        check("device,kind,rated_v\r\n\r\nw1,\"pump, \"\"big\"\"\",x2\r\n").await,
        format!("{d}:3:20: error: file table 'assets' ({q}:5): cannot read 'x2' as DOUBLE for column 'rated_v'\n    3 | w1,\"pump, \"\"big\"\"\",x2\n      |                    ^^")
    );
    assert_eq!(
        check("device,kind,rated_v\nw1,pump\n").await,
        format!("{d}:2:1: error: file table 'assets' ({q}:5): this line has 2 values, but the table declares 3 columns (device, kind, rated_v)\n    2 | w1,pump\n      | ^^")
    );
    assert_eq!(
        check("device,rated_v,kind\nw1,2.0,pump\n").await,
        format!("{d}:1:8: error: file table 'assets' ({q}:5): header column 2 is 'rated_v', but the table declares 'kind' there (columns are read by position; declared: device, kind, rated_v)\n    1 | device,rated_v,kind\n      |        ^^^^^^^")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// (what to replace in GOOD, replacement, the error's kind): a program reacts to the
/// kind without reading the message.
const KINDS: &[(&str, &str, SqlErrorKind)] = &[
    ("FROM r GROUP", "FROM r GROUP GROUP", SqlErrorKind::Syntax),
    (
        "FROM r GROUP",
        "FROM nope GROUP",
        SqlErrorKind::UnknownTable,
    ),
    (
        "INSERT INTO out",
        "INSERT INTO outt",
        SqlErrorKind::UnknownTable,
    ),
    ("avg(v) AS v", "avg(vv) AS v", SqlErrorKind::UnknownColumn),
    (
        "topic = 'o/{device}'",
        "topic = 'o/{site}/{device}'",
        SqlErrorKind::UnknownColumn,
    ),
    (
        "avg(v) AS v",
        "kurtosys(v) AS v",
        SqlErrorKind::UnknownFunction,
    ),
    (
        "avg(v) AS v",
        "anomaly_score('nope', avg(v)) AS v",
        SqlErrorKind::UnknownModel,
    ),
    (
        "connector = 'mqtt', topic = 'w/+'",
        "connector = 'kafka', topic = 'w/+'",
        SqlErrorKind::UnknownConnector,
    ),
    (
        "topic_template = 'w/{device}'",
        "topic_template = 'w/{device}', retries = '3'",
        SqlErrorKind::UnknownOption,
    ),
    (
        "topic = 'o/{device}'",
        "topic = 'o/{device}', url = 'http://cmms/hook'",
        SqlErrorKind::UnknownOption,
    ),
    (
        "connector = 'mqtt', topic = 'w/+'",
        "connector = 'nats', topic = 'w/+'",
        SqlErrorKind::Option,
    ),
    (
        "topic = 'o/{device}'",
        "topic = 'o/{device}', warning_at = '1', score = 'v', raise_after = '0'",
        SqlErrorKind::Option,
    ),
    ("v DOUBLE,", "v DOUBLE, w BLOB,", SqlErrorKind::Type),
    ("avg(v) AS v", "avg(device) AS v", SqlErrorKind::Type),
    (
        "topic = 'o/{device}'",
        "topic = 'o/{device}', warning_at = '1', score = 'device'",
        SqlErrorKind::Type,
    ),
    (
        "avg(v) AS v",
        "avg(v) AS v, device",
        SqlErrorKind::Duplicate,
    ),
    (
        "topic = 'o/{device}'",
        "topic = 'o/{device}', topic = 'x'",
        SqlErrorKind::Duplicate,
    ),
    (
        "tumble(interval '10 seconds')",
        "tumble(interval '10 parsecs')",
        SqlErrorKind::Window,
    ),
    (
        "tumble(interval '10 seconds')",
        "sliding(interval '10 seconds')",
        SqlErrorKind::Window,
    ),
    (
        "WATERMARK FOR ts AS ts - INTERVAL '2' SECOND",
        "WATERMARK FOR ts AS ts + INTERVAL '2' SECOND",
        SqlErrorKind::Window,
    ),
    (
        "FROM r GROUP",
        "FROM r JOIN r ON r.device = r.device GROUP",
        SqlErrorKind::Unsupported,
    ),
    (
        "INSERT INTO out",
        "COPY r TO '/tmp/x.csv';\nINSERT INTO out",
        SqlErrorKind::Unsupported,
    ),
    (
        "avg(v) AS v",
        "avg(v) AS a, v + 1 AS b",
        SqlErrorKind::Invalid,
    ),
];

#[tokio::test]
async fn each_wrong_query_has_its_kind() {
    let mut failures = Vec::new();
    for (from, to, want) in KINDS {
        assert!(GOOD.contains(from), "case does not apply: {from}");
        let text = GOOD.replacen(from, to, 1);
        match Pipeline::builder().query_sql("q.sql", &text).build().await {
            Err(forewarn::EngineError::Sql(e)) if e.kind == *want => {}
            Err(forewarn::EngineError::Sql(e)) => {
                failures.push(format!("{to}\n   got: {} ({e})\n  want: {want}", e.kind))
            }
            Err(e) => failures.push(format!("{to}\n  not a query error: {e}")),
            Ok(_) => failures.push(format!("{to}\n  accepted")),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
