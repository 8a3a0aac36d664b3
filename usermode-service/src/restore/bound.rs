//! What `rehydrate restore` and `rehydrate attach` both do before a byte is restored, in
//! one function so the two cannot drift: from the metadata that exists (its header),
//! dial exactly the source it pins (or, for a new restore, the export the URL names),
//! identify what answered and check it against the pin, name the restore after the pin
//! (`pin::backup_id_of`), and open the metadata bound to that source and to the target,
//! or create it. Metadata of another source or target is refused, never overwritten.
//!
//! What differs between the two (a file or device on Linux, a volume under the filter
//! on Windows) is behind [`BindTarget`]: making the target fit the source, its pin, and
//! creating a metadata store.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rehydrate_driver::geometry::SECTOR_SIZE_BYTES;
use rehydrate_driver::meta::{
    Binding, Header, Identity, MapName, MetaError, MetaStore, Metadata, SourceKind, TargetPin,
};
use rehydrate_driver::{Geometry, RegionMap};
use rehydrate_nbd::NbdUrl;

use super::pin;
use crate::error::ServiceError;
use crate::hydrator::HydratorConfig;
use crate::source::NbdSource;

/// What is being bound.
#[derive(Clone, Copy, Debug)]
pub struct BindRequest<'a> {
    /// The source as given (`--source`).
    pub url: &'a NbdUrl,
    /// The metadata file (for messages).
    pub metadata: &'a Path,
    /// Region size of a new restore (an existing one must match).
    pub region_size_bytes: u32,
    /// The hydrator's settings, checked against the volume before anything is written.
    pub hydrator: &'a HydratorConfig,
    /// Requests the source connection keeps in flight.
    pub source_in_flight: usize,
    /// How long the first connection (and each reconnect) may take.
    pub deadline: Duration,
    /// Named maps a new metadata gets beside the restore map.
    pub named_maps: &'a [MapName],
}

/// The shell's side of binding: its target and its metadata store.
pub trait BindTarget {
    /// The metadata store.
    type Store: MetaStore;
    /// What the shell fails with.
    type Error: From<ServiceError>;

    /// Now that the source's exact size is known: make the target ready for it (create
    /// it, check it fits) and say what it is.
    fn prepare(&mut self, source_bytes: u64) -> Result<TargetPin, Self::Error>;

    /// A new, empty metadata store of `pages` pages, never over an existing one.
    fn create_store(&mut self, pages: u64) -> Result<Self::Store, Self::Error>;

    /// The target, for messages.
    fn describe(&self) -> std::path::PathBuf;
}

/// A restore ready to run.
pub struct Bound<S> {
    /// The source, pinned: every reconnect goes to the pinned export and is checked.
    pub source: NbdSource,
    /// What the metadata is bound to.
    pub binding: Binding,
    /// The restore: the volume (the source rounded up to a sector), the region size, and
    /// the backup id named after the pin.
    pub identity: Identity,
    /// Its geometry.
    pub geometry: Geometry,
    /// The durable marks, loaded.
    pub map: Arc<RegionMap>,
    /// The metadata store.
    pub store: S,
    /// The metadata.
    pub meta: Metadata,
    /// The metadata was created now (a new restore).
    pub fresh: bool,
}

/// How binding ended.
pub enum Bind<S> {
    /// The source is empty: nothing to track, no metadata written.
    Empty,
    /// A restore to run.
    Ready(Box<Bound<S>>),
}

/// The source the metadata's `header` pins (none for a new restore), dialled, identified
/// and checked, then the metadata bound to it and to `target`, opened from `existing`
/// (whose header it is) or created.
pub async fn bind<T: BindTarget>(
    request: &BindRequest<'_>,
    existing: Option<(T::Store, Header)>,
    target: &mut T,
) -> Result<Bind<T::Store>, T::Error> {
    let (existing, pinned) = match existing {
        Some((_, header)) if header.binding.source.kind == SourceKind::Unrecorded => {
            return Err(ServiceError::MetadataUnpinned(request.metadata.to_owned()).into());
        }
        Some((store, header)) => (Some(store), Some(header.binding.source)),
        None => (None, None),
    };
    let url = request.url;
    let dial = NbdUrl {
        export: pin::export_to_dial(url, pinned.as_ref())?,
        ..url.clone()
    };
    let mut source = NbdSource::connect(&dial, request.source_in_flight, request.deadline)
        .await
        .map_err(ServiceError::from)?;
    let found = pin::identify(&source, url).await?;
    if let Some(pinned) = &pinned {
        pin::check(&found, pinned)?;
    }
    let dial_export = match found.kind {
        SourceKind::BackupVersion | SourceKind::JournalPoint => found.name().to_owned(),
        _ => dial.export.clone(),
    };
    source.pin(dial_export, pin::redial_check(found, url));

    let size = found.size_bytes;
    let target_pin = target.prepare(size)?;
    if size == 0 {
        return Ok(Bind::Empty);
    }
    let volume_bytes = size.div_ceil(SECTOR_SIZE_BYTES) * SECTOR_SIZE_BYTES;
    let geometry = Geometry::new(volume_bytes, request.region_size_bytes).map_err(|source| {
        ServiceError::Geometry {
            size_bytes: size,
            source,
        }
    })?;
    request
        .hydrator
        .check(&geometry)
        .map_err(ServiceError::from)?;
    let identity = Identity {
        volume_size_bytes: volume_bytes,
        region_size_bytes: request.region_size_bytes,
        backup_id: pin::backup_id_of(&found),
    };
    let binding = Binding {
        source: found,
        target: target_pin,
    };
    let map = Arc::new(RegionMap::new(geometry).map_err(ServiceError::from)?);
    let meta_err = |source| ServiceError::Metadata {
        path: request.metadata.to_owned(),
        source,
    };
    let (store, meta, fresh) = match existing {
        Some(mut store) => {
            let meta = match Metadata::open_bound(&mut store, &identity, &binding, &map) {
                Err(MetaError::TargetMismatch) => {
                    return Err(ServiceError::MetadataOfAnotherTarget {
                        target: target.describe(),
                        metadata: request.metadata.to_owned(),
                    }
                    .into())
                }
                other => other.map_err(meta_err)?,
            };
            (store, meta, false)
        }
        None => {
            let pages = Metadata::store_pages_with(&geometry, request.named_maps.len());
            let mut store = target.create_store(pages)?;
            let meta =
                Metadata::create_with_maps(&mut store, &identity, &binding, request.named_maps)
                    .map_err(meta_err)?;
            (store, meta, true)
        }
    };
    Ok(Bind::Ready(Box::new(Bound {
        source,
        binding,
        identity,
        geometry,
        map,
        store,
        meta,
        fresh,
    })))
}

/// The existing metadata's header, read without checking whom it belongs to (that is
/// [`bind`]'s job once it knows the source): `None` for a new restore.
pub fn read_existing<S: MetaStore>(
    store: Option<S>,
    path: &Path,
) -> Result<Option<(S, Header)>, ServiceError> {
    let Some(mut store) = store else {
        return Ok(None);
    };
    let header = Metadata::read_header(&mut store).map_err(|source| ServiceError::Metadata {
        path: path.to_owned(),
        source,
    })?;
    Ok(Some((store, header)))
}

#[cfg(test)]
mod tests;
