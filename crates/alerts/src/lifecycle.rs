//! The alert lifecycle: one state machine per (rule, device), turning a stream of
//! window scores into a few transitions — raised, escalated, cleared — with hysteresis,
//! debouncing and a cooldown, so a failing machine produces a handful of messages
//! instead of one per window, and a flapping score produces no flapping alerts.

use std::collections::HashMap;

use forewarn_core::{Millis, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::alert_id;
use crate::offline::Offline;

/// How scores become alert states, declared on a sink table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleSpec {
    /// Column of the result row holding the score.
    pub score_column: String,
    /// A window scoring at or above this is anomalous (enters `warning`).
    pub warning_at: f64,
    /// A window scoring at or above this is severe (escalates to `alarm`); `None`: never.
    pub alarm_at: Option<f64>,
    /// A window scoring below this is normal; between `clear_below` and `warning_at` the
    /// state holds (hysteresis). At most `warning_at`.
    pub clear_below: f64,
    /// Consecutive anomalous (or severe) windows before raising (or escalating).
    pub raise_after: u32,
    /// Consecutive normal windows before clearing.
    pub clear_after: u32,
    /// After a clear, no new episode is raised for this long (event time).
    pub cooldown: Millis,
    /// Severity label of the raised alert (`alarm` state is always `critical`).
    pub severity: String,
    /// A device its connector reports offline (a Sparkplug death) for this long (wall
    /// clock, ms) raises an `offline` alert, cleared when it is born again; `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_after: Option<Millis>,
}

impl Default for LifecycleSpec {
    fn default() -> Self {
        LifecycleSpec {
            score_column: "score".into(),
            warning_at: 1.0,
            alarm_at: None,
            clear_below: 1.0,
            raise_after: 2,
            clear_after: 3,
            cooldown: 0,
            severity: "warning".into(),
            offline_after: None,
        }
    }
}

/// A device's health under one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Nothing to report.
    Ok,
    /// An episode is open.
    Warning,
    /// The episode has escalated.
    Alarm,
}

/// What happened to an episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransitionKind {
    /// `ok → warning` (or straight to `alarm`).
    Raised,
    /// `warning → alarm`.
    Escalated,
    /// `warning`/`alarm → ok`.
    Cleared,
}

/// One closed window's evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowEvidence {
    /// Window start (serialised as RFC 3339).
    pub window_start: Timestamp,
    /// Window end (serialised as RFC 3339).
    pub window_end: Timestamp,
    /// The score (`None`: the window carried no score).
    pub score: Option<f64>,
    /// The row's other columns (feature values).
    pub features: Map<String, Value>,
}

/// A transition, ready to publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// What happened.
    pub kind: TransitionKind,
    /// State after the transition.
    pub state: Health,
    /// State before.
    pub previous: Health,
    /// Start of the episode (the first anomalous window of the run that raised it), ms.
    pub episode_start_ms: Millis,
    /// `sha256(rule, device, episode start)`: the same for every transition of an episode.
    pub alert_id: String,
    /// The windows that triggered the transition, oldest first.
    pub windows: Vec<WindowEvidence>,
    /// What opened the episode when it is not the windows' scores.
    pub cause: Option<Cause>,
}

/// What opened an episode other than its windows' scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    /// The device's connector reported it offline for the rule's `offline_after`.
    Offline,
}

/// One (rule, device) state machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Machine {
    health: Option<Health>,
    episode_start: Millis,
    /// The current run of anomalous / severe / normal windows.
    anomalous: Vec<WindowEvidence>,
    severe: Vec<WindowEvidence>,
    normal: Vec<WindowEvidence>,
    cooldown_until: Millis,
    /// Since when its connector reports it offline, under a rule with `offline_after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) offline: Option<Offline>,
}

/// Every device's state machine for one rule.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub(crate) rule: String,
    pub(crate) spec: LifecycleSpec,
    pub(crate) machines: HashMap<String, Machine>,
    /// Devices offline whose alert is not raised yet (see [`Lifecycle::offline_due`]).
    pub(crate) pending_offline: std::collections::BTreeSet<String>,
}

impl Lifecycle {
    /// State machines for `rule` (the query name).
    pub fn new(rule: &str, spec: LifecycleSpec) -> Self {
        Lifecycle {
            rule: rule.to_string(),
            spec,
            machines: HashMap::new(),
            pending_offline: Default::default(),
        }
    }

    /// The declaration.
    pub fn spec(&self) -> &LifecycleSpec {
        &self.spec
    }

    /// Current health of `device` (`Ok` when never seen).
    pub fn health(&self, device: &str) -> Health {
        self.machines
            .get(device)
            .and_then(|m| m.health)
            .unwrap_or(Health::Ok)
    }

    /// Devices currently tracked (state grows with devices, not with windows).
    pub fn devices(&self) -> usize {
        self.machines.len()
    }

    /// Every device's state machine, for a checkpoint.
    pub fn save(&self) -> serde_json::Value {
        serde_json::to_value(&self.machines).expect("machines serialise")
    }

    /// Continues from [`save`](Self::save)d state machines (replacing the current ones).
    pub fn load(&mut self, v: serde_json::Value) -> Result<(), serde_json::Error> {
        // Window bounds are kept as RFC 3339 text, as published; `Timestamp` reads it.
        self.machines = serde_json::from_value(v)?;
        self.pending_offline = self
            .machines
            .iter()
            .filter(|(_, m)| m.offline.is_some_and(|o| !o.raised))
            .map(|(d, _)| d.clone())
            .collect();
        Ok(())
    }

    /// Feeds one window of `device`; returns the transition it causes, if any.
    /// Windows must arrive in time order per device (the runtime fires them so).
    pub fn observe(&mut self, device: &str, w: WindowEvidence) -> Option<Transition> {
        let spec = &self.spec;
        let m = self.machines.entry(device.to_string()).or_default();
        let health = m.health.unwrap_or(Health::Ok);
        let keep = spec.raise_after.max(spec.clear_after).max(1) as usize;
        let push = |v: &mut Vec<WindowEvidence>, w: &WindowEvidence| {
            v.push(w.clone());
            if v.len() > keep {
                v.remove(0);
            }
        };
        let Some(score) = w.score.filter(|s| s.is_finite()) else {
            // No score, no evidence either way: the runs are not broken by a gap.
            return None;
        };
        let is_severe = spec.alarm_at.is_some_and(|a| score >= a);
        if score >= spec.warning_at {
            push(&mut m.anomalous, &w);
            m.normal.clear();
        } else if score < spec.clear_below {
            push(&mut m.normal, &w);
            m.anomalous.clear();
        } else {
            // Hysteresis band: neither raises nor clears, and breaks both runs.
            m.anomalous.clear();
            m.normal.clear();
        }
        if is_severe {
            push(&mut m.severe, &w);
        } else {
            m.severe.clear();
        }
        let n = spec.raise_after.max(1) as usize;
        let (kind, to, windows) = match health {
            Health::Ok
                if m.anomalous.len() >= n && w.window_end.as_millis() >= m.cooldown_until =>
            {
                let run = m.anomalous[m.anomalous.len() - n..].to_vec();
                m.episode_start = run[0].window_start.as_millis();
                let to = if m.severe.len() >= n {
                    Health::Alarm
                } else {
                    Health::Warning
                };
                (TransitionKind::Raised, to, run)
            }
            Health::Warning if m.severe.len() >= n => (
                TransitionKind::Escalated,
                Health::Alarm,
                m.severe[m.severe.len() - n..].to_vec(),
            ),
            Health::Warning | Health::Alarm
                if m.normal.len() >= spec.clear_after.max(1) as usize =>
            {
                m.cooldown_until = w.window_end.as_millis().saturating_add(spec.cooldown);
                let k = spec.clear_after.max(1) as usize;
                (
                    TransitionKind::Cleared,
                    Health::Ok,
                    m.normal[m.normal.len() - k..].to_vec(),
                )
            }
            _ => {
                if health == Health::Ok && m.anomalous.is_empty() && m.normal.len() >= keep {
                    // A healthy device keeps no history beyond what the next run needs.
                    m.normal.clear();
                }
                return None;
            }
        };
        m.health = Some(to);
        m.anomalous.clear();
        m.severe.clear();
        m.normal.clear();
        Some(Transition {
            kind,
            state: to,
            previous: health,
            episode_start_ms: m.episode_start,
            alert_id: alert_id(&self.rule, device, m.episode_start),
            windows,
            cause: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rules' windows close in an order that depends on batching: a device's `updated`
    /// is the latest change whatever order the rules report in.
    #[test]
    fn a_device_state_is_updated_at_its_latest_change() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let rule = |since: &str| RuleState {
            state: Health::Ok,
            since: t(since),
            alert_id: None,
            score: None,
        };
        let mut d = DeviceState::new("d0", t("2026-01-05T06:00:00.000Z"));
        d.set("a", rule("2026-01-05T06:00:25.000Z"));
        d.set("b", rule("2026-01-05T06:00:22.000Z"));
        assert_eq!(d.updated, t("2026-01-05T06:00:25.000Z"));
        d.set("b", rule("2026-01-05T06:01:00.000Z"));
        assert_eq!(d.updated, t("2026-01-05T06:01:00.000Z"));
        // Time order, not text order: a year past 9999 is later, not earlier.
        d.set("c", rule("+10000-01-01T00:00:00.000Z"));
        assert_eq!(d.updated, t("+10000-01-01T00:00:00.000Z"));
        assert!(d.to_json().windows(11).any(|w| w == b"\"+10000-01-"));
    }

    fn w(i: i64, score: f64) -> WindowEvidence {
        WindowEvidence {
            window_start: Timestamp::from_millis(i * 60_000),
            window_end: Timestamp::from_millis((i + 1) * 60_000),
            score: Some(score),
            features: Map::new(),
        }
    }

    fn run(spec: LifecycleSpec, scores: &[f64]) -> Vec<(usize, TransitionKind, Health)> {
        let mut l = Lifecycle::new("r", spec);
        scores
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                l.observe("d", w(i as i64, *s))
                    .map(|t| (i, t.kind, t.state))
            })
            .collect()
    }

    fn spec() -> LifecycleSpec {
        LifecycleSpec {
            warning_at: 1.0,
            alarm_at: Some(3.0),
            clear_below: 0.7,
            raise_after: 2,
            clear_after: 3,
            cooldown: 0,
            ..Default::default()
        }
    }

    use Health::*;
    use TransitionKind::*;

    #[test]
    fn a_developing_failure_raises_escalates_and_clears_once() {
        let scores = [
            0.2, 0.3, 1.2, 1.4, 1.8, 2.5, 3.2, 4.0, 5.0, 0.5, 0.4, 0.3, 0.2,
        ];
        assert_eq!(
            run(spec(), &scores),
            vec![
                (3, Raised, Warning),
                (7, Escalated, Alarm),
                (11, Cleared, Ok)
            ]
        );
    }

    #[test]
    fn flapping_scores_do_not_flap_the_alert() {
        // Around the threshold: single anomalous windows never raise (debounce), and once
        // raised, scores hovering in the hysteresis band never clear.
        let mut scores = vec![];
        for i in 0..20 {
            scores.push(if i % 2 == 0 { 1.1 } else { 0.9 });
        }
        assert_eq!(run(spec(), &scores), vec![]);
        let mut scores = vec![1.5, 1.5];
        for i in 0..20 {
            scores.push(if i % 2 == 0 { 0.9 } else { 0.75 });
        }
        scores.extend([0.5, 0.5, 0.5]);
        assert_eq!(
            run(spec(), &scores),
            vec![(1, Raised, Warning), (24, Cleared, Ok)]
        );
    }

    #[test]
    fn cooldown_holds_off_a_new_episode() {
        let s = LifecycleSpec {
            cooldown: 5 * 60_000,
            ..spec()
        };
        let scores = [1.5, 1.5, 0.1, 0.1, 0.1, 1.5, 1.5, 1.5, 1.5, 1.5];
        // Cleared at window 4 (ends at 5 min): raising waits until a window ends at 10 min.
        assert_eq!(
            run(s, &scores),
            vec![(1, Raised, Warning), (4, Cleared, Ok), (9, Raised, Warning)]
        );
    }

    #[test]
    fn ids_are_per_episode_and_missing_scores_are_no_evidence() {
        let mut l = Lifecycle::new("r", spec());
        let mut ts = vec![];
        for (i, s) in [1.5, 1.5, 0.1, 0.1, 0.1, 1.5, 1.5].iter().enumerate() {
            ts.extend(l.observe("d", w(i as i64, *s)));
        }
        assert_eq!(ts.len(), 3);
        assert_eq!(
            ts[0].alert_id, ts[1].alert_id,
            "raise and clear share the episode's id"
        );
        assert_ne!(ts[0].alert_id, ts[2].alert_id);
        assert_eq!(ts[2].episode_start_ms, 5 * 60_000);
        let mut gap = w(10, 0.0);
        gap.score = None;
        let mut l = Lifecycle::new("r", spec());
        assert!(l.observe("d", w(0, 1.5)).is_none());
        assert!(l.observe("d", gap).is_none());
        assert_eq!(l.observe("d", w(2, 1.5)).unwrap().kind, Raised);
    }

    /// State machines saved before window bounds were `Timestamp`s (RFC 3339 text,
    /// the milliseconds not saved) load, and the window times read from the text count.
    #[test]
    fn machines_saved_as_text_load_and_go_on() {
        let saved = serde_json::json!({"d": {
            "health": null, "episode_start": 0, "severe": [], "normal": [], "cooldown_until": 0,
            "anomalous": [{"window_start": "1970-01-01T00:01:00.000Z",
                           "window_end": "1970-01-01T00:02:00.000Z",
                           "score": 1.5, "features": {"v": 2.0}}]
        }});
        let mut l = Lifecycle::new("r", spec());
        l.load(saved.clone()).unwrap();
        assert_eq!(l.save(), saved, "saved again as it was");
        let t = l
            .observe("d", w(2, 1.5))
            .expect("the second anomalous window raises");
        assert_eq!((t.kind, t.episode_start_ms), (Raised, 60_000));
        assert_eq!(t.windows[0].window_end, Timestamp::from_millis(120_000));
        assert_eq!(t.windows[0].features["v"], 2.0);
        let bad = serde_json::json!({"d": {
            "health": null, "episode_start": 0, "severe": [], "normal": [], "cooldown_until": 0,
            "anomalous": [{"window_start": "t0", "window_end": "t0", "score": 1.5, "features": {}}]
        }});
        let e = Lifecycle::new("r", spec()).load(bad).unwrap_err();
        assert!(
            e.to_string().contains("'t0' is not an RFC 3339 timestamp"),
            "{e}"
        );
    }

    #[test]
    fn a_severe_start_raises_straight_to_alarm() {
        assert_eq!(run(spec(), &[4.0, 4.0]), vec![(1, Raised, Alarm)]);
    }
}

/// Version of the transition and state JSON formats.
pub const TRANSITION_SCHEMA_VERSION: u32 = 2;

/// The JSON published on the alert topic for one transition (QoS 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionMessage {
    /// Format version.
    pub schema_version: u32,
    /// The episode's id: the same for its raise, escalation and clear.
    pub alert_id: String,
    /// `alert_id` plus the transition: unique per message, for de-duplication.
    pub event_id: String,
    /// Rule (query) name.
    pub rule: String,
    /// Device.
    pub device: String,
    /// `raised`, `escalated` or `cleared`.
    pub transition: TransitionKind,
    /// State after the transition.
    pub state: Health,
    /// State before.
    pub previous: Health,
    /// The rule's severity label, or `critical` in `alarm`.
    pub severity: String,
    /// Start of the episode (serialised as RFC 3339, like the other instants).
    pub episode_start: Timestamp,
    /// Bounds of the window that caused the transition.
    pub window_start: Timestamp,
    /// See `window_start`.
    pub window_end: Timestamp,
    /// That window's score.
    pub score: Option<f64>,
    /// Model that produced the score, when the rule calls exactly one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Why: the triggering window's `explanation` column, when the rule selects one
    /// (e.g. `top_contributors(...) AS explanation` → `"vibration_floor 71%, kurtosis 22%"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
    /// The windows that triggered the transition (scores and feature values), oldest first.
    /// An offline episode's one window is the offline period (no score, no features).
    pub windows: Vec<WindowEvidence>,
    /// `offline` for an episode opened by the device's connector reporting it offline
    /// (the rule's `offline_after`); absent for score episodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// With `cause: offline`: since when (wall clock) the device is offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_since: Option<Timestamp>,
}

impl TransitionMessage {
    /// The message for `t` of `rule`/`device`. Its window is `t`'s last window (a
    /// transition without windows, which [`Lifecycle::observe`] never makes, gives the
    /// episode start for both bounds).
    pub fn new(
        rule: &str,
        device: &str,
        spec: &LifecycleSpec,
        model: Option<&str>,
        t: Transition,
    ) -> Self {
        let last = t.windows.last().cloned();
        let kind = match t.kind {
            TransitionKind::Raised => "raised",
            TransitionKind::Escalated => "escalated",
            TransitionKind::Cleared => "cleared",
        };
        TransitionMessage {
            schema_version: TRANSITION_SCHEMA_VERSION,
            event_id: format!("{}-{kind}", t.alert_id),
            alert_id: t.alert_id,
            rule: rule.to_string(),
            device: device.to_string(),
            transition: t.kind,
            state: t.state,
            previous: t.previous,
            severity: if t.state == Health::Alarm || t.previous == Health::Alarm {
                "critical".into()
            } else {
                spec.severity.clone()
            },
            episode_start: Timestamp::from_millis(t.episode_start_ms),
            window_start: last
                .as_ref()
                .map_or(Timestamp::from_millis(t.episode_start_ms), |w| {
                    w.window_start
                }),
            window_end: last
                .as_ref()
                .map_or(Timestamp::from_millis(t.episode_start_ms), |w| w.window_end),
            explanation: last
                .as_ref()
                .and_then(|w| w.features.get("explanation"))
                .and_then(|v| v.as_str())
                .map(str::to_string),
            score: last.and_then(|w| w.score),
            model: model.map(str::to_string),
            windows: t.windows,
            offline_since: (t.cause == Some(Cause::Offline))
                .then(|| Timestamp::from_millis(t.episode_start_ms)),
            cause: t.cause,
        }
    }

    /// The JSON payload.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("transitions serialise")
    }
}

/// One rule's view of a device, inside [`DeviceState`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    /// Health under this rule.
    pub state: Health,
    /// When it entered this state: a window end (serialised as RFC 3339).
    pub since: Timestamp,
    /// The open episode's id, when not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<String>,
    /// Score of the latest window that changed the state.
    pub score: Option<f64>,
}

/// The retained JSON on the state topic: a device's current health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Format version.
    pub schema_version: u32,
    /// Device.
    pub device: String,
    /// The worst state over its rules.
    pub state: Health,
    /// Event time of the latest change (serialised as RFC 3339).
    pub updated: Timestamp,
    /// Per rule.
    pub rules: std::collections::BTreeMap<String, RuleState>,
    /// The operator's acknowledgement of the open episode, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<Acknowledgement>,
    /// Until when (wall clock, serialised as RFC 3339) the device's alert transitions
    /// are silenced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub silenced_until: Option<Timestamp>,
    /// Since when (wall clock, serialised as RFC 3339) the device's connector reports it
    /// offline (a Sparkplug NDEATH or DDEATH); absent while it is online or its
    /// connector does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_since: Option<Timestamp>,
}

/// Who acknowledged what, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Acknowledgement {
    /// Operator, as given in the command.
    pub by: String,
    /// Wall-clock time the engine received it (serialised as RFC 3339).
    pub at: Timestamp,
    /// The episodes acknowledged (one per rule not `ok`).
    pub alert_ids: Vec<String>,
}

/// An operator command, published as JSON on `{prefix}/command/{device}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
pub enum Command {
    /// Acknowledge the device's open episodes: recorded on its state.
    Acknowledge {
        /// Operator name.
        by: String,
    },
    /// Stop publishing the device's transitions for a while (state is still kept and
    /// published); `for` is an interval such as `"2 hours"`.
    Silence {
        /// Operator name.
        by: String,
        /// How long.
        #[serde(rename = "for")]
        duration: String,
    },
    /// End a silence early.
    Unsilence {
        /// Operator name.
        by: String,
    },
}

impl Command {
    /// A command payload as the command topic and the HTTP API take it: the JSON, and a
    /// silence's `for` a positive interval (`"2 hours"`). `Err` says what is wrong, for
    /// the `bad_command` dead letter or the API's 400.
    pub fn parse(payload: &[u8]) -> Result<Command, String> {
        let cmd = serde_json::from_slice::<Command>(payload).map_err(|e| {
            format!("expected {{\"action\": \"acknowledge\" | \"silence\" | \"unsilence\", \"by\": ..., \"for\": \"2 hours\"}}: {e}")
        })?;
        if let Command::Silence { duration, .. } = &cmd {
            cmd_silence_ms(duration)?;
        }
        Ok(cmd)
    }

    /// A silence's length in ms (`None` for the other commands).
    pub fn silence_ms(&self) -> Option<i64> {
        match self {
            Command::Silence { duration, .. } => cmd_silence_ms(duration).ok(),
            _ => None,
        }
    }
}

fn cmd_silence_ms(duration: &str) -> Result<i64, String> {
    match forewarn_core::parse_interval(duration, None) {
        Ok(ms) if ms > 0 => Ok(ms),
        _ => Err(format!(
            "silence needs \"for\": an interval such as \"2 hours\", got '{duration}'"
        )),
    }
}

impl DeviceState {
    /// A device first seen at `at` (event time), healthy.
    pub fn new(device: &str, at: Timestamp) -> Self {
        DeviceState {
            schema_version: TRANSITION_SCHEMA_VERSION,
            device: device.to_string(),
            state: Health::Ok,
            updated: at,
            rules: Default::default(),
            acknowledged: None,
            silenced_until: None,
            offline_since: None,
        }
    }

    /// Records a rule's state and recomputes the worst. A new episode, or the device
    /// returning to `ok`, ends an acknowledgement.
    pub fn set(&mut self, rule: &str, s: RuleState) {
        // The latest change over all rules: rules' windows close in an order that
        // depends on batching, so an older change may be recorded after a newer one.
        if s.since > self.updated {
            self.updated = s.since;
        }
        if let Some(ack) = &mut self.acknowledged {
            let before = self.rules.get(rule).and_then(|r| r.alert_id.clone());
            if before.as_ref() != s.alert_id.as_ref() {
                // This rule's acknowledged episode ended or a new one began.
                ack.alert_ids.retain(|id| Some(id) != before.as_ref());
                if ack.alert_ids.is_empty() {
                    self.acknowledged = None;
                }
            }
        }
        self.rules.insert(rule.to_string(), s);
        self.state = self
            .rules
            .values()
            .map(|r| r.state)
            .max()
            .unwrap_or(Health::Ok);
    }

    /// The JSON payload.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("states serialise")
    }
}
