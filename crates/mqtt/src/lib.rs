//! MQTT connectors for Forewarn (rumqttc): a subscribing source with reconnect and
//! exponential backoff, a QoS 1 publishing sink that can wait for acknowledgements,
//! and (feature `broker`) an embedded rumqttd broker for zero-setup demos and tests.

#[cfg(feature = "broker")]
mod broker;
mod outbox;
mod sink;
mod source;
mod url;

#[cfg(feature = "broker")]
pub use broker::EmbeddedBroker;
pub use outbox::{Outbox, Pending};
pub use rumqttc::QoS;
pub use sink::{MqttSink, SinkStats};
pub use source::{AckToken, Incoming, MqttSource, SourceOptions};
pub use url::{BrokerUrl, TlsSettings};

/// Errors from the MQTT connectors.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The broker URL could not be understood.
    #[error("bad broker URL '{url}': {reason} (expected mqtt://HOST:PORT, optionally mqtt://USER:PASS@HOST:PORT)")]
    BadUrl {
        /// The URL with any password masked.
        url: String,
        /// What is wrong.
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
        .map_err(|_| MqttError::Client(format!("not connected after {timeout:?}")))?
        .map_err(|e| MqttError::Client(e.to_string()))?;
    Ok(())
}

/// After a connection error: mark the client disconnected, log, and back off before
/// the event loop's next poll reconnects.
pub(crate) async fn back_off(
    role: &str,
    url: &BrokerUrl,
    e: &rumqttc::ConnectionError,
    connected: &tokio::sync::watch::Sender<bool>,
    backoff: &mut Backoff,
) {
    let _ = connected.send(false);
    let d = backoff.next_delay();
    tracing::warn!(broker = %url, error = %e, retry_in = ?d, "{role} connection failed");
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
