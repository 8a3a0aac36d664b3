//! `rehydrate-backup backup|serve|forget|gc`: the backup server's subcommands on their
//! own, with the same arguments `rehydrate backup`, `serve`, `forget` and `gc` take.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rehydrate_backup::cli::{run_backup_command, run_serve, BackupCommand, ServeArgs};
use rehydrate_backup::replicate::{ReceiveArgs, ReplicateArgs};
use rehydrate_backup::{run_forget, run_gc, ForgetArgs, GcArgs};

#[derive(Parser)]
#[command(
    name = "rehydrate-backup",
    version,
    about = "Back up volumes and serve them over NBD"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Back up an image file or block device as a new version of a volume.
    Backup(BackupCommand),
    /// Serve every volume version in a store over NBD (read-only).
    Serve(ServeArgs),
    /// Send the versions a receiving store lacks (`replicate status`: pending sessions).
    Replicate(ReplicateArgs),
    /// Receive replicated versions into a store.
    Receive(ReceiveArgs),
    /// Remove versions of a volume that no keep rule keeps.
    Forget(ForgetArgs),
    /// Delete chunks no version references (safe while backups run).
    Gc(GcArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REHYDRATE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Backup(command) => {
                let json = command.args.json;
                run_backup_command(command).await.map(|summary| {
                    // Published: a reader that went away does not make it a failure.
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{}", summary.render(json)).and_then(|()| out.flush());
                })
            }
            Command::Serve(args) => run_serve(args).await,
            Command::Receive(args) => args.run().await,
            Command::Replicate(args) => args.run().await.map(|code| {
                if code != 0 {
                    std::process::exit(code.into());
                }
            }),
            Command::Forget(args) => run_forget(&args, &mut print_line).await.map(drop),
            Command::Gc(args) => run_gc(&args, &mut print_line).await.map(drop),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One line of `forget`'s or `gc`'s report; a reader that went away is no failure (the
/// work is done either way).
fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
