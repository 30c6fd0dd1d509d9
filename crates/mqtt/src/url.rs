//! Broker URLs: `mqtt://[user[:pass]@]host[:port]` (also `tcp://`), and `mqtts://` (also
//! `ssl://`, `tls://`) for TLS; with TLS settings and host name resolution.

use std::fmt;
use std::path::Path;

use crate::MqttError;

/// Where a broker is, and the credentials to use.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port (default 1883).
    pub port: u16,
    /// User name, if any.
    pub username: Option<String>,
    /// Password, if any (never printed by `Debug` or `Display`).
    pub password: Option<String>,
    /// TLS (`mqtts://`), with its certificates.
    pub tls: Option<TlsSettings>,
}

/// Certificates for a TLS connection (PEM), read when configured so that a missing
/// file is an error at start, not at the first connection.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// CA certificates the broker's certificate must chain to (`None`: the system's).
    pub ca: Option<Vec<u8>>,
    /// Client certificate chain and private key, for brokers that require them.
    pub client_auth: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .field("client_auth", &self.client_auth.is_some())
            .finish()
    }
}

impl TlsSettings {
    /// Reads a CA file and, optionally, a client certificate and key (all PEM).
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, MqttError> {
        let read = |what: &str, p: &Path| {
            let b = std::fs::read(p)
                .map_err(|e| MqttError::Tls(format!("{what} {}: {e}", p.display())))?;
            if !b.windows(10).any(|w| w == b"-----BEGIN") {
                return Err(MqttError::Tls(format!(
                    "{what} {}: not a PEM file (no -----BEGIN line)",
                    p.display()
                )));
            }
            Ok(b)
        };
        let client_auth = match (cert, key) {
            (Some(c), Some(k)) => Some((read("client certificate", c)?, read("client key", k)?)),
            (None, None) => None,
            _ => {
                return Err(MqttError::Tls(
                    "a client certificate needs its key, and a key its certificate".into(),
                ))
            }
        };
        Ok(TlsSettings {
            ca: ca.map(|p| read("CA file", p)).transpose()?,
            client_auth,
        })
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({self})")
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        match &self.username {
            Some(u) => write!(f, "{scheme}://{u}:***@{host}:{}", self.port),
            None => write!(f, "{scheme}://{host}:{}", self.port),
        }
    }
}

impl BrokerUrl {
    /// A URL for `host:port` without credentials.
    pub fn new(host: &str, port: u16) -> Self {
        BrokerUrl {
            host: host.to_string(),
            port,
            username: None,
            password: None,
            tls: None,
        }
    }

    /// Parses `mqtt://[user[:pass]@]host[:port]`. The scheme says the transport:
    /// `mqtt://` or `tcp://` for plain TCP (port 1883 by default), `mqtts://`, `ssl://`
    /// or `tls://` for TLS (port 8883 by default); any case.
    pub fn parse(s: &str) -> Result<Self, MqttError> {
        let masked = match (s.find("://"), s.rfind('@')) {
            (Some(a), Some(b)) if b > a => format!("{}***{}", &s[..a + 3], &s[b..]),
            _ => s.to_string(),
        };
        let bad = |reason: &str| MqttError::BadUrl {
            url: masked.clone(),
            reason: reason.to_string(),
        };
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(bad("no scheme"));
        };
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" | "tls" => true,
            "ws" | "wss" => return Err(bad("MQTT over WebSockets is not supported")),
            _ => return Err(bad(&format!("unknown scheme '{scheme}://'"))),
        };
        if tls && !cfg!(feature = "tls") {
            return Err(bad(&format!(
                "{scheme}:// (TLS) needs Forewarn built with the `tls` feature"
            )));
        }
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rfind('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((a, b)) => (Some(a.to_string()), Some(b.to_string())),
                None => (Some(u.to_string()), None),
            },
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, p) = h
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in IPv6 address"))?;
            (h.to_string(), p.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None if tls => 8883,
            None => 1883,
            Some(p) => p
                .parse()
                .map_err(|_| bad("the port is not a number from 1 to 65535"))?,
        };
        Ok(BrokerUrl {
            host,
            port,
            username,
            password,
            tls: tls.then(TlsSettings::default),
        })
    }
}

impl BrokerUrl {
    /// Resolves the host name, as each connection attempt will: an error naming the
    /// host when it does not resolve. A connection retries a name that does not resolve
    /// like a refused connection, so a typo in the name would otherwise only show as
    /// retries in the log; callers check once at start.
    pub async fn resolve(&self) -> Result<Vec<std::net::SocketAddr>, MqttError> {
        let unresolved = |reason: String| MqttError::Resolve {
            host: self.host.clone(),
            reason,
        };
        match tokio::net::lookup_host((self.host.as_str(), self.port)).await {
            Ok(addrs) => {
                let v: Vec<_> = addrs.collect();
                if v.is_empty() {
                    return Err(unresolved("no addresses".into()));
                }
                Ok(v)
            }
            Err(e) => Err(unresolved(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_masks() {
        let u = BrokerUrl::parse("mqtt://bob:s3cret@127.0.0.1:1884").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 1884));
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        assert!(!format!("{u} {u:?}").contains("s3cret"));
        assert_eq!(BrokerUrl::parse("mqtt://[::1]:99").unwrap().host, "::1");
        assert_eq!(BrokerUrl::parse("mqtt://localhost").unwrap().port, 1883);
        let e = BrokerUrl::parse("http://a:pw@h:1").unwrap_err().to_string();
        assert!(e.contains("scheme") && !e.contains("pw"), "{e}");
        assert!(BrokerUrl::parse("mqtt://h:99999").is_err());
    }

    #[test]
    fn schemes_name_the_transport() {
        for plain in ["mqtt://h", "tcp://h", "MQTT://h", "Tcp://h"] {
            let u = BrokerUrl::parse(plain).unwrap();
            assert_eq!((u.port, u.tls.is_some()), (1883, false), "{plain}");
        }
        for tls in ["mqtts://h", "ssl://h", "tls://h", "SSL://h"] {
            match BrokerUrl::parse(tls) {
                Ok(u) => assert_eq!((u.port, u.tls.is_some()), (8883, true), "{tls}"),
                // Without the tls feature the scheme is still recognised as TLS.
                Err(e) => assert!(
                    !cfg!(feature = "tls") && e.to_string().contains("(TLS) needs"),
                    "{e}"
                ),
            }
        }
        let e = BrokerUrl::parse("http://h:1").unwrap_err().to_string();
        assert_eq!(e, "bad broker URL 'http://h:1': unknown scheme 'http://' (expected mqtt://[USER[:PASS]@]HOST[:PORT]; tcp:// is the same, mqtts://, ssl:// and tls:// are TLS)");
        let e = BrokerUrl::parse("10.0.0.5:1883").unwrap_err().to_string();
        assert!(e.contains("no scheme"), "{e}");
        let e = BrokerUrl::parse("ws://h").unwrap_err().to_string();
        assert!(e.contains("WebSockets"), "{e}");
    }

    #[tokio::test]
    async fn an_unknown_host_is_named() {
        assert!(!BrokerUrl::new("127.0.0.1", 1883)
            .resolve()
            .await
            .unwrap()
            .is_empty());
        // `.invalid` never resolves (RFC 2606).
        let e = BrokerUrl::new("no-such-broker.invalid", 1883)
            .resolve()
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot resolve the broker's host name 'no-such-broker.invalid'"),
            "{e}"
        );
    }
}
