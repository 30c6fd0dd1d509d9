//! Restoring from a checkpoint and writing one: what the running task hands to
//! [`crate::checkpointing`] and the checkpoint store.

use super::*;

impl Runtime {
    /// Continues from the checkpoint the pipeline was built with: operator state,
    /// alert state machines, device health and silences, then emits again the outputs
    /// the checkpoint held unconfirmed.
    pub(super) async fn restore(&mut self) -> Result<(), EngineError> {
        let Some(snap) = self.restored.take() else {
            return Ok(());
        };
        let mut queries = snap.queries;
        for src in &mut self.sources {
            for op in &mut src.operators {
                if let Some(q) = queries.remove(&op.op.query().name) {
                    op.op.restore(q.operator)?;
                    if let (Some(d), Some(v)) = (op.publish.online.as_mut(), q.detector) {
                        d.load(v).map_err(|e| {
                            EngineError::Config(format!(
                                "checkpoint {}: learned state of '{}': {e}",
                                snap.seq,
                                op.op.query().name
                            ))
                        })?;
                    }
                    if let (Some(l), Some(v)) = (op.publish.lifecycle.as_mut(), q.lifecycle) {
                        l.load(v).map_err(|e| {
                            EngineError::Config(format!(
                                "checkpoint {}: alert state of '{}': {e}",
                                snap.seq,
                                op.op.query().name
                            ))
                        })?;
                    }
                }
            }
        }
        for src in &mut self.sources {
            if let Some(d) = snap.devices.get(&src.name) {
                src.devices.restore(d);
            }
        }
        self.health.restore(snap.states, snap.silenced);
        let n = snap.outbox.len() as u64;
        self.count(|s| {
            s.restored_from = Some(snap.seq);
            s.outputs_replayed = n;
        });
        for o in snap.outbox {
            self.emit(o).await;
        }
        // Every restored device's state, after the outputs in flight (which may hold an
        // older one): what a subscriber sees as retained is unchanged, and a view built
        // from the outputs (the health page) knows the fleet, silences included, before
        // the next window closes.
        for state in self.health.saved_states().into_values() {
            let topic = format!("{}/state/{}", self.config.topic_prefix, state.device);
            self.emit(Output::State { topic, state }).await;
        }
        Ok(())
    }

    /// Whether too many outputs wait for confirmation to take more input.
    pub(super) fn backlogged(&mut self) -> bool {
        self.ckpt.as_mut().is_some_and(Checkpointing::backlogged)
    }

    /// After an input message: its ack waits for the next checkpoint, or is called now
    /// without checkpoints.
    pub(super) async fn taken(
        &mut self,
        ack: Option<Ack>,
        ack_id: Option<u64>,
    ) -> Result<(), EngineError> {
        self.inputs += 1;
        self.last_input = Instant::now();
        let Some(c) = &mut self.ckpt else {
            if let Some(a) = ack {
                a();
                self.count(|s| s.inputs_acked += 1);
            }
            return Ok(());
        };
        if c.taken(ack, ack_id) {
            self.checkpoint().await?;
        }
        Ok(())
    }

    /// Whether a checkpoint is due on the timer.
    pub(super) fn checkpoint_due(&self, now: Instant) -> bool {
        self.ckpt
            .as_ref()
            .is_some_and(|c| c.due(now, self.last_input))
    }

    /// Writes a checkpoint of everything processed so far, then acks the input it
    /// covers. A failed write is logged and counted; the acks wait for the next one.
    pub(super) async fn checkpoint(&mut self) -> Result<(), EngineError> {
        if self.ckpt.is_none() {
            return Ok(());
        }
        self.flush_all().await?;
        let mut queries = BTreeMap::new();
        for src in &mut self.sources {
            for op in &mut src.operators {
                let state = match op.op.snapshot().await {
                    Ok(s) => s,
                    Err(e) => {
                        let failures = {
                            let mut s = self.stats.lock().expect("stats lock");
                            s.checkpoint_failures += 1;
                            s.checkpoint_failures
                        };
                        tracing::error!(error = %e, query = %op.op.query().name, failures, "checkpoint failed");
                        return Ok(());
                    }
                };
                queries.insert(
                    op.op.query().name.clone(),
                    QueryState {
                        fingerprint: op.fingerprint.clone(),
                        operator: state,
                        lifecycle: op.publish.lifecycle.as_ref().map(|l| l.save()),
                        detector: op.publish.online.as_ref().map(|d| d.save()),
                    },
                );
            }
        }
        let c = self.ckpt.as_mut().expect("checked above");
        let snap = c.complete(Snapshot {
            queries,
            states: self.health.saved_states(),
            silenced: self.health.saved_silences(),
            inputs: self.inputs,
            resume: crate::ResumePoint {
                position: self.position,
                released: Vec::new(),
            },
            devices: self
                .sources
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        s.devices.names().map(String::from).collect(),
                    )
                })
                .collect(),
            connectors: self
                .connector_states
                .iter()
                .map(|(k, f)| (k.clone(), f()))
                .chain(self.carried_connector_states.clone())
                .collect(),
            ..Snapshot::default()
        });
        let (store, keep, seq) = (c.cfg.store.clone(), c.cfg.keep, c.seq);
        let written = tokio::task::spawn_blocking(move || {
            let bytes =
                checkpoint::encode(&snap).map_err(|reason| crate::CheckpointError::Corrupt {
                    path: store.name(seq),
                    reason: format!("could not encode: {reason}"),
                })?;
            checkpoint::write(store.as_ref(), seq, &bytes, keep).map(|_| bytes.len())
        })
        .await
        .map_err(|e| EngineError::Config(format!("checkpoint task: {e}")))?;
        let acks = c.attempted(written.is_ok(), Instant::now());
        match written {
            Ok(bytes) => {
                let n = acks.len() as u64;
                for a in acks {
                    a();
                }
                self.count(|s| {
                    s.checkpoints += 1;
                    s.checkpoint_bytes = bytes as u64;
                    s.inputs_acked += n;
                });
            }
            Err(e) => {
                let mut failures = 0;
                self.count(|s| {
                    s.checkpoint_failures += 1;
                    failures = s.checkpoint_failures;
                });
                tracing::error!(error = %e, seq, failures, "checkpoint failed; input stays unacknowledged");
            }
        }
        Ok(())
    }
}
