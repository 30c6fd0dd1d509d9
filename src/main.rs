//! The `forewarn` command line tool.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    tracing_subscriber::fmt()
        // rumqttd logs every client disconnect as an error; the embedded broker stays quiet
        // unless RUST_LOG asks for it.
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| args.default_log_filter().into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", cli::render_error(&e));
            // 1: a query file is wrong (as `check` reports it); 2: anything else.
            let query_error = e
                .chain()
                .any(|c| c.downcast_ref::<forewarn::SqlError>().is_some());
            std::process::ExitCode::from(if query_error { 1 } else { 2 })
        }
    }
}
