//! The fleet as the device-health page and `/api` see it: every device's current
//! state, labels, latest score and when it was last seen, a bounded ring of its recent
//! windows and of its alert history.
//!
//! It is fed from two places, both off unless the listener serves the page: the
//! service's output tap (alerts, transitions, device states; [`Fleet::tap`]) and the
//! engine's window observer ([`Fleet::window_observer`]), since a rule with a lifecycle
//! publishes transitions, not its windows. Memory is bounded by devices (at most
//! `max_devices`, the engine's own limit; devices beyond it are counted, not kept), not
//! by messages: per device a ring of [`WINDOWS`] scores, the latest window's features
//! and a ring of [`HISTORY`] alert events.
//!
//! Every change stamps the device with a fleet-wide sequence number, so a live view
//! asks for the devices changed since the number it last saw ([`Fleet::changes`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use forewarn_engine::{Alert, DeviceState, Health, Output, Pipeline, Timestamp, WindowObserver};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// Recent windows kept per device.
pub const WINDOWS: usize = 120;
/// Alert events (transitions, alerts) kept per device.
pub const HISTORY: usize = 50;
/// A device not heard from for this long (wall clock) shows as `offline`, by default.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(300);
/// Feature columns lifted out as a device's labels (filters on the page).
const LABELS: [&str; 2] = ["site", "line"];

/// A device's state as the page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shown {
    /// Healthy (or judged by no rule with a lifecycle).
    Ok,
    /// An episode is open.
    Warning,
    /// The episode has escalated.
    Alarm,
    /// An operator silenced it (and the silence has not run out).
    Silenced,
    /// Not heard from for the offline interval.
    Offline,
}

impl Shown {
    fn as_str(self) -> &'static str {
        match self {
            Shown::Ok => "ok",
            Shown::Warning => "warning",
            Shown::Alarm => "alarm",
            Shown::Silenced => "silenced",
            Shown::Offline => "offline",
        }
    }
}

/// One recent window: its bounds and score (the ring keeps no features: see
/// [`DeviceDetail::latest`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WindowPoint {
    /// Window start.
    pub window_start: Timestamp,
    /// Window end.
    pub window_end: Timestamp,
    /// Its score (`None`: the window carried none).
    pub score: Option<f64>,
}

/// The latest window in full.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowView {
    /// The query (rule) that produced it.
    pub query: String,
    /// Window start.
    pub window_start: Timestamp,
    /// Window end.
    pub window_end: Timestamp,
    /// Its score.
    pub score: Option<f64>,
    /// The row's other columns (feature values), without `explanation`.
    pub features: Map<String, Value>,
    /// The row's `explanation` column, when the query selects one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
}

impl WindowView {
    fn of(
        query: &str,
        start: Timestamp,
        end: Timestamp,
        score: Option<f64>,
        features: &Map<String, Value>,
    ) -> Self {
        let mut features = features.clone();
        let explanation = match features.remove("explanation") {
            Some(Value::String(e)) => Some(e),
            Some(other) => {
                features.insert("explanation".into(), other);
                None
            }
            None => None,
        };
        WindowView {
            query: query.to_string(),
            window_start: start,
            window_end: end,
            score,
            features,
            explanation,
        }
    }
}

/// An alert event of a device: a transition of a rule with a lifecycle, or an alert
/// row of a query without one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// `raised`, `escalated`, `cleared`, or `alert` for an alert row.
    pub event: String,
    /// The rule or query.
    pub rule: String,
    /// The state after it (`None` for an alert row).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Health>,
    /// The alert (episode) id.
    pub alert_id: String,
    /// The triggering window's end.
    pub window_end: Timestamp,
    /// Its score.
    pub score: Option<f64>,
    /// Why, when the rule selects an explanation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
}

/// A device in the fleet list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceSummary {
    /// Device id.
    pub device: String,
    /// The state shown.
    pub state: Shown,
    /// Labels (`site`, `line`) when its rows carry them.
    pub labels: BTreeMap<String, String>,
    /// The latest window's score.
    pub score: Option<f64>,
    /// The latest window's end (event time).
    pub last_seen: Option<Timestamp>,
}

/// A device in full: [`DeviceSummary`] plus its health record, latest window, recent
/// windows and alert history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceDetail {
    /// The summary's fields.
    #[serde(flatten)]
    pub summary: DeviceSummary,
    /// The engine's latest health record of it (as on the retained state topic).
    pub health: Option<DeviceState>,
    /// The latest window in full (features, explanation).
    pub latest: Option<WindowView>,
    /// The latest alert event's window in full.
    pub latest_alert: Option<WindowView>,
    /// Recent windows, oldest first (at most [`WINDOWS`]).
    pub windows: Vec<WindowPoint>,
    /// Alert events, oldest first (at most [`HISTORY`]).
    pub history: Vec<HistoryEntry>,
}

/// A query as `/api/queries` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryView {
    /// Query name.
    pub name: String,
    /// Source table and its topic filter.
    pub sources: Vec<Endpoint>,
    /// Sink table and its topic template.
    pub sinks: Vec<Endpoint>,
    /// The models it calls.
    pub models: Vec<String>,
    /// Its sink's alert lifecycle thresholds, when it has one.
    pub lifecycle: Option<Thresholds>,
}

/// A source or sink table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    /// Table name.
    pub name: String,
    /// Its connector (`mqtt`, `webhook`, ...).
    pub connector: String,
    /// Its topic filter (source) or template (sink).
    pub topic: String,
}

/// A lifecycle's score thresholds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thresholds {
    /// The score column judged.
    pub score: String,
    /// Enters `warning` at or above.
    pub warning_at: f64,
    /// Escalates to `alarm` at or above.
    pub alarm_at: Option<f64>,
    /// Counts as normal below.
    pub clear_below: f64,
}

impl QueryView {
    /// Every query of `p`.
    pub fn of_pipeline(p: &Pipeline) -> Vec<QueryView> {
        let lifecycles = p.lifecycles();
        p.query_infos()
            .into_iter()
            .map(|q| QueryView {
                sources: p
                    .sources()
                    .iter()
                    .filter(|s| s.name == q.source)
                    .map(|s| Endpoint {
                        name: s.name.clone(),
                        connector: s.connector.connector().to_string(),
                        topic: s.topic_filter.clone(),
                    })
                    .collect(),
                sinks: p
                    .sinks()
                    .iter()
                    .filter(|s| s.name == q.sink)
                    .map(|s| Endpoint {
                        name: s.name.clone(),
                        connector: s.connector.connector().to_string(),
                        topic: s.topic.as_str().to_string(),
                    })
                    .collect(),
                lifecycle: lifecycles.get(&q.name).map(|l| Thresholds {
                    score: l.score_column.clone(),
                    warning_at: l.warning_at,
                    alarm_at: l.alarm_at,
                    clear_below: l.clear_below,
                }),
                models: q.models,
                name: q.name,
            })
            .collect()
    }
}

#[derive(Default)]
struct Device {
    labels: BTreeMap<String, String>,
    health: Option<DeviceState>,
    score: Option<f64>,
    last_seen: Option<Timestamp>,
    /// Wall clock (ms) of the latest news of it, for `offline`.
    heard: i64,
    windows: VecDeque<WindowPoint>,
    latest: Option<WindowView>,
    latest_alert: Option<WindowView>,
    history: VecDeque<HistoryEntry>,
    /// Sequence number of its latest change.
    seq: u64,
    /// The state shown as of `seq`, to see time alone change it (offline, a silence
    /// running out).
    shown: Option<Shown>,
}

impl Device {
    fn shown(&self, now: i64, offline_ms: i64) -> Shown {
        let h = self.health.as_ref();
        if h.and_then(|h| h.silenced_until)
            .is_some_and(|u| u.as_millis() > now)
        {
            return Shown::Silenced;
        }
        // Its connector reports it offline (a Sparkplug death), or nothing came for long.
        if h.and_then(|h| h.offline_since).is_some() || now - self.heard > offline_ms {
            return Shown::Offline;
        }
        match h.map(|h| h.state) {
            Some(Health::Alarm) => Shown::Alarm,
            Some(Health::Warning) => Shown::Warning,
            _ => Shown::Ok,
        }
    }

    fn take_labels(&mut self, features: &Map<String, Value>) {
        for k in LABELS {
            if let Some(Value::String(v)) = features.get(k) {
                if self.labels.get(k) != Some(v) {
                    self.labels.insert(k.to_string(), v.clone());
                }
            }
        }
    }

    fn window(&mut self, view: WindowView) {
        if self.windows.len() == WINDOWS {
            self.windows.pop_front();
        }
        self.windows.push_back(WindowPoint {
            window_start: view.window_start,
            window_end: view.window_end,
            score: view.score,
        });
        self.score = view.score;
        if self.last_seen.is_none_or(|t| view.window_end >= t) {
            self.last_seen = Some(view.window_end);
        }
        self.latest = Some(view);
    }

    fn event(&mut self, e: HistoryEntry, window: WindowView) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(e);
        self.latest_alert = Some(window);
    }

    fn summary(&self, id: &str, now: i64, offline_ms: i64) -> DeviceSummary {
        DeviceSummary {
            device: id.to_string(),
            state: self.shown(now, offline_ms),
            labels: self.labels.clone(),
            score: self.score,
            last_seen: self.last_seen,
        }
    }
}

struct State {
    devices: BTreeMap<String, Device>,
    max_devices: usize,
    untracked: u64,
    seq: u64,
    offline_ms: i64,
    queries: Vec<QueryView>,
}

impl State {
    /// The device, created when there is room; `None` (counted) when the fleet is full.
    fn device(&mut self, id: &str, now: i64) -> Option<&mut Device> {
        if !self.devices.contains_key(id) {
            if self.devices.len() >= self.max_devices {
                self.untracked += 1;
                return None;
            }
            self.devices.insert(id.to_string(), Device::default());
        }
        self.seq += 1;
        let seq = self.seq;
        let d = self.devices.get_mut(id).expect("inserted");
        d.seq = seq;
        d.heard = now;
        Some(d)
    }

    fn settle(&mut self, id: &str, now: i64) {
        let offline = self.offline_ms;
        if let Some(d) = self.devices.get_mut(id) {
            d.shown = Some(d.shown(now, offline));
        }
    }

    fn apply(&mut self, o: &Output, now: i64) {
        match o {
            Output::Alert { alert, .. } => {
                let Some(d) = self.device(&alert.device, now) else {
                    return;
                };
                d.take_labels(&alert.features);
                let view = view_of(alert);
                d.window(view.clone());
                d.event(
                    HistoryEntry {
                        event: "alert".into(),
                        rule: alert.query.clone(),
                        state: None,
                        alert_id: alert.alert_id.clone(),
                        window_end: alert.window_end,
                        score: alert.score,
                        explanation: view.explanation.clone(),
                    },
                    view,
                );
                self.settle(&alert.device, now);
            }
            Output::Transition { message: m, .. } => {
                let Some(d) = self.device(&m.device, now) else {
                    return;
                };
                let last = m.windows.last();
                let window = WindowView::of(
                    &m.rule,
                    m.window_start,
                    m.window_end,
                    m.score,
                    last.map_or(&Map::new(), |w| &w.features),
                );
                d.take_labels(&window.features);
                let event = serde_json::to_value(m.transition)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                d.event(
                    HistoryEntry {
                        event,
                        rule: m.rule.clone(),
                        state: Some(m.state),
                        alert_id: m.alert_id.clone(),
                        window_end: m.window_end,
                        score: m.score,
                        explanation: m.explanation.clone().or(window.explanation.clone()),
                    },
                    window,
                );
                self.settle(&m.device, now);
            }
            Output::State { state, .. } => {
                let Some(d) = self.device(&state.device, now) else {
                    return;
                };
                d.health = Some(state.clone());
                self.settle(&state.device, now);
            }
            // Aggregate rows and dead letters say nothing of a device's health.
            _ => {}
        }
    }

    fn observe(&mut self, w: &Alert, now: i64) {
        let Some(d) = self.device(&w.device, now) else {
            return;
        };
        d.take_labels(&w.features);
        d.window(view_of(w));
        self.settle(&w.device, now);
    }

    /// Stamps the devices whose shown state time alone changed (offline, a silence run
    /// out), so live views hear of it.
    fn sweep(&mut self, now: i64) {
        let offline = self.offline_ms;
        for d in self.devices.values_mut() {
            let s = d.shown(now, offline);
            if d.shown != Some(s) {
                self.seq += 1;
                d.seq = self.seq;
                d.shown = Some(s);
            }
        }
    }
}

fn view_of(a: &Alert) -> WindowView {
    WindowView::of(&a.query, a.window_start, a.window_end, a.score, &a.features)
}

/// Wall clock, ms.
fn now_ms() -> i64 {
    Timestamp::now().as_millis()
}

/// The devices changed since a sequence number ([`Fleet::changes`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Changes {
    /// The fleet's sequence number now: ask again from it.
    pub seq: u64,
    /// The devices changed, in id order.
    pub devices: Vec<DeviceSummary>,
}

/// See the module documentation. Cheap to clone (shared).
#[derive(Clone)]
pub struct Fleet(Arc<Mutex<State>>);

impl Fleet {
    /// An empty fleet keeping at most `max_devices` devices.
    pub fn new(max_devices: usize) -> Self {
        Fleet(Arc::new(Mutex::new(State {
            devices: BTreeMap::new(),
            max_devices,
            untracked: 0,
            seq: 0,
            offline_ms: OFFLINE_AFTER.as_millis() as i64,
            queries: Vec::new(),
        })))
    }

    /// A device not heard from for `after` shows as `offline` (default [`OFFLINE_AFTER`]).
    pub fn offline_after(self, after: Duration) -> Self {
        self.lock().offline_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// Describes the pipeline's queries for `/api/queries`.
    pub fn describe(&self, p: &Pipeline) {
        self.lock().queries = QueryView::of_pipeline(p);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves at worst one device half-updated:
        // still worth showing.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one output of the pipeline into account.
    pub fn apply(&self, o: &Output) {
        self.lock().apply(o, now_ms());
    }

    /// Takes one scored window of a rule with a lifecycle into account.
    pub fn observe(&self, window: &Alert) {
        self.lock().observe(window, now_ms());
    }

    /// The engine's window observer feeding this fleet (set it as
    /// [`forewarn_engine::EngineConfig::window_observer`]).
    pub fn window_observer(&self) -> WindowObserver {
        let f = self.clone();
        WindowObserver::new(move |w| f.observe(w))
    }

    /// A sender for the service's output tap (`forewarn_service::mqtt::start`'s `tap`):
    /// a task takes each output into the fleet. Needs a Tokio runtime.
    pub fn tap(&self) -> mpsc::Sender<Output> {
        let (tx, mut rx) = mpsc::channel::<Output>(4096);
        let f = self.clone();
        tokio::spawn(async move {
            while let Some(o) = rx.recv().await {
                f.apply(&o);
            }
        });
        tx
    }

    /// The queries described.
    pub fn queries(&self) -> Vec<QueryView> {
        self.lock().queries.clone()
    }

    /// Every device, in id order, and the sequence number to follow changes from.
    pub fn devices(&self) -> (u64, Vec<DeviceSummary>) {
        let now = now_ms();
        let mut st = self.lock();
        st.sweep(now);
        let off = st.offline_ms;
        let list = st
            .devices
            .iter()
            .map(|(id, d)| d.summary(id, now, off))
            .collect();
        (st.seq, list)
    }

    /// Devices not kept because the fleet was full (counted once per output about them).
    pub fn untracked(&self) -> u64 {
        self.lock().untracked
    }

    /// One device in full.
    pub fn device(&self, id: &str) -> Option<DeviceDetail> {
        let now = now_ms();
        let st = self.lock();
        let d = st.devices.get(id)?;
        Some(DeviceDetail {
            summary: d.summary(id, now, st.offline_ms),
            health: d.health.clone(),
            latest: d.latest.clone(),
            latest_alert: d.latest_alert.clone(),
            windows: d.windows.iter().copied().collect(),
            history: d.history.iter().cloned().collect(),
        })
    }

    /// The devices changed after sequence number `since`.
    pub fn changes(&self, since: u64) -> Changes {
        let now = now_ms();
        let mut st = self.lock();
        st.sweep(now);
        let off = st.offline_ms;
        let devices = st
            .devices
            .iter()
            .filter(|(_, d)| d.seq > since)
            .map(|(id, d)| d.summary(id, now, off))
            .collect();
        Changes {
            seq: st.seq,
            devices,
        }
    }
}

/// A change as the live stream sends it: `[device, state, score, last_seen_ms, labels]`
/// (an array, not an object: at 10,000 devices the keys would be most of the bytes).
pub(crate) fn delta_row(d: &DeviceSummary) -> Value {
    Value::Array(vec![
        Value::String(d.device.clone()),
        Value::String(d.state.as_str().into()),
        d.score
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        d.last_seen.map_or(Value::Null, |t| t.as_millis().into()),
        serde_json::to_value(&d.labels).unwrap_or(Value::Null),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn window(device: &str, end_s: i64, score: f64) -> Alert {
        let mut features = Map::new();
        features.insert("site".into(), json!("north"));
        features.insert("vibration_floor".into(), json!(end_s as f64 / 10.0));
        features.insert("explanation".into(), json!("vibration_floor 80%"));
        Alert {
            schema_version: 1,
            alert_id: format!("{device}-{end_s}"),
            query: "q".into(),
            device: device.into(),
            window_start: Timestamp::from_millis((end_s - 60) * 1000),
            window_end: Timestamp::from_millis(end_s * 1000),
            score: Some(score),
            model: None,
            features,
        }
    }

    #[test]
    fn keeps_a_bounded_ring_and_the_latest_window() {
        let f = Fleet::new(10);
        for i in 0..(WINDOWS as i64 + 5) {
            f.observe(&window("p1", 60 * (i + 1), i as f64));
        }
        let d = f.device("p1").unwrap();
        assert_eq!(d.windows.len(), WINDOWS);
        // The oldest five fell out.
        assert_eq!(d.windows[0].score, Some(5.0));
        assert_eq!(d.summary.score, Some((WINDOWS + 4) as f64));
        assert_eq!(d.summary.labels["site"], "north");
        let latest = d.latest.unwrap();
        assert_eq!(latest.explanation.as_deref(), Some("vibration_floor 80%"));
        assert!(!latest.features.contains_key("explanation"));
        assert_eq!(d.summary.state, Shown::Ok);
        assert_eq!(f.devices().1.len(), 1);
    }

    #[test]
    fn devices_beyond_the_limit_are_counted_not_kept() {
        let f = Fleet::new(2);
        for d in ["a", "b", "c", "c"] {
            f.observe(&window(d, 60, 0.1));
        }
        let (_, list) = f.devices();
        assert_eq!(
            list.iter().map(|d| d.device.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(f.untracked(), 2);
    }

    #[test]
    fn changes_follow_the_sequence_and_time_makes_devices_offline() {
        let f = Fleet::new(10);
        f.observe(&window("a", 60, 0.1));
        let (seq, _) = f.devices();
        assert!(f.changes(seq).devices.is_empty());
        f.observe(&window("b", 60, 0.2));
        let c = f.changes(seq);
        assert_eq!(c.devices.len(), 1);
        assert_eq!(c.devices[0].device, "b");
        // Heard of 0 ms ago, offline after 0 ms: time alone changes both.
        let f = f.offline_after(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        let c2 = f.changes(c.seq);
        assert_eq!(
            c2.devices
                .iter()
                .map(|d| (d.device.as_str(), d.state))
                .collect::<Vec<_>>(),
            [("a", Shown::Offline), ("b", Shown::Offline)]
        );
        assert!(f.changes(c2.seq).devices.is_empty());
    }

    /// A device its connector reports offline shows `offline` at once, and its state
    /// again once it is back.
    #[test]
    fn a_device_reported_offline_shows_offline_until_it_is_back() {
        let f = Fleet::new(10);
        f.observe(&window("a", 60, 1.5));
        let mut state = DeviceState::new("a", Timestamp::from_millis(60_000));
        state.state = Health::Warning;
        state.offline_since = Some(Timestamp::from_millis(1));
        let topic = "forewarn/state/a".to_string();
        f.apply(&Output::State {
            topic: topic.clone(),
            state: state.clone(),
        });
        assert_eq!(f.devices().1[0].state, Shown::Offline);
        state.offline_since = None;
        f.apply(&Output::State { topic, state });
        assert_eq!(f.devices().1[0].state, Shown::Warning);
    }

    #[test]
    fn delta_rows_are_compact_arrays() {
        let f = Fleet::new(10);
        f.observe(&window("a", 60, 1.5));
        let (_, list) = f.devices();
        assert_eq!(
            delta_row(&list[0]),
            json!(["a", "ok", 1.5, 60_000, {"site": "north"}])
        );
    }
}
