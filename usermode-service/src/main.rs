//! `rehydrate`: the service's command line. Every failure ends with one line
//! `rehydrate: error: ...` and a non-zero exit status.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use rehydrate_service::cli::{Cli, Command};
use rehydrate_service::ServiceError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.log_filter())),
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
            let json = args.command.args.json;
            let rt = runtime()?;
            let summary = match &args.changed_map {
                Some(map) => rt.block_on(rehydrate_service::changed_backup::run(args.command, map)),
                None => rt
                    .block_on(rehydrate_backup::run_backup_command(args.command))
                    .map_err(ServiceError::from),
            };
            // A backup that succeeded awaited everything it started (the version and the
            // map's reset are durable), so nothing is left for the runtime's threads: they
            // are left to end with the process rather than woken and joined one by one,
            // which took about 2 ms here. After a failure the runtime waits for them as usual.
            if summary.is_ok() {
                rt.shutdown_background();
            }
            let summary = summary?;
            // The version is published: whatever happens to stdout, the backup succeeded.
            print_last_line(&summary.render(json));
        }
        Command::Serve(args) => runtime()?.block_on(rehydrate_backup::run_serve(args))?,
        Command::Restore(args) => {
            let summary = rehydrate_service::restore::run(&args)?;
            print_last_line(&if args.json {
                summary.json()
            } else {
                summary.line()
            });
        }
        Command::Cutover(args) => print_last_line(&args.run()?),
        Command::Status(args) => print_last_line(&args.run()?),
        Command::Protect(args) => print_last_line(&rehydrate_service::protect::run(&args)?.line()),
        Command::Mark(args) => print_last_line(&rehydrate_service::protect::mark(&args)?),
        Command::Points(args) => {
            let (lines, last) = rehydrate_service::protect::points::run(&args)?;
            let mut all = lines;
            all.push(last);
            print_last_line(&all.join("\n"));
        }
        #[cfg(windows)]
        Command::Attach(args) => print_last_line(&rehydrate_service::attach::run(&args)?.line()),
        Command::Receive(args) => runtime()?.block_on(args.run())?,
        #[cfg(unix)]
        Command::Dr(command) => print_last_line(&command.run()?),
        Command::Replicate(args) => match runtime()?.block_on(args.run())? {
            0 => {}
            code => std::process::exit(code.into()),
        },
        // One line per version or chunk, then the summary.
        Command::Forget(args) => {
            runtime()?.block_on(rehydrate_backup::run_forget(&args, &mut |l| {
                print_last_line(l)
            }))?;
        }
        Command::Gc(args) => {
            runtime()?.block_on(rehydrate_backup::run_gc(&args, &mut |l| print_last_line(l)))?;
        }
    }
    Ok(())
}

/// Prints the command's result. A reader that went away (`rehydrate status | head -1`,
/// a closed pipe) is a normal end, not an error: the work is done either way.
fn print_last_line(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("rehydrate: warning: cannot write the result to stdout: {e}");
        }
    }
}

/// The runtime `backup` and `serve` run on: multi-threaded, as the backup hashes and
/// compresses chunks while it reads, and the server serves connections in parallel.
fn runtime() -> Result<tokio::runtime::Runtime, ServiceError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServiceError::Runtime)
}
