//! `rehydrate`: the service's command line. Every failure ends with one line
//! `rehydrate: error: ...` and a non-zero exit status.

use std::process::ExitCode;

use clap::Parser;
use rehydrate_service::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each error's message already names its cause, so the top one is the line.
            eprintln!("rehydrate: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Restore(args) => {
            let summary = rehydrate_service::restore::run(&args)?;
            println!(
                "{}",
                if args.json {
                    summary.json()
                } else {
                    summary.line()
                }
            );
            Ok(())
        }
    }
}
