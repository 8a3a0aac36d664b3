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
    /// The target is larger than the source and `--force` was not given.
    #[error("target {path} holds {size_bytes} bytes but the source has {needed_bytes}; {}", if *block_device { "a block device larger than the source is normal: give --force to restore into its first part" } else { "only its first part would be restored, the rest left as it is: give --force to do so, or restore into a new file" })]
    TargetTooLarge {
        /// The target.
        path: PathBuf,
        /// Its size.
        size_bytes: u64,
        /// The source's size.
        needed_bytes: u64,
        /// It is a block device (else a regular file).
        block_device: bool,
    },
    /// Another process holds the target or the metadata.
    #[error("{} is in use by another restore ({}); wait for it to end or stop it", path.display(), crate::restore::lock::held_by(holder))]
    Locked {
        /// The file that is locked.
        path: PathBuf,
        /// The pid holding the lock, when it can be told.
        holder: Option<u32>,
    },
    /// The metadata path names the target itself.
    #[error("metadata {metadata} is the target {target} itself; give --metadata another path")]
    MetadataIsTarget {
        /// The target.
        target: PathBuf,
        /// The metadata path.
        metadata: PathBuf,
    },
    /// Metadata exists for a target that does not: it belongs to another restore.
    #[error("metadata {metadata} exists but target {target} does not: the metadata belongs to another restore (or its target was removed); remove the metadata to start over")]
    MetadataWithoutTarget {
        /// The target.
        target: PathBuf,
        /// The metadata path.
        metadata: PathBuf,
    },
    /// The metadata was made for another target (another file, or one recreated).
    #[error("metadata {metadata} belongs to another target than {target} (another file or device, or one created anew); remove the metadata to restore into it from the beginning")]
    MetadataOfAnotherTarget {
        /// The target.
        target: PathBuf,
        /// The metadata path.
        metadata: PathBuf,
    },
    /// The metadata records no pinned source: another program's, or another restore's.
    #[error("metadata {0} records no pinned backup: it belongs to another restore; remove it to start over")]
    MetadataUnpinned(PathBuf),
    /// The source is not the one the metadata pins.
    #[error("the restore is pinned to {pinned}, but the source is {found}; refusing to mix two backups (remove the metadata to restore the new source from the beginning)")]
    SourceChanged {
        /// What the metadata pins.
        pinned: String,
        /// What the source is now.
        found: String,
    },
    /// The URL names another volume than the one the metadata pins.
    #[error("the restore is pinned to {pinned}, but --source names export {given:?}; give the same volume (or remove the metadata to start over)")]
    SourceNotPinned {
        /// The pinned export.
        pinned: String,
        /// The export the URL names.
        given: String,
    },
    /// The source says what it is in a way that cannot be trusted.
    #[error("cannot tell what the source is: {0}")]
    SourceIdentity(String),
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
    /// The live export's address cannot be listened on.
    #[error("cannot serve the live export on {addr}: {source}")]
    ExportListen {
        /// The address as given.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The live export's TLS certificate, key or client CA could not be used.
    #[error("live export TLS: {0}")]
    ExportTls(String),
    /// The backup (with a map of changes) failed.
    #[error(transparent)]
    Backup(#[from] rehydrate_backup::BackupError),
    /// A backup with a map of changes was asked of a target whose restore has not
    /// finished: part of it is not the volume yet, and a backup of it would be wrong.
    #[error("the restore recorded in {metadata} has restored {restored_bytes} of {total_bytes} bytes: let it finish (run it again) before backing up its target")]
    RestoreIncomplete {
        /// The metadata file.
        metadata: PathBuf,
        /// Bytes restored.
        restored_bytes: u64,
        /// Bytes of the volume.
        total_bytes: u64,
    },
    /// The overlay mode or a cutover refused.
    #[error(transparent)]
    Overlay(#[from] crate::restore::overlay::OverlayError),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}
