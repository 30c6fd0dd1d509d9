//! Publishing sink: QoS 1 by default, with a way to wait until the broker has acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use tokio::task::JoinHandle;

use crate::source::mqtt_options;
use crate::{back_off, Backoff, BrokerUrl, Liveness, MqttError};

/// Publish counters.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Publishes handed to the client.
    pub published: AtomicU64,
    /// QoS 1 acknowledgements received.
    pub acked: AtomicU64,
    /// QoS 0 publishes written to the socket.
    pub sent_qos0: AtomicU64,
    /// Reconnections to a broker that had no session for this client
    /// (`session_present = false` after the first connection): it restarted without its
    /// state, and may have lost retained messages too.
    pub sessions_lost: AtomicU64,
    /// Connections the broker closed within [`crate::SHORT_CONNECTION`] of accepting
    /// them (more than a few: probably a client-id clash, also logged as a warning).
    pub short_connections: Arc<AtomicU64>,
    /// Connections the broker accepted (CONNACK): the first, then one per reconnection.
    pub connections: Arc<AtomicU64>,
}

/// A publishing connection.
pub struct MqttSink {
    client: AsyncClient,
    task: JoinHandle<()>,
    stats: Arc<SinkStats>,
    qos: QoS,
    connected: tokio::sync::watch::Receiver<bool>,
}

impl MqttSink {
    /// Connects in the background with a clean session; publishes use `qos`.
    pub fn start(url: BrokerUrl, client_id: &str, qos: QoS) -> MqttSink {
        Self::start_with(url, client_id, qos, true)
    }

    /// Like [`start`](Self::start) with a persistent session (clean session off): after
    /// a reconnection to a broker that kept the session, rumqttc resends the publishes
    /// that were in flight or queued when the connection broke. With a clean session it
    /// drops them on reconnecting.
    pub fn start_persistent(url: BrokerUrl, client_id: &str, qos: QoS) -> MqttSink {
        Self::start_with(url, client_id, qos, false)
    }

    fn start_with(url: BrokerUrl, client_id: &str, qos: QoS, clean: bool) -> MqttSink {
        let mut mo = mqtt_options(&url, client_id, 1 << 20, Duration::from_secs(30));
        mo.set_clean_session(clean);
        let (client, mut eventloop) = AsyncClient::new(mo, 1024);
        let stats = Arc::new(SinkStats::default());
        let st = stats.clone();
        let (ctx, crx) = tokio::sync::watch::channel(false);
        let mut liveness = Liveness::new(
            "sink",
            client_id,
            stats.short_connections.clone(),
            stats.connections.clone(),
        );
        let task = tokio::spawn(async move {
            let mut backoff = Backoff::new();
            let mut connected_before = false;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(c))) => {
                        liveness.connected();
                        if connected_before && !c.session_present {
                            st.sessions_lost.fetch_add(1, Ordering::Relaxed);
                        }
                        connected_before = true;
                        tracing::info!(broker = %url, role = "sink", client_id = %liveness.client_id, session_present = c.session_present, "sink connected");
                        let _ = ctx.send(true);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        st.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(0))) => {
                        st.sent_qos0.fetch_add(1, Ordering::Relaxed);
                    }
                    // Our own disconnect: the loop is done (an error would follow otherwise).
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => back_off(&url, &e, &ctx, &mut backoff, &mut liveness).await,
                }
            }
        });
        MqttSink {
            client,
            task,
            stats,
            qos,
            connected: crx,
        }
    }

    /// Waits until connected.
    pub async fn wait_connected(&mut self, timeout: Duration) -> Result<(), MqttError> {
        crate::wait_connected(&mut self.connected, timeout).await
    }

    /// Queues a publish (waits while the client's request queue is full).
    pub async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<(), MqttError> {
        self.client
            .publish(topic, self.qos, retain, payload)
            .await
            .map_err(|e| MqttError::Client(e.to_string()))?;
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Hands a publish to the client without waiting. When its request queue is full
    /// the payload comes back (`Ok(Some(payload))`) to be tried again later.
    pub fn try_publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<Option<Vec<u8>>, MqttError> {
        match self.client.try_publish(topic, self.qos, retain, payload) {
            Ok(()) => {
                self.stats.published.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            Err(rumqttc::ClientError::TryRequest(rumqttc::Request::Publish(p))) => {
                Ok(Some(p.payload.to_vec()))
            }
            Err(e) => Err(MqttError::Client(e.to_string())),
        }
    }

    /// Whether the connection to the broker is up.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// The connection state, to watch from elsewhere (e.g. a readiness probe): `true`
    /// while the connection to the broker is up.
    pub fn connection(&self) -> tokio::sync::watch::Receiver<bool> {
        self.connected.clone()
    }

    /// Counters.
    pub fn stats(&self) -> &SinkStats {
        &self.stats
    }

    /// Waits until every publish so far is acknowledged (QoS 1) or written (QoS 0).
    pub async fn flush(&self, timeout: Duration) -> Result<(), MqttError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let done = self.stats.acked.load(Ordering::Relaxed)
                + self.stats.sent_qos0.load(Ordering::Relaxed);
            let pending = self
                .stats
                .published
                .load(Ordering::Relaxed)
                .saturating_sub(done);
            if pending == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MqttError::FlushTimeout(timeout, pending));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Disconnects.
    pub async fn stop(self) {
        let _ = self.client.try_disconnect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.task.abort();
    }
}
