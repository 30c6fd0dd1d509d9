//! NATS JetStream connectors for Forewarn's scale-out: reading one partition of a
//! partitioned stream from a given sequence, leases on partitions in the key-value
//! store, and blobs (checkpoints) in the object store.
//!
//! Devices publish on MQTT topics (to the NATS server's MQTT listener) or NATS
//! subjects; a server subject mapping (see [`mapping`]) rewrites each subject to
//! `part.{K}.{subject}`, K a deterministic function of the device ([`partition_of`]),
//! and one stream stores `part.>`. A worker that owns partition K reads `part.K.>`.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy, kv, object_store};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use async_nats;

/// The subject prefix of partition `k`'s messages.
pub fn partition_prefix(k: u32) -> String {
    format!("part.{k}.")
}

/// Errors from the NATS connectors.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// A request to the server failed.
    #[error("NATS {what}: {reason}")]
    Request {
        /// What was asked.
        what: String,
        /// The client's error.
        reason: String,
    },
    /// A topic filter cannot be mapped to partitions.
    #[error("cannot partition topic '{topic}': {reason}")]
    Mapping {
        /// The topic filter.
        topic: String,
        /// Why.
        reason: String,
    },
}

fn req<E: std::fmt::Display>(what: impl Into<String>) -> impl FnOnce(E) -> NatsError {
    let what = what.into();
    move |e| NatsError::Request {
        what,
        reason: e.to_string(),
    }
}

/// FNV-1a (32 bit) of `key` modulo `n`: the partition NATS's `partition(n, ...)`
/// subject transform assigns to a device token, so Forewarn knows each device's owner.
pub fn partition_of(key: &str, n: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % n.max(1)
}

/// An MQTT topic (or filter) as the NATS subject the MQTT listener uses:
/// `a/b/+/#` → `a.b.*.>`.
pub fn topic_to_subject(topic: &str) -> String {
    topic
        .split('/')
        .map(|l| match l {
            "+" => "*",
            "#" => ">",
            l => l,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// A stored subject back as the MQTT topic the device published on, without the
/// partition prefix: `part.2.plant.s1.pump-7.telemetry` → `plant/s1/pump-7/telemetry`.
pub fn subject_to_topic(subject: &str) -> String {
    let rest = subject
        .strip_prefix("part.")
        .and_then(|s| s.split_once('.'))
        .map_or(subject, |(_, r)| r);
    rest.replace('.', "/")
}

/// The server subject mapping that spreads `topic_filter`'s messages over `partitions`
/// by the level captured as `key` in `template` (e.g. `plant/{site}/{line}/{device}/telemetry`
/// with key `device`). Returns `(from, to)` for the server's `mappings` block.
pub fn mapping(
    topic_filter: &str,
    template: &str,
    key: &str,
    partitions: u32,
) -> Result<(String, String), NatsError> {
    let bad = |reason: String| NatsError::Mapping {
        topic: topic_filter.to_string(),
        reason,
    };
    let levels: Vec<&str> = topic_filter.split('/').collect();
    let tlevels: Vec<&str> = template.split('/').collect();
    if levels.contains(&"#") {
        return Err(bad(
            "a multi-level wildcard '#' cannot be mapped; name every level with '+'".into(),
        ));
    }
    if levels.len() != tlevels.len() {
        return Err(bad(format!(
            "topic_template '{template}' has {} levels, the topic {}",
            tlevels.len(),
            levels.len()
        )));
    }
    let mut wildcard = 0;
    let mut key_wildcard = None;
    let mut to = vec![format!("part.{{{{partition({partitions},KEY)}}}}")];
    for (l, t) in levels.iter().zip(&tlevels) {
        if *l == "+" {
            wildcard += 1;
            if *t == format!("{{{key}}}") {
                key_wildcard = Some(wildcard);
            }
            to.push(format!("{{{{wildcard({wildcard})}}}}"));
        } else {
            to.push((*l).to_string());
        }
    }
    let k = key_wildcard.ok_or_else(|| {
        bad(format!(
            "no '+' level of the topic is captured as {{{key}}} in '{template}'"
        ))
    })?;
    Ok((
        topic_to_subject(topic_filter),
        to.join(".").replace("KEY", &k.to_string()),
    ))
}

/// A connection to a NATS server (or cluster) with JetStream.
#[derive(Clone, Debug)]
pub struct Nats {
    js: jetstream::Context,
}

/// One message read from a partition.
#[derive(Debug)]
pub struct StreamMessage {
    /// The MQTT topic the device published on.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// The message's sequence in the stream.
    pub seq: u64,
}

impl Nats {
    /// Connects to `url` (`nats://host:port`, several separated by commas), retrying in
    /// the background when the connection breaks.
    pub async fn connect(url: &str) -> Result<Nats, NatsError> {
        let servers: Vec<&str> = url.split(',').map(str::trim).collect();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(servers)
            .await
            .map_err(req(format!("connect to {url}")))?;
        // The first connection is made in the background: wait for it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while client.connection_state() != async_nats::connection::State::Connected {
            if tokio::time::Instant::now() > deadline {
                return Err(NatsError::Request {
                    what: format!("connect to {url}"),
                    reason: "not connected after 10 s".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Nats {
            js: jetstream::new(client),
        })
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Creates the readings stream on `part.>` if it does not exist: file storage,
    /// `replicas` copies, messages kept for `max_age` (longer than any outage a
    /// partition's checkpoint must be replayed across).
    pub async fn ensure_stream(
        &self,
        name: &str,
        replicas: usize,
        max_age: Duration,
    ) -> Result<(), NatsError> {
        self.js
            .get_or_create_stream(jetstream::stream::Config {
                name: name.to_string(),
                subjects: vec!["part.>".into()],
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas.max(1),
                max_age,
                ..Default::default()
            })
            .await
            .map_err(req(format!("create stream {name}")))?;
        Ok(())
    }

    /// Reads partition `k` of `stream` in order, from the message after sequence
    /// `after` (from the start when `None`), into a channel of `capacity` messages.
    /// An ordered consumer: nothing to acknowledge; after a server or connection loss
    /// it is created again from the last sequence delivered, so the channel sees each
    /// message once, in stream order.
    pub async fn read_partition(
        &self,
        stream: &str,
        k: u32,
        after: Option<u64>,
        capacity: usize,
    ) -> Result<PartitionReader, NatsError> {
        let st = self
            .js
            .get_stream(stream)
            .await
            .map_err(req(format!("stream {stream}")))?;
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let filter = format!("{}>", partition_prefix(k));
        let stream = stream.to_string();
        let task = tokio::spawn(async move {
            let mut last = after;
            let mut delay = Duration::from_millis(100);
            loop {
                let deliver_policy = match last {
                    Some(s) => DeliverPolicy::ByStartSequence {
                        start_sequence: s + 1,
                    },
                    None => DeliverPolicy::All,
                };
                let consumer = st
                    .create_consumer(pull::OrderedConfig {
                        filter_subject: filter.clone(),
                        deliver_policy,
                        ..Default::default()
                    })
                    .await;
                let mut msgs = match consumer {
                    Ok(c) => match c.messages().await {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(%stream, partition = k, error = %e, "reading partition: retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                            continue;
                        }
                    },
                    Err(e) => {
                        tracing::warn!(%stream, partition = k, error = %e, "creating consumer: retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                while let Some(m) = msgs.next().await {
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(%stream, partition = k, error = %e, "reading partition: resuming");
                            break;
                        }
                    };
                    delay = Duration::from_millis(100);
                    let Ok(seq) = m.info().map(|i| i.stream_sequence) else {
                        continue;
                    };
                    // An ordered consumer may replay after recreating itself.
                    if last.is_some_and(|l| seq <= l) {
                        continue;
                    }
                    last = Some(seq);
                    let msg = StreamMessage {
                        topic: subject_to_topic(m.subject.as_str()),
                        payload: m.payload.to_vec(),
                        seq,
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(delay).await;
            }
        });
        Ok(PartitionReader { rx, task })
    }

    /// The lease bucket `bucket` (created if missing, `replicas` copies); leases held
    /// as `worker` for `ttl`.
    pub async fn leases(
        &self,
        bucket: &str,
        replicas: usize,
        worker: &str,
        ttl: Duration,
    ) -> Result<Leases, NatsError> {
        let kv = match self.js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => {
                // The stream create_key_value would make, made directly: the client's
                // create_key_value first reads account information in a shape the
                // 2.9 servers do not send.
                self.js
                    .get_or_create_stream(jetstream::stream::Config {
                        name: format!("KV_{bucket}"),
                        subjects: vec![format!("$KV.{bucket}.>")],
                        max_messages_per_subject: 1,
                        storage: jetstream::stream::StorageType::File,
                        num_replicas: replicas.max(1),
                        allow_rollup: true,
                        deny_delete: true,
                        allow_direct: true,
                        discard: jetstream::stream::DiscardPolicy::New,
                        ..Default::default()
                    })
                    .await
                    .map_err(req(format!("create key-value bucket {bucket}")))?;
                self.js
                    .get_key_value(bucket)
                    .await
                    .map_err(req(format!("open key-value bucket {bucket}")))?
            }
        };
        // A replicated bucket just made answers once its replicas elected a leader.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Err(e) = kv.entry("ready-probe").await {
            if tokio::time::Instant::now() > deadline {
                return Err(req(format!("key-value bucket {bucket} not ready"))(e));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Leases {
            kv,
            worker: worker.to_string(),
            ttl,
        })
    }

    /// The object store bucket `bucket` (created if missing, `replicas` copies).
    pub async fn blobs(&self, bucket: &str, replicas: usize) -> Result<Blobs, NatsError> {
        let store = match self.js.get_object_store(bucket).await {
            Ok(s) => s,
            Err(_) => self
                .js
                .create_object_store(object_store::Config {
                    bucket: bucket.to_string(),
                    num_replicas: replicas.max(1),
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(req(format!("create object store {bucket}")))?,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Err(e) = store.info("ready-probe").await {
            if e.kind() == object_store::InfoErrorKind::NotFound {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(req(format!("object store {bucket} not ready"))(e));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Blobs { store })
    }
}

/// Messages of one partition, in stream order (see [`Nats::read_partition`]).
pub struct PartitionReader {
    /// The messages.
    pub rx: mpsc::Receiver<StreamMessage>,
    task: JoinHandle<()>,
}

impl Drop for PartitionReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a lease entry holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaseValue {
    /// The holder's worker id (empty: released).
    pub worker: String,
    /// Wall-clock expiry, ms since the epoch.
    pub until_ms: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Leases in a key-value bucket: an entry names its holder and an expiry; it is taken
/// with create, or compare-and-set on the revision of a released or expired entry, so
/// two workers can never both succeed. Holders renew well before expiry. Worker clocks
/// must agree to well within the lease time (NTP).
#[derive(Clone)]
pub struct Leases {
    kv: kv::Store,
    worker: String,
    ttl: Duration,
}

/// A held lease: its key and the revision the holder last wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The key.
    pub key: String,
    /// Revision of the holder's last write (the compare-and-set token).
    pub revision: u64,
}

impl Leases {
    /// This worker's id.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// How long a lease lasts without renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn value(&self) -> bytes::Bytes {
        serde_json::to_vec(&LeaseValue {
            worker: self.worker.clone(),
            until_ms: now_ms() + self.ttl.as_millis() as i64,
        })
        .expect("serialisable")
        .into()
    }

    /// The current holder of `key`, if the lease is live.
    pub async fn holder(&self, key: &str) -> Result<Option<LeaseValue>, NatsError> {
        let e = self
            .kv
            .entry(key)
            .await
            .map_err(req(format!("read lease {key}")))?;
        Ok(e.filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| serde_json::from_slice::<LeaseValue>(&e.value).ok())
            .filter(|v| !v.worker.is_empty() && v.until_ms > now_ms()))
    }

    /// Takes `key` if nobody holds it (never held, released or expired), or if this
    /// worker already does. `None` when another worker holds it or won the race.
    pub async fn try_acquire(&self, key: &str) -> Result<Option<Lease>, NatsError> {
        let e = self
            .kv
            .entry(key)
            .await
            .map_err(req(format!("read lease {key}")))?;
        let current = e.filter(|e| e.operation == kv::Operation::Put);
        let rev = match current {
            None => match self.kv.create(key, self.value()).await {
                Ok(r) => r,
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(None),
                Err(e) => return Err(req(format!("create lease {key}"))(e)),
            },
            Some(e) => {
                let v = serde_json::from_slice::<LeaseValue>(&e.value).ok();
                let free = v.as_ref().is_none_or(|v| {
                    v.worker.is_empty() || v.worker == self.worker || v.until_ms <= now_ms()
                });
                if !free {
                    return Ok(None);
                }
                match self.kv.update(key, self.value(), e.revision).await {
                    Ok(r) => r,
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        return Ok(None)
                    }
                    Err(e) => return Err(req(format!("take lease {key}"))(e)),
                }
            }
        };
        Ok(Some(Lease {
            key: key.to_string(),
            revision: rev,
        }))
    }

    /// Extends a held lease. `Ok(false)` when it was lost (someone else took it after
    /// it expired): the holder must stop using it.
    pub async fn renew(&self, lease: &mut Lease) -> Result<bool, NatsError> {
        match self
            .kv
            .update(&lease.key, self.value(), lease.revision)
            .await
        {
            Ok(r) => {
                lease.revision = r;
                Ok(true)
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(req(format!("renew lease {}", lease.key))(e)),
        }
    }

    /// Gives a held lease up at once (on shutdown or rebalancing).
    pub async fn release(&self, lease: &Lease) -> Result<(), NatsError> {
        let v = serde_json::to_vec(&LeaseValue {
            worker: String::new(),
            until_ms: 0,
        })
        .expect("serialisable");
        self.kv
            .update(&lease.key, v.into(), lease.revision)
            .await
            .map(|_| ())
            .map_err(req(format!("release lease {}", lease.key)))
    }

    /// Records `value` under `key` if nothing is there yet; returns what is stored.
    pub async fn settle(&self, key: &str, value: &str) -> Result<String, NatsError> {
        match self
            .kv
            .create(key, value.to_string().into_bytes().into())
            .await
        {
            Ok(_) => Ok(value.to_string()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let v = self
                    .kv
                    .get(key)
                    .await
                    .map_err(req(format!("read {key}")))?
                    .unwrap_or_default();
                Ok(String::from_utf8_lossy(&v).into_owned())
            }
            Err(e) => Err(req(format!("write {key}"))(e)),
        }
    }

    /// Live holders of the keys under `prefix` (e.g. the workers' presence entries).
    pub async fn live(&self, prefix: &str) -> Result<Vec<(String, LeaseValue)>, NatsError> {
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(req(format!("list {prefix}*")))?;
        let mut names = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(req(format!("list {prefix}*")))?;
            if k.starts_with(prefix) {
                names.push(k);
            }
        }
        // The listing's consumer can be re-created mid-way while JetStream is slow and
        // deliver a key twice; a worker counted twice would shrink everyone's share.
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for k in names {
            if let Some(v) = self.holder(&k).await? {
                out.push((k, v));
            }
        }
        Ok(out)
    }
}

/// Named blobs in an object store bucket.
#[derive(Clone)]
pub struct Blobs {
    store: object_store::ObjectStore,
}

impl Blobs {
    /// Names of the blobs that start with `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, NatsError> {
        let mut l = self.store.list().await.map_err(req("list objects"))?;
        let mut out = Vec::new();
        while let Some(o) = l.next().await {
            let o = o.map_err(req("list objects"))?;
            if !o.deleted && o.name.starts_with(prefix) {
                out.push(o.name);
            }
        }
        Ok(out)
    }

    /// A blob's bytes.
    pub async fn get(&self, name: &str) -> Result<Vec<u8>, NatsError> {
        let mut o = self
            .store
            .get(name)
            .await
            .map_err(req(format!("get object {name}")))?;
        let mut buf = Vec::new();
        o.read_to_end(&mut buf)
            .await
            .map_err(req(format!("read object {name}")))?;
        Ok(buf)
    }

    /// Stores a blob: readers see it only once all of it is stored (the object's
    /// metadata is written after its chunks, and the server acknowledges each write
    /// once the stream's replicas have it).
    pub async fn put(&self, name: &str, bytes: &[u8]) -> Result<(), NatsError> {
        let mut r = bytes;
        self.store
            .put(name, &mut r)
            .await
            .map(|_| ())
            .map_err(req(format!("put object {name}")))
    }

    /// Removes a blob.
    pub async fn delete(&self, name: &str) -> Result<(), NatsError> {
        self.store
            .delete(name)
            .await
            .map_err(req(format!("delete object {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_values() {
        // FNV-1a 32 reference: "" → 0x811c9dc5, "a" → 0xe40c292c, "foobar" → 0xbf9cf968.
        assert_eq!(partition_of("", u32::MAX), 0x811c9dc5);
        assert_eq!(partition_of("a", u32::MAX), 0xe40c292c);
        assert_eq!(partition_of("foobar", u32::MAX), 0xbf9cf968);
        assert_eq!(partition_of("foobar", 4), 0xbf9cf968 % 4);
    }

    #[test]
    fn topics_and_subjects() {
        assert_eq!(
            topic_to_subject("plant/+/+/+/telemetry"),
            "plant.*.*.*.telemetry"
        );
        assert_eq!(topic_to_subject("a/#"), "a.>");
        assert_eq!(
            subject_to_topic("part.2.plant.s1.pump-7.telemetry"),
            "plant/s1/pump-7/telemetry"
        );
        let (from, to) = mapping(
            "plant/+/+/+/telemetry",
            "plant/{site}/{line}/{device}/telemetry",
            "device",
            4,
        )
        .unwrap();
        assert_eq!(from, "plant.*.*.*.telemetry");
        assert_eq!(
            to,
            "part.{{partition(4,3)}}.plant.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}.telemetry"
        );
        assert!(mapping("a/#", "a/{device}", "device", 4).is_err());
        assert!(mapping("a/+", "a/{site}", "device", 4).is_err());
    }
}
