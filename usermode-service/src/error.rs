//! The crate's error enum: everything the service can fail with, each a clear line.

use std::path::PathBuf;

use rehydrate_driver::meta::MetaError;
use rehydrate_driver::region::AllocError;
use rehydrate_driver::{FailReason, GeometryError};

use crate::hydrator::ConfigError;
use crate::source::SourceError;

/// Everything `rehydrate` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The source URL does not parse.
    #[error(transparent)]
    Url(rehydrate_nbd::Error),
    /// The source could not be used.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The source's size or the region size make no valid volume.
    #[error("source of {size_bytes} bytes cannot be restored: {source}")]
    Geometry {
        /// The source's size.
        size_bytes: u64,
        /// Why.
        source: GeometryError,
    },
    /// The hydrator settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The target is smaller than the source; nothing was written.
    #[error("target {path} holds {size_bytes} bytes but the source has {needed_bytes}; nothing was written")]
    TargetTooSmall {
        /// The target.
        path: PathBuf,
        /// Its size.
        size_bytes: u64,
        /// The source's size.
        needed_bytes: u64,
    },
    /// The target is neither a regular file nor a block device.
    #[error("target {0} is not a regular file or block device")]
    TargetKind(PathBuf),
    /// I/O on the target failed.
    #[error("{op} {path}: {source}")]
    TargetIo {
        /// What was being done.
        op: &'static str,
        /// The target.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The metadata file belongs to another restore, or is damaged.
    #[error("metadata {path}: {source}; remove it to restart the restore from the beginning")]
    Metadata {
        /// The metadata file.
        path: PathBuf,
        /// Why it was refused.
        source: MetaError,
    },
    /// I/O on the metadata file failed.
    #[error("{op} metadata {path}: {source}")]
    MetaIo {
        /// What was being done.
        op: &'static str,
        /// The metadata file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Memory for the region map could not be had.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// A range could not be fetched before the deadline, or its data was corrupt.
    #[error("range {offset}+{len} could not be restored: {reason:?} ({detail})")]
    FetchFailed {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
        /// Why.
        reason: FailReason,
        /// The source's last error.
        detail: String,
    },
    /// Writing restored data (or flushing it) failed.
    #[error("writing the target failed with status {status:#010x} at {what}")]
    LowerFailed {
        /// NTSTATUS-style code the engine saw.
        status: u32,
        /// Which operation.
        what: &'static str,
    },
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}
