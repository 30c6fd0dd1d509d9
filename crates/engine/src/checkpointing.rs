//! The bookkeeping of a pipeline that checkpoints: which input waits for a checkpoint
//! before it is acknowledged, which outputs the consumer has not confirmed yet, and
//! when the next checkpoint is due.
//!
//! Input is acknowledged only once a checkpoint covers it, and unconfirmed outputs go
//! into the checkpoint, so that a restart neither loses input nor loses outputs. The
//! writing itself (IO) is the task loop's; this is the state it consults.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use crate::checkpoint::{CheckpointConfig, Snapshot};
use crate::{Ack, Output};

/// Checkpointing state of a running pipeline.
pub(crate) struct Checkpointing {
    pub(crate) cfg: CheckpointConfig,
    /// Sequence number of the next checkpoint.
    pub(crate) seq: u64,
    /// When the last checkpoint was attempted.
    last: Instant,
    /// Acks of input taken since the last checkpoint, in order.
    unacked: Vec<Ack>,
    /// Connector ids of those acks, where given (see [`crate::ResumePoint`]).
    unacked_ids: Vec<u64>,
    /// Input or output since the last checkpoint.
    dirty: bool,
    /// Outputs emitted and not yet confirmed by the consumer, oldest first.
    recent: VecDeque<Output>,
    /// Outputs emitted since start.
    emitted: u64,
    /// Outputs the consumer has confirmed since start (it counts them).
    confirmed: Arc<AtomicU64>,
}

impl Checkpointing {
    /// Starts with checkpoint number `seq`; `confirmed` is where the consumer counts
    /// the outputs it has confirmed.
    pub(crate) fn new(cfg: CheckpointConfig, seq: u64, confirmed: Arc<AtomicU64>) -> Self {
        Checkpointing {
            cfg,
            seq,
            last: Instant::now(),
            unacked: Vec::new(),
            unacked_ids: Vec::new(),
            dirty: false,
            recent: VecDeque::new(),
            emitted: 0,
            confirmed,
        }
    }

    /// Drops the outputs the consumer has confirmed.
    fn trim(&mut self) {
        let confirmed = self.confirmed.load(Ordering::Relaxed);
        while !self.recent.is_empty() && self.emitted - (self.recent.len() as u64) < confirmed {
            self.recent.pop_front();
        }
    }

    /// Whether too many outputs wait for confirmation to take more input.
    pub(crate) fn backlogged(&mut self) -> bool {
        if !self.cfg.confirm_outputs {
            return false;
        }
        self.trim();
        self.recent.len() >= self.cfg.max_unconfirmed
    }

    /// An input message was taken: its ack (and the connector's id for it) waits for
    /// the next checkpoint. Whether enough acks wait that the checkpoint is due now.
    pub(crate) fn taken(&mut self, ack: Option<Ack>, ack_id: Option<u64>) -> bool {
        self.dirty = true;
        if let Some(a) = ack {
            self.unacked.push(a);
            self.unacked_ids.extend(ack_id);
        }
        self.unacked.len() >= self.cfg.max_unacked
    }

    /// An output was emitted: kept until the consumer confirms it, when it must.
    pub(crate) fn emitted(&mut self, o: &Output) {
        self.dirty = true;
        if self.cfg.confirm_outputs {
            self.recent.push_back(o.clone());
            self.emitted += 1;
        }
    }

    /// Whether a checkpoint is due on the timer at `now`: something happened and the
    /// interval has passed, or acks wait and input paused since `last_input`.
    pub(crate) fn due(&self, now: Instant, last_input: Instant) -> bool {
        (self.dirty && now.duration_since(self.last) >= self.cfg.interval)
            || (!self.unacked.is_empty() && now.duration_since(last_input) >= self.cfg.idle)
    }

    /// Completes `snap` (everything but the checkpointing state) with the sequence
    /// number, the unconfirmed outputs and the ids of the input it will acknowledge.
    pub(crate) fn complete(&mut self, snap: Snapshot) -> Snapshot {
        self.trim();
        Snapshot {
            seq: self.seq,
            outbox: self.recent.iter().cloned().collect(),
            resume: crate::ResumePoint {
                released: self.unacked_ids.clone(),
                ..snap.resume
            },
            ..snap
        }
    }

    /// A checkpoint was attempted at `now`: when written, the acks it covers (to be
    /// called now) and the next sequence number; when not, they wait for the next one.
    pub(crate) fn attempted(&mut self, written: bool, now: Instant) -> Vec<Ack> {
        self.last = now;
        if !written {
            return Vec::new();
        }
        self.seq += 1;
        self.dirty = false;
        self.unacked_ids.clear();
        std::mem::take(&mut self.unacked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeadLetter;
    use forewarn_core::Reason;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    fn cfg(confirm: bool) -> CheckpointConfig {
        CheckpointConfig {
            interval: Duration::from_secs(5),
            idle: Duration::from_millis(100),
            max_unacked: 3,
            confirm_outputs: confirm,
            max_unconfirmed: 2,
            ..CheckpointConfig::new("/nonexistent")
        }
    }

    fn out(n: usize) -> Output {
        Output::DeadLetter {
            topic: format!("t{n}"),
            letter: DeadLetter {
                reason: Reason::Late,
                detail: String::new(),
                source_topic: String::new(),
                source: None,
                index: Some(n),
                excerpt: String::new(),
            },
        }
    }

    fn topics(s: &Snapshot) -> Vec<String> {
        s.outbox
            .iter()
            .map(|o| match o {
                Output::DeadLetter { topic, .. } => topic.clone(),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn trim_drops_exactly_the_confirmed_outputs() {
        let confirmed = Arc::new(AtomicU64::new(0));
        let mut c = Checkpointing::new(cfg(true), 1, confirmed.clone());
        for n in 0..5 {
            c.emitted(&out(n));
        }
        assert_eq!(topics(&c.complete(Snapshot::default())).len(), 5);
        confirmed.store(2, Ordering::Relaxed);
        assert_eq!(topics(&c.complete(Snapshot::default())), ["t2", "t3", "t4"]);
        // Confirmations only move forward: trimming again drops nothing more.
        assert_eq!(topics(&c.complete(Snapshot::default())).len(), 3);
        c.emitted(&out(5));
        confirmed.store(5, Ordering::Relaxed);
        assert_eq!(topics(&c.complete(Snapshot::default())), ["t5"]);
        confirmed.store(6, Ordering::Relaxed);
        assert!(c.complete(Snapshot::default()).outbox.is_empty());
    }

    #[test]
    fn outputs_are_kept_only_when_the_consumer_confirms_them() {
        let mut c = Checkpointing::new(cfg(false), 1, Arc::default());
        c.emitted(&out(0));
        c.emitted(&out(1));
        c.emitted(&out(2));
        assert!(!c.backlogged());
        assert!(c.complete(Snapshot::default()).outbox.is_empty());
    }

    #[test]
    fn unconfirmed_outputs_hold_input_back_until_confirmed() {
        let confirmed = Arc::new(AtomicU64::new(0));
        let mut c = Checkpointing::new(cfg(true), 1, confirmed.clone());
        c.emitted(&out(0));
        assert!(!c.backlogged());
        c.emitted(&out(1));
        assert!(c.backlogged());
        confirmed.store(1, Ordering::Relaxed);
        assert!(!c.backlogged());
    }

    #[test]
    fn acks_wait_for_a_written_checkpoint() {
        let called = Arc::new(AtomicUsize::new(0));
        let ack = || -> Option<Ack> {
            let called = called.clone();
            Some(Box::new(move || {
                called.fetch_add(1, Ordering::Relaxed);
            }))
        };
        let mut c = Checkpointing::new(cfg(false), 7, Arc::default());
        assert!(!c.taken(ack(), Some(11)));
        assert!(!c.taken(None, None));
        assert!(!c.taken(ack(), None));
        // The third ack reaches max_unacked = 3.
        assert!(c.taken(ack(), Some(13)));
        let snap = c.complete(Snapshot {
            inputs: 4,
            ..Snapshot::default()
        });
        assert_eq!((snap.seq, snap.inputs), (7, 4));
        assert_eq!(snap.resume.released, [11, 13]);
        // A failed write keeps them for the next checkpoint, under the same number.
        let now = Instant::now();
        assert!(c.attempted(false, now).is_empty());
        assert_eq!(c.seq, 7);
        assert!(c.due(now, now - Duration::from_secs(1)));
        let acks = c.attempted(true, now);
        assert_eq!(acks.len(), 3);
        assert_eq!(called.load(Ordering::Relaxed), 0, "called by the loop");
        for a in acks {
            a();
        }
        assert_eq!(called.load(Ordering::Relaxed), 3);
        assert_eq!(c.seq, 8);
        let snap = c.complete(Snapshot::default());
        assert_eq!((snap.seq, snap.resume.released.len()), (8, 0));
        assert!(!c.due(now + Duration::from_secs(60), now));
    }

    #[test]
    fn a_checkpoint_is_due_after_the_interval_or_when_input_pauses() {
        let mut c = Checkpointing::new(cfg(false), 1, Arc::default());
        let start = c.last;
        let later = |ms: u64| start + Duration::from_millis(ms);
        // Nothing happened: never due.
        assert!(!c.due(later(3_600_000), start));
        c.emitted(&out(0));
        assert!(!c.due(later(4_999), later(0)));
        assert!(c.due(later(5_000), later(0)));
        // Acks waiting: due once input paused for `idle` (100 ms).
        c.taken(Some(Box::new(|| ())), None);
        assert!(!c.due(later(1_099), later(1_000)));
        assert!(c.due(later(1_100), later(1_000)));
    }
}
