//! The `forewarn` command line tool.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    forewarn::keep_freed_memory();
    let args = cli::Cli::parse();
    // rumqttd logs every client disconnect as an error; the embedded broker stays quiet
    // unless RUST_LOG asks for it.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| args.default_log_filter().into());
    let format = args.log_format();
    cli::set_log_format(format);
    match format {
        forewarn::config::LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init(),
        // The schema docs/operations.md promises: timestamp (RFC 3339, UTC), level,
        // target, message and the event's own fields at the top level; no spans (the
        // engine opens none worth a field), so the keys do not depend on the call site.
        forewarn::config::LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init(),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            if cli::json_logs() {
                tracing::error!("{}", cli::render_error(&e));
            } else {
                eprintln!("{}", cli::render_error(&e));
            }
            // 1: a query file is wrong (as `check` reports it); 2: anything else.
            let query_error = e
                .chain()
                .any(|c| c.downcast_ref::<forewarn::SqlError>().is_some());
            std::process::ExitCode::from(if query_error { 1 } else { 2 })
        }
    }
}
