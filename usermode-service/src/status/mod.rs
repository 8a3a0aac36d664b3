//! The status file: how a running restore (or the demo) tells `rehydrate status` where
//! it stands.
//!
//! A writer replaces the whole file about twice a second and once at the end. Each
//! write goes to a temporary file in the same directory that is then renamed over the
//! old one, so a reader sees the previous snapshot or the next one, never half of one.
//! The file is one JSON object ([`StatusSnapshot`], `format` = [`STATUS_FORMAT`]).
//!
//! Where it lives: `--status-file PATH` if given, else in `$XDG_RUNTIME_DIR/rehydrate/`,
//! else `/tmp/rehydrate-$UID/`, a directory created private (0700): `restore-HASH.json`
//! for a restore (one per target, [`target_status_path`], so two restores never share
//! one), `status.json` for the demo. `rehydrate status` shows every file there.

mod file;
mod view;

use std::path::PathBuf;

pub(crate) use file::default_dir;
pub use file::{
    default_status_files, read_status, status_path, target_status_path, StatusFile,
    STATUS_FILE_MAX_BYTES,
};
pub use view::{process_alive, render_human, render_json, StatusArgs};

/// The version of the file's layout. A reader refuses another version rather than
/// showing fields whose meaning it does not know.
pub const STATUS_FORMAT: u32 = 1;

/// Where the restore stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Regions are still being restored.
    Restoring,
    /// Every region is restored.
    Complete,
    /// The restore stopped with an error (see [`StatusSnapshot::error`]).
    Failed,
    /// A live export was stopped (SIGINT/SIGTERM) before every region was restored;
    /// running the same command again resumes it.
    Stopped,
}

impl Phase {
    /// The word the file and the human view use.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Restoring => "restoring",
            Phase::Complete => "complete",
            Phase::Failed => "failed",
            Phase::Stopped => "stopped",
        }
    }
}

/// One snapshot of a restore, as the status file holds it. Counters are for the whole
/// volume where they say so (`*_total`, `*_restored`) and for the writing process's run
/// otherwise (a resumed restore starts them at zero).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StatusSnapshot {
    /// [`STATUS_FORMAT`].
    pub format: u32,
    /// The writing process.
    pub pid: u32,
    /// When the writer started, milliseconds since the Unix epoch.
    pub started_at_unix_ms: u64,
    /// When this snapshot was taken, milliseconds since the Unix epoch.
    pub updated_at_unix_ms: u64,
    /// Where the restore stands.
    pub phase: Phase,
    /// What is restored from (e.g. `nbd://127.0.0.1:10809/sys`).
    pub source: String,
    /// What is restored into (a path, or the simulated volume's name).
    pub target: String,
    /// Regions in the volume (0 until the source's size is known).
    pub regions_total: u64,
    /// Regions restored, including those restored by earlier runs.
    pub regions_restored: u64,
    /// Bytes of the volume.
    pub bytes_total: u64,
    /// Bytes restored, including those restored by earlier runs.
    pub bytes_restored: u64,
    /// Bytes of data transferred from the source by this run.
    pub bytes_fetched: u64,
    /// Bytes restored by zero-fill (source holes) by this run.
    pub bytes_zero: u64,
    /// Requests held waiting for data now (the demo's file system, the live export's
    /// clients; 0 for a plain `rehydrate restore`).
    pub held_requests: u64,
    /// On-demand misses served.
    pub misses_served: u64,
    /// Ranges given up on (fetch failures reported).
    pub fetch_failures: u64,
    /// Fetches retried.
    pub retries: u64,
    /// Restore rate, bytes per second, smoothed over the last seconds.
    pub rate_bytes_per_sec: f64,
    /// Seconds until done at the current rate; absent before there is a rate.
    pub eta_secs: Option<u64>,
    /// Clients connected to the live export (`--export`); absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<u64>,
    /// Median latency of on-demand misses (held to answered), ms; live export only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miss_latency_ms_p50: Option<f64>,
    /// 99th percentile of the same, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miss_latency_ms_p99: Option<f64>,
    /// Why the restore failed, when [`phase`](Self::phase) is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// An overlay restore's side (`--overlay`): absent for an in-place one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<OverlayStatus>,
}

/// Where an overlay restore (technique T2) stands: O, the regions whose current data is
/// in the overlay, beside D ([`StatusSnapshot::regions_restored`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OverlayStatus {
    /// The overlay file.
    pub path: String,
    /// Regions in O.
    pub regions: u64,
    /// `pseudo-volume`, `merging` or `merged`.
    pub state: String,
}

impl StatusSnapshot {
    /// A snapshot of a restore just starting in this process: phase `restoring`, every
    /// counter zero, both times now.
    pub fn starting(source: impl Into<String>, target: impl Into<String>) -> StatusSnapshot {
        let now = unix_ms_now();
        StatusSnapshot {
            format: STATUS_FORMAT,
            pid: std::process::id(),
            started_at_unix_ms: now,
            updated_at_unix_ms: now,
            phase: Phase::Restoring,
            source: source.into(),
            target: target.into(),
            regions_total: 0,
            regions_restored: 0,
            bytes_total: 0,
            bytes_restored: 0,
            bytes_fetched: 0,
            bytes_zero: 0,
            held_requests: 0,
            misses_served: 0,
            fetch_failures: 0,
            retries: 0,
            rate_bytes_per_sec: 0.0,
            eta_secs: None,
            clients: None,
            miss_latency_ms_p50: None,
            miss_latency_ms_p99: None,
            error: None,
            overlay: None,
        }
    }
}

/// Milliseconds since the Unix epoch now (0 if the clock is before it).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Everything reading or writing the status file can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// There is no status file: nothing has written one there.
    #[error("no status file at {0}: no restore has written one there (give --status-file if the restore was given one)")]
    NotFound(PathBuf),
    /// Neither `XDG_RUNTIME_DIR` nor a user id gives a default place.
    #[error("cannot choose a status file location; give --status-file")]
    NoDefaultPath,
    /// The default directory exists but is not a private directory of this user, so
    /// another user could forge or read the status.
    #[error("status directory {path} is not a directory owned by this user with mode 0700; remove it or give --status-file")]
    UnsafeDirectory {
        /// The directory.
        path: PathBuf,
    },
    /// I/O on the status file or its directory failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The metadata file given with `--metadata` could not be read.
    #[error(transparent)]
    Metadata(#[from] crate::attach::inspect::InspectError),
    /// The file is larger than any snapshot.
    #[error("status file {path} is {size_bytes} bytes, more than the {max_bytes}-byte limit")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size_bytes: u64,
        /// [`STATUS_FILE_MAX_BYTES`].
        max_bytes: u64,
    },
    /// The file is not a snapshot.
    #[error("status file {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The file has another layout version.
    #[error("status file {path} has format {found}; this rehydrate reads format {expected}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Its format.
        found: u32,
        /// [`STATUS_FORMAT`].
        expected: u32,
    },
}
