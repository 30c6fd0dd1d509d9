//! Offline alerts of rules with `offline_after`: what a device's connector reporting it
//! offline or back, and the wall clock passing, publish on the rule's sink topic.
//! The state machines are in [`forewarn_alerts::Lifecycle`]; this turns their
//! transitions into outputs, silences applied.

use forewarn_alerts::{Transition, TransitionMessage};

use crate::health::HealthBook;
use crate::outputs::Publisher;
use crate::Output;

impl Publisher {
    /// The device's connector reports it offline since `since`, or online at `now`
    /// (wall clock, ms): the `cleared` transition when its offline alert was raised.
    /// Also how many transitions a silence held back.
    pub(crate) fn presence(
        &mut self,
        rule: &str,
        device: &str,
        online: bool,
        (since, now): (i64, i64),
        health: &mut HealthBook,
    ) -> (Vec<Output>, u64) {
        let Some(l) = self.lifecycle.as_mut() else {
            return (vec![], 0);
        };
        if !online {
            l.went_offline(device, since);
            return (vec![], 0);
        }
        match l.came_online(device, now) {
            Some(t) => self.offline_outputs(rule, vec![(device.to_string(), t)], health, now),
            None => (vec![], 0),
        }
    }

    /// The offline alerts due at wall-clock `now` (ms), and how many a silence held back.
    pub(crate) fn offline_due(
        &mut self,
        rule: &str,
        now: i64,
        health: &mut HealthBook,
    ) -> (Vec<Output>, u64) {
        let due = match self.lifecycle.as_mut() {
            Some(l) if l.offline_pending() > 0 => l.offline_due(now),
            _ => return (vec![], 0),
        };
        self.offline_outputs(rule, due, health, now)
    }

    fn offline_outputs(
        &mut self,
        rule: &str,
        transitions: Vec<(String, Transition)>,
        health: &mut HealthBook,
        now: i64,
    ) -> (Vec<Output>, u64) {
        let spec = self.lifecycle.as_ref().expect("a lifecycle rule").spec();
        let (mut outs, mut silenced) = (Vec::new(), 0);
        for (device, t) in transitions {
            if health.silenced(&device, now) {
                silenced += 1;
                continue;
            }
            // The topic of the device's last transition or window (captures besides
            // the device are only known from its rows), else the device alone.
            let topic = self.topics.get(&device).cloned().unwrap_or_else(|| {
                self.sink
                    .render(|c| (c == self.device_column || c == "device").then(|| device.clone()))
            });
            let message = TransitionMessage::new(rule, &device, spec, self.model.as_deref(), t);
            outs.push(Output::Transition { topic, message });
        }
        (outs, silenced)
    }
}
