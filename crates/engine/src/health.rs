//! The device health book: each device's [`DeviceState`] over the rules with a
//! lifecycle, the silences operators set, and the operator commands that change them.
//!
//! It is kept apart from the rules' state machines because it is what the retained
//! state topic publishes and what operators act on: one view per device, whichever
//! rules judge it. Wall-clock time comes in as an argument, so it is tested without a
//! clock.

use std::collections::{BTreeMap, HashMap};

use forewarn_alerts::{
    Acknowledgement, Command, DeviceState, Health, RuleState, TransitionMessage,
};
use forewarn_core::{Reason, Timestamp};

/// Every device seen by a rule with a lifecycle, and the silenced ones.
#[derive(Default)]
pub(crate) struct HealthBook {
    /// Health of every device seen by a rule with a lifecycle.
    states: HashMap<String, DeviceState>,
    /// Devices an operator silenced, until when (wall clock, ms).
    silenced: HashMap<String, i64>,
}

/// Why a command cannot be applied: its reason code and the dead letter's detail.
pub(crate) type Refused = (Reason, String);

impl HealthBook {
    /// Continues from a checkpoint's states and silences.
    pub(crate) fn restore(
        &mut self,
        states: BTreeMap<String, DeviceState>,
        silenced: BTreeMap<String, i64>,
    ) {
        self.states = states.into_iter().collect();
        self.silenced = silenced.into_iter().collect();
    }

    /// The device states, for a checkpoint.
    pub(crate) fn saved_states(&self) -> BTreeMap<String, DeviceState> {
        self.states
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The silences, for a checkpoint.
    pub(crate) fn saved_silences(&self) -> BTreeMap<String, i64> {
        self.silenced.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// A device's state, if a rule with a lifecycle has seen it.
    pub(crate) fn state(&self, device: &str) -> Option<&DeviceState> {
        self.states.get(device)
    }

    /// Applies the operator command `payload` to `device`, received at wall-clock `now`
    /// (ms): the device's state that confirms it, or why it cannot be applied.
    pub(crate) fn command(
        &mut self,
        device: &str,
        payload: &[u8],
        now: i64,
    ) -> Result<&DeviceState, Refused> {
        let cmd = Command::parse(payload).map_err(|e| (Reason::BadCommand, e))?;
        let Some(state) = self.states.get_mut(device) else {
            return Err((
                Reason::UnknownDevice,
                format!("no rule with a lifecycle has seen device '{device}'"),
            ));
        };
        match cmd {
            Command::Acknowledge { by } => {
                let ids: Vec<String> = state
                    .rules
                    .values()
                    .filter_map(|r| r.alert_id.clone())
                    .collect();
                if ids.is_empty() {
                    return Err((
                        Reason::NothingToAcknowledge,
                        format!("device '{device}' has no open alert"),
                    ));
                }
                state.acknowledged = Some(Acknowledgement {
                    by,
                    at: Timestamp::from_millis(now),
                    alert_ids: ids,
                });
            }
            ref c @ Command::Silence { .. } => {
                let ms = c.silence_ms().expect("checked by Command::parse");
                let until = now.saturating_add(ms);
                state.silenced_until = Some(Timestamp::from_millis(until));
                self.silenced.insert(device.to_string(), until);
            }
            Command::Unsilence { .. } => {
                state.silenced_until = None;
                self.silenced.remove(device);
            }
        }
        Ok(state)
    }

    /// The device's connector reports it online or offline at wall-clock `now` (ms):
    /// its state to publish when that changes it. A device going offline that no rule
    /// has seen yet gets a state (no rules), so an offline device is never a silent one.
    pub(crate) fn presence(
        &mut self,
        device: &str,
        online: bool,
        now: i64,
    ) -> Option<&DeviceState> {
        let at = Timestamp::from_millis(now);
        if online {
            let state = self.states.get_mut(device)?;
            state.offline_since.take()?;
            return Some(state);
        }
        let state = self
            .states
            .entry(device.to_string())
            .or_insert_with(|| DeviceState::new(device, at));
        if state.offline_since.is_some() {
            return None;
        }
        state.offline_since = Some(at);
        Some(state)
    }

    /// Whether `device` is silenced at wall-clock `now` (ms); a silence that has run
    /// out ends here.
    pub(crate) fn silenced(&mut self, device: &str, now: i64) -> bool {
        match self.silenced.get(device) {
            Some(until) if now < *until => true,
            Some(_) => {
                self.silenced.remove(device);
                if let Some(s) = self.states.get_mut(device) {
                    s.silenced_until = None;
                }
                false
            }
            None => false,
        }
    }

    /// A window of `device` under `rule` ending at `window_end`: a device
    /// first seen is healthy under the rule. Whether this is the rule's first window
    /// of the device (its state is then published, so the retained state topic lists
    /// the whole fleet).
    pub(crate) fn first_window(
        &mut self,
        rule: &str,
        device: &str,
        window_end: Timestamp,
        score: Option<f64>,
    ) -> bool {
        let state = self
            .states
            .entry(device.to_string())
            .or_insert_with(|| DeviceState::new(device, window_end));
        let first = !state.rules.contains_key(rule);
        if first {
            state.set(
                rule,
                RuleState {
                    state: Health::Ok,
                    since: window_end,
                    alert_id: None,
                    score,
                },
            );
        }
        first
    }

    /// Records a transition of `device` (seen by [`Self::first_window`]) under `rule`;
    /// whether the device is silenced, so the transition is not published. A silence
    /// that has run out by `now()` (wall clock, ms; read only for silenced devices)
    /// ends here.
    pub(crate) fn transition(
        &mut self,
        rule: &str,
        device: &str,
        msg: &TransitionMessage,
        now: impl FnOnce() -> i64,
    ) -> bool {
        let state = self
            .states
            .get_mut(device)
            .expect("first_window comes first");
        state.set(
            rule,
            RuleState {
                state: msg.state,
                since: msg.window_end,
                alert_id: (msg.state != Health::Ok).then(|| msg.alert_id.clone()),
                score: msg.score,
            },
        );
        match self.silenced.get(device) {
            Some(until) if now() < *until => true,
            Some(_) => {
                // The silence ran out.
                self.silenced.remove(device);
                state.silenced_until = None;
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn presence_marks_offline_once_and_online_clears_it() {
        let mut h = book(false);
        assert!(
            h.presence("d", true, 5).is_none(),
            "already online: nothing to publish"
        );
        let s = h.presence("d", false, 7).unwrap();
        assert_eq!(s.offline_since, Some(Timestamp::from_millis(7)));
        assert_eq!(s.rules.len(), 1);
        assert!(h.presence("d", false, 9).is_none(), "still offline since 7");
        assert_eq!(h.presence("d", true, 11).unwrap().offline_since, None);
        // A device no rule has seen: offline gets a state, online does not.
        assert!(h.presence("e", true, 1).is_none());
        let s = h.presence("e", false, 2).unwrap();
        assert!(s.rules.is_empty());
        assert_eq!(
            h.state("e").unwrap().offline_since,
            Some(Timestamp::from_millis(2))
        );
    }

    /// A book where device `d` has seen rule `r`, with an open alert when `alert`.
    fn book(alert: bool) -> HealthBook {
        let mut h = HealthBook::default();
        assert!(h.first_window("r", "d", t("2024-01-01T00:00:10.000Z"), Some(0.5)));
        assert!(!h.first_window("r", "d", t("2024-01-01T00:00:20.000Z"), Some(0.7)));
        if alert {
            let s = h.states.get_mut("d").unwrap();
            s.set(
                "r",
                RuleState {
                    state: Health::Warning,
                    since: t("2024-01-01T00:00:30.000Z"),
                    alert_id: Some("a-1".into()),
                    score: Some(9.0),
                },
            );
        }
        h
    }

    #[test]
    fn a_first_window_makes_the_device_healthy_under_the_rule() {
        let h = book(false);
        let s = h.state("d").unwrap();
        assert_eq!(s.state, Health::Ok);
        assert_eq!(s.updated, t("2024-01-01T00:00:10.000Z"));
        assert_eq!(
            s.rules["r"],
            RuleState {
                state: Health::Ok,
                since: t("2024-01-01T00:00:10.000Z"),
                alert_id: None,
                score: Some(0.5),
            }
        );
        assert!(h.state("other").is_none());
    }

    #[test]
    fn commands_that_cannot_be_applied_say_why() {
        let mut h = book(false);
        let (reason, detail) = h.command("d", b"{\"action\": \"reboot\"}", 0).unwrap_err();
        assert_eq!(reason, Reason::BadCommand);
        assert!(
            detail.starts_with("expected {\"action\": \"acknowledge\" | \"silence\" | \"unsilence\", \"by\": ..., \"for\": \"2 hours\"}: unknown variant `reboot`"),
            "{detail}"
        );
        assert_eq!(
            h.command("d", b"not json", 0).unwrap_err().0,
            Reason::BadCommand
        );
        assert_eq!(
            h.command("x", br#"{"action": "unsilence", "by": "ann"}"#, 0),
            Err((
                Reason::UnknownDevice,
                "no rule with a lifecycle has seen device 'x'".to_string()
            ))
        );
        assert_eq!(
            h.command("d", br#"{"action": "acknowledge", "by": "ann"}"#, 0),
            Err((
                Reason::NothingToAcknowledge,
                "device 'd' has no open alert".to_string()
            ))
        );
        for bad in ["soon", "0 s", "-5 minutes"] {
            let cmd = format!(r#"{{"action": "silence", "by": "ann", "for": "{bad}"}}"#);
            assert_eq!(
                h.command("d", cmd.as_bytes(), 0),
                Err((
                    Reason::BadCommand,
                    format!("silence needs \"for\": an interval such as \"2 hours\", got '{bad}'")
                ))
            );
        }
        // Nothing was changed by the refused commands.
        assert_eq!(h.state("d").unwrap().acknowledged, None);
        assert_eq!(h.state("d").unwrap().silenced_until, None);
        assert!(h.saved_silences().is_empty());
    }

    #[test]
    fn acknowledging_records_who_when_and_the_open_alerts() {
        let mut h = book(true);
        let s = h
            .command("d", br#"{"action": "acknowledge", "by": "ann"}"#, 60_000)
            .unwrap();
        assert_eq!(
            s.acknowledged,
            Some(Acknowledgement {
                by: "ann".into(),
                at: Timestamp::from_millis(60_000),
                alert_ids: vec!["a-1".into()],
            })
        );
    }

    #[test]
    fn a_silence_holds_until_it_runs_out_then_ends() {
        let mut h = book(false);
        let s = h
            .command(
                "d",
                br#"{"action": "silence", "by": "ann", "for": "2 s"}"#,
                1_000,
            )
            .unwrap();
        assert_eq!(s.silenced_until, Some(Timestamp::from_millis(3_000)));
        assert_eq!(
            h.saved_silences(),
            BTreeMap::from([("d".to_string(), 3_000)])
        );
        let msg = |state: Health| TransitionMessage {
            schema_version: 1,
            alert_id: "a-1".into(),
            event_id: "e".into(),
            rule: "r".into(),
            device: "d".into(),
            transition: forewarn_alerts::TransitionKind::Raised,
            state,
            previous: Health::Ok,
            severity: "warning".into(),
            episode_start: t("2024-01-01T00:00:30.000Z"),
            window_start: t("2024-01-01T00:00:30.000Z"),
            window_end: t("2024-01-01T00:00:40.000Z"),
            score: Some(5.0),
            model: None,
            explanation: None,
            windows: vec![],
            cause: None,
            offline_since: None,
        };
        // Still silenced 1 ms before the end.
        assert!(h.transition("r", "d", &msg(Health::Warning), || 2_999));
        let s = h.state("d").unwrap();
        assert_eq!(s.state, Health::Warning);
        assert_eq!(s.rules["r"].alert_id.as_deref(), Some("a-1"));
        assert!(s.silenced_until.is_some());
        // At the end the silence is over, and forgotten.
        assert!(!h.transition("r", "d", &msg(Health::Ok), || 3_000));
        let s = h.state("d").unwrap();
        assert_eq!(s.silenced_until, None);
        assert_eq!(s.rules["r"].alert_id, None);
        assert!(h.saved_silences().is_empty());
        // Without a silence the clock is not read.
        assert!(!h.transition("r", "d", &msg(Health::Ok), || unreachable!()));
    }

    #[test]
    fn unsilence_ends_a_silence_at_once() {
        let mut h = book(false);
        h.command(
            "d",
            br#"{"action": "silence", "by": "a", "for": "1 hour"}"#,
            0,
        )
        .unwrap();
        let s = h
            .command("d", br#"{"action": "unsilence", "by": "a"}"#, 10)
            .unwrap();
        assert_eq!(s.silenced_until, None);
        assert!(h.saved_silences().is_empty());
    }
}
