//! Publishing sink: QoS 1 by default, with a way to wait until the broker has acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::QoS;
use tokio::task::JoinHandle;

use crate::client::{Client, Connect, Event};
use crate::{
    back_off, Backoff, BrokerUrl, LastWill, Liveness, MessageProperties, MqttError, MqttVersion,
};

/// Publish counters.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Publishes handed to the client.
    pub published: AtomicU64,
    /// QoS 1 acknowledgements received.
    pub acked: AtomicU64,
    /// Of those, publishes the broker refused with a reason code (MQTT 5; logged).
    pub refused: AtomicU64,
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
    client: Client,
    task: JoinHandle<()>,
    stats: Arc<SinkStats>,
    qos: QoS,
    connected: tokio::sync::watch::Receiver<bool>,
}

impl MqttSink {
    /// Connects in the background with a clean session; publishes use `qos`.
    pub fn start(url: BrokerUrl, client_id: &str, qos: QoS) -> MqttSink {
        Self::start_with(url, client_id, qos, true, MqttVersion::V311)
    }

    /// Like [`start`](Self::start) with a persistent session (clean session off): after
    /// a reconnection to a broker that kept the session, rumqttc resends the publishes
    /// that were in flight or queued when the connection broke. With a clean session it
    /// drops them on reconnecting.
    pub fn start_persistent(url: BrokerUrl, client_id: &str, qos: QoS) -> MqttSink {
        Self::start_with(url, client_id, qos, false, MqttVersion::V311)
    }

    /// Connects in the background speaking `version`, with a clean session (`clean`) or
    /// a persistent one (see [`start_persistent`](Self::start_persistent); under MQTT 5
    /// clean start off and a session expiry interval that never ends).
    pub fn start_with(
        url: BrokerUrl,
        client_id: &str,
        qos: QoS,
        clean: bool,
        version: MqttVersion,
    ) -> MqttSink {
        Self::start_full(url, client_id, qos, clean, version, None)
    }

    /// Like [`start`](Self::start) with a last will: the broker publishes `will` if the
    /// connection drops without a DISCONNECT ([`stop`](Self::stop) disconnects cleanly,
    /// so the will is not sent then).
    pub fn start_with_will(url: BrokerUrl, client_id: &str, qos: QoS, will: LastWill) -> MqttSink {
        Self::start_full(url, client_id, qos, true, MqttVersion::V311, Some(will))
    }

    fn start_full(
        url: BrokerUrl,
        client_id: &str,
        qos: QoS,
        clean: bool,
        version: MqttVersion,
        will: Option<LastWill>,
    ) -> MqttSink {
        let (client, mut eventloop) = crate::client::connect(
            &Connect {
                url: &url,
                client_id,
                max_packet: 1 << 20,
                keep_alive: Duration::from_secs(30),
                clean,
                manual_acks: false,
                cap: 1024,
                will: will.as_ref(),
            },
            version,
        );
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
                    Ok(Event::ConnAck { session_present }) => {
                        liveness.connected();
                        if connected_before && !session_present {
                            st.sessions_lost.fetch_add(1, Ordering::Relaxed);
                        }
                        connected_before = true;
                        tracing::info!(broker = %url, role = "sink", client_id = %liveness.client_id, session_present, version = ?version, "sink connected");
                        let _ = ctx.send(true);
                    }
                    Ok(Event::PubAck { refused }) => {
                        if let Some(reason) = refused {
                            let n = st.refused.fetch_add(1, Ordering::Relaxed) + 1;
                            tracing::error!(broker = %url, client_id = %liveness.client_id, %reason, refused = n, "the broker refused a publish");
                        }
                        st.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::PublishSent { pkid: 0 }) => {
                        st.sent_qos0.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Disconnected { reason }) => {
                        tracing::warn!(broker = %url, role = "sink", client_id = %liveness.client_id, %reason, "the broker disconnected the sink");
                    }
                    // Our own disconnect: the loop is done (an error would follow otherwise).
                    Ok(Event::DisconnectSent) => return,
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
        self.publish_with(topic, payload, retain, &MessageProperties::default())
            .await
    }

    /// Like [`publish`](Self::publish), with message properties (MQTT 5 only; a 3.1.1
    /// connection sends the message without them).
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        props: &MessageProperties,
    ) -> Result<(), MqttError> {
        self.client
            .publish(topic, self.qos, retain, payload, props)
            .await?;
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
        self.try_publish_with(topic, payload, retain, &MessageProperties::default())
    }

    /// Like [`try_publish`](Self::try_publish), with message properties (MQTT 5 only).
    pub fn try_publish_with(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        props: &MessageProperties,
    ) -> Result<Option<Vec<u8>>, MqttError> {
        let back = self
            .client
            .try_publish(topic, self.qos, retain, payload, props)?;
        if back.is_none() {
            self.stats.published.fetch_add(1, Ordering::Relaxed);
        }
        Ok(back)
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
        self.client.try_disconnect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.task.abort();
    }
}
