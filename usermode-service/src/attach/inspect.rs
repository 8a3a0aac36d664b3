//! What a restore's metadata file says, read without writing anything: `rehydrate status
//! --metadata PATH`. On Windows the filter holds the file open for writing while its
//! volume runs, and after a reboot no attach may run yet; this reads it beside the
//! filter (or beside a `rehydrate restore` holding its lock) and takes nothing from it:
//! the file is opened read-only ([`FileMetaStore::open_read_only`]), no lock is taken,
//! and a store opened that way refuses every write.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rehydrate_driver::meta::{Header, MetaError, Metadata, SourceKind, TargetKind};
use rehydrate_driver::volume_id::VolumeId;
use rehydrate_driver::RegionMap;

use crate::restore::FileMetaStore;

/// Why the metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The file could not be opened.
    #[error("metadata {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not valid metadata.
    #[error("metadata {path}: {source}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// Why.
        source: MetaError,
    },
}

/// What the metadata records and how far its restore is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MetadataStatus {
    /// The file read.
    pub path: PathBuf,
    /// The source it is pinned to (`restore::pin::describe`), or empty.
    pub source: String,
    /// The target it is bound to, as far as it can be said.
    pub target: String,
    /// Bytes of the volume.
    pub bytes_total: u64,
    /// Regions in the volume.
    pub regions_total: u64,
    /// Regions durably restored.
    pub regions_restored: u64,
}

/// Reads the metadata at `path`, writing nothing and taking no lock.
pub fn read(path: &Path) -> Result<MetadataStatus, InspectError> {
    let meta_error = |source: MetaError| InspectError::Metadata {
        path: path.to_owned(),
        source,
    };
    let mut store = FileMetaStore::open_read_only(path).map_err(|source| InspectError::Open {
        path: path.to_owned(),
        source,
    })?;
    let header = Metadata::read_header(&mut store).map_err(meta_error)?;
    let geometry = header
        .identity
        .geometry()
        .map_err(|e| meta_error(e.into()))?;
    let map = RegionMap::new(geometry)
        .map_err(|e| meta_error(MetaError::AllocFailed { bytes: e.bytes }))?;
    let map = Arc::new(map);
    Metadata::open_bound(&mut store, &header.identity, &header.binding, &map)
        .map_err(meta_error)?;
    Ok(MetadataStatus {
        path: path.to_owned(),
        source: source_text(&header),
        target: target_text(&header),
        bytes_total: header.identity.volume_size_bytes,
        regions_total: geometry.region_count(),
        regions_restored: map.restored_count(),
    })
}

fn source_text(header: &Header) -> String {
    match header.binding.source.kind {
        SourceKind::Unrecorded => String::new(),
        _ => crate::restore::pin::describe(&header.binding.source),
    }
}

fn target_text(header: &Header) -> String {
    let t = &header.binding.target;
    match t.kind {
        TargetKind::WindowsVolume => match VolumeId::from_pin(t) {
            Ok(id) => id.to_string(),
            Err(r) => format!("a Windows volume ({})", r.describe()),
        },
        TargetKind::Unrecorded => "unrecorded".to_owned(),
        TargetKind::UnixFile => "a file".to_owned(),
        TargetKind::UnixBlockDevice => "a block device".to_owned(),
    }
}

impl MetadataStatus {
    /// The human view, in the manner of `rehydrate status`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let percent = if self.regions_total == 0 {
            100.0
        } else {
            self.regions_restored as f64 * 100.0 / self.regions_total as f64
        };
        let phase = if self.regions_restored == self.regions_total {
            "complete"
        } else {
            "restoring"
        };
        let _ = writeln!(out, "metadata  {}", self.path.display());
        let _ = writeln!(out, "phase     {phase} (as of its last commit)");
        if !self.source.is_empty() {
            let _ = writeln!(out, "source    {}", self.source);
        }
        let _ = writeln!(out, "target    {}", self.target);
        let _ = write!(
            out,
            "restored  {} of {} regions ({percent:.1}%), volume {} bytes",
            self.regions_restored, self.regions_total, self.bytes_total
        );
        out
    }
}

#[cfg(test)]
mod tests;
