//! Recorded sensor history, replayed as the MQTT messages Forewarn would have received.
//!
//! `forewarn replay` (the analyst's backtest) and training from history read files
//! through this crate. Every row is the JSON message on the topic the device would
//! have published to (rendered from the source's topic template), so replayed data
//! goes through exactly the live decode path: the same validation, the same dead
//! letters, the same windows. CSV and Parquet rows stay Arrow columns ([`Rows`],
//! see [`chunks`]) that the engine reads as values; their JSON is written only for
//! a dead letter that quotes it. JSON lines are messages already.
//!
//! Formats, chosen by file extension:
//! * `.csv` — a header row; cells are converted by the source's declared column types;
//!   an empty cell is a missing value. Separated by commas, or by semicolons when the
//!   header has semicolons and no comma.
//! * `.jsonl` / `.ndjson` — one reading object per line, or a recorded message
//!   `{"topic": "...", "payload": ...}` per line.
//! * `.parquet` — any column types; values are converted like CSV cells.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use forewarn_formats::TopicTemplate;
use serde_json::{Map, Value};

mod rows;
pub use rows::Rows;

/// Errors reading history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file's contents could not be parsed as its format.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file's extension names no supported format.
    #[error("{0}: unknown history format (use .csv, .jsonl/.ndjson or .parquet)")]
    UnknownFormat(PathBuf),
}

/// A history file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryFormat {
    /// CSV with a header row.
    Csv,
    /// One JSON object per line.
    JsonLines,
    /// Apache Parquet.
    Parquet,
}

impl HistoryFormat {
    /// The format of `path`, from its extension.
    pub fn of(path: &Path) -> Result<Self, HistoryError> {
        match path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .as_deref()
        {
            Some("csv") => Ok(HistoryFormat::Csv),
            Some("jsonl") | Some("ndjson") | Some("json") => Ok(HistoryFormat::JsonLines),
            Some("parquet") => Ok(HistoryFormat::Parquet),
            _ => Err(HistoryError::UnknownFormat(path.to_path_buf())),
        }
    }
}

/// What a source expects: where its messages come from and what its columns are.
#[derive(Debug, Clone)]
pub struct SourceShape {
    /// The MQTT topic filter it subscribes to.
    pub topic_filter: String,
    /// Its topic template, if it has one.
    pub template: Option<TopicTemplate>,
    /// Its declared columns.
    pub schema: SchemaRef,
    /// Its event-time column, read into [`Message::time`] (`None`: not read).
    pub event_time: Option<String>,
}

impl SourceShape {
    /// The topic a reading with these fields would have been published on.
    pub fn topic_for(&self, fields: &Map<String, Value>) -> String {
        self.topic_with(|c| {
            fields.get(c).and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                // A null is no value: an empty level, refused like a missing cell.
                Value::Null => None,
                other => Some(other.to_string()),
            })
        })
    }

    /// The topic of a reading whose field `c`, written as a topic level, is
    /// `level(c)` (`None`: absent).
    pub(crate) fn topic_with(&self, level: impl FnMut(&str) -> Option<String>) -> String {
        match &self.template {
            // Values as they are, a missing one as an empty level: a row live input
            // could not have carried gets a topic the decoder refuses, as live would.
            Some(t) => t.render_exact(level),
            // Without a template any topic matching the filter will do.
            None => self
                .topic_filter
                .split('/')
                .map(|l| if l == "+" || l == "#" { "replay" } else { l })
                .collect::<Vec<_>>()
                .join("/"),
        }
    }
}

/// One message as it would have arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Topic.
    pub topic: String,
    /// Payload bytes (JSON).
    pub payload: Vec<u8>,
    /// The reading's event time (epoch ms), when the shape names the column and the
    /// value is a timestamp; for keeping replay in time order.
    pub time: Option<i64>,
    /// A recorded message (`{"topic", "payload"}` line), whose place in the file is
    /// its arrival order, late readings included; not a row of a table.
    pub recorded: bool,
}

impl SourceShape {
    /// The event time in a reading's fields, if it has a readable one.
    fn time_of(&self, fields: &Map<String, Value>) -> Option<i64> {
        match fields.get(self.event_time.as_deref()?)? {
            Value::String(s) => forewarn_core::parse_rfc3339(s),
            Value::Number(n) => n.as_i64(),
            _ => None,
        }
    }
}

/// A piece of a history file: a message (JSON lines), or rows (CSV, Parquet).
#[derive(Debug, Clone)]
pub enum Chunk {
    /// One message as it would have arrived.
    Message(Message),
    /// Rows of a table, each the reading its device would have sent.
    Rows(Rows),
}

/// The messages of a history file, in file order.
pub fn messages(
    path: &Path,
    shape: &SourceShape,
) -> Result<Box<dyn Iterator<Item = Result<Message, HistoryError>>>, HistoryError> {
    Ok(Box::new(chunks(path, shape)?.flat_map(
        |c| -> Box<dyn Iterator<Item = Result<Message, HistoryError>>> {
            match c {
                Ok(Chunk::Message(m)) => Box::new(std::iter::once(Ok(m))),
                Ok(Chunk::Rows(r)) => Box::new((0..r.len()).map(move |i| Ok(r.message(i)))),
                Err(e) => Box::new(std::iter::once(Err(e))),
            }
        },
    )))
}

/// The column names of a history file: a CSV file's header, a Parquet file's schema,
/// or the fields the readings of a JSON lines file have, read until every name in
/// `wanted` has been seen (at the first line, usually), else to the end of the file.
/// `None` for JSON lines with a recorded message (`{"topic", "payload"}`: each names its
/// own fields, as it arrived) or without a reading.
pub fn columns(path: &Path, wanted: &[&str]) -> Result<Option<Vec<String>>, HistoryError> {
    let io = |source| HistoryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let format_error = |message: String| HistoryError::Format {
        path: path.to_path_buf(),
        message,
    };
    match HistoryFormat::of(path)? {
        HistoryFormat::JsonLines => {
            json_lines_fields(BufReader::new(File::open(path).map_err(io)?), wanted).map_err(io)
        }
        HistoryFormat::Csv => {
            let mut head = BufReader::new(File::open(path).map_err(io)?);
            let mut first = Vec::new();
            head.read_until(b'\n', &mut first).map_err(io)?;
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(csv_delimiter(&first))
                .has_headers(true)
                .from_reader(first.as_slice());
            let headers = reader.headers().map_err(|e| format_error(e.to_string()))?;
            Ok(Some(headers.iter().map(String::from).collect()))
        }
        HistoryFormat::Parquet => {
            let file = File::open(path).map_err(io)?;
            let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| format_error(e.to_string()))?;
            Ok(Some(
                b.schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect(),
            ))
        }
    }
}

/// The fields of the readings of JSON lines `r`, sorted: see [`columns`]. Lines that
/// are not objects are the decoder's to refuse, one by one.
fn json_lines_fields(r: impl BufRead, wanted: &[&str]) -> std::io::Result<Option<Vec<String>>> {
    use serde::de::IgnoredAny;
    use std::collections::{BTreeSet, HashMap};
    let mut fields = BTreeSet::new();
    let mut readings = 0usize;
    for line in r.lines() {
        let line = line?;
        // Keys borrowed from the line; one with an escape takes the owned way.
        let keys: Vec<String> = match serde_json::from_str::<HashMap<&str, IgnoredAny>>(&line) {
            Ok(m) => m.into_keys().map(String::from).collect(),
            Err(_) => match serde_json::from_str::<HashMap<String, IgnoredAny>>(&line) {
                Ok(m) => m.into_keys().collect(),
                Err(_) => continue,
            },
        };
        if keys.len() == 2 && keys.iter().all(|k| k == "topic" || k == "payload") {
            return Ok(None);
        }
        readings += 1;
        fields.extend(keys);
        // A pass over a whole file costs as much as a third of its replay.
        if wanted.iter().all(|w| fields.contains(*w)) {
            break;
        }
    }
    Ok((readings > 0).then(|| fields.into_iter().collect()))
}

/// The delimiter of a CSV file by its header line: semicolon-separated files (common in
/// European exports, and SKAB) have semicolons and no commas there.
fn csv_delimiter(first_line: &[u8]) -> u8 {
    if first_line.contains(&b';') && !first_line.contains(&b',') {
        b';'
    } else {
        b','
    }
}

/// The pieces of a history file, in file order: JSON lines as messages, CSV and
/// Parquet as [`Rows`] of up to 8,192.
pub fn chunks(
    path: &Path,
    shape: &SourceShape,
) -> Result<Box<dyn Iterator<Item = Result<Chunk, HistoryError>>>, HistoryError> {
    let format = HistoryFormat::of(path)?;
    let io = |source| HistoryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let shape = shape.clone();
    let p = path.to_path_buf();
    Ok(match format {
        HistoryFormat::JsonLines => {
            Box::new(BufReader::new(file).lines().filter_map(move |line| {
                let line = match line {
                    Ok(l) => l,
                    Err(source) => {
                        return Some(Err(HistoryError::Io {
                            path: p.clone(),
                            source,
                        }))
                    }
                };
                if line.trim().is_empty() {
                    return None;
                }
                Some(Ok(Chunk::Message(json_line(&shape, line))))
            }))
        }
        HistoryFormat::Csv => {
            let batches = csv_batches(path, file)?;
            Box::new(batch_rows(batches, shape, p))
        }
        HistoryFormat::Parquet => {
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .map(|b| b.with_batch_size(8192))
                    .and_then(|b| b.build())
                    .map_err(|e| HistoryError::Format {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    })?;
            let batches = reader.map(|b| b.map_err(|e| e.to_string()));
            Box::new(batch_rows(batches, shape, p))
        }
    })
}

/// A JSON line: a recorded `{"topic", "payload"}` message, or a bare reading (whose
/// topic is rendered from its fields). A line that is not JSON is passed on as it is,
/// so the decoder dead-letters it like a bad live payload.
fn json_line(shape: &SourceShape, line: String) -> Message {
    match serde_json::from_str::<Value>(&line) {
        Ok(Value::Object(o)) if o.len() == 2 && o.contains_key("topic") => {
            match (o.get("topic"), o.get("payload")) {
                (Some(Value::String(t)), Some(p)) => {
                    let time = match p {
                        Value::Object(f) => shape.time_of(f),
                        Value::String(s) if shape.event_time.is_some() => {
                            match serde_json::from_str::<Value>(s) {
                                Ok(Value::Object(f)) => shape.time_of(&f),
                                _ => None,
                            }
                        }
                        _ => None,
                    };
                    Message {
                        topic: t.clone(),
                        payload: match p {
                            Value::String(s) => s.clone().into_bytes(),
                            other => other.to_string().into_bytes(),
                        },
                        time,
                        recorded: true,
                    }
                }
                _ => Message {
                    topic: shape.topic_for(&o),
                    time: shape.time_of(&o),
                    payload: line.into_bytes(),
                    recorded: false,
                },
            }
        }
        Ok(Value::Object(o)) => Message {
            topic: shape.topic_for(&o),
            time: shape.time_of(&o),
            payload: line.into_bytes(),
            recorded: false,
        },
        _ => Message {
            topic: shape.topic_for(&Map::new()),
            payload: line.into_bytes(),
            time: None,
            recorded: false,
        },
    }
}

fn csv_batches(
    path: &Path,
    file: File,
) -> Result<impl Iterator<Item = Result<RecordBatch, String>>, HistoryError> {
    use datafusion::arrow::array::{ArrayRef, StringBuilder};
    let mut head = BufReader::new(File::open(path).map_err(|source| HistoryError::Io {
        path: path.to_path_buf(),
        source,
    })?);
    let mut first = Vec::new();
    head.read_until(b'\n', &mut first)
        .map_err(|source| HistoryError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let delimiter = csv_delimiter(&first);
    // The csv crate rather than arrow-csv: arrow-csv 59 trips an out-of-bounds
    // `get_unchecked` on some malformed quoting (found by the property tests).
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .from_reader(file);
    let headers = reader.headers().map_err(|e| HistoryError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    // Every cell is read as text and converted by the source's column types, as a
    // JSON payload's values would be.
    let schema = Arc::new(Schema::new(
        headers
            .iter()
            .map(|h| Field::new(h, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    // One record, reused: no allocation per row.
    let mut record = csv::StringRecord::new();
    let mut failed: Option<String> = None;
    let mut done = false;
    Ok(std::iter::from_fn(move || {
        if let Some(e) = failed.take() {
            return Some(Err(e));
        }
        if done {
            return None;
        }
        let mut cols: Vec<StringBuilder> = schema
            .fields()
            .iter()
            .map(|_| StringBuilder::with_capacity(8192, 8192 * 16))
            .collect();
        let mut n = 0;
        while n < 8192 {
            match reader.read_record(&mut record) {
                Ok(false) => {
                    done = true;
                    break;
                }
                Err(e) => {
                    // Rows read so far go first; the error follows, and ends the file.
                    failed = Some(e.to_string());
                    done = true;
                    break;
                }
                Ok(true) => {
                    for (i, b) in cols.iter_mut().enumerate() {
                        // An empty cell is a missing value, as in a JSON payload.
                        b.append_option(record.get(i).filter(|c| !c.is_empty()));
                    }
                    n += 1;
                }
            }
        }
        if n == 0 {
            return failed.take().map(Err);
        }
        let cols: Vec<ArrayRef> = cols
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        Some(RecordBatch::try_new(schema.clone(), cols).map_err(|e| e.to_string()))
    }))
}

fn batch_rows(
    batches: impl Iterator<Item = Result<RecordBatch, String>>,
    shape: SourceShape,
    path: PathBuf,
) -> impl Iterator<Item = Result<Chunk, HistoryError>> {
    let shape = Arc::new(shape);
    batches.map(move |b| {
        b.and_then(|b| Rows::new(&b, &shape))
            .map(Chunk::Rows)
            .map_err(|message| HistoryError::Format {
                path: path.clone(),
                message,
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::TimeUnit;

    pub(super) fn shape() -> SourceShape {
        SourceShape {
            topic_filter: "plant/+/telemetry".into(),
            template: Some(TopicTemplate::parse("plant/{device}/telemetry").unwrap()),
            schema: Arc::new(Schema::new(vec![
                Field::new("device", DataType::Utf8, false),
                Field::new(
                    "ts",
                    DataType::Timestamp(TimeUnit::Millisecond, None),
                    false,
                ),
                Field::new("v", DataType::Float64, true),
            ])),
            event_time: Some("ts".into()),
        }
    }

    fn read(name: &str, text: &str) -> Vec<Message> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        messages(&p, &shape())
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    #[test]
    fn csv_rows_become_typed_readings_on_their_topics() {
        let m = read(
            "h.csv",
            "ts,device,v,extra\n1000,0007,1.5,x\n2026-11-21T10:00:00Z,p-2,,y\n3000,p-3,NaN,z\n",
        );
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].topic, "plant/0007/telemetry");
        let v: Value = serde_json::from_slice(&m[0].payload).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ts": 1000, "device": "0007", "v": 1.5, "extra": "x"})
        );
        let v: Value = serde_json::from_slice(&m[1].payload).unwrap();
        assert_eq!(v["ts"], "2026-11-21T10:00:00Z");
        assert!(v.get("v").is_none(), "an empty cell is a missing value");
        // NaN is passed on as text: the decoder rejects it as non-finite, as it would live.
        let v: Value = serde_json::from_slice(&m[2].payload).unwrap();
        assert_eq!(v["v"], "NaN");
    }

    #[test]
    fn a_rows_payload_bound_is_never_below_its_payload() {
        use forewarn_formats::Readings;
        let text = "device,ts,v,note\n\
            d1,1000,0.12345678901234567890123,\"a \"\"quoted\"\" \\ back\"\n\
            d2,-5,-1e-300,\"line\nbreak\ttab\u{1}\"\n\
            d3,2026-11-21T10:00:00Z,1e300,\u{e9}t\u{e9}\n\
            d4,x,NaN,-0.0\n\
            ,,,\n";
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.csv");
        std::fs::write(&p, text).unwrap();
        let mut n = 0;
        for c in chunks(&p, &shape()).unwrap() {
            let Chunk::Rows(r) = c.unwrap() else {
                panic!("CSV gives rows")
            };
            for row in 0..r.len() {
                let payload = Readings::payload(&r, row);
                assert!(
                    Readings::payload_bound(&r, row) >= payload.len(),
                    "{}",
                    String::from_utf8_lossy(&payload)
                );
                assert!(r.payload_bound_max().unwrap() >= Readings::payload_bound(&r, row));
                n += 1;
            }
        }
        assert_eq!(n, 5);
    }

    #[test]
    fn json_lines_take_readings_and_recorded_messages() {
        let m = read(
            "h.jsonl",
            "{\"device\": \"a\", \"ts\": 1, \"v\": 2}\n\n{\"topic\": \"plant/b/telemetry\", \"payload\": {\"ts\": 2}}\nnot json\n",
        );
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].topic, "plant/a/telemetry");
        assert_eq!(m[1].topic, "plant/b/telemetry");
        assert_eq!(m[1].payload, br#"{"ts":2}"#);
        assert_eq!(m[2].payload, b"not json");
    }

    #[test]
    fn json_lines_name_the_fields_any_reading_has() {
        let fields = |text: &str| json_lines_fields(text.as_bytes(), &["never"]).unwrap();
        assert_eq!(
            fields("{\"device\": \"a\", \"v\": 1}\nnot json\n[1]\n{\"w\\u0041\": 2, \"ts\": 3}\n"),
            Some(vec!["device".into(), "ts".into(), "v".into(), "wA".into()])
        );
        // A recorded message names its own fields; nothing to check without a reading.
        assert_eq!(
            fields("{\"v\": 1}\n{\"topic\": \"t\", \"payload\": {}}\n"),
            None
        );
        assert_eq!(fields("\nnot json\n"), None);
        // The pass stops once every wanted field has been seen.
        let seen = |wanted: &[&str]| {
            json_lines_fields("{\"a\": 1}\n{\"b\": 2}\n{\"c\": 3}\n".as_bytes(), wanted).unwrap()
        };
        assert_eq!(seen(&["a"]), Some(vec!["a".into()]));
        assert_eq!(seen(&["b", "a"]), Some(vec!["a".into(), "b".into()]));
        assert_eq!(seen(&["x"]), Some(vec!["a".into(), "b".into(), "c".into()]));
    }

    #[test]
    fn parquet_rows_are_read_like_csv_cells() {
        use datafusion::arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
        let schema = shape().schema;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(TimestampMillisecondArray::from(vec![1_000, 2_500])),
                Arc::new(Float64Array::from(vec![Some(0.1), None])),
            ],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.parquet");
        let mut w =
            parquet::arrow::ArrowWriter::try_new(File::create(&p).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let m: Vec<Message> = messages(&p, &shape())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].topic, "plant/b/telemetry");
        let v: Value = serde_json::from_slice(&m[0].payload).unwrap();
        // A timestamp column arrives as text that the decoder reads as UTC.
        assert_eq!(
            v,
            serde_json::json!({"device": "a", "ts": "1970-01-01T00:00:01", "v": 0.1})
        );
        let v: Value = serde_json::from_slice(&m[1].payload).unwrap();
        assert!(v.get("v").is_none());
    }

    #[test]
    fn unknown_extensions_are_refused() {
        let e = messages(Path::new("x.xlsx"), &shape()).err().unwrap();
        assert!(
            e.to_string().contains("x.xlsx: unknown history format"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod fuzz {
    //! History files are outside input too: arbitrary bytes in any format never panic.
    use super::tests::shape;
    use super::*;
    use proptest::prelude::*;

    fn read_all(ext: &str, bytes: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(format!("f.{ext}"));
        std::fs::write(&p, bytes).unwrap();
        if let Ok(it) = messages(&p, &shape()) {
            for m in it.take(10_000) {
                let _ = m;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn csv_and_json_lines_take_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            read_all("csv", &bytes);
            read_all("jsonl", &bytes);
        }

        #[test]
        fn csv_takes_near_miss_text(lines in prop::collection::vec("[a-z0-9;,.\"\\- :TZ]{0,30}", 0..8)) {
            let mut t = String::from("device,ts,v\n");
            t.push_str(&lines.join("\n"));
            read_all("csv", t.as_bytes());
        }

        #[test]
        fn parquet_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut b = b"PAR1".to_vec();
            b.extend(bytes);
            b.extend_from_slice(b"PAR1");
            read_all("parquet", &b);
        }
    }
}
