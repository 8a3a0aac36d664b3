//! `rehydrate`: the service's command line. Every failure ends with one line
//! `rehydrate: error: ...` and a non-zero exit status.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use rehydrate_service::cli::{Cli, Command};
use rehydrate_service::ServiceError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` says where it listens and which export names it refuses (info level);
    // everything else stays quiet unless RUST_LOG asks.
    let default_filter = match cli.command {
        Command::Serve(_) => "warn,rehydrate_backup=info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
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
        Command::Backup(args) => {
            let json = args.json;
            let summary = runtime()?.block_on(rehydrate_backup::run_backup(args))?;
            println!("{}", summary.render(json));
        }
        Command::Serve(args) => runtime()?.block_on(rehydrate_backup::run_serve(args))?,
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
        }
        Command::Status(args) => println!("{}", args.run()?),
        Command::Forget(args) => {
            runtime()?.block_on(rehydrate_backup::run_forget(&args, &mut |l| {
                println!("{l}")
            }))?;
        }
        Command::Gc(args) => {
            runtime()?.block_on(rehydrate_backup::run_gc(&args, &mut |l| println!("{l}")))?;
        }
    }
    Ok(())
}

/// The runtime `backup` and `serve` run on: multi-threaded, as the backup hashes and
/// compresses chunks while it reads, and the server serves connections in parallel.
fn runtime() -> Result<tokio::runtime::Runtime, ServiceError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServiceError::Runtime)
}
