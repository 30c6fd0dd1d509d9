//! Posting a webhook sink's outputs: one JSON body per request, retried with backoff.

use std::time::Duration;

use super::{TokenSource, WebhookSink};

/// A webhook that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// `bearer_token_file` cannot be read.
    #[error("webhook token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `bearer_token_env` names a variable that is not set.
    #[error("webhook token: environment variable {0} is not set")]
    TokenEnv(String),
    /// The token is empty, or has a line break or another character a header cannot
    /// carry.
    #[error("webhook token from {0}: {1}")]
    BadToken(String, &'static str),
    /// The HTTP client cannot be built.
    #[error("webhook client: {0}")]
    Client(String),
}

/// What became of one output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The server answered 2xx.
    Delivered {
        /// Requests it took.
        attempts: u32,
    },
    /// The server refused it for good (a 4xx other than 408 and 429: a bad token, a
    /// bad URL, a body it does not take; or a redirect); not retried.
    Refused {
        /// The HTTP status.
        status: u16,
        /// Requests it took.
        attempts: u32,
    },
    /// Every attempt failed (no connection, timeout, 5xx, 408, 429).
    GaveUp {
        /// Requests it took.
        attempts: u32,
        /// The last failure.
        error: String,
    },
}

/// Posts to one webhook sink's URL.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    retries: Option<u32>,
    backoff: Duration,
}

/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl WebhookClient {
    /// A client for `sink`, with its token read now (a missing token is an error at
    /// start, not a 401 per alert later).
    pub fn new(sink: &WebhookSink) -> Result<Self, WebhookError> {
        let token = match &sink.token {
            None => None,
            Some(TokenSource::File(path)) => {
                let t =
                    std::fs::read_to_string(path).map_err(|source| WebhookError::TokenFile {
                        path: path.clone(),
                        source,
                    })?;
                Some(checked_token(&t, || format!("file {}", path.display()))?)
            }
            Some(TokenSource::Env(var)) => match std::env::var(var) {
                Ok(t) => Some(checked_token(&t, || format!("environment variable {var}"))?),
                Err(_) => return Err(WebhookError::TokenEnv(var.clone())),
            },
        };
        let client = reqwest::Client::builder()
            .timeout(sink.timeout)
            // A redirect is answered as a refusal: following it could send the token
            // elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("forewarn/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        Ok(WebhookClient {
            client,
            url: sink.url.clone(),
            token,
            retries: sink.retries,
            backoff: Duration::from_secs(1),
        })
    }

    /// The first wait between attempts (doubling each time, at most 30 s); 1 s unless
    /// changed.
    pub fn with_backoff(mut self, first: Duration) -> Self {
        self.backoff = first;
        self
    }

    /// Posts `body` (JSON), naming the output's topic in the `X-Forewarn-Topic` header,
    /// retrying what may succeed later.
    pub async fn post(&self, topic: &str, body: Vec<u8>) -> Delivery {
        let mut wait = self.backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut req = self
                .client
                .post(&self.url)
                .header("content-type", "application/json")
                .header("x-forewarn-topic", topic)
                .body(body.clone());
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let error = match req.send().await {
                Ok(r) if r.status().is_success() => return Delivery::Delivered { attempts },
                Ok(r) => {
                    let status = r.status().as_u16();
                    let transient = status >= 500 || status == 408 || status == 429;
                    if !transient {
                        return Delivery::Refused { status, attempts };
                    }
                    format!("HTTP {status}")
                }
                Err(e) => with_causes(&e),
            };
            if self.retries.is_some_and(|r| attempts > r) {
                return Delivery::GaveUp { attempts, error };
            }
            tracing::warn!(url = %self.url, attempt = attempts, %error, "webhook: retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_BACKOFF);
        }
    }
}

/// The token as a header can carry it: trimmed, not empty, one line of visible ASCII.
fn checked_token(raw: &str, from: impl Fn() -> String) -> Result<String, WebhookError> {
    let t = raw.trim();
    if t.is_empty() {
        return Err(WebhookError::BadToken(from(), "it is empty"));
    }
    if !t.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return Err(WebhookError::BadToken(
            from(),
            "it has a line break or a character an HTTP header cannot carry",
        ));
    }
    Ok(t.to_string())
}

/// An error and its causes, `: `-separated (reqwest's own text says only "error
/// sending request").
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

impl crate::SinkDelivery for WebhookClient {
    fn deliver<'a>(&'a self, topic: &'a str, payload: Vec<u8>) -> crate::Delivering<'a> {
        Box::pin(async move {
            match self.post(topic, payload).await {
                Delivery::Delivered { .. } => crate::Outcome::Delivered,
                Delivery::Refused { status, attempts } => crate::Outcome::Failed(format!(
                    "refused with HTTP {status} ({attempts} attempts)"
                )),
                Delivery::GaveUp { attempts, error } => {
                    crate::Outcome::Failed(format!("gave up after {attempts} attempts: {error}"))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server answering the given statuses in turn (the last one from then on), and
    /// handing back each request's head and body.
    async fn server(statuses: Vec<u16>) -> (String, tokio::sync::mpsc::Receiver<(String, String)>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut i = 0;
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = s.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break (head.to_string(), body.to_string());
                        }
                    }
                };
                let status = statuses[i.min(statuses.len() - 1)];
                i += 1;
                let _ = tx.send((head, body)).await;
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        (url, rx)
    }

    fn sink(url: &str, retries: u32) -> WebhookSink {
        WebhookSink {
            url: url.into(),
            token: None,
            timeout: Duration::from_secs(5),
            retries: Some(retries),
        }
    }

    #[tokio::test]
    async fn posts_json_with_topic_and_token() {
        let (url, mut rx) = server(vec![204]).await;
        std::env::set_var("FOREWARN_TEST_HOOK_TOKEN", "s3cret\n");
        let mut s = sink(&url, 0);
        s.token = Some(TokenSource::Env("FOREWARN_TEST_HOOK_TOKEN".into()));
        let c = WebhookClient::new(&s).unwrap();
        let d = c
            .post("alerts/pump-1", br#"{"state":"alarm"}"#.to_vec())
            .await;
        assert_eq!(d, Delivery::Delivered { attempts: 1 });
        let (head, body) = rx.recv().await.unwrap();
        assert!(head.starts_with("POST /hook HTTP/1.1"), "{head}");
        let head = head.to_ascii_lowercase();
        assert!(head.contains("authorization: bearer s3cret\r\n"), "{head}");
        assert!(head.contains("x-forewarn-topic: alerts/pump-1"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert_eq!(body, r#"{"state":"alarm"}"#);
    }

    #[tokio::test]
    async fn retries_server_errors_and_stops_at_refusals() {
        let (url, _rx) = server(vec![503, 500, 200]).await;
        let c = WebhookClient::new(&sink(&url, 5))
            .unwrap()
            .with_backoff(Duration::from_millis(10));
        assert_eq!(
            c.post("t", b"{}".to_vec()).await,
            Delivery::Delivered { attempts: 3 }
        );

        let (url, _rx) = server(vec![503]).await;
        let c = WebhookClient::new(&sink(&url, 2))
            .unwrap()
            .with_backoff(Duration::from_millis(10));
        assert!(matches!(
            c.post("t", b"{}".to_vec()).await,
            Delivery::GaveUp { attempts: 3, .. }
        ));

        let (url, _rx) = server(vec![401, 200]).await;
        let c = WebhookClient::new(&sink(&url, 5)).unwrap();
        assert_eq!(
            c.post("t", b"{}".to_vec()).await,
            Delivery::Refused {
                status: 401,
                attempts: 1
            }
        );
    }

    #[tokio::test]
    async fn no_server_is_given_up_on_after_the_retries() {
        // A port nothing listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        drop(l);
        let c = WebhookClient::new(&sink(&url, 1))
            .unwrap()
            .with_backoff(Duration::from_millis(10));
        match c.post("t", b"{}".to_vec()).await {
            Delivery::GaveUp { attempts: 2, error } => {
                assert!(
                    error.to_lowercase().contains("connect"),
                    "the cause is named: {error}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_token_is_an_error_at_start() {
        let mut s = sink("http://127.0.0.1:9/x", 0);
        s.token = Some(TokenSource::Env("FOREWARN_TEST_UNSET_VARIABLE".into()));
        assert!(matches!(
            WebhookClient::new(&s),
            Err(WebhookError::TokenEnv(_))
        ));
        s.token = Some(TokenSource::File("/nonexistent/token".into()));
        assert!(matches!(
            WebhookClient::new(&s),
            Err(WebhookError::TokenFile { .. })
        ));
    }
}
