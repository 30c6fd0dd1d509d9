//! JSON readings → Arrow, decoding straight from borrowed bytes into typed columns.

use std::borrow::Cow;
use std::fmt;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::{same, DecodeError, TopicTemplate};
use columns::ColumnBuf;

mod columns;
mod flat;
mod table;
pub use table::{Table, Typed};
mod wave;

pub use wave::DEFAULT_MAX_SAMPLES;

/// One JSON value, borrowed from the payload where possible: what the decoder reads a
/// field as before converting it to its column's type. Readings given as values rather
/// than text ([`JsonDecoder::decode_values`]) are made of these.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number written without fraction or exponent that fits an `i64`.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// A string.
    Str(Cow<'a, str>),
    /// An object or array (`"an object"`, `"an array"`), which no column holds as is.
    Nested(&'static str),
    /// A waveform column's value: its samples, or why they cannot be taken (boxed, so
    /// that every value stays two words and a tag: the decoder moves several per field).
    Wave(Result<Vec<f64>, Box<DecodeError>>),
}

impl Scalar<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::Int(_) | Scalar::Float(_) => "a number",
            Scalar::Str(_) => "a string",
            Scalar::Nested(k) => k,
            Scalar::Wave(_) => "a waveform",
        }
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(Scalar::Float(v as f64), Scalar::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Nested("an object"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Nested("an array"))
    }
}

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// Per-message parsing context: the decoder's columns, the topic's captured levels,
/// and the raw value of each column in the reading being read (reused across readings).
/// A reading is appended to the pending columns as soon as it is read; a rejected one
/// is cut back off, and so is the whole message when it fails to parse later (a syntax
/// error late in an array leaves no half message).
struct MessageSeed<'a, 'de> {
    columns: &'a [Column],
    bufs: &'a mut [ColumnBuf],
    /// The message's topic and the byte range of each level its template captured.
    topic: &'de str,
    captured: &'a [(usize, usize)],
    now: i64,
    /// Samples a waveform value may hold (see [`JsonDecoder::with_max_samples`]).
    max_samples: usize,
    slots: Vec<Option<Scalar<'de>>>,
    /// Rows pending before this message, and with its readings taken so far.
    start: usize,
    rows: usize,
    rejected: Vec<Rejected>,
    /// The column each key position matched last time: a device sends its fields in
    /// the same order every time, so one comparison usually finds the column.
    order: &'a mut Vec<usize>,
}

/// What a message's reading left: see [`MessageSeed::end`].
type Ended<'de> = (Vec<Option<Scalar<'de>>>, usize, DecodeOutcome);

impl<'de> MessageSeed<'_, 'de> {
    /// Appends the reading in `slots` to the columns (column order, as before: the first
    /// bad column decides the reason), or records why it is rejected.
    fn finish_reading(&mut self, index: Option<usize>) {
        if let Err(error) = self.append_slots() {
            self.rejected.push(Rejected { index, error });
        }
    }

    fn append_slots(&mut self) -> Result<(), DecodeError> {
        // An index loop: it runs for every column of every reading, and iterator
        // adaptors cost a call per step unoptimised.
        let mut ci = 0;
        while ci < self.columns.len() {
            let col = &self.columns[ci];
            let buf = &mut self.bufs[ci];
            let captured = match col.topic_capture {
                Some(k) if k < self.captured.len() => Some(self.captured[k]),
                _ => None,
            };
            let done = if col.arrival {
                buf.push_time(self.now);
                Ok(())
            } else if let Some((a, b)) = captured {
                buf.push(&col.name, &Scalar::Str(Cow::Borrowed(&self.topic[a..b])))
            } else {
                match self.slots[ci].take() {
                    None | Some(Scalar::Null) if !col.nullable => {
                        Err(DecodeError::Missing(col.name.clone()))
                    }
                    None => {
                        buf.push_null();
                        Ok(())
                    }
                    Some(v) => buf.push(&col.name, &v),
                }
            };
            if let Err(e) = done {
                // This reading's cells in the columns before this one.
                for b in &mut self.bufs[..ci] {
                    b.truncate(self.rows);
                }
                return Err(e);
            }
            ci += 1;
        }
        self.rows += 1;
        Ok(())
    }

    /// The column named `key`, the `pos`-th key of its reading.
    fn column_of(&mut self, pos: usize, key: &[u8]) -> Option<usize> {
        match self.order.get(pos).copied() {
            Some(g) if g < self.columns.len() && same(self.columns[g].name.as_bytes(), key) => {
                Some(g)
            }
            _ => {
                let f = self
                    .columns
                    .iter()
                    .position(|c| same(c.name.as_bytes(), key));
                let mark = f.unwrap_or(usize::MAX);
                match self.order.get_mut(pos) {
                    Some(o) => *o = mark,
                    // Remember the first 64 positions only: a hostile payload with
                    // thousands of keys must not grow the decoder.
                    None if pos < 64 => self.order.push(mark),
                    None => {}
                }
                f
            }
        }
    }

    /// The message read: its slots (for reuse), the rows pending now, and its outcome.
    fn end(self) -> Ended<'de> {
        let outcome = DecodeOutcome {
            accepted: self.rows - self.start,
            rejected: self.rejected,
        };
        (self.slots, self.rows, outcome)
    }

    /// Forgets what an abandoned fast-path attempt parsed.
    fn reset(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
        for b in self.bufs.iter_mut() {
            b.truncate(self.start);
        }
        self.rows = self.start;
        self.rejected.clear();
    }

    /// Reads one reading object into `slots`: fields of declared columns are parsed as
    /// scalars (borrowed where possible), others skipped without building anything.
    fn read_map<A: MapAccess<'de>>(&mut self, mut map: A) -> Result<(), A::Error> {
        self.slots.iter_mut().for_each(|s| *s = None);
        let mut pos = 0;
        while let Some(k) = map.next_key::<Cow<'de, str>>()? {
            let found = self.column_of(pos, k.as_bytes());
            pos += 1;
            match found {
                Some(ci) if self.columns[ci].wave => {
                    self.slots[ci] = Some(map.next_value_seed(wave::WaveSeed {
                        field: &self.columns[ci].name,
                        max_samples: self.max_samples,
                    })?)
                }
                // A repeated key: the last value counts, as in most JSON readers.
                Some(ci) => self.slots[ci] = Some(map.next_value::<Scalar<'de>>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// One element of an array message.
struct ElementSeed<'s, 'a, 'de> {
    m: &'s mut MessageSeed<'a, 'de>,
    index: usize,
}

impl<'de> de::DeserializeSeed<'de> for ElementSeed<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ElementSeed<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a reading object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.m.read_map(map)?;
        self.m.finish_reading(Some(self.index));
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.m.not_a_reading(Some(self.index), "an array");
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.m.not_a_reading(Some(self.index), "a boolean");
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.m.not_a_reading(Some(self.index), "a number");
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.m.not_a_reading(Some(self.index), "a number");
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.m.not_a_reading(Some(self.index), "a number");
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.m.not_a_reading(Some(self.index), "a string");
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.m.not_a_reading(Some(self.index), "null");
        Ok(())
    }
}

impl MessageSeed<'_, '_> {
    fn not_a_reading(&mut self, index: Option<usize>, kind: &'static str) {
        self.rejected.push(Rejected {
            index,
            error: DecodeError::NotAReading(kind),
        });
    }
}

/// The top level: one reading or an array of readings.
impl<'de> Visitor<'de> for &mut MessageSeed<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a reading object or an array of them")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.read_map(map)?;
        self.finish_reading(None);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while seq
            .next_element_seed(ElementSeed { m: self, index })?
            .is_some()
        {
            index += 1;
        }
        if index == 0 {
            // Nothing to take, but the message must not vanish without a trace.
            self.not_a_reading(None, "an empty array");
        }
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.not_a_reading(None, "a boolean");
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.not_a_reading(None, "a number");
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.not_a_reading(None, "a number");
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.not_a_reading(None, "a number");
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.not_a_reading(None, "a string");
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.not_a_reading(None, "null");
        Ok(())
    }
}

struct Column {
    name: String,
    nullable: bool,
    /// Index of this column among the topic template's captures.
    topic_capture: Option<usize>,
    /// Filled with the message's arrival time (processing-time sources).
    arrival: bool,
    /// A waveform (`List<Float64>`) column.
    wave: bool,
}

/// A message's working buffers, empty between messages. Slots borrow from the message
/// (topic and payload), so they are kept at `'static`: taken for a message as they are
/// (a `'static` element type is a subtype of the message's, so no conversion runs), and
/// re-typed through [`recycle`] on the way back.
#[derive(Default)]
struct Spare {
    captured: Vec<(usize, usize)>,
    slots: Vec<Option<Scalar<'static>>>,
}

/// An empty vector with `v`'s allocation, for elements that differ only in lifetime:
/// collecting in place reuses the buffer (same layout), so a steady stream of messages
/// allocates nothing here. Were the buffer not reused, this would merely allocate.
fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().map(|_| unreachable!("cleared")).collect()
}

/// Makes the (empty) `slots` one empty slot per column. A plain loop: this runs per
/// message, and `resize_with`'s closure costs a call per slot unoptimised.
fn fill_slots(slots: &mut Vec<Option<Scalar<'_>>>, n: usize) {
    while slots.len() < n {
        slots.push(None);
    }
}

/// What happened to one message.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DecodeOutcome {
    /// Readings appended to the pending batch.
    pub accepted: usize,
    /// Readings (or the whole message, index `None`) that were rejected.
    pub rejected: Vec<Rejected>,
}

/// One rejected reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Position of the reading in an array message; `None` for the whole message.
    pub index: Option<usize>,
    /// Why.
    pub error: DecodeError,
}

/// Decodes JSON messages into a pending Arrow batch with a declared schema.
///
/// Supported column types: `Float64`, `Int64`, `Utf8`, `Boolean`,
/// `Timestamp(Millisecond)`, and `List<Float64>` for waveforms (a JSON array of
/// numbers, or `{"encoding": "f32le"|"i16le", "scale": S, "data": "<base64>"}`). Timestamps are epoch milliseconds (numbers) or
/// RFC 3339 strings. Fields not in the schema are ignored. Captured topic levels
/// override payload fields of the same name, so a device cannot report as another.
pub struct JsonDecoder {
    schema: SchemaRef,
    columns: Vec<Column>,
    /// The pending batch, one buffer per column.
    bufs: Vec<ColumnBuf>,
    template: Option<TopicTemplate>,
    max_payload: usize,
    /// Samples one waveform value may hold.
    max_samples: usize,
    rows: usize,
    /// Whether any column holds waveforms.
    waves: bool,
    /// Column matched at each key position of the last reading (see `MessageSeed`).
    key_order: Vec<usize>,
    /// Whether a column takes the arrival time (see [`Self::with_arrival_column`]).
    arrival: bool,
    /// Arrival time of the message being decoded, ms.
    now: i64,
    /// Buffers kept from one message to the next.
    spare: Spare,
    /// Whether the fast path is tried first (off only in tests comparing the paths).
    fast: bool,
    /// Messages the fast path took (tests check that it is exercised).
    #[cfg(test)]
    fast_hits: usize,
}

impl fmt::Debug for JsonDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonDecoder")
            .field("schema", &self.schema)
            .field("rows", &self.rows)
            .finish()
    }
}

/// A schema the JSON decoder cannot fill.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column '{column}' has type {data_type}, which JSON sources do not support (use DOUBLE, BIGINT, TEXT, BOOLEAN, TIMESTAMP or DOUBLE[])")]
pub struct UnsupportedColumn {
    /// Column name.
    pub column: String,
    /// Its Arrow type.
    pub data_type: String,
}

impl JsonDecoder {
    /// A decoder for `schema`, with an optional topic template and payload limit.
    pub fn new(
        schema: SchemaRef,
        template: Option<TopicTemplate>,
        max_payload: usize,
    ) -> Result<Self, UnsupportedColumn> {
        let captures: Vec<String> = template
            .as_ref()
            .map(|t| t.captures().map(str::to_string).collect())
            .unwrap_or_default();
        let mut columns = Vec::new();
        let mut bufs = Vec::new();
        for f in schema.fields() {
            columns.push(Column {
                name: f.name().clone(),
                nullable: f.is_nullable(),
                topic_capture: captures.iter().position(|c| c == f.name()),
                arrival: false,
                wave: matches!(f.data_type(), DataType::List(_)),
            });
            bufs.push(
                ColumnBuf::new(f.data_type()).ok_or_else(|| UnsupportedColumn {
                    column: f.name().clone(),
                    data_type: f.data_type().to_string(),
                })?,
            );
        }
        let waves = columns.iter().any(|c| c.wave);
        Ok(JsonDecoder {
            schema,
            columns,
            bufs,
            template,
            max_payload,
            max_samples: DEFAULT_MAX_SAMPLES,
            rows: 0,
            waves,
            key_order: Vec::new(),
            arrival: false,
            now: 0,
            spare: Spare::default(),
            fast: true,
            #[cfg(test)]
            fast_hits: 0,
        })
    }

    /// Fills the TIMESTAMP column `name` with each message's arrival time instead of a
    /// payload field (sources timed by processing time).
    pub fn with_arrival_column(mut self, name: &str) -> Self {
        for c in &mut self.columns {
            c.arrival = c.name == name;
        }
        self.arrival = self.columns.iter().any(|c| c.arrival);
        self
    }

    /// Caps the samples of one waveform value (default [`DEFAULT_MAX_SAMPLES`]); a
    /// reading with more is rejected as `too_many_samples`.
    pub fn with_max_samples(mut self, max_samples: usize) -> Self {
        self.max_samples = max_samples;
        self
    }

    /// The schema of the batches this decoder produces.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The topic template whose captures fill columns, if any.
    pub fn template(&self) -> Option<&TopicTemplate> {
        self.template.as_ref()
    }

    /// Readings buffered since the last [`flush`](Self::flush).
    pub fn buffered_rows(&self) -> usize {
        self.rows
    }

    /// Waveform samples buffered since the last [`flush`](Self::flush): a batch of
    /// waveforms weighs by its samples, not its rows.
    pub fn buffered_samples(&self) -> usize {
        if !self.waves {
            return 0;
        }
        self.bufs.iter().map(ColumnBuf::samples).sum()
    }

    /// Decodes one message and appends its good readings to the pending batch; an
    /// arrival-time column gets the wall clock.
    pub fn decode(&mut self, topic: &str, payload: &[u8]) -> DecodeOutcome {
        let now = self.arrival_now();
        self.decode_at(topic, payload, now)
    }

    /// The wall clock in epoch milliseconds when a column takes the arrival time (0
    /// otherwise: no clock read per message for nothing).
    fn arrival_now(&self) -> i64 {
        if self.arrival {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        } else {
            0
        }
    }

    /// The byte ranges of the topic's levels captured by the template (none without
    /// one), or why the topic does not fit it.
    fn capture(&mut self, topic: &str) -> Result<Vec<(usize, usize)>, Rejected> {
        let mut captured = std::mem::take(&mut self.spare.captured);
        if let Some(t) = &self.template {
            if !t.capture_spans(topic, &mut captured) {
                return Err(Rejected {
                    index: None,
                    error: DecodeError::TopicMismatch {
                        topic: topic.to_string(),
                        template: t.as_str().to_string(),
                    },
                });
            }
        }
        Ok(captured)
    }

    /// The parsing context of one message on `topic` with its `captured` levels, with
    /// `slots` as the reading's raw values and the spare cell buffer.
    fn seed<'a, 'de>(
        &'a mut self,
        topic: &'de str,
        captured: &'a [(usize, usize)],
        slots: Vec<Option<Scalar<'de>>>,
    ) -> MessageSeed<'a, 'de> {
        MessageSeed {
            columns: &self.columns,
            bufs: &mut self.bufs,
            topic,
            captured,
            now: self.now,
            max_samples: self.max_samples,
            slots,
            start: self.rows,
            rows: self.rows,
            rejected: Vec::new(),
            order: &mut self.key_order,
        }
    }

    /// Decodes one message that arrived at `now_ms` (epoch milliseconds).
    pub fn decode_at(&mut self, topic: &str, payload: &[u8], now_ms: i64) -> DecodeOutcome {
        self.now = now_ms;
        let mut out = DecodeOutcome::default();
        let whole = |error| Rejected { index: None, error };
        if payload.len() > self.max_payload {
            out.rejected.push(whole(DecodeError::TooLarge {
                size: payload.len(),
                limit: self.max_payload,
            }));
            return out;
        }
        let captured = match self.capture(topic) {
            Ok(c) => c,
            Err(r) => {
                out.rejected.push(r);
                return out;
            }
        };
        let n = self.columns.len();
        let mut slots: Vec<Option<Scalar>> = std::mem::take(&mut self.spare.slots);
        fill_slots(&mut slots, n);
        let try_fast = self.fast;
        let mut seed = self.seed(topic, &captured, slots);
        let fast = try_fast && flat::decode(payload, &mut seed).is_some();
        if !fast {
            seed.reset();
            let mut de = serde_json::Deserializer::from_slice(payload);
            let parsed =
                de::Deserializer::deserialize_any(&mut de, &mut seed).and_then(|()| de.end());
            if let Err(e) = parsed {
                // Nothing is taken from a message that does not parse.
                seed.reset();
                seed.rejected
                    .push(whole(DecodeError::NotJson(e.to_string())));
            }
        }
        let ended = seed.end();
        #[cfg(test)]
        {
            self.fast_hits += usize::from(fast);
        }
        self.finish_message(ended, captured)
    }

    /// Decodes one reading given as the JSON values of its fields rather than as text
    /// (a history row: no JSON written, none parsed). `value(k)` is the value of the
    /// schema's `k`-th column as the payload would have carried it (`None`: absent).
    /// Checked and converted exactly as [`decode_at`](Self::decode_at) checks a
    /// payload holding that one object on `topic` (topic template, captured levels
    /// overriding fields, types, required fields, arrival time), except for the
    /// payload size, which the caller checks against [`max_payload`](Self::max_payload).
    pub fn decode_values<'v>(
        &mut self,
        topic: &'v str,
        mut value: impl FnMut(usize) -> Option<Scalar<'v>>,
    ) -> DecodeOutcome {
        self.decode_given(topic, None, |_, k| value(k))
    }

    /// Decodes `rows` readings given as values that together make one message, a JSON
    /// array of their objects (a connector that turns one message of its own into
    /// several readings): `value(row, k)` is the value of the schema's `k`-th column in
    /// reading `row` (`None`: absent). Checked and converted exactly as
    /// [`decode_at`](Self::decode_at) checks a payload holding that array on `topic`:
    /// a rejected reading carries its position, nothing is taken from an empty array,
    /// and the whole message is refused once when the topic does not fit the template.
    /// The payload size is the caller's to check, as for
    /// [`decode_values`](Self::decode_values).
    pub fn decode_array_values<'v>(
        &mut self,
        topic: &'v str,
        rows: usize,
        value: impl FnMut(usize, usize) -> Option<Scalar<'v>>,
    ) -> DecodeOutcome {
        self.decode_given(topic, Some(rows), value)
    }

    /// Readings given as values: one object (`rows` `None`) or an array of `rows`.
    fn decode_given<'v>(
        &mut self,
        topic: &'v str,
        rows: Option<usize>,
        mut value: impl FnMut(usize, usize) -> Option<Scalar<'v>>,
    ) -> DecodeOutcome {
        self.now = self.arrival_now();
        let mut out = DecodeOutcome::default();
        let captured = match self.capture(topic) {
            Ok(c) => c,
            Err(r) => {
                out.rejected.push(r);
                return out;
            }
        };
        let mut slots: Vec<Option<Scalar>> = std::mem::take(&mut self.spare.slots);
        fill_slots(&mut slots, self.columns.len());
        let mut seed = self.seed(topic, &captured, slots);
        for row in 0..rows.unwrap_or(1) {
            for (k, slot) in seed.slots.iter_mut().enumerate() {
                *slot = value(row, k);
            }
            // An array's readings carry their position; a lone object's none.
            seed.finish_reading(rows.map(|_| row));
        }
        if rows == Some(0) {
            seed.not_a_reading(None, "an empty array");
        }
        let ended = seed.end();
        self.finish_message(ended, captured)
    }

    /// The largest payload taken, in bytes.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The outcome of the message `seed` read (its readings already in the columns);
    /// keeps its buffers for the next message.
    fn finish_message(
        &mut self,
        (slots, rows, outcome): Ended<'_>,
        captured: Vec<(usize, usize)>,
    ) -> DecodeOutcome {
        self.rows = rows;
        self.spare = Spare {
            captured,
            slots: recycle(slots),
        };
        outcome
    }

    /// Closes the pending batch; `None` when nothing is buffered.
    pub fn flush(&mut self) -> Option<RecordBatch> {
        if self.rows == 0 {
            return None;
        }
        self.rows = 0;
        let arrays: Vec<ArrayRef> = self.bufs.iter_mut().map(ColumnBuf::finish).collect();
        // The columns were filled against this very schema; a mismatch is a bug.
        Some(RecordBatch::try_new(self.schema.clone(), arrays).expect("columns match schema"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{
        Field, Float64Type, Schema, TimeUnit, TimestampMillisecondType,
    };
    use std::sync::Arc;

    /// A required `device` and `ts`, then `rest`.
    fn schema(rest: Vec<Field>) -> SchemaRef {
        let mut fields = vec![
            Field::new("device", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ];
        fields.extend(rest);
        Arc::new(Schema::new(fields))
    }

    fn decoder() -> JsonDecoder {
        let schema = schema(vec![Field::new("vibration", DataType::Float64, true)]);
        let t = TopicTemplate::parse("plant/{site}/{device}/telemetry").unwrap();
        JsonDecoder::new(schema, Some(t), 1024).unwrap()
    }

    #[test]
    fn single_and_array_readings() {
        let mut d = decoder();
        let o = d.decode(
            "plant/s/p1/telemetry",
            br#"{"ts": 1000, "vibration": 1.5, "extra": {"a": 1}}"#,
        );
        assert_eq!(
            o,
            DecodeOutcome {
                accepted: 1,
                rejected: vec![]
            }
        );
        let o = d.decode(
            "plant/s/p2/telemetry",
            br#"[{"ts": "1970-01-01T00:00:02Z", "vibration": 2}, {"ts": 3000, "vibration": "x"}, 5]"#,
        );
        assert_eq!(o.accepted, 1);
        assert_eq!(o.rejected.len(), 2);
        assert_eq!(o.rejected[0].index, Some(1));
        assert_eq!(o.rejected[0].error.code(), "wrong_type");
        assert_eq!(
            o.rejected[0].error.reason(),
            forewarn_core::Reason::WrongType
        );
        assert_eq!(o.rejected[1].error, DecodeError::NotAReading("a number"));
        let b = d.flush().unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.column(0).as_string::<i32>().value(1), "p2");
        assert_eq!(
            b.column(1)
                .as_primitive::<TimestampMillisecondType>()
                .value(1),
            2000
        );
        assert_eq!(b.column(2).as_primitive::<Float64Type>().value(1), 2.0);
        assert!(d.flush().is_none());
    }

    #[test]
    fn arrival_column_takes_the_clock_not_the_payload() {
        let clock = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64
        };
        let ts = |b: &RecordBatch, row| {
            b.column(1)
                .as_primitive::<TimestampMillisecondType>()
                .value(row)
        };
        let mut d = decoder().with_arrival_column("ts");
        let before = clock();
        assert_eq!(d.decode("plant/s/p/telemetry", br#"{"ts": 5}"#).accepted, 1);
        let after = clock();
        assert_eq!(d.decode_at("plant/s/p/telemetry", b"{}", 1234).accepted, 1);
        let b = d.flush().unwrap();
        assert!((before..=after).contains(&ts(&b, 0)), "{}", ts(&b, 0));
        assert_eq!(ts(&b, 1), 1234);
        // Without it, the payload's field, and a reading without one is refused.
        let mut d = decoder();
        assert_eq!(d.decode("plant/s/p/telemetry", br#"{"ts": 5}"#).accepted, 1);
        assert_eq!(
            d.decode_at("plant/s/p/telemetry", b"{}", 1234).rejected[0].error,
            DecodeError::Missing("ts".into())
        );
        assert_eq!(ts(&d.flush().unwrap(), 0), 5);
    }

    #[test]
    fn topic_overrides_payload_identity() {
        let mut d = decoder();
        d.decode("plant/s/real/telemetry", br#"{"device": "spoof", "ts": 1}"#);
        let b = d.flush().unwrap();
        assert_eq!(b.column(0).as_string::<i32>().value(0), "real");
        assert!(b.column(2).is_null(0));
    }

    #[test]
    fn rejections_have_reasons() {
        let mut d = decoder();
        let code = |d: &mut JsonDecoder, topic: &str, p: &[u8]| {
            d.decode(topic, p).rejected[0].error.reason()
        };
        assert_eq!(
            code(&mut d, "plant/s/p/telemetry", b"{not json"),
            forewarn_core::Reason::NotJson
        );
        assert_eq!(
            code(&mut d, "plant/s/p/telemetry", b"\xff\xfe"),
            forewarn_core::Reason::NotJson
        );
        assert_eq!(
            code(&mut d, "plant/s/p/telemetry", br#"{"vibration": 1}"#),
            forewarn_core::Reason::MissingField
        );
        assert_eq!(
            code(&mut d, "plant/s/p/telemetry", br#"{"ts": null}"#),
            forewarn_core::Reason::MissingField
        );
        assert_eq!(
            code(
                &mut d,
                "plant/s/p/telemetry",
                br#"{"ts": 1, "vibration": "NaN"}"#
            ),
            forewarn_core::Reason::NonFinite
        );
        assert_eq!(
            code(
                &mut d,
                "plant/s/p/telemetry",
                br#"{"ts": 1, "vibration": 1e999}"#
            ),
            forewarn_core::Reason::NotJson
        );
        assert_eq!(
            code(&mut d, "plant/s/p/telemetry", br#"{"ts": "soon"}"#),
            forewarn_core::Reason::BadTimestamp
        );
        assert_eq!(
            code(&mut d, "other/topic", br#"{"ts": 1}"#),
            forewarn_core::Reason::TopicMismatch
        );
        assert_eq!(
            code(&mut d, "plant/s/p/telemetry", &[b' '; 2000]),
            forewarn_core::Reason::TooLarge
        );
        assert_eq!(
            code(&mut d, "plant/s/p/telemetry", b"\"text\""),
            forewarn_core::Reason::NotAReading
        );
        // Deep nesting cannot overflow the stack: ignored values are skipped iteratively.
        let mut big = JsonDecoder::new(d.schema().clone(), None, 1 << 20).unwrap();
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            code(&mut big, "t", deep.as_bytes()),
            forewarn_core::Reason::NotAReading
        );
        let deep_field = format!(
            r#"{{"device": "p", "ts": 1, "x": {}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(big.decode("t", deep_field.as_bytes()).accepted, 1);
        assert_eq!(d.buffered_rows(), 0);
    }

    #[test]
    fn values_decode_as_their_json_payload_does() {
        let schema = schema(vec![
            Field::new("vibration", DataType::Float64, true),
            Field::new("n", DataType::Int64, false),
        ]);
        let t = TopicTemplate::parse("plant/{site}/{device}/telemetry").unwrap();
        let mut text = JsonDecoder::new(schema.clone(), Some(t.clone()), 1024).unwrap();
        let mut values = JsonDecoder::new(schema, Some(t), 1024).unwrap();
        let s = |v: &'static str| Some(Scalar::Str(Cow::Borrowed(v)));
        // (topic, payload, the same fields as values in column order).
        type Fields = [Option<Scalar<'static>>; 4];
        let cases: Vec<(&str, &str, Fields)> = vec![
            (
                "plant/s/p1/telemetry",
                r#"{"ts": 1000, "vibration": 1.5, "n": 2, "device": "other"}"#,
                [
                    s("other"),
                    Some(Scalar::Int(1000)),
                    Some(Scalar::Float(1.5)),
                    Some(Scalar::Int(2)),
                ],
            ),
            (
                "plant/s/p1/telemetry",
                r#"{"ts": "2026-01-05T06:00:00Z", "n": 3}"#,
                [None, s("2026-01-05T06:00:00Z"), None, Some(Scalar::Int(3))],
            ),
            (
                "plant/s/p1/telemetry",
                r#"{"ts": 1000}"#,
                [None, Some(Scalar::Int(1000)), None, None],
            ),
            (
                "plant/s/p1/telemetry",
                r#"{"ts": "yesterday", "n": 1}"#,
                [None, s("yesterday"), None, Some(Scalar::Int(1))],
            ),
            (
                "plant/s/p1/telemetry",
                r#"{"ts": 1, "vibration": "NaN", "n": 1}"#,
                [None, Some(Scalar::Int(1)), s("NaN"), Some(Scalar::Int(1))],
            ),
            (
                "plant/s/p1/telemetry",
                r#"{"ts": 1, "vibration": "x", "n": 1}"#,
                [None, Some(Scalar::Int(1)), s("x"), Some(Scalar::Int(1))],
            ),
            (
                "plant/s/p1/telemetry",
                r#"{"ts": 1, "n": 1.5}"#,
                [None, Some(Scalar::Int(1)), None, Some(Scalar::Float(1.5))],
            ),
            (
                "plant/s//telemetry",
                r#"{"ts": 1, "n": 1}"#,
                [None, Some(Scalar::Int(1)), None, Some(Scalar::Int(1))],
            ),
        ];
        for (topic, payload, fields) in cases {
            let a = text.decode(topic, payload.as_bytes());
            let b = values.decode_values(topic, |k| fields[k].clone());
            assert_eq!(a, b, "{payload}");
        }
        // The same readings accepted by both, with the same cells.
        let (a, b) = (text.flush().unwrap(), values.flush().unwrap());
        assert_eq!(a.num_rows(), 2);
        assert_eq!(a, b);
        // The topic's device overrides the field.
        assert_eq!(b.column(0).as_string::<i32>().value(0), "p1");
    }

    #[test]
    fn array_values_decode_as_their_json_array_does() {
        // device, ts, v.
        let schema = schema(vec![Field::new("v", DataType::Float64, true)]);
        let t = TopicTemplate::parse("plant/{device}").unwrap();
        let mut text = JsonDecoder::new(schema.clone(), Some(t.clone()), 1024).unwrap();
        let mut values = JsonDecoder::new(schema, Some(t), 1024).unwrap();
        type Row = [Option<Scalar<'static>>; 3];
        let int = |i| Some(Scalar::Int(i));
        let cases: Vec<(&str, &str, Vec<Row>)> = vec![
            (
                "plant/p1",
                r#"[{"ts": 1, "v": 1.5}, {"ts": 2, "v": "x"}, {"v": 3}, {"ts": 4, "device": "q"}]"#,
                vec![
                    [None, int(1), Some(Scalar::Float(1.5))],
                    [None, int(2), Some(Scalar::Str(Cow::Borrowed("x")))],
                    [None, None, int(3)],
                    [Some(Scalar::Str(Cow::Borrowed("q"))), int(4), None],
                ],
            ),
            ("plant/p1", "[]", vec![]),
            (
                "elsewhere",
                r#"[{"ts": 1}, {"ts": 2}]"#,
                vec![[None, int(1), None]; 2],
            ),
        ];
        for (topic, payload, rows) in cases {
            let a = text.decode(topic, payload.as_bytes());
            let b = values.decode_array_values(topic, rows.len(), |r, k| rows[r][k].clone());
            assert_eq!(a, b, "{payload}");
        }
        // Rows 0 and 3 of the first message, with the topic's device in both.
        let (a, b) = (text.flush().unwrap(), values.flush().unwrap());
        assert_eq!(a.num_rows(), 2);
        assert_eq!(a, b);
        assert_eq!(b.column(0).as_string::<i32>().value(1), "p1");
    }

    #[test]
    fn same_is_byte_equality() {
        let base: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
        for n in 0..40 {
            let a = &base[..n];
            assert!(same(a, a));
            assert!(!same(a, &base[..n + 1]));
            for at in 0..n {
                let mut b = a.to_vec();
                b[at] ^= 0x20;
                assert!(!same(a, &b), "length {n}, byte {at}");
            }
        }
    }

    /// The fast path and serde_json give the same outcome and the same rows for every
    /// payload: generated readings (scalars of every kind, nested values, escapes, big
    /// numbers) and each of them with one byte changed, cut short or padded.
    #[test]
    fn fast_path_agrees_with_serde_path() {
        let schema = schema(vec![
            Field::new("v", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
            Field::new("ok", DataType::Boolean, true),
            Field::new("label", DataType::Utf8, true),
        ]);
        let t = TopicTemplate::parse("p/{device}").unwrap();
        let mut fast = JsonDecoder::new(schema.clone(), Some(t.clone()), 4096).unwrap();
        let mut slow = JsonDecoder::new(schema, Some(t), 4096).unwrap();
        slow.fast = false;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let values = [
            "1",
            "-0",
            "0",
            "01",
            "1.5",
            "-2.25e3",
            "1E-2",
            "1e400",
            "-1e400",
            "1.",
            ".5",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551616",
            "-",
            "123456789012345678901234567890.5",
            "0.1000000000000000055511151231257827",
            "1e22",
            "1e23",
            "9007199254740993.0",
            "4.35",
            "-0.3",
            "0.0",
            "-0.0",
            "-1.7976931348623157e308",
            "5e-324",
            "2.2250738585072014e-308",
            "1e-400",
            "123.456e-5",
            "-9223372036854775808",
            "-9223372036854775809",
            "1e+2",
            "true",
            "false",
            "null",
            "nul",
            "\"x\"",
            "\"a\\nb\"",
            "\"NaN\"",
            "\"inf\"",
            "\"1970-01-01T00:00:01Z\"",
            "\"\\u00e9\"",
            "\"\u{e9}t\u{e9}\"",
            "[1,2]",
            "{\"a\":1}",
            "[]",
            "{}",
            "\"\t\"",
        ];
        let keys = [
            "ts", "v", "n", "ok", "label", "device", "other", "v", "t\\u0073",
        ];
        let mut payloads = Vec::new();
        for _ in 0..3000 {
            let reading = |next: &mut dyn FnMut(u64) -> u64| {
                let mut fields: Vec<String> = (0..next(6))
                    .map(|_| {
                        let k = keys[next(keys.len() as u64) as usize];
                        let v = values[next(values.len() as u64) as usize];
                        // Mostly values the column takes, so that readings pass too.
                        let v = match (next(3), k) {
                            (0, _) => v,
                            (_, "v") => ["2.5", "-0.125", "7", "1e-3"][next(4) as usize],
                            (_, "n") => ["3", "-12", "4.0"][next(3) as usize],
                            (_, "ok") => ["true", "false"][next(2) as usize],
                            (_, "label" | "device") => "\"x\u{e9}\"",
                            _ => v,
                        };
                        format!(
                            "\"{k}\"{}:{}{v}",
                            [" ", ""][next(2) as usize],
                            [" ", "\n", ""][next(3) as usize]
                        )
                    })
                    .collect();
                if next(4) > 0 {
                    fields.insert(0, format!("\"ts\":{}", 1000 + next(100_000)));
                }
                format!("{{{}}}", fields.join(","))
            };
            let p = match next(4) {
                0 => format!(
                    "[{}]",
                    (0..next(4))
                        .map(|_| reading(&mut next))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                1 => format!(" {} ", reading(&mut next)),
                _ => reading(&mut next),
            };
            payloads.push(p.clone().into_bytes());
            let mut b = p.into_bytes();
            if !b.is_empty() {
                let at = next(b.len() as u64) as usize;
                match next(3) {
                    0 => b[at] = b"{}[],:\"\\ 0-.e9xn\xff"[next(17) as usize],
                    1 => b.truncate(at),
                    _ => b.insert(at, b",]} "[next(4) as usize]),
                }
            }
            payloads.push(b);
        }
        let (mut accepted, mut rejected, mut flushed) = (0, 0, 0);
        let mut flush = |fast: &mut JsonDecoder, slow: &mut JsonDecoder| {
            let batch = fast.flush();
            assert_eq!(batch, slow.flush());
            flushed += batch.map_or(0, |b| b.num_rows());
        };
        for (i, p) in payloads.iter().enumerate() {
            let topic = format!("p/d{}", i % 5);
            let a = fast.decode(&topic, p);
            let b = slow.decode(&topic, p);
            assert_eq!(a, b, "payload {}", String::from_utf8_lossy(p));
            accepted += a.accepted;
            rejected += a.rejected.len();
            if i % 50 == 49 {
                flush(&mut fast, &mut slow);
            }
        }
        flush(&mut fast, &mut slow);
        // Rejected readings and messages that fail late leave no rows behind.
        assert_eq!(flushed, accepted);
        // Both outcomes are well represented, or the comparison proves little.
        assert!(accepted > 500 && rejected > 500, "{accepted} {rejected}");
        assert!(fast.fast_hits > 1000, "{}", fast.fast_hits);
        assert_eq!(slow.fast_hits, 0);
    }
}
