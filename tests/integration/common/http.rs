//! A small HTTP/1.1 server for webhook tests: answers scripted statuses and hands back
//! each request's head and body.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A request as the server read it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Request line and headers, header names in lower case.
    pub head: String,
    /// The body.
    pub body: String,
}

/// Starts a server on 127.0.0.1 answering `statuses` in turn (the last from then on);
/// returns its URL (`/hook`) and the requests.
pub async fn server(statuses: Vec<u16>) -> (String, mpsc::UnboundedReceiver<Request>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut i = 0;
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            // Keep-alive: several requests may come on one connection.
            loop {
                let Some(req) = read_request(&mut s).await else {
                    break;
                };
                let status = statuses[i.min(statuses.len() - 1)];
                i += 1;
                let _ = tx.send(req);
                let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                if s.write_all(reply.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
    });
    (url, rx)
}

async fn read_request(s: &mut tokio::net::TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                return Some(Request { head, body });
            }
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
