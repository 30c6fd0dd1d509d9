//! Subcommands of the `forewarn` tool.

mod demo;
mod eval;
mod plot;
mod replay;
mod run;
mod simulate;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Forewarn: predictive maintenance on MQTT sensor streams with streaming SQL and anomaly models.
#[derive(Parser, Debug)]
#[command(name = "forewarn", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Zero-setup demo: embedded broker, simulated plant, shipped queries and models; prints alerts and a detection table.
    Demo(demo::DemoArgs),
    /// Run query files against a real plant's broker until Ctrl-C.
    Run(run::RunArgs),
    /// Publish the simulated plant to a broker and write its ground truth.
    Simulate(simulate::SimulateArgs),
    /// Train a model from the feature query it is scored with, over simulated healthy history.
    Train(train::TrainArgs),
    /// Score labelled history and report F1, false/missed-alarm rates and delay; run the SKAB benchmark.
    Eval(eval::EvalArgs),
    /// Parse, plan and type-check query files against their schemas and the models.
    Check(CheckArgs),
    /// Run query files over recorded history (CSV, JSON lines, Parquet) as fast as possible.
    Replay(replay::ReplayArgs),
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// Query files or directories.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Model directory.
    #[arg(long, default_value = "models")]
    models: PathBuf,
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
    }
}

async fn check(a: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut b = forewarn::Pipeline::builder().models_dir(&a.models);
    for f in &a.files {
        b = b.query_file(f);
    }
    match b.build().await {
        Ok(p) => {
            println!(
                "ok: {} queries ({})",
                p.query_names().len(),
                p.query_names().join(", ")
            );
            if a.explain {
                for e in p.explain() {
                    println!("\n{e}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(1))
        }
    }
}
