//! The read-only JSON API over the [`Fleet`], its live stream of changes, and the one
//! write: an operator command for a device.
//!
//! * `GET /api/queries`: each query with its source, sink, models and thresholds;
//! * `GET /api/devices`: `{"seq": N, "untracked": U, "devices": [DeviceSummary...]}`;
//! * `GET /api/devices/{id}`: a [`crate::fleet::DeviceDetail`] (404 for an unknown id);
//! * `GET /api/events?since=N`: server-sent events, one `delta` event per change
//!   batch: `{"seq": N, "u": [[device, state, score, last_seen_ms, labels], ...]}`;
//! * `POST /api/devices/{id}/command`: the command JSON of the MQTT command topic
//!   (`{"action": "acknowledge", "by": "..."}`, ...), handed to
//!   [`PipelineHandle::command`]; refused (403) when the listener has no bearer token.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::fleet::{delta_row, Fleet};
use crate::AppState;

/// How often the live stream looks for changes: changes within it go in one event.
pub const UPDATE_EVERY: Duration = Duration::from_millis(500);

fn fleet(st: &AppState) -> &Fleet {
    st.0.fleet.as_ref().expect("routes exist only with a fleet")
}

fn error(code: StatusCode, error: &str, detail: String) -> Response {
    (code, Json(json!({"error": error, "detail": detail}))).into_response()
}

pub(crate) async fn queries(State(st): State<AppState>) -> Response {
    Json(fleet(&st).queries()).into_response()
}

pub(crate) async fn devices(State(st): State<AppState>) -> Response {
    let f = fleet(&st);
    let (seq, devices) = f.devices();
    Json(json!({"seq": seq, "untracked": f.untracked(), "devices": devices})).into_response()
}

pub(crate) async fn device(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    match fleet(&st).device(&id) {
        Some(d) => Json(d).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no device '{id}' has been seen"),
        ),
    }
}

/// `?since=N` (and `?token=`, read by the authentication layer).
#[derive(Deserialize)]
pub(crate) struct Since {
    #[serde(default)]
    since: u64,
}

pub(crate) async fn events(State(st): State<AppState>, Query(q): Query<Since>) -> Response {
    let f = fleet(&st).clone();
    let mut tick = tokio::time::interval(UPDATE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream =
        futures::stream::unfold((f, q.since, tick), |(f, mut since, mut tick)| async move {
            loop {
                tick.tick().await;
                let c = f.changes(since);
                since = c.seq;
                if !c.devices.is_empty() {
                    let rows: Vec<_> = c.devices.iter().map(delta_row).collect();
                    let data = json!({"seq": c.seq, "u": rows}).to_string();
                    let ev = Event::default().event("delta").data(data);
                    return Some((Ok::<_, Infallible>(ev), (f, since, tick)));
                }
            }
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub(crate) async fn command(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if st.0.token.is_none() {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "commands need a bearer token: configure bearer_token_file or bearer_token_env in [http]".into(),
        );
    }
    // The engine's own check, so what it would dead-letter is refused here.
    if let Err(e) = forewarn_alerts::Command::parse(&body) {
        return error(StatusCode::BAD_REQUEST, "bad_command", e);
    }
    // Only devices a rule with a lifecycle has seen take commands.
    if fleet(&st).device(&id).is_none_or(|d| d.health.is_none()) {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_device",
            format!("no rule with a lifecycle has seen device '{id}'"),
        );
    }
    match st.0.handle.command(&id, body.to_vec()).await {
        // The engine confirms on the device's state (or dead-letters what it cannot apply).
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({"status": "sent", "device": id})),
        )
            .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "stopped", e.to_string()),
    }
}
