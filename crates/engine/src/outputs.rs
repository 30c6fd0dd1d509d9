//! What the pipeline publishes, built from what happened: closed windows become
//! alerts (anomaly queries) or plain window rows or, for rules with a lifecycle,
//! transitions and device states (scored by the online detector first, where there is
//! one); refused input becomes dead letters, with their wording and excerpts.
//!
//! Nothing here does IO or waits: the task loop in `runtime` sends what these
//! functions return.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use forewarn_alerts::{Alert, Lifecycle, TransitionMessage, WindowEvidence, WindowRow};
use forewarn_core::{Pane, Reason};
use forewarn_formats::{Rejected, TopicTemplate};
use forewarn_scorer::OnlineDetectors;
use forewarn_sql::CompiledQuery;
use forewarn_stream::{Rejection, RowRejection, WindowResult};

use crate::health::HealthBook;
use crate::rows::{cell, row_to_json, row_to_json_except};
use crate::{DeadLetter, EngineConfig, Output};

/// A JSON value as a topic level: strings as they are, anything else as JSON text.
/// Row `r` of `a` as topic text ([`topic_text`] of its JSON value): a string as it is,
/// without building its JSON value first.
fn text_at(a: &dyn Array, r: usize) -> String {
    match a.data_type() {
        DataType::Utf8 if a.is_valid(r) => a.as_string::<i32>().value(r).to_string(),
        _ => topic_text(&cell(a, r)),
    }
}

pub(crate) fn topic_text(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// The message a reading came from.
#[derive(Clone)]
pub(crate) struct Origin {
    /// Its topic (empty for pushed batches).
    pub(crate) topic: OriginTopic,
    /// Its position in an array message (or in a pushed batch).
    pub(crate) index: Option<usize>,
}

/// The topic of a reading's message: as received, or that of a history row, rendered
/// only if a dead letter names it (most readings are never refused).
#[derive(Clone)]
pub(crate) enum OriginTopic {
    /// The topic itself.
    Text(Arc<str>),
    /// The topic of row `.1` of the readings.
    Row(Arc<dyn forewarn_formats::Readings>, usize),
}

impl From<&str> for OriginTopic {
    fn from(t: &str) -> Self {
        OriginTopic::Text(t.into())
    }
}

impl std::fmt::Display for OriginTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OriginTopic::Text(t) => f.write_str(t),
            OriginTopic::Row(rows, row) => f.write_str(rows.topic(*row)),
        }
    }
}

/// A reading the window operators refused, with what the dead letter says of it.
pub(crate) struct Refusal {
    pub(crate) reason: RowRejection,
    pub(crate) row: serde_json::Map<String, serde_json::Value>,
    /// The queries that refused it.
    pub(crate) queries: Vec<String>,
    /// The pane of the reading's event time in the first of them.
    pub(crate) window: Option<Pane>,
}

/// Files the rows `rej` of query `q` refused under the reading (its row in the
/// batch) they belong to: a reading refused by several queries (late for each) is one
/// dead letter, naming them all; its window is the pane of its event time in the
/// first query that refused it.
pub(crate) fn file_refusals(
    refused: &mut BTreeMap<u32, Refusal>,
    q: &CompiledQuery,
    rej: &Rejection,
) {
    for (r, &row) in rej.index.iter().enumerate() {
        refused
            .entry(row)
            .or_insert_with(|| {
                let row = row_to_json(&rej.rows, r);
                let window = match &row.get(&q.event_time) {
                    Some(serde_json::Value::String(t)) => {
                        forewarn_core::parse_rfc3339(t).map(|t| q.window.pane_of(t))
                    }
                    _ => None,
                };
                Refusal {
                    reason: rej.reason,
                    row,
                    queries: Vec::new(),
                    window,
                }
            })
            .queries
            .push(q.name.clone());
    }
}

/// The reason code of rows the window operators refused. Exhaustive on purpose: a
/// new kind of refusal in `forewarn-stream` must be given a code here.
pub(crate) fn row_reason(r: RowRejection) -> Reason {
    use RowRejection as R;
    match r {
        R::Late => Reason::Late,
        R::Future => Reason::FutureTimestamp,
        R::NoTimestamp => Reason::MissingTimestamp,
        R::TooManyWindows => Reason::TooManyWindows,
        R::StateLimit => Reason::StateLimit,
    }
}

/// How one query's closed windows are published: the sink's topic, and for a rule
/// with a lifecycle its state machines (and online detector).
pub(crate) struct Publisher {
    pub(crate) sink: TopicTemplate,
    /// Sinks with a lifecycle publish transitions, not rows.
    pub(crate) lifecycle: Option<Lifecycle>,
    /// The sink's online detector: scores each row before the lifecycle sees it.
    pub(crate) online: Option<OnlineDetectors>,
    /// Grouping columns besides the device: the online detector learns each of their
    /// combinations apart (the lifecycle stays per device).
    pub(crate) regime_keys: Vec<String>,
    /// Column holding the device id (see [`forewarn_sql::bind_sink`]).
    pub(crate) device_column: String,
    /// Each device's latest transition topic, for its offline alerts (kept only for a
    /// lifecycle with `offline_after`).
    pub(crate) topics: std::collections::HashMap<String, String>,
    pub(crate) model: Option<String>,
    /// Whether the query is an anomaly rule (selects a `score` column or calls a
    /// model): without a lifecycle its rows are alerts, else plain window rows.
    pub(crate) anomaly: bool,
}

impl Publisher {
    /// The outputs of rows `range` of a closed window of `query`: alerts or window
    /// rows, or a lifecycle's transitions and states. Also how many transitions were held back
    /// because their device is silenced; `clock` is the wall clock (ms) silences are
    /// judged by.
    pub(crate) fn window_outputs(
        &mut self,
        query: &str,
        res: &WindowResult,
        range: std::ops::Range<usize>,
        health: &mut HealthBook,
        cfg: &EngineConfig,
        clock: &dyn Fn() -> i64,
    ) -> (Vec<Output>, u64) {
        if self.lifecycle.is_some() {
            let rows = self.alert_rows(query, res, range);
            self.lifecycle_outputs(query, rows, health, cfg, clock)
        } else {
            (self.row_outputs(query, res, range), 0)
        }
    }

    /// Whether the outputs of a closed window are a function of its rows alone (no
    /// lifecycle, whose state machines and health see the rows one after another): rows
    /// of such a window can be turned into outputs apart, each range on its own thread
    /// (see [`row_outputs`](Self::row_outputs)).
    pub(crate) fn stateless(&self) -> bool {
        self.lifecycle.is_none()
    }

    /// [`window_outputs`](Self::window_outputs) for a [`stateless`](Self::stateless)
    /// publisher: alerts or window rows, reading nothing but the publisher and the rows.
    pub(crate) fn row_outputs(
        &self,
        query: &str,
        res: &WindowResult,
        range: std::ops::Range<usize>,
    ) -> Vec<Output> {
        debug_assert!(self.stateless());
        if self.anomaly {
            self.alert_rows(query, res, range)
                .into_iter()
                .map(|(topic, alert, _)| Output::Alert { topic, alert })
                .collect()
        } else {
            self.window_rows(query, res, range)
        }
    }

    /// Rows `range` of a closed window's result as JSON, each with its topic and window.
    fn result_rows<'a>(
        &'a self,
        res: &'a WindowResult,
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = (String, serde_json::Map<String, serde_json::Value>, Pane)> + 'a {
        let captured = self.captured_columns(&res.batch);
        range.map(move |r| {
            let row = row_to_json(&res.batch, r);
            let topic = self.topic_of(&res.batch, &captured, r);
            let window = res.window_of(r);
            (topic, row, window)
        })
    }

    /// The column of `batch` that fills each of the sink template's captures, by
    /// capture name: looked up once per batch, not per row.
    fn captured_columns(&self, batch: &RecordBatch) -> Vec<(String, Option<usize>)> {
        self.sink
            .captures()
            .map(|c| (c.to_string(), batch.schema_ref().index_of(c).ok()))
            .collect()
    }

    /// The sink topic of row `r` of `batch`: each capture is its column's value (from
    /// [`captured_columns`](Self::captured_columns)) as topic text.
    fn topic_of(
        &self,
        batch: &RecordBatch,
        captured: &[(String, Option<usize>)],
        r: usize,
    ) -> String {
        self.sink.render(|c| {
            let k = captured.iter().find(|(n, _)| n == c)?.1?;
            Some(text_at(batch.column(k).as_ref(), r))
        })
    }

    /// Rows `range` of a closed window's result as window rows, each with its topic:
    /// what [`WindowRow::from_row`] makes of [`result_rows`](Self::result_rows), with
    /// the device and window columns read from their columns instead of put into each
    /// row's map and taken out again (a backtest publishes every window it closes).
    fn window_rows(
        &self,
        query: &str,
        res: &WindowResult,
        range: std::ops::Range<usize>,
    ) -> Vec<Output> {
        let batch = &res.batch;
        let schema = batch.schema_ref();
        let device = schema.index_of(&self.device_column).ok();
        let lifted: Vec<bool> = schema
            .fields()
            .iter()
            .map(|f| {
                let n = f.name().as_str();
                n == self.device_column || n == "window_start" || n == "window_end"
            })
            .collect();
        let captured = self.captured_columns(batch);
        range
            .map(|r| {
                let topic = self.topic_of(batch, &captured, r);
                let device = match device.map(|k| batch.column(k).as_ref()) {
                    Some(a) if a.is_valid(r) && a.data_type() == &DataType::Utf8 => {
                        a.as_string::<i32>().value(r).to_string()
                    }
                    a => WindowRow::device_text(a.map(|a| cell(a, r))),
                };
                let window = res.window_of(r);
                let columns = row_to_json_except(batch, r, &lifted);
                Output::Row {
                    topic,
                    row: WindowRow::from_parts(query, device, (window.start, window.end), columns),
                }
            })
            .collect()
    }

    /// Rows `range` of a closed window's result as alerts, each with its topic and window.
    fn alert_rows(
        &self,
        query: &str,
        res: &WindowResult,
        range: std::ops::Range<usize>,
    ) -> Vec<(String, Alert, Pane)> {
        self.result_rows(res, range)
            .map(|(topic, row, window)| {
                let alert = Alert::from_row(
                    query,
                    self.model.as_deref(),
                    &self.device_column,
                    (window.start, window.end),
                    row,
                );
                (topic, alert, window)
            })
            .collect()
    }

    /// Feeds a lifecycle rule's window rows to its state machines: each transition and
    /// each change of a device's health becomes one message; the rows themselves are not
    /// published. A device's first window publishes its (healthy) state, so the retained
    /// state topic lists the whole fleet.
    fn lifecycle_outputs(
        &mut self,
        rule: &str,
        rows: Vec<(String, Alert, Pane)>,
        health: &mut HealthBook,
        cfg: &EngineConfig,
        clock: &dyn Fn() -> i64,
    ) -> (Vec<Output>, u64) {
        let prefix = &cfg.topic_prefix;
        let lifecycle = self.lifecycle.as_mut().expect("called for lifecycle rules");
        let mut outs = Vec::new();
        let mut silenced_count = 0;
        for (topic, mut alert, window) in rows {
            if let Some(d) = self.online.as_mut() {
                score_online(d, &self.regime_keys, window.start, &mut alert);
            }
            let score = match lifecycle.spec().score_column.as_str() {
                "score" => alert.score,
                c => alert.features.get(c).and_then(|v| v.as_f64()),
            };
            if let Some(o) = &cfg.window_observer {
                // With the score the lifecycle judges (a copy only when that is
                // another column).
                if alert.score == score {
                    o.observe(&alert);
                } else {
                    let mut row = alert.clone();
                    row.score = score;
                    o.observe(&row);
                }
            }
            if cfg.window_rows {
                // The row with the score the lifecycle judges, whatever its column.
                let mut row = alert.clone();
                row.score = score;
                outs.push(Output::Alert {
                    topic: topic.clone(),
                    alert: row,
                });
            }
            let evidence = WindowEvidence {
                window_start: alert.window_start,
                window_end: alert.window_end,
                score,
                features: alert.features.clone(),
            };
            if lifecycle.spec().offline_after.is_some()
                && self.topics.get(&alert.device) != Some(&topic)
            {
                self.topics.insert(alert.device.clone(), topic.clone());
            }
            let state_topic = format!("{prefix}/state/{}", alert.device);
            let first = health.first_window(rule, &alert.device, alert.window_end, score);
            let state_of = |health: &HealthBook| {
                health
                    .state(&alert.device)
                    .expect("recorded by first_window")
                    .clone()
            };
            match lifecycle.observe(&alert.device, evidence) {
                Some(t) => {
                    let msg = TransitionMessage::new(
                        rule,
                        &alert.device,
                        lifecycle.spec(),
                        alert.model.as_deref(),
                        t,
                    );
                    if health.transition(rule, &alert.device, &msg, clock) {
                        silenced_count += 1;
                    } else {
                        outs.push(Output::Transition {
                            topic,
                            message: msg,
                        });
                    }
                    outs.push(Output::State {
                        topic: state_topic,
                        state: state_of(health),
                    });
                }
                None if first => outs.push(Output::State {
                    topic: state_topic,
                    state: state_of(health),
                }),
                None => {}
            }
        }
        (outs, silenced_count)
    }
}

/// Scores a window row with its device's online detector (which then learns from it):
/// the row gets the score and, when the query did not select one, an explanation. A
/// query grouped by more than the device (an operating mode, say) learns each
/// combination apart: `regime_keys` are those other grouping columns.
fn score_online(d: &mut OnlineDetectors, regime_keys: &[String], start_ms: i64, alert: &mut Alert) {
    let x = alert.feature_values(d.features());
    let s = if regime_keys.is_empty() {
        d.observe_at(&alert.device, start_ms, &x)
    } else {
        let mut key = alert.device.clone();
        for k in regime_keys {
            key.push('\u{1f}');
            key.push_str(&alert.features.get(k).map_or(String::new(), topic_text));
        }
        d.observe_at(&key, start_ms, &x)
    };
    alert.score = s.score;
    if let Some(e) = d.explain(&s) {
        alert
            .features
            .entry("explanation".to_string())
            .or_insert(serde_json::Value::String(e));
    }
}

/// The start of a payload, as much as a dead letter quotes (lossy UTF-8).
pub(crate) fn excerpt(cfg: &EngineConfig, payload: &[u8]) -> String {
    let cut = &payload[..payload.len().min(cfg.dead_letter_excerpt)];
    String::from_utf8_lossy(cut).into_owned()
}

/// A dead letter on `{prefix}/deadletter/{to}`.
fn dead_letter(cfg: &EngineConfig, to: &str, letter: DeadLetter) -> Output {
    Output::DeadLetter {
        topic: format!("{}/deadletter/{to}", cfg.topic_prefix),
        letter,
    }
}

/// A message repeating one of the last `duplicate_window` messages.
pub(crate) fn duplicate(
    cfg: &EngineConfig,
    topic: &str,
    source: Option<&str>,
    payload: &[u8],
) -> Output {
    let letter = DeadLetter {
        reason: Reason::Duplicate,
        detail: match source {
            None => format!(
                "the same bytes on the same topic arrived among the last {} messages (a resent publish)",
                cfg.duplicate_window
            ),
            Some(s) => format!(
                "the same bytes pushed to source '{s}' arrived among the last {} messages (a resent push)",
                cfg.duplicate_window
            ),
        },
        source_topic: topic.to_string(),
        source: source.map(str::to_string),
        index: None,
        excerpt: excerpt(cfg, payload),
    };
    dead_letter(cfg, "duplicate", letter)
}

/// A message on a topic no source subscribes to.
pub(crate) fn unknown_topic(cfg: &EngineConfig, topic: &str, payload: &[u8]) -> Output {
    let letter = DeadLetter {
        reason: Reason::UnknownTopic,
        detail: format!("no source subscribes to topic '{topic}'"),
        source_topic: topic.to_string(),
        source: None,
        index: None,
        excerpt: excerpt(cfg, payload),
    };
    dead_letter(cfg, "unrouted", letter)
}

/// Input from `device`, refused because `source` already has `max` devices; `excerpt`
/// is the payload's start or the row as JSON.
pub(crate) fn too_many_devices(
    cfg: &EngineConfig,
    source: &str,
    max: usize,
    device: &str,
    origin: Option<&Origin>,
    excerpt: String,
) -> Output {
    let letter = DeadLetter {
        reason: Reason::TooManyDevices,
        detail: format!(
            "source '{source}' already has {max} devices (max_devices); '{device}' is refused"
        ),
        source_topic: origin.map_or(String::new(), |o| o.topic.to_string()),
        source: Some(source.to_string()),
        index: origin.and_then(|o| o.index),
        excerpt,
    };
    dead_letter(cfg, source, letter)
}

/// A reading of a message to `source` that could not be decoded.
pub(crate) fn undecodable(
    cfg: &EngineConfig,
    source: &str,
    topic: &str,
    payload: &[u8],
    r: &Rejected,
) -> Output {
    let letter = DeadLetter {
        reason: r.error.reason(),
        detail: r.error.to_string(),
        source_topic: topic.to_string(),
        source: Some(source.to_string()),
        index: r.index,
        excerpt: excerpt(cfg, payload),
    };
    tracing::debug!(topic, reason = %letter.detail, "rejected input");
    dead_letter(cfg, source, letter)
}

/// Why a pushed batch cannot be used for a source with `schema`, if it cannot.
pub(crate) fn batch_problem(
    schema: &datafusion::arrow::datatypes::SchemaRef,
    batch: &RecordBatch,
) -> Option<(Reason, String)> {
    let want: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    let got: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    // Nulls in required columns are not a batch's problem but its rows': see
    // `crate::batches::bad_rows`.
    (want != got).then(|| {
        (
            Reason::SchemaMismatch,
            format!(
                "batch columns [{}] do not match the source's [{}]",
                got.join(", "),
                want.join(", ")
            ),
        )
    })
}

/// One row of a pushed batch refused as JSON decoding would refuse the reading, with
/// its index in the batch and the row as the excerpt.
pub(crate) fn bad_row(
    cfg: &EngineConfig,
    source: &str,
    batch: &RecordBatch,
    row: usize,
    reason: Reason,
    detail: String,
) -> Output {
    let letter = DeadLetter {
        reason,
        detail,
        source_topic: String::new(),
        source: Some(source.to_string()),
        index: Some(row),
        excerpt: serde_json::Value::Object(row_to_json(batch, row)).to_string(),
    };
    dead_letter(cfg, source, letter)
}

/// A pushed batch refused whole; `known` says whether a query reads `source` (else
/// the letter goes to `unrouted`). Its first row is the excerpt.
pub(crate) fn refused_batch(
    cfg: &EngineConfig,
    source: &str,
    known: bool,
    (reason, detail): (Reason, String),
    batch: &RecordBatch,
) -> Output {
    let excerpt = if batch.num_rows() > 0 {
        serde_json::Value::Object(row_to_json(batch, 0)).to_string()
    } else {
        String::new()
    };
    let letter = DeadLetter {
        reason,
        detail,
        source_topic: String::new(),
        source: Some(source.to_string()),
        index: None,
        excerpt,
    };
    dead_letter(cfg, if known { source } else { "unrouted" }, letter)
}

/// The dead letter (for late rows: the late message) of a reading of `source` that
/// the windows refused, with the topic and array position of its message.
pub(crate) fn refusal(
    cfg: &EngineConfig,
    source: &str,
    late_topic: Option<&TopicTemplate>,
    origin: Option<&Origin>,
    r: Refusal,
) -> Output {
    use RowRejection as R;
    let fields = r.row;
    let topic = match (r.reason, late_topic) {
        (R::Late, Some(t)) => t.render(|c| fields.get(c).map(topic_text)),
        (R::Late, None) => format!("{}/late/{}", cfg.topic_prefix, source),
        _ => format!("{}/deadletter/{}", cfg.topic_prefix, source),
    };
    // Only what does not depend on how input was batched: the same reading
    // gets the same words live and in replay.
    let queries = match r.queries.len() {
        1 => format!("query '{}'", r.queries[0]),
        _ => format!("queries '{}'", r.queries.join("', '")),
    };
    let detail = match r.reason {
        R::Late => match r.window {
            Some(w) => format!(
                "the watermark had passed the end of the reading's window [{}, {}) ({queries})",
                forewarn_core::format_rfc3339(w.start),
                forewarn_core::format_rfc3339(w.end)
            ),
            None => format!("the reading's window had closed ({queries})"),
        },
        R::Future => format!(
            "the reading's time is further ahead than max_future of the newest reading before it ({queries})"
        ),
        R::NoTimestamp => format!("the reading has no event time ({queries})"),
        R::TooManyWindows => format!(
            "the reading would open more than max_open_windows = {} windows ({queries})",
            cfg.max_open_windows
        ),
        R::StateLimit => format!(
            "window state is over max_state_bytes = {}; input is refused until windows close ({queries})",
            cfg.max_state_bytes
        ),
    };
    let letter = DeadLetter {
        reason: row_reason(r.reason),
        detail,
        source_topic: origin.map_or(String::new(), |o| o.topic.to_string()),
        source: Some(source.to_string()),
        index: origin.and_then(|o| o.index),
        excerpt: serde_json::Value::Object(fields).to_string(),
    };
    Output::DeadLetter { topic, letter }
}

/// A message a source's connector refused, on `{prefix}/deadletter/{source}`.
pub(crate) fn refused_by_connector(cfg: &EngineConfig, source: &str, letter: DeadLetter) -> Output {
    dead_letter(cfg, source, letter)
}

/// An operator command for `device` that cannot be applied.
pub(crate) fn refused_command(
    cfg: &EngineConfig,
    device: &str,
    payload: &[u8],
    (reason, detail): (Reason, String),
) -> Output {
    let letter = DeadLetter {
        reason,
        detail,
        source_topic: format!("{}/command/{device}", cfg.topic_prefix),
        source: None,
        index: None,
        excerpt: String::from_utf8_lossy(&payload[..payload.len().min(256)]).into_owned(),
    };
    dead_letter(cfg, "command", letter)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream crate's own codes and ours agree, so counters and dead letters read
    /// as they did when the stream crate's string was published.
    #[test]
    fn row_rejections_keep_their_codes() {
        use RowRejection as R;
        for (r, want) in [
            (R::Late, Reason::Late),
            (R::Future, Reason::FutureTimestamp),
            (R::NoTimestamp, Reason::MissingTimestamp),
            (R::TooManyWindows, Reason::TooManyWindows),
            (R::StateLimit, Reason::StateLimit),
        ] {
            assert_eq!(row_reason(r), want);
            assert_eq!(row_reason(r).as_str(), r.code());
        }
    }

    fn letter(o: &Output) -> (&str, &DeadLetter) {
        match o {
            Output::DeadLetter { topic, letter } => (topic, letter),
            other => panic!("{other:?}"),
        }
    }

    fn row() -> serde_json::Map<String, serde_json::Value> {
        serde_json::json!({"device": "d7", "ts": "1970-01-01T00:00:05.000Z"})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn a_late_reading_names_its_window_and_queries_on_the_late_topic() {
        let cfg = EngineConfig::default();
        let origin = Origin {
            topic: "plant/d7".into(),
            index: Some(3),
        };
        let r = Refusal {
            reason: RowRejection::Late,
            row: row(),
            queries: vec!["a".into(), "b".into()],
            window: Some(Pane {
                start: 0,
                end: 10_000,
            }),
        };
        let o = refusal(&cfg, "telemetry", None, Some(&origin), r);
        let (topic, l) = letter(&o);
        assert_eq!(topic, "forewarn/late/telemetry");
        assert_eq!(
            *l,
            DeadLetter {
                reason: Reason::Late,
                detail: "the watermark had passed the end of the reading's window [1970-01-01T00:00:00.000Z, 1970-01-01T00:00:10.000Z) (queries 'a', 'b')".into(),
                source_topic: "plant/d7".into(),
                source: Some("telemetry".into()),
                index: Some(3),
                excerpt: r#"{"device":"d7","ts":"1970-01-01T00:00:05.000Z"}"#.into(),
            }
        );
        // A source's late_topic is rendered from the row.
        let t = TopicTemplate::parse("late/{device}").unwrap();
        let r = Refusal {
            reason: RowRejection::Late,
            row: row(),
            queries: vec!["a".into()],
            window: None,
        };
        let o = refusal(&cfg, "telemetry", Some(&t), None, r);
        let (topic, l) = letter(&o);
        assert_eq!(topic, "late/d7");
        assert_eq!(l.detail, "the reading's window had closed (query 'a')");
        assert_eq!(l.source_topic, "");
        assert_eq!(l.index, None);
    }

    #[test]
    fn other_refusals_go_to_the_dead_letter_topic_with_the_limit() {
        let cfg = EngineConfig {
            max_open_windows: 7,
            ..EngineConfig::default()
        };
        let r = Refusal {
            reason: RowRejection::TooManyWindows,
            row: row(),
            queries: vec!["q".into()],
            window: None,
        };
        let t = TopicTemplate::parse("late/{device}").unwrap();
        let o = refusal(&cfg, "s", Some(&t), None, r);
        let (topic, l) = letter(&o);
        assert_eq!(topic, "forewarn/deadletter/s");
        assert_eq!(l.reason, Reason::TooManyWindows);
        assert_eq!(
            l.detail,
            "the reading would open more than max_open_windows = 7 windows (query 'q')"
        );
    }

    #[test]
    fn message_letters_quote_the_payload_start() {
        let cfg = EngineConfig {
            dead_letter_excerpt: 4,
            topic_prefix: "fw".into(),
            duplicate_window: 9,
            ..EngineConfig::default()
        };
        assert_eq!(excerpt(&cfg, b"abcdef"), "abcd");
        assert_eq!(excerpt(&cfg, b"ab"), "ab");
        // A cut inside a UTF-8 sequence is replaced, not an error.
        assert_eq!(excerpt(&cfg, "abcé".as_bytes()), "abc\u{fffd}");
        let o = duplicate(&cfg, "t/1", None, b"{\"x\": 1}");
        let (topic, l) = letter(&o);
        assert_eq!(topic, "fw/deadletter/duplicate");
        assert_eq!(l.reason, Reason::Duplicate);
        assert_eq!(
            l.detail,
            "the same bytes on the same topic arrived among the last 9 messages (a resent publish)"
        );
        assert_eq!(l.excerpt, "{\"x\"");
        assert_eq!((l.source.as_deref(), l.index), (None, None));
        let o = unknown_topic(&cfg, "t/1", b"x");
        assert_eq!(letter(&o).0, "fw/deadletter/unrouted");
        assert_eq!(letter(&o).1.detail, "no source subscribes to topic 't/1'");
        let origin = Origin {
            topic: "t/2".into(),
            index: None,
        };
        let o = too_many_devices(&cfg, "s", 2, "d3", Some(&origin), "e".into());
        let (topic, l) = letter(&o);
        assert_eq!(topic, "fw/deadletter/s");
        assert_eq!(
            l.detail,
            "source 's' already has 2 devices (max_devices); 'd3' is refused"
        );
        assert_eq!(l.source_topic, "t/2");
    }

    #[test]
    fn a_refused_command_quotes_at_most_256_bytes() {
        let cfg = EngineConfig::default();
        let payload = vec![b'x'; 300];
        let o = refused_command(&cfg, "d1", &payload, (Reason::BadCommand, "no".into()));
        let (topic, l) = letter(&o);
        assert_eq!(topic, "forewarn/deadletter/command");
        assert_eq!(l.source_topic, "forewarn/command/d1");
        assert_eq!(l.excerpt.len(), 256);
        assert_eq!(l.reason, Reason::BadCommand);
    }

    #[test]
    fn a_batch_is_checked_against_the_source_columns() {
        use datafusion::arrow::array::Float64Array;
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Float64, false)]));
        let batch = |nullable: bool, v: Vec<Option<f64>>| {
            let s = Schema::new(vec![Field::new("v", DataType::Float64, nullable)]);
            RecordBatch::try_new(Arc::new(s), vec![Arc::new(Float64Array::from(v))]).unwrap()
        };
        assert_eq!(batch_problem(&schema, &batch(false, vec![Some(1.0)])), None);
        let b = batch(true, vec![Some(1.0), None]);
        // Nullability is not compared; nulls in a required column are the rows' problem.
        assert_eq!(batch_problem(&schema, &b), None);
        let wrong = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("w", DataType::Float64, false)])),
            vec![Arc::new(Float64Array::from(vec![1.0]))],
        )
        .unwrap();
        assert_eq!(
            batch_problem(&schema, &wrong),
            Some((
                Reason::SchemaMismatch,
                "batch columns [w Float64] do not match the source's [v Float64]".into()
            ))
        );
        let o = refused_batch(
            &EngineConfig::default(),
            "nowhere",
            false,
            batch_problem(&schema, &wrong).unwrap(),
            &wrong,
        );
        let (topic, l) = letter(&o);
        assert_eq!(topic, "forewarn/deadletter/unrouted");
        assert_eq!(l.excerpt, r#"{"w":1.0}"#);
    }
}
