//! Offline alerts: a rule with `offline_after` raises an alert for a device its
//! connector reports offline (a Sparkplug NDEATH or DDEATH) for that long, and clears
//! it when the device is born again. Wall-clock time comes in as an argument.
//!
//! The episode is apart from the rule's score episodes: its own `alert_id`
//! (`sha256("{rule}/offline", device, offline since)`), `cause: offline`, and one
//! evidence "window": the offline period, without a score.

use forewarn_core::{Millis, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Map;

use crate::lifecycle::{Cause, Health, Lifecycle, Transition, TransitionKind, WindowEvidence};

/// A device's reported absence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Offline {
    /// Since when (wall clock, ms).
    pub(crate) since: Millis,
    /// Whether its alert has been raised.
    pub(crate) raised: bool,
}

impl Lifecycle {
    /// The device's connector reports it offline since wall-clock `since` (ms). Only a
    /// device the rule has seen (a window of it closed) is watched, and only when the
    /// rule declares `offline_after`; a device already offline keeps its first `since`.
    pub fn went_offline(&mut self, device: &str, since: Millis) {
        if self.spec.offline_after.is_none() {
            return;
        }
        let Some(m) = self.machines.get_mut(device) else {
            return;
        };
        if m.offline.is_none() {
            m.offline = Some(Offline {
                since,
                raised: false,
            });
            self.pending_offline.insert(device.to_string());
        }
    }

    /// The device is online again at wall-clock `now` (ms): the `cleared` transition of
    /// its offline alert when one was raised (none when it was back in time).
    pub fn came_online(&mut self, device: &str, now: Millis) -> Option<Transition> {
        let o = self.machines.get_mut(device)?.offline.take()?;
        self.pending_offline.remove(device);
        o.raised
            .then(|| self.offline_transition(device, o.since, now, false))
    }

    /// The offline alerts due at wall-clock `now` (ms): each device offline for
    /// `offline_after` or longer is raised once, oldest first.
    pub fn offline_due(&mut self, now: Millis) -> Vec<(String, Transition)> {
        let Some(after) = self.spec.offline_after else {
            return vec![];
        };
        let due: Vec<(String, Millis)> = self
            .pending_offline
            .iter()
            .filter_map(|d| {
                let o = self.machines.get(d)?.offline?;
                (now.saturating_sub(o.since) >= after).then(|| (d.clone(), o.since))
            })
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for (device, since) in due {
            self.pending_offline.remove(&device);
            if let Some(o) = self
                .machines
                .get_mut(&device)
                .and_then(|m| m.offline.as_mut())
            {
                o.raised = true;
            }
            let t = self.offline_transition(&device, since, since.saturating_add(after), true);
            out.push((device, t));
        }
        out.sort_by_key(|(_, t)| t.episode_start_ms);
        out
    }

    /// Devices offline whose alert is not due yet.
    pub fn offline_pending(&self) -> usize {
        self.pending_offline.len()
    }

    /// The raise (offline `since` → `until`, the deadline) or clear (→ back online).
    fn offline_transition(
        &self,
        device: &str,
        since: Millis,
        until: Millis,
        raised: bool,
    ) -> Transition {
        let (kind, state, previous) = if raised {
            (TransitionKind::Raised, Health::Warning, Health::Ok)
        } else {
            (TransitionKind::Cleared, Health::Ok, Health::Warning)
        };
        Transition {
            kind,
            state,
            previous,
            episode_start_ms: since,
            alert_id: crate::alert_id(&format!("{}/offline", self.rule), device, since),
            windows: vec![WindowEvidence {
                window_start: Timestamp::from_millis(since),
                window_end: Timestamp::from_millis(until),
                score: None,
                features: Map::new(),
            }],
            cause: Some(Cause::Offline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LifecycleSpec;

    fn seen(spec: LifecycleSpec) -> Lifecycle {
        let mut l = Lifecycle::new("r", spec);
        let w = WindowEvidence {
            window_start: Timestamp::from_millis(0),
            window_end: Timestamp::from_millis(60_000),
            score: Some(0.1),
            features: Map::new(),
        };
        assert!(l.observe("d", w).is_none());
        l
    }

    fn spec() -> LifecycleSpec {
        LifecycleSpec {
            offline_after: Some(5_000),
            ..LifecycleSpec::default()
        }
    }

    #[test]
    fn offline_for_the_declared_time_raises_once_and_rebirth_clears() {
        let mut l = seen(spec());
        l.went_offline("d", 1_000);
        l.went_offline("d", 3_000); // a second death report keeps the first time
        assert!(l.offline_due(5_999).is_empty(), "4.999 s offline: not yet");
        let due = l.offline_due(6_000);
        assert_eq!(due.len(), 1);
        let (d, t) = &due[0];
        assert_eq!(d, "d");
        assert_eq!(
            (t.kind, t.state, t.previous, t.episode_start_ms, t.cause),
            (
                TransitionKind::Raised,
                Health::Warning,
                Health::Ok,
                1_000,
                Some(Cause::Offline)
            )
        );
        assert_eq!(t.alert_id, crate::alert_id("r/offline", "d", 1_000));
        assert_eq!(t.windows[0].window_start, Timestamp::from_millis(1_000));
        assert_eq!(t.windows[0].window_end, Timestamp::from_millis(6_000));
        assert!(l.offline_due(60_000).is_empty(), "raised once");
        let c = l.came_online("d", 9_000).expect("cleared");
        assert_eq!(
            (c.kind, c.state, c.previous, &c.alert_id),
            (
                TransitionKind::Cleared,
                Health::Ok,
                Health::Warning,
                &t.alert_id
            )
        );
        assert_eq!(c.windows[0].window_end, Timestamp::from_millis(9_000));
        assert!(l.came_online("d", 9_500).is_none());
    }

    #[test]
    fn back_in_time_unseen_devices_and_rules_without_the_option_raise_nothing() {
        let mut l = seen(spec());
        l.went_offline("d", 1_000);
        assert!(l.came_online("d", 5_999).is_none());
        assert!(l.offline_due(100_000).is_empty());
        l.went_offline("never-seen", 0);
        assert!(l.offline_due(100_000).is_empty());
        let mut l = seen(LifecycleSpec::default());
        l.went_offline("d", 0);
        assert!(l.offline_due(i64::MAX).is_empty());
        assert_eq!(l.offline_pending(), 0);
    }

    /// A checkpoint keeps the pending and the raised offline alerts.
    #[test]
    fn offline_state_survives_save_and_load() {
        let mut l = seen(spec());
        l.went_offline("d", 1_000);
        let mut back = Lifecycle::new("r", spec());
        back.load(l.save()).unwrap();
        assert_eq!(back.offline_pending(), 1);
        let due = back.offline_due(6_000);
        assert_eq!(due.len(), 1);
        let mut again = Lifecycle::new("r", spec());
        again.load(back.save()).unwrap();
        assert!(again.offline_due(60_000).is_empty(), "already raised");
        assert!(again.came_online("d", 7_000).is_some());
    }
}
