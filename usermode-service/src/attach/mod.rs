//! `rehydrate attach`: the service side of a restore in place on Windows. It writes the
//! filter's `Parameters`, formats the metadata file of a new restore, waits for the
//! filter to start on the target volume, attaches to it through its control device,
//! runs the hydrator until every region is restored, and detaches
//! (driver/kmdf/README.md walks through it in WinPE).
//!
//! [`session`] is the loop itself, written against the driver link so Linux tests run
//! it; [`names`] turns volume and file names into what the driver reads. The calls into
//! Windows (registry, volume names, the control device) are in `windows.rs`.

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
    /// The source could not be used.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// The source's size or the region size make no valid volume.
    #[error("source of {size_bytes} bytes cannot be restored: {source}")]
    Geometry {
        /// The source's size.
        size_bytes: u64,
        /// Why.
        source: rehydrate_driver::GeometryError,
    },
    /// The hydrator settings are invalid.
    #[error(transparent)]
    Config(#[from] crate::hydrator::ConfigError),
    /// A Windows call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The driver is not installed (no `Rehydrate` service key).
    #[error("the Rehydrate driver is not installed (drvload rehydrate_kmdf.inf, see driver/kmdf/README.md)")]
    NotInstalled,
    /// The metadata file could not be formatted.
    #[error("metadata {path}: {source}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rehydrate_driver::meta::MetaError,
    },
    /// Memory for the region map could not be had.
    #[error(transparent)]
    Alloc(#[from] rehydrate_driver::region::AllocError),
    /// The filter did not start on the volume in time.
    #[error("the filter did not start on {volume} within {secs} s: bring the disk online (diskpart: online disk) and check the System event log")]
    NoFilter {
        /// The volume.
        volume: String,
        /// How long we waited.
        secs: u64,
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
