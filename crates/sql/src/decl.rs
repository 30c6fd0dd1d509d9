//! What a query file declares: sources, sinks, reference tables and queries, and
//! [`QuerySet::add_file`], which reads a file's statements and hands each to its parser
//! (`table.rs` for `CREATE TABLE`, `insert.rs` for `INSERT INTO`).

use std::collections::BTreeMap;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::sql::sqlparser::ast::{Spanned, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Location;
use forewarn_alerts::LifecycleSpec;
use forewarn_connect::{ConnectorConfig, Registry};
use forewarn_core::{Millis, WatermarkSpec, WindowSpec};

use crate::error::err;
use crate::watermark::extract_watermarks;
use crate::SqlError;
use crate::SqlErrorKind;

/// Allowed skew of per-key watermarks when `max_skew` is not given.
pub const DEFAULT_MAX_SKEW: Millis = 5 * 60_000;

/// Names of the columns the window operator adds to every source row.
pub const WINDOW_START: &str = "window_start";
/// See [`WINDOW_START`].
pub const WINDOW_END: &str = "window_end";
/// The implicit event-time column of a source without `WATERMARK FOR`.
pub const ARRIVAL_TIME: &str = "arrival_time";

/// A `CREATE TABLE` with columns that queries read: a stream of readings.
#[derive(Debug, Clone)]
pub struct SourceDecl {
    /// Table name.
    pub name: String,
    /// Declared columns (event-time and topic columns are non-nullable).
    pub schema: SchemaRef,
    /// The event-time column (from `WATERMARK FOR`).
    pub event_time: String,
    /// How the watermark trails event time.
    pub watermark: WatermarkSpec,
    /// MQTT topic filter to subscribe to; empty for a source without a topic
    /// (`connector = 'channel'`), which receives only readings pushed by its name.
    pub topic: String,
    /// Template mapping topic levels to columns.
    pub topic_template: Option<String>,
    /// Payload format (`json`).
    pub format: String,
    /// Where it was declared: `file:line`.
    pub origin: String,
    /// No `WATERMARK FOR`: rows are timed by arrival in the engine, in the implicit
    /// column [`ARRIVAL_TIME`], and the watermark follows the wall clock.
    pub processing_time: bool,
    /// Column keying per-key watermarks (`watermark_key = 'device'`).
    pub watermark_key: Option<String>,
    /// With no input for this long (wall clock), the watermark advances with the clock
    /// so the last windows close (`idle_timeout = '30 seconds'`).
    pub idle_timeout: Option<Millis>,
    /// Topic template for late rows (`late_topic = '...'`); default `{prefix}/late/{source}`.
    pub late_topic: Option<String>,
    /// The connector delivering its readings (`connector = 'mqtt'`, `'nats'`, ...) with
    /// its own settings.
    pub connector: ConnectorConfig,
    /// Samples one waveform (`DOUBLE[]`) value may hold (`max_samples`, default
    /// [`forewarn_formats::DEFAULT_MAX_SAMPLES`]); more is dead-lettered
    /// `too_many_samples`.
    pub max_samples: usize,
}

/// A `CREATE TABLE ... WITH (connector = 'file', path = '...csv')`: a static
/// reference table (asset registry) that queries may join.
#[derive(Debug, Clone)]
pub struct ReferenceDecl {
    /// Table name.
    pub name: String,
    /// Declared columns.
    pub schema: SchemaRef,
    /// The CSV file, resolved against the query file's directory.
    pub path: std::path::PathBuf,
    /// Where it was declared: `file:line`.
    pub origin: String,
}

/// A `CREATE TABLE` without columns that queries write to.
#[derive(Debug, Clone)]
pub struct SinkDecl {
    /// Table name.
    pub name: String,
    /// Topic template, e.g. `forewarn/alerts/{device}`; for a sink without a topic
    /// (`connector = 'channel'`), the table's name.
    pub topic: String,
    /// Payload format (`json`).
    pub format: String,
    /// Alert lifecycle (`warning_at = ...` and friends): publish state transitions
    /// instead of every result row.
    pub lifecycle: Option<LifecycleSpec>,
    /// `detector = 'online'`: the sink scores each device's windows itself, against
    /// what it learned from that device's earlier windows (implies a lifecycle).
    pub online: Option<crate::detector::OnlineDecl>,
    /// `false_alerts` without a detector: the lifecycle's threshold on a score that is a
    /// surprise (`anomaly_surprise`), as false alerts per device per 30 days.
    pub false_alerts: Option<f64>,
    /// The result column naming the device (`device_column = '...'`), when given; see
    /// [`crate::bind_sink`] for how it is found otherwise.
    pub device_column: Option<String>,
    /// File the sink was declared in.
    pub file: String,
    /// The connector taking its outputs (`connector = 'mqtt'`, `'webhook'`, ...) with
    /// its own settings.
    pub connector: ConnectorConfig,
    /// Line and column of each option's key (lower case), for errors about its value.
    pub option_at: BTreeMap<String, (u64, u64)>,
}

/// One `INSERT INTO sink SELECT ...` with its window lifted out of the `GROUP BY`.
#[derive(Debug, Clone)]
pub struct QueryDecl {
    /// `file_stem` or `file_stem_N` when a file holds several queries.
    pub name: String,
    /// Sink table written to.
    pub sink: String,
    /// Source table read.
    pub source: String,
    /// Reference tables joined.
    pub references: Vec<String>,
    /// Window from `GROUP BY tumble(...)`.
    pub window: WindowSpec,
    /// For session windows: the key columns (the other `GROUP BY` items).
    pub session_keys: Vec<String>,
    /// Output columns that are GROUP BY keys (selected as they are, or under an alias):
    /// each window has one row per combination of them.
    pub key_columns: Vec<String>,
    /// Those of them the source's topic template captures, from its coarsest level to
    /// its finest (e.g. `site`, `chiller` for `factory/{site}/chiller/{chiller}/data`).
    pub topic_keys: Vec<String>,
    /// The `SELECT` with the window call replaced by `window_start, window_end`.
    pub select_sql: String,
    /// File the query came from.
    pub file: String,
    /// Line of the `INSERT`.
    pub line: u64,
}

/// Everything declared in a set of query files.
#[derive(Debug, Clone, Default)]
pub struct QuerySet {
    /// Sources by name.
    pub sources: BTreeMap<String, SourceDecl>,
    /// Sinks by name.
    pub sinks: BTreeMap<String, SinkDecl>,
    /// Reference tables by name.
    pub references: BTreeMap<String, ReferenceDecl>,
    /// Queries in file order.
    pub queries: Vec<QueryDecl>,
    /// The connectors tables may name ([`Registry::builtin`] unless replaced).
    pub connectors: Registry,
}

impl QuerySet {
    /// Parses one file and adds its declarations; names must be unique across files.
    pub fn add_file(&mut self, file: &str, text: &str) -> Result<(), SqlError> {
        let dialect = GenericDialect {};
        let (cleaned, watermarks) = extract_watermarks(file, text)?;
        let statements = Parser::new(&dialect)
            .try_with_sql(&cleaned)
            .and_then(|mut p| p.parse_statements())
            .map_err(|e| SqlError::from_parser(file, text, &e))?;
        let stem = std::path::Path::new(file)
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "query".into());
        let inserts = statements
            .iter()
            .filter(|s| matches!(s, Statement::Insert(_)))
            .count();
        let mut n = 0;
        for st in statements {
            match st {
                Statement::CreateTable(ct) => {
                    let loc = ct
                        .name
                        .0
                        .first()
                        .map(|p| p.span().start)
                        .unwrap_or(Location { line: 0, column: 0 });
                    let name = ct.name.to_string();
                    // Sandbox: a table is a connector declaration, never a file location
                    // or a query result.
                    if ct.external || ct.location.is_some() || ct.query.is_some() {
                        let what = if ct.query.is_some() {
                            "CREATE TABLE ... AS SELECT"
                        } else {
                            "CREATE EXTERNAL TABLE"
                        };
                        return Err(err(
                            file,
                            text,
                            loc,
                            format!("'{what}' is not allowed in a query file: declare tables WITH (connector = 'mqtt' | 'file', ...)"),
                        ).with_kind(SqlErrorKind::Unsupported));
                    }
                    if self.sources.contains_key(&name)
                        || self.sinks.contains_key(&name)
                        || self.references.contains_key(&name)
                    {
                        return Err(err(
                            file,
                            text,
                            loc,
                            format!("table '{name}' is declared twice"),
                        )
                        .with_kind(SqlErrorKind::Duplicate));
                    }
                    let wm = watermarks
                        .iter()
                        .find(|w| w.table_line <= loc.line && w.before_line >= loc.line);
                    self.add_table(file, text, loc, &name, &ct.columns, &ct.table_options, wm)?;
                }
                Statement::Insert(ins) => {
                    n += 1;
                    let name = if inserts > 1 {
                        format!("{stem}_{n}")
                    } else {
                        stem.clone()
                    };
                    let q = self.parse_insert(file, text, name, ins)?;
                    self.queries.push(q);
                }
                other => {
                    let loc = statement_start(&other);
                    let word = other
                        .to_string()
                        .split_whitespace()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" ");
                    return Err(err(
                        file,
                        text,
                        loc,
                        format!("'{word}' is not allowed in a query file: only CREATE TABLE (sources and sinks) and INSERT INTO sink SELECT ... are"),
                    ).with_kind(SqlErrorKind::Unsupported));
                }
            }
        }
        Ok(())
    }
}

fn statement_start(s: &Statement) -> Location {
    s.span().start
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const FILE: &str = "
CREATE TABLE pumps (
  device TEXT, ts TIMESTAMP, vibration DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (connector = 'mqtt', topic = 'plant/+/+/+/telemetry',
        topic_template = 'plant/{site}/{line}/{device}/telemetry', format = 'json');
CREATE TABLE alerts WITH (connector = 'mqtt', topic = 'forewarn/alerts/{device}', format = 'json');
INSERT INTO alerts
SELECT device, window_start, window_end, avg(vibration) AS v
FROM pumps GROUP BY tumble(interval '10 seconds'), device HAVING avg(vibration) > 1;
";

    #[test]
    fn parses_sources_sinks_and_windows() {
        let f = FILE.replace(
            "topic_template = 'plant/{site}/{line}/{device}/telemetry'",
            "topic_template = 'plant/+/+/{device}/telemetry'",
        );
        let mut qs = QuerySet::default();
        qs.add_file("q.sql", &f).unwrap();
        let s = &qs.sources["pumps"];
        assert_eq!(s.event_time, "ts");
        assert_eq!(s.watermark.delay, 5_000);
        assert!(!s.schema.field_with_name("device").unwrap().is_nullable());
        assert!(s.schema.field_with_name("vibration").unwrap().is_nullable());
        assert_eq!(qs.sinks["alerts"].topic, "forewarn/alerts/{device}");
        let q = &qs.queries[0];
        assert_eq!(q.window, WindowSpec::Tumble { width: 10_000 });
        assert!(
            q.select_sql
                .contains("GROUP BY window_start, window_end, device"),
            "{}",
            q.select_sql
        );
        assert_eq!(q.line, 8);
    }

    #[test]
    fn errors_point_at_the_problem() {
        let mut qs = QuerySet::default();
        let e = qs.add_file("q.sql", FILE).unwrap_err();
        assert_eq!(
            e.message,
            "topic_template captures '{site}', but 'pumps' has no column 'site'"
        );
        assert_eq!((e.line, e.column), (6, 9));

        let bad = FILE.replace(
            "tumble(interval '10 seconds')",
            "tumble(interval '10 parsecs')",
        );
        let bad = bad.replace(
            "'plant/{site}/{line}/{device}/telemetry'",
            "'plant/+/+/{device}/telemetry'",
        );
        let e = QuerySet::default().add_file("q.sql", &bad).unwrap_err();
        assert_eq!((e.line, e.column), (10, 37));
        assert!(e.message.contains("10 parsecs"), "{e}");
        assert!(e.to_string().contains("   10 | FROM pumps GROUP BY"), "{e}");

        let e = QuerySet::default()
            .add_file("x.sql", "COPY t TO '/etc/passwd';")
            .unwrap_err();
        assert!(e.message.contains("not allowed in a query file"), "{e}");
        let e = QuerySet::default()
            .add_file(
                "x.sql",
                "CREATE TABLE t (a DOUBLE) WITH (connector = 'file');",
            )
            .unwrap_err();
        assert_eq!(e.message, "file table 't' needs a path = '...csv' option");
        let e = QuerySet::default()
            .add_file("x.sql", "SELEC 1")
            .unwrap_err();
        assert_eq!((e.line, e.column), (1, 1));
    }

    /// A query read and written in memory (`connector = 'channel'`).
    const CHANNEL: &str = "CREATE TABLE readings (device TEXT, ts TIMESTAMP, v DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) WITH (connector = 'channel');
CREATE TABLE out WITH (connector = 'channel');
INSERT INTO out SELECT device, window_start, avg(v) AS v
FROM readings GROUP BY tumble(interval '10 seconds'), device;
";

    #[test]
    fn channel_tables_have_no_topic() {
        let mut qs = QuerySet::default();
        qs.add_file("q.sql", CHANNEL).unwrap();
        let s = &qs.sources["readings"];
        assert_eq!(s.topic, "");
        assert_eq!(s.topic_template, None);
        assert_eq!(s.connector.connector(), "channel");
        // The device is a payload column, nullable as any undeclared-NOT-NULL one.
        assert!(s.schema.field_with_name("device").unwrap().is_nullable());
        let k = &qs.sinks["out"];
        assert_eq!(k.topic, "out");
        assert_eq!(k.connector.connector(), "channel");
    }

    #[test]
    fn channel_options_are_refused_at_their_key() {
        let cases = [
            (
                "(connector = 'channel');\nCREATE TABLE out",
                "(connector = 'channel', topic = 'w/+');\nCREATE TABLE out",
                (2, 78),
                "'topic' does not apply to a channel source: the program pushes its readings by the table's name (PipelineHandle::push_to), so the device comes from a payload column",
            ),
            (
                "(connector = 'channel');\nCREATE TABLE out",
                "(connector = 'channel', topic_template = 'w/{device}');\nCREATE TABLE out",
                (2, 78),
                "'topic_template' does not apply to a channel source: the program pushes its readings by the table's name (PipelineHandle::push_to), so the device comes from a payload column",
            ),
            (
                "out WITH (connector = 'channel')",
                "out WITH (connector = 'channel', topic = 'o/{device}')",
                (3, 47),
                "'topic' does not apply to a channel sink: its outputs go to the program's output receiver, with the table's name as their topic",
            ),
            (
                "(connector = 'channel');\nCREATE TABLE out",
                "(connector = 'channel', retries = '3');\nCREATE TABLE out",
                (2, 78),
                "unknown option 'retries' for a channel source (allowed: connector, format, max_future, watermark_key, max_skew, idle_timeout, late_topic, max_samples)",
            ),
            (
                "out WITH (connector = 'channel')",
                "out WITH (connector = 'channel', url = 'http://x')",
                (3, 47),
                "'url' is an option of connector = 'webhook'",
            ),
            (
                "(connector = 'channel');\nCREATE TABLE out",
                "(connector = 'channel', format = 'csv');\nCREATE TABLE out",
                (2, 78),
                "unknown format 'csv' (supported: 'json')",
            ),
            (
                "(connector = 'channel');\nCREATE TABLE out",
                "(connector = 'channel', watermark_key = 'dev');\nCREATE TABLE out",
                (2, 78),
                "watermark_key names column 'dev', which 'readings' does not declare",
            ),
            (
                "out WITH (connector = 'channel')",
                "out WITH (connector = 'channel', warning_at = 'high')",
                (3, 47),
                "warning_at must be a number, got 'high'",
            ),
        ];
        for (from, to, at, want) in cases {
            assert!(CHANNEL.contains(from), "{from}");
            let text = CHANNEL.replacen(from, to, 1);
            let e = QuerySet::default().add_file("q.sql", &text).unwrap_err();
            assert_eq!((e.message.as_str(), (e.line, e.column)), (want, at), "{to}");
        }
    }
}
