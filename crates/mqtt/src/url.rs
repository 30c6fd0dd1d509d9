//! `mqtt://[user[:pass]@]host[:port]` URLs.

use std::fmt;

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
        match &self.username {
            Some(u) => write!(f, "mqtt://{u}:***@{host}:{}", self.port),
            None => write!(f, "mqtt://{host}:{}", self.port),
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
        }
    }

    /// Parses `mqtt://[user[:pass]@]host[:port]` (`tcp://` is accepted too).
    pub fn parse(s: &str) -> Result<Self, MqttError> {
        let masked = match (s.find("://"), s.rfind('@')) {
            (Some(a), Some(b)) if b > a => format!("{}***{}", &s[..a + 3], &s[b..]),
            _ => s.to_string(),
        };
        let bad = |reason: &str| MqttError::BadUrl {
            url: masked.clone(),
            reason: reason.to_string(),
        };
        let rest = s
            .strip_prefix("mqtt://")
            .or_else(|| s.strip_prefix("tcp://"))
            .ok_or_else(|| bad("the scheme must be mqtt://"))?;
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
        })
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
}
