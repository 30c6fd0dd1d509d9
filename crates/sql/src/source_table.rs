//! A source table (`CREATE TABLE` with columns): its schema, topics and watermark.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::sql::sqlparser::ast::ColumnOption;
use forewarn_connect::ConnectorConfig;
use forewarn_core::{parse_interval, Millis, WatermarkSpec};

use crate::error::err;
use crate::table::{map_type, topic_template, Table};
use crate::SqlErrorKind;
use crate::{
    QuerySet, SourceDecl, SqlError, ARRIVAL_TIME, DEFAULT_MAX_SKEW, WINDOW_END, WINDOW_START,
};

impl QuerySet {
    /// Adds `t` as a source, read from `topic` through the connector `config` (`None`:
    /// it has no topic, and receives only what is pushed by its name).
    pub(crate) fn add_source(
        &mut self,
        t: &Table,
        topic: Option<String>,
        format: String,
        config: ConnectorConfig,
    ) -> Result<(), SqlError> {
        let &Table {
            file,
            text,
            loc,
            name,
            wm,
            ref map,
            ..
        } = t;
        let get = |k: &str| map.get(k).map(|(v, _)| v.clone());
        let template = get("topic_template");
        // The broker would refuse the subscription, and the source would stay empty.
        if let Some(why) = topic.as_deref().and_then(forewarn_formats::filter_problem) {
            return Err(err(
                file,
                text,
                map["topic"].1,
                format!("topic '{}' {why}", topic.unwrap_or_default()),
            )
            .with_kind(SqlErrorKind::Option));
        }
        let topic = topic.unwrap_or_default();
        let captures: Vec<String> = match topic_template(file, text, map, "topic_template")? {
            Some(t) => {
                // A template the subscription never delivers a message for would leave
                // the source silently empty.
                if let Some(why) = t.mismatch_with_filter(&topic) {
                    return Err(err(
                        file,
                        text,
                        map["topic_template"].1,
                        format!("topic_template '{}' {why}", t.as_str()),
                    )
                    .with_kind(SqlErrorKind::Option));
                }
                t.captures().map(str::to_string).collect()
            }
            None => Vec::new(),
        };
        topic_template(file, text, map, "late_topic")?;
        let fields = source_fields(t, &captures)?;
        let processing_time = wm.is_none();
        let interval = |k: &str| -> Result<Option<Millis>, SqlError> {
            match map.get(k) {
                None => Ok(None),
                Some((v, at)) => match parse_interval(v, None) {
                    Ok(ms) if ms > 0 => Ok(Some(ms)),
                    Ok(_) => Err(err(file, text, *at, format!("{k} must be positive"))
                        .with_kind(SqlErrorKind::Option)),
                    Err(e) => {
                        Err(err(file, text, *at, e.to_string()).with_kind(SqlErrorKind::Option))
                    }
                },
            }
        };
        let max_future = interval("max_future")?;
        let idle_timeout = interval("idle_timeout")?;
        let max_skew = interval("max_skew")?;
        let max_samples = match map.get("max_samples") {
            None => forewarn_formats::DEFAULT_MAX_SAMPLES,
            Some((v, at)) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(err(
                        file,
                        text,
                        *at,
                        format!("max_samples must be a positive whole number, got '{v}'"),
                    )
                    .with_kind(SqlErrorKind::Option))
                }
            },
        };
        let watermark_key = get("watermark_key");
        if let Some(k) = &watermark_key {
            if !fields.iter().any(|f| f.name() == k) {
                let at = map["watermark_key"].1;
                return Err(err(
                    file,
                    text,
                    at,
                    format!("watermark_key names column '{k}', which '{name}' does not declare"),
                )
                .with_kind(SqlErrorKind::UnknownColumn));
            }
        }
        if max_skew.is_some() && watermark_key.is_none() {
            let at = map["max_skew"].1;
            return Err(err(
                file,
                text,
                at,
                "max_skew applies to per-key watermarks: add watermark_key = '<column>'",
            )
            .with_kind(SqlErrorKind::Option));
        }
        if processing_time && watermark_key.is_some() {
            let at = map["watermark_key"].1;
            return Err(err(
                file,
                text,
                at,
                "watermark_key needs event time: add WATERMARK FOR <column> AS ...",
            )
            .with_kind(SqlErrorKind::Window));
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
                max_samples,
            },
        );
        Ok(())
    }
}

/// The source's columns, event time included: those `WATERMARK FOR` names and the topic
/// template captures are non-nullable, and without `WATERMARK FOR` the engine adds
/// [`ARRIVAL_TIME`].
fn source_fields(t: &Table, captures: &[String]) -> Result<Vec<Field>, SqlError> {
    let &Table {
        file,
        text,
        name,
        columns,
        wm,
        ref map,
        ..
    } = t;
    let mut fields = Vec::new();
    for c in columns {
        let cname = c.name.value.clone();
        if cname == WINDOW_START || cname == WINDOW_END {
            return Err(err(
                file,
                text,
                c.name.span.start,
                format!("'{cname}' is reserved for the window bounds"),
            )
            .with_kind(SqlErrorKind::Invalid));
        }
        let dt = map_type(&c.data_type).ok_or_else(|| {
            err(file, text, c.name.span.start, format!("column '{cname}' has type {}, which is not supported (use TEXT, DOUBLE, BIGINT, BOOLEAN, TIMESTAMP or DOUBLE[])", c.data_type)).with_kind(SqlErrorKind::Type)
        })?;
        let not_null = c
            .options
            .iter()
            .any(|o| matches!(o.option, ColumnOption::NotNull));
        let required =
            not_null || wm.is_some_and(|w| cname == w.column) || captures.contains(&cname);
        fields.push(Field::new(&cname, dt, !required));
    }
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
            )
            .with_kind(SqlErrorKind::Type));
        }
    } else {
        // Processing time: the engine stamps each reading with its arrival.
        if let Some(c) = columns.iter().find(|c| c.name.value == ARRIVAL_TIME) {
            return Err(err(file, text, c.name.span.start, format!("'{ARRIVAL_TIME}' is reserved for the arrival time of a source without WATERMARK FOR")));
        }
        fields.push(Field::new(ARRIVAL_TIME, crate::plan::time_type(), false));
    }
    for c in captures {
        if !fields.iter().any(|f| f.name() == c) {
            let at = map["topic_template"].1;
            return Err(err(
                file,
                text,
                at,
                format!("topic_template captures '{{{c}}}', but '{name}' has no column '{c}'"),
            )
            .with_kind(SqlErrorKind::UnknownColumn));
        }
    }
    Ok(fields)
}
