//! `rehydrate backup SOURCE --store STORE --volume NAME --changed-map METADATA`: a backup
//! that reads only what changed since the last backup, as VMware's changed-block
//! tracking does, from the map of changes that a restore's metadata keeps (the driver's
//! `changed` module says what marks it and when it is trusted).
//!
//! # How the backup learns the map
//!
//! METADATA is the restore's own metadata file (`TARGET.rehydrate-meta` unless the
//! restore was given `--metadata`), and SOURCE its target. The backup reads it under the
//! restore's lock, so it never runs while a restore or live export of that target does:
//! a volume being written has no consistent backup, and the map is only exact once the
//! export stopped cleanly (SIGTERM flushes, commits the map and records the target's
//! stamp). Stop the export, back up, start it again (it resumes at once, the restore
//! being complete).
//!
//! # What is read
//!
//! * A trusted map: only the chunks its regions touch, against the base version it
//!   counts from; every other chunk is the base's. The store must hold that version with
//!   the index checksum the map recorded, and the backup must use its chunk size.
//! * Anything else (no file, another format, another target, a map not trusted, a base
//!   the store does not hold as recorded): the whole volume, said in one line on stderr.
//!
//! Once the version is published the map is emptied and counts from the new version,
//! in one commit. A crash before that commit leaves the old map and base: the next
//! backup reads the changes since the old base, a superset of those since the new one.
//! The restore must be complete: a backup of a partly restored target is refused.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use rehydrate_backup::{
    backup, backup_changes, BackupCommand, BackupOptions, BackupSummary, Changes, ChunkStore,
    IncrementalError,
};
use rehydrate_driver::changed::{self, Base, Stamp, CHANGED_MAP};
use rehydrate_driver::meta::{Metadata, NamedMap};
use rehydrate_driver::RegionMap;

use crate::error::ServiceError;
use crate::restore::changes::stamp_of;
use crate::restore::meta_file::FileMetaStore;
use crate::restore::target_id;

/// The map of changes, opened and trusted or not.
struct Opened {
    store: FileMetaStore,
    meta: Metadata,
    restore_map: RegionMap,
    /// The changed map's index, its bits, and whether every page of it loaded.
    changed: Option<(usize, Arc<NamedMap>, bool)>,
}

/// Runs the backup; prints one line on stderr when the map is not used.
pub async fn run(command: BackupCommand, metadata: &Path) -> Result<BackupSummary, ServiceError> {
    let args = command.args;
    let store = ChunkStore::open(&args.store, true)?;
    let options = BackupOptions {
        volume: args.volume,
        chunk_size: args.chunk_size,
        progress: !args.json,
        rate_limit_bytes_per_sec: args.rate_limit,
        verify: command.verify,
    };
    let source = File::open(&args.source).map_err(|e| rehydrate_backup::BackupError::Source {
        path: args.source.clone(),
        source: e,
    })?;
    // Taken before anything is read: a write during the backup then shows next time.
    let stamp = stamp_of(&source).unwrap_or(Stamp::NONE);
    let (mut opened, plan) = match open(metadata, &source) {
        Ok(opened) => {
            let plan = plan(&opened, stamp);
            (Some(opened), plan)
        }
        Err(Refusal::Fatal(e)) => return Err(e),
        Err(Refusal::Untrusted(reason)) => (None, Err(reason)),
    };
    let summary = match plan {
        Ok(changes) => match backup_changes(&store, &args.source, &options, &changes).await {
            Ok(summary) => summary,
            Err(IncrementalError::Base(reason)) => {
                say_full_read(metadata, &reason.to_string());
                backup(&store, &args.source, &options).await?
            }
            Err(IncrementalError::Backup(e)) => return Err(e.into()),
        },
        Err(reason) => {
            say_full_read(metadata, &reason);
            backup(&store, &args.source, &options).await?
        }
    };
    // Published: from now on the map counts from this version.
    if let Some(opened) = &mut opened {
        if let Err(e) = reset(&summary, opened, stamp) {
            eprintln!(
                "rehydrate: warning: the map of changes in {} could not be reset ({e}); the next backup reads what changed since the version before",
                metadata.display()
            );
        }
    }
    Ok(summary)
}

fn say_full_read(metadata: &Path, reason: &str) {
    eprintln!(
        "rehydrate: note: not using the map of changes in {}: {reason}; reading the whole volume",
        metadata.display()
    );
}

/// Why the map is not opened.
enum Refusal {
    /// Nothing is backed up (a restore holds it, or its target is not fully restored).
    Fatal(ServiceError),
    /// A full read instead, for this reason.
    Untrusted(String),
}

/// Opens and locks the metadata, checks it belongs to `source` and that its restore is
/// complete, and loads the changed map.
fn open(path: &Path, source: &File) -> Result<Opened, Refusal> {
    let untrusted = |why: String| Refusal::Untrusted(why);
    let mut store = FileMetaStore::open_unchecked(path, None)
        .map_err(|e| untrusted(format!("it cannot be opened ({e})")))?;
    // The restore's own lock: a running restore or live export refuses the backup.
    store.lock(path).map_err(Refusal::Fatal)?;
    let header = Metadata::read_header(&mut store)
        .map_err(|e| untrusted(format!("it cannot be read ({e})")))?;
    let identity = header.identity;
    let geometry = identity
        .geometry()
        .map_err(|e| untrusted(format!("it describes no volume ({e})")))?;
    let restore_map =
        RegionMap::new(geometry).map_err(|e| Refusal::Fatal(ServiceError::Alloc(e)))?;
    let mut meta = Metadata::open(&mut store, &identity, &restore_map)
        .map_err(|e| untrusted(format!("it cannot be read ({e})")))?;
    let size_bytes = std::io::Seek::seek(&mut &*source, std::io::SeekFrom::End(0))
        .map_err(|e| untrusted(format!("the source cannot be measured ({e})")))?;
    let pin = target_id::pin(source, size_bytes)
        .map_err(|e| untrusted(format!("the source cannot be identified ({e})")))?;
    if pin != header.binding.target || size_bytes != header.binding.source.size_bytes {
        return Err(untrusted(
            "it belongs to another volume than the source (a restore of another target, or this one created anew)".into(),
        ));
    }
    if !restore_map.is_all_restored() {
        let region = u64::from(geometry.region_size_bytes());
        return Err(Refusal::Fatal(ServiceError::RestoreIncomplete {
            metadata: path.to_owned(),
            restored_bytes: (restore_map.restored_count() * region).min(size_bytes),
            total_bytes: size_bytes,
        }));
    }
    let changed = match meta.maps().find(&CHANGED_MAP) {
        Some(index) => {
            let map = Arc::new(
                NamedMap::new(geometry)
                    .map_err(|e| untrusted(format!("it cannot be read ({e})")))?,
            );
            let load = meta
                .load_map(&mut store, index, &map)
                .map_err(|e| untrusted(format!("it cannot be read ({e})")))?;
            Some((index, map, load.intact))
        }
        None => None,
    };
    Ok(Opened {
        store,
        meta,
        restore_map,
        changed,
    })
}

/// The changes to read, if the map can be trusted; else why not.
fn plan(opened: &Opened, stamp: Stamp) -> Result<Changes, String> {
    let record = opened
        .changed
        .as_ref()
        .map(|(index, _, _)| opened.meta.maps().entries()[*index].record);
    let intact = opened.changed.as_ref().is_none_or(|(_, _, intact)| *intact);
    let base = changed::trust(record.as_ref(), intact, stamp).map_err(|e| e.to_string())?;
    let Some((_, map, _)) = &opened.changed else {
        return Err(changed::Distrust::NoMap.to_string());
    };
    let base_version = u32::try_from(base.version)
        .map_err(|_| format!("its base version {} is not a version number", base.version))?;
    let geometry = map.geometry();
    let size = opened.meta.binding().source.size_bytes;
    let ranges = map
        .runs()
        .map(|r| {
            let bytes = geometry.regions_byte_range(r);
            bytes.start.min(size)..bytes.end.min(size)
        })
        .filter(|r| r.start < r.end)
        .collect();
    Ok(Changes {
        base_version,
        base_checksum: base.digest,
        ranges,
    })
}

/// Empties the map and makes it count from the version just published.
fn reset(summary: &BackupSummary, opened: &mut Opened, stamp: Stamp) -> Result<(), String> {
    let Some((index, map, _)) = &opened.changed else {
        return Ok(());
    };
    let base = Base {
        version: u64::from(summary.version),
        digest: summary.index_checksum,
    };
    map.clear();
    let meta = &mut opened.meta;
    meta.attach(*index, Arc::clone(map))
        .map_err(|e| e.to_string())?;
    meta.reset_map(*index).map_err(|e| e.to_string())?;
    meta.set_record(*index, changed::after_backup(base, stamp).encode())
        .map_err(|e| e.to_string())?;
    let restore_map = &opened.restore_map;
    meta.commit(&mut opened.store, |w| restore_map.word(w))
        .map_err(|e| e.to_string())?;
    Ok(())
}
