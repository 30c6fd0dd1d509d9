//! Taking input: messages decoded into the sources' micro-batches, pushed batches, device
//! admission, and running the window operators over a flushed batch.

use super::body::{self, Body};
use super::*;
use crate::latency;
use crate::origins::Origins;

/// Waveform samples a source's micro-batch may hold before it is flushed whatever its
/// row count: 2 Mi samples (16 MB of f64, 512 waveforms of 4,096), so 4,096 rows of
/// long waveforms cannot pile up gigabytes before the windows see them.
const MAX_BATCH_SAMPLES: usize = 1 << 21;

impl Runtime {
    /// Whether source `i` takes a message on `topic` pushed for source `to` (`None`:
    /// routed by topic, to every source whose filter matches; a source without a topic
    /// takes only messages pushed by its name).
    fn takes(&self, i: usize, topic: &str, to: Option<usize>) -> bool {
        match to {
            Some(j) => i == j,
            None => self.sources[i]
                .filter
                .as_deref()
                .is_some_and(|f| filter_matches(f, topic)),
        }
    }

    /// Whether the message repeats one among the last `duplicate_window` messages to
    /// event-time sources byte for byte (a QoS 1 publisher resends after a lost
    /// PUBACK; with the timestamp inside, the same bytes are the same readings). Sources
    /// timed by arrival are exempt: identical payloads are new readings there. A
    /// message pushed by source name is compared with those pushed to the same source.
    pub(super) fn is_duplicate(&mut self, topic: &str, body: &Body, to: Option<usize>) -> bool {
        if !self.recent.enabled()
            || !(0..self.sources.len())
                .any(|i| !self.sources[i].processing_time && self.takes(i, topic, to))
        {
            return false;
        }
        match to {
            // MQTT topics cannot hold U+0000: this key is no topic's.
            Some(j) => {
                let key = format!("\0{}", self.sources[j].name);
                body.repeated(&mut self.recent, &key)
            }
            None => body.repeated(&mut self.recent, topic),
        }
    }

    /// One message (JSON text, or a history row given as values): decoded by the
    /// sources that take it (see [`Self::takes`]).
    pub(super) async fn on_json(
        &mut self,
        topic: &str,
        body: Body<'_>,
        to: Option<usize>,
    ) -> Result<(), EngineError> {
        self.count(|s| s.messages_in += 1);

        if self.is_duplicate(topic, &body, to) {
            let source = to.map(|j| self.sources[j].name.as_str());
            let o = outputs::duplicate(&self.config, topic, source, &body.payload());
            self.emit(o).await;
            return Ok(());
        }
        let mut matched = false;
        for i in 0..self.sources.len() {
            if !self.takes(i, topic, to) {
                continue;
            }
            matched = true;
            self.sources[i].last_input = Instant::now();
            if let Some(device) = self.sources[i].refused_device(topic) {
                self.refuse_device(i, &device, topic, &body.payload()).await;
                continue;
            }
            let t = latency::start(&self.latency);
            let outcome = body.decode(&mut self.sources[i].decoder, i, topic);
            latency::record(&self.latency, t, |h| &h.decode);
            self.count(|s| s.readings_in += outcome.accepted as u64);
            self.sources[i].record_origins(topic, body.is_array(), &outcome);
            for r in outcome.rejected {
                let source = &self.sources[i].name;
                let o = outputs::undecodable(&self.config, source, topic, &body.payload(), &r);
                self.emit(o).await;
            }
            let src = &mut self.sources[i];
            if src.buffered() > 0 && src.pending_since.is_none() {
                src.pending_since = Some(Instant::now());
            }
            if src.buffered() >= self.config.max_batch_rows
                || src.decoder.buffered_samples() >= MAX_BATCH_SAMPLES
            {
                self.flush_source(i).await?;
            }
        }
        if !matched {
            let o = outputs::unknown_topic(&self.config, topic, &body.payload());
            self.emit(o).await;
        }
        Ok(())
    }

    /// Rows of recorded history, each taken as the message its device would have sent
    /// (see [`Body::Row`]): for source `to`, or routed by each row's topic. Rows read
    /// column by column ([`Readings::table`]) are taken from their columns where that
    /// gives the same (see `Runtime::on_table`).
    ///
    /// [`Readings::table`]: forewarn_formats::Readings::table
    pub(super) async fn on_rows(
        &mut self,
        rows: Arc<dyn forewarn_formats::Readings>,
        to: Option<usize>,
        idle: bool,
    ) -> Result<(), EngineError> {
        let schemas: Vec<_> = self
            .sources
            .iter()
            .map(|s| s.decoder.schema().clone())
            .collect();
        let fields = body::field_maps(rows.as_ref(), schemas.into_iter());
        if rows.one_message() {
            // As `on_message` takes one message pushed by name or routed by topic.
            let topic = match to {
                None if !rows.is_empty() => rows.topic(0),
                _ => "",
            };
            let body = Body::Array {
                rows: rows.as_ref(),
                fields: &fields,
            };
            if let (None, Some(device)) = (to, topic.strip_prefix(&self.command_prefix)) {
                self.on_command(device, &body.payload()).await;
                return self.taken(None, None).await;
            }
            self.on_json(topic, body, to).await?;
            self.on_idle(idle).await?;
            return self.taken(None, None).await;
        }
        match rows.table().and_then(|t| self.table_source(t, to)) {
            Some(s) => self.on_table(&rows, s, to, &fields).await?,
            None => {
                for row in 0..rows.len() {
                    self.on_row(rows.as_ref(), row, to, &fields).await?;
                }
            }
        }
        rows.taken();
        // As after a message: nothing else waiting, the micro-batch closes now.
        self.on_idle(idle).await
    }

    /// Row `row` of `rows`, taken as its message.
    pub(super) async fn on_row(
        &mut self,
        rows: &dyn forewarn_formats::Readings,
        row: usize,
        to: Option<usize>,
        fields: &[Option<Vec<Option<usize>>>],
    ) -> Result<(), EngineError> {
        // Pushed by a source's name, a row is a message without a topic (`push_to`).
        let topic = if to.is_some() { "" } else { rows.topic(row) };
        if let (None, Some(device)) = (to, topic.strip_prefix(&self.command_prefix)) {
            let payload = rows.payload(row);
            self.on_command(device, &payload).await;
        } else {
            let body = Body::Row { rows, row, fields };
            self.on_json(topic, body, to).await?;
        }
        self.taken(None, None).await
    }

    pub(super) async fn on_batch(
        &mut self,
        source: &str,
        batch: RecordBatch,
    ) -> Result<(), EngineError> {
        self.count(|s| s.messages_in += 1);
        let i = self.sources.iter().position(|s| s.name == source);
        // A processing-time source's batches are stamped on arrival, like its messages.
        let batch = match i {
            Some(i) if self.sources[i].processing_time => stamp_arrival(&self.sources[i], batch),
            _ => batch,
        };
        let problem = match i {
            None => Some((
                forewarn_core::Reason::UnknownSource,
                format!("no query reads source '{source}'"),
            )),
            Some(i) => outputs::batch_problem(self.sources[i].decoder.schema(), &batch),
        };
        if let Some(problem) = problem {
            let o = outputs::refused_batch(&self.config, source, i.is_some(), problem, &batch);
            self.emit(o).await;
            return Ok(());
        }
        let i = i.expect("checked above");
        self.sources[i].last_input = Instant::now();
        // Rows JSON decoding would refuse are dead-lettered the same way, by index.
        let schema = self.sources[i].decoder.schema().clone();
        let bad = crate::batches::bad_rows(&schema, &batch);
        let mut keep = vec![true; batch.num_rows()];
        for (row, reason, detail) in bad {
            keep[row] = false;
            let o = outputs::bad_row(&self.config, source, &batch, row, reason, detail);
            self.emit(o).await;
        }
        let rows = keep.iter().filter(|k| **k).count();
        let batch = if rows < batch.num_rows() {
            let mask = datafusion::arrow::array::BooleanArray::from(keep.clone());
            datafusion::arrow::compute::filter_record_batch(&batch, &mask)
                .expect("mask as long as the batch")
        } else {
            batch
        };
        // No nulls are left where the source needs values: its exact schema fits.
        let batch = RecordBatch::try_new(schema, batch.columns().to_vec())
            .expect("checked columns, no nulls in required ones");
        self.count(|s| s.readings_in += rows as u64);
        self.flush_source(i).await?;
        // Rows of a pushed batch are named by their position in it.
        let origins = (0..keep.len())
            .filter(|k| keep[*k])
            .map(|k| Origin {
                topic: "".into(),
                index: Some(k),
            })
            .collect();
        let (batch, origins) = self.admit_rows(i, batch, origins).await;
        self.process(i, batch, origins).await
    }

    /// The rows of `batch` whose device source `i` has admitted or can still admit;
    /// the others are dead-lettered as `too_many_devices`. Messages whose topic names
    /// the device were admitted before decoding; this covers pushed batches and device
    /// ids read from the payload.
    pub(super) async fn admit_rows(
        &mut self,
        i: usize,
        batch: RecordBatch,
        origins: Origins,
    ) -> (RecordBatch, Origins) {
        use datafusion::arrow::array::BooleanArray;
        use datafusion::arrow::compute::filter_record_batch;
        let src = &mut self.sources[i];
        let Some((keep, refused)) =
            admission::admit_rows(&mut src.devices, &src.device_key, &batch)
        else {
            return (batch, origins);
        };
        let (source, max) = (src.name.clone(), src.devices.max());
        for (row, device) in &refused {
            let excerpt = serde_json::Value::Object(row_to_json(&batch, *row)).to_string();
            let o = outputs::too_many_devices(
                &self.config,
                &source,
                max,
                device,
                origins.get(*row).as_ref(),
                excerpt,
            );
            self.emit(o).await;
        }
        let origins = origins.filter(&keep);
        let mask = BooleanArray::from(keep);
        let batch = filter_record_batch(&batch, &mask).expect("mask as long as the batch");
        (batch, origins)
    }

    pub(super) async fn flush_all(&mut self) -> Result<(), EngineError> {
        for i in 0..self.sources.len() {
            self.flush_source(i).await?;
        }
        Ok(())
    }

    pub(super) async fn flush_source(&mut self, i: usize) -> Result<(), EngineError> {
        self.sources[i].pending_since = None;
        let origins = std::mem::take(&mut self.sources[i].origins);
        match self.sources[i].take_batch() {
            // A topic that names the device was admitted before decoding.
            Some(batch) if self.sources[i].device_from_topic.is_none() => {
                let (batch, origins) = self.admit_rows(i, batch, origins).await;
                self.process(i, batch, origins).await
            }
            Some(batch) => self.process(i, batch, origins).await,
            None => Ok(()),
        }
    }

    pub(super) async fn process(
        &mut self,
        i: usize,
        batch: RecordBatch,
        origins: Origins,
    ) -> Result<(), EngineError> {
        self.count(|s| s.batches += 1);
        let over = self.state_bytes > self.config.max_state_bytes;
        if over {
            tracing::error!(
                state_bytes = self.state_bytes,
                limit = self.config.max_state_bytes,
                "window state over max_state_bytes: rows refused (state_limit) until windows close"
            );
        }
        // A reading refused by several queries (late for each) is one dead letter: it
        // is the reading that is lost, once, whichever queries wanted it.
        let mut refused: BTreeMap<u32, Refusal> = BTreeMap::new();
        let mut done = Vec::new();
        for k in 0..self.sources[i].operators.len() {
            let op = &mut self.sources[i].operators[k].op;
            let t = latency::start(&self.latency);
            let r = if over {
                op.refuse(&batch).await
            } else {
                op.process(&batch).await
            };
            latency::record(&self.latency, t, |h| &h.window);
            match r {
                Ok(mut processed) => {
                    let q = self.sources[i].operators[k].op.query();
                    for rej in std::mem::take(&mut processed.rejected) {
                        outputs::file_refusals(&mut refused, q, &rej);
                    }
                    done.push((k, processed));
                }
                // One failing query must not stop the others, nor the pipeline.
                Err(e) => self.query_failed(e),
            }
        }
        self.emit_refused(i, refused, &origins).await;
        for (k, processed) in done {
            self.emit_processed(i, k, processed).await;
        }
        self.measure_state();
        Ok(())
    }

    /// The dead letter of a message from a device beyond source `i`'s `max_devices`.
    pub(super) async fn refuse_device(
        &mut self,
        i: usize,
        device: &str,
        topic: &str,
        payload: &[u8],
    ) {
        let src = &self.sources[i];
        let origin = Origin {
            topic: topic.into(),
            index: None,
        };
        let o = outputs::too_many_devices(
            &self.config,
            &src.name,
            src.devices.max(),
            device,
            Some(&origin),
            outputs::excerpt(&self.config, payload),
        );
        self.emit(o).await;
    }

    /// One dead letter (late rows: one late message) per refused reading, with the
    /// topic and array position of the message it came in.
    pub(super) async fn emit_refused(
        &mut self,
        i: usize,
        refused: BTreeMap<u32, Refusal>,
        origins: &Origins,
    ) {
        let src = &self.sources[i];
        let letters: Vec<Output> = refused
            .into_iter()
            .map(|(row, r)| {
                let origin = origins.get(row as usize);
                let late = src.late_topic.as_ref();
                outputs::refusal(&self.config, &src.name, late, origin.as_ref(), r)
            })
            .collect();
        for o in letters {
            self.emit(o).await;
        }
    }

    /// Window state now: the queries share one memory pool for their aggregates.
    pub(super) fn measure_state(&mut self) {
        let ops = self.sources.iter().flat_map(|s| &s.operators);
        let pool = ops.clone().map(|o| o.op.state_bytes()).max().unwrap_or(0);
        self.state_bytes = pool + ops.map(|o| o.op.held_state_bytes()).sum::<usize>();
        self.update_gauges();
    }
}
