//! The state the task keeps per source: its decoder and the micro-batch it buffers,
//! where each buffered reading came from, the devices it admitted, and its queries'
//! window operators with how their results are published.

use datafusion::arrow::record_batch::RecordBatch;

use forewarn_alerts::Lifecycle;
use forewarn_formats::{DecodeOutcome, JsonDecoder, TopicTemplate};
use forewarn_scorer::OnlineDetectors;
use forewarn_stream::WindowOperator;
use tokio::time::Instant;

use crate::admission::{self, Devices, TopicDevice};
use crate::checkpoint;
use crate::origins::Origins;
use crate::outputs::{Origin, OriginTopic, Publisher};
use crate::Pipeline;

/// One source table: what arrives on its topics.
pub(crate) struct Source {
    pub(crate) name: String,
    /// The topic filter routing messages to it (`None`: it has no topic, and takes only
    /// messages pushed by its name).
    pub(crate) filter: Option<String>,
    pub(crate) decoder: JsonDecoder,
    /// When the oldest buffered reading arrived.
    pub(crate) pending_since: Option<Instant>,
    pub(crate) operators: Vec<Operator>,
    pub(crate) processing_time: bool,
    pub(crate) idle_timeout: Option<std::time::Duration>,
    /// When input last arrived (idle detection).
    pub(crate) last_input: Instant,
    pub(crate) late_topic: Option<TopicTemplate>,
    /// How the topic names the device, for the limit on distinct devices (`None`: it
    /// does not; the payload's device column does, see `device_key`).
    pub(crate) device_from_topic: Option<TopicDevice>,
    /// Devices admitted so far (at most `max_devices`).
    pub(crate) devices: Devices,
    /// The columns naming a row's device, for admitting the rows of pushed batches and
    /// of messages whose device is in the payload: the `device` column, else the topic's
    /// captures (joined with `/`, as the topic check joins them). Empty: one device.
    pub(crate) device_key: Vec<usize>,
    /// Where each buffered reading came from: its message's topic and its position in
    /// an array message (for the dead letter of a reading the windows refuse).
    pub(crate) origins: Origins,
    /// The micro-batch's earlier rows, in order, when rows came as columns (history
    /// read column by column) rather than through the decoder; the decoder's buffered
    /// rows follow them.
    pub(crate) staged: Vec<RecordBatch>,
    /// Rows in `staged`.
    pub(crate) staged_rows: usize,
}

/// One query of a source.
pub(crate) struct Operator {
    pub(crate) op: WindowOperator,
    /// How its closed windows are published.
    pub(crate) publish: Publisher,
    /// What a checkpoint of this operator's state must match to be restored.
    pub(crate) fingerprint: String,
}

/// The sources of a pipeline, each with its queries.
pub(crate) fn sources_of(p: &Pipeline) -> Vec<Source> {
    let mut sources: Vec<Source> = p
        .sources
        .iter()
        .map(|s| {
            let decoder = JsonDecoder::new(
                s.schema.clone(),
                s.template.clone(),
                p.config.max_payload_bytes,
            )
            .expect("checked at build")
            .with_max_samples(s.max_samples);
            Source {
                name: s.name.clone(),
                filter: (!s.topic_filter.is_empty()).then(|| s.topic_filter.clone()),
                decoder: if s.processing_time {
                    decoder.with_arrival_column(forewarn_sql::ARRIVAL_TIME)
                } else {
                    decoder
                },
                pending_since: None,
                operators: vec![],
                processing_time: s.processing_time,
                idle_timeout: s.idle_timeout,
                last_input: Instant::now(),
                late_topic: s.late_topic.clone(),
                device_from_topic: s.template.as_ref().and_then(TopicDevice::new),
                devices: Devices::new(p.config.max_devices),
                device_key: admission::device_key(s),
                origins: Origins::default(),
                staged: Vec::new(),
                staged_rows: 0,
            }
        })
        .collect();
    for q in &p.queries {
        let sink = p.sinks[&q.sink].clone();
        let spec = p.lifecycles.get(&q.name).cloned();
        let device_column = p.device_columns[&q.name].clone();
        let mut model = (q.models.len() == 1).then(|| q.models[0].clone());
        let online = p.online.get(&q.name).map(|b| {
            model = Some("online".to_string());
            OnlineDetectors::new(b.spec.clone(), b.features.clone())
        });
        let src = sources
            .iter_mut()
            .find(|s| s.name == q.source)
            .expect("source of a query");
        src.operators.push(Operator {
            op: WindowOperator::new(q.clone()).with_max_open_panes(p.config.max_open_windows),
            publish: Publisher {
                sink,
                lifecycle: spec.map(|s| Lifecycle::new(&q.name, s)),
                online,
                regime_keys: q
                    .key_columns
                    .iter()
                    .filter(|k| !k.eq_ignore_ascii_case(&device_column))
                    .cloned()
                    .collect(),
                device_column,
                topics: Default::default(),
                model,
                anomaly: !q.models.is_empty()
                    || q.output_schema.fields().iter().any(|f| f.name() == "score"),
            },
            fingerprint: checkpoint::fingerprint(q),
        });
    }
    sources
}

impl Source {
    /// Readings in the micro-batch.
    pub(crate) fn buffered(&self) -> usize {
        self.staged_rows + self.decoder.buffered_rows()
    }

    /// Appends `batch` (rows in the decoder's schema) to the micro-batch, after the
    /// rows it holds.
    pub(crate) fn stage(&mut self, batch: RecordBatch) {
        if let Some(b) = self.decoder.flush() {
            self.staged_rows += b.num_rows();
            self.staged.push(b);
        }
        self.staged_rows += batch.num_rows();
        self.staged.push(batch);
    }

    /// Closes the micro-batch; `None` when it is empty.
    pub(crate) fn take_batch(&mut self) -> Option<RecordBatch> {
        let last = self.decoder.flush();
        if self.staged.is_empty() {
            return last;
        }
        let mut parts = std::mem::take(&mut self.staged);
        self.staged_rows = 0;
        parts.extend(last);
        let schema = self.decoder.schema().clone();
        Some(
            datafusion::arrow::compute::concat_batches(&schema, &parts)
                .expect("staged rows have the decoder's schema"),
        )
    }

    /// The device named by `topic` if the source is full and has not seen it.
    pub(crate) fn refused_device(&mut self, topic: &str) -> Option<String> {
        let device = self.device_from_topic.as_ref()?.device(topic)?;
        (!self.devices.admit(&device)).then(|| device.into_owned())
    }

    /// Records where the readings a message on `topic` just added to the micro-batch
    /// came from: the message, and for an array its position in it (the rejected
    /// elements were not added, so their positions are skipped).
    pub(crate) fn record_origins(&mut self, topic: &str, array: bool, outcome: &DecodeOutcome) {
        if outcome.accepted == 0 {
            return;
        }
        let topic = OriginTopic::Text(topic.into());
        let origins = &mut self.origins;
        if array {
            let bad: Vec<usize> = outcome.rejected.iter().filter_map(|r| r.index).collect();
            origins.extend(
                (0..)
                    .filter(|k| !bad.contains(k))
                    .take(outcome.accepted)
                    .map(|k| Origin {
                        topic: topic.clone(),
                        index: Some(k),
                    }),
            );
        } else {
            origins.push(Origin { topic, index: None });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    /// A source on `plant/{device}` with at most `max` devices.
    fn source(max: usize) -> Source {
        let schema = Arc::new(Schema::new(vec![
            Field::new("device", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("v", DataType::Float64, false),
        ]));
        let template = TopicTemplate::parse("plant/{device}").unwrap();
        Source {
            name: "s".into(),
            filter: Some("plant/+".into()),
            decoder: JsonDecoder::new(schema, Some(template.clone()), 4096).unwrap(),
            pending_since: None,
            operators: vec![],
            processing_time: false,
            idle_timeout: None,
            last_input: Instant::now(),
            late_topic: None,
            device_from_topic: TopicDevice::new(&template),
            devices: Devices::new(max),
            device_key: vec![0],
            origins: Origins::default(),
            staged: vec![],
            staged_rows: 0,
        }
    }

    fn origins(s: &Source) -> Vec<(String, Option<usize>)> {
        (0..s.origins.len())
            .map(|i| s.origins.get(i).unwrap())
            .map(|o| (o.topic.to_string(), o.index))
            .collect()
    }

    #[test]
    fn array_readings_keep_their_positions_around_rejected_ones() {
        let mut s = source(10);
        let payload =
            br#" [{"ts": 1, "v": 1}, {"ts": 2}, {"ts": 3, "v": 3}, 7, {"ts": 5, "v": 5}]"#;
        let outcome = s.decoder.decode("plant/d1", payload);
        assert_eq!(outcome.accepted, 3);
        s.record_origins("plant/d1", true, &outcome);
        let payload = br#"{"ts": 6, "v": 6}"#;
        let outcome = s.decoder.decode("plant/d2", payload);
        s.record_origins("plant/d2", false, &outcome);
        // A message with nothing accepted adds no origin.
        let outcome = s.decoder.decode("plant/d3", b"[7]");
        s.record_origins("plant/d3", true, &outcome);
        assert_eq!(
            origins(&s),
            [
                ("plant/d1".to_string(), Some(0)),
                ("plant/d1".to_string(), Some(2)),
                ("plant/d1".to_string(), Some(4)),
                ("plant/d2".to_string(), None),
            ]
        );
        assert_eq!(s.decoder.buffered_rows(), s.origins.len());
    }

    #[test]
    fn a_topic_naming_one_device_too_many_is_refused() {
        let mut s = source(1);
        assert_eq!(s.refused_device("plant/d1"), None);
        assert_eq!(s.refused_device("plant/d2"), Some("d2".to_string()));
        assert_eq!(s.refused_device("plant/d1"), None);
        // A topic the template does not match names no device: nothing to refuse.
        assert_eq!(s.refused_device("other/d3/x"), None);
    }
}
