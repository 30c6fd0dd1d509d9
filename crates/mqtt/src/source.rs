//! Subscribing source: delivers messages to a bounded channel, reconnects with backoff.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{back_off, Backoff, BrokerUrl, MqttError};

/// One received message.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Topic it was published on.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// How to connect and what to subscribe to.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// The broker.
    pub url: BrokerUrl,
    /// Client id (must be unique per broker).
    pub client_id: String,
    /// Topic filters (wildcards allowed).
    pub filters: Vec<String>,
    /// Subscription QoS (0 or 1).
    pub qos: QoS,
    /// Largest accepted packet in bytes.
    pub max_packet_bytes: usize,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Channel capacity towards the engine; when full, the source stops reading and
    /// TCP backpressure holds messages at the broker.
    pub capacity: usize,
    /// MQTT clean session (default true). `false` asks the broker to keep the
    /// subscriptions and queue QoS 1 messages while the client is away.
    pub clean_session: bool,
}

impl SourceOptions {
    /// Defaults: QoS 1, 1 MiB packets, 30 s keep-alive, 4096 queued messages.
    pub fn new(url: BrokerUrl, client_id: &str, filters: Vec<String>) -> Self {
        SourceOptions {
            url,
            client_id: client_id.to_string(),
            filters,
            qos: QoS::AtLeastOnce,
            max_packet_bytes: 1 << 20,
            keep_alive: Duration::from_secs(30),
            capacity: 4096,
            clean_session: true,
        }
    }
}

pub(crate) fn mqtt_options(
    url: &BrokerUrl,
    client_id: &str,
    max_packet: usize,
    keep_alive: Duration,
) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, url.host.clone(), url.port);
    o.set_keep_alive(keep_alive);
    o.set_max_packet_size(max_packet, max_packet);
    if let Some(u) = &url.username {
        o.set_credentials(u.clone(), url.password.clone().unwrap_or_default());
    }
    o
}

/// A running subscription.
pub struct MqttSource {
    client: AsyncClient,
    task: JoinHandle<()>,
    connected: tokio::sync::watch::Receiver<bool>,
}

impl MqttSource {
    /// Connects in the background and starts delivering messages to the returned receiver.
    pub fn start(opts: SourceOptions) -> (MqttSource, mpsc::Receiver<Incoming>) {
        let (tx, rx) = mpsc::channel(opts.capacity.max(1));
        let (ctx, crx) = tokio::sync::watch::channel(false);
        let mo = mqtt_options(
            &opts.url,
            &opts.client_id,
            opts.max_packet_bytes,
            opts.keep_alive,
        );
        let mut mo = mo;
        mo.set_clean_session(opts.clean_session);
        let (client, mut eventloop) = AsyncClient::new(mo, 64);
        let sub_client = client.clone();
        let task = tokio::spawn(async move {
            let mut backoff = Backoff::new();
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff.reset();
                        tracing::info!(broker = %opts.url, "source connected");
                        // Clean sessions forget subscriptions: subscribe on every (re)connect.
                        for f in &opts.filters {
                            if sub_client.try_subscribe(f.clone(), opts.qos).is_err() {
                                tracing::error!(filter = %f, "could not queue subscription");
                            }
                        }
                        let _ = ctx.send(true);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {}
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let msg = Incoming {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                        };
                        if tx.send(msg).await.is_err() {
                            return; // receiver dropped: stop
                        }
                    }
                    // Our own disconnect: the loop is done (an error would follow otherwise).
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => back_off("source", &opts.url, &e, &ctx, &mut backoff).await,
                }
            }
        });
        (
            MqttSource {
                client,
                task,
                connected: crx,
            },
            rx,
        )
    }

    /// Waits until the first connection is up and the subscriptions are queued.
    pub async fn wait_connected(&mut self, timeout: Duration) -> Result<(), MqttError> {
        crate::wait_connected(&mut self.connected, timeout).await
    }

    /// Disconnects and stops the background task.
    pub async fn stop(self) {
        let _ = self.client.try_disconnect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.task.abort();
    }
}
