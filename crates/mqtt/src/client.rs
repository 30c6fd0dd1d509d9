//! One MQTT client over either protocol version: the few calls the source and the sink
//! make (connect, subscribe, publish, acknowledge, the event loop's events) for rumqttc's
//! 3.1.1 client and its v5 client, so the logic above them (ack-after-checkpoint,
//! redelivery handling, backoff, liveness) is written once.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::QoS;

use crate::{BrokerUrl, MqttError};

/// The MQTT protocol version the engine's connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (the default).
    #[default]
    V311,
    /// MQTT 5: session expiry instead of clean session, reason codes, message
    /// properties (content type, user properties, message expiry).
    V5,
}

impl MqttVersion {
    /// `4` or `3` (3.1.1, the protocol level 4) and `5`.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            3 | 4 => Some(MqttVersion::V311),
            5 => Some(MqttVersion::V5),
            _ => None,
        }
    }
}

/// Session expiry asked for by a persistent MQTT 5 session: "never", what a 3.1.1
/// broker does with a session that is not clean.
pub const SESSION_NEVER_EXPIRES: u32 = u32::MAX;

/// Properties of an outgoing message; only MQTT 5 carries them (3.1.1 drops them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    /// Content type (e.g. `application/json`).
    pub content_type: Option<String>,
    /// User properties (name, value), in order.
    pub user_properties: Vec<(String, String)>,
    /// The broker discards the message when no subscriber took it within this time.
    pub message_expiry: Option<Duration>,
}

impl MessageProperties {
    fn to_v5(&self) -> Option<p5::PublishProperties> {
        if self == &MessageProperties::default() {
            return None;
        }
        Some(p5::PublishProperties {
            content_type: self.content_type.clone(),
            user_properties: self.user_properties.clone(),
            // Whole seconds, at least one: zero would mean "expired".
            message_expiry_interval: self
                .message_expiry
                .map(|d| d.as_secs().clamp(1, u64::from(u32::MAX)) as u32),
            ..Default::default()
        })
    }
}

/// How to connect.
pub(crate) struct Connect<'a> {
    pub url: &'a BrokerUrl,
    pub client_id: &'a str,
    pub max_packet: usize,
    pub keep_alive: Duration,
    /// 3.1.1 clean session; under MQTT 5, `false` is clean start off with a session
    /// that never expires.
    pub clean: bool,
    pub manual_acks: bool,
    /// Request queue capacity.
    pub cap: usize,
    /// The message the broker publishes if the connection drops without a DISCONNECT.
    pub will: Option<&'a LastWill>,
}

/// A last-will message: published by the broker for a client whose connection drops
/// without a DISCONNECT (Sparkplug B's NDEATH, for example).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// QoS.
    pub qos: QoS,
    /// Whether the broker retains it.
    pub retain: bool,
}

/// A handle to send requests to the connection.
#[derive(Debug, Clone)]
pub(crate) enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// The connection itself: poll it to make progress.
pub(crate) enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// What the event loop reports, in either version.
#[derive(Debug)]
pub(crate) enum Event {
    /// The broker accepted the connection.
    ConnAck { session_present: bool },
    /// A subscription answer: the reason codes of refused filters (empty: all granted).
    SubAck { refused: Vec<String> },
    /// A message.
    Publish {
        topic: String,
        payload: Vec<u8>,
        pkid: u16,
        qos: QoS,
        dup: bool,
    },
    /// A publish acknowledged; `Some(reason)` when the broker refused it (MQTT 5).
    PubAck { refused: Option<String> },
    /// A publish written to the socket (packet id 0: QoS 0).
    PublishSent { pkid: u16 },
    /// Our own DISCONNECT went out.
    DisconnectSent,
    /// The broker closed the connection with a DISCONNECT (MQTT 5) and this reason.
    Disconnected { reason: String },
    /// Anything else.
    Other,
}

fn qos5(q: QoS) -> QoS5 {
    match q {
        QoS::AtMostOnce => QoS5::AtMostOnce,
        QoS::AtLeastOnce => QoS5::AtLeastOnce,
        QoS::ExactlyOnce => QoS5::ExactlyOnce,
    }
}

fn qos4(q: QoS5) -> QoS {
    match q {
        QoS5::AtMostOnce => QoS::AtMostOnce,
        QoS5::AtLeastOnce => QoS::AtLeastOnce,
        QoS5::ExactlyOnce => QoS::ExactlyOnce,
    }
}

#[cfg(feature = "tls")]
fn transport(url: &BrokerUrl) -> Option<rumqttc::Transport> {
    let t = url.tls.as_ref()?;
    // One process-wide crypto provider (ring); a second install is a no-op error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Some(match &t.ca {
        Some(ca) => rumqttc::Transport::tls(ca.clone(), t.client_auth.clone(), None),
        None => rumqttc::Transport::tls_with_default_config(),
    })
}

/// Creates the client and its event loop (nothing connects before the first poll).
pub(crate) fn connect(c: &Connect<'_>, version: MqttVersion) -> (Client, EventLoop) {
    match version {
        MqttVersion::V311 => {
            let mut o = rumqttc::MqttOptions::new(c.client_id, c.url.host.clone(), c.url.port);
            o.set_keep_alive(c.keep_alive);
            o.set_max_packet_size(c.max_packet, c.max_packet);
            if let Some(u) = &c.url.username {
                o.set_credentials(u.clone(), c.url.password.clone().unwrap_or_default());
            }
            #[cfg(feature = "tls")]
            if let Some(t) = transport(c.url) {
                o.set_transport(t);
            }
            o.set_clean_session(c.clean);
            o.set_manual_acks(c.manual_acks);
            if let Some(w) = c.will {
                o.set_last_will(rumqttc::LastWill::new(
                    &w.topic,
                    w.payload.clone(),
                    w.qos,
                    w.retain,
                ));
            }
            let (client, ev) = rumqttc::AsyncClient::new(o, c.cap);
            (Client::V4(client), EventLoop::V4(Box::new(ev)))
        }
        MqttVersion::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(c.client_id, c.url.host.clone(), c.url.port);
            o.set_keep_alive(c.keep_alive);
            o.set_max_packet_size(Some(c.max_packet.min(u32::MAX as usize) as u32));
            if let Some(u) = &c.url.username {
                o.set_credentials(u.clone(), c.url.password.clone().unwrap_or_default());
            }
            #[cfg(feature = "tls")]
            if let Some(t) = transport(c.url) {
                o.set_transport(t);
            }
            // MQTT 5 splits 3.1.1's clean session in two: clean start, and how long the
            // broker keeps the session after a disconnection (0: not at all).
            o.set_clean_start(c.clean);
            if !c.clean {
                o.set_session_expiry_interval(Some(SESSION_NEVER_EXPIRES));
            }
            o.set_manual_acks(c.manual_acks);
            if let Some(w) = c.will {
                o.set_last_will(p5::LastWill::new(
                    &w.topic,
                    w.payload.clone(),
                    qos5(w.qos),
                    w.retain,
                    None,
                ));
            }
            let (client, ev) = rumqttc::v5::AsyncClient::new(o, c.cap);
            (Client::V5(client), EventLoop::V5(Box::new(ev)))
        }
    }
}

fn reason_string(props: Option<&String>) -> String {
    props.map(|r| format!(" ({r})")).unwrap_or_default()
}

impl EventLoop {
    /// The next event; an error is a failed connection (the next poll reconnects).
    pub(crate) async fn poll(&mut self) -> Result<Event, String> {
        use rumqttc::{Event as E, Outgoing as O, Packet as P};
        match self {
            EventLoop::V4(ev) => Ok(match ev.poll().await.map_err(|e| e.to_string())? {
                E::Incoming(P::ConnAck(c)) => Event::ConnAck {
                    session_present: c.session_present,
                },
                E::Incoming(P::SubAck(s)) => Event::SubAck {
                    refused: s
                        .return_codes
                        .iter()
                        .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                        .map(|c| format!("{c:?}"))
                        .collect(),
                },
                E::Incoming(P::Publish(p)) => Event::Publish {
                    topic: p.topic,
                    payload: p.payload.to_vec(),
                    pkid: p.pkid,
                    qos: p.qos,
                    dup: p.dup,
                },
                E::Incoming(P::PubAck(_)) => Event::PubAck { refused: None },
                E::Outgoing(O::Publish(pkid)) => Event::PublishSent { pkid },
                E::Outgoing(O::Disconnect) => Event::DisconnectSent,
                _ => Event::Other,
            }),
            EventLoop::V5(ev) => {
                use rumqttc::v5::{Event as E5, Incoming as I};
                Ok(match ev.poll().await.map_err(|e| e.to_string())? {
                    E5::Incoming(I::ConnAck(c)) => Event::ConnAck {
                        session_present: c.session_present,
                    },
                    E5::Incoming(I::SubAck(s)) => {
                        let why = reason_string(
                            s.properties.as_ref().and_then(|p| p.reason_string.as_ref()),
                        );
                        Event::SubAck {
                            refused: s
                                .return_codes
                                .iter()
                                .filter(|c| !matches!(c, p5::SubscribeReasonCode::Success(_)))
                                .map(|c| format!("{c:?}{why}"))
                                .collect(),
                        }
                    }
                    E5::Incoming(I::Publish(p)) => Event::Publish {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.to_vec(),
                        pkid: p.pkid,
                        qos: qos4(p.qos),
                        dup: p.dup,
                    },
                    E5::Incoming(I::PubAck(a)) => Event::PubAck {
                        refused: match a.reason {
                            // No subscriber is not a failure: the broker took the message.
                            p5::PubAckReason::Success | p5::PubAckReason::NoMatchingSubscribers => {
                                None
                            }
                            r => Some(format!(
                                "{r:?}{}",
                                reason_string(
                                    a.properties.as_ref().and_then(|p| p.reason_string.as_ref())
                                )
                            )),
                        },
                    },
                    E5::Incoming(I::Disconnect(d)) => Event::Disconnected {
                        reason: format!(
                            "{:?}{}",
                            d.reason_code,
                            reason_string(
                                d.properties.as_ref().and_then(|p| p.reason_string.as_ref())
                            )
                        ),
                    },
                    E5::Outgoing(O::Publish(pkid)) => Event::PublishSent { pkid },
                    E5::Outgoing(O::Disconnect) => Event::DisconnectSent,
                    _ => Event::Other,
                })
            }
        }
    }
}

fn client_error(e: impl std::fmt::Display) -> MqttError {
    MqttError::Client(e.to_string())
}

impl Client {
    /// Queues a subscription without waiting.
    pub(crate) fn try_subscribe(&self, filter: &str, qos: QoS) -> Result<(), MqttError> {
        match self {
            Client::V4(c) => c.try_subscribe(filter, qos).map_err(client_error),
            Client::V5(c) => c.try_subscribe(filter, qos5(qos)).map_err(client_error),
        }
    }

    /// Queues the PUBACK of QoS 1 message `pkid` without waiting; `false` when the
    /// request queue is full.
    pub(crate) fn try_ack(&self, pkid: u16) -> bool {
        match self {
            Client::V4(c) => c.try_ack(&ack4(pkid)).is_ok(),
            Client::V5(c) => c.try_ack(&ack5(pkid)).is_ok(),
        }
    }

    /// Queues the PUBACK of QoS 1 message `pkid`, waiting for room.
    pub(crate) async fn ack(&self, pkid: u16) {
        let _ = match self {
            Client::V4(c) => c.ack(&ack4(pkid)).await.map_err(client_error),
            Client::V5(c) => c.ack(&ack5(pkid)).await.map_err(client_error),
        };
    }

    /// Queues a publish, waiting while the request queue is full.
    pub(crate) async fn publish(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
        props: &MessageProperties,
    ) -> Result<(), MqttError> {
        match self {
            Client::V4(c) => c
                .publish(topic, qos, retain, payload)
                .await
                .map_err(client_error),
            Client::V5(c) => match props.to_v5() {
                Some(p) => c
                    .publish_with_properties(topic, qos5(qos), retain, payload, p)
                    .await
                    .map_err(client_error),
                None => c
                    .publish(topic, qos5(qos), retain, payload)
                    .await
                    .map_err(client_error),
            },
        }
    }

    /// Queues a publish without waiting; when the request queue is full the payload
    /// comes back (`Ok(Some(payload))`).
    pub(crate) fn try_publish(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
        props: &MessageProperties,
    ) -> Result<Option<Vec<u8>>, MqttError> {
        match self {
            Client::V4(c) => match c.try_publish(topic, qos, retain, payload) {
                Ok(()) => Ok(None),
                Err(rumqttc::ClientError::TryRequest(rumqttc::Request::Publish(p))) => {
                    Ok(Some(p.payload.to_vec()))
                }
                Err(e) => Err(client_error(e)),
            },
            Client::V5(c) => {
                let r = match props.to_v5() {
                    Some(p) => c.try_publish_with_properties(topic, qos5(qos), retain, payload, p),
                    None => c.try_publish(topic, qos5(qos), retain, payload),
                };
                match r {
                    Ok(()) => Ok(None),
                    Err(rumqttc::v5::ClientError::TryRequest(rumqttc::v5::Request::Publish(p))) => {
                        Ok(Some(p.payload.to_vec()))
                    }
                    Err(e) => Err(client_error(e)),
                }
            }
        }
    }

    /// Sends DISCONNECT, waiting for room in the request queue.
    pub(crate) async fn disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.disconnect().await.map_err(client_error),
            Client::V5(c) => c.disconnect().await.map_err(client_error),
        };
    }

    /// Sends DISCONNECT if the request queue has room.
    pub(crate) fn try_disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.try_disconnect().map_err(client_error),
            Client::V5(c) => c.try_disconnect().map_err(client_error),
        };
    }
}

fn ack4(pkid: u16) -> rumqttc::Publish {
    let mut p = rumqttc::Publish::new("", QoS::AtLeastOnce, Vec::<u8>::new());
    p.pkid = pkid;
    p
}

fn ack5(pkid: u16) -> p5::Publish {
    let mut p = p5::Publish::new("", QoS5::AtLeastOnce, Vec::<u8>::new(), None);
    p.pkid = pkid;
    p
}
