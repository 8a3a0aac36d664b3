//! The metadata read beside its writer: the numbers it records, and not one byte or
//! lock taken from the writer.

use rehydrate_driver::meta::{
    Binding, Identity, MetaStore, Metadata, SourceKind, SourcePin, TargetPin,
};
use rehydrate_driver::volume_id::{Partition, PartitionId, VolumeId};
use rehydrate_driver::RegionMap;

use super::*;

const REGIONS: u64 = 64;

fn identity() -> Identity {
    Identity {
        volume_size_bytes: REGIONS * 4096,
        region_size_bytes: 4096,
        backup_id: [9; 32],
    }
}

fn volume() -> VolumeId {
    let partition = Partition {
        id: PartitionId::Gpt {
            partition_guid: [0x42; 16],
        },
        offset_bytes: 1 << 20,
        length_bytes: REGIONS * 4096,
    };
    VolumeId::new([0x17; 16], &partition)
}

/// A restore's metadata at `path` with regions 0..5 marked and committed, held by its
/// writer (open, and locked as `rehydrate restore` locks it).
fn written(path: &Path, target: TargetPin) -> FileMetaStore {
    let id = identity();
    let g = id.geometry().unwrap();
    let store_pages = Metadata::store_pages(&g);
    let mut store = FileMetaStore::open_unchecked(path, Some(store_pages)).unwrap();
    let source = SourcePin::new(
        SourceKind::BackupVersion,
        "sys@3",
        REGIONS * 4096,
        3,
        [5; 32],
    )
    .unwrap();
    let binding = Binding { source, target };
    let mut meta = Metadata::create_bound(&mut store, &id, &binding).unwrap();
    let map = RegionMap::new(g).unwrap();
    for r in 0..5 {
        map.mark(r);
    }
    meta.note_marked(0..5);
    meta.commit(&mut store, |w| map.word(w)).unwrap();
    store
}

#[test]
fn the_metadata_reads_beside_its_writer_and_nothing_is_taken_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.meta");
    let writer = written(&path, volume().pin());
    writer.lock(&path).unwrap();
    let before = std::fs::read(&path).unwrap();

    let status = read(&path).unwrap();
    assert_eq!(status.regions_total, REGIONS);
    assert_eq!(status.regions_restored, 5);
    assert_eq!(status.bytes_total, REGIONS * 4096);
    assert!(
        status
            .source
            .starts_with("sys@3 (262144 bytes, index blake3:0505"),
        "{}",
        status.source
    );
    assert_eq!(status.target, volume().to_string());
    let text = status.render();
    assert!(text.contains("restored  5 of 64 regions (7.8%)"), "{text}");
    assert!(text.contains("phase     restoring"), "{text}");

    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "not one byte written"
    );
    // The writer's lock is still the writer's: another run is still refused (Unix; the
    // Windows build takes no lock yet, restore/lock.rs).
    #[cfg(unix)]
    {
        let other = FileMetaStore::open_unchecked(&path, None).unwrap();
        assert!(
            other.lock(&path).is_err(),
            "the lock was not taken or dropped"
        );
    }
    drop(writer);
}

#[test]
fn a_read_only_store_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.meta");
    drop(written(&path, TargetPin::UNRECORDED));
    let before = std::fs::read(&path).unwrap();
    let mut store = FileMetaStore::open_read_only(&path).unwrap();
    let page = vec![0u8; rehydrate_driver::meta::META_PAGE_SIZE_BYTES];
    assert!(store.write_page(0, &page).is_err());
    assert!(store.flush().is_ok());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(read(&path).unwrap().target, "unrecorded");
}

#[test]
fn garbage_and_missing_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.meta");
    assert!(matches!(read(&missing), Err(InspectError::Open { .. })));
    let garbage = dir.path().join("garbage.meta");
    std::fs::write(&garbage, vec![0xA5; 64 * 1024]).unwrap();
    let e = read(&garbage).unwrap_err();
    assert!(matches!(e, InspectError::Metadata { .. }), "{e}");
    assert!(e.to_string().starts_with("metadata "), "{e}");
}
