//! Checkpoints: the pipeline's state in one file, written atomically.
//!
//! A file `ckpt-{seq}.fwc` holds: the magic `FWCKPT\0\x01`, the length of a JSON header,
//! the header (watermarks, sessions, counters, alert state machines, device health,
//! silences, unconfirmed outputs, and where each pane's state is), the panes' partial
//! aggregate state as Arrow IPC streams, and a SHA-256 of everything before it. It is
//! written to a temporary name, synced, renamed and the directory synced, so a crash
//! leaves either the previous checkpoint or the new one, never half of one; a file that
//! is damaged anyway (disk, copy) fails its checksum and the previous one is used.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use forewarn_alerts::DeviceState;
use forewarn_sql::CompiledQuery;
use forewarn_stream::{OperatorMeta, OperatorState, PaneState};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Output;

const MAGIC: &[u8; 8] = b"FWCKPT\0\x01";
/// Version of the checkpoint layout.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// Where checkpoints are kept: a local directory ([`DirStore`]) or storage every
/// worker can reach (the NATS object store in scale-out).
///
/// The calls block; the pipeline makes them from a blocking thread of the tokio
/// runtime (an implementation over an async client may use
/// `tokio::runtime::Handle::current().block_on`).
pub trait CheckpointStore: Send + Sync + std::fmt::Debug {
    /// Where the checkpoints are, for messages.
    fn location(&self) -> PathBuf;
    /// The name of checkpoint `seq`, for messages.
    fn name(&self, seq: u64) -> PathBuf {
        self.location().join(file_name(seq))
    }
    /// The sequence numbers of the checkpoints present, in any order.
    fn list(&self) -> Result<Vec<u64>, CheckpointError>;
    /// The bytes of checkpoint `seq`.
    fn read(&self, seq: u64) -> Result<Vec<u8>, CheckpointError>;
    /// Stores checkpoint `seq` durably and atomically: afterwards a reader sees either
    /// all of it or (after a crash during the call) the checkpoints before it.
    fn write(&self, seq: u64, bytes: &[u8]) -> Result<(), CheckpointError>;
    /// Removes checkpoint `seq`.
    fn remove(&self, seq: u64) -> Result<(), CheckpointError>;
}

/// Checkpoint files in a local directory, written to a temporary name, synced,
/// renamed, and the directory synced.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// Files in `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirStore { dir: dir.into() }
    }
}

impl CheckpointStore for DirStore {
    fn location(&self) -> PathBuf {
        self.dir.clone()
    }
    fn list(&self) -> Result<Vec<u64>, CheckpointError> {
        list(&self.dir).map(|v| v.iter().filter_map(|p| seq_of(p)).collect())
    }
    fn read(&self, seq: u64) -> Result<Vec<u8>, CheckpointError> {
        let path = self.dir.join(file_name(seq));
        std::fs::read(&path).map_err(|source| CheckpointError::Io { path, source })
    }
    fn write(&self, seq: u64, bytes: &[u8]) -> Result<(), CheckpointError> {
        write_file(&self.dir, seq, bytes)
    }
    fn remove(&self, seq: u64) -> Result<(), CheckpointError> {
        let path = self.dir.join(file_name(seq));
        std::fs::remove_file(&path).map_err(|source| CheckpointError::Io { path, source })
    }
}

/// Where and how often the pipeline checkpoints.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// Where checkpoints are kept.
    pub store: Arc<dyn CheckpointStore>,
    /// Time between checkpoints while input arrives.
    pub interval: Duration,
    /// A checkpoint is also taken once this many input messages wait for one (each is
    /// acknowledged to its source only after the checkpoint that covers it).
    pub max_unacked: usize,
    /// When input pauses this long with messages unacknowledged, checkpoint now (a
    /// broker that limits unacknowledged messages in flight then is not left waiting).
    pub idle: Duration,
    /// Checkpoint files kept (the newest first; older ones are the fallback if the
    /// newest is damaged).
    pub keep: usize,
    /// The consumer of the outputs confirms them with
    /// [`PipelineHandle::confirm_outputs`](crate::PipelineHandle::confirm_outputs)
    /// (e.g. once the broker acknowledged the publish); outputs not yet confirmed go
    /// into the checkpoint and are emitted again after a restart. Otherwise an output
    /// counts as delivered once it is in the output channel.
    pub confirm_outputs: bool,
    /// Unconfirmed outputs beyond which the pipeline stops taking input.
    pub max_unconfirmed: usize,
}

impl CheckpointConfig {
    /// Files in the directory `dir`; defaults: every 5 s, after 50 000 messages, after
    /// 100 ms of silence; keep 3.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_store(Arc::new(DirStore::new(dir)))
    }

    /// Checkpoints in `store`, with the defaults of [`CheckpointConfig::new`].
    pub fn with_store(store: Arc<dyn CheckpointStore>) -> Self {
        CheckpointConfig {
            store,
            interval: Duration::from_secs(5),
            max_unacked: 50_000,
            idle: Duration::from_millis(100),
            keep: 3,
            confirm_outputs: false,
            max_unconfirmed: 100_000,
        }
    }
}

/// Errors reading or writing checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The directory or a file could not be read or written.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file is damaged (bad magic, checksum, header or state).
    #[error("checkpoint {path} is damaged: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Every checkpoint in the store is damaged.
    #[error("no valid checkpoint in {dir}: {reasons}; move the files away to start without state")]
    NoneValid {
        /// The directory.
        dir: PathBuf,
        /// Each file's problem.
        reasons: String,
    },
    /// The checkpoint was written for different queries.
    #[error("checkpoint {path} does not fit the queries: {reason}; restore the query as it was, or move the checkpoint directory away to start without state")]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// Which query differs and how.
        reason: String,
    },
}

/// One query's state in a checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct QueryState {
    pub fingerprint: String,
    pub operator: OperatorState,
    pub lifecycle: Option<serde_json::Value>,
    /// What the sink's online detector learned of each device.
    pub detector: Option<serde_json::Value>,
}

/// Everything a checkpoint holds, in memory.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub seq: u64,
    pub queries: BTreeMap<String, QueryState>,
    pub states: BTreeMap<String, DeviceState>,
    pub silenced: BTreeMap<String, i64>,
    pub outbox: Vec<Output>,
    /// Input messages consumed over the pipeline's life (informational).
    pub inputs: u64,
    /// Devices admitted by each source (the `max_devices` limit).
    pub devices: BTreeMap<String, Vec<String>>,
    /// Where the input's connector resumes (see [`crate::ResumePoint`]).
    pub resume: crate::ResumePoint,
    /// State the connectors keep themselves, by source name (see
    /// [`crate::Pipeline::keep_connector_state`]).
    pub connectors: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    seq: u64,
    created: String,
    forewarn: String,
    inputs: u64,
    queries: BTreeMap<String, QueryHeader>,
    states: BTreeMap<String, DeviceState>,
    silenced: BTreeMap<String, i64>,
    outbox: Vec<Output>,
    #[serde(default)]
    devices: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    position: Option<u64>,
    #[serde(default)]
    released: Vec<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    connectors: BTreeMap<String, serde_json::Value>,
    /// (offset, length) of each IPC blob after the header.
    blobs: Vec<(u64, u64)>,
}

#[derive(Serialize, Deserialize)]
struct QueryHeader {
    fingerprint: String,
    meta: OperatorMeta,
    #[serde(default)]
    lifecycle: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detector: Option<serde_json::Value>,
    panes: Vec<PaneHeader>,
}

#[derive(Serialize, Deserialize)]
struct PaneHeader {
    start: i64,
    open: bool,
    blob: usize,
}

/// What identifies a query's state: its source columns, window, watermark and the
/// partial half of its plan (grouping and aggregate states). The final half (HAVING,
/// scoring, projection) may change between runs: it reads the same state.
pub(crate) fn fingerprint(q: &CompiledQuery) -> String {
    use datafusion::physical_plan::displayable;
    let mut h = Sha256::new();
    for part in [
        q.name.clone(),
        q.source.clone(),
        q.window.to_string(),
        format!("{:?}", q.watermark),
        format!("{:?}", q.watermark_key),
        format!("{:?}", q.session_keys),
        fields(&q.pane_schema),
        fields(&q.partial.schema()),
        displayable(q.partial.as_ref()).indent(true).to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn fields(s: &datafusion::arrow::datatypes::SchemaRef) -> String {
    s.fields()
        .iter()
        .map(|f| format!("{} {} {}", f.name(), f.data_type(), f.is_nullable()))
        .collect::<Vec<_>>()
        .join(",")
}

fn file_name(seq: u64) -> String {
    format!("ckpt-{seq:016}.fwc")
}

fn seq_of(p: &Path) -> Option<u64> {
    let n = p.file_name()?.to_str()?;
    n.strip_prefix("ckpt-")?.strip_suffix(".fwc")?.parse().ok()
}

/// Checkpoint files in `dir`, newest first.
pub(crate) fn list(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => {
            return Err(CheckpointError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut v: Vec<(u64, PathBuf)> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| seq_of(&p).map(|s| (s, p)))
        .collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(v.into_iter().map(|(_, p)| p).collect())
}

/// Serialises a snapshot to the file's bytes.
pub(crate) fn encode(s: &Snapshot) -> Result<Vec<u8>, String> {
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let mut queries = BTreeMap::new();
    for (name, q) in &s.queries {
        let mut panes = Vec::new();
        for p in &q.operator.panes {
            let mut w =
                StreamWriter::try_new(Vec::new(), &p.batch.schema()).map_err(|e| e.to_string())?;
            w.write(&p.batch).map_err(|e| e.to_string())?;
            w.finish().map_err(|e| e.to_string())?;
            panes.push(PaneHeader {
                start: p.start,
                open: p.open,
                blob: blobs.len(),
            });
            blobs.push(w.into_inner().map_err(|e| e.to_string())?);
        }
        queries.insert(
            name.clone(),
            QueryHeader {
                fingerprint: q.fingerprint.clone(),
                meta: q.operator.meta.clone(),
                lifecycle: q.lifecycle.clone(),
                detector: q.detector.clone(),
                panes,
            },
        );
    }
    let mut offset = 0u64;
    let spans = blobs
        .iter()
        .map(|b| {
            let span = (offset, b.len() as u64);
            offset += b.len() as u64;
            span
        })
        .collect();
    let header = Header {
        format: CHECKPOINT_FORMAT,
        seq: s.seq,
        created: forewarn_core::format_rfc3339(forewarn_core::duration_ms(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
        )),
        forewarn: env!("CARGO_PKG_VERSION").to_string(),
        inputs: s.inputs,
        queries,
        states: s.states.clone(),
        silenced: s.silenced.clone(),
        outbox: s.outbox.clone(),
        devices: s.devices.clone(),
        position: s.resume.position,
        released: s.resume.released.clone(),
        connectors: s.connectors.clone(),
        blobs: spans,
    };
    let header = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(8 + 8 + header.len() + offset as usize + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for b in blobs {
        out.extend_from_slice(&b);
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    Ok(out)
}

/// Checks a checkpoint file's bytes as a start would (magic, checksum, header, every
/// pane's Arrow state), without a pipeline; the error names the problem.
pub fn verify_checkpoint(bytes: &[u8]) -> Result<(), String> {
    decode(bytes).map(|_| ())
}

/// Parses and verifies a checkpoint file's bytes.
pub(crate) fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    if bytes.len() < 8 + 8 + 32 {
        return Err(format!("{} bytes is too short (truncated)", bytes.len()));
    }
    if &bytes[..6] != b"FWCKPT" {
        return Err("not a Forewarn checkpoint (bad magic)".into());
    }
    if &bytes[..8] != MAGIC {
        return Err(format!(
            "layout version {} is not one this Forewarn reads ({CHECKPOINT_FORMAT})",
            bytes[7]
        ));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err("checksum mismatch (truncated or modified)".into());
    }
    let hlen = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes")) as usize;
    let hend = 16usize
        .checked_add(hlen)
        .filter(|&e| e <= body.len())
        .ok_or("header length past the end")?;
    let header: Header =
        serde_json::from_slice(&body[16..hend]).map_err(|e| format!("header: {e}"))?;
    if header.format != CHECKPOINT_FORMAT {
        return Err(format!(
            "format {} is not one this Forewarn reads ({CHECKPOINT_FORMAT})",
            header.format
        ));
    }
    let data = &body[hend..];
    let blob = |i: usize| -> Result<RecordBatch, String> {
        let &(off, len) = header.blobs.get(i).ok_or(format!("no blob {i}"))?;
        let (off, len) = (off as usize, len as usize);
        let b = data
            .get(off..off.checked_add(len).ok_or("blob span overflows")?)
            .ok_or(format!("blob {i} past the end"))?;
        // The checksum keeps out accidents; against a crafted file, the Arrow reader
        // can panic on inconsistent buffer offsets, which must not take the engine down,
        // and it allocates whatever length a message declares (an abort, not a panic),
        // so lengths are checked against the blob first.
        check_ipc_lengths(b).map_err(|e| format!("blob {i}: {e}"))?;
        std::panic::catch_unwind(|| {
            let mut r = StreamReader::try_new(std::io::Cursor::new(b), None)
                .map_err(|e| format!("blob {i}: {e}"))?;
            let schema = r.schema();
            let mut batches = Vec::new();
            for b in &mut r {
                let b = b.map_err(|e| format!("blob {i}: {e}"))?;
                b.columns()
                    .iter()
                    .try_for_each(|c| c.to_data().validate_full())
                    .map_err(|e| format!("blob {i}: {e}"))?;
                batches.push(b);
            }
            datafusion::arrow::compute::concat_batches(&schema, &batches)
                .map_err(|e| format!("blob {i}: {e}"))
        })
        .unwrap_or_else(|_| Err(format!("blob {i}: malformed Arrow data")))
    };
    let mut queries = BTreeMap::new();
    for (name, q) in header.queries {
        let panes = q
            .panes
            .iter()
            .map(|p| {
                Ok(PaneState {
                    start: p.start,
                    open: p.open,
                    batch: blob(p.blob)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        queries.insert(
            name,
            QueryState {
                fingerprint: q.fingerprint,
                operator: OperatorState {
                    meta: q.meta,
                    panes,
                },
                lifecycle: q.lifecycle,
                detector: q.detector,
            },
        );
    }
    Ok(Snapshot {
        seq: header.seq,
        queries,
        states: header.states,
        silenced: header.silenced,
        outbox: header.outbox,
        inputs: header.inputs,
        devices: header.devices,
        resume: crate::ResumePoint {
            position: header.position,
            released: header.released,
        },
        connectors: header.connectors,
    })
}

/// Walks an Arrow IPC stream's message framing and refuses any metadata or body
/// length that runs past the end of `b`.
fn check_ipc_lengths(b: &[u8]) -> Result<(), String> {
    let word = |pos: usize| -> Result<i32, String> {
        b.get(pos..pos + 4)
            .map(|w| i32::from_le_bytes(w.try_into().expect("4 bytes")))
            .ok_or_else(|| "IPC stream truncated".to_string())
    };
    let mut pos = 0usize;
    loop {
        if pos == b.len() {
            return Ok(());
        }
        let mut len = word(pos)?;
        pos += 4;
        if len == -1 {
            // The continuation marker, then the length.
            len = word(pos)?;
            pos += 4;
        }
        if len == 0 {
            return Ok(());
        }
        let len = usize::try_from(len).map_err(|_| "negative IPC metadata length")?;
        let meta = b
            .get(pos..pos.checked_add(len).ok_or("IPC length overflows")?)
            .ok_or("IPC metadata length past the end")?;
        pos += len;
        let msg = datafusion::arrow::ipc::root_as_message(meta)
            .map_err(|e| format!("IPC metadata: {e}"))?;
        let body = usize::try_from(msg.bodyLength()).map_err(|_| "negative IPC body length")?;
        if body > b.len() - pos {
            return Err(format!(
                "IPC body of {body} bytes past the end ({} left)",
                b.len() - pos
            ));
        }
        pos += body;
    }
}

/// Writes `bytes` as checkpoint `seq` to `store` and removes all but the newest `keep`.
pub(crate) fn write(
    store: &dyn CheckpointStore,
    seq: u64,
    bytes: &[u8],
    keep: usize,
) -> Result<(), CheckpointError> {
    store.write(seq, bytes)?;
    let mut seqs = store.list()?;
    seqs.sort_unstable_by(|a, b| b.cmp(a));
    for old in seqs.into_iter().skip(keep.max(1)) {
        if let Err(e) = store.remove(old) {
            tracing::warn!(checkpoint = %store.name(old).display(), error = %e, "could not remove an old checkpoint");
        }
    }
    Ok(())
}

/// Writes `bytes` as file `seq` in `dir` atomically.
fn write_file(dir: &Path, seq: u64, bytes: &[u8]) -> Result<(), CheckpointError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(".{}.tmp", file_name(seq)));
    let fin = dir.join(file_name(seq));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &fin).map_err(io(&fin))?;
    // The rename is durable only once the directory is synced.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// The newest checkpoint in `store` that reads back intact, skipping damaged ones with
/// a warning. `None` when the store has no checkpoint; an error when it has only
/// damaged ones.
pub(crate) fn load_newest(
    store: &dyn CheckpointStore,
) -> Result<Option<(PathBuf, Snapshot)>, CheckpointError> {
    let mut seqs = store.list()?;
    seqs.sort_unstable_by(|a, b| b.cmp(a));
    let mut reasons: Vec<(PathBuf, String)> = Vec::new();
    for seq in seqs {
        let f = &store.name(seq);
        let bytes = store.read(seq)?;
        match decode(&bytes) {
            Ok(s) => {
                for (p, r) in &reasons {
                    tracing::warn!(file = %p.display(), "skipped a damaged checkpoint: {r}");
                }
                return Ok(Some((f.clone(), s)));
            }
            Err(r) => reasons.push((f.clone(), r)),
        }
    }
    if reasons.is_empty() {
        return Ok(None);
    }
    Err(CheckpointError::NoneValid {
        dir: store.location(),
        reasons: reasons
            .iter()
            .map(|(p, r)| format!("{}: {r}", p.display()))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// Checks a loaded snapshot against the pipeline's queries: a query whose state no
/// longer fits is an error; queries added or removed since are reported.
pub(crate) fn check_fit(
    file: &Path,
    snap: &Snapshot,
    queries: &[Arc<CompiledQuery>],
) -> Result<(), CheckpointError> {
    for q in queries {
        match snap.queries.get(&q.name) {
            Some(s) if s.fingerprint != fingerprint(q) => {
                return Err(CheckpointError::Incompatible {
                    path: file.to_path_buf(),
                    reason: format!(
                        "query '{}' changed its source, window, watermark, grouping or aggregates since the checkpoint was written",
                        q.name
                    ),
                })
            }
            Some(s) => {
                let want = q.partial.schema();
                if let Some(p) = s
                    .operator
                    .panes
                    .iter()
                    .find(|p| p.batch.schema().fields() != want.fields())
                {
                    return Err(CheckpointError::Corrupt {
                        path: file.to_path_buf(),
                        reason: format!(
                            "query '{}': state of pane {} has columns [{}], expected [{}]",
                            q.name,
                            p.start,
                            fields(&p.batch.schema()),
                            fields(&want)
                        ),
                    });
                }
            }
            None => tracing::warn!(
                query = %q.name,
                checkpoint = %file.display(),
                "query is new since the checkpoint: it starts without state"
            ),
        }
    }
    for name in snap.queries.keys() {
        if !queries.iter().any(|q| &q.name == name) {
            tracing::warn!(query = %name, checkpoint = %file.display(), "the checkpoint holds state for a query that is gone: dropped");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connectors' own state goes through a checkpoint file as it was saved; a file
    /// without any (older ones) reads as none.
    #[test]
    fn connector_state_round_trips_and_is_optional() {
        let state = serde_json::json!({"version": 1, "nodes": [{"edge_node": "e", "seq": 7}]});
        let snap = Snapshot {
            seq: 4,
            connectors: BTreeMap::from([("motors".to_string(), state.clone())]),
            ..Snapshot::default()
        };
        let back = decode(&encode(&snap).unwrap()).unwrap();
        assert_eq!(back.seq, 4);
        assert_eq!(back.connectors, snap.connectors);
        let bytes = encode(&Snapshot::default()).unwrap();
        let header = String::from_utf8_lossy(&bytes);
        assert!(!header.contains("\"connectors\""), "absent when empty");
        assert!(decode(&bytes).unwrap().connectors.is_empty());
    }
}
