//! Delivering the outputs of webhook sinks (`connector = 'webhook'`) beside the MQTT
//! publisher: one task per sink posts its outputs in order, from a queue bounded like
//! the MQTT outbox. An output counts as confirmed (for checkpoints) once its POST
//! answered 2xx, was refused for good (4xx), or was given up on after the retries; the
//! last two, and outputs dropped from a full queue, are counted and logged as errors.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "webhook")]
pub(crate) use delivery::Webhooks;
#[cfg(not(feature = "webhook"))]
pub(crate) use without::Webhooks;

/// Counters of the webhook sinks of one pipeline.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Outputs the server took (2xx).
    pub delivered: AtomicU64,
    /// Outputs refused for good or given up on after the retries.
    pub failed: AtomicU64,
    /// Outputs dropped from a full queue while the server was away.
    pub dropped: AtomicU64,
}

#[cfg(feature = "webhook")]
mod delivery {
    use super::*;
    use forewarn_connect::webhook::deliver::{Delivery, WebhookClient};
    use forewarn_connect::webhook::WebhookSink;
    use std::collections::{BTreeSet, HashMap, VecDeque};
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;
    use tokio::sync::Notify;
    use tokio::task::JoinHandle;

    use forewarn_engine::{EngineError, Output, Pipeline};

    /// One sink's queue: outputs in order, with their sequence numbers.
    struct Queue {
        items: Mutex<VecDeque<(u64, String, Vec<u8>)>>,
        notify: Notify,
    }

    /// The webhook sinks of a running pipeline.
    pub(crate) struct Webhooks {
        /// Query name → index of its sink's queue.
        by_query: HashMap<String, usize>,
        queues: Vec<Arc<Queue>>,
        /// Sequence numbers of outputs not yet delivered (or given up on).
        pending: Arc<Mutex<BTreeSet<u64>>>,
        tasks: Vec<JoinHandle<()>>,
        closing: Arc<std::sync::atomic::AtomicBool>,
        max_queue: usize,
        pub(crate) stats: Arc<WebhookStats>,
    }

    impl Webhooks {
        /// Clients for the pipeline's webhook sinks (none: `None`). A token that cannot
        /// be read is an error now, not a 401 per alert later.
        pub(crate) fn start(p: &Pipeline, max_queue: usize) -> Result<Option<Self>, EngineError> {
            let sinks: Vec<_> = p
                .sinks()
                .iter()
                .filter_map(|s| s.connector.get::<WebhookSink>().map(|w| (s, w)))
                .collect();
            if sinks.is_empty() {
                return Ok(None);
            }
            let mut w = Webhooks {
                by_query: HashMap::new(),
                queues: Vec::new(),
                pending: Default::default(),
                tasks: Vec::new(),
                closing: Default::default(),
                max_queue: max_queue.max(1),
                stats: Default::default(),
            };
            for (s, settings) in sinks {
                let client = WebhookClient::new(settings)
                    .map_err(|e| EngineError::Config(format!("sink '{}': {e}", s.name)))?;
                let q = Arc::new(Queue {
                    items: Mutex::new(VecDeque::new()),
                    notify: Notify::new(),
                });
                for query in &s.queries {
                    w.by_query.insert(query.clone(), w.queues.len());
                }
                w.tasks.push(tokio::spawn(post_loop(
                    s.name.clone(),
                    client,
                    q.clone(),
                    w.pending.clone(),
                    w.closing.clone(),
                    w.stats.clone(),
                )));
                w.queues.push(q);
            }
            Ok(Some(w))
        }

        /// Takes output number `seq` if a webhook sink delivers it.
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
                let (old, topic, _) = items.pop_front().expect("longer than the limit");
                self.pending.lock().expect("not poisoned").remove(&old);
                let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(%topic, dropped = n, "webhook queue full: dropped the oldest alert");
            }
            drop(items);
            q.notify.notify_one();
            true
        }

        /// The oldest output not yet delivered, if any: outputs before it are confirmed.
        pub(crate) fn first_pending(&self) -> Option<u64> {
            self.pending.lock().expect("not poisoned").first().copied()
        }

        /// Delivers what is queued, waiting at most `grace` (a server that is down would
        /// otherwise hold the stop for every output's retries); what is left stays
        /// unconfirmed, so with checkpoints the next start sends it again.
        pub(crate) async fn finish(self, grace: Duration) {
            self.closing.store(true, Ordering::Relaxed);
            for q in &self.queues {
                q.notify.notify_one();
            }
            let all = join_all(self.tasks);
            if tokio::time::timeout(grace, all).await.is_err() {
                let left = self.pending.lock().expect("not poisoned").len();
                tracing::error!(left, "webhook: stopped with outputs still undelivered");
            }
        }
    }

    async fn join_all(tasks: Vec<JoinHandle<()>>) {
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Posts one sink's outputs in order until closed and empty.
    async fn post_loop(
        sink: String,
        client: WebhookClient,
        q: Arc<Queue>,
        pending: Arc<Mutex<BTreeSet<u64>>>,
        closing: Arc<std::sync::atomic::AtomicBool>,
        stats: Arc<WebhookStats>,
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
            match client.post(&topic, body).await {
                Delivery::Delivered { .. } => {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Delivery::Refused { status, attempts } => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%sink, %topic, status, attempts, "webhook refused an alert");
                }
                Delivery::GaveUp { attempts, error } => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%sink, %topic, attempts, %error, "webhook: gave up on an alert");
                }
            }
            pending.lock().expect("not poisoned").remove(&seq);
        }
    }
}

/// A build without the `webhook` feature: a pipeline with a webhook sink is refused at
/// start, so its alerts cannot silently go nowhere.
#[cfg(not(feature = "webhook"))]
mod without {
    use super::*;
    use forewarn_engine::{EngineError, Output, Pipeline};

    pub(crate) struct Webhooks {
        pub(crate) stats: Arc<WebhookStats>,
    }

    impl Webhooks {
        pub(crate) fn start(p: &Pipeline, _: usize) -> Result<Option<Self>, EngineError> {
            match p.sinks().iter().find(|s| s.connector.connector() == "webhook") {
                Some(s) => Err(EngineError::Config(format!(
                    "sink '{}' is a webhook, and this build has no webhook support (feature `webhook`)",
                    s.name
                ))),
                None => Ok(None),
            }
        }

        pub(crate) fn route(&self, _: u64, _: &Output) -> bool {
            false
        }

        pub(crate) fn first_pending(&self) -> Option<u64> {
            None
        }

        pub(crate) async fn finish(self, _: Duration) {}
    }
}
