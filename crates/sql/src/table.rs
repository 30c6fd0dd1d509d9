//! `CREATE TABLE ... WITH (...)`: the options every table has, and the connector and
//! role (source, sink or reference table) they give it. Each role's own options and
//! checks are in `source_table.rs`, `sink_table.rs` and `reference_table.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use datafusion::sql::sqlparser::ast::{self, CreateTableOptions, Expr, SqlOption, Value};
use datafusion::sql::sqlparser::tokenizer::Location;
use forewarn_connect::{Connector, ConnectorConfig, Options, Pos, Role, TableContext};
use forewarn_formats::TopicTemplate;

use crate::error::err;
use crate::watermark::WatermarkClause;
use crate::SqlErrorKind;
use crate::{QuerySet, SqlError};

/// A table's options by lower-case key: the value, and where the key is.
pub(crate) type OptionMap = BTreeMap<String, (String, Location)>;

/// Options every source takes, whatever its connector: how its messages are read and
/// how its watermark moves.
pub(crate) const SOURCE_OPTIONS: &[&str] = &[
    "connector",
    "format",
    "topic",
    "topic_template",
    "max_future",
    "watermark_key",
    "max_skew",
    "idle_timeout",
    "late_topic",
    "max_samples",
];

/// Options every sink takes, whatever its connector: where it publishes, then its
/// alert lifecycle.
pub(crate) const SINK_OPTIONS: &[&str] = &[
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
    "offline_after",
    "detector",
    "features",
    "warmup",
    "horizon",
    "false_alerts",
    "season",
];

/// One `CREATE TABLE`, as each role's checks read it.
pub(crate) struct Table<'a> {
    /// The query file's name and text, for errors.
    pub(crate) file: &'a str,
    pub(crate) text: &'a str,
    /// Where the table's name is.
    pub(crate) loc: Location,
    pub(crate) name: &'a str,
    pub(crate) columns: &'a [ast::ColumnDef],
    /// Its `WATERMARK FOR`, cut out of the column list before parsing.
    pub(crate) wm: Option<&'a WatermarkClause>,
    pub(crate) map: OptionMap,
}

impl Table<'_> {
    /// The connector's settings from the table's options; its errors point at the
    /// option they are about (or at the table).
    pub(crate) fn configure(
        &self,
        connector: &dyn Connector,
        context: &TableContext<'_>,
        options: &Options,
    ) -> Result<ConnectorConfig, SqlError> {
        connector.configure(context, options).map_err(|e| {
            let at = e
                .key
                .as_ref()
                .and_then(|k| self.map.get(k))
                .map(|(_, at)| *at);
            err(self.file, self.text, at.unwrap_or(self.loc), e.message)
                .with_kind(SqlErrorKind::Option)
        })
    }
}

impl QuerySet {
    /// Adds the `CREATE TABLE` `name` (at `loc`). Its connector decides whether it is a
    /// reference table; otherwise it is a source if it declares columns, else a sink.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_table(
        &mut self,
        file: &str,
        text: &str,
        loc: Location,
        name: &str,
        columns: &[ast::ColumnDef],
        options: &CreateTableOptions,
        wm: Option<&WatermarkClause>,
    ) -> Result<(), SqlError> {
        let table = Table {
            file,
            text,
            loc,
            name,
            columns,
            wm,
            map: option_map(file, text, loc, options)?,
        };
        let map = &table.map;
        let (connector_name, connector, role) = self.connector_of(&table)?;
        let get = |k: &str| map.get(k).map(|(v, _)| v.clone());
        let mut options = Options::default();
        for (k, (v, at)) in map {
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
        // As the schema names them: unquoted identifiers in lower case.
        let columns: Vec<String> = table
            .columns
            .iter()
            .map(|c| match c.name.quote_style {
                Some(_) => c.name.value.clone(),
                None => c.name.value.to_lowercase(),
            })
            .collect();
        let context = TableContext {
            name,
            role,
            event_time: wm.is_some(),
            dir: &dir,
            columns: &columns,
        };
        if role == Role::Table {
            return self.add_reference(&table, &*connector, &context, &options);
        }
        let format = get("format").unwrap_or_else(|| "json".into());
        if format != "json" {
            let at = map["format"].1;
            return Err(err(
                file,
                text,
                at,
                format!("unknown format '{format}' (supported: 'json')"),
            )
            .with_kind(SqlErrorKind::Option));
        }
        // A table without a topic (connector = 'channel'): a source is reached by its
        // name only, a sink's outputs are labelled with its name.
        // (`connector_of` refused `topic` and `topic_template` for it.)
        let topic = if connector.topic_refusal(role).is_some() {
            (role == Role::Sink).then(|| name.to_string())
        } else {
            Some(match get("topic") {
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
                    )
                    .with_kind(SqlErrorKind::Option))
                }
            })
        };
        let config = table.configure(&*connector, &context, &options)?;
        if columns.is_empty() {
            let topic = topic.expect("a sink's topic is its name when it has none");
            return self.add_sink(&table, topic, format, config);
        }
        self.add_source(&table, topic, format, config)
    }

    /// The connector `t` names, and the table's role; every option must be one that
    /// role takes whatever the connector, or one of the connector's own.
    fn connector_of(&self, t: &Table) -> Result<(String, Arc<dyn Connector>, Role), SqlError> {
        let &Table {
            file,
            text,
            loc,
            name,
            columns,
            ref map,
            ..
        } = t;
        let get = |k: &str| map.get(k).map(|(v, _)| v.clone());
        let connector_name = get("connector").ok_or_else(|| {
            err(
                file,
                text,
                loc,
                format!("table '{name}' needs WITH (connector = 'mqtt', ...)"),
            )
            .with_kind(SqlErrorKind::Option)
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
            )
            .with_kind(SqlErrorKind::UnknownConnector));
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
        let mut allowed: Vec<&str> = common.iter().chain(own).copied().collect();
        if let Some(why) = connector.topic_refusal(role) {
            const TOPIC: [&str; 2] = ["topic", "topic_template"];
            if let Some((k, (_, at))) = map.iter().find(|(k, _)| TOPIC.contains(&k.as_str())) {
                return Err(err(
                    file,
                    text,
                    *at,
                    format!(
                        "'{k}' does not apply to {} {connector_name} {}: {why}",
                        article(&connector_name),
                        role.as_str()
                    ),
                )
                .with_kind(SqlErrorKind::UnknownOption));
            }
            allowed.retain(|k| !TOPIC.contains(k));
        }
        for (k, (_, at)) in map {
            if allowed.contains(&k.as_str()) {
                continue;
            }
            if let Some(other) = self.connectors.owner_of(k, role) {
                return Err(err(
                    file,
                    text,
                    *at,
                    format!("'{k}' is an option of connector = '{other}'"),
                )
                .with_kind(SqlErrorKind::UnknownOption));
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
            )
            .with_kind(SqlErrorKind::UnknownOption));
        }
        Ok((connector_name, connector, role))
    }
}

/// The `WITH (...)` options by lower-case key, each given once.
fn option_map(
    file: &str,
    text: &str,
    loc: Location,
    options: &CreateTableOptions,
) -> Result<OptionMap, SqlError> {
    let opts = match options {
        CreateTableOptions::With(o) | CreateTableOptions::Options(o) => o.as_slice(),
        CreateTableOptions::None => &[],
        _ => {
            return Err(err(
                file,
                text,
                loc,
                "table options must be written WITH (key = 'value', ...)",
            )
            .with_kind(SqlErrorKind::Syntax))
        }
    };
    let mut map = BTreeMap::new();
    for o in opts {
        match o {
            SqlOption::KeyValue { key, value } => {
                let v = match value {
                    Expr::Value(v) => match &v.value {
                        Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
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
                    )
                    .with_kind(SqlErrorKind::Duplicate));
                }
                map.insert(k, (v, key.span.start));
            }
            _ => {
                return Err(err(
                    file,
                    text,
                    loc,
                    format!("option '{o}' must be key = 'value'"),
                )
                .with_kind(SqlErrorKind::Syntax))
            }
        }
    }
    Ok(map)
}

/// Option `key` parsed as a topic template, if given; a bad one is an error at the option.
pub(crate) fn topic_template(
    file: &str,
    text: &str,
    map: &OptionMap,
    key: &str,
) -> Result<Option<TopicTemplate>, SqlError> {
    let Some((t, at)) = map.get(key) else {
        return Ok(None);
    };
    TopicTemplate::parse(t)
        .map(Some)
        .map_err(|e| err(file, text, *at, format!("{key}: {e}")).with_kind(SqlErrorKind::Option))
}

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

/// The Arrow type of a declared column, if it is one a table may have.
pub(crate) fn map_type(t: &ast::DataType) -> Option<DataType> {
    use ast::DataType as T;
    Some(match t {
        T::Text | T::Varchar(_) | T::String(_) | T::Char(_) | T::CharVarying(_) => DataType::Utf8,
        T::Double(_) | T::DoublePrecision | T::Float(_) | T::Real | T::Float64 | T::Float8 => {
            DataType::Float64
        }
        T::BigInt(_) | T::Int(_) | T::Integer(_) | T::Int64 | T::SmallInt(_) => DataType::Int64,
        T::Boolean | T::Bool => DataType::Boolean,
        T::Timestamp(_, _) | T::Datetime(_) => DataType::Timestamp(TimeUnit::Millisecond, None),
        // A waveform: `DOUBLE[]` (or `ARRAY<DOUBLE>`), samples as float64.
        T::Array(
            ast::ArrayElemTypeDef::SquareBracket(e, None) | ast::ArrayElemTypeDef::AngleBracket(e),
        ) if map_type(e) == Some(DataType::Float64) => {
            DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)))
        }
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
        DataType::List(_) => "DOUBLE[]".into(),
        other => other.to_string(),
    }
}
