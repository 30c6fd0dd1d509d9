//! Subscribing source: delivers messages to a bounded channel, reconnects with backoff.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::QoS;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::{Client, Connect, Event};
use crate::{back_off, Backoff, BrokerUrl, Liveness, MqttError, MqttVersion};

/// One received message.
#[derive(Debug)]
pub struct Incoming {
    /// Topic it was published on.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// With [`SourceOptions::manual_acks`], a QoS 1 message is acknowledged to the
    /// broker only when this is acked (until then the broker keeps it and resends it
    /// to a persistent session after a reconnection or restart).
    pub ack: Option<AckToken>,
}

/// Acknowledges one QoS 1 message to the broker (see [`Incoming::ack`]).
#[derive(Debug)]
pub struct AckToken {
    pkid: u16,
    hash: u64,
    generation: u64,
    shared: Arc<AckShared>,
}

#[derive(Debug)]
struct AckShared {
    client: Client,
    /// Every packet id delivered in the current session: a hash of its topic and
    /// payload, and whether we have acknowledged it.
    seen: Mutex<HashMap<u16, (u64, bool)>>,
    /// Bumped when the broker starts a new session: older tokens then ack nothing.
    generation: AtomicU64,
    /// Redeliveries dropped because the engine already had the message.
    duplicates: AtomicU64,
}

/// A message's identity for recognising its redelivery: packet id and content hash.
fn message_id(pkid: u16, hash: u64) -> u64 {
    (u64::from(pkid) << 48) | (hash & 0xFFFF_FFFF_FFFF)
}

impl AckToken {
    /// The message's packet id and a hash of its topic and payload, as one number:
    /// what [`SourceOptions::acked_before`] takes back after a restart.
    pub fn id(&self) -> u64 {
        message_id(self.pkid, self.hash)
    }

    /// Sends the PUBACK (in the order tokens are acked). A token from before the broker
    /// lost the session does nothing: that packet id may now name another message.
    pub fn ack(self) {
        let s = &self.shared;
        if s.generation.load(Ordering::SeqCst) != self.generation {
            return;
        }
        match s.seen.lock().expect("lock").get_mut(&self.pkid) {
            Some((_, acked)) if !*acked => *acked = true,
            _ => return,
        }
        s.send_ack(self.pkid);
    }
}

impl AckShared {
    fn send_ack(&self, pkid: u16) {
        if !self.client.try_ack(pkid) {
            // The request queue is full: hand it over without blocking the engine.
            let client = self.client.clone();
            tokio::spawn(async move { client.ack(pkid).await });
        }
    }
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
    /// subscriptions and queue QoS 1 messages while the client is away (under MQTT 5:
    /// clean start off and a session expiry interval that never ends).
    pub clean_session: bool,
    /// The protocol version (default 3.1.1).
    pub version: MqttVersion,
    /// Acknowledge QoS 1 messages only through their [`AckToken`] (default false:
    /// on arrival).
    pub manual_acks: bool,
    /// [`AckToken::id`]s a previous run acknowledged just before it stopped (from its
    /// last checkpoint): the broker may not have received those acknowledgements, and
    /// a redelivery (DUP flag, same packet id and content) of one is acknowledged again
    /// and not delivered.
    pub acked_before: Vec<u64>,
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
            version: MqttVersion::V311,
            manual_acks: false,
            acked_before: Vec::new(),
        }
    }
}

/// A running subscription.
pub struct MqttSource {
    client: Client,
    task: JoinHandle<()>,
    connected: tokio::sync::watch::Receiver<bool>,
    acks: Arc<AckShared>,
    short: Arc<AtomicU64>,
    /// Connections the broker accepted (see [`Self::connections`]).
    accepted: Arc<AtomicU64>,
}

impl MqttSource {
    /// Connects in the background and starts delivering messages to the returned receiver.
    pub fn start(opts: SourceOptions) -> (MqttSource, mpsc::Receiver<Incoming>) {
        let (tx, rx) = mpsc::channel(opts.capacity.max(1));
        let (ctx, crx) = tokio::sync::watch::channel(false);
        // Held acks go through the request queue too: room for a checkpoint's worth.
        let cap = if opts.manual_acks { 65_536 } else { 64 };
        let (client, mut eventloop) = crate::client::connect(
            &Connect {
                url: &opts.url,
                client_id: &opts.client_id,
                max_packet: opts.max_packet_bytes,
                keep_alive: opts.keep_alive,
                clean: opts.clean_session,
                manual_acks: opts.manual_acks,
                cap,
                will: None,
            },
            opts.version,
        );
        let sub_client = client.clone();
        let acks = Arc::new(AckShared {
            client: client.clone(),
            seen: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        });
        let shared = acks.clone();
        let mut acked_before: std::collections::HashSet<u64> =
            opts.acked_before.iter().copied().collect();
        let short = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let mut liveness =
            Liveness::new("source", &opts.client_id, short.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            let mut backoff = Backoff::new();
            // Filters subscribed and not yet answered, in order (SUBACKs come in order).
            let mut asked: std::collections::VecDeque<String> = Default::default();
            loop {
                match eventloop.poll().await {
                    Ok(Event::ConnAck { session_present }) => {
                        liveness.connected();
                        if !session_present {
                            // A new session: the broker forgot what was in flight, so
                            // tokens from before must not ack whatever reuses their ids.
                            shared.generation.fetch_add(1, Ordering::SeqCst);
                            shared.seen.lock().expect("lock").clear();
                            acked_before.clear();
                        }
                        tracing::info!(broker = %opts.url, role = "source", client_id = %opts.client_id, session_present, version = ?opts.version, "source connected");
                        // Clean sessions forget subscriptions: subscribe on every (re)connect.
                        asked.clear();
                        for f in &opts.filters {
                            match sub_client.try_subscribe(f, opts.qos) {
                                Ok(()) => asked.push_back(f.clone()),
                                Err(e) => {
                                    tracing::error!(filter = %f, error = %e, "could not queue subscription")
                                }
                            }
                        }
                        let _ = ctx.send(true);
                    }
                    Ok(Event::SubAck { refused }) => {
                        let filter = asked.pop_front().unwrap_or_default();
                        if !refused.is_empty() {
                            tracing::error!(broker = %opts.url, client_id = %opts.client_id, %filter, reason = ?refused, "the broker refused the subscription");
                        }
                    }
                    Ok(Event::Disconnected { reason }) => {
                        tracing::warn!(broker = %opts.url, role = "source", client_id = %opts.client_id, %reason, "the broker disconnected the source");
                    }
                    Ok(Event::Publish {
                        topic,
                        payload,
                        pkid,
                        qos,
                        dup,
                    }) => {
                        let ack = if opts.manual_acks && qos == QoS::AtLeastOnce {
                            let mut h = std::collections::hash_map::DefaultHasher::new();
                            (&topic, &payload[..]).hash(&mut h);
                            let h = h.finish();
                            let mut seen = shared.seen.lock().expect("lock");
                            match seen.get(&pkid) {
                                // After a reconnection the broker resends what it has
                                // not seen acknowledged. While we hold an id
                                // unacknowledged the broker cannot reuse it, so this is
                                // the same message: the engine has it, and its token
                                // will acknowledge it.
                                Some((_, false)) => {
                                    shared.duplicates.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                // Acknowledged, but the PUBACK was lost with the
                                // connection: the same message again. Acknowledge again.
                                Some((prev, true)) if *prev == h => {
                                    drop(seen);
                                    shared.duplicates.fetch_add(1, Ordering::Relaxed);
                                    shared.send_ack(pkid);
                                    continue;
                                }
                                // Acknowledged by the previous run at its last
                                // checkpoint; the acknowledgement died with it.
                                None if dup && acked_before.remove(&message_id(pkid, h)) => {
                                    seen.insert(pkid, (h, true));
                                    drop(seen);
                                    shared.duplicates.fetch_add(1, Ordering::Relaxed);
                                    shared.send_ack(pkid);
                                    continue;
                                }
                                _ => {
                                    seen.insert(pkid, (h, false));
                                }
                            }
                            drop(seen);
                            Some(AckToken {
                                pkid,
                                hash: h,
                                generation: shared.generation.load(Ordering::SeqCst),
                                shared: shared.clone(),
                            })
                        } else {
                            None
                        };
                        let msg = Incoming {
                            topic,
                            payload,
                            ack,
                        };
                        if tx.send(msg).await.is_err() {
                            return; // receiver dropped: stop
                        }
                    }
                    // Our own disconnect: the loop is done (an error would follow otherwise).
                    Ok(Event::DisconnectSent) => return,
                    Ok(_) => {}
                    Err(e) => back_off(&opts.url, &e, &ctx, &mut backoff, &mut liveness).await,
                }
            }
        });
        (
            MqttSource {
                client,
                task,
                connected: crx,
                acks,
                short,
                accepted,
            },
            rx,
        )
    }

    /// Waits until the first connection is up and the subscriptions are queued.
    pub async fn wait_connected(&mut self, timeout: Duration) -> Result<(), MqttError> {
        crate::wait_connected(&mut self.connected, timeout).await
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

    /// Redeliveries dropped because the message was still held unacknowledged.
    pub fn duplicates_dropped(&self) -> u64 {
        self.acks.duplicates.load(Ordering::Relaxed)
    }

    /// Connections the broker closed within [`crate::SHORT_CONNECTION`] of accepting
    /// them: more than a few mean another client probably uses the same client id
    /// (also logged as a warning).
    pub fn short_connections(&self) -> u64 {
        self.short.load(Ordering::Relaxed)
    }

    /// Connections the broker accepted (CONNACK): the first, then one per reconnection.
    /// A shared counter, readable after the source moved.
    pub fn connections(&self) -> Arc<AtomicU64> {
        self.accepted.clone()
    }

    /// Disconnects (after the acknowledgements already handed over) and stops the
    /// background task.
    pub async fn stop(self) {
        // Bounded: a task stuck delivering to a full channel no longer drains requests.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.disconnect()).await;
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}
