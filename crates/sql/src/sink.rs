//! A sink against the rows a query writes to it: which column names the device, and
//! whether the columns its options name exist. Checked once the query is planned, since
//! only the plan knows the result columns.

use forewarn_formats::TopicTemplate;

use crate::error::did_you_mean;
use crate::table::sql_type;
use crate::SqlErrorKind;
use crate::{CompiledQuery, OnlineBinding, OnlineDecl, SinkDecl, SqlError};
use forewarn_alerts::LifecycleSpec;

/// Checks `sink` against the result columns of `query`, which writes to it, and returns
/// the column naming each row's device.
///
/// The device is `device_column = '...'` when given; otherwise `device` when the topic
/// captures `{device}` or the query selects a `device` column; otherwise the topic's only
/// capture. A topic with several captures, none of them `device`, is ambiguous: an error
/// at the topic. So are columns the options name that the query does not select: a topic
/// capture (its level would be `_`), `device_column`, and the lifecycle's `score` (no
/// alert could ever fire). `text` is the file the sink was declared in.
pub fn bind_sink(
    sink: &SinkDecl,
    query: &CompiledQuery,
    text: &str,
) -> Result<SinkBinding, SqlError> {
    let columns: Vec<&str> = query
        .output_schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    let err = |option: &str, message: String| {
        let (line, column) = sink.option_at.get(option).copied().unwrap_or((0, 0));
        // Every problem here is one of the sink's options (or the topic it renders).
        SqlError::at(&sink.file, text, line, column, option.len(), message)
            .with_kind(SqlErrorKind::Option)
    };
    let listed = format!("(its columns: {})", columns.join(", "));
    let unknown = |option: &str, name: &str| {
        err(
            option,
            format!(
                "{option} = '{name}' names no output column of query '{}' {listed}{}",
                query.name,
                did_you_mean(name, &columns)
            ),
        )
        .with_kind(SqlErrorKind::UnknownColumn)
    };
    let selects = |name: &str| columns.contains(&name);
    let topic = TopicTemplate::parse(&sink.topic).map_err(|e| err("topic", e.to_string()))?;
    let captures: Vec<&str> = topic.captures().collect();
    if let Some(c) = captures.iter().find(|c| !selects(c)) {
        return Err(err(
            "topic",
            format!(
                "topic captures '{{{c}}}', but query '{}' selects no column '{c}' {listed}",
                query.name
            ),
        )
        .with_kind(SqlErrorKind::UnknownColumn));
    }
    let device = match &sink.device_column {
        Some(d) if selects(d) => d.clone(),
        Some(d) => return Err(unknown("device_column", d)),
        None if captures.contains(&"device") || selects("device") => "device".into(),
        None => match captures.as_slice() {
            // Nothing names a device: alerts carry an empty one.
            [] => "device".into(),
            [only] => only.to_string(),
            [init @ .., last] => {
                let init: Vec<String> = init.iter().map(|c| format!("'{{{c}}}'")).collect();
                return Err(err(
                    "topic",
                    format!(
                        "topic '{}' captures {} and '{{{last}}}', and query '{}' selects no column 'device': say which names the device with device_column = '<column>'",
                        sink.topic,
                        init.join(", "),
                        query.name
                    ),
                ));
            }
        },
    };
    // A device id is text or a whole number; a measurement would make every window
    // a new "device".
    if let Some((_, f)) = query.output_schema.fields().find(&device) {
        use datafusion::arrow::datatypes::DataType as T;
        if !matches!(
            f.data_type(),
            T::Utf8 | T::LargeUtf8 | T::Utf8View | T::Int64 | T::Int32 | T::UInt64 | T::UInt32
        ) {
            let option = if sink.option_at.contains_key("device_column") {
                "device_column"
            } else {
                "topic"
            };
            return Err(err(
                option,
                format!(
                    "the device column '{device}' of query '{}' is {}: a device id is TEXT or BIGINT",
                    query.name,
                    sql_type(f.data_type())
                ),
            ).with_kind(SqlErrorKind::Type));
        }
    }
    if let Some(spec) = &sink.lifecycle {
        // One state machine per device: if the device is not one of the keys the rows
        // are grouped by, each window feeds it several rows (e.g. every chiller of a
        // site into the site's), and one chiller's fault drowns among the others.
        let keys = &query.key_columns;
        let option = if sink.option_at.contains_key("device_column") {
            "device_column"
        } else {
            "topic"
        };
        // Keyed by a coarser level of the source's topic than another key (the site,
        // while rows are per chiller): as bad, though the device is a key.
        if let Some(pos) = query
            .topic_keys
            .iter()
            .position(|k| k.eq_ignore_ascii_case(&device))
        {
            if let Some(finer) = query.topic_keys.get(pos + 1..).and_then(|f| f.last()) {
                return Err(err(
                    option,
                    format!(
                        "the lifecycle keeps one state machine per device, keyed by column '{device}', but query '{}' also groups by '{finer}', a finer level of its source's topic: each window would feed every '{finer}' of a '{device}' to one state machine. Key it by '{finer}' (device_column = '{finer}')",
                        query.name
                    ),
                ));
            }
        }
        if !keys.is_empty() && !keys.iter().any(|k| k.eq_ignore_ascii_case(&device)) {
            return Err(err(
                option,
                format!(
                    "the lifecycle keeps one state machine per device, keyed by column '{device}', but query '{}' groups its rows by {}: each window would feed several rows to one state machine. Key it by a GROUP BY column (device_column = '<column>'), or group by '{device}'",
                    query.name,
                    keys.iter()
                        .map(|k| format!("'{k}'"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if let Some(decl) = &sink.online {
            let online = bind_online(sink, decl, spec, query, &device, &err, &unknown)?;
            return Ok(SinkBinding {
                device_column: device,
                lifecycle: Some(online.lifecycle.clone()),
                online: Some(online),
                rated: None,
            });
        }
        let score = spec.score_column.as_str();
        let threshold_option = if sink.false_alerts.is_some() {
            "false_alerts"
        } else {
            "warning_at"
        };
        let Some(field) = query.output_schema.fields().find(score).map(|(_, f)| f) else {
            return Err(if sink.option_at.contains_key("score") {
                unknown("score", score)
            } else {
                err(
                    threshold_option,
                    format!(
                        "the lifecycle reads each window's score from column '{score}', which query '{}' does not select {listed}: select it (... AS {score}) or add score = '<column>'",
                        query.name
                    ),
                ).with_kind(SqlErrorKind::UnknownColumn)
            });
        };
        if !field.data_type().is_numeric() {
            let option = if sink.option_at.contains_key("score") {
                "score"
            } else {
                threshold_option
            };
            return Err(err(
                option,
                format!(
                    "the score column '{score}' of query '{}' is {}, not a number",
                    query.name,
                    sql_type(field.data_type())
                ),
            )
            .with_kind(SqlErrorKind::Type)
            .with_kind(SqlErrorKind::Type));
        }
        // A rate can only be turned into a threshold on a score that is a probability.
        let surprise = field
            .metadata()
            .get(crate::udf::SCORE_SCALE_KEY)
            .map(String::as_str)
            == Some(crate::udf::SURPRISE);
        let given = |k: &str| sink.option_at.contains_key(k);
        let Some(rate) = sink.false_alerts else {
            if surprise {
                crate::detector::reachable(spec, false, &given).map_err(|(k, m)| err(k, m))?;
            }
            // A surprise threshold given as warning_at still stands for a rate.
            let rated = surprise
                .then(|| crate::detector::windows_per_month(&query.window))
                .flatten();
            return Ok(SinkBinding {
                device_column: device,
                lifecycle: Some(spec.clone()),
                online: None,
                rated,
            });
        };
        if !surprise {
            return Err(err(
                "false_alerts",
                format!(
                    "false_alerts needs a score that is a surprise (−log10 of a probability), but the score column '{score}' of query '{}' is not one: select anomaly_surprise('model', ...) itself as the score (not anomaly_score, nor an expression over it), give warning_at instead, or let the sink learn online (detector = 'online')",
                    query.name
                ),
            ));
        }
        let (lifecycle, n) =
            crate::detector::bind_calibrated(rate, &query.window, spec.clone(), &given)
                .map_err(|(k, m)| err(k, m))?;
        return Ok(SinkBinding {
            device_column: device,
            lifecycle: Some(lifecycle),
            online: None,
            rated: Some(n),
        });
    }
    Ok(SinkBinding {
        device_column: device,
        lifecycle: None,
        online: None,
        rated: None,
    })
}

/// A sink bound to one query that writes to it.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkBinding {
    /// The result column naming each row's device.
    pub device_column: String,
    /// The sink's alert lifecycle for this query's rows, its threshold resolved (from
    /// `false_alerts` and the query's window slide where the rate gives it).
    pub lifecycle: Option<LifecycleSpec>,
    /// The sink's online detector, resolved against the query's window and columns.
    pub online: Option<OnlineBinding>,
    /// Windows a device closes in 30 days, when the score is a trained model's surprise
    /// (its threshold from a `false_alerts` rate, or a `warning_at` that stands for one).
    pub rated: Option<f64>,
}

/// Checks an online detector against the query's columns: its features are numeric
/// result columns (by default all of them but the window bounds, the device and the
/// grouping keys), and the query leaves the score column to it.
fn bind_online(
    sink: &SinkDecl,
    decl: &OnlineDecl,
    spec: &LifecycleSpec,
    query: &CompiledQuery,
    device: &str,
    err: &dyn Fn(&str, String) -> SqlError,
    unknown: &dyn Fn(&str, &str) -> SqlError,
) -> Result<OnlineBinding, SqlError> {
    let schema = &query.output_schema;
    let score = spec.score_column.as_str();
    if schema.fields().find(score).is_some() {
        return Err(err(
            "detector",
            format!(
                "the online detector writes each window's score as '{score}', but query '{}' selects a column '{score}' too: rename it",
                query.name
            ),
        ).with_kind(SqlErrorKind::Duplicate));
    }
    let features = match &decl.features {
        Some(names) => {
            for n in names {
                let Some((_, f)) = schema.fields().find(n) else {
                    return Err(unknown("features", n));
                };
                if !f.data_type().is_numeric() {
                    return Err(err(
                        "features",
                        format!(
                            "feature '{n}' of query '{}' is {}, not a number",
                            query.name,
                            sql_type(f.data_type())
                        ),
                    )
                    .with_kind(SqlErrorKind::Type));
                }
            }
            names.clone()
        }
        None => {
            let f: Vec<String> = schema
                .fields()
                .iter()
                .filter(|f| f.data_type().is_numeric())
                .map(|f| f.name().clone())
                .filter(|n| {
                    !["window_start", "window_end"].contains(&n.as_str())
                        && !n.eq_ignore_ascii_case(device)
                        && !query.key_columns.iter().any(|k| k.eq_ignore_ascii_case(n))
                })
                .collect();
            if f.is_empty() {
                return Err(err(
                    "detector",
                    format!(
                        "query '{}' selects no numeric column for the online detector to learn (e.g. avg(temperature) AS temperature)",
                        query.name
                    ),
                ));
            }
            f
        }
    };
    let given = |k: &str| sink.option_at.contains_key(k);
    let bound = crate::detector::bind(decl, &query.window, spec.clone(), features, &given)
        .map_err(|(k, m)| err(k, m))?;
    if let Some(a) = bound.lifecycle.alarm_at {
        if a < bound.lifecycle.warning_at {
            return Err(err(
                "alarm_at",
                format!(
                    "alarm_at ({a}) must not be below the threshold false_alerts gives ({:.2})",
                    bound.lifecycle.warning_at
                ),
            ));
        }
    }
    Ok(bound)
}
