//! The handle a program pushes input through: messages, messages by source name,
//! batches and records, commands; flushing, finishing and stopping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::record_batch::RecordBatch;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::{batches, delivery};
use crate::{Delivery, EngineError, EngineStats, Envelope};

pub(crate) enum Input {
    Message(Envelope),
    /// A message for one source, by its index in [`Pipeline::sources`].
    ToSource {
        source: usize,
        message: Envelope,
    },
    Command {
        device: String,
        payload: Vec<u8>,
    },
    Batch {
        source: String,
        batch: RecordBatch,
    },
    /// Rows of recorded history, each the message its device would have sent: for one
    /// source (by index), or routed by each row's topic.
    Rows {
        to: Option<usize>,
        rows: Box<dyn forewarn_formats::Readings>,
    },
    /// A message its source's connector refused itself.
    Refused {
        source: usize,
        letter: crate::DeadLetter,
    },
    /// A device's connector reports it online or offline.
    Presence {
        device: String,
        online: bool,
    },
    Flush(oneshot::Sender<()>),
    Finish(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

pub(crate) type PipelineTask = tokio::task::JoinHandle<Result<(), EngineError>>;

/// Pushes input into a running pipeline. Cheap to clone.
#[derive(Clone)]
pub struct PipelineHandle {
    pub(crate) tx: mpsc::Sender<Input>,
    pub(crate) stats: Arc<Mutex<EngineStats>>,
    pub(crate) task: Arc<Mutex<Option<PipelineTask>>>,
    pub(crate) confirmed: Arc<AtomicU64>,
    /// The sources' columns, to match pushed batches before they are sent.
    pub(crate) targets: Arc<Vec<batches::Target>>,
    /// Measures the outputs waiting for the caller.
    pub(crate) out_depth: Arc<delivery::Depth>,
    /// The sources, in the task's order, for pushing by name.
    pub(crate) routes: Arc<Vec<Route>>,
    /// The latency histograms, once attached.
    pub(crate) latency: crate::latency::LatencySlot,
}

/// What the handle knows of a source to push to it by name.
pub(crate) struct Route {
    pub(crate) name: String,
    /// Its topic template, if it reads columns from the topic.
    pub(crate) template: Option<String>,
}

impl PipelineHandle {
    /// Pushes one message from a connector (waits while the input channel is full):
    /// a reading for the sources whose topic filter matches its topic, or an operator
    /// command on `{prefix}/command/{device}`. Its [`Delivery`] says what the connector
    /// needs back.
    pub async fn push(&self, message: Envelope) -> Result<(), EngineError> {
        self.send(Input::Message(message)).await
    }

    /// Pushes a message if the input channel has room now; otherwise hands it back
    /// (`Ok(Some(..))`), for callers that shed load instead of waiting.
    pub fn try_push(&self, message: Envelope) -> Result<Option<Envelope>, EngineError> {
        match self.tx.try_send(Input::Message(message)) {
            Ok(()) => Ok(None),
            Err(mpsc::error::TrySendError::Full(Input::Message(m))) => Ok(Some(m)),
            Err(_) => Err(EngineError::Stopped),
        }
    }

    /// Pushes one JSON message on `topic` whose sender needs nothing back: the same as
    /// [`push`](Self::push) with [`Envelope::new`].
    pub async fn push_json(&self, topic: &str, payload: Vec<u8>) -> Result<(), EngineError> {
        self.push(Envelope::new(topic, payload)).await
    }

    /// Pushes one JSON message (an object or an array of objects) for source table
    /// `source`, by its name rather than a topic: the way to feed a `connector =
    /// 'channel'` source, and usable for any source whose columns all come from the
    /// payload. It is decoded, checked and counted exactly as a message routed by
    /// topic (duplicates, `max_devices`, watermarks, checkpoints); its dead letters
    /// have an empty `source_topic` and name the source. An unknown name
    /// ([`EngineError::UnknownSource`]) or a source reading columns from its topic
    /// ([`EngineError::NeedsTopic`]) is an error here, not a dead letter.
    pub async fn push_to(&self, source: &str, payload: Vec<u8>) -> Result<(), EngineError> {
        self.push_to_with(source, payload, Delivery::None).await
    }

    /// [`push_to`](Self::push_to) with the [`Delivery`] the caller needs back (an
    /// acknowledgement once a checkpoint covers the message, or its position in a
    /// replayable log, as for [`push`](Self::push)).
    pub async fn push_to_with(
        &self,
        source: &str,
        payload: Vec<u8>,
        delivery: Delivery,
    ) -> Result<(), EngineError> {
        let input = self.to_source(source, payload, delivery)?;
        self.send(input).await
    }

    /// [`push_to`](Self::push_to) if the input channel has room now; otherwise hands
    /// the payload back (`Ok(Some(..))`), as [`try_push`](Self::try_push) does.
    pub fn try_push_to(
        &self,
        source: &str,
        payload: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, EngineError> {
        match self
            .tx
            .try_send(self.to_source(source, payload, Delivery::None)?)
        {
            Ok(()) => Ok(None),
            Err(mpsc::error::TrySendError::Full(Input::ToSource { message, .. })) => {
                Ok(Some(message.payload))
            }
            Err(_) => Err(EngineError::Stopped),
        }
    }

    /// Pushes rows of recorded history (see [`forewarn_formats::Readings`]), each taken
    /// exactly as the JSON message on its topic that [`Readings::payload`] writes
    /// would be (routing, duplicates, `max_devices`, decoding, dead letters, counters),
    /// without writing or parsing that JSON, and in one hand-off for all the rows.
    ///
    /// [`Readings::payload`]: forewarn_formats::Readings::payload
    pub async fn push_readings(
        &self,
        rows: Box<dyn forewarn_formats::Readings>,
    ) -> Result<(), EngineError> {
        self.send(Input::Rows { to: None, rows }).await
    }

    /// [`push_readings`](Self::push_readings) for source table `source`, by its name,
    /// each row as [`push_to`](Self::push_to) would take its payload (and refused the
    /// same way when the name is unknown or the source reads its topic).
    pub async fn push_readings_to(
        &self,
        source: &str,
        rows: Box<dyn forewarn_formats::Readings>,
    ) -> Result<(), EngineError> {
        let Input::ToSource { source, .. } = self.to_source(source, Vec::new(), Delivery::None)?
        else {
            unreachable!("to_source makes ToSource inputs")
        };
        self.send(Input::Rows {
            to: Some(source),
            rows,
        })
        .await
    }

    /// The input for source `name`, or why it cannot be pushed to by name.
    fn to_source(
        &self,
        name: &str,
        payload: Vec<u8>,
        delivery: Delivery,
    ) -> Result<Input, EngineError> {
        let Some(i) = self.routes.iter().position(|r| r.name == name) else {
            return Err(EngineError::UnknownSource {
                name: name.to_string(),
                known: self.routes.iter().map(|r| r.name.clone()).collect(),
            });
        };
        if let Some(t) = &self.routes[i].template {
            return Err(EngineError::NeedsTopic {
                name: name.to_string(),
                template: t.clone(),
            });
        }
        Ok(Input::ToSource {
            source: i,
            message: Envelope::new("", payload).with(delivery),
        })
    }

    /// With [`CheckpointConfig::confirm_outputs`](crate::CheckpointConfig::confirm_outputs): the first `n` outputs received from
    /// the pipeline (counted from its start) are delivered for good. Outputs not yet
    /// confirmed at a checkpoint are kept in it and emitted again after a restart.
    pub fn confirm_outputs(&self, n: u64) {
        self.confirmed.fetch_max(n, Ordering::Relaxed);
    }

    /// Stops without closing the open windows: with checkpoints, writes a last one
    /// (and acknowledges what it covers) so the next start continues the windows;
    /// without, the same as [`finish`](Self::finish).
    pub async fn shutdown(&self) -> Result<EngineStats, EngineError> {
        self.stop_with(Input::Shutdown).await
    }

    /// Delivers an operator command for `device` (JSON, see `forewarn_alerts::Command`):
    /// acknowledge, silence or unsilence. The engine confirms on the device's state topic;
    /// a command it cannot apply is dead-lettered with the reason.
    pub async fn command(&self, device: &str, payload: Vec<u8>) -> Result<(), EngineError> {
        self.send(Input::Command {
            device: device.to_string(),
            payload,
        })
        .await
    }

    /// Counts and dead-letters (on `{prefix}/deadletter/{source}`) a message that the
    /// connector of source table `source` refused before it became readings, such as
    /// Sparkplug data from an edge node whose birth was not seen. `excerpt` quotes the
    /// message (for a binary payload, as the connector chooses to show it).
    pub async fn reject(
        &self,
        source: &str,
        topic: &str,
        reason: forewarn_core::Reason,
        detail: String,
        excerpt: String,
    ) -> Result<(), EngineError> {
        let Some(i) = self.routes.iter().position(|r| r.name == source) else {
            return Err(EngineError::UnknownSource {
                name: source.to_string(),
                known: self.routes.iter().map(|r| r.name.clone()).collect(),
            });
        };
        let letter = crate::DeadLetter {
            reason,
            detail,
            source_topic: topic.to_string(),
            source: Some(source.to_string()),
            index: None,
            excerpt,
        };
        self.send(Input::Refused { source: i, letter }).await
    }

    /// A device's connector reports it `online` (a Sparkplug birth) or offline (a
    /// death, the broker's will message included). Going offline, the device's state
    /// (`{prefix}/state/{device}`) shows `offline_since`; coming back clears it. Each
    /// change is published once.
    pub async fn presence(&self, device: &str, online: bool) -> Result<(), EngineError> {
        self.send(Input::Presence {
            device: device.to_string(),
            online,
        })
        .await
    }

    /// Pushes a batch of readings for source table `source` (waits while the input
    /// channel is full).
    ///
    /// Columns are matched by name, in any order. A nullable column may be left out
    /// (it is all null), and so may a processing-time source's `arrival_time` (stamped
    /// on arrival). A column's type may differ where reading it as the declared type
    /// loses nothing: a timestamp of any unit without a zone or in UTC (`"UTC"`,
    /// `"+00:00"`, ...; micro- and nanoseconds are cut to milliseconds), `Float32` or an
    /// integer of up to 32 bits for `DOUBLE`, up to 32 bits for `BIGINT`, `LargeUtf8`,
    /// `Utf8View` or a string dictionary for `TEXT`. Anything else (an unknown column, a
    /// missing required one, `Int64` for `DOUBLE`, another time zone) is an
    /// [`EngineError::Batch`] naming the column, and nothing of the batch is taken.
    ///
    /// Rows are then checked like JSON readings: a null device, event time or `NOT NULL`
    /// column (`missing_field`) or a `NaN`/infinite `DOUBLE` (`non_finite`) is
    /// dead-lettered with its row index, and the other rows go on.
    pub async fn push_batch(&self, source: &str, batch: RecordBatch) -> Result<(), EngineError> {
        let batch = self.conform(source, &batch)?;
        self.send(Input::Batch {
            source: source.to_string(),
            batch,
        })
        .await
    }

    /// [`push_batch`](Self::push_batch) if the input channel has room now; otherwise
    /// hands the batch back (`Ok(Some(..))`) as given, for callers that shed load
    /// instead of waiting.
    pub fn try_push_batch(
        &self,
        source: &str,
        batch: RecordBatch,
    ) -> Result<Option<RecordBatch>, EngineError> {
        let conformed = self.conform(source, &batch)?;
        let input = Input::Batch {
            source: source.to_string(),
            batch: conformed,
        };
        match self.tx.try_send(input) {
            Ok(()) => Ok(None),
            Err(mpsc::error::TrySendError::Full(_)) => Ok(Some(batch)),
            Err(_) => Err(EngineError::Stopped),
        }
    }

    /// Pushes the caller's own structs as readings of `source`: each struct is a row,
    /// its fields (by their serde names) the columns, matched and checked as in
    /// [`push_batch`](Self::push_batch). A field is serialised straight into its
    /// column's declared type: e.g. an `i64` of epoch milliseconds or an `f32` for a
    /// `TIMESTAMP` or `DOUBLE` column; an `Option` that is `None` is a null. A field the
    /// source does not declare is an error ([`BatchError::UnknownColumn`](crate::BatchError::UnknownColumn)). An empty
    /// slice pushes nothing.
    ///
    /// Cost: the records are converted to Arrow columns on the caller's task
    /// (`serde_arrow`), with no JSON text in between; for the cheapest path build the
    /// batch yourself and use `push_batch`.
    pub async fn push_records<T: Serialize>(
        &self,
        source: &str,
        records: &[T],
    ) -> Result<(), EngineError> {
        if records.is_empty() {
            return Ok(());
        }
        let batch = batches::from_records(self.target(source)?, records)?;
        self.send(Input::Batch {
            source: source.to_string(),
            batch,
        })
        .await
    }

    /// The source `source`; pushing to one no query reads is the caller's mistake, the
    /// same error whether a message, a batch or records were pushed.
    fn target(&self, source: &str) -> Result<&batches::Target, EngineError> {
        self.targets
            .iter()
            .find(|t| t.name == source)
            .ok_or_else(|| EngineError::UnknownSource {
                name: source.to_string(),
                known: self.targets.iter().map(|t| t.name.clone()).collect(),
            })
    }

    fn conform(&self, source: &str, batch: &RecordBatch) -> Result<RecordBatch, EngineError> {
        Ok(batches::conform(self.target(source)?, batch)?)
    }

    /// Closes the pending micro-batches now and waits until they are processed.
    pub async fn flush(&self) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.send(Input::Flush(tx)).await?;
        rx.await.map_err(|_| EngineError::Stopped)
    }

    /// Ends the input: closes every open window, emits the last results and stops.
    /// With checkpoints, the last checkpoint is taken after the windows closed: a later
    /// start from the same directory continues after them, so a reading that falls in a
    /// window already emitted is late (counted), never a second, different version of
    /// that window under the same id. To stop and continue the open windows later, use
    /// [`shutdown`](Self::shutdown). Returns the pipeline's error if it failed.
    pub async fn finish(&self) -> Result<EngineStats, EngineError> {
        self.stop_with(Input::Finish).await
    }

    /// Sends the stop request `input` makes, then waits for the pipeline's task to end
    /// (its error, if it failed) and returns the last counters.
    async fn stop_with(
        &self,
        input: fn(oneshot::Sender<()>) -> Input,
    ) -> Result<EngineStats, EngineError> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(input(tx)).await;
        let _ = rx.await;
        let task = self.task.lock().expect("lock").take();
        if let Some(t) = task {
            t.await.map_err(|_| EngineError::Stopped)??;
        } else {
            sent?;
        }
        Ok(self.stats())
    }

    /// Attaches histograms the pipeline records its decode and window latencies in
    /// (seconds). Once per pipeline: `false` when histograms were attached already.
    pub fn attach_latency(&self, histograms: crate::LatencyHistograms) -> bool {
        self.latency.set(histograms).is_ok()
    }

    /// A snapshot of the counters and gauges (the queue depths as of now).
    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats.lock().expect("lock").clone();
        s.input_queue = (self.tx.max_capacity() - self.tx.capacity()) as u64;
        s.output_queue = self.out_depth.get() as u64;
        s
    }

    async fn send(&self, i: Input) -> Result<(), EngineError> {
        self.tx.send(i).await.map_err(|_| EngineError::Stopped)
    }
}
