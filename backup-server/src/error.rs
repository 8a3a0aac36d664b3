//! The crate's one error type: every public function returns [`BackupError`], and each
//! variant prints as one line that says what went wrong and with what.

use std::path::PathBuf;

use crate::index::IndexError;

/// Why a backup, a store operation or a server could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A volume name was empty, too long, or held a character outside `[A-Za-z0-9._-]`
    /// (path separators, `..` and `@` are refused so a name can never leave the store).
    #[error("invalid volume name {name:?}: {reason}")]
    InvalidVolumeName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A size argument (`1MiB`, `64KiB`, `4096`) could not be parsed.
    #[error("invalid size {text:?}: {reason}")]
    InvalidSize {
        /// The text as given.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A chunk size was not a power of two between 64 KiB and 8 MiB.
    #[error("invalid chunk size {0} bytes: must be a power of two from 64KiB to 8MiB")]
    InvalidChunkSize(u64),
    /// The `--store` argument named no usable store.
    #[error("invalid store {store:?}: {reason}")]
    InvalidStore {
        /// The store as given.
        store: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading the image or device being backed up failed.
    #[error("cannot read source {path}: {source}")]
    Source {
        /// The source path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A chunk of the source read twice held other bytes the second time.
    #[error(
        "source {path} changed while it was backed up (the chunk at byte {offset_bytes} differs from when it was read); back up a snapshot, or a volume nothing writes"
    )]
    SourceChanged {
        /// The source path.
        path: PathBuf,
        /// Where the chunk starts.
        offset_bytes: u64,
    },
    /// The object store refused or failed an operation.
    #[error("store operation on {path} failed: {source}")]
    Store {
        /// The object's path inside the store.
        path: String,
        /// The underlying error.
        source: object_store::Error,
    },
    /// Making a local store's files durable (fsync) failed.
    #[error("cannot sync {path}: {source}")]
    Sync {
        /// The file or directory being synced.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A version index could not be decoded.
    #[error("index {path} is unusable: {source}")]
    Index {
        /// The index's path inside the store.
        path: String,
        /// What is wrong with it.
        source: IndexError,
    },
    /// A stored chunk failed verification against its name; its data is never served.
    #[error("chunk {hash} failed verification: {reason}")]
    CorruptChunk {
        /// The chunk's name (its BLAKE3 hash, hex).
        hash: String,
        /// What did not match.
        reason: String,
    },
    /// An index names a chunk the store does not have.
    #[error("chunk {hash} is missing from the store")]
    MissingChunk {
        /// The chunk's name (its BLAKE3 hash, hex).
        hash: String,
    },
    /// The volume has no such version (or no version at all).
    #[error("volume {volume} has no version {version}")]
    VersionNotFound {
        /// The volume name.
        volume: String,
        /// The version asked for (0: the newest, when there is none).
        version: u32,
    },
    /// Other backups kept taking the next version number; gave up after this many tries.
    #[error("could not publish a version of {volume}: {attempts} concurrent publishers won first")]
    PublishContention {
        /// The volume name.
        volume: String,
        /// How many version numbers were tried.
        attempts: u32,
    },
    /// The volume already has the largest version number the layout allows.
    #[error("volume {0} has no version number left")]
    VersionsExhausted(String),
    /// The store does not honour create-if-not-exists (conditional put), so concurrent
    /// backups could overwrite each other's versions; nothing is written to it.
    #[error(
        "store {store} does not support create-if-not-exists (conditional put: If-None-Match), \
         which publishing versions needs: {reason}"
    )]
    NoConditionalPut {
        /// The store as given.
        store: String,
        /// What the probe saw.
        reason: String,
    },
    /// The TLS settings of `serve` could not be used.
    #[error("{0}")]
    Tls(rehydrate_nbd::Error),
    /// A backup's pending hashes or a gc's condemned list could not be decoded.
    #[error("{path} is unusable: {source}")]
    Marks {
        /// The object's path inside the store.
        path: String,
        /// What is wrong with it.
        source: crate::marks::MarksError,
    },
    /// A gc held a chunk this backup needs for longer than a backup waits.
    #[error(
        "a gc has held chunks this backup needs for {waited_secs} s; if no gc is running, \
         delete {path} from the store and run the backup again"
    )]
    GcStuck {
        /// How long the backup waited.
        waited_secs: u64,
        /// The condemned list's path.
        path: String,
    },
    /// Another gc is running on the store (or one died and left its condemned list).
    #[error(
        "another gc is running on this store since {since}; if none is, delete {path} \
         from the store and run gc again"
    )]
    GcRunning {
        /// When that gc began (its condemned list's time).
        since: String,
        /// The condemned list's path.
        path: String,
    },
    /// `forget` was given no keep rule, which would remove every version.
    #[error("forget needs at least one --keep-* rule above 0 (it would remove every version)")]
    EmptyKeepPolicy,
    /// The server could not listen on the requested address.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address as given.
        addr: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A version number is taken by a different index than the one being published.
    #[error("version {version} of {volume} already exists with a different index")]
    VersionConflict {
        /// The volume name.
        volume: String,
        /// The version.
        version: u32,
    },
    /// Replication failed (see [`crate::replicate::ReplicateError`]).
    #[error(transparent)]
    Replication(#[from] crate::replicate::ReplicateError),
    /// A worker task died (a bug, or the runtime shutting down).
    #[error("internal error: {0}")]
    Internal(String),
    /// The point-in-time journal refused (a point that cannot be served, a damaged or
    /// misplaced segment, a store without journals).
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
}

impl BackupError {
    pub(crate) fn store(path: &object_store::path::Path, source: object_store::Error) -> Self {
        Self::Store {
            path: path.to_string(),
            source,
        }
    }
}
