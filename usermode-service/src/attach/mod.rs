//! `rehydrate attach`: the service side of a restore in place on Windows. It writes the
//! filter's `Parameters`, formats the metadata file of a new restore, waits for the
//! filter to start on the target volume, attaches to it through its control device,
//! runs the hydrator until every region is restored, and detaches
//! (driver/kmdf/README.md walks through it in WinPE).
//!
//! [`flow`] is the whole command written against a [`flow::Host`], and [`session`] the
//! loop over the driver link, so Linux tests run both; [`names`] turns volume and file
//! names into what the driver reads. The calls into Windows (registry, volume names and
//! identity, the metadata file, the control device) are in `windows.rs`.

pub mod flow;
pub mod inspect;
pub mod names;
pub mod session;
#[cfg(windows)]
mod windows;

use std::path::PathBuf;

use rehydrate_backup::parse_size;

#[cfg(windows)]
pub use windows::run;

/// Arguments of `rehydrate attach`.
#[derive(Clone, Debug, clap::Args)]
#[command(
    about = "Restore a volume in place under the Rehydrate filter (Windows)",
    long_about = "Restore a volume in place under the Rehydrate volume filter: the volume is \
usable at once, reads of regions not yet restored are fetched on demand, and a background \
sweep restores the rest. Writes the filter's Parameters (which volume, which restore, where \
its metadata is), creates and formats the metadata file of a new restore, waits for the filter \
to start on the volume (bring the disk online), attaches, and detaches when every region is \
restored. Run it again after a reboot or Ctrl-C: the restore resumes from the metadata.\n\n\
Example:\n  rehydrate attach --volume \\\\?\\Volume{GUID}\\ --source nbd://10.0.0.5:10809/sys \
--metadata D:\\rehydrate\\sys.meta\n\nThe last line is `attach: complete bytes=N secs=S ...`."
)]
pub struct AttachArgs {
    /// The volume to restore: \\?\Volume{GUID}\ (or a drive letter, e.g. E:).
    #[arg(long, value_name = "VOLUME")]
    pub volume: String,
    /// The backup: nbd://HOST[:PORT]/EXPORT
    #[arg(long, value_name = "URL")]
    pub source: String,
    /// The metadata file, on another persistent volume (not the one restored, not WinPE's
    /// X: RAM disk): it must survive a reboot for the restore to resume.
    #[arg(long, value_name = "PATH")]
    pub metadata: PathBuf,
    /// Region size of a new restore (power of two, 4KiB to 1MiB).
    #[arg(long, value_name = "SIZE", default_value = "4KiB", value_parser = parse_size)]
    pub region_size: u64,
    /// Largest single fetch from the source (whole regions, at most 8MiB).
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size)]
    pub fetch_size: u64,
    /// Fetches in flight at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub in_flight: usize,
    /// Limit the background restore to this many bytes per second (e.g. 64MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub rate_limit: Option<u64>,
    /// Seconds a failing fetch (or the first connection) is retried before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub deadline: u64,
    /// GET_MISSING requests kept pended at the driver (1 to 16).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub pended: usize,
    /// Seconds to wait for the filter to start on the volume.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub wait: u64,
    /// Where to keep the snapshot `rehydrate status` reads [default: one file per volume
    /// in %LOCALAPPDATA%\rehydrate\]
    #[arg(long, value_name = "PATH")]
    pub status_file: Option<PathBuf>,
}

/// Everything `rehydrate attach` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// `--volume` or `--metadata` names nothing usable.
    #[error(transparent)]
    Name(#[from] names::NameError),
    /// The source URL does not parse.
    #[error(transparent)]
    Url(rehydrate_nbd::Error),
    /// Binding the restore failed as `rehydrate restore` would: the source is not the
    /// one the metadata pins, the metadata belongs to another restore or volume, ...
    #[error(transparent)]
    Restore(Box<crate::ServiceError>),
    /// The source is empty: there is nothing to restore.
    #[error("{0} is empty: nothing to restore")]
    EmptySource(String),
    /// The volume is not the size of the restored volume.
    #[error("{volume} holds {length_bytes} bytes but the backup needs a volume of exactly {needed_bytes}; create a partition of that size (driver/kmdf/README.md)")]
    VolumeSize {
        /// The volume.
        volume: String,
        /// Its length.
        length_bytes: u64,
        /// The backup's size, rounded up to a sector.
        needed_bytes: u64,
    },
    /// A Windows call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The volume's identity could not be read.
    #[error("{volume} does not say which partition it is: {source}")]
    VolumeIdentity {
        /// The volume.
        volume: String,
        /// Why.
        source: rehydrate_driver::volume_id::ProbeError,
    },
    /// The driver is not installed (no `Rehydrate` service key).
    #[error("the Rehydrate driver is not installed (drvload rehydrate_kmdf.inf, see driver/kmdf/README.md)")]
    NotInstalled,
    /// The filter did not start on the volume in time.
    #[error("the filter did not start on {volume} within {secs} s: bring the disk online (diskpart: online disk) and check the System event log")]
    NoFilter {
        /// The volume.
        volume: String,
        /// How long we waited.
        secs: u64,
    },
    /// The filter started on a volume that is not the one the restore writes (another
    /// volume took the device name), and stays out of its way.
    #[error("the filter refused the volume it started on as {volume}: {}; nothing was written to it (check --volume, then run attach again)", refusal.map_or("it is not the restore's volume", |r| r.describe()))]
    Refused {
        /// The volume.
        volume: String,
        /// Why, as the filter said.
        refusal: Option<rehydrate_driver::abi::Refusal>,
    },
    /// The session ended without the restore complete.
    #[error(transparent)]
    Session(#[from] session::SessionError),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// What a completed attach did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Volume size.
    pub bytes: u64,
    /// Wall time.
    pub secs: f64,
    /// The session's report.
    pub report: session::SessionReport,
}

impl Summary {
    /// The last line.
    pub fn line(&self) -> String {
        let p = &self.report.progress;
        format!(
            "attach: complete bytes={} secs={:.1} fetched_bytes={} zero_bytes={} misses_served={} retries={} pends_failed={}",
            self.bytes,
            self.secs,
            p.fetched_bytes,
            p.zero_bytes,
            p.misses_served,
            p.retries,
            self.report.pends_failed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: AttachArgs,
    }

    #[test]
    fn attach_takes_a_volume_a_source_and_a_metadata_file() {
        let cli = Cli::try_parse_from([
            "attach",
            "--volume",
            r"\\?\Volume{0b7d4cf1-2a3e-4c5f-9d8a-1f2e3d4c5b6a}\",
            "--source",
            "nbd://10.0.0.5:10809/sys",
            "--metadata",
            r"D:\rehydrate\sys.meta",
        ])
        .unwrap();
        assert_eq!(cli.args.region_size, 4096);
        assert_eq!((cli.args.pended, cli.args.in_flight), (4, 8));
        for missing in ["--volume", "--source", "--metadata"] {
            let mut argv = vec![
                "attach",
                "--volume",
                "E:",
                "--source",
                "nbd://h/x",
                "--metadata",
                "m",
            ];
            let at = argv.iter().position(|a| *a == missing).unwrap();
            argv.drain(at..at + 2);
            assert!(Cli::try_parse_from(&argv).is_err(), "{missing} is required");
        }
    }
}
