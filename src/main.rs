//! The `bluegreen` binary: parses the command line and hands over to [`bluegreen::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match bluegreen::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                bluegreen::exit::USAGE
            } else {
                bluegreen::exit::OK
            });
        }
    };
    // The worker logs JSON at info (one span per message); the other commands log
    // plain text at warn. BLUEGREEN_LOG overrides the level.
    // `local` logs plain text at info for the person running it.
    let worker = matches!(cli.command, bluegreen::cli::Command::Worker { .. });
    let local = matches!(cli.command, bluegreen::cli::Command::Local { .. });
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("BLUEGREEN_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(if worker || local { "info" } else { "warn" })
        });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if worker {
        logs.json()
            .with_current_span(true)
            .with_span_list(true)
            .init();
        bluegreen::telemetry::log_panics(std::io::stderr);
    } else {
        logs.init();
    }
    let code = bluegreen::cli::run(cli, &mut std::io::stdout(), &mut std::io::stderr());
    ExitCode::from(code)
}
