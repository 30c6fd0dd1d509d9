//! The service's configuration file (`forewarn.toml`): one typed tree composed of the
//! engine's settings and each connector's, loaded the same way by `forewarn run` and
//! by a program embedding the service. Unknown keys are an error, so a typo cannot
//! silently fall back to a default; keys of the flat layout used before the sections
//! name the section they moved to.

use std::path::{Path, PathBuf};

use forewarn_engine::{CheckpointSettings, EngineSettings};
use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Query file or directory.
    pub queries: PathBuf,
    /// Models directory (default: `./models` when it exists).
    pub models: Option<PathBuf>,
    /// `[engine]`.
    pub engine: EngineSettings,
    /// `[checkpoint]`.
    pub checkpoint: CheckpointSettings,
    /// `[mqtt]`: the broker readings come from and outputs go to.
    pub mqtt: MqttSettings,
    /// `[nats]`: scale-out on NATS JetStream (on when `url` is given).
    pub nats: NatsSettings,
    /// `[http]`: the operations endpoint (on when `listen` is given).
    pub http: HttpSettings,
    /// `[log]`: how the log is written.
    pub log: LogSettings,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            queries: "queries".into(),
            models: None,
            engine: EngineSettings::default(),
            checkpoint: CheckpointSettings::default(),
            mqtt: MqttSettings::default(),
            nats: NatsSettings::default(),
            http: HttpSettings::default(),
            log: LogSettings::default(),
        }
    }
}

/// `[log]`. The level stays with `RUST_LOG`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` (for people) or `json` (one object per line, for log collectors);
    /// `--log-format` overrides it.
    pub format: LogFormat,
}

/// How log events are written to stderr (`[log] format`, `--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One line per event for a terminal or the journal: time, level, target, message,
    /// fields as `key=value`.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the
    /// event's fields (see docs/operations.md, "Logs").
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "[log] format must be \"text\" or \"json\", got \"{s}\""
            )),
        }
    }
}

// By hand rather than derived: serde's "unknown variant" does not name the section.
impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSettings {
    /// `mqtt://[USER@]HOST[:PORT]` (or `tcp://`); `mqtts://` for TLS.
    pub broker: Option<String>,
    /// Client id prefix: the engine connects as `{id}-in` and `{id}-out`.
    pub client_id: Option<String>,
    /// Wait for a broker host name that does not resolve yet instead of failing.
    pub retry_dns: bool,
    /// QoS of the subscriptions (0 or 1); outputs are always QoS 1.
    pub source_qos: u8,
    /// User name; the password comes from `password_file` or `FOREWARN_MQTT_PASSWORD`.
    pub username: Option<String>,
    /// A file holding the broker password.
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) for `mqtts://`.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for brokers that require one.
    pub tls_cert_file: Option<PathBuf>,
    /// Its key (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// `block` (stop reading when behind) or `drop_oldest` (shed the oldest input).
    pub overload: Overload,
    /// With `drop_oldest`: messages kept waiting before the oldest go.
    pub overload_max_waiting: usize,
    /// Outgoing messages held while the broker is unreachable.
    pub max_outbox: usize,
    /// MQTT protocol version of the engine's connections: 4 (3.1.1, the default) or 5.
    pub mqtt_version: u8,
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            broker: None,
            client_id: None,
            retry_dns: false,
            source_qos: 1,
            username: None,
            password_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            overload: Overload::Block,
            overload_max_waiting: 10_000,
            max_outbox: 100_000,
            mqtt_version: 4,
        }
    }
}

/// What the input side does when the engine cannot keep up (`overload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overload {
    /// Stop reading: the broker holds the messages until the engine catches up.
    Block,
    /// Keep reading and drop the oldest waiting messages, counted and logged.
    DropOldest,
}

/// `[nats]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSettings {
    /// Server URLs (comma-separated for a cluster); scale-out is on when given.
    pub url: Option<String>,
    /// `auto` or a list such as `0-3` or `0,2`.
    pub partitions: Option<String>,
    /// Unique in the job (default: host name and pid).
    pub worker_id: Option<String>,
    /// Names the leases, checkpoints and output sessions.
    pub job: String,
    /// A dead worker's partitions move after this (ms).
    pub lease_ttl_ms: u64,
    /// Copies of the stream (when created) and of the buckets.
    pub replicas: usize,
    /// How long the stream keeps readings when Forewarn creates it (s).
    pub stream_max_age_s: u64,
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            url: None,
            partitions: None,
            worker_id: None,
            job: "forewarn".into(),
            lease_ttl_ms: 10_000,
            replicas: 1,
            stream_max_age_s: 86_400,
        }
    }
}

impl NatsSettings {
    /// The first scale-out setting given without `url`, if any.
    pub fn set_without_url(&self) -> Option<&'static str> {
        let d = NatsSettings::default();
        [
            (self.partitions.is_some(), "partitions"),
            (self.worker_id.is_some(), "worker_id"),
            (self.job != d.job, "job"),
            (self.lease_ttl_ms != d.lease_ttl_ms, "lease_ttl_ms"),
            (self.replicas != d.replicas, "replicas"),
            (
                self.stream_max_age_s != d.stream_max_age_s,
                "stream_max_age_s",
            ),
        ]
        .into_iter()
        .find_map(|(set, k)| set.then_some(k))
    }
}

/// `[http]`: one listener serving `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// `IP:PORT` to listen on, e.g. `127.0.0.1:9464`; no listener when absent.
    pub listen: Option<String>,
    /// A file holding the bearer token clients must send (`Authorization: Bearer ...`).
    pub bearer_token_file: Option<PathBuf>,
    /// The name of an environment variable holding the bearer token.
    pub bearer_token_env: Option<String>,
}

impl HttpSettings {
    /// `listen` parsed; `None` when absent, an error naming the key when malformed.
    pub fn listen_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let Some(l) = &self.listen else {
            return Ok(None);
        };
        l.parse().map(Some).map_err(|_| {
            ConfigError::Invalid(format!(
                "[http] listen: expected IP:PORT such as \"127.0.0.1:9464\" or \"[::1]:9464\", got \"{l}\""
            ))
        })
    }

    /// Whether a bearer token is configured (from a file or the environment).
    pub fn has_token(&self) -> bool {
        self.bearer_token_file.is_some() || self.bearer_token_env.is_some()
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{0}")]
    Invalid(String),
}

/// The smallest `max_payload_bytes` accepted: the smallest plausible reading is about 40
/// bytes of JSON.
const MIN_PAYLOAD_BYTES: usize = 64;

/// Keys of the flat layout and where they live now.
const MOVED: &[(&str, &str, &str)] = &[
    ("broker", "mqtt", "broker"),
    ("client_id", "mqtt", "client_id"),
    ("retry_dns", "mqtt", "retry_dns"),
    ("source_qos", "mqtt", "source_qos"),
    ("username", "mqtt", "username"),
    ("password_file", "mqtt", "password_file"),
    ("tls_ca_file", "mqtt", "tls_ca_file"),
    ("tls_cert_file", "mqtt", "tls_cert_file"),
    ("tls_key_file", "mqtt", "tls_key_file"),
    ("overload", "mqtt", "overload"),
    ("overload_max_waiting", "mqtt", "overload_max_waiting"),
    ("max_batch_rows", "engine", "max_batch_rows"),
    ("max_batch_delay_ms", "engine", "max_batch_delay_ms"),
    ("flush_when_idle", "engine", "flush_when_idle"),
    ("max_payload_bytes", "engine", "max_payload_bytes"),
    ("topic_prefix", "engine", "topic_prefix"),
    ("max_devices", "engine", "max_devices"),
    ("max_open_windows", "engine", "max_open_windows"),
    ("max_state_bytes", "engine", "max_state_bytes"),
    ("checkpoint_dir", "checkpoint", "dir"),
    ("checkpoint_interval_ms", "checkpoint", "interval_ms"),
    ("checkpoint_max_unacked", "checkpoint", "max_unacked"),
    ("checkpoint_keep", "checkpoint", "keep"),
    ("partitions", "nats", "partitions"),
    ("worker_id", "nats", "worker_id"),
    ("job", "nats", "job"),
    ("lease_ttl_ms", "nats", "lease_ttl_ms"),
    ("nats_replicas", "nats", "replicas"),
    ("stream_max_age_s", "nats", "stream_max_age_s"),
    ("log_format", "log", "format"),
];

impl ServiceConfig {
    /// Reads `path`; errors name the file. Relative paths in it (queries, models, the
    /// checkpoint directory, credential and TLS files) are relative to the file's
    /// directory, as a service's configuration in `/etc` expects.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let named = |e: ConfigError| ConfigError::Invalid(format!("{}: {e}", path.display()));
        let mut c = Self::from_toml(&text).map_err(named)?;
        let base = path.parent().unwrap_or(Path::new(""));
        let given: toml::Table = text.parse().unwrap_or_default();
        let is_given = |section: Option<&str>, key: &str| match section {
            None => given.contains_key(key),
            Some(s) => given
                .get(s)
                .and_then(|t| t.as_table())
                .is_some_and(|t| t.contains_key(key)),
        };
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if is_given(None, "queries") {
            resolve(&mut c.queries);
        }
        for (section, key, p) in [
            (None, "models", &mut c.models),
            (Some("checkpoint"), "dir", &mut c.checkpoint.dir),
            (Some("mqtt"), "password_file", &mut c.mqtt.password_file),
            (Some("mqtt"), "tls_ca_file", &mut c.mqtt.tls_ca_file),
            (Some("mqtt"), "tls_cert_file", &mut c.mqtt.tls_cert_file),
            (Some("mqtt"), "tls_key_file", &mut c.mqtt.tls_key_file),
            (
                Some("http"),
                "bearer_token_file",
                &mut c.http.bearer_token_file,
            ),
        ] {
            if let (true, Some(p)) = (is_given(section, key), p.as_mut()) {
                resolve(p);
            }
        }
        Ok(c)
    }

    /// Parses TOML text and checks each value (not yet how they combine with the
    /// command line's flags: see [`ServiceConfig::check`]).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        // Keys of the flat layout: say where they went rather than "unknown field".
        if let Ok(table) = text.parse::<toml::Table>() {
            let mut moved = Vec::new();
            for (key, value) in &table {
                if let Some((_, section, new)) = MOVED.iter().find(|(old, _, _)| old == key) {
                    moved.push(if key == new {
                        format!("'{key}' now belongs in the [{section}] section:\n[{section}]\n{new} = {value}")
                    } else {
                        format!("'{key}' is now '{new}' in the [{section}] section:\n[{section}]\n{new} = {value}")
                    });
                } else if key == "nats" && !value.is_table() {
                    moved.push(format!("'nats' is now a section:\n[nats]\nurl = {value}"));
                }
            }
            if !moved.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "keys of the layout before sections (see forewarn config --print-default):\n{}",
                    moved.join("\n")
                )));
            }
        }
        let c: ServiceConfig = toml::from_str(text).map_err(|e| {
            // serde names Rust's types; say what to write.
            let msg = e
                .to_string()
                .replace("expected usize", "expected a whole number")
                .replace("expected u64", "expected a whole number")
                .replace("expected u32", "expected a whole number")
                .replace("expected u8", "expected a whole number");
            ConfigError::Invalid(msg)
        })?;
        c.check_values()?;
        Ok(c)
    }

    /// Values that no setting of the others makes right.
    fn check_values(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let e = &self.engine;
        if e.max_batch_rows == 0 {
            return bad(
                "[engine] max_batch_rows = 0: a micro-batch holds at least 1 reading".into(),
            );
        }
        if let Some(why) = forewarn_engine::topic_prefix_problem(&e.topic_prefix) {
            return bad(format!(
                "[engine] topic_prefix = {:?}: {why}",
                e.topic_prefix
            ));
        }
        for (key, v) in [
            ("max_devices", e.max_devices),
            ("max_open_windows", e.max_open_windows),
            ("max_state_bytes", e.max_state_bytes),
        ] {
            if v == 0 {
                return bad(format!(
                    "[engine] {key} = 0 would refuse every reading: give at least 1"
                ));
            }
        }
        // A payload limit under the size of any real reading dead-letters everything as
        // `too_large`: counted, but the plant could never alert (a bytes-for-KiB slip).
        if e.max_payload_bytes < MIN_PAYLOAD_BYTES {
            return bad(format!(
                "[engine] max_payload_bytes = {} would refuse nearly every reading as too_large \
                 (the limit is in bytes; a JSON reading with a timestamp and one value is about \
                 40): give at least {MIN_PAYLOAD_BYTES} (default {})",
                e.max_payload_bytes,
                EngineSettings::default().max_payload_bytes
            ));
        }
        if e.output_threads == 0 {
            return bad(
                "[engine] output_threads = 0: give at least 1 (1: window results are turned \
                 into outputs on the engine's own thread)"
                    .into(),
            );
        }
        let c = &self.checkpoint;
        for (key, v) in [
            ("interval_ms", c.interval_ms as usize),
            ("max_unacked", c.max_unacked),
            ("keep", c.keep),
        ] {
            if v == 0 {
                return bad(format!("[checkpoint] {key} must be at least 1"));
            }
        }
        let m = &self.mqtt;
        if m.source_qos > 1 {
            return bad(format!(
                "[mqtt] source_qos must be 0 or 1, got {}",
                m.source_qos
            ));
        }
        if !matches!(m.mqtt_version, 3..=5) {
            return bad(format!(
                "[mqtt] mqtt_version must be 4 (3.1.1; 3 is the same) or 5, got {}",
                m.mqtt_version
            ));
        }
        if m.max_outbox == 0 || m.overload_max_waiting == 0 {
            return bad("[mqtt] max_outbox and overload_max_waiting must be at least 1".into());
        }
        if m.overload == Overload::Block
            && m.overload_max_waiting != MqttSettings::default().overload_max_waiting
        {
            return bad("[mqtt] overload_max_waiting applies to overload = \"drop_oldest\"".into());
        }
        #[cfg(feature = "mqtt")]
        if let Some(b) = &m.broker {
            if let Err(e) = forewarn_mqtt::BrokerUrl::parse(b) {
                return bad(format!("[mqtt] broker: {e}"));
            }
        }
        let n = &self.nats;
        if !(1..=5).contains(&n.replicas) {
            return bad(format!(
                "[nats] replicas must be 1 to 5, got {}",
                n.replicas
            ));
        }
        if n.lease_ttl_ms < 300 || n.stream_max_age_s == 0 {
            return bad(
                "[nats] lease_ttl_ms must be at least 300 and stream_max_age_s at least 1".into(),
            );
        }
        let h = &self.http;
        h.listen_addr()?;
        if h.bearer_token_file.is_some() && h.bearer_token_env.is_some() {
            return bad("[http] give one of bearer_token_file and bearer_token_env".into());
        }
        if h.bearer_token_env.as_deref() == Some("") {
            return bad(
                "[http] bearer_token_env names an environment variable: it cannot be empty".into(),
            );
        }
        Ok(())
    }

    /// How the settings combine, once the command line's flags are applied: checkpoint
    /// timing without a directory, scale-out settings without a NATS URL, settings
    /// scale-out refuses.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.check_values()?;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        // In scale-out the timing applies to the checkpoints in NATS.
        if self.checkpoint.dir.is_none() && self.checkpoint.tuned() && self.nats.url.is_none() {
            return bad("the [checkpoint] settings need dir (or --checkpoint-dir)".into());
        }
        if self.nats.url.is_some() {
            if self.mqtt.client_id.is_some() {
                return bad("with [nats] url (or --nats), outputs are published as {job}-pK-out per partition: drop [mqtt] client_id (name the job with job in the [nats] section)".into());
            }
            if self.checkpoint.dir.is_some() {
                return bad("with [nats] url (or --nats), checkpoints are kept in the NATS object store (where every worker reaches them): drop [checkpoint] dir".into());
            }
        } else if let Some(what) = self.nats.set_without_url() {
            return bad(format!(
                "[nats] {what} applies to scale-out: it needs --nats URL (or url in the [nats] section)"
            ));
        }
        let h = &self.http;
        match h.listen_addr()? {
            None if h.has_token() => {
                return bad(
                    "[http] bearer_token_file and bearer_token_env need listen (or --http)".into(),
                );
            }
            // Anyone on the network could read the plant's metrics: refuse without a token.
            Some(a) if !a.ip().is_loopback() && !h.has_token() => {
                return bad(format!(
                    "[http] listen = \"{a}\" is not a loopback address: set bearer_token_file or bearer_token_env in the [http] section (clients then send Authorization: Bearer TOKEN), or listen on 127.0.0.1"
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// The paths this configuration names that do not exist on this machine, each with
    /// its key as the file writes it (`queries`, `[mqtt] tls_ca_file`, ...): what
    /// `forewarn run` would stop on. Not an error in itself: a file may be checked on
    /// another machine than the one it is written for. The checkpoint directory is
    /// left out (`run` creates it).
    pub fn missing_paths(&self) -> Vec<(&'static str, &Path)> {
        let m = &self.mqtt;
        [
            ("queries", Some(self.queries.as_path())),
            ("models", self.models.as_deref()),
            ("[mqtt] password_file", m.password_file.as_deref()),
            ("[mqtt] tls_ca_file", m.tls_ca_file.as_deref()),
            ("[mqtt] tls_cert_file", m.tls_cert_file.as_deref()),
            ("[mqtt] tls_key_file", m.tls_key_file.as_deref()),
            (
                "[http] bearer_token_file",
                self.http.bearer_token_file.as_deref(),
            ),
        ]
        .into_iter()
        .filter_map(|(key, p)| p.filter(|p| !p.exists()).map(|p| (key, p)))
        .collect()
    }

    /// The defaults as TOML, every section and key: those without a default are
    /// commented out, with an example value.
    pub fn default_toml() -> String {
        let defaults: toml::Table =
            toml::Table::try_from(ServiceConfig::default()).expect("serialises");
        let example: toml::Table = toml::Table::try_from(Self::example()).expect("serialises");
        let mut out = String::new();
        let line = |out: &mut String, k: &str, v: &toml::Value, set: bool| {
            let hash = if set { "" } else { "# " };
            out.push_str(&format!("{hash}{k} = {v}\n"));
        };
        // Top-level keys first, then one block per section, in the example's order.
        for (k, v) in &example {
            if !v.is_table() {
                line(
                    &mut out,
                    k,
                    defaults.get(k).unwrap_or(v),
                    defaults.contains_key(k),
                );
            }
        }
        for (section, v) in &example {
            let Some(keys) = v.as_table() else { continue };
            out.push_str(&format!("\n[{section}]\n"));
            let set = defaults.get(section).and_then(|d| d.as_table());
            for (k, ex) in keys {
                let given = set.and_then(|t| t.get(k));
                line(&mut out, k, given.unwrap_or(ex), given.is_some());
            }
        }
        out
    }

    /// A configuration with every key given, for [`ServiceConfig::default_toml`].
    fn example() -> Self {
        let mut c = ServiceConfig {
            models: Some("/etc/forewarn/models".into()),
            ..Default::default()
        };
        c.checkpoint.dir = Some("/var/lib/forewarn/checkpoints".into());
        let m = &mut c.mqtt;
        m.broker = Some("mqtt://10.0.0.5:1883".into());
        m.client_id = Some("forewarn-line3".into());
        m.username = Some("forewarn".into());
        m.password_file = Some("/etc/forewarn/mqtt-password".into());
        m.tls_ca_file = Some("/etc/forewarn/ca.pem".into());
        m.tls_cert_file = Some("/etc/forewarn/client.pem".into());
        m.tls_key_file = Some("/etc/forewarn/client.key".into());
        let n = &mut c.nats;
        n.url = Some("nats://n1:4222,nats://n2:4222".into());
        n.partitions = Some("auto".into());
        n.worker_id = Some("line3-a".into());
        let h = &mut c.http;
        h.listen = Some("127.0.0.1:9464".into());
        h.bearer_token_file = Some("/etc/forewarn/http-token".into());
        h.bearer_token_env = Some("FOREWARN_HTTP_TOKEN".into());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults_and_the_defaults_read_back() {
        assert_eq!(
            ServiceConfig::from_toml("").unwrap(),
            ServiceConfig::default()
        );
        let printed = ServiceConfig::default_toml();
        assert_eq!(
            ServiceConfig::from_toml(&printed).unwrap(),
            ServiceConfig::default()
        );
        for section in [
            "[engine]",
            "[checkpoint]",
            "[mqtt]",
            "[nats]",
            "[http]",
            "[log]",
        ] {
            assert!(printed.contains(section), "{printed}");
        }
    }

    #[test]
    fn sections_fill_their_settings() {
        let c = ServiceConfig::from_toml(
            "queries = 'q'\n[engine]\nmax_batch_rows = 10\n[checkpoint]\ndir = '/ck'\ninterval_ms = 200\n\
             [mqtt]\nbroker = 'mqtt://h:1883'\noverload = 'drop_oldest'\n[nats]\nurl = 'nats://n:4222'\nreplicas = 3\n",
        )
        .unwrap();
        assert_eq!(c.queries, PathBuf::from("q"));
        assert_eq!(c.engine.max_batch_rows, 10);
        assert_eq!(c.engine.max_devices, EngineSettings::default().max_devices);
        assert_eq!(c.checkpoint.dir, Some(PathBuf::from("/ck")));
        assert_eq!(c.checkpoint.interval_ms, 200);
        assert_eq!(c.mqtt.broker.as_deref(), Some("mqtt://h:1883"));
        assert_eq!(c.mqtt.overload, Overload::DropOldest);
        assert_eq!(c.nats.replicas, 3);
        assert_eq!(c.nats.set_without_url(), Some("replicas"));
    }

    #[test]
    fn typos_and_moved_keys_are_errors_that_say_what_to_write() {
        let e = ServiceConfig::from_toml("[engine]\nmax_batch_row = 10\n").unwrap_err();
        assert!(
            e.to_string().contains("unknown field `max_batch_row`"),
            "{e}"
        );
        let e = ServiceConfig::from_toml("checkpoint_interval_ms = 200\nbroker = 'mqtt://h'\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'checkpoint_interval_ms' is now 'interval_ms' in the [checkpoint] section:\n[checkpoint]\ninterval_ms = 200"),
            "{e}"
        );
        assert!(
            e.contains(
                "'broker' now belongs in the [mqtt] section:\n[mqtt]\nbroker = \"mqtt://h\""
            ),
            "every moved key is named: {e}"
        );
        let e = ServiceConfig::from_toml("nats = 'nats://n:4222'\n").unwrap_err();
        assert!(
            e.to_string().contains("[nats]\nurl = \"nats://n:4222\""),
            "{e}"
        );
        let e = ServiceConfig::from_toml("[mqtt]\noverload = 'shed'\n").unwrap_err();
        assert!(e.to_string().contains("unknown variant `shed`"), "{e}");
        let e = ServiceConfig::from_toml("[engine]\nmax_devices = 'many'\n").unwrap_err();
        assert!(e.to_string().contains("expected a whole number"), "{e}");
    }

    #[test]
    fn values_and_combinations_run_would_refuse_are_refused_by_check() {
        for (text, says) in [
            (
                "[engine]\nmax_payload_bytes = 10",
                "[engine] max_payload_bytes = 10 would refuse nearly every reading as too_large (the limit is in bytes; a JSON reading with a timestamp and one value is about 40): give at least 64 (default 262144)",
            ),
            (
                "[mqtt]\nsource_qos = 2",
                "[mqtt] source_qos must be 0 or 1, got 2",
            ),
            (
                "[engine]\nmax_devices = 0",
                "[engine] max_devices = 0 would refuse every reading",
            ),
            (
                "[engine]\noutput_threads = 0",
                "[engine] output_threads = 0: give at least 1",
            ),
            (
                "[engine]\nmax_batch_rows = 0",
                "[engine] max_batch_rows = 0: a micro-batch holds at least 1 reading",
            ),
            (
                "[engine]\ntopic_prefix = 'a/+/b'",
                "[engine] topic_prefix = \"a/+/b\": '+' and '#' are subscription wildcards",
            ),
            (
                "[engine]\ntopic_prefix = 'plant7/'",
                "[engine] topic_prefix = \"plant7/\": a level would be empty",
            ),
            (
                "[engine]\ntopic_prefix = ''",
                "[engine] topic_prefix = \"\": it cannot be empty",
            ),
            (
                "[checkpoint]\nkeep = 0",
                "[checkpoint] keep must be at least 1",
            ),
            ("[mqtt]\novert = 1", "unknown field `overt`"),
            (
                "[mqtt]\noverload_max_waiting = 5",
                "applies to overload = \"drop_oldest\"",
            ),
            (
                "[nats]\nreplicas = 9",
                "[nats] replicas must be 1 to 5, got 9",
            ),
            (
                "[http]\nlisten = 'localhost'",
                "[http] listen: expected IP:PORT",
            ),
            (
                "[http]\nlisten = '127.0.0.1:1'\nbearer_token_env = 'A'\nbearer_token_file = 'f'",
                "[http] give one of bearer_token_file and bearer_token_env",
            ),
        ] {
            let e = ServiceConfig::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
        for (text, says) in [
            ("[checkpoint]\ninterval_ms = 200", "need dir"),
            (
                "[nats]\nurl = 'nats://n'\n[mqtt]\nclient_id = 'x'",
                "drop [mqtt] client_id",
            ),
            (
                "[nats]\nurl = 'nats://n'\n[checkpoint]\ndir = '/x'",
                "drop [checkpoint] dir",
            ),
            ("[nats]\njob = 'j'", "[nats] job applies to scale-out"),
            (
                "[http]\nlisten = '0.0.0.0:9464'",
                "[http] listen = \"0.0.0.0:9464\" is not a loopback address: set bearer_token_file or bearer_token_env",
            ),
            (
                "[http]\nbearer_token_env = 'T'",
                "[http] bearer_token_file and bearer_token_env need listen",
            ),
        ] {
            let c = ServiceConfig::from_toml(text).unwrap();
            let e = c.check().unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
        assert!(ServiceConfig::default().check().is_ok());
        for ok in [
            "[http]\nlisten = '127.0.0.1:9464'",
            "[http]\nlisten = '[::1]:9464'",
            "[http]\nlisten = '0.0.0.0:9464'\nbearer_token_env = 'FOREWARN_HTTP_TOKEN'",
        ] {
            let c = ServiceConfig::from_toml(ok).unwrap();
            assert!(c.check().is_ok(), "{ok}");
        }
        // Scale-out checkpoints live in NATS: their timing needs no directory.
        let c =
            ServiceConfig::from_toml("[checkpoint]\ninterval_ms = 200\n[nats]\nurl = 'nats://n'")
                .unwrap();
        assert!(c.check().is_ok());
    }

    #[test]
    fn the_log_format_is_text_or_json_in_its_section() {
        assert_eq!(ServiceConfig::default().log.format, LogFormat::Text);
        assert!(ServiceConfig::default_toml().ends_with("\n[log]\nformat = \"text\"\n"));
        let c = ServiceConfig::from_toml("[log]\nformat = 'json'\n").unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(toml::to_string(&c)
            .unwrap()
            .contains("[log]\nformat = \"json\"\n"));
        let e = ServiceConfig::from_toml("[log]\nformat = 'xml'\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[log] format must be \"text\" or \"json\", got \"xml\""),
            "{e}"
        );
        let e = ServiceConfig::from_toml("[log]\nlevel = 'debug'\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field `level`, expected `format`"),
            "{e}"
        );
        // The key an operator would guess first says where it lives.
        let e = ServiceConfig::from_toml("log_format = 'json'\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "'log_format' is now 'format' in the [log] section:\n[log]\nformat = \"json\""
            ),
            "{e}"
        );
    }

    #[test]
    fn relative_paths_in_a_file_are_relative_to_the_file() {
        let dir = std::env::temp_dir().join(format!("fw-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("forewarn.toml");
        std::fs::write(
            &f,
            "queries = 'q'\n[checkpoint]\ndir = '/abs/ck'\n[mqtt]\npassword_file = 'pw'\n[http]\nbearer_token_file = 'tok'\n",
        )
        .unwrap();
        let c = ServiceConfig::from_file(&f).unwrap();
        assert_eq!(c.queries, dir.join("q"));
        assert_eq!(c.checkpoint.dir, Some(PathBuf::from("/abs/ck")));
        assert_eq!(c.mqtt.password_file, Some(dir.join("pw")));
        assert_eq!(c.http.bearer_token_file, Some(dir.join("tok")));
        // Named where they are looked for; the checkpoint directory is run's to create.
        let (q, pw, tok) = (dir.join("q"), dir.join("pw"), dir.join("tok"));
        assert_eq!(
            c.missing_paths(),
            [
                ("queries", q.as_path()),
                ("[mqtt] password_file", pw.as_path()),
                ("[http] bearer_token_file", tok.as_path())
            ]
        );
        std::fs::create_dir(&q).unwrap();
        std::fs::write(&pw, "secret").unwrap();
        assert_eq!(
            c.missing_paths(),
            [("[http] bearer_token_file", tok.as_path())]
        );
        // Not given: the default, relative to where forewarn runs.
        std::fs::write(&f, "").unwrap();
        assert_eq!(
            ServiceConfig::from_file(&f).unwrap().queries,
            PathBuf::from("queries")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
