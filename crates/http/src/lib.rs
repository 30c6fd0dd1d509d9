//! Forewarn's operations endpoint: one HTTP listener serving
//!
//! * `/metrics`: the pipeline's counters and gauges in the Prometheus text exposition
//!   format, rendered by `metrics-exporter-prometheus` from a recorder the listener
//!   owns (no process-wide recorder is installed), set from
//!   [`PipelineHandle::stats`] at each scrape;
//! * `/healthz`: `200 {"status":"alive"}` while the process runs;
//! * `/readyz`: `200` when every check passes, `503` otherwise, with a JSON body
//!   listing each check and why it fails ([`Readiness`]).
//!
//! With a [`Fleet`] ([`HttpServer::fleet`]) it also serves the read-only JSON API
//! under `/api` (see [`api`]), its live stream of changes, operator commands, and the
//! device-health page at `/` (see [`page`]).
//!
//! With a bearer token every endpoint but `/healthz` and the page's static files
//! requires `Authorization: Bearer TOKEN` (the live stream `/api/events` also takes it
//! as `?token=`: a browser's `EventSource` cannot set headers); a listener on a
//! non-loopback address refuses to start without one.

pub mod api;
mod exporter;
pub mod fleet;
pub mod page;
mod ready;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use forewarn_engine::PipelineHandle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use fleet::Fleet;
pub use ready::{Check, Readiness, CHECKPOINT_STALE_INTERVALS};

/// Why the listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// A non-loopback address without a bearer token.
    #[error("refusing to listen on {0} without a bearer token: it is not a loopback address, so anyone on the network could read the endpoint; configure bearer_token_file or bearer_token_env in [http], or listen on 127.0.0.1")]
    NeedsToken(SocketAddr),
    /// The address cannot be bound.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The token file cannot be read.
    #[error("bearer_token_file {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token's environment variable is not set.
    #[error("bearer_token_env: the environment variable {0} is not set")]
    TokenEnv(String),
    /// The token is empty.
    #[error("the bearer token from {0} is empty")]
    EmptyToken(String),
}

/// Reads the bearer token from `file` or the environment variable `env` (at most one
/// is given; `None` when neither is). Surrounding white space (a file's newline) is
/// not part of it.
pub fn read_token(file: Option<&Path>, env: Option<&str>) -> Result<Option<String>, HttpError> {
    let (token, from) = match (file, env) {
        (Some(p), _) => (
            std::fs::read_to_string(p).map_err(|source| HttpError::TokenFile {
                path: p.to_path_buf(),
                source,
            })?,
            p.display().to_string(),
        ),
        (None, Some(v)) => (
            std::env::var(v).map_err(|_| HttpError::TokenEnv(v.to_string()))?,
            format!("${v}"),
        ),
        (None, None) => return Ok(None),
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(HttpError::EmptyToken(from));
    }
    Ok(Some(token))
}

/// A counter kept outside the engine (e.g. the MQTT outbox's drops), exported beside
/// the engine's.
#[derive(Clone)]
pub(crate) struct ExtraCounter {
    name: &'static str,
    help: &'static str,
    read: Arc<dyn Fn() -> u64 + Send + Sync>,
}

/// The listener, configured; [`HttpServer::start`] binds it.
pub struct HttpServer {
    handle: PipelineHandle,
    listen: SocketAddr,
    token: Option<String>,
    queries: Vec<String>,
    broker: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
    checkpoint_interval: Option<Duration>,
    extras: Vec<ExtraCounter>,
    fleet: Option<Fleet>,
}

impl HttpServer {
    /// A listener on `listen` exporting `handle`'s counters; no token, no readiness
    /// checks beyond `queries` (which fails until [`HttpServer::queries`] names some).
    pub fn new(handle: PipelineHandle, listen: SocketAddr) -> Self {
        HttpServer {
            handle,
            listen,
            token: None,
            queries: Vec::new(),
            broker: None,
            checkpoint_interval: None,
            extras: Vec::new(),
            fleet: None,
        }
    }

    /// Serves `fleet` as the JSON API under `/api` and the device-health page at `/`
    /// (feed it with [`Fleet::tap`] and [`Fleet::window_observer`]).
    pub fn fleet(mut self, fleet: Fleet) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// Requires `Authorization: Bearer TOKEN` on every endpoint but `/healthz`.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// The queries loaded: `/readyz` lists them and is not ready without one.
    pub fn queries<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.queries = names.into_iter().map(Into::into).collect();
        self
    }

    /// Whether the broker is connected: checked by `/readyz`, exported as
    /// `forewarn_broker_connected`.
    pub fn broker(mut self, connected: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.broker = Some(Arc::new(connected));
        self
    }

    /// Checkpointing is on with this interval: `/readyz` checks that input does not
    /// wait more than [`CHECKPOINT_STALE_INTERVALS`] intervals for a checkpoint and that
    /// the last attempt did not fail; `forewarn_checkpoint_age_seconds` is exported.
    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.checkpoint_interval = Some(interval);
        self
    }

    /// A counter kept outside the engine, read at each scrape. `name` must follow
    /// Prometheus conventions (`forewarn_..._total`).
    pub fn counter(
        mut self,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Self {
        self.extras.push(ExtraCounter {
            name,
            help,
            read: Arc::new(read),
        });
        self
    }

    /// Binds the address and serves until [`RunningHttp::stop`]. Refuses a non-loopback
    /// address without a token ([`HttpError::NeedsToken`]).
    pub async fn start(self) -> Result<RunningHttp, HttpError> {
        if !self.listen.ip().is_loopback() && self.token.is_none() {
            return Err(HttpError::NeedsToken(self.listen));
        }
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .map_err(|source| HttpError::Bind {
                addr: self.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| HttpError::Bind {
            addr: self.listen,
            source,
        })?;
        let now = Instant::now();
        let tracker = self
            .checkpoint_interval
            .map(|i| Mutex::new(ready::CheckpointTracker::new(i, now)));
        let exporter = exporter::Exporter::new(&self.extras);
        // A second listener on one pipeline exports no latencies: the first has them.
        if !self.handle.attach_latency(exporter.latency()) {
            tracing::warn!(
                "latency histograms already attached to this pipeline: not exported here"
            );
        }
        let inner = Arc::new(Inner {
            exporter,
            handle: self.handle,
            token: self.token.map(String::into_bytes),
            queries: self.queries,
            broker: self.broker,
            tracker,
            extras: self.extras,
            fleet: self.fleet,
        });
        // Checkpoints are seen between scrapes too, so their age does not depend on
        // how often /readyz is asked.
        let sampler = self.checkpoint_interval.map(|i| {
            let inner = inner.clone();
            let every = (i / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    inner.observe();
                }
            })
        });
        let has_fleet = inner.fleet.is_some();
        let state = AppState(inner);
        let mut protected = Router::new()
            .route("/metrics", get(metrics))
            .route("/readyz", get(readyz));
        if has_fleet {
            protected = protected
                .route("/api/queries", get(api::queries))
                .route("/api/devices", get(api::devices))
                .route("/api/devices/:id", get(api::device))
                .route("/api/devices/:id/command", post(api::command))
                .route("/api/events", get(api::events));
        }
        let mut app = protected
            .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth))
            // Liveness stays open: a supervisor needs no token to see the process runs.
            .route("/healthz", get(healthz));
        if has_fleet {
            // The page's static files hold no data: they load without a token and ask
            // for it when the API answers 401.
            app = app.merge(page::routes());
        }
        let app = app.with_state(state);
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "http listener failed");
            }
        });
        tracing::info!(%addr, page = has_fleet, "http listener: /metrics, /healthz, /readyz");
        Ok(RunningHttp {
            addr,
            shutdown: Some(tx),
            server: Some(server),
            sampler,
        })
    }
}

/// A listener serving; stopped by [`RunningHttp::stop`] or when dropped.
pub struct RunningHttp {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    sampler: Option<JoinHandle<()>>,
}

impl RunningHttp {
    /// The address bound (with the port chosen when `listen` gave port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in progress finish (at most one second: a
    /// scraper's idle keep-alive connection does not hold the shutdown), and returns.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut server) = self.server.take() {
            if tokio::time::timeout(Duration::from_secs(1), &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
    }
}

impl Drop for RunningHttp {
    fn drop(&mut self) {
        if let Some(s) = self.sampler.take() {
            s.abort();
        }
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }
}

struct Inner {
    handle: PipelineHandle,
    exporter: exporter::Exporter,
    token: Option<Vec<u8>>,
    queries: Vec<String>,
    broker: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
    tracker: Option<Mutex<ready::CheckpointTracker>>,
    extras: Vec<ExtraCounter>,
    fleet: Option<Fleet>,
}

impl Inner {
    /// Feeds the checkpoint tracker the counters now; returns the checkpoint's age.
    fn observe(&self) -> Option<f64> {
        let t = self.tracker.as_ref()?;
        let now = Instant::now();
        let mut t = t.lock().expect("tracker lock");
        t.observe(&self.handle.stats(), now);
        Some(t.age(now))
    }

    fn readiness(&self) -> Readiness {
        let mut checks = vec![Check {
            name: "queries",
            ok: !self.queries.is_empty(),
            detail: if self.queries.is_empty() {
                "no query loaded".into()
            } else {
                format!("{} loaded: {}", self.queries.len(), self.queries.join(", "))
            },
        }];
        if let Some(b) = &self.broker {
            let up = b();
            checks.push(Check {
                name: "broker",
                ok: up,
                detail: if up { "connected" } else { "not connected" }.into(),
            });
        }
        if let Some(t) = &self.tracker {
            self.observe();
            checks.push(t.lock().expect("tracker lock").check(Instant::now()));
        }
        Readiness::of(checks)
    }
}

#[derive(Clone)]
struct AppState(Arc<Inner>);

/// Equal without an early exit: the time taken tells at most the token's length.
fn same_token(given: &[u8], token: &[u8]) -> bool {
    let mut diff = given.len() ^ token.len();
    for (i, t) in token.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ t);
    }
    diff == 0
}

/// The `token` query parameter's value (percent-decoded), for the live stream.
fn query_token(req: &Request) -> Option<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct T {
        token: Option<String>,
    }
    let t = axum::extract::Query::<T>::try_from_uri(req.uri()).ok()?.0;
    t.token.map(String::into_bytes)
}

/// The credentials of an `Authorization: Bearer TOKEN` header; the scheme's name is
/// case-insensitive (RFC 9110, 11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
}

async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.0.token {
        // EventSource cannot set headers: the live stream alone takes `?token=`.
        let from_query = (req.uri().path() == "/api/events")
            .then(|| query_token(&req))
            .flatten();
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()))
            .or(from_query.as_deref());
        let detail = match given {
            None => "missing bearer token: send Authorization: Bearer TOKEN",
            Some(g) if !same_token(g, token) => "wrong bearer token",
            Some(_) => return next.run(req).await,
        };
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(serde_json::json!({"error": "unauthorized", "detail": detail})),
        )
            .into_response();
    }
    next.run(req).await
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "alive"}))
}

async fn readyz(State(st): State<AppState>) -> Response {
    let r = st.0.readiness();
    let code = if r.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r)).into_response()
}

async fn metrics(State(st): State<AppState>) -> Response {
    let inner = &st.0;
    let age = inner.observe();
    let broker = inner.broker.as_ref().map(|b| b());
    let text = inner
        .exporter
        .render(&inner.handle.stats(), &inner.extras, broker, age);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_equal_only_when_equal() {
        assert!(same_token(b"s3cret", b"s3cret"));
        assert!(!same_token(b"s3cre", b"s3cret"));
        assert!(!same_token(b"s3cretx", b"s3cret"));
        assert!(!same_token(b"S3cret", b"s3cret"));
        assert!(!same_token(b"", b"s3cret"));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_is_not() {
        assert_eq!(bearer(b"Bearer s3cret"), Some(&b"s3cret"[..]));
        assert_eq!(bearer(b"bearer s3cret"), Some(&b"s3cret"[..]));
        assert_eq!(bearer(b"BEARER S3cret"), Some(&b"S3cret"[..]));
        assert_eq!(bearer(b"Basic s3cret"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearers3cret"), None);
    }
}
