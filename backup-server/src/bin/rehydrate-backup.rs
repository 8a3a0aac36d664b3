//! `rehydrate-backup backup|serve|forget|gc`: the backup server's subcommands on their
//! own, with the same arguments `rehydrate backup`, `serve`, `forget` and `gc` take.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rehydrate_backup::cli::{run_backup, run_serve, BackupArgs, ServeArgs};
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
    Backup(BackupArgs),
    /// Serve every volume version in a store over NBD (read-only).
    Serve(ServeArgs),
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
            Command::Backup(args) => {
                let json = args.json;
                run_backup(args)
                    .await
                    .map(|summary| println!("{}", summary.render(json)))
            }
            Command::Serve(args) => run_serve(args).await,
            Command::Forget(args) => run_forget(&args, &mut |l| println!("{l}")).await.map(drop),
            Command::Gc(args) => run_gc(&args, &mut |l| println!("{l}")).await.map(drop),
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
