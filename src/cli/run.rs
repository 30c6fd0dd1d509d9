//! `forewarn run`: the engine against a real plant's broker.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use forewarn::config::{MqttSettings, Overload, ServiceConfig};
use forewarn::mqtt::{self, BrokerUrl};
use forewarn::{EngineConfig, Pipeline};

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
    /// MQTT protocol version of the engine's connections (overrides the config file):
    /// 4 (3.1.1, the default) or 5.
    #[arg(long, value_name = "4|5")]
    mqtt_version: Option<u8>,
    /// Keep retrying a broker host name that does not resolve (e.g. while DNS comes
    /// up), instead of failing at start.
    #[arg(long)]
    retry_dns: bool,
    /// Checkpoint directory (overrides the config file): state survives restarts and
    /// input is acknowledged only once a checkpoint covers it.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// TOML configuration file (`forewarn config --print-default` shows every key).
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
    /// Serve /metrics, /healthz and /readyz on this address (overrides listen in the
    /// [http] section), e.g. 127.0.0.1:9464; a non-loopback address needs a bearer
    /// token (bearer_token_file or bearer_token_env in [http]).
    #[arg(long, value_name = "IP:PORT")]
    http: Option<String>,
}

/// The environment variable holding the broker password.
const PASSWORD_ENV: &str = "FOREWARN_MQTT_PASSWORD";

/// Credentials and TLS from the configuration file and the environment.
fn secure(url: &mut BrokerUrl, m: &MqttSettings) -> anyhow::Result<()> {
    if let Some(u) = &m.username {
        url.username = Some(u.clone());
    }
    if url.username.is_some() && url.password.is_none() {
        url.password = match (&m.password_file, std::env::var(PASSWORD_ENV)) {
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
        m.tls_ca_file.is_some() || m.tls_cert_file.is_some() || m.tls_key_file.is_some();
    if tls_files && url.tls.is_none() {
        anyhow::bail!("tls_* settings need an mqtts:// broker URL (got {url})");
    }
    if url.tls.is_some() {
        url.tls = Some(forewarn::mqtt::TlsSettings::from_files(
            m.tls_ca_file.as_deref(),
            m.tls_cert_file.as_deref(),
            m.tls_key_file.as_deref(),
        )?);
    }
    Ok(())
}

impl RunArgs {
    /// `--config`.
    pub fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// The configuration file (or the defaults), with the flags given over it.
    fn config(&self) -> anyhow::Result<ServiceConfig> {
        let mut c = match &self.config {
            Some(p) => ServiceConfig::from_file(p)?,
            None => ServiceConfig::default(),
        };
        let set = |to: &mut Option<String>, from: &Option<String>| {
            if from.is_some() {
                to.clone_from(from);
            }
        };
        set(&mut c.mqtt.broker, &self.broker);
        set(&mut c.mqtt.client_id, &self.client_id);
        set(&mut c.nats.url, &self.nats);
        set(&mut c.nats.partitions, &self.partitions);
        set(&mut c.nats.worker_id, &self.worker_id);
        set(&mut c.http.listen, &self.http);
        if let Some(q) = &self.queries {
            c.queries = q.clone();
        }
        if self.models.is_some() {
            c.models.clone_from(&self.models);
        }
        if self.checkpoint_dir.is_some() {
            c.checkpoint.dir.clone_from(&self.checkpoint_dir);
        }
        c.mqtt.retry_dns |= self.retry_dns;
        if let Some(v) = self.mqtt_version {
            c.mqtt.mqtt_version = v;
        }
        c.check()?;
        Ok(c)
    }
}

pub async fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let fc = a.config()?;
    let broker = fc.mqtt.broker.clone().context(
        "no broker: pass --broker mqtt://HOST:PORT or set broker in the [mqtt] section of the config file",
    )?;
    let mut url = BrokerUrl::parse(&broker)?;
    secure(&mut url, &fc.mqtt)?;
    let queries = fc.queries.clone();
    let models = super::models_dir(fc.models.as_deref())?;
    let set = super::read_query_set("--queries", std::slice::from_ref(&queries))?;
    super::require_models(&set, models.as_deref())?;
    let mut cfg = fc.engine.to_config();
    if a.print_nats_mappings {
        let p = builder(&queries, models.as_deref())
            .config(cfg)
            .build()
            .await?;
        print!("{}", forewarn::nats::server_mappings(&p)?);
        return Ok(ExitCode::SUCCESS);
    }
    resolve_broker(&url, fc.mqtt.retry_dns).await?;
    if let Some(nats) = fc.nats.url.clone() {
        if fc.http.listen.is_some() {
            anyhow::bail!("[http] listen (or --http) is not served by scale-out workers (--nats) yet: drop it");
        }
        return run_nats(&nats, url, queries, models, cfg, &fc).await;
    }
    let client = match fc.mqtt.client_id.clone() {
        Some(c) => c,
        None => default_client_id(&queries, fc.checkpoint.dir.as_deref())?,
    };
    if let Some(mut c) = fc.checkpoint.to_config() {
        c.confirm_outputs = true;
        cfg.checkpoint = Some(c);
    }
    // The health page's view of the fleet, fed only while the listener serves it.
    let fleet = fc
        .http
        .listen
        .is_some()
        .then(|| forewarn::http::Fleet::new(cfg.max_devices));
    if let Some(f) = &fleet {
        cfg.window_observer = Some(f.window_observer());
    }
    let pipeline = builder(&queries, models.as_deref())
        .config(cfg)
        .build()
        .await?;
    if let Some(f) = &fleet {
        f.describe(&pipeline);
    }
    tracing::info!(broker = %url, client_id = %client, queries = ?pipeline.query_names(), "starting");
    let mut opts = mqtt::RunOptions::new(&client);
    opts.max_outbox = fc.mqtt.max_outbox.max(1);
    opts.overload = match fc.mqtt.overload {
        Overload::Block => mqtt::Overload::Block,
        Overload::DropOldest => mqtt::Overload::DropOldest(fc.mqtt.overload_max_waiting),
    };
    // Checked by ServiceConfig::check: 3, 4 or 5.
    opts.version = mqtt::MqttVersion::from_number(fc.mqtt.mqtt_version).unwrap_or_default();
    // Checked by ServiceConfig::check: 0 or 1.
    opts.source_qos = match fc.mqtt.source_qos {
        0 => mqtt::QoS::AtMostOnce,
        _ => mqtt::QoS::AtLeastOnce,
    };
    if let Some(seq) = pipeline.restored_checkpoint() {
        tracing::info!(checkpoint = seq, "continuing from a checkpoint");
    }
    let queries_loaded = pipeline.query_names();
    let checkpoint_interval = fc
        .checkpoint
        .dir
        .is_some()
        .then(|| Duration::from_millis(fc.checkpoint.interval_ms));
    let tap = fleet.as_ref().map(|f| f.tap());
    let running = mqtt::start(pipeline, &url, &opts, tap).await?;
    let http = match fc.http.listen_addr()? {
        Some(addr) => {
            let token = forewarn::http::read_token(
                fc.http.bearer_token_file.as_deref(),
                fc.http.bearer_token_env.as_deref(),
            )?;
            let mut server = ops_server(&running, addr, queries_loaded).token(token);
            if let Some(i) = checkpoint_interval {
                server = server.checkpoint_interval(i);
            }
            if let Some(f) = fleet {
                server = server.fleet(f);
            }
            let h = server.start().await?;
            let what = "health page at /, /api, /metrics, /healthz, /readyz";
            if super::json_logs() {
                tracing::info!(address = %h.addr(), "http listener: {what}");
            } else {
                eprintln!("http: http://{} ({what})", h.addr());
            }
            Some(h)
        }
        None => None,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                let s = running.handle().stats();
                log_counters("running", &s, running.sink_stats().as_deref(), None);
            }
        }
    }
    let redelivered = running.redeliveries_dropped();
    let shed = running.input_shed();
    if shed > 0 {
        let why = "input messages dropped because the engine was behind (overload = drop_oldest)";
        if super::json_logs() {
            tracing::warn!(dropped = shed, "{why}");
        } else {
            eprintln!("dropped {shed} {why}");
        }
    }
    let sink_stats = running.sink_stats();
    if let Some(h) = http {
        h.stop().await;
    }
    let s = running.stop().await?;
    log_counters("stopped", &s, sink_stats.as_deref(), Some(redelivered));
    Ok(ExitCode::SUCCESS)
}

/// The engine's counters: `running: ...` every 30 s (an info event) and `stopped: ...`
/// at the end (printed as it always was in text; an info event with JSON logs). As
/// JSON, the counters are fields too, so a log collector need not parse the summary.
fn log_counters(
    what: &str,
    s: &forewarn::EngineStats,
    sinks: Option<&forewarn::sinks::SinkStats>,
    redelivered: Option<u64>,
) {
    let mut line = format!("{what}: {}", s.summary());
    if let Some(r) = redelivered {
        line.push_str(&format!(
            ", checkpoints {}, redeliveries dropped {r}",
            s.checkpoints
        ));
    }
    if let Some(w) = sinks {
        line.push_str(&format!(", {}", w.summary()));
    }
    if super::json_logs() {
        tracing::info!(
            messages = s.messages_in,
            readings = s.readings_in,
            rejected = s.rejected_total(),
            windows = s.windows_closed,
            results = s.results,
            alerts = s.alerts_out,
            transitions = s.transitions_out,
            states = s.states_out,
            dead_letters = s.dead_letters_out,
            checkpoints = s.checkpoints,
            checkpoint_failures = s.checkpoint_failures,
            redeliveries_dropped = redelivered,
            "{line}"
        );
    } else if redelivered.is_some() {
        eprintln!("{line}");
    } else {
        tracing::info!("{line}");
    }
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

/// The operations listener of a pipeline on a broker, as `run` and `demo` serve it: the
/// engine's counters, the broker's state and the service's own counters (input shed,
/// outbox drops, reconnections).
pub(super) fn ops_server(
    running: &mqtt::MqttPipeline,
    addr: std::net::SocketAddr,
    queries: Vec<String>,
) -> forewarn::http::HttpServer {
    let status = running.broker_status();
    let (shed, dropped, reconnects) = (status.clone(), status.clone(), status.clone());
    forewarn::http::HttpServer::new(running.handle().clone(), addr)
        .queries(queries)
        .broker(move || status.connected())
        .counter(
            "forewarn_input_shed_total",
            "Input messages dropped because the engine was behind (overload = drop_oldest).",
            move || shed.input_shed(),
        )
        .counter(
            "forewarn_outbox_dropped_total",
            "Outgoing messages dropped because the outbox was full while the broker was away.",
            move || dropped.outbox_dropped(),
        )
        .counter(
            "forewarn_broker_reconnects_total",
            "Reconnections to the broker since start, input and output connections together.",
            move || reconnects.reconnects(),
        )
}

/// `forewarn run --nats`: one worker of a scale-out job.
async fn run_nats(
    nats: &str,
    url: BrokerUrl,
    queries: PathBuf,
    models: Option<PathBuf>,
    cfg: EngineConfig,
    fc: &ServiceConfig,
) -> anyhow::Result<ExitCode> {
    use forewarn::nats::{self as fnats, Assignment, WorkerOptions};
    let n = &fc.nats;
    let worker = n.worker_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let mut opts = WorkerOptions::new(nats, url, &worker);
    if let Some(p) = &n.partitions {
        opts.assignment = Assignment::parse(p).map_err(|e| anyhow::anyhow!("--partitions: {e}"))?;
    }
    opts.job.clone_from(&n.job);
    opts.lease_ttl = Duration::from_millis(n.lease_ttl_ms.max(300));
    opts.replicas = n.replicas.clamp(1, 5);
    opts.stream_max_age = Duration::from_secs(n.stream_max_age_s.max(1));
    opts.checkpoint_interval = Duration::from_millis(fc.checkpoint.interval_ms.max(1));
    opts.checkpoint_keep = fc.checkpoint.keep.max(1);
    opts.max_outbox = fc.mqtt.max_outbox.max(1);
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
    if super::json_logs() {
        tracing::info!(%worker, "worker stopped: partitions checkpointed and released");
    } else {
        eprintln!("worker {worker} stopped: partitions checkpointed and released");
    }
    Ok(ExitCode::SUCCESS)
}
