//! `forewarn replay`: run query files over recorded history, as fast as possible.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use forewarn::config::ServiceConfig;
use forewarn::{Output, Pipeline};

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// History: CSV with a header, JSON lines (.jsonl) or Parquet.
    #[arg(long)]
    data: PathBuf,
    /// Query file or directory [default: the config file's `queries`, else `queries`].
    #[arg(long)]
    queries: Option<PathBuf>,
    /// Models directory [default: the config file's `models`, else ./models when it
    /// exists; needed only when the queries call models].
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,
    /// The TOML configuration file the live engine runs with (`forewarn run --config`):
    /// its `[engine]` settings (topic prefix, duplicate window, limits on devices, open
    /// windows and state) apply to the replay too, so that it gives what the live engine
    /// would, and its `[log]` format. The broker, checkpoint, NATS and HTTP sections are
    /// not used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Source table the data belongs to (needed when the queries read several).
    #[arg(long)]
    source: Option<String>,
    /// Where to write what the sinks would have published (JSON lines); default stdout.
    /// Written as FILE.partial and renamed to FILE when the replay completes: a replay
    /// that stops with an error leaves FILE as it was.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write dead letters and late rows (to --out, with the results).
    #[arg(long)]
    dead_letters: bool,
    /// Sort the history by event time before replaying it (in memory). Without it,
    /// replay stops at the first reading that live input would have found late.
    #[arg(long)]
    sort: bool,
    /// Fail (exit 1) when more than this share of the readings is rejected (dead-lettered
    /// or late), in percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 1.0)]
    max_rejected: f64,
}

impl ReplayArgs {
    /// `--config`.
    pub fn config_file(&self) -> Option<&std::path::Path> {
        self.config.as_deref()
    }
}

pub async fn replay(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    super::require_file("--data", Some(&a.data))?;
    // Its values are checked as it is read; how the other sections combine (checkpoint
    // directory, NATS) is `run`'s concern, not a replay's.
    let fc = match &a.config {
        Some(p) => {
            super::require_file("--config", Some(p))?;
            ServiceConfig::from_file(p)?
        }
        None => ServiceConfig::default(),
    };
    // A missing query path is named where it was given.
    let (queries, named_by) = match (&a.queries, &a.config) {
        (Some(q), _) => (q.clone(), "--queries".to_string()),
        (None, Some(c)) => (fc.queries.clone(), format!("queries in {}:", c.display())),
        (None, None) if !fc.queries.exists() => anyhow::bail!(
            "no queries: pass --queries FILE_OR_DIR, or --config FILE naming them (the default, ./{}, does not exist)",
            fc.queries.display()
        ),
        (None, None) => (fc.queries.clone(), "--queries".to_string()),
    };
    let from_config = a.config.as_deref().zip(fc.models.as_deref());
    let models = super::models_dir_or_config(a.models.as_deref(), from_config)?;
    let set = super::read_query_set(&named_by, std::slice::from_ref(&queries))?;
    super::require_models(&set, models.as_deref())?;
    let mut b = Pipeline::builder()
        .query_file(&queries)
        .config(fc.engine.to_config());
    if let Some(dir) = &models {
        b = b.models_dir(dir);
    }
    let pipeline = b.build().await?;
    // Before --out is created: a refused file must not cost an earlier backtest's output.
    forewarn::replay::check_file_columns(&pipeline, &a.data, a.source.as_deref())?;
    // Written beside --out and renamed over it when the replay completes: a replay that
    // fails half-way leaves no file that reads like a complete backtest.
    if let Some(p) = a.out.as_deref().filter(|p| p.is_dir()) {
        anyhow::bail!("--out {}: is a directory; give a file", p.display());
    }
    let partial = a.out.as_deref().map(partial_path);
    let mut out: Box<dyn Write + Send> = match &partial {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let dead = a.dead_letters;
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        for line in rx {
            out.write_all(&line)?;
        }
        out.flush()
    });
    let started = std::time::Instant::now();
    let order = super::order(a.sort);
    let mut lines = Lines {
        tx,
        block: Vec::with_capacity(1 << 17),
    };
    let replayed =
        forewarn::replay::replay_ordered(pipeline, &a.data, a.source.as_deref(), order, move |o| {
            if matches!(o, Output::DeadLetter { .. }) && !dead {
                return;
            }
            lines.push(&o);
        })
        .await;
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("output writer panicked"))
        .and_then(|w| w.context("writing the output"));
    let stats = match (replayed, written) {
        (Ok(stats), Ok(())) => stats,
        (replayed, written) => {
            if let Some(p) = &partial {
                let _ = std::fs::remove_file(p);
            }
            replayed?;
            return Err(written.unwrap_err());
        }
    };
    if let (Some(p), Some(to)) = (&partial, &a.out) {
        std::fs::rename(p, to)
            .with_context(|| format!("renaming {} to {}", p.display(), to.display()))?;
    }
    let secs = started.elapsed().as_secs_f64();
    let rejections = forewarn::replay::Rejections::of(&stats);
    eprintln!(
        "replayed in {:.2} s ({:.0} readings/s): {}",
        secs,
        stats.readings_in as f64 / secs.max(1e-9),
        stats.summary()
    );
    if rejections.exceed(a.max_rejected) {
        eprintln!(
            "error: {}; see --dead-letters / --max-rejected",
            rejections.summary()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `--out FILE` is written until the replay completes: `FILE.partial`, beside it.
fn partial_path(out: &std::path::Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// Output lines handed to the writer thread in blocks of about 64 KiB (the rest when
/// dropped, after the last output): a hand-off per line woke the writer for each of a
/// backtest's window results.
struct Lines {
    tx: std::sync::mpsc::Sender<Vec<u8>>,
    block: Vec<u8>,
}

impl Lines {
    /// Writes `o`'s line straight into the block.
    fn push(&mut self, o: &Output) {
        super::write_output_line(o, &mut self.block);
        if self.block.len() >= 1 << 16 {
            // The next block starts at its full size: grown from empty, it was copied
            // a dozen times on the way to 64 KiB.
            let next = Vec::with_capacity(self.block.capacity());
            let _ = self.tx.send(std::mem::replace(&mut self.block, next));
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if !self.block.is_empty() {
            let _ = self.tx.send(std::mem::take(&mut self.block));
        }
    }
}
