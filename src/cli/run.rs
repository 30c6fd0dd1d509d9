//! `forewarn run`: the engine against a real plant's broker.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use forewarn::mqtt::{self, BrokerUrl};
use forewarn::{EngineConfig, Pipeline};
use serde::Deserialize;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Broker URL (overrides the config file): mqtt://[USER@]HOST[:PORT] (or tcp://);
    /// mqtts://, ssl:// or tls:// for TLS.
    #[arg(long)]
    broker: Option<String>,
    /// Query file or directory (overrides the config file) [default: queries].
    #[arg(long)]
    queries: Option<PathBuf>,
    /// Models directory (overrides the config file) [default: ./models when it exists;
    /// needed only when the queries call models].
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,
    /// MQTT client id prefix (overrides the config file): the engine connects as
    /// ID-in and ID-out, and each engine on a broker needs its own. Default:
    /// forewarn-HOST-HASH (HASH of the query files), or with a checkpoint directory the
    /// id kept in it (see docs/operations.md, "Client ids").
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    /// Keep retrying a broker host name that does not resolve (e.g. while DNS comes
    /// up), instead of failing at start.
    #[arg(long)]
    retry_dns: bool,
    /// Checkpoint directory (overrides the config file): state survives restarts and
    /// input is acknowledged only once a checkpoint covers it.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// TOML configuration file with the same settings.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Scale-out: read the queries' `connector = 'nats'` sources from this NATS server
    /// (comma-separated URLs for a cluster); state is checkpointed to NATS and outputs
    /// go to --broker (e.g. the NATS server's MQTT listener).
    #[arg(long)]
    nats: Option<String>,
    /// With --nats: `auto` (a fair share, taking over from dead workers) or a list of
    /// partitions such as `0-3` or `0,2`.
    #[arg(long)]
    partitions: Option<String>,
    /// With --nats: this worker's id, unique in the job (default: host name and pid).
    #[arg(long)]
    worker_id: Option<String>,
    /// With --nats: print the nats-server `mappings` block that partitions the
    /// queries' topics, and exit.
    #[arg(long)]
    print_nats_mappings: bool,
}

/// The configuration file. Unknown keys are an error, so a typo cannot silently
/// fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    broker: Option<String>,
    queries: Option<PathBuf>,
    models: Option<PathBuf>,
    client_id: Option<String>,
    /// See --retry-dns.
    retry_dns: Option<bool>,
    max_batch_rows: Option<usize>,
    max_batch_delay_ms: Option<u64>,
    flush_when_idle: Option<bool>,
    max_payload_bytes: Option<usize>,
    topic_prefix: Option<String>,
    source_qos: Option<u8>,
    checkpoint_dir: Option<PathBuf>,
    checkpoint_interval_ms: Option<u64>,
    checkpoint_max_unacked: Option<usize>,
    checkpoint_keep: Option<usize>,
    /// CA certificates (PEM) for mqtts://.
    tls_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for brokers that require them.
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    /// User name; the password comes from `password_file` or FOREWARN_MQTT_PASSWORD,
    /// never from this file.
    username: Option<String>,
    password_file: Option<PathBuf>,
    max_devices: Option<usize>,
    max_open_windows: Option<usize>,
    max_state_bytes: Option<usize>,
    /// "block" (default) or "drop_oldest".
    overload: Option<String>,
    /// With overload = "drop_oldest": messages kept waiting before the oldest go.
    overload_max_waiting: Option<usize>,
    /// Scale-out (see --nats).
    nats: Option<String>,
    partitions: Option<String>,
    worker_id: Option<String>,
    /// Names the deployment's leases and checkpoints in NATS (default "forewarn").
    job: Option<String>,
    lease_ttl_ms: Option<u64>,
    /// Copies of the stream (when Forewarn creates it) and of the lease and checkpoint
    /// buckets.
    nats_replicas: Option<usize>,
    /// How long the stream keeps readings, when Forewarn creates it.
    stream_max_age_s: Option<u64>,
}

/// The environment variable holding the broker password.
const PASSWORD_ENV: &str = "FOREWARN_MQTT_PASSWORD";

/// Credentials and TLS from the configuration file and the environment.
fn secure(url: &mut BrokerUrl, fc: &FileConfig) -> anyhow::Result<()> {
    if let Some(u) = &fc.username {
        url.username = Some(u.clone());
    }
    if url.username.is_some() && url.password.is_none() {
        url.password = match (&fc.password_file, std::env::var(PASSWORD_ENV)) {
            (Some(p), _) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("password_file {}", p.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            ),
            (None, Ok(p)) => Some(p),
            (None, Err(_)) => None,
        };
    }
    let tls_files =
        fc.tls_ca_file.is_some() || fc.tls_cert_file.is_some() || fc.tls_key_file.is_some();
    if tls_files && url.tls.is_none() {
        anyhow::bail!("tls_* settings need an mqtts:// broker URL (got {url})");
    }
    if url.tls.is_some() {
        url.tls = Some(forewarn::mqtt::TlsSettings::from_files(
            fc.tls_ca_file.as_deref(),
            fc.tls_cert_file.as_deref(),
            fc.tls_key_file.as_deref(),
        )?);
    }
    Ok(())
}

fn read_config(p: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
}

pub async fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let fc = match &a.config {
        Some(p) => read_config(p)?,
        None => FileConfig::default(),
    };
    let broker =
        a.broker.clone().or(fc.broker.clone()).context(
            "no broker: pass --broker mqtt://HOST:PORT or set broker in the config file",
        )?;
    let mut url = BrokerUrl::parse(&broker)?;
    secure(&mut url, &fc)?;
    let queries = a
        .queries
        .clone()
        .or(fc.queries.clone())
        .unwrap_or_else(|| "queries".into());
    let models = super::models_dir(a.models.as_deref().or(fc.models.as_deref()))?;
    let set = super::read_query_set("--queries", std::slice::from_ref(&queries))?;
    super::require_models(&set, models.as_deref())?;
    let mut cfg = EngineConfig::default();
    if let Some(v) = fc.max_batch_rows {
        cfg.max_batch_rows = v;
    }
    if let Some(v) = fc.max_batch_delay_ms {
        cfg.max_batch_delay = Duration::from_millis(v);
    }
    if let Some(v) = fc.flush_when_idle {
        cfg.flush_when_idle = v;
    }
    if let Some(v) = fc.max_payload_bytes {
        cfg.max_payload_bytes = v;
    }
    if let Some(v) = fc.topic_prefix.clone() {
        cfg.topic_prefix = v;
    }
    if let Some(v) = fc.max_devices {
        cfg.max_devices = v;
    }
    if let Some(v) = fc.max_open_windows {
        cfg.max_open_windows = v;
    }
    if let Some(v) = fc.max_state_bytes {
        cfg.max_state_bytes = v;
    }
    let nats = a.nats.clone().or(fc.nats.clone());
    if a.print_nats_mappings {
        let p = builder(&queries, models.as_deref())
            .config(cfg)
            .build()
            .await?;
        print!("{}", forewarn::nats::server_mappings(&p)?);
        return Ok(ExitCode::SUCCESS);
    }
    resolve_broker(&url, a.retry_dns || fc.retry_dns.unwrap_or(false)).await?;
    if let Some(nats) = nats {
        if a.client_id.is_some() || fc.client_id.is_some() {
            anyhow::bail!("with --nats, outputs are published as {{job}}-pK-out per partition: drop client_id (name the job with job in the config file)");
        }
        return run_nats(&nats, url, queries, models, cfg, &a, &fc).await;
    }
    for (set, what) in [
        (
            a.partitions.is_some() || fc.partitions.is_some(),
            "partitions",
        ),
        (a.worker_id.is_some() || fc.worker_id.is_some(), "worker_id"),
        (fc.job.is_some(), "job"),
        (fc.lease_ttl_ms.is_some(), "lease_ttl_ms"),
        (fc.nats_replicas.is_some(), "nats_replicas"),
        (fc.stream_max_age_s.is_some(), "stream_max_age_s"),
    ] {
        if set {
            anyhow::bail!(
                "{what} applies to scale-out: it needs --nats URL (or nats in the config file)"
            );
        }
    }
    let checkpoint_dir = a.checkpoint_dir.clone().or(fc.checkpoint_dir.clone());
    let client = match a.client_id.clone().or(fc.client_id.clone()) {
        Some(c) => c,
        None => default_client_id(&queries, checkpoint_dir.as_deref())?,
    };
    if let Some(dir) = checkpoint_dir {
        let mut c = forewarn::CheckpointConfig::new(dir);
        c.confirm_outputs = true;
        if let Some(v) = fc.checkpoint_interval_ms {
            c.interval = Duration::from_millis(v.max(1));
        }
        if let Some(v) = fc.checkpoint_max_unacked {
            c.max_unacked = v.max(1);
        }
        if let Some(v) = fc.checkpoint_keep {
            c.keep = v.max(1);
        }
        cfg.checkpoint = Some(c);
    } else if fc.checkpoint_interval_ms.is_some()
        || fc.checkpoint_max_unacked.is_some()
        || fc.checkpoint_keep.is_some()
    {
        anyhow::bail!("checkpoint_* settings need checkpoint_dir");
    }
    let pipeline = builder(&queries, models.as_deref())
        .config(cfg)
        .build()
        .await?;
    tracing::info!(broker = %url, client_id = %client, queries = ?pipeline.query_names(), "starting");
    let mut opts = mqtt::RunOptions::new(&client);
    opts.overload = match (fc.overload.as_deref(), fc.overload_max_waiting) {
        (None | Some("block"), None) => mqtt::Overload::Block,
        (Some("drop_oldest"), n) => mqtt::Overload::DropOldest(n.unwrap_or(10_000)),
        (None | Some("block"), Some(_)) => {
            anyhow::bail!("overload_max_waiting needs overload = \"drop_oldest\"")
        }
        (Some(o), _) => anyhow::bail!("overload must be \"block\" or \"drop_oldest\", got \"{o}\""),
    };
    opts.source_qos = match fc.source_qos.unwrap_or(1) {
        0 => mqtt::QoS::AtMostOnce,
        1 => mqtt::QoS::AtLeastOnce,
        q => anyhow::bail!("source_qos must be 0 or 1, got {q}"),
    };
    if let Some(seq) = pipeline.restored_checkpoint() {
        tracing::info!(checkpoint = seq, "continuing from a checkpoint");
    }
    let running = mqtt::start(pipeline, &url, &opts, None).await?;
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                let s = running.handle().stats();
                tracing::info!("running: {}", s.summary());
            }
        }
    }
    let redelivered = running.redeliveries_dropped();
    let shed = running.input_shed();
    if shed > 0 {
        eprintln!(
            "dropped {shed} input messages because the engine was behind (overload = drop_oldest)"
        );
    }
    let s = running.stop().await?;
    eprintln!(
        "stopped: {}, checkpoints {}, redeliveries dropped {redelivered}",
        s.summary(),
        s.checkpoints
    );
    Ok(ExitCode::SUCCESS)
}

/// The pipeline's queries and, when there is a directory, models.
fn builder(queries: &Path, models: Option<&Path>) -> forewarn::PipelineBuilder {
    let b = Pipeline::builder().query_file(queries);
    match models {
        Some(m) => b.models_dir(m),
        None => b,
    }
}

/// Fails at start, naming the host, when the broker's host name does not resolve: a
/// connection would retry it forever like a refused one. With `retry`, waits for it.
async fn resolve_broker(url: &BrokerUrl, retry: bool) -> anyhow::Result<()> {
    let mut delay = Duration::from_secs(1);
    loop {
        match url.resolve().await {
            Ok(_) => return Ok(()),
            Err(e) if retry => {
                tracing::warn!(broker = %url, retry_in = ?delay, "{e}; retrying (--retry-dns)");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(e) => anyhow::bail!(
                "{e} (broker {url}); pass --retry-dns (or retry_dns = true) to wait for it"
            ),
        }
    }
}

/// The file in a checkpoint directory that keeps the engine's default client id.
const CLIENT_ID_FILE: &str = "client-id";

/// The default MQTT client id: `forewarn-{host}-{hash of the query files}`, the same
/// on every start of the same queries on this host, different for other queries or
/// hosts. With checkpoints the id must outlive edits of the queries (HAVING, scoring)
/// and host renames (containers): the broker keeps the persistent session, and the
/// messages queued for the engine while it was down, under the id. So the first start
/// writes it into the checkpoint directory and later starts read it from there.
fn default_client_id(queries: &Path, checkpoint_dir: Option<&Path>) -> anyhow::Result<String> {
    let host = host_name();
    let mut h = Fnv::new();
    for f in super::query_files("--queries", queries)? {
        let text = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        h.write(&text);
        h.write(&[0]);
    }
    let Some(dir) = checkpoint_dir else {
        return Ok(format!("forewarn-{host}-{:08x}", h.finish() as u32));
    };
    let file = dir.join(CLIENT_ID_FILE);
    match std::fs::read_to_string(&file) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    }
    // Two engines on this host with the same queries need two checkpoint directories:
    // the directory makes their ids differ.
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    h.write(abs.as_os_str().as_encoded_bytes());
    let id = format!("forewarn-{host}-{:08x}", h.finish() as u32);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(&file, format!("{id}\n"))
        .with_context(|| format!("writing {}", file.display()))?;
    tracing::info!(client_id = %id, file = %file.display(), "client id chosen and kept with the checkpoints");
    Ok(id)
}

/// This machine's name, as far as a client id may carry it.
fn host_name() -> String {
    let raw = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "host".into()
    } else {
        name
    }
}

/// FNV-1a, 64 bits: stable across Rust versions and platforms, unlike the standard
/// library's hasher, so an upgrade does not change a default client id.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
}

/// `forewarn run --nats`: one worker of a scale-out job.
async fn run_nats(
    nats: &str,
    url: BrokerUrl,
    queries: PathBuf,
    models: Option<PathBuf>,
    cfg: EngineConfig,
    a: &RunArgs,
    fc: &FileConfig,
) -> anyhow::Result<ExitCode> {
    use forewarn::nats::{self as fnats, Assignment, WorkerOptions};
    if a.checkpoint_dir.is_some() || fc.checkpoint_dir.is_some() {
        anyhow::bail!("with --nats, checkpoints are kept in the NATS object store (where every worker reaches them): drop checkpoint_dir");
    }
    let worker = a
        .worker_id
        .clone()
        .or(fc.worker_id.clone())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
    let mut opts = WorkerOptions::new(nats, url, &worker);
    if let Some(p) = a.partitions.as_ref().or(fc.partitions.as_ref()) {
        opts.assignment = Assignment::parse(p).map_err(|e| anyhow::anyhow!("--partitions: {e}"))?;
    }
    if let Some(j) = &fc.job {
        opts.job = j.clone();
    }
    if let Some(v) = fc.lease_ttl_ms {
        opts.lease_ttl = Duration::from_millis(v.max(300));
    }
    if let Some(v) = fc.nats_replicas {
        opts.replicas = v.clamp(1, 5);
    }
    if let Some(v) = fc.stream_max_age_s {
        opts.stream_max_age = Duration::from_secs(v.max(1));
    }
    if let Some(v) = fc.checkpoint_interval_ms {
        opts.checkpoint_interval = Duration::from_millis(v.max(1));
    }
    if let Some(v) = fc.checkpoint_keep {
        opts.checkpoint_keep = v.max(1);
    }
    let factory: fnats::PipelineFactory = Arc::new(move |ck| {
        let (queries, models) = (queries.clone(), models.clone());
        let mut cfg = cfg.clone();
        cfg.checkpoint = ck;
        Box::pin(async move {
            builder(&queries, models.as_deref())
                .config(cfg)
                .build()
                .await
        })
    });
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    tracing::info!(nats, worker = %opts.worker, assignment = ?opts.assignment, "starting a scale-out worker");
    fnats::run_worker(opts, factory, shutdown, None).await?;
    eprintln!("worker {worker} stopped: partitions checkpointed and released");
    Ok(ExitCode::SUCCESS)
}
