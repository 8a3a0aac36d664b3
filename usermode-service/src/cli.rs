//! The `rehydrate` command line: one subcommand per part of the system.
//!
//! Extension point: `backup`, `serve` and `status` join [`Command`] as variants holding
//! their own clap `Args` structs (the backup server crate exposes its own), and
//! `main.rs` dispatches on them; nothing else here changes.

use crate::restore::RestoreArgs;

/// Rehydrate: restore volumes instantly from a backup served over NBD.
#[derive(Debug, clap::Parser)]
#[command(name = "rehydrate", version, propagate_version = true)]
#[command(about = "Restore volumes from a backup served over NBD", long_about = None)]
#[command(
    after_help = "Sizes take a unit: 4KiB, 1MiB, 1GiB. Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Restore a whole volume from an NBD export into a file or block device (Linux).
    Restore(RestoreArgs),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn the_cli_is_well_formed_and_parses_sizes() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "rehydrate",
            "restore",
            "--source",
            "nbd://127.0.0.1:1/x",
            "--target",
            "/tmp/t",
            "--region-size",
            "64KiB",
            "--fetch-size",
            "2MiB",
        ])
        .unwrap();
        let Command::Restore(a) = cli.command;
        assert_eq!(
            (a.region_size, a.fetch_size, a.in_flight),
            (64 << 10, 2 << 20, 8)
        );
        assert_eq!(
            a.metadata_path(),
            std::path::PathBuf::from("/tmp/t.rehydrate-meta")
        );
        assert!(Cli::try_parse_from([
            "rehydrate",
            "restore",
            "--source",
            "x",
            "--target",
            "t",
            "--fetch-size",
            "1.5MiB"
        ])
        .is_err());
    }
}
