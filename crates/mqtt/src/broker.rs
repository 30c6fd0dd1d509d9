//! An embedded rumqttd broker on a free loopback port.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::{BrokerUrl, MqttError};

/// A rumqttd broker running on its own threads. rumqttd has no shutdown call, so
/// the broker lives until the process exits.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// Starts a broker on a free port of 127.0.0.1 and waits until it accepts connections.
    pub fn start() -> Result<EmbeddedBroker, MqttError> {
        // rumqttd binds the port itself; pick one the OS says is free, retrying on a race.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| MqttError::Broker(e.to_string()))?
                .port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let config = config(addr);
            std::thread::Builder::new()
                .name("forewarn-broker".into())
                .spawn(move || {
                    let mut broker = Broker::new(config);
                    if let Err(e) = broker.start() {
                        tracing::error!(error = %e, "embedded broker stopped");
                    }
                })
                .map_err(|e| MqttError::Broker(e.to_string()))?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return Ok(EmbeddedBroker { addr });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(MqttError::Broker(
            "could not start on a free 127.0.0.1 port".into(),
        ))
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The broker's URL.
    pub fn url(&self) -> BrokerUrl {
        BrokerUrl::new(&self.addr.ip().to_string(), self.addr.port())
    }
}

fn config(listen: SocketAddr) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: 1 << 20,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 1_000,
            max_segment_size: 100 << 20,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        ..Default::default()
    }
}
