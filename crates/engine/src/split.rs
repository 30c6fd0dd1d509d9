//! One output receiver per sink, for programs that handle each sink's outputs apart
//! (a `connector = 'channel'` sink has no topic to tell them by).

use std::collections::{BTreeMap, HashMap};

use tokio::sync::mpsc;

use crate::{Output, SinkInfo};

/// A pipeline's outputs split by sink ([`split_by_sink`]).
#[derive(Debug)]
pub struct SinkOutputs {
    /// The outputs of each sink's queries, by sink table name, in the order the
    /// pipeline emitted them.
    pub sinks: BTreeMap<String, mpsc::Receiver<Output>>,
    /// Every output that belongs to no query's sink: device states and dead letters.
    pub other: mpsc::Receiver<Output>,
}

/// Splits the pipeline's output receiver (from [`crate::Pipeline::start`]) by sink:
/// a task forwards each output to the receiver of the sink its query writes to
/// ([`crate::Output::query`], [`SinkInfo::queries`]), and the rest to
/// [`SinkOutputs::other`]. `sinks` is [`crate::Pipeline::sinks`], taken before the
/// pipeline starts. Each receiver holds as many outputs as the pipeline's own channel;
/// read them all, as the pipeline waits while one is full. Outputs for a receiver that
/// was dropped are discarded. The receivers end when the pipeline has stopped.
pub fn split_by_sink(mut outputs: mpsc::Receiver<Output>, sinks: &[SinkInfo]) -> SinkOutputs {
    let capacity = outputs.max_capacity();
    let mut by_query = HashMap::new();
    let mut senders = Vec::new();
    let mut receivers = BTreeMap::new();
    for s in sinks {
        let (tx, rx) = mpsc::channel(capacity);
        for q in &s.queries {
            by_query.insert(q.clone(), senders.len());
        }
        senders.push(tx);
        receivers.insert(s.name.clone(), rx);
    }
    let (other_tx, other) = mpsc::channel(capacity);
    tokio::spawn(async move {
        while let Some(o) = outputs.recv().await {
            let to = match o.query().and_then(|q| by_query.get(q)) {
                Some(&i) => &senders[i],
                None => &other_tx,
            };
            // A dropped receiver: its reader wants none of these.
            let _ = to.send(o).await;
        }
    });
    SinkOutputs {
        sinks: receivers,
        other,
    }
}
