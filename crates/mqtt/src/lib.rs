//! MQTT connectors for Forewarn (rumqttc): a subscribing source with reconnect and
//! exponential backoff, a QoS 1 publishing sink that can wait for acknowledgements,
//! and (feature `broker`) an embedded rumqttd broker for zero-setup demos and tests.

#[cfg(feature = "broker")]
mod broker;
mod client;
mod outbox;
mod sink;
mod source;
mod url;

#[cfg(feature = "broker")]
pub use broker::EmbeddedBroker;
pub use client::{LastWill, MessageProperties, MqttVersion, SESSION_NEVER_EXPIRES};
pub use outbox::{Outbox, Pending};
pub use rumqttc::QoS;
pub use sink::{MqttSink, SinkStats};
pub use source::{AckToken, Incoming, MqttSource, SourceOptions};
pub use url::{BrokerUrl, TlsSettings};

/// Errors from the MQTT connectors.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The broker URL could not be understood.
    #[error("bad broker URL '{url}': {reason} (expected mqtt://[USER[:PASS]@]HOST[:PORT]; tcp:// is the same, mqtts://, ssl:// and tls:// are TLS)")]
    BadUrl {
        /// The URL with any password masked.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The broker's host name does not resolve.
    #[error("cannot resolve the broker's host name '{host}': {reason}")]
    Resolve {
        /// The host name.
        host: String,
        /// What the resolver said.
        reason: String,
    },
    /// A client request could not be queued (the connection task has ended).
    #[error("MQTT client stopped: {0}")]
    Client(String),
    /// The embedded broker could not start.
    #[error("embedded broker: {0}")]
    Broker(String),
    /// TLS settings are wrong (a file missing or not PEM).
    #[error("TLS: {0}")]
    Tls(String),
    /// The first connection did not come up in time (each failed attempt is logged
    /// with its reason).
    #[error("could not connect to the broker within {0:?} (the warnings above say why)")]
    NotConnected(std::time::Duration),
    /// Waiting for acknowledgements timed out.
    #[error("timed out after {0:?} with {1} publishes still unacknowledged")]
    FlushTimeout(std::time::Duration, u64),
}

/// Exponential backoff between reconnection attempts.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: std::time::Duration,
    min: std::time::Duration,
    max: std::time::Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        let min = std::time::Duration::from_millis(100);
        Backoff {
            next: min,
            min,
            max: std::time::Duration::from_secs(30),
        }
    }
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
    pub(crate) fn next_delay(&mut self) -> std::time::Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

/// Waits until a client's event loop reports a live connection.
pub(crate) async fn wait_connected(
    connected: &mut tokio::sync::watch::Receiver<bool>,
    timeout: std::time::Duration,
) -> Result<(), MqttError> {
    tokio::time::timeout(timeout, connected.wait_for(|c| *c))
        .await
        .map_err(|_| MqttError::NotConnected(timeout))?
        .map_err(|e| MqttError::Client(e.to_string()))?;
    Ok(())
}

/// A connection the broker closes sooner than this after accepting it counts as
/// short-lived (see [`Liveness`]).
pub const SHORT_CONNECTION: std::time::Duration = std::time::Duration::from_secs(2);

/// Short-lived connections in a row before the client-id clash warning.
const CLASH_STREAK: u32 = 3;

/// Follows one client's connections to notice the mark of a client-id clash: the broker
/// closes the connection right after accepting it, again and again. An MQTT broker
/// drops the older connection when a client id logs in a second time, so two clients
/// with one id take it from each other in turn.
#[derive(Debug)]
pub(crate) struct Liveness {
    role: &'static str,
    client_id: String,
    connected_at: Option<std::time::Instant>,
    streak: u32,
    short: std::sync::Arc<std::sync::atomic::AtomicU64>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Liveness {
    pub(crate) fn new(
        role: &'static str,
        client_id: &str,
        short: std::sync::Arc<std::sync::atomic::AtomicU64>,
        accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        Liveness {
            role,
            client_id: client_id.to_string(),
            connected_at: None,
            streak: 0,
            short,
            accepted,
        }
    }

    /// The broker accepted the connection (CONNACK).
    pub(crate) fn connected(&mut self) {
        self.connected_at = Some(std::time::Instant::now());
        self.accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The connection (or an attempt) failed. Returns whether the connection that ended
    /// had lasted long enough to start the backoff afresh.
    fn dropped(&mut self, url: &BrokerUrl) -> bool {
        let Some(at) = self.connected_at.take() else {
            // Never accepted (refused, unreachable, TLS): not a clash.
            return false;
        };
        if at.elapsed() >= SHORT_CONNECTION {
            self.streak = 0;
            return true;
        }
        self.streak += 1;
        self.short
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.streak == CLASH_STREAK
            || (self.streak > CLASH_STREAK && self.streak.is_power_of_two())
        {
            tracing::warn!(
                broker = %url,
                client_id = %self.client_id,
                times = self.streak,
                "the broker closed the {} connection {} times in a row within {:?} of accepting it: probably another client is connected with the same client id '{}' (a broker drops the older connection when an id logs in again, so the two take turns); give each engine its own client id (forewarn run --client-id, or client_id in the config file)",
                self.role,
                self.streak,
                SHORT_CONNECTION,
                self.client_id
            );
        }
        false
    }
}

/// After a connection error: mark the client disconnected, log, and back off before
/// the event loop's next poll reconnects. The backoff starts again from its minimum
/// only after a connection that lasted; one the broker keeps closing at once (a
/// client-id clash) is retried ever more slowly, not ten times a second.
pub(crate) async fn back_off(
    url: &BrokerUrl,
    e: &str,
    connected: &tokio::sync::watch::Sender<bool>,
    backoff: &mut Backoff,
    liveness: &mut Liveness,
) {
    let _ = connected.send(false);
    if liveness.dropped(url) {
        backoff.reset();
    }
    let d = backoff.next_delay();
    tracing::warn!(broker = %url, role = liveness.role, client_id = %liveness.client_id, error = %e, retry_in = ?d, "{} connection failed", liveness.role);
    tokio::time::sleep(d).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = super::Backoff::new();
        let v: Vec<u128> = (0..12).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(&v[..4], &[100, 200, 400, 800]);
        assert_eq!(v[11], 30_000);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
