//! Sparkplug B sources (`connector = 'sparkplug'`) on the engine's broker: one more
//! subscribing connection (`{id}-spb`) reads `spBv1.0/{group}/#`, each source's
//! [`Session`] turns births, data and deaths into readings pushed by the source's name,
//! dead letters, device presence, and rebirth requests published on the connection
//! `{id}-spb-cmd`.
//!
//! Each session's host state (births, aliases, `bdSeq`, last `seq`) is saved with the
//! engine's checkpoints under the source's name and restored on start, so an edge node
//! that keeps publishing across a restart is not asked for a rebirth. Sparkplug data is
//! QoS 0 by the specification: messages are taken without acknowledgement after
//! checkpoint, and those published while the engine was down are lost (the next one
//! shows a `seq` gap, refused as `seq_gap` with a rebirth request, as live).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use forewarn_connect::sparkplug::{Action, Session, SparkplugSource};
use forewarn_engine::{Pipeline, PipelineHandle};
use forewarn_mqtt::{BrokerUrl, MqttSink, MqttSource, QoS, SourceOptions};
use tokio::task::JoinHandle;

use crate::mqtt::RunError;

/// The Sparkplug sources of a pipeline, each with its session (shared with the
/// checkpoint that saves it).
pub(crate) struct Sessions(Vec<(String, Arc<Mutex<Session>>)>);

impl Sessions {
    /// The sessions of `p`'s `connector = 'sparkplug'` sources (none: empty), each
    /// continuing from the state the restored checkpoint holds for it and saved with
    /// every checkpoint of `p`.
    pub(crate) fn of(p: &mut Pipeline) -> Sessions {
        let mut sessions = Vec::new();
        for s in p.sources() {
            let Some(settings) = s.connector.get::<SparkplugSource>() else {
                continue;
            };
            let columns: Vec<String> = s.schema.fields().iter().map(|f| f.name().clone()).collect();
            let time = (!s.processing_time).then_some(s.event_time.as_str());
            let mut session = Session::new(settings.clone(), &columns, time);
            if let Some(saved) = p.restored_connector_state(&s.name) {
                match session.load(saved) {
                    Ok(()) => {
                        tracing::info!(source = %s.name, "sparkplug: edge nodes' births and aliases restored")
                    }
                    // Starting without them costs rebirth requests, not data.
                    Err(e) => {
                        tracing::warn!(source = %s.name, error = %e, "sparkplug: saved state not restored; edge nodes will be asked for a rebirth")
                    }
                }
            }
            sessions.push((s.name.clone(), Arc::new(Mutex::new(session))));
        }
        for (name, session) in &sessions {
            let session = session.clone();
            p.keep_connector_state(
                name,
                Arc::new(move || session.lock().expect("session lock").save()),
            );
        }
        Sessions(sessions)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The running input of the Sparkplug sources.
pub(crate) struct SparkplugInput {
    source: MqttSource,
    task: JoinHandle<MqttSink>,
}

impl SparkplugInput {
    /// Connects and starts reading for `sessions`, pushing into `handle`.
    pub(crate) async fn start(
        sessions: Sessions,
        url: &BrokerUrl,
        client_id: &str,
        handle: PipelineHandle,
    ) -> Result<SparkplugInput, RunError> {
        let mut filters: Vec<String> = sessions
            .0
            .iter()
            .map(|(_, s)| s.lock().expect("session lock").filter())
            .collect();
        filters.sort();
        filters.dedup();
        let mut cmd = MqttSink::start(
            url.clone(),
            &format!("{client_id}-spb-cmd"),
            QoS::AtLeastOnce,
        );
        cmd.wait_connected(Duration::from_secs(10)).await?;
        let (mut source, incoming) = MqttSource::start(SourceOptions::new(
            url.clone(),
            &format!("{client_id}-spb"),
            filters,
        ));
        if let Err(e) = source.wait_connected(Duration::from_secs(10)).await {
            source.stop().await;
            cmd.stop().await;
            return Err(e.into());
        }
        let task = tokio::spawn(read(sessions, incoming, handle, cmd));
        Ok(SparkplugInput { source, task })
    }

    /// Stops reading; the rebirth requests already queued are sent.
    pub(crate) async fn stop(self) {
        self.source.stop().await;
        if let Ok(cmd) = self.task.await {
            let _ = cmd.flush(Duration::from_secs(2)).await;
            cmd.stop().await;
        }
    }
}

/// Feeds each message to the sessions whose group it is in and carries out their
/// actions.
async fn read(
    sessions: Sessions,
    mut incoming: tokio::sync::mpsc::Receiver<forewarn_mqtt::Incoming>,
    h: PipelineHandle,
    cmd: MqttSink,
) -> MqttSink {
    while let Some(m) = incoming.recv().await {
        let now = forewarn_core::Timestamp::now().as_millis();
        let mut requested: Vec<String> = Vec::new();
        for (name, session) in &sessions.0 {
            let actions = {
                let mut session = session.lock().expect("session lock");
                if !session.accepts(&m.topic) {
                    continue;
                }
                session.handle(&m.topic, &m.payload, now)
            };
            for action in actions {
                let sent = match action {
                    Action::Rows(rows) => h.push_readings_to(name, Box::new(rows)).await,
                    Action::Reject { reason, detail } => {
                        h.reject(name, &m.topic, reason, detail, hex(&m.payload))
                            .await
                    }
                    Action::Presence { device, online } => h.presence(&device, online).await,
                    Action::Publish { topic, payload } => {
                        // Two sources on one group ask once.
                        if !requested.contains(&topic) {
                            tracing::info!(%topic, "sparkplug: requesting a rebirth");
                            if let Err(e) = cmd.publish(&topic, payload, false).await {
                                tracing::warn!(%topic, error = %e, "sparkplug: rebirth request not sent");
                            }
                            requested.push(topic);
                        }
                        Ok(())
                    }
                };
                if sent.is_err() {
                    return cmd;
                }
            }
        }
    }
    cmd
}

/// The start of a binary payload as hex, for a dead letter's excerpt.
fn hex(payload: &[u8]) -> String {
    payload
        .iter()
        .take(128)
        .map(|b| format!("{b:02x}"))
        .collect()
}
