//! How outputs reach the caller's receiver under each [`OutputPolicy`].
//!
//! `Block` is the bounded channel itself: the pipeline waits for room. `DropOldest`
//! puts a small ring in front of the channel: the pipeline only appends to the ring
//! (dropping its oldest output when `channel_capacity` are held), and a forwarding
//! task moves outputs into a one-slot channel as the caller takes them. The receiver
//! stays a plain `mpsc::Receiver<Output>` whichever the policy. (tokio's `broadcast`
//! drops the oldest too, but rounds its capacity up to a power of two, clones every
//! value and reports drops only when read, so the count could not be exact at once.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};

use crate::Output;

/// What the pipeline does with an output when the caller has not taken the earlier
/// ones (the output channel is full).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OutputPolicy {
    /// Wait for room: nothing is lost, and input stalls (then pushing waits) until
    /// the caller reads. The default.
    #[default]
    Block,
    /// Never wait: when `channel_capacity` outputs are held undelivered, one of them is
    /// dropped for the new one: the oldest of the least wanted kind held (device states
    /// and dead letters first, then plain rows, then alerts, transitions last), counted
    /// in [`crate::EngineStats::outputs_dropped`] and logged (a warning at most every
    /// 10 s). The receiver holds at most `channel_capacity` outputs: possibly one that
    /// was handed over before the caller stopped reading, then those kept. Not with
    /// [`crate::CheckpointConfig::confirm_outputs`] (outputs are confirmed by count, and a
    /// dropped one would be confirmed as delivered): `build()` refuses the pair. With
    /// checkpoints that do not confirm outputs, a dropped output is gone for good, like
    /// one the caller ignores.
    DropOldest,
}

/// The pipeline's side of the output channel.
pub(crate) enum Outlet {
    Block(mpsc::Sender<Output>),
    Ring(Arc<Ring>),
}

impl Outlet {
    /// The outlet for `policy`, the caller's receiver, and what measures the queue.
    pub(crate) fn new(
        policy: OutputPolicy,
        capacity: usize,
    ) -> (Self, mpsc::Receiver<Output>, Depth) {
        match policy {
            OutputPolicy::Block => {
                let (tx, rx) = mpsc::channel(capacity);
                let depth = Depth::Channel(tx.downgrade());
                (Outlet::Block(tx), rx, depth)
            }
            OutputPolicy::DropOldest => {
                let (tx, rx) = mpsc::channel(1);
                let ring = Arc::new(Ring {
                    state: Mutex::new(RingState::default()),
                    wake: Notify::new(),
                    capacity: capacity.max(2),
                });
                tokio::spawn(forward(ring.clone(), tx));
                (Outlet::Ring(ring.clone()), rx, Depth::Ring(ring))
            }
        }
    }

    /// Hands `o` on; `true` if an older output was dropped for it.
    pub(crate) async fn send(&self, o: Output) -> bool {
        match self {
            // A closed receiver means the embedder stopped listening; keep processing.
            Outlet::Block(tx) => {
                let _ = tx.send(o).await;
                false
            }
            Outlet::Ring(r) => r.push(o),
        }
    }
}

impl Drop for Outlet {
    fn drop(&mut self) {
        if let Outlet::Ring(r) = self {
            r.state.lock().expect("ring lock").closed = true;
            r.wake.notify_one();
        }
    }
}

/// Outputs waiting for the caller under `DropOldest`.
pub(crate) struct Ring {
    state: Mutex<RingState>,
    /// Wakes the forwarder when an output arrives or the pipeline ends.
    wake: Notify,
    /// Outputs held at most, the one in the channel's slot included.
    capacity: usize,
}

#[derive(Default)]
struct RingState {
    queue: VecDeque<Output>,
    /// The channel's one slot holds an output the caller has not taken (as far as the
    /// forwarder knows: it learns the slot is free when it can reserve it again).
    slot_full: bool,
    /// The pipeline has ended: forward what is left, then close the channel.
    closed: bool,
    /// The caller dropped the receiver: outputs are discarded (as `Block` does).
    receiver_gone: bool,
}

impl Ring {
    fn push(&self, o: Output) -> bool {
        let mut st = self.state.lock().expect("ring lock");
        if st.receiver_gone {
            return false;
        }
        let dropped = st.queue.len() + usize::from(st.slot_full) >= self.capacity
            && drop_least_wanted(&mut st.queue);
        st.queue.push_back(o);
        drop(st);
        self.wake.notify_one();
        dropped
    }

    fn held(&self) -> usize {
        let st = self.state.lock().expect("ring lock");
        st.queue.len() + usize::from(st.slot_full)
    }
}

/// How much an output is missed if dropped: a device state is superseded by the next
/// one and a dead letter is diagnostics; a plain row is data; an alert or a
/// transition is what an operator acts on (a lost `raised` is a missed failure).
fn rank(o: &Output) -> u8 {
    match o {
        Output::Transition { .. } => 3,
        Output::Alert { .. } => 2,
        Output::Row { .. } => 1,
        _ => 0,
    }
}

/// Drops the oldest of the least wanted outputs in `queue`; `false` if it is empty.
fn drop_least_wanted(queue: &mut VecDeque<Output>) -> bool {
    let Some(least) = queue.iter().map(rank).min() else {
        return false;
    };
    let at = queue
        .iter()
        .position(|o| rank(o) == least)
        .expect("present");
    queue.remove(at);
    true
}

/// Moves outputs from the ring into the channel's slot, one as each is taken.
async fn forward(ring: Arc<Ring>, tx: mpsc::Sender<Output>) {
    loop {
        let Ok(permit) = tx.reserve().await else {
            let mut st = ring.state.lock().expect("ring lock");
            st.receiver_gone = true;
            st.queue.clear();
            return;
        };
        let next = loop {
            {
                let mut st = ring.state.lock().expect("ring lock");
                // The slot could be reserved: the caller took what was in it.
                st.slot_full = false;
                if let Some(o) = st.queue.pop_front() {
                    st.slot_full = true;
                    break Some(o);
                }
                if st.closed {
                    break None;
                }
            }
            // `notify_one` keeps a wake-up that comes before this wait.
            ring.wake.notified().await;
        };
        match next {
            Some(o) => permit.send(o),
            None => return,
        }
    }
}

/// Measures the outputs waiting for the caller (see [`crate::EngineStats::output_queue`]).
pub(crate) enum Depth {
    /// A weak sender: measuring must not keep the channel open after the pipeline ends.
    Channel(mpsc::WeakSender<Output>),
    Ring(Arc<Ring>),
}

impl Depth {
    pub(crate) fn get(&self) -> usize {
        match self {
            Depth::Channel(w) => w
                .upgrade()
                .map_or(0, |tx| tx.max_capacity() - tx.capacity()),
            Depth::Ring(r) => r.held(),
        }
    }
}

/// Logs dropped outputs at most every 10 s.
#[derive(Default)]
pub(crate) struct DropLog {
    last: Option<Instant>,
}

impl DropLog {
    pub(crate) fn dropped(&mut self, total: u64) {
        let now = Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            self.last = Some(now);
            tracing::warn!(
                dropped = total,
                "outputs not read in time were dropped (output_policy DropOldest)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeadLetter;
    use forewarn_core::Reason;

    fn letter(n: usize) -> Output {
        Output::DeadLetter {
            topic: format!("dl/{n}"),
            letter: DeadLetter {
                reason: Reason::NotJson,
                detail: String::new(),
                source_topic: String::new(),
                source: None,
                index: None,
                excerpt: String::new(),
            },
        }
    }

    fn row(n: usize) -> Output {
        let row = forewarn_alerts::WindowRow::from_row(
            "q",
            "device",
            (0, 10),
            serde_json::json!({"device": "d"})
                .as_object()
                .unwrap()
                .clone(),
        );
        Output::Row {
            topic: format!("row/{n}"),
            row,
        }
    }

    fn alert(n: usize) -> Output {
        let alert = forewarn_alerts::Alert::from_row(
            "q",
            None,
            "device",
            (0, 10),
            serde_json::json!({"device": "d", "score": 2.0})
                .as_object()
                .unwrap()
                .clone(),
        );
        Output::Alert {
            topic: format!("alert/{n}"),
            alert,
        }
    }

    fn topics(q: &VecDeque<Output>) -> Vec<String> {
        q.iter().map(|o| o.to_message().0).collect()
    }

    /// Full: states and dead letters go first, then rows, then alerts, oldest first
    /// within a kind.
    #[test]
    fn the_least_wanted_oldest_output_is_dropped() {
        let mut q: VecDeque<Output> = [alert(0), row(1), letter(2), row(3), letter(4)].into();
        let mut dropped = vec![];
        while drop_least_wanted(&mut q) {
            dropped.push(topics(&q).len());
            if q.len() == 3 {
                assert_eq!(topics(&q), ["alert/0", "row/1", "row/3"]);
            }
            if q.len() == 1 {
                assert_eq!(topics(&q), ["alert/0"]);
            }
        }
        assert_eq!(dropped, [4, 3, 2, 1, 0]);
    }
}
