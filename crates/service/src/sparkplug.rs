//! Sparkplug B sources (`connector = 'sparkplug'`) on the engine's broker: one more
//! subscribing connection (`{id}-spb`) reads `spBv1.0/{group}/#`, each source's
//! [`Session`] turns births, data and deaths into readings pushed by the source's name,
//! dead letters, device presence, and rebirth requests published on the connection
//! `{id}-spb-cmd`.
//!
//! Sparkplug data is QoS 0 by the specification and the alias tables are not in the
//! engine's checkpoints: after a restart the first data of each edge node is refused
//! (`no_birth`) and a rebirth requested. Messages are therefore taken without
//! acknowledgement after checkpoint.

use std::time::Duration;

use forewarn_connect::sparkplug::{Action, Session, SparkplugSource};
use forewarn_engine::{Pipeline, PipelineHandle};
use forewarn_mqtt::{BrokerUrl, MqttSink, MqttSource, QoS, SourceOptions};
use tokio::task::JoinHandle;

use crate::mqtt::RunError;

/// The Sparkplug sources of a pipeline, each with its session.
pub(crate) struct Sessions(Vec<(String, Session)>);

impl Sessions {
    /// The sessions of `p`'s `connector = 'sparkplug'` sources (none: empty).
    pub(crate) fn of(p: &Pipeline) -> Sessions {
        let sessions = p
            .sources()
            .iter()
            .filter_map(|s| {
                let settings = s.connector.get::<SparkplugSource>()?.clone();
                let columns: Vec<String> =
                    s.schema.fields().iter().map(|f| f.name().clone()).collect();
                let time = (!s.processing_time).then_some(s.event_time.as_str());
                Some((s.name.clone(), Session::new(settings, &columns, time)))
            })
            .collect();
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
        let mut filters: Vec<String> = sessions.0.iter().map(|(_, s)| s.filter()).collect();
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
    mut sessions: Sessions,
    mut incoming: tokio::sync::mpsc::Receiver<forewarn_mqtt::Incoming>,
    h: PipelineHandle,
    cmd: MqttSink,
) -> MqttSink {
    while let Some(m) = incoming.recv().await {
        let now = forewarn_core::Timestamp::now().as_millis();
        let mut requested: Vec<String> = Vec::new();
        for (name, session) in &mut sessions.0 {
            if !session.accepts(&m.topic) {
                continue;
            }
            for action in session.handle(&m.topic, &m.payload, now) {
                let sent = match action {
                    Action::Rows(rows) => h.push_to(name, rows).await,
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
