//! Why `protect`, `mark`, `points` or an in-place recovery could not do what was asked:
//! one enum, each variant one line.

use std::path::PathBuf;

use rehydrate_backup::journal::JournalError;
use rehydrate_backup::BackupError;
use rehydrate_driver::capture::CaptureError;

use super::state::StateError;
use crate::ServiceError;

/// Everything the protect commands report.
#[derive(Debug, thiserror::Error)]
pub enum ProtectError {
    /// The target, its lock, or a runtime (the restore's errors).
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The store or the backup of the base.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// The journal.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The state file next to the target.
    #[error(transparent)]
    State(#[from] StateError),
    /// The capture core refused (a bug in the shell, or a buffer too small).
    #[error("write capture: {0}")]
    Capture(#[from] CaptureError),
    /// The target must be whole 512-byte sectors.
    #[error("target {path} holds {size_bytes} bytes, not a whole number of 512-byte sectors; protect needs whole sectors")]
    TargetSize {
        /// The target.
        path: PathBuf,
        /// Its size.
        size_bytes: u64,
    },
    /// The target is protected in another store, volume or file than asked.
    #[error("target {path} is protected as volume {volume} in {store}; give the same --store and --volume, or remove {state} to protect it anew")]
    ProtectedElsewhere {
        /// The target.
        path: PathBuf,
        /// Its volume.
        volume: String,
        /// Its store.
        store: String,
        /// The state file.
        state: PathBuf,
    },
    /// A restore into the target has not finished.
    #[error("a restore into {target} is not complete ({metadata}); let it finish before protecting the target")]
    RestoreIncomplete {
        /// The target.
        target: PathBuf,
        /// The restore's metadata.
        metadata: PathBuf,
    },
    /// Another protect of the volume runs (its control socket answers).
    #[error("volume {volume} is already protected by a running process (control socket {socket})")]
    AlreadyRunning {
        /// The volume.
        volume: String,
        /// Its socket.
        socket: PathBuf,
    },
    /// The control socket could not be bound, reached or understood.
    #[error("control socket {path}: {reason}")]
    Control {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A mark was refused by the protecting process.
    #[error("mark refused: {0}")]
    MarkRefused(String),
    /// The journal stopped accepting records while protect ran.
    #[error("journaling failed: {0}")]
    JournalFailed(String),
    /// `mark` without a socket: none, or several protected volumes.
    #[error("{0}")]
    NoControl(String),
}
