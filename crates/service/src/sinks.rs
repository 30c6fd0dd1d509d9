//! Sinks whose connector delivers its outputs itself (a webhook), beside the MQTT
//! publisher: one task per sink hands its outputs, in order, to the connector's
//! [`SinkDelivery`], from a queue bounded like the MQTT outbox. An output counts as
//! confirmed (for checkpoints) once the delivery returned, delivered or failed; failed
//! ones, and outputs dropped from a full queue, are counted and logged as errors.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use forewarn_connect::{Outcome, SinkDelivery};
use forewarn_engine::{EngineError, Output, Pipeline};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Counters of a pipeline's self-delivering sinks, together.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Outputs the receiver took.
    pub delivered: AtomicU64,
    /// Outputs refused for good or given up on after the connector's retries.
    pub failed: AtomicU64,
    /// Outputs dropped from a full queue while the receiver was away.
    pub dropped: AtomicU64,
}

impl SinkStats {
    /// `sink deliveries: delivered N, failed N, dropped N`, beside the engine's summary.
    pub fn summary(&self) -> String {
        format!(
            "sink deliveries: delivered {}, failed {}, dropped {}",
            self.delivered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed)
        )
    }
}

/// One sink's queue: outputs in order, with their sequence numbers.
#[derive(Default)]
struct Queue {
    items: Mutex<VecDeque<(u64, String, Vec<u8>)>>,
    notify: Notify,
}

/// The self-delivering sinks of a running pipeline.
pub(crate) struct Sinks {
    /// Query name → index of its sink's queue.
    by_query: HashMap<String, usize>,
    queues: Vec<Arc<Queue>>,
    /// Sequence numbers of outputs not yet delivered (or given up on).
    pending: Arc<Mutex<BTreeSet<u64>>>,
    tasks: Vec<JoinHandle<()>>,
    closing: Arc<AtomicBool>,
    max_queue: usize,
    pub(crate) stats: Arc<SinkStats>,
}

impl Sinks {
    /// Starts the delivery of every sink whose connector delivers itself (none:
    /// `None`). A sink that cannot start (a token that cannot be read) is an error now,
    /// not a failure per alert later.
    pub(crate) fn start(p: &Pipeline, max_queue: usize) -> Result<Option<Self>, EngineError> {
        let mut s = Sinks {
            by_query: HashMap::new(),
            queues: Vec::new(),
            pending: Default::default(),
            tasks: Vec::new(),
            closing: Default::default(),
            max_queue: max_queue.max(1),
            stats: Default::default(),
        };
        for sink in p.sinks() {
            let connector = p.connectors().get(sink.connector.connector());
            let Some(started) = connector.and_then(|c| c.sink_delivery(&sink.connector)) else {
                continue;
            };
            let delivery =
                started.map_err(|e| EngineError::Config(format!("sink '{}': {e}", sink.name)))?;
            let q = Arc::new(Queue::default());
            for query in &sink.queries {
                s.by_query.insert(query.clone(), s.queues.len());
            }
            s.tasks.push(tokio::spawn(deliver_loop(
                sink.name.clone(),
                delivery,
                q.clone(),
                s.pending.clone(),
                s.closing.clone(),
                s.stats.clone(),
            )));
            s.queues.push(q);
        }
        Ok((!s.queues.is_empty()).then_some(s))
    }

    /// Takes output number `seq` if one of these sinks delivers it.
    pub(crate) fn route(&self, seq: u64, o: &Output) -> bool {
        let Some(&i) = o.query().and_then(|q| self.by_query.get(q)) else {
            return false;
        };
        let (topic, payload) = o.to_message();
        self.pending.lock().expect("not poisoned").insert(seq);
        let q = &self.queues[i];
        let mut items = q.items.lock().expect("not poisoned");
        items.push_back((seq, topic, payload));
        while items.len() > self.max_queue {
            let (old, topic, payload) = items.pop_front().expect("longer than the limit");
            self.pending.lock().expect("not poisoned").remove(&old);
            let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let (device, id) = identify(&payload);
            tracing::error!(%topic, %device, %id, dropped = n, "sink queue full (max_outbox): dropped the oldest output");
        }
        drop(items);
        q.notify.notify_one();
        true
    }

    /// The oldest output not yet delivered, if any: outputs before it are confirmed.
    pub(crate) fn first_pending(&self) -> Option<u64> {
        self.pending.lock().expect("not poisoned").first().copied()
    }

    /// Delivers what is queued, waiting at most `grace` (a receiver that is down would
    /// otherwise hold the stop for every output's retries); what is left stays
    /// unconfirmed, so with checkpoints the next start sends it again.
    pub(crate) async fn finish(self, grace: Duration) {
        self.closing.store(true, Ordering::Relaxed);
        for q in &self.queues {
            q.notify.notify_one();
        }
        let all = async {
            for t in self.tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            let left = self.pending.lock().expect("not poisoned").len();
            tracing::error!(left, "stopped with sink outputs still undelivered");
        }
    }
}

/// The device and the id (a transition's `event_id`, an alert's `alert_id`) of an
/// output's JSON, for the log line of one that was not delivered.
fn identify(payload: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let id = match text("event_id") {
        e if e.is_empty() => text("alert_id"),
        e => e,
    };
    (text("device"), id)
}

/// Delivers one sink's outputs in order until closed and empty.
async fn deliver_loop(
    sink: String,
    delivery: Box<dyn SinkDelivery>,
    q: Arc<Queue>,
    pending: Arc<Mutex<BTreeSet<u64>>>,
    closing: Arc<AtomicBool>,
    stats: Arc<SinkStats>,
) {
    loop {
        let next = q.items.lock().expect("not poisoned").pop_front();
        let Some((seq, topic, body)) = next else {
            if closing.load(Ordering::Relaxed) {
                return;
            }
            q.notify.notified().await;
            continue;
        };
        let (device, id) = identify(&body);
        match delivery.deliver(&topic, body).await {
            Outcome::Delivered => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed(why) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%sink, %device, %id, "an alert was not delivered: {why}");
            }
        }
        pending.lock().expect("not poisoned").remove(&seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use forewarn_connect::{
        Connector, ConnectorConfig, Delivering, OptionError, Options, Registry, Role, TableContext,
    };
    use forewarn_engine::{Timestamp, WindowRow};
    use forewarn_sql::QuerySet;
    use tokio::sync::Semaphore;

    /// A sink connector of the test's own: each delivery waits for a permit, then
    /// records the topic.
    struct Gate(Arc<Semaphore>, Arc<Mutex<Vec<String>>>);

    struct GateDelivery(Arc<Semaphore>, Arc<Mutex<Vec<String>>>);

    impl Connector for Gate {
        fn name(&self) -> &'static str {
            "gate"
        }
        fn options(&self, role: Role) -> Result<&'static [&'static str], String> {
            match role {
                Role::Sink => Ok(&[]),
                _ => Err("a gate only takes outputs".into()),
            }
        }
        fn configure(
            &self,
            _: &TableContext<'_>,
            _: &Options,
        ) -> Result<ConnectorConfig, OptionError> {
            Ok(ConnectorConfig::new("gate", ()))
        }
        fn sink_delivery(
            &self,
            _: &ConnectorConfig,
        ) -> Option<Result<Box<dyn SinkDelivery>, String>> {
            Some(Ok(Box::new(GateDelivery(self.0.clone(), self.1.clone()))))
        }
    }

    impl SinkDelivery for GateDelivery {
        fn deliver<'a>(&'a self, topic: &'a str, _: Vec<u8>) -> Delivering<'a> {
            Box::pin(async move {
                self.0.acquire().await.expect("open").forget();
                self.1.lock().unwrap().push(topic.to_string());
                Outcome::Delivered
            })
        }
    }

    /// A window row of `query` (the outputs of the count query below).
    fn row(query: &str, device: &str) -> Output {
        Output::Row {
            topic: format!("gate/{device}"),
            row: WindowRow {
                id: device.into(),
                query: query.into(),
                device: device.into(),
                window_start: Timestamp::from_millis(0),
                window_end: Timestamp::from_millis(1_000),
                columns: Default::default(),
            },
        }
    }

    /// A connector registered by the embedding program delivers its sink's outputs in
    /// order; outputs count as pending until delivered (so confirmations wait for
    /// them), other queries' outputs are not taken, and a full queue drops the oldest.
    #[tokio::test]
    async fn a_registered_connector_delivers_in_order_and_holds_confirmations() {
        let permits = Arc::new(Semaphore::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut set = QuerySet {
            connectors: Registry::builtin().with(Arc::new(Gate(permits.clone(), seen.clone()))),
            ..Default::default()
        };
        set.add_file(
            "g.sql",
            "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE, WATERMARK FOR ts AS ts)
               WITH (connector = 'mqtt', topic = 'r/+', topic_template = 'r/{device}');
             CREATE TABLE out WITH (connector = 'gate', topic = 'gate/{device}');
             INSERT INTO out SELECT device, count(*) AS n FROM r
             GROUP BY tumble(interval '1 second'), device;",
        )
        .unwrap();
        let p = Pipeline::builder().query_set(set).build().await.unwrap();
        let sinks = Sinks::start(&p, 2)
            .unwrap()
            .expect("the gate sink delivers itself");
        assert!(sinks.route(0, &row("g", "d1")));
        assert!(
            !sinks.route(1, &row("other", "d1")),
            "another query's output"
        );
        assert!(sinks.route(2, &row("g", "d2")));
        assert_eq!(sinks.first_pending(), Some(0));
        permits.add_permits(1);
        let wait = || async {
            for _ in 0..200 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if !seen.lock().unwrap().is_empty() && sinks.first_pending() != Some(0) {
                    return;
                }
            }
        };
        wait().await;
        assert_eq!(*seen.lock().unwrap(), ["gate/d1"]);
        assert_eq!(sinks.first_pending(), Some(2));
        // d2 is being delivered (blocked); two more fill the queue of 2, a third drops d3.
        for (seq, d) in [(3, "d3"), (4, "d4"), (5, "d5")] {
            assert!(sinks.route(seq, &row("g", d)));
        }
        assert_eq!(sinks.stats.dropped.load(Ordering::Relaxed), 1);
        permits.add_permits(10);
        let stats = sinks.stats.clone();
        sinks.finish(Duration::from_secs(5)).await;
        assert_eq!(
            *seen.lock().unwrap(),
            ["gate/d1", "gate/d2", "gate/d4", "gate/d5"]
        );
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 4);
    }
}
