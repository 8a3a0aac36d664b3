//! Replication's errors at the command line: each prints as one line.

/// Why `replicate`, `receive` or `replicate status` could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// The receiver could not be reached.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address as given.
        addr: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The session ended before its result; a later run resumes it.
    #[error("replication broke off: {reason} (committed={committed} pending={pending}; run again to resume)")]
    BrokeOff {
        /// Why.
        reason: String,
        /// Volumes committed before it broke off.
        committed: usize,
        /// Volumes left pending.
        pending: usize,
    },
    /// A receiving session ended early (logged by `receive`; the sender says why too).
    #[error("session ended early: {0}")]
    SessionEnded(String),
    /// A `--volume` the sending store does not have.
    #[error("volume {0} has no version in the sending store")]
    NoSuchVolume(String),
    /// Replication keeps session records in a local directory.
    #[error("the receiving store must be a local directory (session records live in it)")]
    NotLocal,
    /// Reading or writing a session record failed.
    #[error("session record {path}: {source}")]
    Record {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
