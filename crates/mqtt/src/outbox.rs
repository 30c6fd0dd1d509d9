//! Store-and-forward for outgoing messages: a bounded queue that holds what could not
//! be handed to the broker yet, in order, and sheds the oldest non-critical messages
//! first when it is full.

use std::collections::VecDeque;

/// One message waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Publish retained.
    pub retain: bool,
    /// Alerts are critical; superseded state and dead letters are not.
    pub critical: bool,
    /// MQTT 5 message properties (none for 3.1.1).
    pub properties: crate::MessageProperties,
}

/// A bounded FIFO of outgoing messages.
#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<Pending>,
    capacity: usize,
    dropped: u64,
    dropped_critical: u64,
}

impl Outbox {
    /// An outbox holding at most `capacity` messages (at least one).
    pub fn new(capacity: usize) -> Self {
        Outbox {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: 0,
            dropped_critical: 0,
        }
    }

    /// Appends `p`; when full, first drops the oldest non-critical message, or the
    /// oldest message when all are critical. Returns what was dropped.
    pub fn push(&mut self, p: Pending) -> Option<Pending> {
        let mut evicted = None;
        if self.queue.len() >= self.capacity {
            let i = self.queue.iter().position(|q| !q.critical).unwrap_or(0);
            let e = self.queue.remove(i).expect("non-empty");
            self.dropped += 1;
            if e.critical {
                self.dropped_critical += 1;
            }
            evicted = Some(e);
        }
        self.queue.push_back(p);
        evicted
    }

    /// The oldest message.
    pub fn front(&self) -> Option<&Pending> {
        self.queue.front()
    }

    /// Removes the oldest message.
    pub fn pop(&mut self) -> Option<Pending> {
        self.queue.pop_front()
    }

    /// Puts back a message just popped that could not be handed on, at the front.
    pub fn unpop(&mut self, p: Pending) {
        self.queue.push_front(p);
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Messages dropped because the outbox was full (critical ones included).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Critical messages dropped (all waiting messages were critical).
    pub fn dropped_critical(&self) -> u64 {
        self.dropped_critical
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, critical: bool) -> Pending {
        Pending {
            topic: name.into(),
            payload: vec![],
            retain: false,
            critical,
            properties: Default::default(),
        }
    }

    #[test]
    fn keeps_order_and_sheds_the_oldest_non_critical_first() {
        let mut o = Outbox::new(3);
        assert!(o.push(p("a1", true)).is_none());
        assert!(o.push(p("s1", false)).is_none());
        assert!(o.push(p("a2", true)).is_none());
        assert_eq!(o.push(p("s2", false)).unwrap().topic, "s1");
        assert_eq!(o.push(p("a3", true)).unwrap().topic, "s2");
        // All critical now: the oldest goes, and that is counted separately.
        assert_eq!(o.push(p("a4", true)).unwrap().topic, "a1");
        let order: Vec<String> = std::iter::from_fn(|| o.pop().map(|p| p.topic)).collect();
        assert_eq!(order, ["a2", "a3", "a4"]);
        assert_eq!((o.dropped(), o.dropped_critical()), (3, 1));
    }
}
