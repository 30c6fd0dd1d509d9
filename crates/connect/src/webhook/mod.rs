//! `connector = 'webhook'`: a sink that POSTs each alert (or alert transition) as JSON
//! to a URL, for CMMS systems and chat tools. Delivery ([`deliver`], feature `webhook`)
//! retries with backoff, and a delivered output counts as confirmed only once the
//! server answered 2xx — the same meaning as a broker's PUBACK for MQTT outputs.

#[cfg(feature = "webhook")]
pub mod deliver;

use std::path::PathBuf;
use std::time::Duration;

use crate::{Connector, ConnectorConfig, OptionError, Options, Role, TableContext};

/// The webhook connector.
#[derive(Debug, Clone, Copy)]
pub struct Webhook;

/// Where the bearer token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file holding the token (surrounding white space trimmed) beside the query file
    /// or below it, as every file a query file names: `bearer_token_file = '...'`.
    File(PathBuf),
    /// An environment variable: `bearer_token_env = 'CMMS_TOKEN'`.
    Env(String),
}

/// A webhook sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSink {
    /// `url = 'https://cmms.example/api/alerts'`.
    pub url: String,
    /// `bearer_token_file` or `bearer_token_env`, if given.
    pub token: Option<TokenSource>,
    /// One attempt's limit, connect to response (`timeout`, default 10 s).
    pub timeout: Duration,
    /// Attempts after the first before an output is given up on (`retries`); `None`
    /// (the default): until it is delivered, as MQTT outputs wait for the broker. Waits
    /// start at 1 s and double to at most 30 s.
    pub retries: Option<u32>,
}

/// Default `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl Connector for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn options(&self, role: Role) -> Result<&'static [&'static str], String> {
        match role {
            Role::Sink => Ok(&[
                "url",
                "bearer_token_file",
                "bearer_token_env",
                "timeout",
                "retries",
            ]),
            _ => Err("a webhook only sends: declare it as a sink (no columns)".into()),
        }
    }

    fn sink_needs_topic(&self) -> bool {
        false
    }

    fn sink_delivery(
        &self,
        config: &ConnectorConfig,
    ) -> Option<Result<Box<dyn crate::SinkDelivery>, String>> {
        let sink = config.get::<WebhookSink>()?;
        #[cfg(feature = "webhook")]
        {
            Some(
                deliver::WebhookClient::new(sink)
                    .map(|c| Box::new(c) as Box<dyn crate::SinkDelivery>)
                    .map_err(|e| e.to_string()),
            )
        }
        #[cfg(not(feature = "webhook"))]
        {
            let _ = sink;
            Some(Err(
                "this build has no webhook support (feature `webhook`)".to_string()
            ))
        }
    }

    fn configure(&self, t: &TableContext<'_>, o: &Options) -> Result<ConnectorConfig, OptionError> {
        let name = t.name;
        let url = o.get("url").ok_or_else(|| {
            OptionError::at(
                "connector",
                format!("webhook sink '{name}' needs url = 'http://...' or 'https://...'"),
            )
        })?;
        let url = match normalized_url(url) {
            Ok(u) => u,
            Err(why) => return Err(OptionError::at("url", format!("url '{url}' {why}"))),
        };
        let token = match (o.get("bearer_token_file"), o.get("bearer_token_env")) {
            (Some(_), Some(_)) => {
                return Err(OptionError::at(
                    "bearer_token_env",
                    "give bearer_token_file or bearer_token_env, not both",
                ))
            }
            (Some(f), None) => Some(TokenSource::File(crate::file::beside_query(
                t,
                "bearer_token_file",
                f,
            )?)),
            (None, Some(v)) if !v.is_empty() => Some(TokenSource::Env(v.to_string())),
            (None, Some(_)) => {
                return Err(OptionError::at(
                    "bearer_token_env",
                    "bearer_token_env names an environment variable, and is empty",
                ))
            }
            (None, None) => None,
        };
        let timeout = o
            .interval("timeout")?
            .map(|ms| Duration::from_millis(ms as u64))
            .unwrap_or(DEFAULT_TIMEOUT);
        let retries = o.whole("retries", 0..=1000)?.map(|n| n as u32);
        Ok(ConnectorConfig::new(
            "webhook",
            WebhookSink {
                url,
                token,
                timeout,
                retries,
            },
        ))
    }
}

/// `url` with its scheme in lower case, or why it cannot be posted to.
fn normalized_url(url: &str) -> Result<String, &'static str> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("must start with http:// or https://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err("must start with http:// or https://");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains white space");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("carries credentials: a password in a URL ends up in logs; give the token with bearer_token_file or bearer_token_env");
    }
    let (host, port) = match authority.rsplit_once(':') {
        // An IPv6 literal's colons are inside brackets.
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (authority, None),
    };
    if host.is_empty() {
        return Err("has no host");
    }
    if let Some(p) = port {
        if !matches!(p.parse::<u32>(), Ok(1..=65535)) {
            return Err("has a port that is not a number from 1 to 65535");
        }
    }
    Ok(format!("{scheme}://{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pos;
    use std::path::Path;

    fn sink(kv: &[(&str, &str)]) -> Result<WebhookSink, OptionError> {
        let mut o = Options::default();
        for (k, v) in kv {
            o.insert(k, v.to_string(), Pos::default()).unwrap();
        }
        let t = TableContext {
            name: "cmms",
            role: Role::Sink,
            event_time: false,
            dir: Path::new("q"),
            columns: &[],
        };
        Webhook
            .configure(&t, &o)
            .map(|c| c.get::<WebhookSink>().unwrap().clone())
    }

    #[test]
    fn defaults_and_options() {
        let s = sink(&[("url", "HTTP://127.0.0.1:8080/hook")]).unwrap();
        assert_eq!(s.url, "http://127.0.0.1:8080/hook");
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        assert_eq!(s.retries, None);
        assert_eq!(s.token, None);
        let s = sink(&[
            ("url", "https://cmms.example/api?x=1"),
            ("timeout", "2 seconds"),
            ("retries", "0"),
            ("bearer_token_file", "token.txt"),
        ])
        .unwrap();
        assert_eq!(s.timeout, Duration::from_secs(2));
        assert_eq!(s.retries, Some(0));
        assert_eq!(s.token, Some(TokenSource::File("q/token.txt".into())));
    }

    #[test]
    fn bad_settings_point_at_their_option() {
        let key = |kv: &[(&str, &str)]| sink(kv).unwrap_err().key;
        assert_eq!(key(&[]), Some("connector".into()));
        assert_eq!(key(&[("url", "ftp://x/y")]), Some("url".into()));
        assert_eq!(key(&[("url", "http:///y")]), Some("url".into()));
        for bad in [
            "http://user:pw@cmms/hook",
            "http://cmms:99999/x",
            "http://cmms:/x",
            "http://cmms/a b",
        ] {
            assert_eq!(key(&[("url", bad)]), Some("url".into()), "{bad}");
        }
        assert!(sink(&[("url", "http://[::1]:8080/x")]).is_ok());
        for outside in ["../secret", "/etc/hostname", ""] {
            assert_eq!(
                key(&[("url", "http://h"), ("bearer_token_file", outside)]),
                Some("bearer_token_file".into()),
                "{outside}"
            );
        }
        assert_eq!(
            key(&[("url", "http://h"), ("retries", "-1")]),
            Some("retries".into())
        );
        assert_eq!(
            key(&[("url", "http://h"), ("timeout", "0 seconds")]),
            Some("timeout".into())
        );
        assert_eq!(
            key(&[
                ("url", "http://h"),
                ("bearer_token_file", "a"),
                ("bearer_token_env", "B")
            ]),
            Some("bearer_token_env".into())
        );
    }
}
