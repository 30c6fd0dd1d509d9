//! Replaying a recorded Sparkplug B session through a `connector = 'sparkplug'` source:
//! JSON lines `{"topic": "spBv1.0/...", "payload": "<base64 of the protobuf bytes>"}`, in
//! the order they arrived. Each goes through the source's [`Session`] as live input
//! does (births, aliases, sequence numbers, deaths); rebirth requests cannot be sent
//! to a recording and are only logged.

use std::io::BufRead;
use std::path::Path;

use forewarn_connect::sparkplug::{Action, Session, SparkplugSource};
use forewarn_engine::{Pipeline, PipelineHandle};

use crate::replay::ReplayError;

/// The Sparkplug source `source` (or the only source) of `pipeline`, with a fresh session.
pub(crate) fn session_of(pipeline: &Pipeline, source: Option<&str>) -> Option<(String, Session)> {
    let s = pipeline
        .sources()
        .iter()
        .find(|s| source.is_none_or(|n| n == s.name))?;
    let settings = s.connector.get::<SparkplugSource>()?.clone();
    let columns: Vec<String> = s.schema.fields().iter().map(|f| f.name().clone()).collect();
    let time = (!s.processing_time).then_some(s.event_time.as_str());
    Some((s.name.clone(), Session::new(settings, &columns, time)))
}

/// Pushes every recorded message of `data` through `session` into source `name`.
pub(crate) async fn replay(
    handle: &PipelineHandle,
    name: &str,
    mut session: Session,
    data: &Path,
) -> Result<(), ReplayError> {
    let file = std::fs::File::open(data)
        .map_err(|e| ReplayError::Source(format!("{}: {e}", data.display())))?;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let bad = |why: String| ReplayError::Source(format!("{}:{}: {why}", data.display(), i + 1));
        let line = line.map_err(|e| bad(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let (Some(topic), Some(payload)) = (v["topic"].as_str(), v["payload"].as_str()) else {
            return Err(bad(
                "expected {\"topic\": \"spBv1.0/...\", \"payload\": \"<base64>\"}".into(),
            ));
        };
        let bytes = base64(payload).ok_or_else(|| bad("payload is not base64".into()))?;
        for action in session.handle(topic, &bytes, 0) {
            match action {
                Action::Rows(rows) => handle.push_readings_to(name, Box::new(rows)).await?,
                Action::Reject { reason, detail } => {
                    let excerpt = payload.chars().take(256).collect();
                    handle.reject(name, topic, reason, detail, excerpt).await?
                }
                Action::Presence { device, online } => handle.presence(&device, online).await?,
                Action::Publish { topic, .. } => {
                    tracing::info!(%topic, "sparkplug replay: a live run would request a rebirth")
                }
            }
        }
    }
    Ok(())
}

/// Standard base64 (with or without padding), or `None`.
fn base64(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let s = s.trim().trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (k, c) in chunk.iter().enumerate() {
            n |= u32::from(digit(*c)?) << (18 - 6 * k);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_round_trips_known_vectors() {
        for (text, b64) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(
                super::base64(b64).as_deref(),
                Some(text.as_bytes()),
                "{b64}"
            );
        }
        assert_eq!(super::base64("\u{ff}\u{fe}"), None);
        assert_eq!(super::base64("Zm9vY"), None);
        assert_eq!(super::base64("+/8="), Some(vec![0xfb, 0xff]));
    }
}
