//! Scale-out on NATS JetStream (feature `nats`): workers share a fleet by partition.
//!
//! Devices publish to the NATS server (its MQTT listener, or NATS directly); a server
//! subject mapping puts each message on `part.{K}.{subject}`, K a hash of the device
//! ([`partition_of`]), and one stream stores `part.>`. Each partition is an
//! independent [`Pipeline`] with its own checkpoints in the NATS object store, held by
//! one worker at a time through a lease in the NATS key-value store.
//!
//! Input is never acknowledged: a partition's checkpoint records the stream sequence
//! of the last message it covers, and whoever runs the partition next (the same worker
//! after a restart, or another after a takeover) restores it and reads on from the
//! next sequence. State and position move together, so each message counts in the
//! window results exactly once; outputs not yet acknowledged by the broker are in the
//! checkpoint and published again with the same ids.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

pub use forewarn_nats::async_nats;
pub use forewarn_nats::{
    mapping, partition_of, topic_to_subject, Blobs, Lease, Leases, Nats, NatsError,
};

use crate::mqtt::{self, BrokerUrl, RunError};
use forewarn_engine::{
    CheckpointConfig, CheckpointError, CheckpointStore, Delivery, EngineError, Envelope, Pipeline,
};

/// Which partitions a worker runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// These partitions (each still through its lease: a worker waits while another
    /// holds one).
    Fixed(BTreeSet<u32>),
    /// A fair share of all partitions (⌈partitions / live workers⌉), taking over those
    /// of workers that stop renewing their leases and handing surplus ones to workers
    /// that join.
    Auto,
}

impl Assignment {
    /// `auto`, or a list of partitions and ranges: `0-3`, `0,2,5-7`.
    pub fn parse(s: &str) -> Result<Assignment, String> {
        if s.trim() == "auto" {
            return Ok(Assignment::Auto);
        }
        let mut set = BTreeSet::new();
        for part in s.split(',') {
            let part = part.trim();
            let num = |x: &str| {
                x.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("'{part}' is not a partition number or range (e.g. 0-3)"))
            };
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(format!("range '{part}' runs backwards"));
                    }
                    set.extend(a..=b);
                }
                None => {
                    set.insert(num(part)?);
                }
            }
        }
        Ok(Assignment::Fixed(set))
    }
}

/// How a worker connects and shares the fleet.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// NATS server URL(s), comma separated.
    pub nats_url: String,
    /// Where alerts, state and dead letters are published: the NATS server's MQTT
    /// listener, or any MQTT broker.
    pub output: BrokerUrl,
    /// Names this deployment's leases, checkpoints and output sessions; workers of one
    /// job share partitions.
    pub job: String,
    /// This worker's id (unique in the job).
    pub worker: String,
    /// Which partitions to run.
    pub assignment: Assignment,
    /// How long a lease lasts without renewal: a dead worker's partitions are taken
    /// over after at most this long (plus one renewal period).
    pub lease_ttl: Duration,
    /// Copies of the lease bucket, the checkpoint bucket and (when Forewarn creates
    /// it) the stream.
    pub replicas: usize,
    /// How long the stream keeps readings when Forewarn creates it: longer than any
    /// outage a partition must be replayed across.
    pub stream_max_age: Duration,
    /// Checkpoint timing (the store is set per partition).
    pub checkpoint_interval: Duration,
    /// Checkpoints kept per partition.
    pub checkpoint_keep: usize,
    /// Outgoing messages held while the output broker is unreachable.
    pub max_outbox: usize,
}

impl WorkerOptions {
    /// Defaults: job `forewarn`, automatic assignment, 10 s leases, one replica,
    /// readings kept 24 h, checkpoints every 5 s, 3 kept.
    pub fn new(nats_url: &str, output: BrokerUrl, worker: &str) -> Self {
        WorkerOptions {
            nats_url: nats_url.to_string(),
            output,
            job: "forewarn".into(),
            worker: worker.to_string(),
            assignment: Assignment::Auto,
            lease_ttl: Duration::from_secs(10),
            replicas: 1,
            stream_max_age: Duration::from_secs(24 * 3600),
            checkpoint_interval: Duration::from_secs(5),
            checkpoint_keep: 3,
            max_outbox: 100_000,
        }
    }
}

/// Builds a pipeline from the queries; the worker supplies the checkpoint
/// configuration (a partition's place in the NATS object store), or `None` for a
/// pipeline it only inspects.
pub type PipelineFactory = Arc<
    dyn Fn(
            Option<CheckpointConfig>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Pipeline, EngineError>> + Send>,
        > + Send
        + Sync,
>;

/// Errors of a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// NATS failed.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// A partition's pipeline failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The queries do not fit scale-out.
    #[error("{0}")]
    Config(String),
}

/// Checkpoints of one partition as objects `{job}/p{K}/ckpt-{seq}.fwc` in the NATS
/// object store. A write first renews the partition's lease, so a worker that lost
/// the lease cannot overwrite the new owner's progress.
#[derive(Debug)]
struct NatsStore {
    blobs: BlobsHandle,
    prefix: String,
    lease: Arc<Mutex<Lease>>,
    leases: LeasesHandle,
}

/// `Blobs` and `Leases` hold client handles without `Debug`.
#[derive(Clone)]
struct BlobsHandle(Blobs);
impl std::fmt::Debug for BlobsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blobs")
    }
}
#[derive(Clone)]
struct LeasesHandle(Leases);
impl std::fmt::Debug for LeasesHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Leases")
    }
}

impl NatsStore {
    fn object(&self, seq: u64) -> String {
        format!("{}ckpt-{seq:016}.fwc", self.prefix)
    }
    fn err(&self, seq: Option<u64>, e: impl std::fmt::Display) -> CheckpointError {
        CheckpointError::Io {
            path: seq.map_or_else(|| self.location(), |s| self.name(s)),
            source: std::io::Error::other(e.to_string()),
        }
    }
    /// Runs a NATS call from the pipeline's blocking checkpoint thread, for at most
    /// [`STORE_TIMEOUT`]: while JetStream elects leaders some calls (an object listing)
    /// wait without end, and a checkpoint that fails is retried, one that hangs is not.
    fn block<T, E: std::fmt::Display>(
        &self,
        seq: Option<u64>,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, CheckpointError> {
        match tokio::runtime::Handle::current().block_on(tokio::time::timeout(STORE_TIMEOUT, f)) {
            Ok(r) => r.map_err(|e| self.err(seq, e)),
            Err(_) => Err(self.err(seq, format!("no answer from NATS within {STORE_TIMEOUT:?}"))),
        }
    }
}

impl CheckpointStore for NatsStore {
    fn location(&self) -> std::path::PathBuf {
        format!("nats-object-store:{}", self.prefix).into()
    }
    fn name(&self, seq: u64) -> std::path::PathBuf {
        format!("nats-object-store:{}", self.object(seq)).into()
    }
    fn list(&self) -> Result<Vec<u64>, CheckpointError> {
        let names = self.block(None, self.blobs.0.list(&self.prefix))?;
        Ok(names
            .iter()
            .filter_map(|n| {
                n.strip_prefix(&self.prefix)?
                    .strip_prefix("ckpt-")?
                    .strip_suffix(".fwc")?
                    .parse()
                    .ok()
            })
            .collect())
    }
    fn read(&self, seq: u64) -> Result<Vec<u8>, CheckpointError> {
        self.block(Some(seq), self.blobs.0.get(&self.object(seq)))
    }
    fn write(&self, seq: u64, bytes: &[u8]) -> Result<(), CheckpointError> {
        self.block(Some(seq), async {
            let mut lease = self.lease.lock().await;
            match self.leases.0.renew(&mut lease).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(
                        "the partition's lease was lost to another worker: not written".to_string(),
                    )
                }
                Err(e) => return Err(e.to_string()),
            }
            // Held while writing, so the lease loop's renewal waits behind it.
            self.blobs
                .0
                .put(&self.object(seq), bytes)
                .await
                .map_err(|e| e.to_string())
        })
    }
    fn remove(&self, seq: u64) -> Result<(), CheckpointError> {
        self.block(Some(seq), self.blobs.0.delete(&self.object(seq)))
    }
}

/// The longest a checkpoint store call may take.
const STORE_TIMEOUT: Duration = Duration::from_secs(15);

/// A partition this worker runs.
struct Running {
    lease: Arc<Mutex<Lease>>,
    /// Asks the partition task to stop: `true` gracefully (checkpoint, then release),
    /// `false` at once (the lease was lost).
    stop: watch::Sender<Option<bool>>,
    task: JoinHandle<Result<(), WorkerError>>,
}

/// Counters of a running worker.
#[derive(Debug, Default, Clone)]
pub struct WorkerStats {
    /// Partitions run now.
    pub partitions: BTreeSet<u32>,
    /// Partitions taken (including takeovers), over the worker's life.
    pub acquired: u64,
    /// Partitions handed back (rebalancing, shutdown).
    pub released: u64,
    /// Leases lost to another worker.
    pub lost: u64,
}

/// A worker: runs the partitions it holds leases for until `shutdown` resolves, then
/// checkpoints each and releases its leases.
pub async fn run_worker(
    opts: WorkerOptions,
    factory: PipelineFactory,
    shutdown: impl std::future::Future<Output = ()>,
    stats: Option<Arc<std::sync::Mutex<WorkerStats>>>,
) -> Result<(), WorkerError> {
    let stats = stats.unwrap_or_default();
    // The query set decides the stream and the partition count.
    let probe = factory(None).await.map_err(RunError::from)?;
    crate::mqtt::refuse_embedded_only(&probe).map_err(RunError::from)?;
    let (stream, partitions) = nats_source(&probe)?;
    drop(probe);
    if let Assignment::Fixed(set) = &opts.assignment {
        if let Some(k) = set.iter().find(|&&k| k >= partitions) {
            return Err(WorkerError::Config(format!(
                "partition {k} does not exist: the queries declare partitions = '{partitions}' (0-{})",
                partitions - 1
            )));
        }
    }
    let nats = Nats::connect(&opts.nats_url).await?;
    nats.ensure_stream(&stream, opts.replicas, opts.stream_max_age)
        .await?;
    let leases = nats
        .leases(
            "forewarn_leases",
            opts.replicas,
            &opts.worker,
            opts.lease_ttl,
        )
        .await?;
    let blobs = nats.blobs("forewarn_checkpoints", opts.replicas).await?;
    let job = sanitize(&opts.job);
    let presence_key = format!("{job}.worker.{}", sanitize(&opts.worker));
    let part_key = |k: u32| format!("{job}.part.{k}");
    // A job's partition count is fixed while its checkpoints exist: each holds the
    // state of the devices of one partition under that count.
    let recorded = leases
        .settle(
            &format!("{job}.partitions"),
            &format!("{stream}/{partitions}"),
        )
        .await?;
    if recorded != format!("{stream}/{partitions}") {
        return Err(WorkerError::Config(format!(
            "job '{job}' runs stream/partitions {recorded}, the queries declare {stream}/{partitions}: a job's partition count changes only by the procedure in docs/scale-out.md (\"Changing the number of partitions\")"
        )));
    }
    let period = opts.lease_ttl / 3;
    // Announce this worker, then let one period pass so workers started together see
    // each other before taking shares.
    let mut presence = match leases.try_acquire(&presence_key).await? {
        Some(l) => l,
        None => {
            return Err(WorkerError::Config(format!(
                "worker id '{}' is in use by a live worker of job '{job}'",
                opts.worker
            )))
        }
    };
    tracing::info!(worker = %opts.worker, %stream, partitions, "worker started");
    // Listed twice a round, so a round rarely decides on a count a round old (a dead
    // worker's partitions are taken over within about a round of its lease expiring).
    let roster = Roster::spawn(
        leases.clone(),
        format!("{job}.worker."),
        period / 2,
        opts.lease_ttl,
    );
    tokio::pin!(shutdown);
    let mut running: BTreeMap<u32, Running> = BTreeMap::new();
    // Listings in a row that found more partitions held than the share, and the time
    // of the last one counted.
    let mut surplus_rounds = 0u32;
    let mut last_listing: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(period) => {}
        }
        if !leases.renew(&mut presence).await.unwrap_or(false) {
            presence = leases.try_acquire(&presence_key).await?.unwrap_or(presence);
        }
        // Partitions whose task ended (failed) are dropped; their leases expire.
        let ended: Vec<u32> = running
            .iter()
            .filter(|(_, r)| r.task.is_finished())
            .map(|(k, _)| *k)
            .collect();
        for k in ended {
            let r = running.remove(&k).expect("listed");
            match r.task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(partition = k, error = %e, "partition stopped"),
                Err(e) => tracing::error!(partition = k, error = %e, "partition task failed"),
            }
        }
        // Renew what we hold; a lease lost means another worker owns it now.
        let mut lost = Vec::new();
        for (k, r) in &running {
            let mut l = r.lease.lock().await;
            match leases.renew(&mut l).await {
                Ok(true) => {}
                Ok(false) => lost.push(*k),
                Err(e) => {
                    tracing::warn!(partition = k, error = %e, "lease renewal failed; retrying")
                }
            }
        }
        for k in lost {
            tracing::error!(
                partition = k,
                "lease lost to another worker: stopping the partition without a checkpoint"
            );
            let r = running.remove(&k).expect("listed");
            let _ = r.stop.send(Some(false));
            r.task.abort();
            stats.lock().expect("stats").lost += 1;
        }
        // How many to hold, and which to try.
        let (share, wanted): (usize, Vec<u32>) = match &opts.assignment {
            Assignment::Fixed(set) => (set.len(), set.iter().copied().collect()),
            Assignment::Auto => {
                // Without a recent count of the live workers (JetStream stalled), this
                // round keeps what it holds.
                let live = roster.latest();
                let share = match live {
                    Some((live, _)) => (partitions as usize).div_ceil(live),
                    None => running.len(),
                };
                // Hand surplus back, one per round, so joining workers get a share; only
                // after two listings agree, as one listing taken while JetStream stalls
                // can miscount the workers. A round without a new listing changes
                // nothing: resetting there would let a slow listing starve a joiner.
                if let Some((_, at)) = live.filter(|(_, at)| Some(*at) != last_listing) {
                    last_listing = Some(at);
                    surplus_rounds = if running.len() > share {
                        surplus_rounds + 1
                    } else {
                        0
                    };
                }
                if surplus_rounds >= 2 {
                    let k = *running.keys().next_back().expect("non-empty");
                    let r = running.remove(&k).expect("present");
                    tracing::info!(
                        partition = k,
                        share,
                        "handing a partition over to rebalance"
                    );
                    stop_partition(k, r, &leases).await;
                    stats.lock().expect("stats").released += 1;
                }
                // From a worker-specific offset, so workers try different ones first.
                let off = partition_of(&opts.worker, partitions);
                (
                    share,
                    (0..partitions).map(|i| (i + off) % partitions).collect(),
                )
            }
        };
        for k in wanted {
            if running.len() >= share || running.contains_key(&k) {
                continue;
            }
            let lease = match leases.try_acquire(&part_key(k)).await {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(partition = k, error = %e, "could not take the lease; retrying");
                    break;
                }
            };
            let lease = Arc::new(Mutex::new(lease));
            let store = NatsStore {
                blobs: BlobsHandle(blobs.clone()),
                prefix: format!("{job}/p{k}/"),
                lease: lease.clone(),
                leases: LeasesHandle(leases.clone()),
            };
            let mut ck = CheckpointConfig::with_store(Arc::new(store));
            ck.interval = opts.checkpoint_interval;
            ck.keep = opts.checkpoint_keep;
            ck.confirm_outputs = true;
            let (stop_tx, stop_rx) = watch::channel(None);
            let task = tokio::spawn(run_partition(
                k,
                factory.clone(),
                ck,
                nats.clone(),
                stream.clone(),
                opts.output.clone(),
                format!("{job}-p{k}-out"),
                opts.max_outbox,
                stop_rx,
            ));
            tracing::info!(partition = k, worker = %opts.worker, "partition acquired");
            running.insert(
                k,
                Running {
                    lease,
                    stop: stop_tx,
                    task,
                },
            );
            stats.lock().expect("stats").acquired += 1;
        }
        stats.lock().expect("stats").partitions = running.keys().copied().collect();
    }
    tracing::info!(worker = %opts.worker, partitions = ?running.keys().collect::<Vec<_>>(), "worker stopping");
    for (k, r) in std::mem::take(&mut running) {
        stop_partition(k, r, &leases).await;
        stats.lock().expect("stats").released += 1;
    }
    let _ = leases.release(&presence).await;
    stats.lock().expect("stats").partitions.clear();
    Ok(())
}

/// The count of live workers, listed by a task of its own: a listing can wait while
/// JetStream elects leaders or the machine is loaded, and must not delay the renewals
/// of the leases held.
struct Roster {
    latest: Arc<std::sync::Mutex<Option<(usize, Instant)>>>,
    max_age: Duration,
    task: JoinHandle<()>,
}

impl Roster {
    fn spawn(leases: Leases, prefix: String, period: Duration, max_age: Duration) -> Self {
        let latest = Arc::new(std::sync::Mutex::new(None));
        let task = tokio::spawn({
            let latest = latest.clone();
            async move {
                loop {
                    match tokio::time::timeout(max_age, leases.live(&prefix)).await {
                        Ok(Ok(v)) => {
                            *latest.lock().expect("roster") = Some((v.len().max(1), Instant::now()))
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "could not list the live workers; retrying")
                        }
                        Err(_) => tracing::warn!(
                            timeout_ms = max_age.as_millis() as u64,
                            "listing the live workers timed out; retrying"
                        ),
                    }
                    tokio::time::sleep(period).await;
                }
            }
        });
        Self {
            latest,
            max_age,
            task,
        }
    }

    /// The live workers of the last listing and when it was taken, if it is recent.
    fn latest(&self) -> Option<(usize, Instant)> {
        let l = *self.latest.lock().expect("roster");
        l.filter(|(_, at)| at.elapsed() < self.max_age)
    }
}

impl Drop for Roster {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Stops a partition gracefully (last checkpoint, outputs flushed) and releases its
/// lease so another worker can take it at once.
async fn stop_partition(k: u32, r: Running, leases: &Leases) {
    let _ = r.stop.send(Some(true));
    match r.task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(partition = k, error = %e, "partition stopped with an error"),
        Err(e) => tracing::error!(partition = k, error = %e, "partition task failed"),
    }
    let l = r.lease.lock().await.clone();
    if let Err(e) = leases.release(&l).await {
        tracing::warn!(partition = k, error = %e, "could not release the lease; it expires");
    }
    tracing::info!(partition = k, "partition released");
}

/// Runs partition `k`: restores its checkpoint, reads the stream from the position
/// after it, publishes outputs, until told to stop.
#[allow(clippy::too_many_arguments)]
async fn run_partition(
    k: u32,
    factory: PipelineFactory,
    ck: CheckpointConfig,
    nats: Nats,
    stream: String,
    output: BrokerUrl,
    client_id: String,
    max_outbox: usize,
    mut stop: watch::Receiver<Option<bool>>,
) -> Result<(), WorkerError> {
    let pipeline = factory(Some(ck)).await.map_err(RunError::from)?;
    let after = pipeline.resume_point().position();
    tracing::info!(partition = k, checkpoint = ?pipeline.restored_checkpoint(), after_sequence = ?after, "partition starting");
    let (outputs, handle) = mqtt::start_outputs(
        pipeline,
        &output,
        &client_id,
        max_outbox,
        None,
        mqtt::MqttVersion::V311,
    )
    .await?;
    let mut reader = nats.read_partition(&stream, k, after, 4096).await?;
    let graceful = loop {
        tokio::select! {
            m = reader.rx.recv() => match m {
                Some(m) => {
                    let message = Envelope::new(m.topic, m.payload).with(Delivery::Position(m.seq));
                    if handle.push(message).await.is_err() {
                        break true;
                    }
                }
                None => break true,
            },
            r = stop.changed() => {
                break r.is_err() || stop.borrow().unwrap_or(true);
            }
        }
    };
    drop(reader);
    if !graceful {
        outputs.abort();
        return Ok(());
    }
    let stats = handle.shutdown().await.map_err(RunError::from)?;
    drop(handle);
    outputs.finish().await?;
    tracing::info!(
        partition = k,
        messages = stats.messages_in,
        windows = stats.windows_closed,
        checkpoints = stats.checkpoints,
        "partition stopped"
    );
    Ok(())
}

/// The stream and partition count of the queries' nats sources (all must agree, and
/// no source may read MQTT directly: every worker would read it).
fn nats_source(p: &Pipeline) -> Result<(String, u32), WorkerError> {
    let mut found: Option<(String, u32, String)> = None;
    for s in p.sources() {
        let Some(n) = s.connector.get::<forewarn_connect::nats::NatsSource>() else {
            return Err(WorkerError::Config(format!(
                "source '{}' reads MQTT directly; with --nats every source must be connector = 'nats' (each worker would read all of it)",
                s.name
            )));
        };
        match &found {
            None => found = Some((n.stream.clone(), n.partitions, s.name.clone())),
            Some((st, np, other)) if (st, *np) != (&n.stream, n.partitions) => {
                return Err(WorkerError::Config(format!(
                    "sources '{other}' and '{}' read different streams or partition counts ({st}/{np} and {}/{}); one worker set reads one partitioned stream",
                    s.name, n.stream, n.partitions
                )))
            }
            Some(_) => {}
        }
    }
    found
        .map(|(s, n, _)| (s, n))
        .ok_or_else(|| WorkerError::Config("the queries declare no nats source".into()))
}

/// A name usable in key-value keys and object names.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The server configuration a deployment needs: the subject mappings that partition
/// each nats source's topic (and operator commands) by device, as a `mappings` block
/// for `nats-server.conf`.
pub fn server_mappings(p: &Pipeline) -> Result<String, WorkerError> {
    let (_, partitions) = nats_source(p)?;
    let mut lines = Vec::new();
    for s in p.sources() {
        let template = s
            .template
            .as_ref()
            .map(|t| t.as_str().to_string())
            .ok_or_else(|| {
                WorkerError::Config(format!(
                    "source '{}' needs a topic_template naming the device level",
                    s.name
                ))
            })?;
        let key = if template.contains("{device}") {
            "device"
        } else {
            return Err(WorkerError::Config(format!(
                "source '{}': topic_template '{template}' has no {{device}} level to partition by",
                s.name
            )));
        };
        let (from, to) = mapping(&s.topic_filter, &template, key, partitions)?;
        lines.push(format!("  \"{from}\": \"{to}\""));
    }
    let cmd = topic_to_subject(&format!("{}/command/+", p.topic_prefix()));
    lines.push(format!(
        "  \"{cmd}\": \"part.{{{{partition({partitions},1)}}}}.{}\"",
        cmd.replace('*', "{{wildcard(1)}}")
    ));
    lines.sort();
    lines.dedup();
    Ok(format!("mappings = {{\n{}\n}}\n", lines.join("\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments() {
        assert_eq!(Assignment::parse("auto").unwrap(), Assignment::Auto);
        assert_eq!(
            Assignment::parse("0-2,5").unwrap(),
            Assignment::Fixed([0, 1, 2, 5].into())
        );
        assert!(Assignment::parse("3-1").is_err());
        assert!(Assignment::parse("x").is_err());
    }
}
