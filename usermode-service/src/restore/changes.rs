//! The restore's side of the map of changes since the last backup (the decisions are
//! the driver's `changed` module): the map lives in the restore's metadata, the live
//! export marks it as client writes are taken, and each run is a session, committed
//! *open* before the first write can be taken and *clean* (with the target's stamp)
//! only after the last flush. `rehydrate backup --changed-map` reads it.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use rehydrate_driver::changed::{self, Base, Record, Stamp, Tracker, CHANGED_MAP};
use rehydrate_driver::meta::{MetaStore, Metadata, NamedMap, SourceKind, SourcePin};
use rehydrate_driver::Geometry;

use crate::error::ServiceError;

/// The changed map of one restore's metadata, loaded and attached to it.
pub struct Changes {
    index: usize,
    tracker: Tracker,
    record: Record,
}

/// The base a fresh restore's changes count from: the backup version it restores (none
/// for another NBD server, whose data no store version is known to hold).
pub fn base_of(source: &SourcePin) -> Option<Base> {
    (source.kind == SourceKind::BackupVersion).then_some(Base {
        version: source.version,
        digest: source.digest,
    })
}

/// The stamp of a target or source file: modification time and size; none for a block
/// device, whose writes do not show there.
#[cfg(unix)]
pub fn stamp_of(file: &File) -> std::io::Result<Stamp> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        return Ok(Stamp::NONE);
    }
    let ns = meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec();
    Ok(Stamp::of(ns, meta.len()))
}

/// No stamp where there is no Unix file metadata.
#[cfg(not(unix))]
pub fn stamp_of(_file: &File) -> std::io::Result<Stamp> {
    Ok(Stamp::NONE)
}

impl Changes {
    /// Loads the changed map of `meta` (if it has one) into memory and attaches it, so
    /// every commit writes what is marked; `None` for metadata without one. A damaged
    /// map or record is kept as it is: the next backup reads everything.
    pub fn attach<S: MetaStore>(
        meta: &mut Metadata,
        store: &mut S,
        geometry: Geometry,
        path: &Path,
    ) -> Result<Option<Changes>, ServiceError> {
        let meta_err = |source| ServiceError::Metadata {
            path: path.to_owned(),
            source,
        };
        let Some(index) = meta.maps().find(&CHANGED_MAP) else {
            return Ok(None);
        };
        let map = Arc::new(NamedMap::new(geometry).map_err(meta_err)?);
        let load = meta.load_map(store, index, &map).map_err(meta_err)?;
        meta.attach(index, Arc::clone(&map)).map_err(meta_err)?;
        let stored = meta.maps().entries()[index].record;
        let mut record = Record::decode(&stored).unwrap_or_else(|e| {
            tracing::warn!(%e, "restore: the map of changes has a bad record; the next backup reads everything");
            Record::new(None)
        });
        if !load.intact {
            // Marks were lost, and pages written from now on would hide it: without a
            // base the map is not trusted until a backup (a full read) resets it.
            tracing::warn!(
                "restore: part of the map of changes was damaged; the next backup reads everything"
            );
            record.base = None;
        }
        Ok(Some(Changes {
            index,
            tracker: Tracker::new(map),
            record,
        }))
    }

    /// What marks the map as writes are taken.
    pub fn tracker(&self) -> Tracker {
        self.tracker.clone()
    }

    /// Sets the record a fresh restore starts from (committed by [`Changes::begin`]).
    pub fn start_from(&mut self, base: Option<Base>) {
        self.record = Record::new(base);
    }

    /// Commits the session *open* before any write can be taken: a crash from now on
    /// leaves the map untrusted. `durable_word` gives the restore map's durable words.
    pub fn begin<S: MetaStore>(
        &mut self,
        meta: &mut Metadata,
        store: &mut S,
        durable_word: impl Fn(usize) -> u64,
        path: &Path,
    ) -> Result<(), ServiceError> {
        self.commit(
            meta,
            store,
            changed::begin_session(&self.record),
            durable_word,
        )
        .map_err(|source| ServiceError::Metadata {
            path: path.to_owned(),
            source,
        })
    }

    /// Commits the session *clean* with the target's stamp, after the last flush: every
    /// write taken is in the map, its pages durable before the record says so.
    pub fn end<S: MetaStore>(
        &mut self,
        meta: &mut Metadata,
        store: &mut S,
        stamp: Stamp,
        durable_word: impl Fn(usize) -> u64,
    ) -> Result<(), rehydrate_driver::meta::MetaError> {
        self.commit(
            meta,
            store,
            changed::end_session(&self.record, stamp),
            durable_word,
        )
    }

    fn commit<S: MetaStore>(
        &mut self,
        meta: &mut Metadata,
        store: &mut S,
        record: Record,
        durable_word: impl Fn(usize) -> u64,
    ) -> Result<(), rehydrate_driver::meta::MetaError> {
        meta.set_record(self.index, record.encode())?;
        meta.commit(store, durable_word)?;
        self.record = record;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::meta_file::FileMetaStore;
    use rehydrate_driver::meta::{Binding, Identity, MAP_RECORD_BYTES, META_PAGE_SIZE_BYTES};
    use rehydrate_driver::RegionMap;
    use rehydrate_nbd::PositionalIo;

    const BASE: Base = Base {
        version: 3,
        digest: [7; 32],
    };

    fn identity() -> Identity {
        Identity {
            volume_size_bytes: 64 << 20,
            region_size_bytes: 4096,
            backup_id: [1; 32],
        }
    }

    /// A fresh restore's metadata with its changed map, the session begun, some marks
    /// committed and the session ended cleanly; the file's path.
    fn tracked(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("m");
        let g = identity().geometry().unwrap();
        let mut store =
            FileMetaStore::open(&path, Metadata::store_pages_with(&g, 1), true).unwrap();
        let mut meta = Metadata::create_with_maps(
            &mut store,
            &identity(),
            &Binding::UNRECORDED,
            &[CHANGED_MAP],
        )
        .unwrap();
        let mut changes = Changes::attach(&mut meta, &mut store, g, &path)
            .unwrap()
            .unwrap();
        changes.start_from(Some(BASE));
        changes.begin(&mut meta, &mut store, |_| 0, &path).unwrap();
        changes.tracker().on_write(8192, 100);
        changes
            .end(&mut meta, &mut store, Stamp::of(5, 6), |_| 0)
            .unwrap();
        path
    }

    fn reopen(path: &Path) -> (Metadata, FileMetaStore, Option<Changes>) {
        let g = identity().geometry().unwrap();
        let mut store = FileMetaStore::open(path, 0, false).unwrap();
        let map = RegionMap::new(g).unwrap();
        let mut meta = Metadata::open(&mut store, &identity(), &map).unwrap();
        let changes = Changes::attach(&mut meta, &mut store, g, path).unwrap();
        (meta, store, changes)
    }

    fn record(meta: &Metadata) -> [u8; MAP_RECORD_BYTES] {
        meta.maps().entries()[0].record
    }

    #[test]
    fn a_clean_session_is_trusted_and_a_begun_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = tracked(dir.path());
        let (mut meta, mut store, changes) = reopen(&path);
        let mut changes = changes.unwrap();
        assert_eq!(
            changed::trust(Some(&record(&meta)), true, Stamp::of(5, 6)),
            Ok(BASE)
        );
        assert!(
            changes.tracker().map().is_marked(2),
            "the mark was committed"
        );
        // A new session that never ends (a crash): not trusted.
        changes.begin(&mut meta, &mut store, |_| 0, &path).unwrap();
        let (meta, _, _) = reopen(&path);
        assert_eq!(
            changed::trust(Some(&record(&meta)), true, Stamp::of(5, 6)),
            Err(changed::Distrust::NotStoppedCleanly)
        );
    }

    #[test]
    fn a_damaged_map_drops_its_base_so_it_is_not_trusted_before_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let path = tracked(dir.path());
        // Both slots of the changed map's only page: after the restore map's two.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        for slot in [4u64, 5] {
            file.write_all_at(&[0xEE; 64], slot * META_PAGE_SIZE_BYTES as u64 + 100)
                .unwrap();
        }
        let (mut meta, mut store, changes) = reopen(&path);
        let mut changes = changes.unwrap();
        // A session over it, ended cleanly, writes the page again: still no base.
        changes.begin(&mut meta, &mut store, |_| 0, &path).unwrap();
        changes.tracker().on_write(0, 1);
        changes
            .end(&mut meta, &mut store, Stamp::of(5, 6), |_| 0)
            .unwrap();
        let (meta, _, _) = reopen(&path);
        assert_eq!(
            changed::trust(Some(&record(&meta)), true, Stamp::of(5, 6)),
            Err(changed::Distrust::NoBase)
        );
    }
}
