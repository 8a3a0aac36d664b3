//! The `rehydrate` command line: one subcommand per part of the system.
//!
//! Each subcommand's arguments are a clap `Args` struct owned by the part that runs it
//! (`backup` and `serve` are the backup server crate's); [`Command`] adds the help text
//! and `main.rs` dispatches.

use std::path::PathBuf;

use rehydrate_backup::replicate::{ReceiveArgs, ReplicateArgs};
use rehydrate_backup::{BackupCommand, ForgetArgs, GcArgs, ServeArgs};

use crate::protect::points::PointsArgs;
use crate::protect::{MarkArgs, ProtectArgs};
use crate::restore::RestoreArgs;
use crate::status::StatusArgs;

/// Rehydrate: restore volumes instantly from a backup served over NBD.
#[derive(Debug, clap::Parser)]
#[command(name = "rehydrate", version, propagate_version = true)]
#[command(
    about = "Back up volumes, serve them over NBD, and restore them instantly",
    long_about = None
)]
#[command(
    after_help = "Sizes take a unit: 4KiB, 1MiB, 1GiB. Logs go to stderr: errors only by default, warnings with -v, more with -vv and -vvv; RUST_LOG (e.g. RUST_LOG=debug) overrides."
)]
pub struct Cli {
    /// More log lines on stderr: -v warnings, -vv progress, -vvv debugging.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The log filter when RUST_LOG is unset. A failure ends with one line of its own,
    /// so retries and warnings on the way there stay quiet unless asked for; `serve`
    /// says where it listens and which names it refuses.
    pub fn log_filter(&self) -> &'static str {
        match (&self.command, self.verbose) {
            (_, 3..) => "debug",
            (_, 2) => "info",
            (Command::Serve(_) | Command::Receive(_), _) => "warn,rehydrate_backup=info",
            (_, 1) => "warn",
            (_, 0) => "error",
        }
    }
}

/// `backup` as `rehydrate` takes it: the backup server's arguments, and the map of
/// changes a restore keeps (which the backup server alone cannot read).
#[derive(Debug, clap::Args)]
pub struct BackupCli {
    /// What to back up, and where.
    #[command(flatten)]
    pub command: BackupCommand,
    /// Read only what changed since the last backup, from the map of changes kept in
    /// this restore metadata file (SOURCE is that restore's target; the restore or live
    /// export must be stopped). A missing or untrusted map: the whole volume is read,
    /// said in one line.
    #[arg(long, value_name = "METADATA")]
    pub changed_map: Option<PathBuf>,
}

/// The subcommands, in the order a restore uses them.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Back up an image file or block device as a new version of a volume.
    #[command(
        about = "Back up an image file or block device as a new version of a volume",
        long_about = "Back up an image file or block device as a new version of a volume in a \
chunk store (a directory, or an object store URL). The image is cut into fixed-size chunks \
named by their BLAKE3 hash; only chunks the store lacks are written, all-zero chunks are \
kept as a marker only, and the version becomes visible only once every chunk is stored, so \
an interrupted backup publishes nothing.\n\nExample:\n  rehydrate backup disk.img --store \
/var/backups --volume sys\n\nThe last line is `backup: volume=NAME version=N bytes=B \
new_chunks=C reused_chunks=R zero_chunks=Z ...`.\n\nWith --changed-map TARGET.rehydrate-meta, only \
the chunks written since the last backup are read (the live export of `rehydrate restore` keeps \
that map); the line then ends `incremental_from=V read_bytes=B`."
    )]
    Backup(BackupCli),
    /// Serve every volume version in a store, read-only, over NBD.
    #[command(
        about = "Serve every volume version in a store, read-only, over NBD",
        long_about = "Serve every volume version in a store, read-only, over NBD until \
Ctrl-C or SIGTERM. Export NAME is the newest version of volume NAME, NAME@N its version N. \
Zero chunks are holes in block status; a chunk that fails verification is an I/O error, \
never data. Any NBD client works: rehydrate restore, qemu-img, nbdinfo, nbdkit.\n\n\
Example:\n  rehydrate serve --store /var/backups --listen 127.0.0.1:10809\n  \
rehydrate restore --source nbd://127.0.0.1:10809/sys --target /dev/sdb"
    )]
    Serve(ServeArgs),
    /// Restore a whole volume from an NBD export into a file or block device (Linux).
    Restore(RestoreArgs),
    /// Merge an overlay restore's writes into its completed target.
    #[command(
        about = "Merge an overlay restore's writes into its completed target",
        long_about = crate::restore::overlay::cutover::CUTOVER_HELP
    )]
    Cutover(crate::restore::overlay::cutover::CutoverArgs),
    /// Restore a volume in place under the Rehydrate filter (Windows).
    #[cfg(windows)]
    Attach(crate::attach::AttachArgs),
    // Their about and long help (with an example) are on the argument structs.
    #[allow(missing_docs)]
    Protect(ProtectArgs),
    #[allow(missing_docs)]
    Mark(MarkArgs),
    #[allow(missing_docs)]
    Points(PointsArgs),
    /// Show how a running (or the last) restore stands.
    #[command(
        about = "Show how a running (or the last) restore stands",
        long_about = "Show how a running (or the last) restore stands: bytes and regions \
restored, rate, ETA, misses served, failures and retries, from the status file that \
`rehydrate restore` (and `rehydrate-sim demo`) rewrites twice a second. Says whether the \
process that wrote it still runs. Exits 1 with one line when there is no status file.\n\n\
Examples:\n  rehydrate status\n  rehydrate status --json --status-file /tmp/r/status.json"
    )]
    Status(StatusArgs),
    /// Send the versions a receiving store lacks; `replicate status` shows pending sessions.
    #[command(long_about = rehydrate_backup::replicate::cli::REPLICATE_HELP)]
    Replicate(ReplicateArgs),
    /// Receive replicated versions into a store (the other end of `replicate`).
    #[command(long_about = rehydrate_backup::replicate::cli::RECEIVE_HELP)]
    Receive(ReceiveArgs),
    /// Remove versions of a volume that no keep rule keeps.
    #[command(
        about = "Remove versions of a volume that no keep rule keeps",
        long_about = "Remove version indexes of a volume that no keep rule keeps: --keep-last N \
keeps the N newest, --keep-hourly/-daily/-weekly/-monthly/-yearly N the newest of each of the \
last N hours, days, ISO weeks, months, years with a version (UTC). At least one rule is needed. \
Chunks stay until `rehydrate gc`. Prints one line per version (keep, removed, or would remove \
with --dry-run) with its sizes.\n\nExample:\n  rehydrate forget --store /var/backups --volume sys \
--keep-last 3 --keep-daily 7 --dry-run"
    )]
    Forget(ForgetArgs),
    /// Delete chunks no version references, safely while backups run.
    #[command(
        about = "Delete chunks no version references, safely while backups run",
        long_about = "Delete the chunks no version references. Safe while backups run: chunks a \
running backup announced are kept, and a backup that needs a chunk this gc condemned waits \
for it. Prints one line per chunk with its size, then the totals.\n\nExample:\n  rehydrate gc \
--store s3://backups/fleet --dry-run"
    )]
    Gc(GcArgs),
    /// Copy-on-read disaster recovery between two sites (Linux).
    #[cfg(unix)]
    #[command(
        subcommand,
        about = "Copy-on-read disaster recovery: a DR copy readable before its initial sync ends",
        long_about = "Copy-on-read disaster recovery between two sites. `dr primary` serves the \
volume read-write over NBD and replicates it to `dr secondary`, whose copy is readable over NBD \
at once: a read of a region not copied yet is fetched from the primary first. Writes to regions \
already sent are replicated as they complete; writes to the rest go with the initial sync.\n\n\
Example:\n  rehydrate dr secondary --target dr.img --listen 0.0.0.0:10900 --export 127.0.0.1:10901\n  \
rehydrate dr primary --target disk.img --export 127.0.0.1:10809 --peer drhost:10900\n  \
rehydrate dr status --target dr.img\n  rehydrate dr promote --target dr.img"
    )]
    Dr(crate::dr::DrCommand),
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
        let Command::Restore(a) = cli.command else {
            panic!("not restore: {:?}", cli.command);
        };
        assert_eq!(
            (a.region_size, a.fetch_size, a.in_flight),
            (64 << 10, 2 << 20, 4)
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

    #[test]
    fn backup_takes_a_source_store_and_volume() {
        let cli = Cli::try_parse_from([
            "rehydrate",
            "backup",
            "disk.img",
            "--store",
            "/var/backups",
            "--volume",
            "sys",
        ])
        .unwrap();
        let Command::Backup(BackupCli {
            command: BackupCommand { args: a, verify },
            changed_map,
        }) = cli.command
        else {
            panic!("not backup: {:?}", cli.command);
        };
        assert!(!verify);
        assert_eq!(changed_map, None);
        let cli = Cli::try_parse_from([
            "rehydrate",
            "backup",
            "t.img",
            "--store",
            "s",
            "--volume",
            "v",
            "--changed-map",
            "t.img.rehydrate-meta",
        ])
        .unwrap();
        let Command::Backup(BackupCli { changed_map, .. }) = cli.command else {
            panic!("not backup");
        };
        assert_eq!(changed_map, Some(PathBuf::from("t.img.rehydrate-meta")));
        assert_eq!(a.source, std::path::PathBuf::from("disk.img"));
        assert_eq!(
            (a.store.as_str(), a.volume.as_str()),
            ("/var/backups", "sys")
        );
        assert!(!a.json);
        for bad in [
            vec!["rehydrate", "backup", "--store", "s", "--volume", "v"],
            vec!["rehydrate", "backup", "d", "--volume", "v"],
            vec!["rehydrate", "backup", "d", "--store", "s"],
            vec![
                "rehydrate",
                "backup",
                "d",
                "--store",
                "s",
                "--volume",
                "../x",
            ],
            vec![
                "rehydrate",
                "backup",
                "d",
                "--store",
                "s",
                "--volume",
                "v",
                "--chunk-size",
                "3KiB",
            ],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn logs_are_quiet_unless_asked_for() {
        let quiet = Cli::try_parse_from(["rehydrate", "status"]).unwrap();
        assert_eq!(quiet.log_filter(), "error");
        let v = Cli::try_parse_from(["rehydrate", "-v", "status"]).unwrap();
        assert_eq!(v.log_filter(), "warn");
        let vv = Cli::try_parse_from(["rehydrate", "status", "-vv"]).unwrap();
        assert_eq!(vv.log_filter(), "info");
        let serve = Cli::try_parse_from(["rehydrate", "serve", "--store", "s"]).unwrap();
        assert_eq!(serve.log_filter(), "warn,rehydrate_backup=info");
    }

    #[test]
    fn serve_listens_on_the_nbd_port_by_default() {
        let cli = Cli::try_parse_from(["rehydrate", "serve", "--store", "/s"]).unwrap();
        let Command::Serve(a) = cli.command else {
            panic!("not serve: {:?}", cli.command);
        };
        assert_eq!(
            (a.store.as_str(), a.listen.as_str()),
            ("/s", "127.0.0.1:10809")
        );
        let cli = Cli::try_parse_from([
            "rehydrate",
            "serve",
            "--store",
            "/s",
            "--listen",
            "0.0.0.0:1",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Serve(a) if a.listen == "0.0.0.0:1"));
        assert!(Cli::try_parse_from(["rehydrate", "serve"]).is_err());
    }

    #[test]
    fn status_takes_json_and_a_file() {
        let cli = Cli::try_parse_from(["rehydrate", "status"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Status(StatusArgs {
                json: false,
                status_file: None,
                metadata: None,
            })
        ));
        let cli = Cli::try_parse_from([
            "rehydrate",
            "status",
            "--json",
            "--status-file",
            "/x/s.json",
        ])
        .unwrap();
        let Command::Status(a) = cli.command else {
            panic!("not status: {:?}", cli.command);
        };
        assert!(a.json);
        assert_eq!(a.status_file, Some(std::path::PathBuf::from("/x/s.json")));
        assert!(Cli::try_parse_from(["rehydrate", "status", "extra"]).is_err());
        let cli = Cli::try_parse_from(["rehydrate", "status", "--metadata", "/m"]).unwrap();
        let Command::Status(a) = cli.command else {
            panic!("not status: {:?}", cli.command);
        };
        assert_eq!(a.metadata, Some(std::path::PathBuf::from("/m")));
        assert!(Cli::try_parse_from([
            "rehydrate",
            "status",
            "--metadata",
            "/m",
            "--status-file",
            "/s"
        ])
        .is_err());
    }

    #[test]
    fn every_subcommand_has_help_with_an_example() {
        let mut cli = Cli::command();
        for name in [
            "backup",
            "serve",
            "restore",
            "cutover",
            "status",
            "replicate",
            "receive",
            "forget",
            "gc",
            "protect",
            "mark",
            "points",
        ] {
            let sub = cli.find_subcommand_mut(name).unwrap();
            let help = sub.render_long_help().to_string();
            assert!(help.contains("rehydrate "), "{name}: {help}");
            assert!(sub.get_about().is_some(), "{name}");
        }
    }
}
