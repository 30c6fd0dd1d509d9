//! Running a [`Pipeline`] against an MQTT broker: subscribe to the sources' topics and
//! to operator commands (`{prefix}/command/{device}`), publish alerts, device state
//! (retained) and dead letters with QoS 1.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use forewarn_mqtt::{Outbox, Pending};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[cfg(feature = "broker")]
pub use forewarn_mqtt::EmbeddedBroker;
pub use forewarn_mqtt::{
    AckToken, BrokerUrl, Incoming, LastWill, MessageProperties, MqttError, MqttSink, MqttSource,
    MqttVersion, QoS, SourceOptions, TlsSettings,
};

use forewarn_engine::{
    Delivery, EngineError, EngineStats, Envelope, Output, Pipeline, PipelineHandle,
};

/// Errors from running a pipeline over MQTT.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The pipeline failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The broker connection failed.
    #[error(transparent)]
    Mqtt(#[from] MqttError),
}

/// How the pipeline connects.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Client id prefix: the source connects as `{id}-in`, the sink as `{id}-out`.
    pub client_id: String,
    /// QoS of the source's subscriptions (alerts and dead letters are always QoS 1).
    pub source_qos: QoS,
    /// Outgoing messages held while the broker is unreachable (store and forward); when
    /// full, the oldest non-critical messages (state, dead letters) are dropped first,
    /// counted and logged.
    pub max_outbox: usize,
    /// What to do when the engine falls behind the input.
    pub overload: Overload,
    /// The MQTT version both connections speak (default 3.1.1). With MQTT 5, outputs
    /// carry a content type, their alert/event id as user properties and, per sink,
    /// a message expiry.
    pub version: MqttVersion,
}

/// What the input side does when the engine cannot keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// Stop reading: the broker holds QoS 1 messages (and TCP holds the rest) until the
    /// engine catches up. Nothing is lost; readings arrive late instead.
    Block,
    /// Keep reading and drop the oldest waiting messages beyond this many, counted and
    /// logged (and acknowledged: they are given up on purpose). Fresh readings go first.
    DropOldest(usize),
}

impl RunOptions {
    /// QoS 1 subscriptions under the given client id prefix.
    pub fn new(client_id: &str) -> Self {
        RunOptions {
            client_id: client_id.to_string(),
            source_qos: QoS::AtLeastOnce,
            max_outbox: 100_000,
            overload: Overload::Block,
            version: MqttVersion::V311,
        }
    }
}

/// A pipeline connected to a broker.
pub struct MqttPipeline {
    handle: PipelineHandle,
    source: MqttSource,
    /// The Sparkplug sources' input, if any.
    #[cfg(feature = "sparkplug")]
    sparkplug: Option<crate::sparkplug::SparkplugInput>,
    forward: JoinHandle<()>,
    outputs: Outputs,
    shed: Arc<AtomicU64>,
}

/// Refuses, before connecting anywhere, a pipeline with a table whose connector only
/// a program embedding Forewarn runs (`connector = 'channel'`,
/// [`forewarn_connect::Connector::embedded_only`]): the service would never feed such
/// a source nor deliver such a sink's outputs.
pub(crate) fn refuse_embedded_only(p: &Pipeline) -> Result<(), EngineError> {
    let sources = p
        .sources()
        .iter()
        .map(|s| ("source", &s.name, &s.connector));
    let sinks = p.sinks().iter().map(|s| ("sink", &s.name, &s.connector));
    for (role, name, config) in sources.chain(sinks) {
        let connector = p.connectors().get(config.connector());
        if let Some(why) = connector.and_then(|c| c.embedded_only()) {
            return Err(EngineError::Config(format!(
                "{role} '{name}' (connector = '{}'): {why}",
                config.connector()
            )));
        }
    }
    Ok(())
}

/// Connects `pipeline` to the broker at `url`. `tap`, if given, receives a copy of every output.
///
/// A pipeline with checkpoints (see [`forewarn_engine::CheckpointConfig`]) reads through a
/// persistent session (clean session off) and acknowledges each QoS 1 message only
/// once a checkpoint covers it, and it confirms outputs to the pipeline only once the
/// broker acknowledged them: a crash loses neither input nor output.
pub async fn start(
    #[cfg_attr(not(feature = "sparkplug"), allow(unused_mut))] mut pipeline: Pipeline,
    url: &BrokerUrl,
    opts: &RunOptions,
    tap: Option<mpsc::Sender<Output>>,
) -> Result<MqttPipeline, RunError> {
    refuse_embedded_only(&pipeline)?;
    if let Some(s) = pipeline
        .sources()
        .iter()
        .find(|s| !matches!(s.connector.connector(), "mqtt" | "sparkplug"))
        .or_else(|| {
            // Without the feature, a Sparkplug source would never be fed.
            let spb = cfg!(feature = "sparkplug");
            (!spb)
                .then(|| {
                    pipeline
                        .sources()
                        .iter()
                        .find(|s| s.connector.connector() == "sparkplug")
                })
                .flatten()
        })
    {
        let how = match s.connector.connector() {
            "nats" => "run it with --nats URL".to_string(),
            "sparkplug" => "this build has no Sparkplug support (feature 'sparkplug')".to_string(),
            other => format!("connector '{other}' cannot feed an MQTT pipeline"),
        };
        return Err(EngineError::Config(format!(
            "source '{}' reads from {} (connector = '{}'): {how}",
            s.name,
            s.connector.connector().to_uppercase(),
            s.connector.connector()
        ))
        .into());
    }
    let client_id = opts.client_id.as_str();
    let mut filters: Vec<String> = pipeline
        .sources()
        .iter()
        .filter(|s| s.connector.connector() == "mqtt")
        .map(|s| s.topic_filter.clone())
        .collect();
    #[cfg(feature = "sparkplug")]
    let sparkplug = crate::sparkplug::Sessions::of(&mut pipeline);
    filters.sort();
    filters.dedup();
    // Operators' commands (acknowledge, silence) for devices: {prefix}/command/{device}.
    let command_prefix = format!("{}/command/", pipeline.topic_prefix());
    filters.push(format!("{command_prefix}+"));
    let checkpointing = pipeline.checkpointing();
    let released = pipeline.resume_point().acknowledged_ids().to_vec();
    let (outputs, handle) = start_outputs(
        pipeline,
        url,
        &format!("{client_id}-out"),
        opts.max_outbox,
        tap,
        opts.version,
    )
    .await?;
    let mut source_opts = SourceOptions::new(url.clone(), &format!("{client_id}-in"), filters);
    source_opts.qos = opts.source_qos;
    source_opts.version = opts.version;
    if checkpointing {
        source_opts.clean_session = false;
        source_opts.manual_acks = true;
        source_opts.acked_before = released;
    }
    let (mut source, mut incoming) = MqttSource::start(source_opts);
    if let Err(e) = source.wait_connected(Duration::from_secs(10)).await {
        source.stop().await;
        outputs.abort();
        return Err(e.into());
    }
    #[cfg(feature = "sparkplug")]
    let sparkplug = if sparkplug.is_empty() {
        None
    } else {
        match crate::sparkplug::SparkplugInput::start(sparkplug, url, client_id, handle.clone())
            .await
        {
            Ok(s) => Some(s),
            Err(e) => {
                source.stop().await;
                outputs.abort();
                return Err(e);
            }
        }
    };
    let h = handle.clone();
    let shed = Arc::new(AtomicU64::new(0));
    let forwarder = match opts.overload {
        Overload::Block => tokio::spawn(async move {
            while let Some(m) = incoming.recv().await {
                if h.push(envelope(m)).await.is_err() {
                    break;
                }
            }
        }),
        Overload::DropOldest(max) => tokio::spawn(shed_oldest(
            incoming,
            h,
            command_prefix,
            max.max(1),
            shed.clone(),
        )),
    };
    // Give the broker a moment to install the subscriptions before publishers start.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(MqttPipeline {
        handle,
        source,
        #[cfg(feature = "sparkplug")]
        sparkplug,
        forward: forwarder,
        outputs,
        shed,
    })
}

/// The output half of a pipeline on a broker: the pipeline started, its outputs
/// published with QoS 1 by a background task.
pub(crate) struct Outputs {
    publish: JoinHandle<Result<u64, MqttError>>,
    dropped: Arc<AtomicU64>,
    checkpointing: bool,
    /// The sink's short-lived connections (see [`MqttPipeline::short_connections`]).
    short: Arc<AtomicU64>,
    /// Counters of the self-delivering sinks (webhooks), if any.
    sink_stats: Option<Arc<crate::sinks::SinkStats>>,
    /// The publishing client's connection state.
    connected: tokio::sync::watch::Receiver<bool>,
    /// Connections the publishing client's broker accepted.
    connections: Arc<AtomicU64>,
}

impl Outputs {
    /// Waits until the publish loop has handed over every output (the pipeline's
    /// output channel closed) and the broker acknowledged them.
    pub(crate) async fn finish(self) -> Result<u64, RunError> {
        Ok(self
            .publish
            .await
            .map_err(|e| MqttError::Client(e.to_string()))??)
    }

    /// Stops publishing at once (outputs not yet confirmed stay in the checkpoint).
    pub(crate) fn abort(&self) {
        self.publish.abort();
    }
}

/// Connects a publishing client as `client_id` (persistent session) and starts
/// `pipeline`, its outputs going to the broker. With checkpoints, outputs are
/// confirmed to the pipeline once the broker has acknowledged them.
pub(crate) async fn start_outputs(
    pipeline: Pipeline,
    url: &BrokerUrl,
    client_id: &str,
    max_outbox: usize,
    tap: Option<mpsc::Sender<Output>>,
    version: MqttVersion,
) -> Result<(Outputs, PipelineHandle), RunError> {
    // A persistent session, so publishes in flight when the connection breaks are resent
    // after reconnecting (rumqttc drops them when the new session is clean).
    let mut sink = MqttSink::start_with(url.clone(), client_id, QoS::AtLeastOnce, false, version);
    if let Err(e) = sink.wait_connected(Duration::from_secs(10)).await {
        sink.stop().await;
        return Err(e.into());
    }
    let sinks = match crate::sinks::Sinks::start(&pipeline, max_outbox) {
        Ok(w) => w,
        Err(e) => {
            sink.stop().await;
            return Err(e.into());
        }
    };
    let sink_stats = sinks.as_ref().map(|w| w.stats.clone());
    let checkpointing = pipeline.checkpointing();
    let short = sink.stats().short_connections.clone();
    let connected = sink.connection();
    let connections = sink.stats().connections.clone();
    let properties = (version == MqttVersion::V5).then(|| Properties::of(&pipeline));
    // The publish loop confirms each output once the broker has acknowledged it.
    let pipeline = pipeline.with_confirmed_outputs();
    let (handle, outputs) = pipeline.start();
    let dropped = Arc::new(AtomicU64::new(0));
    let publish = tokio::spawn(publish_loop(
        (sink, properties),
        sinks,
        outputs,
        tap,
        max_outbox,
        dropped.clone(),
        checkpointing.then(|| handle.clone()),
    ));
    Ok((
        Outputs {
            publish,
            dropped,
            checkpointing,
            short,
            sink_stats,
            connected,
            connections,
        },
        handle,
    ))
}

/// A message from the broker as the engine takes it: with QoS 1, acknowledged once
/// its effect is safe, and its id kept so a redelivery after a crash is recognised.
fn envelope(m: Incoming) -> Envelope {
    let e = Envelope::new(m.topic, m.payload);
    match m.ack {
        Some(t) => e.with(Delivery::Ack {
            id: Some(t.id()),
            ack: Box::new(move || t.ack()),
        }),
        None => e,
    }
}

/// Forwards input, keeping at most `max` messages waiting for the engine: when more
/// arrive, the oldest are dropped (acknowledged, counted, logged).
async fn shed_oldest(
    mut incoming: mpsc::Receiver<Incoming>,
    h: PipelineHandle,
    command_prefix: String,
    max: usize,
    shed: Arc<AtomicU64>,
) {
    let mut waiting: std::collections::VecDeque<Envelope> = Default::default();
    let mut open = true;
    loop {
        // Hand over what the engine takes now; commands wait their turn, never dropped.
        while let Some(m) = waiting.pop_front() {
            if m.topic.starts_with(&command_prefix) {
                if h.push(m).await.is_err() {
                    return;
                }
                continue;
            }
            match h.try_push(m) {
                Ok(None) => {}
                Ok(Some(m)) => {
                    waiting.push_front(m);
                    break;
                }
                Err(_) => return,
            }
        }
        if !open && waiting.is_empty() {
            return;
        }
        tokio::select! {
            m = incoming.recv(), if open => match m {
                Some(m) => {
                    waiting.push_back(envelope(m));
                    while waiting.len() > max {
                        let i = waiting
                            .iter()
                            .position(|w| !w.topic.starts_with(&command_prefix));
                        let Some(i) = i else { break };
                        let Envelope { topic, delivery, .. } = waiting.remove(i).expect("present");
                        if let Delivery::Ack { ack, .. } = delivery {
                            ack();
                        }
                        let n = shed.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            tracing::warn!(dropped = n, %topic, "engine behind: dropped the oldest waiting input");
                        }
                    }
                }
                None => open = false,
            },
            _ = tokio::time::sleep(Duration::from_millis(1)), if !waiting.is_empty() => {}
        }
    }
}

/// MQTT 5 properties of the outputs: every payload is JSON; alerts and transitions
/// carry their ids as user properties; a sink's `message_expiry` applies to its
/// queries' outputs.
#[derive(Debug, Default)]
struct Properties {
    /// Query → its sink's message expiry.
    expiry: std::collections::HashMap<String, Duration>,
}

impl Properties {
    fn of(p: &Pipeline) -> Self {
        let mut expiry = std::collections::HashMap::new();
        for s in p.sinks() {
            let settings = s.connector.get::<forewarn_connect::mqtt::MqttSettings>();
            if let Some(ms) = settings.and_then(|m| m.message_expiry) {
                for q in &s.queries {
                    expiry.insert(q.clone(), Duration::from_millis(ms.max(0) as u64));
                }
            }
        }
        Properties { expiry }
    }

    /// What every output carries: its content type.
    fn json(&self) -> MessageProperties {
        MessageProperties {
            content_type: Some("application/json".into()),
            ..Default::default()
        }
    }

    fn of_output(&self, o: &Output) -> MessageProperties {
        let mut m = self.json();
        match o {
            Output::Alert { alert, .. } => {
                m.user_properties
                    .push(("alert_id".into(), alert.alert_id.clone()));
            }
            Output::Transition { message, .. } => {
                m.user_properties
                    .push(("alert_id".into(), message.alert_id.clone()));
                m.user_properties
                    .push(("event_id".into(), message.event_id.clone()));
            }
            _ => {}
        }
        m.message_expiry = o.query().and_then(|q| self.expiry.get(q)).copied();
        m
    }
}

/// Moves outputs from the pipeline to the broker (through `sink`, with MQTT 5
/// `properties` when the connection speaks MQTT 5). Outputs go into a bounded outbox at
/// once, so the pipeline never waits on the network; the outbox is drained in order
/// while the connection is up and holds messages while it is down (rumqttc resends what
/// was in flight when the connection broke).
async fn publish_loop(
    (sink, properties): (MqttSink, Option<Properties>),
    sinks: Option<crate::sinks::Sinks>,
    mut outputs: mpsc::Receiver<Output>,
    tap: Option<mpsc::Sender<Output>>,
    max_outbox: usize,
    dropped: Arc<AtomicU64>,
    confirm: Option<PipelineHandle>,
) -> Result<u64, MqttError> {
    let mut outbox = Outbox::new(max_outbox);
    let mut n = 0u64;
    let mut received = 0u64;
    let mut open = true;
    // The latest retained message (device state) per topic, to publish again when the
    // broker comes back without our session: it may have lost its retained messages, and
    // a subscriber to `{prefix}/state/#` would otherwise see an empty fleet until every
    // device's state next changes. One entry per device.
    let mut retained: std::collections::HashMap<String, Vec<u8>> = Default::default();
    let mut sessions_lost = 0u64;
    // Sequence numbers of the outputs handed to the broker and not known to be with it
    // (for confirmations when webhook sinks take some outputs out of the order).
    let mut mqtt_seqs: std::collections::VecDeque<u64> = Default::default();
    loop {
        let lost = sink.stats().sessions_lost.load(Ordering::Relaxed);
        if lost > sessions_lost {
            sessions_lost = lost;
            tracing::warn!(
                states = retained.len(),
                "the broker has no session for us (restarted without persistence?): publishing every device state again"
            );
            for (topic, payload) in &retained {
                if let Some(e) = outbox.push(Pending {
                    topic: topic.clone(),
                    payload: payload.clone(),
                    retain: true,
                    critical: false,
                    properties: properties
                        .as_ref()
                        .map(Properties::json)
                        .unwrap_or_default(),
                }) {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(topic = %e.topic, held = outbox.len(), "outbox full: dropped the oldest non-critical message");
                }
            }
        }
        if let Some(h) = &confirm {
            // Outputs leave in order: all but those still queued or unacknowledged
            // are with the broker (a dropped one is gone either way).
            let st = sink.stats();
            let done = st.acked.load(Ordering::Relaxed) + st.sent_qos0.load(Ordering::Relaxed);
            let in_flight = st.published.load(Ordering::Relaxed).saturating_sub(done);
            let not_done = outbox.len() as u64 + in_flight;
            while mqtt_seqs.len() as u64 > not_done {
                mqtt_seqs.pop_front();
            }
            let mut confirmed = mqtt_seqs.front().copied().unwrap_or(received);
            if let Some(p) = sinks.as_ref().and_then(|w| w.first_pending()) {
                confirmed = confirmed.min(p);
            }
            h.confirm_outputs(confirmed);
        }
        // Drain what the client accepts now.
        while sink.is_connected() {
            let Some(mut p) = outbox.pop() else { break };
            match sink.try_publish_with(
                &p.topic,
                std::mem::take(&mut p.payload),
                p.retain,
                &p.properties,
            )? {
                None => n += 1,
                // The client's queue is full: keep the message first in line.
                Some(payload) => {
                    p.payload = payload;
                    outbox.unpop(p);
                    break;
                }
            }
        }
        if !open && outbox.is_empty() {
            break;
        }
        let wait = if !outbox.is_empty() || confirm.is_some() {
            Duration::from_millis(10)
        } else if !retained.is_empty() {
            // Look for a lost session now and then, even when nothing else happens.
            Duration::from_millis(250)
        } else {
            Duration::from_secs(3600)
        };
        tokio::select! {
            o = outputs.recv(), if open => match o {
                Some(o) => {
                    let seq = received;
                    received += 1;
                    if sinks.as_ref().is_some_and(|w| w.route(seq, &o)) {
                        if let Some(t) = &tap {
                            let _ = t.send(o).await;
                        }
                        continue;
                    }
                    if confirm.is_some() {
                        mqtt_seqs.push_back(seq);
                    }
                    let (topic, payload) = o.to_message();
                    if o.retained() {
                        retained.insert(topic.clone(), payload.clone());
                    }
                    // Query results are what subscribers act on or store; superseded
                    // state and dead letters are not.
                    let critical = matches!(o, Output::Alert { .. } | Output::Row { .. } | Output::Transition { .. });
                    let properties = properties.as_ref().map(|p| p.of_output(&o)).unwrap_or_default();
                    if let Some(e) = outbox.push(Pending { topic, payload, retain: o.retained(), critical, properties }) {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        if e.critical {
                            tracing::error!(topic = %e.topic, held = outbox.len(), "outbox full of query results: dropped the oldest");
                        } else {
                            tracing::warn!(topic = %e.topic, held = outbox.len(), "outbox full: dropped the oldest non-critical message");
                        }
                    }
                    if let Some(t) = &tap {
                        let _ = t.send(o).await;
                    }
                }
                None => open = false,
            },
            _ = tokio::time::sleep(wait) => {}
        }
    }
    if let Some(w) = sinks {
        w.finish(Duration::from_secs(10)).await;
    }
    sink.flush(Duration::from_secs(30)).await?;
    sink.stop().await;
    Ok(n)
}

/// A running [`MqttPipeline`]'s broker side, to watch from elsewhere (a readiness
/// probe, a metrics endpoint) while the pipeline runs: cheap to clone, it outlives
/// nothing but reads shared state.
#[derive(Debug, Clone)]
pub struct BrokerStatus {
    input: tokio::sync::watch::Receiver<bool>,
    output: tokio::sync::watch::Receiver<bool>,
    shed: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    /// Connections accepted by the broker: input's, output's.
    accepted: [Arc<AtomicU64>; 2],
}

impl BrokerStatus {
    /// Reconnections since start, over both connections (each one's first connection
    /// is not a reconnection).
    pub fn reconnects(&self) -> u64 {
        self.accepted
            .iter()
            .map(|a| a.load(Ordering::Relaxed).saturating_sub(1))
            .sum()
    }

    /// Whether both connections (input and output) are up.
    pub fn connected(&self) -> bool {
        *self.input.borrow() && *self.output.borrow()
    }

    /// As [`MqttPipeline::input_shed`].
    pub fn input_shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// As [`MqttPipeline::outbox_dropped`].
    pub fn outbox_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl MqttPipeline {
    /// The pipeline's handle (counters, flush).
    pub fn handle(&self) -> &PipelineHandle {
        &self.handle
    }

    /// The broker side's state (connections up, input shed, outbox drops), to watch
    /// while the pipeline runs.
    pub fn broker_status(&self) -> BrokerStatus {
        BrokerStatus {
            input: self.source.connection(),
            output: self.outputs.connected.clone(),
            shed: self.shed.clone(),
            dropped: self.outputs.dropped.clone(),
            accepted: [self.source.connections(), self.outputs.connections.clone()],
        }
    }

    /// Redelivered input messages recognised and not processed twice (the broker
    /// resent what was held unacknowledged, or whose PUBACK was lost, after a
    /// reconnection).
    pub fn redeliveries_dropped(&self) -> u64 {
        self.source.duplicates_dropped()
    }

    /// Input messages dropped because the engine was behind ([`Overload::DropOldest`]).
    pub fn input_shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// Outgoing messages dropped because the outbox was full while the broker was away.
    pub fn outbox_dropped(&self) -> u64 {
        self.outputs.dropped.load(Ordering::Relaxed)
    }

    /// Connections (input and output) the broker closed within
    /// [`forewarn_mqtt::SHORT_CONNECTION`] of accepting them. More than a few in a row
    /// mean another client probably uses the same client id; that is also logged.
    pub fn short_connections(&self) -> u64 {
        self.source.short_connections() + self.outputs.short.load(Ordering::Relaxed)
    }

    /// Outputs of the sinks that deliver themselves (webhooks): delivered, failed
    /// (refused or given up on) and dropped from a full queue; `None` without such sinks.
    pub fn sink_stats(&self) -> Option<Arc<crate::sinks::SinkStats>> {
        self.outputs.sink_stats.clone()
    }

    /// Waits until at least `n` messages have entered the pipeline, or `timeout` passes.
    pub async fn wait_for_messages(&self, n: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.handle.stats().messages_in < n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Stops reading, publishes the last outputs and waits until the broker has
    /// acknowledged them. With checkpoints, the open windows stay open: a last
    /// checkpoint is written, what it covers is acknowledged, and the next start
    /// continues from it. Without, every open window is closed and emitted.
    pub async fn stop(self) -> Result<EngineStats, RunError> {
        #[cfg(feature = "sparkplug")]
        if let Some(s) = self.sparkplug {
            s.stop().await;
        }
        if self.outputs.checkpointing {
            let stats = self.handle.shutdown().await?;
            drop(self.handle);
            // Disconnecting after the acknowledgements the checkpoint released.
            self.source.stop().await;
            let _ = self.forward.await;
            self.outputs.finish().await?;
            return Ok(stats);
        }
        self.source.stop().await;
        let _ = self.forward.await;
        let stats = self.handle.finish().await?;
        drop(self.handle);
        self.outputs.finish().await?;
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use forewarn_engine::{CheckpointConfig, EngineConfig};

    /// An engine that stops taking input (its outputs are not confirmed) behind a
    /// burst: the oldest waiting messages are dropped and counted, the rest go through
    /// once it moves again, and every message is one or the other.
    #[tokio::test]
    async fn drop_oldest_sheds_and_accounts_for_every_message() {
        let dir = std::env::temp_dir().join(format!("forewarn-shed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut ck = CheckpointConfig::new(&dir);
        ck.confirm_outputs = true;
        ck.max_unconfirmed = 1;
        let p = Pipeline::builder()
            .query_sql(
                "s.sql",
                "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE, WATERMARK FOR ts AS ts)
                   WITH (connector = 'mqtt', topic = 's/+', topic_template = 's/{device}');
                 CREATE TABLE o WITH (connector = 'mqtt', topic = 'o/{device}');
                 INSERT INTO o SELECT device, count(*) AS n FROM r
                 GROUP BY tumble(interval '1 millisecond'), device;",
            )
            .config(EngineConfig {
                channel_capacity: 1,
                wall_clock: false,
                checkpoint: Some(ck),
                ..Default::default()
            })
            .build()
            .await
            .unwrap();
        let (h, mut outputs) = p.start();
        let (tx, rx) = mpsc::channel(10_000);
        let shed = Arc::new(AtomicU64::new(0));
        let fwd = tokio::spawn(shed_oldest(
            rx,
            h.clone(),
            "forewarn/command/".into(),
            50,
            shed.clone(),
        ));
        let sent = 2000u64;
        for i in 0..sent {
            let payload = format!("{{\"ts\": {}, \"v\": 1}}", 1_000_000 + i as i64).into_bytes();
            tx.send(Incoming {
                topic: "s/d1".into(),
                payload,
                ack: None,
            })
            .await
            .unwrap();
        }
        drop(tx);
        // Let the forwarder shed while the engine is stalled, then let the engine go.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let shed_now = shed.load(Ordering::Relaxed);
        assert!(shed_now > 0, "the stalled engine made the forwarder shed");
        let mut confirmed = 0;
        let drain = tokio::spawn({
            let h = h.clone();
            async move {
                while outputs.recv().await.is_some() {
                    confirmed += 1;
                    h.confirm_outputs(confirmed);
                }
            }
        });
        fwd.await.unwrap();
        let stats = h.finish().await.unwrap();
        drop(h);
        drain.await.unwrap();
        let shed = shed.load(Ordering::Relaxed);
        assert_eq!(
            stats.messages_in + shed,
            sent,
            "taken {} + shed {shed}",
            stats.messages_in
        );
        // The newest were kept: the last message went through.
        assert!(stats.messages_in >= 50);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
