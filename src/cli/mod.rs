//! Subcommands of the `forewarn` tool.

mod demo;
mod demo_vibration;
mod eval;
mod plot;
mod replay;
mod run;
mod simulate;
mod train;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use datafusion::arrow::datatypes::DataType;
use forewarn::config::LogFormat;
use forewarn::{Model, QuerySet, SqlError};

/// Set once by `main` when logs are JSON lines: `run`'s own closing reports are then
/// log events too, so that every line on stderr is one JSON object.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records the log format chosen (see [`json_logs`]).
pub fn set_log_format(f: LogFormat) {
    JSON_LOGS.store(f == LogFormat::Json, std::sync::atomic::Ordering::Relaxed);
}

/// Whether logs are JSON lines.
pub fn json_logs() -> bool {
    JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Forewarn: predictive maintenance on MQTT sensor streams with streaming SQL and anomaly models.
#[derive(Parser, Debug)]
#[command(name = "forewarn", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: text, or json (one object per line: timestamp, level,
    /// target, message and the event's fields) [default: the config file's [log]
    /// format, else text]. The level comes from RUST_LOG.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormatArg>,
}

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormatArg {
    Text,
    Json,
}

impl Cli {
    /// The log format: `--log-format`, else `[log] format` of `run --config FILE` (or
    /// the `--config FILE` of `replay`, `train` or `eval`), else text. A file that does not load gives text here; the
    /// command then reports why.
    pub fn log_format(&self) -> LogFormat {
        let config_file = match &self.command {
            Command::Run(r) => r.config_file(),
            Command::Replay(r) => r.config_file(),
            Command::Train(t) => t.config_file(),
            Command::Eval(e) => e.config_file(),
            _ => None,
        };
        match self.log_format {
            Some(LogFormatArg::Text) => LogFormat::Text,
            Some(LogFormatArg::Json) => LogFormat::Json,
            None => config_file
                .and_then(|p| forewarn::config::ServiceConfig::from_file(p).ok())
                .map(|c| c.log.format)
                .unwrap_or_default(),
        }
    }

    /// The log filter when `RUST_LOG` gives none: the engine's progress at info, except
    /// for `demo --quiet`, which prints only its summary.
    pub fn default_log_filter(&self) -> &'static str {
        match &self.command {
            Command::Demo(d) if d.quiet => "warn,rumqttd=off",
            _ => "warn,rumqttd=off,forewarn=info",
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Zero-setup demo: embedded broker, simulated plant, shipped queries and models; prints alerts and a detection table.
    Demo(demo::DemoArgs),
    /// Run query files against a real plant's broker until Ctrl-C or SIGTERM.
    Run(run::RunArgs),
    /// Publish the simulated plant to a broker and write its ground truth.
    Simulate(simulate::SimulateArgs),
    /// Train a model on the feature query it is scored with, replayed over recorded history (--data) or simulated healthy history; or on CSV columns (--features).
    Train(train::TrainArgs),
    /// Score labelled history and report F1, false/missed-alarm rates and delay; run the SKAB benchmark.
    Eval(eval::EvalArgs),
    /// Parse, plan and type-check query files against their schemas and the models.
    Check(CheckArgs),
    /// Run query files over recorded history (CSV, JSON lines, Parquet) as fast as possible.
    Replay(replay::ReplayArgs),
    /// Show the configuration file's keys with their defaults, or check a file and show what it sets.
    Config(ConfigArgs),
}

#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
struct ConfigArgs {
    /// Print every section and key with its default value (TOML), ready to edit.
    #[arg(long)]
    print_default: bool,
    /// Check a configuration file and print the settings it gives, defaults filled in.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
}

/// `forewarn config`.
fn config(a: ConfigArgs) -> anyhow::Result<ExitCode> {
    use forewarn::config::ServiceConfig;
    let c = match &a.check {
        Some(p) => {
            let c = ServiceConfig::from_file(p)?;
            c.check()
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            // Not errors: the file may be meant for another machine, where they exist.
            for (key, path) in c.missing_paths() {
                eprintln!(
                    "note: {key} = {} does not exist here: `forewarn run --config {}` would stop on it (relative paths in the file are relative to its directory)",
                    path.display(),
                    p.display()
                );
            }
            c
        }
        None => ServiceConfig::default(),
    };
    if a.print_default {
        println!("# forewarn.toml: every key with its default; keys without one are commented");
        println!("# out with an example. See docs/operations.md.");
        print!("{}", ServiceConfig::default_toml());
    } else {
        print!("{}", toml::to_string_pretty(&c)?);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// Query files or directories.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Model directory [default: ./models when it exists; without one, the queries are
    /// checked and the models they call are reported as not loaded].
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,
    /// Also print each query's streaming plan (per-pane partial half, final half).
    #[arg(long)]
    explain: bool,
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(a) => demo::demo(a).await,
        Command::Run(a) => run::run(a).await,
        Command::Simulate(a) => simulate::simulate(a).await,
        Command::Train(a) => train::train(a).await,
        Command::Check(a) => check(a).await,
        Command::Eval(a) => eval::eval(a).await,
        Command::Replay(a) => replay::replay(a).await,
        Command::Config(a) => config(a),
    }
}

/// An error as the terminal should show it: every message of the chain once. A query
/// error (`file:line:column: error: ...` with the line underlined) reads like a
/// compiler's and is printed as it is, after whatever context wraps it; anything else
/// is `error: context: cause`.
pub fn render_error(e: &anyhow::Error) -> String {
    let chain: Vec<&(dyn std::error::Error + 'static)> = e.chain().collect();
    // Wrappers often repeat their source's text (`#[error("{0}")]`, `"{path}: {source}"`),
    // and anyhow's chain then prints it twice: keep a message only if the one before
    // it does not already say it.
    let messages = |errs: &[&(dyn std::error::Error + 'static)]| {
        let mut kept: Vec<String> = Vec::new();
        for m in errs.iter().map(|c| c.to_string()) {
            if !kept.last().is_some_and(|k| k.contains(&m)) {
                kept.push(m);
            }
        }
        kept
    };
    if let Some(i) = chain
        .iter()
        .position(|c| c.downcast_ref::<SqlError>().is_some())
    {
        let located = chain[i].to_string();
        let context: Vec<String> = messages(&chain[..i])
            .into_iter()
            .filter(|m| !m.contains(&located))
            .collect();
        return if context.is_empty() {
            located
        } else {
            format!("error: {}\n{located}", context.join(": "))
        };
    }
    format!("error: {}", messages(&chain).join(": "))
}

/// The `--models` directory: the one given, or `./models` if it exists. A directory
/// given but missing is an error naming the flag; `None` when none was given and
/// `./models` does not exist.
pub fn models_dir(given: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    match given {
        Some(p) if p.is_dir() => Ok(Some(p.to_path_buf())),
        Some(p) if p.exists() => bail!("--models {}: not a directory", p.display()),
        Some(p) => bail!("--models {}: no such directory", p.display()),
        None if Path::new(DEFAULT_MODELS).is_dir() => Ok(Some(DEFAULT_MODELS.into())),
        None => Ok(None),
    }
}

/// [`models_dir`], where without `--models` the directory may come from the `models` of
/// a config file (`config`: the file and the directory), named as such when missing.
pub fn models_dir_or_config(
    given: Option<&Path>,
    config: Option<(&Path, &Path)>,
) -> anyhow::Result<Option<PathBuf>> {
    match (given, config) {
        (None, Some((_, dir))) if dir.is_dir() => Ok(Some(dir.to_path_buf())),
        (None, Some((file, dir))) => bail!(
            "models in {}: {}: {}",
            file.display(),
            dir.display(),
            if dir.exists() {
                "not a directory"
            } else {
                "no such directory"
            }
        ),
        _ => models_dir(given),
    }
}

/// Where models are looked for when `--models` is not given.
pub const DEFAULT_MODELS: &str = "models";

/// Why no models are loaded, for messages: `--models models: no such directory ...`.
pub fn no_models_dir() -> String {
    format!("--models {DEFAULT_MODELS}: no such directory (default: ./{DEFAULT_MODELS}; pass --models DIR)")
}

/// Fails with [`no_models_dir`] when the queries score with models but none are loaded.
pub fn require_models(set: &QuerySet, dir: Option<&Path>) -> anyhow::Result<()> {
    if dir.is_none() {
        let used = forewarn_sql::scored_models(set)?;
        if !used.is_empty() {
            bail!(
                "{}; the queries score with {}",
                no_models_dir(),
                used.join(", ")
            );
        }
    }
    Ok(())
}

/// The query files at `paths` (files, or every `*.sql` in a directory) parsed into one
/// set; a path that does not exist is an error naming `flag` (e.g. `--queries`; empty
/// for positional arguments).
pub fn read_query_set(flag: &str, paths: &[PathBuf]) -> anyhow::Result<QuerySet> {
    let mut set = QuerySet::default();
    for path in paths {
        for f in query_files(flag, path)? {
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            set.add_file(&f.display().to_string(), &text)?;
        }
    }
    Ok(set)
}

/// Fails naming `flag` when the input file `path` does not exist.
pub fn require_file(flag: &str, path: Option<&Path>) -> anyhow::Result<()> {
    match path {
        Some(p) if !p.exists() => bail!("{flag} {}: no such file or directory", p.display()),
        _ => Ok(()),
    }
}

/// The live engine's settings from `--config FILE` (its `[engine]` section, the values
/// checked as the file is read), for a command that replays history as that engine
/// would take it live; the engine's defaults without it.
pub fn engine_settings(config: Option<&Path>) -> anyhow::Result<forewarn::EngineConfig> {
    let Some(p) = config else {
        return Ok(forewarn::EngineConfig::default());
    };
    require_file("--config", Some(p))?;
    Ok(forewarn::config::ServiceConfig::from_file(p)?
        .engine
        .to_config())
}

/// The query files at `path`: the file, or every `*.sql` in the directory (sorted, as
/// the pipeline reads them). A path that does not exist is an error naming `flag`.
pub fn query_files(flag: &str, path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let named = || {
        let sep = if flag.is_empty() { "" } else { " " };
        format!("{flag}{sep}{}", path.display())
    };
    if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(named)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.extension().is_some_and(|x| x == "sql"))
            .collect();
        if v.is_empty() {
            bail!("{}: the directory has no .sql files", named());
        }
        v.sort();
        Ok(v)
    } else if path.exists() {
        Ok(vec![path.to_path_buf()])
    } else {
        bail!("{}: no such file or directory", named())
    }
}

/// Stand-ins for the models the queries score with that are not loaded, so that
/// `check` plans everything else: each takes the arguments of the first call to it
/// (a key first when that argument is a text column of the source).
fn stand_ins(set: &QuerySet) -> anyhow::Result<Vec<Model>> {
    use forewarn_scorer::{Calibration, Detector, Provenance, RobustParams, Scaler};
    let mut out = Vec::new();
    for name in forewarn_sql::scored_models(set)? {
        let (fq, mut features) = forewarn_sql::feature_query(set, &name)?;
        let keyed = fq.sources.values().next().is_some_and(|s| {
            features.len() > 1
                && s.schema.fields().iter().any(|f| {
                    f.name() == &features[0]
                        && matches!(
                            f.data_type(),
                            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                        )
                })
        });
        let key = keyed.then(|| features.remove(0));
        let n = features.len();
        out.push(Model {
            format_version: forewarn_scorer::FORMAT_VERSION,
            name,
            features,
            key,
            scaler: Scaler {
                mean: vec![0.0; n],
                std: vec![1.0; n],
            },
            detector: Detector::Robust(RobustParams::default()),
            calibration: Calibration {
                baseline: 0.0,
                threshold: 1.0,
                method: "stand-in for forewarn check".into(),
                tail: Some(forewarn_scorer::ScoreTail {
                    knots: vec![[0.0, 0.0], [1.0, -3.0]],
                    scale: 1.0,
                }),
            },
            provenance: Provenance {
                rows: 0,
                fingerprint: String::new(),
                created: String::new(),
                forewarn_version: env!("CARGO_PKG_VERSION").into(),
            },
        });
    }
    Ok(out)
}

async fn check(a: CheckArgs) -> anyhow::Result<ExitCode> {
    let models = models_dir(a.models.as_deref())?;
    // A directory is one pipeline, its own *.sql only: say which query files are left.
    for dir in a.files.iter().filter(|f| f.is_dir()) {
        let nested: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|d| d.is_dir() && query_files("", d).is_ok())
            .map(|d| d.display().to_string())
            .collect();
        if !nested.is_empty() {
            let mut nested = nested;
            nested.sort();
            eprintln!(
                "note: not checked, in subdirectories of {} (each directory is a pipeline of its own; check it by name): {}",
                dir.display(),
                nested.join(", ")
            );
        }
    }
    let mut b = forewarn::Pipeline::builder();
    for f in &a.files {
        b = b.query_file(f);
    }
    let mut missing = Vec::new();
    if let Some(dir) = &models {
        b = b.models_dir(dir);
    } else {
        // Without models the queries are still parsed, planned and type-checked; the
        // calls to models are planned against stand-ins and reported.
        for m in stand_ins(&read_query_set("", &a.files)?)? {
            missing.push(m.name.clone());
            b = b.model(m);
        }
    }
    match b.build().await {
        Ok(p) => {
            if !missing.is_empty() {
                eprintln!(
                    "note: not loaded, so the calls to them were not checked against them: {} (no models: ./{DEFAULT_MODELS} does not exist; pass --models DIR)",
                    missing.join(", "),
                );
            }
            println!(
                "ok: {} queries ({})",
                p.query_names().len(),
                p.query_names().join(", ")
            );
            for d in p.describe_detectors() {
                println!("  {d}");
            }
            if a.explain {
                for e in p.explain() {
                    println!("\n{e}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        // Printed by main: exit code 1 for a query error, 2 for anything else.
        Err(e) => {
            // "loaded models: none" alone does not say where none were found.
            if let Some(dir) = models.as_deref().filter(|d| no_model_files(d)) {
                eprintln!(
                    "note: the models directory {} holds no model files (*.json): train one with `forewarn train --queries FILE --model NAME --out {}/NAME.json ...` (docs/models.md)",
                    dir.display(),
                    dir.display()
                );
            }
            Err(e.into())
        }
    }
}

/// Whether `dir` holds no `*.json` file, the files a models directory loads.
fn no_model_files(dir: &Path) -> bool {
    !std::fs::read_dir(dir).into_iter().flatten().any(|e| {
        e.ok()
            .is_some_and(|e| e.path().extension().is_some_and(|x| x == "json"))
    })
}

/// An output as one line of `replay --out` and `--dead-letters` files:
/// `{"payload": ..., "topic": ...}` and a newline. The payload is spliced in as the
/// exact bytes a sink would publish (no parse and re-serialise: that was 30 % of a
/// backtest's time), so a replay's payloads equal the live ones byte for byte.
pub fn output_line(o: &forewarn::Output) -> Vec<u8> {
    let mut line = Vec::new();
    write_output_line(o, &mut line);
    line
}

/// Appends [`output_line`]'s bytes to `out`, the payload written in place.
pub fn write_output_line(o: &forewarn::Output, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"payload\":");
    o.write_payload(out);
    out.extend_from_slice(b",\"topic\":");
    serde_json::to_writer(&mut *out, o.topic()).expect("a string serialises");
    out.extend_from_slice(b"}\n");
}

/// The history order a `--sort` flag asks for.
pub fn order(sort: bool) -> forewarn::replay::Order {
    if sort {
        forewarn::replay::Order::Sort
    } else {
        forewarn::replay::Order::Check
    }
}
