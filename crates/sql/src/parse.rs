//! Query files: `CREATE TABLE` sources and sinks, and `INSERT INTO sink SELECT ...`.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::sql::sqlparser::ast::{
    self, ColumnOption, CreateTableOptions, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    GroupByExpr, Ident, SelectItem, SetExpr, SqlOption, Statement, TableFactor, TableObject, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Location, Span, Token, Tokenizer};
use forewarn_alerts::LifecycleSpec;
use forewarn_core::{parse_interval, Millis, WatermarkSpec, WindowSpec};
use forewarn_formats::TopicTemplate;

use crate::SqlError;
use forewarn_connect::{ConnectorConfig, Options, Pos, Registry, Role, TableContext};

/// Allowed skew of per-key watermarks when `max_skew` is not given.
pub const DEFAULT_MAX_SKEW: Millis = 5 * 60_000;

fn time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

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
    /// MQTT topic filter to subscribe to.
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
    /// Topic template, e.g. `forewarn/alerts/{device}`.
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
                        ));
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
                        ));
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
                    ));
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn add_table(
        &mut self,
        file: &str,
        text: &str,
        loc: Location,
        name: &str,
        columns: &[ast::ColumnDef],
        options: &CreateTableOptions,
        wm: Option<&WatermarkClause>,
    ) -> Result<(), SqlError> {
        let opts = match options {
            CreateTableOptions::With(o) | CreateTableOptions::Options(o) => o.as_slice(),
            CreateTableOptions::None => &[],
            _ => {
                return Err(err(
                    file,
                    text,
                    loc,
                    "table options must be written WITH (key = 'value', ...)",
                ))
            }
        };
        let mut map = BTreeMap::new();
        for o in opts {
            match o {
                SqlOption::KeyValue { key, value } => {
                    let v = match value {
                        Expr::Value(v) => match &v.value {
                            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => {
                                s.clone()
                            }
                            other => other.to_string(),
                        },
                        Expr::Identifier(i) => i.value.clone(),
                        other => other.to_string(),
                    };
                    let k = key.value.to_ascii_lowercase();
                    // The last would silently win: refuse, at the repeat.
                    if map.contains_key(&k) {
                        return Err(err(
                            file,
                            text,
                            key.span.start,
                            format!("option '{k}' is given twice"),
                        ));
                    }
                    map.insert(k, (v, key.span.start));
                }
                _ => {
                    return Err(err(
                        file,
                        text,
                        loc,
                        format!("option '{o}' must be key = 'value'"),
                    ))
                }
            }
        }
        let get = |k: &str| map.get(k).map(|(v, _)| v.clone());
        let connector_name = get("connector").ok_or_else(|| {
            err(
                file,
                text,
                loc,
                format!("table '{name}' needs WITH (connector = 'mqtt', ...)"),
            )
        })?;
        let connector_at = map["connector"].1;
        let Some(connector) = self.connectors.get(&connector_name).cloned() else {
            let supported: Vec<String> = self
                .connectors
                .names()
                .iter()
                .map(|n| format!("'{n}'"))
                .collect();
            return Err(err(
                file,
                text,
                connector_at,
                format!(
                    "unknown connector '{connector_name}' (supported: {})",
                    supported.join(", ")
                ),
            ));
        };
        let role = if connector.options(Role::Table).is_ok() {
            Role::Table
        } else if columns.is_empty() {
            Role::Sink
        } else {
            Role::Source
        };
        let own = connector
            .options(role)
            .map_err(|m| err(file, text, connector_at, m))?;
        let common: &[&str] = match role {
            Role::Sink => SINK_OPTIONS,
            Role::Source => SOURCE_OPTIONS,
            Role::Table => &["connector"],
        };
        let allowed: Vec<&str> = common.iter().chain(own).copied().collect();
        for (k, (_, at)) in &map {
            if allowed.contains(&k.as_str()) {
                continue;
            }
            if let Some(other) = self.connectors.owner_of(k, role) {
                return Err(err(
                    file,
                    text,
                    *at,
                    format!("'{k}' is an option of connector = '{other}'"),
                ));
            }
            return Err(err(
                file,
                text,
                *at,
                format!(
                    "unknown option '{k}' for {} {connector_name} {} (allowed: {}){}",
                    article(&connector_name),
                    role.as_str(),
                    allowed.join(", "),
                    crate::error::did_you_mean(k, &allowed)
                ),
            ));
        }
        let mut options = Options::default();
        for (k, (v, at)) in &map {
            let pos = Pos {
                line: at.line,
                column: at.column,
            };
            options
                .insert(k, v.clone(), pos)
                .map_err(|e| err(file, text, *at, e.message))?;
        }
        let dir = std::path::Path::new(file)
            .parent()
            .map(|d| d.to_path_buf())
            .unwrap_or_default();
        let context = TableContext {
            name,
            role,
            event_time: wm.is_some(),
            dir: &dir,
        };
        if role == Role::Table {
            return self.add_reference(
                file,
                text,
                loc,
                name,
                columns,
                &map,
                wm,
                &*connector,
                &context,
                &options,
            );
        }
        let format = get("format").unwrap_or_else(|| "json".into());
        if format != "json" {
            let at = map["format"].1;
            return Err(err(
                file,
                text,
                at,
                format!("unknown format '{format}' (supported: 'json')"),
            ));
        }
        let topic = match get("topic") {
            Some(t) => t,
            None if role == Role::Sink && !connector.sink_needs_topic() => {
                format!("{connector_name}/{name}")
            }
            None => {
                return Err(err(
                    file,
                    text,
                    loc,
                    format!("table '{name}' needs a topic = '...' option"),
                ))
            }
        };
        let config = connector.configure(&context, &options).map_err(|e| {
            let at = e.key.as_ref().and_then(|k| map.get(k)).map(|(_, at)| *at);
            err(file, text, at.unwrap_or(loc), e.message)
        })?;
        if columns.is_empty() {
            if wm.is_some() {
                return Err(err(
                    file,
                    text,
                    loc,
                    "a sink table has no columns and no WATERMARK",
                ));
            }
            if let Some(t) = topic_template(file, text, &map, "topic")? {
                if t.as_str().split('/').any(|l| l == "+" || l == "#") {
                    return Err(err(
                        file,
                        text,
                        map["topic"].1,
                        format!("a sink publishes on topic '{}': it cannot contain the wildcards '+' or '#' (use {{column}} levels)", t.as_str()),
                    ));
                }
            }
            let values = map
                .iter()
                .map(|(k, (v, _))| (k.clone(), v.clone()))
                .collect();
            let online = crate::detector::online_options(&values)
                .map_err(|(k, m)| err(file, text, map[k].1, m))?;
            let false_alerts = crate::detector::calibrated_rate(&values)
                .map_err(|(k, m)| err(file, text, map[k].1, m))?;
            let lifecycle =
                lifecycle_options(file, text, &map, online.is_some() || false_alerts.is_some())?;
            self.sinks.insert(
                name.to_string(),
                SinkDecl {
                    name: name.to_string(),
                    topic,
                    format,
                    lifecycle,
                    online,
                    false_alerts,
                    device_column: get("device_column"),
                    connector: config,
                    file: file.to_string(),
                    option_at: map
                        .iter()
                        .map(|(k, (_, at))| (k.clone(), (at.line, at.column)))
                        .collect(),
                },
            );
            return Ok(());
        }
        let template = get("topic_template");
        // The broker would refuse the subscription, and the source would stay empty.
        if let Some(why) = forewarn_formats::filter_problem(&topic) {
            return Err(err(
                file,
                text,
                map["topic"].1,
                format!("topic '{topic}' {why}"),
            ));
        }
        let captures: Vec<String> = match topic_template(file, text, &map, "topic_template")? {
            Some(t) => {
                // A template the subscription never delivers a message for would leave
                // the source silently empty.
                if let Some(why) = t.mismatch_with_filter(&topic) {
                    return Err(err(
                        file,
                        text,
                        map["topic_template"].1,
                        format!("topic_template '{}' {why}", t.as_str()),
                    ));
                }
                t.captures().map(str::to_string).collect()
            }
            None => Vec::new(),
        };
        topic_template(file, text, &map, "late_topic")?;
        let mut fields = Vec::new();
        for c in columns {
            let cname = c.name.value.clone();
            if cname == WINDOW_START || cname == WINDOW_END {
                return Err(err(
                    file,
                    text,
                    c.name.span.start,
                    format!("'{cname}' is reserved for the window bounds"),
                ));
            }
            let dt = map_type(&c.data_type).ok_or_else(|| {
                err(file, text, c.name.span.start, format!("column '{cname}' has type {}, which is not supported (use TEXT, DOUBLE, BIGINT, BOOLEAN or TIMESTAMP)", c.data_type))
            })?;
            let not_null = c
                .options
                .iter()
                .any(|o| matches!(o.option, ColumnOption::NotNull));
            let required =
                not_null || wm.is_some_and(|w| cname == w.column) || captures.contains(&cname);
            fields.push(Field::new(&cname, dt, !required));
        }
        let processing_time = wm.is_none();
        if let Some(wm) = wm {
            let ts_field = fields
                .iter()
                .find(|f| *f.name() == wm.column)
                .ok_or_else(|| {
                    err(
                        file,
                        text,
                        wm.loc,
                        format!(
                            "WATERMARK FOR names column '{}', which '{name}' does not declare",
                            wm.column
                        ),
                    )
                })?;
            if !matches!(ts_field.data_type(), DataType::Timestamp(..)) {
                return Err(err(
                    file,
                    text,
                    wm.loc,
                    format!("WATERMARK FOR column '{}' must be a TIMESTAMP", wm.column),
                ));
            }
        } else {
            // Processing time: the engine stamps each reading with its arrival.
            if let Some(c) = columns.iter().find(|c| c.name.value == ARRIVAL_TIME) {
                return Err(err(file, text, c.name.span.start, format!("'{ARRIVAL_TIME}' is reserved for the arrival time of a source without WATERMARK FOR")));
            }
            fields.push(Field::new(ARRIVAL_TIME, time_type(), false));
        }
        for c in &captures {
            if !fields.iter().any(|f| f.name() == c) {
                let at = map["topic_template"].1;
                return Err(err(
                    file,
                    text,
                    at,
                    format!("topic_template captures '{{{c}}}', but '{name}' has no column '{c}'"),
                ));
            }
        }
        let interval = |k: &str| -> Result<Option<Millis>, SqlError> {
            match map.get(k) {
                None => Ok(None),
                Some((v, at)) => match parse_interval(v, None) {
                    Ok(ms) if ms > 0 => Ok(Some(ms)),
                    Ok(_) => Err(err(file, text, *at, format!("{k} must be positive"))),
                    Err(e) => Err(err(file, text, *at, e.to_string())),
                },
            }
        };
        let max_future = interval("max_future")?;
        let idle_timeout = interval("idle_timeout")?;
        let max_skew = interval("max_skew")?;
        let watermark_key = get("watermark_key");
        if let Some(k) = &watermark_key {
            if !fields.iter().any(|f| f.name() == k) {
                let at = map["watermark_key"].1;
                return Err(err(
                    file,
                    text,
                    at,
                    format!("watermark_key names column '{k}', which '{name}' does not declare"),
                ));
            }
        }
        if max_skew.is_some() && watermark_key.is_none() {
            let at = map["max_skew"].1;
            return Err(err(
                file,
                text,
                at,
                "max_skew applies to per-key watermarks: add watermark_key = '<column>'",
            ));
        }
        if processing_time && watermark_key.is_some() {
            let at = map["watermark_key"].1;
            return Err(err(
                file,
                text,
                at,
                "watermark_key needs event time: add WATERMARK FOR <column> AS ...",
            ));
        }
        let (event_time, delay) = match wm {
            Some(w) => (w.column.clone(), w.delay),
            None => (ARRIVAL_TIME.to_string(), 0),
        };
        self.sources.insert(
            name.to_string(),
            SourceDecl {
                name: name.to_string(),
                schema: Arc::new(Schema::new(fields)),
                event_time,
                watermark: WatermarkSpec {
                    delay,
                    max_future,
                    per_key_skew: watermark_key
                        .as_ref()
                        .map(|_| max_skew.unwrap_or(DEFAULT_MAX_SKEW)),
                },
                topic,
                topic_template: template,
                format,
                origin: format!("{file}:{}", loc.line),
                processing_time,
                watermark_key,
                idle_timeout,
                late_topic: get("late_topic"),
                connector: config,
            },
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn add_reference(
        &mut self,
        file: &str,
        text: &str,
        loc: Location,
        name: &str,
        columns: &[ast::ColumnDef],
        map: &BTreeMap<String, (String, Location)>,
        wm: Option<&WatermarkClause>,
        connector: &dyn forewarn_connect::Connector,
        context: &TableContext<'_>,
        options: &Options,
    ) -> Result<(), SqlError> {
        if let Some(w) = wm {
            return Err(err(
                file,
                text,
                w.loc,
                "a file table is static reference data: it has no WATERMARK",
            ));
        }
        if columns.is_empty() {
            return Err(err(
                file,
                text,
                loc,
                format!("file table '{name}' must declare its columns"),
            ));
        }
        let config = connector.configure(context, options).map_err(|e| {
            let at = e.key.as_ref().and_then(|k| map.get(k)).map(|(_, at)| *at);
            err(file, text, at.unwrap_or(loc), e.message)
        })?;
        let Some(table) = config.get::<forewarn_connect::file::FileTable>() else {
            return Err(err(
                file,
                text,
                loc,
                format!(
                    "connector '{}' declares a reference table the SQL front end cannot load",
                    config.connector()
                ),
            ));
        };
        let mut fields = Vec::new();
        for c in columns {
            let dt = map_type(&c.data_type).ok_or_else(|| {
                err(file, text, c.name.span.start, format!("column '{}' has type {}, which is not supported (use TEXT, DOUBLE, BIGINT, BOOLEAN or TIMESTAMP)", c.name.value, c.data_type))
            })?;
            fields.push(Field::new(&c.name.value, dt, true));
        }
        self.references.insert(
            name.to_string(),
            ReferenceDecl {
                name: name.to_string(),
                schema: Arc::new(Schema::new(fields)),
                path: table.path.clone(),
                origin: format!("{file}:{}", loc.line),
            },
        );
        Ok(())
    }

    fn parse_insert(
        &self,
        file: &str,
        text: &str,
        name: String,
        ins: ast::Insert,
    ) -> Result<QueryDecl, SqlError> {
        let line = ins.insert_token.0.span.start.line;
        let at = ins.insert_token.0.span.start;
        let sink = match &ins.table {
            TableObject::TableName(n) => n.to_string(),
            _ => return Err(err(file, text, at, "INSERT INTO must name a sink table")),
        };
        if !self.sinks.contains_key(&sink) {
            let hint = if self.sources.contains_key(&sink) {
                " (it is a source: sinks are declared without columns)"
            } else {
                " (declare it first with CREATE TABLE ... WITH (connector = 'mqtt', topic = '...'))"
            };
            return Err(err(
                file,
                text,
                at,
                format!("unknown sink table '{sink}'{hint}"),
            ));
        }
        let mut query = ins
            .source
            .ok_or_else(|| err(file, text, at, "INSERT needs a SELECT"))?;
        let SetExpr::Select(select) = query.body.as_mut() else {
            return Err(err(
                file,
                text,
                at,
                "the query must be a single SELECT (UNION and VALUES are not supported)",
            ));
        };
        if select.from.len() != 1 {
            return Err(err(
                file,
                text,
                select.select_token.0.span.start,
                "a windowed query reads exactly one source table; join reference tables with JOIN ... ON",
            ));
        }
        // The stream is the FROM table; everything joined to it must be a file table.
        let mut tables: Vec<(String, Option<String>, Location)> = Vec::new();
        let from = &select.from[0];
        for rel in std::iter::once(&from.relation).chain(from.joins.iter().map(|j| &j.relation)) {
            match rel {
                TableFactor::Table { name, alias, .. } => tables.push((
                    name.to_string(),
                    alias.as_ref().map(|a| a.name.value.clone()),
                    rel.span().start,
                )),
                other => {
                    return Err(err(
                        file,
                        text,
                        other.span().start,
                        "FROM and JOIN must name tables (subqueries are not supported)",
                    ))
                }
            }
        }
        let (source, _, src_loc) = tables[0].clone();
        if !self.sources.contains_key(&source) {
            let hint = if self.references.contains_key(&source) {
                " (it is a file table: read the stream first and JOIN the file table to it)"
            } else {
                ""
            };
            return Err(err(
                file,
                text,
                src_loc,
                format!("unknown source table '{source}'{hint}"),
            ));
        }
        let mut references = Vec::new();
        for (t, _, loc) in &tables[1..] {
            if self.sources.contains_key(t) {
                return Err(err(file, text, *loc, format!("'{t}' is a stream: joining two streams is not supported, only file tables (connector = 'file')")));
            }
            if !self.references.contains_key(t) {
                return Err(err(
                    file,
                    text,
                    *loc,
                    format!("unknown table '{t}' (declare it with CREATE TABLE ... WITH (connector = 'file', path = '...csv'))"),
                ));
            }
            references.push(t.clone());
        }
        // Lift `tumble(...)` out of the GROUP BY: the runtime assigns rows to windows and
        // stamps them with `window_start`/`window_end`, which stay as ordinary group keys.
        let scope: Vec<(&str, Option<&str>, &SchemaRef)> = tables
            .iter()
            .map(|(t, a, _)| {
                let schema = match self.sources.get(t) {
                    Some(s) => &s.schema,
                    None => &self.references[t].schema,
                };
                (t.as_str(), a.as_deref(), schema)
            })
            .collect();
        check_columns(file, text, &scope, select)?;
        let GroupByExpr::Expressions(group, _) = &mut select.group_by else {
            return Err(err(
                file,
                text,
                at,
                "GROUP BY ALL is not supported; name a window and keys",
            ));
        };
        let mut window = None;
        let mut rewritten = Vec::new();
        let mut keys = Vec::new();
        for g in group.drain(..) {
            match window_call(&g) {
                Some((fname, args, span)) => {
                    if window.is_some() {
                        return Err(err(
                            file,
                            text,
                            span.start,
                            "only one window function is allowed in GROUP BY",
                        ));
                    }
                    window = Some(parse_window(file, text, &fname, &args, span)?);
                    rewritten.push(Expr::Identifier(Ident::new(WINDOW_START)));
                    rewritten.push(Expr::Identifier(Ident::new(WINDOW_END)));
                }
                None => {
                    keys.push(g.clone());
                    rewritten.push(g)
                }
            }
        }
        *group = rewritten;
        let window = window.ok_or_else(|| {
            err(
                file,
                text,
                select.select_token.0.span.start,
                "a streaming query needs a window: GROUP BY tumble(interval '10 seconds'), <keys>",
            )
        })?;
        let mut session_keys = Vec::new();
        if window.is_session() {
            // Sessions are tracked per key by the runtime, which reads the key columns
            // from the source rows.
            for k in &keys {
                let col = match k {
                    Expr::Identifier(i) => Some(i),
                    Expr::CompoundIdentifier(p) if p.len() == 2 => p.last(),
                    _ => None,
                };
                let schema = &self.sources[&source].schema;
                match col.and_then(|c| {
                    schema
                        .fields()
                        .iter()
                        .find(|f| f.name().eq_ignore_ascii_case(&c.value))
                }) {
                    Some(f) => session_keys.push(f.name().clone()),
                    None => {
                        return Err(err(
                            file,
                            text,
                            k.span().start,
                            format!("session windows are keyed by columns of the source '{source}'; '{k}' is not one"),
                        ))
                    }
                }
            }
        }
        // Output columns that are GROUP BY keys, with the key's column name (`r.device`
        // and `device` are the same key).
        let name_of = |e: &Expr| match e {
            Expr::Identifier(i) => i.value.to_lowercase(),
            Expr::CompoundIdentifier(p) => {
                p.last().map_or(String::new(), |i| i.value.to_lowercase())
            }
            other => other.to_string(),
        };
        let key_names: Vec<String> = keys.iter().map(name_of).collect();
        let mut key_columns: Vec<(String, String)> = Vec::new();
        for item in &select.projection {
            match item {
                SelectItem::UnnamedExpr(e) if key_names.contains(&name_of(e)) => {
                    key_columns.push((name_of(e), name_of(e)))
                }
                SelectItem::ExprWithAlias { expr, alias } if key_names.contains(&name_of(expr)) => {
                    key_columns.push((alias.value.clone(), name_of(expr)))
                }
                _ => {}
            }
        }
        // The keys the source's topic captures, from the coarsest level to the finest.
        let mut topic_keys = Vec::new();
        if let Some(t) = self.sources[&source]
            .topic_template
            .as_deref()
            .and_then(|t| TopicTemplate::parse(t).ok())
        {
            for c in t.captures() {
                if let Some((out, _)) = key_columns.iter().find(|(_, k)| k.eq_ignore_ascii_case(c))
                {
                    topic_keys.push(out.clone());
                }
            }
        }
        let key_columns: Vec<String> = key_columns.into_iter().map(|(o, _)| o).collect();
        for item in &select.projection {
            let e = match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                _ => continue,
            };
            if let Some((_, _, span)) = window_call(e) {
                return Err(err(file, text, span.start, "select window bounds as window_start and window_end, not with the window function"));
            }
        }
        Ok(QueryDecl {
            name,
            sink,
            source,
            references,
            window,
            session_keys,
            key_columns,
            topic_keys,
            select_sql: query.to_string(),
            file: file.to_string(),
            line,
        })
    }
}

use datafusion::sql::sqlparser::ast::Spanned;

/// Every bare column name in the query must exist in the source (or be a window
/// column or a SELECT alias); otherwise point at it and suggest the nearest name.
fn check_columns(
    file: &str,
    text: &str,
    tables: &[(&str, Option<&str>, &SchemaRef)],
    select: &ast::Select,
) -> Result<(), SqlError> {
    use std::ops::ControlFlow;
    let names = |schema: &SchemaRef| -> Vec<String> {
        schema.fields().iter().map(|f| f.name().clone()).collect()
    };
    let mut known: Vec<String> = tables.iter().flat_map(|t| names(t.2)).collect();
    known.push(WINDOW_START.into());
    known.push(WINDOW_END.into());
    for item in &select.projection {
        if let SelectItem::ExprWithAlias { alias, .. } = item {
            known.push(alias.value.clone());
        }
    }
    let table_of = |q: &Ident| {
        tables.iter().find(|(t, a, _)| {
            t.eq_ignore_ascii_case(&q.value) || a.is_some_and(|a| a.eq_ignore_ascii_case(&q.value))
        })
    };
    let src_name = tables[0].0;
    let mut unknown: Option<(Ident, String, Vec<String>)> = None;
    let mut visit = |e: &Expr| {
        let (id, table, candidates) = match e {
            Expr::Identifier(i) => (i, src_name.to_string(), known.clone()),
            Expr::CompoundIdentifier(parts) if parts.len() == 2 => match table_of(&parts[0]) {
                Some((t, _, schema)) => {
                    let mut c = names(schema);
                    if *t == src_name {
                        c.extend([WINDOW_START.to_string(), WINDOW_END.to_string()]);
                    }
                    (&parts[1], t.to_string(), c)
                }
                None => return ControlFlow::Continue(()),
            },
            _ => return ControlFlow::Continue(()),
        };
        let found = candidates.iter().any(|k| {
            if id.quote_style.is_some() {
                *k == id.value
            } else {
                k.eq_ignore_ascii_case(&id.value)
            }
        });
        if found {
            ControlFlow::Continue(())
        } else {
            unknown = Some((id.clone(), table, candidates));
            ControlFlow::Break(())
        }
    };
    let mut exprs: Vec<&Expr> = select
        .projection
        .iter()
        .filter_map(|it| match it {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => Some(e),
            _ => None,
        })
        .collect();
    exprs.extend(select.selection.iter());
    exprs.extend(select.having.iter());
    if let GroupByExpr::Expressions(g, _) = &select.group_by {
        exprs.extend(g.iter().filter(|e| window_call(e).is_none()));
    }
    for e in exprs {
        if ast::visit_expressions(e, &mut visit).is_break() {
            break;
        }
    }
    let Some((id, table, candidates)) = unknown else {
        return Ok(());
    };
    let nearest = crate::error::did_you_mean(&id.value, &candidates);
    let what = if tables.len() > 1 && table == src_name {
        format!(
            "in '{}'",
            tables.iter().map(|t| t.0).collect::<Vec<_>>().join("', '")
        )
    } else if tables.iter().skip(1).any(|t| t.0 == table) {
        format!("in table '{table}'")
    } else {
        format!("in source '{table}'")
    };
    Err(SqlError::at(
        file,
        text,
        id.span.start.line,
        id.span.start.column,
        id.value.chars().count(),
        format!("unknown column '{}' {what}{nearest}", id.value),
    ))
}

/// Option `key` parsed as a topic template, if given; a bad one is an error at the option.
fn topic_template(
    file: &str,
    text: &str,
    map: &BTreeMap<String, (String, Location)>,
    key: &str,
) -> Result<Option<TopicTemplate>, SqlError> {
    let Some((t, at)) = map.get(key) else {
        return Ok(None);
    };
    TopicTemplate::parse(t)
        .map(Some)
        .map_err(|e| err(file, text, *at, format!("{key}: {e}")))
}

/// Options every source takes, whatever its connector: how its messages are read and
/// how its watermark moves.
const SOURCE_OPTIONS: &[&str] = &[
    "connector",
    "format",
    "topic",
    "topic_template",
    "max_future",
    "watermark_key",
    "max_skew",
    "idle_timeout",
    "late_topic",
];

/// `a` or `an` before a connector's name, as it is read aloud ("an mqtt source").
fn article(word: &str) -> &'static str {
    // A name without vowels is an acronym, read letter by letter.
    let spelled = !word.contains(['a', 'e', 'i', 'o', 'u']);
    let first = word.chars().next().unwrap_or('x');
    let vowel_sound = if spelled {
        "aefhilmnorsx".contains(first)
    } else {
        "aeiou".contains(first)
    };
    if vowel_sound {
        "an"
    } else {
        "a"
    }
}

/// Options every sink takes, whatever its connector: where it publishes, then its
/// alert lifecycle.
const SINK_OPTIONS: &[&str] = &[
    "connector",
    "format",
    "topic",
    "device_column",
    "score",
    "warning_at",
    "alarm_at",
    "clear_below",
    "raise_after",
    "clear_after",
    "cooldown",
    "severity",
    "detector",
    "features",
    "warmup",
    "horizon",
    "false_alerts",
    "season",
];

/// The lifecycle part of [`SINK_OPTIONS`].
const LIFECYCLE_OPTIONS: &[&str] = SINK_OPTIONS.split_at(4).1;

/// The sink's lifecycle options, if `warning_at` is given or the threshold comes from
/// `false_alerts` (`rated`: an online detector, or a surprise score), once the query's
/// window is known (NaN until then).
fn lifecycle_options(
    file: &str,
    text: &str,
    map: &BTreeMap<String, (String, Location)>,
    rated: bool,
) -> Result<Option<LifecycleSpec>, SqlError> {
    let online = map.contains_key("detector");
    if !map.contains_key("warning_at") && !rated {
        if let Some(k) = LIFECYCLE_OPTIONS
            .iter()
            .filter(|k| !crate::detector::DETECTOR_OPTIONS.contains(k))
            .find(|k| map.contains_key(**k))
        {
            return Err(err(
                file,
                text,
                map[*k].1,
                format!("'{k}' belongs to an alert lifecycle: add warning_at = '<score>'"),
            ));
        }
        return Ok(None);
    }
    let num = |k: &str| -> Result<Option<f64>, SqlError> {
        match map.get(k) {
            None => Ok(None),
            Some((v, at)) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| err(file, text, *at, format!("{k} must be a number, got '{v}'"))),
        }
    };
    let count = |k: &str, default: u32| -> Result<u32, SqlError> {
        match map.get(k) {
            None => Ok(default),
            Some((v, at)) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    err(
                        file,
                        text,
                        *at,
                        format!("{k} must be a whole number of windows, at least 1, got '{v}'"),
                    )
                }),
        }
    };
    let warning_at = num("warning_at")?.unwrap_or(f64::NAN);
    let alarm_at = num("alarm_at")?;
    let clear_below = num("clear_below")?.unwrap_or(warning_at);
    if map.contains_key("score") && online {
        return Err(err(
            file,
            text,
            map["score"].1,
            "the online detector computes each window's score itself: leave out score = '...'",
        ));
    }
    if clear_below > warning_at {
        return Err(err(
            file,
            text,
            map["clear_below"].1,
            format!("clear_below ({clear_below}) must not exceed warning_at ({warning_at})"),
        ));
    }
    if let Some(a) = alarm_at.filter(|a| *a < warning_at) {
        return Err(err(
            file,
            text,
            map["alarm_at"].1,
            format!("alarm_at ({a}) must not be below warning_at ({warning_at})"),
        ));
    }
    let cooldown = match map.get("cooldown") {
        None => 0,
        Some((v, at)) => match parse_interval(v, None) {
            Ok(ms) if ms >= 0 => ms,
            Ok(_) => return Err(err(file, text, *at, "cooldown cannot be negative")),
            Err(e) => return Err(err(file, text, *at, e.to_string())),
        },
    };
    Ok(Some(LifecycleSpec {
        score_column: map
            .get("score")
            .map(|(v, _)| v.clone())
            .unwrap_or_else(|| "score".into()),
        warning_at,
        alarm_at,
        clear_below,
        raise_after: count("raise_after", 2)?,
        clear_after: count("clear_after", 3)?,
        cooldown,
        severity: map
            .get("severity")
            .map(|(v, _)| v.clone())
            .unwrap_or_else(|| "warning".into()),
    }))
}

fn statement_start(s: &Statement) -> Location {
    s.span().start
}

fn err(file: &str, text: &str, loc: Location, msg: impl Into<String>) -> SqlError {
    SqlError::at(file, text, loc.line, loc.column, 1, msg)
}

fn map_type(t: &ast::DataType) -> Option<DataType> {
    use ast::DataType as T;
    Some(match t {
        T::Text | T::Varchar(_) | T::String(_) | T::Char(_) | T::CharVarying(_) => DataType::Utf8,
        T::Double(_) | T::DoublePrecision | T::Float(_) | T::Real | T::Float64 | T::Float8 => {
            DataType::Float64
        }
        T::BigInt(_) | T::Int(_) | T::Integer(_) | T::Int64 | T::SmallInt(_) => DataType::Int64,
        T::Boolean | T::Bool => DataType::Boolean,
        T::Timestamp(_, _) | T::Datetime(_) => DataType::Timestamp(TimeUnit::Millisecond, None),
        _ => return None,
    })
}

/// The query-file name of a column type (the reverse of [`map_type`]).
pub(crate) fn sql_type(t: &DataType) -> String {
    match t {
        DataType::Utf8 => "TEXT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Timestamp(..) => "TIMESTAMP".into(),
        other => other.to_string(),
    }
}

/// `tumble(...)`/`hop(...)`/`session(...)` as a function call: name, args, span.
fn window_call(e: &Expr) -> Option<(String, Vec<Expr>, Span)> {
    let Expr::Function(f) = e else { return None };
    let name = f.name.to_string().to_ascii_lowercase();
    if !matches!(name.as_str(), "tumble" | "hop" | "session") {
        return None;
    }
    let args = match &f.args {
        FunctionArguments::List(l) => l
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                _ => None,
            })
            .collect(),
        _ => vec![],
    };
    Some((name, args, e.span()))
}

fn parse_window(
    file: &str,
    text: &str,
    fname: &str,
    args: &[Expr],
    span: Span,
) -> Result<WindowSpec, SqlError> {
    match fname {
        "tumble" => {
            let [arg] = args else {
                return Err(err(
                    file,
                    text,
                    span.start,
                    "tumble takes one argument: tumble(interval '10 seconds')",
                ));
            };
            let ms = interval_ms(arg).map_err(|m| err(file, text, arg.span().start, m))?;
            WindowSpec::tumble(ms).map_err(|e| err(file, text, arg.span().start, e.to_string()))
        }
        "hop" => {
            let [slide, width] = args else {
                return Err(err(file, text, span.start, "hop takes two arguments: hop(interval '10 seconds', interval '1 minute') (slide, then width)"));
            };
            let s = interval_ms(slide).map_err(|m| err(file, text, slide.span().start, m))?;
            let w = interval_ms(width).map_err(|m| err(file, text, width.span().start, m))?;
            WindowSpec::hop(s, w).map_err(|e| err(file, text, width.span().start, e.to_string()))
        }
        "session" => {
            let (gap, max) = match args {
                [gap] => (gap, None),
                [gap, max] => (gap, Some(max)),
                _ => return Err(err(file, text, span.start, "session takes one or two arguments: session(interval '5 minutes') or session(gap, maximum length)")),
            };
            let g = interval_ms(gap).map_err(|m| err(file, text, gap.span().start, m))?;
            let m = match max {
                Some(m) => Some(interval_ms(m).map_err(|e| err(file, text, m.span().start, e))?),
                None => None,
            };
            WindowSpec::session(g, m).map_err(|e| err(file, text, gap.span().start, e.to_string()))
        }
        other => Err(err(
            file,
            text,
            span.start,
            format!("unknown window function '{other}' (use tumble, hop or session)"),
        )),
    }
}

/// Milliseconds of an `INTERVAL '10 seconds'` / `INTERVAL '5' SECOND` expression.
pub(crate) fn interval_ms(e: &Expr) -> Result<Millis, String> {
    let Expr::Interval(iv) = e else {
        return Err(format!(
            "expected an interval such as interval '10 seconds', got {e}"
        ));
    };
    let text = match iv.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => s.clone(),
            Value::Number(n, _) => n.clone(),
            other => other.to_string(),
        },
        other => other.to_string(),
    };
    let unit = iv.leading_field.as_ref().map(|f| f.to_string());
    parse_interval(&text, unit.as_deref()).map_err(|e| e.to_string())
}

/// A `WATERMARK FOR col AS expr` clause cut out of a column list before parsing.
#[derive(Debug)]
struct WatermarkClause {
    column: String,
    delay: Millis,
    loc: Location,
    /// Line of the `CREATE` that precedes it, and the clause's own line: it belongs to
    /// the CREATE TABLE whose name is on a line in between.
    table_line: u64,
    before_line: u64,
}

/// sqlparser has no `WATERMARK FOR`; blank it out (keeping every position) and parse
/// it separately, so errors elsewhere still point at the right line and column.
fn extract_watermarks(file: &str, text: &str) -> Result<(String, Vec<WatermarkClause>), SqlError> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|e| SqlError::from_parser(file, text, &e))?;
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let offset = |l: Location| -> usize {
        let ls = line_starts[(l.line as usize)
            .saturating_sub(1)
            .min(line_starts.len() - 1)];
        text[ls..]
            .char_indices()
            .nth(l.column.saturating_sub(1) as usize)
            .map(|(i, _)| ls + i)
            .unwrap_or(text.len())
    };
    let significant: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
        .collect();
    let word = |k: usize, w: &str| matches!(&tokens[significant[k]].token, Token::Word(x) if x.value.eq_ignore_ascii_case(w) && x.quote_style.is_none());
    let mut out = Vec::new();
    let mut bytes = text.as_bytes().to_vec();
    let mut last_create_line = 0;
    for k in 0..significant.len() {
        if word(k, "CREATE") {
            last_create_line = tokens[significant[k]].span.start.line;
        }
        if !(word(k, "WATERMARK") && k + 1 < significant.len() && word(k + 1, "FOR")) {
            continue;
        }
        let wm_loc = tokens[significant[k]].span.start;
        let bad = |m: &str| err(file, text, wm_loc, m.to_string());
        let col = match significant.get(k + 2).map(|&i| &tokens[i].token) {
            Some(Token::Word(w)) => w.value.clone(),
            _ => return Err(bad("expected a column name after WATERMARK FOR")),
        };
        if !(k + 3 < significant.len() && word(k + 3, "AS")) {
            return Err(bad(
                "expected WATERMARK FOR <column> AS <column> - INTERVAL '...'",
            ));
        }
        // The expression runs to the comma or closing parenthesis at depth zero.
        let mut depth = 0i32;
        let mut end = k + 4;
        while end < significant.len() {
            match tokens[significant[end]].token {
                Token::LParen => depth += 1,
                Token::RParen if depth == 0 => break,
                Token::RParen => depth -= 1,
                Token::Comma if depth == 0 => break,
                _ => {}
            }
            end += 1;
        }
        if end == k + 4 || end >= significant.len() {
            return Err(bad(
                "WATERMARK FOR ... AS needs an expression inside the column list",
            ));
        }
        let expr_start = offset(tokens[significant[k + 4]].span.start);
        let expr_end = offset(tokens[significant[end]].span.start);
        let expr_text = &text[expr_start..expr_end];
        let expr = Parser::new(&dialect)
            .try_with_sql(expr_text)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| {
                bad(&format!(
                    "cannot read the watermark expression '{}': {e}",
                    expr_text.trim()
                ))
            })?;
        let delay = match &expr {
            Expr::Identifier(i) if i.value == col => 0,
            Expr::BinaryOp {
                left,
                op: ast::BinaryOperator::Minus,
                right,
            } if matches!(left.as_ref(), Expr::Identifier(i) if i.value == col) => {
                interval_ms(right).map_err(|m| bad(&m))?
            }
            _ => {
                return Err(bad(&format!(
                    "the watermark must be '{col}' or '{col} - INTERVAL ...', got '{}'",
                    expr_text.trim()
                )))
            }
        };
        if delay < 0 {
            return Err(bad("the watermark delay cannot be negative"));
        }
        // Blank from the preceding comma (or the clause itself) to the end of the expression.
        let mut start = offset(wm_loc);
        if k > 0 && matches!(tokens[significant[k - 1]].token, Token::Comma) {
            start = offset(tokens[significant[k - 1]].span.start);
        }
        for b in &mut bytes[start..expr_end] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
        out.push(WatermarkClause {
            column: col,
            delay,
            loc: wm_loc,
            table_line: last_create_line,
            before_line: wm_loc.line,
        });
    }
    // Only ASCII bytes were replaced by spaces on whole-token boundaries... except
    // multi-byte characters inside the blanked range, which become several spaces.
    let cleaned = String::from_utf8_lossy(&bytes).into_owned();
    Ok((cleaned, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const FILE: &str = "
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
}

#[cfg(test)]
mod column_tests {
    use super::*;

    /// The parser tests' file with a topic template that matches its columns.
    fn file_ok() -> String {
        super::tests::FILE.replace(
            "'plant/{site}/{line}/{device}/telemetry'",
            "'plant/+/+/{device}/telemetry'",
        )
    }

    #[test]
    fn unknown_columns_are_underlined_with_a_suggestion() {
        let typo = file_ok().replace("avg(vibration) AS v", "avg(vibraton) AS v");
        let e = QuerySet::default().add_file("q.sql", &typo).unwrap_err();
        assert_eq!(
            e.message,
            "unknown column 'vibraton' in source 'pumps'; did you mean 'vibration'?"
        );
        assert_eq!((e.line, e.column), (9, 46));
        assert!(
            e.to_string()
                .ends_with(&format!("      | {}^^^^^^^^", " ".repeat(45))),
            "{e}"
        );
        // Aliases, window columns and qualified names resolve; a wholly unknown name gets no suggestion.
        let ok = file_ok().replace(
            "HAVING avg(vibration) > 1",
            "HAVING v > 1 AND max(pumps.vibration) > 0 AND window_end > window_start",
        );
        QuerySet::default().add_file("q.sql", &ok).unwrap();
        let e = QuerySet::default()
            .add_file(
                "q.sql",
                &file_ok().replace("HAVING avg(vibration)", "HAVING avg(zzz)"),
            )
            .unwrap_err();
        assert_eq!(e.message, "unknown column 'zzz' in source 'pumps'");
    }
}
