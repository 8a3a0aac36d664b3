//! Unit tests for every error, and crash property tests against a plain model.

use super::testing::{splitmix64, CrashStore};
use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::vec;
use std::vec::Vec;

/// Three bitmap pages, the last partial, and a partial last word.
const REGIONS: u64 = 2 * REGIONS_PER_PAGE + 1000 + 13;

fn identity() -> Identity {
    Identity {
        volume_size_bytes: REGIONS * 4096,
        region_size_bytes: 4096,
        backup_id: [7; 32],
    }
}

fn store_for(id: &Identity) -> CrashStore {
    CrashStore::new(Metadata::store_pages(&id.geometry().unwrap()))
}

fn new_map(id: &Identity) -> RegionMap {
    RegionMap::new(id.geometry().unwrap()).unwrap()
}

/// Opens into a fresh map and returns the map's words.
fn open_words(store: &mut CrashStore, id: &Identity) -> Result<(Metadata, Vec<u64>), MetaError> {
    let map = new_map(id);
    let meta = Metadata::open(store, id, &map)?;
    let words = (0..map.word_count()).map(|w| map.word(w)).collect();
    Ok((meta, words))
}

fn words_of(regions: &BTreeSet<u64>) -> Vec<u64> {
    let mut words = vec![0u64; REGIONS.div_ceil(64) as usize];
    for r in regions {
        words[(r / 64) as usize] |= 1 << (r % 64);
    }
    words
}

fn commit_set(
    meta: &mut Metadata,
    store: &mut CrashStore,
    set: &BTreeSet<u64>,
) -> Result<CommitStats, MetaError> {
    let words = words_of(set);
    for &r in set {
        meta.note_marked(r..r + 1);
    }
    meta.commit(store, |w| words[w])
}

#[test]
fn crc32c_matches_the_standard_check_value() {
    assert_eq!(crc32c::checksum(b"123456789"), 0xE306_9283);
    let split = crc32c::update(crc32c::update(0, b"1234"), b"56789");
    assert_eq!(split, 0xE306_9283);
}

#[test]
fn header_round_trips_and_wrong_lengths_are_typed() {
    let header = Header {
        identity: identity(),
        binding: binding(),
        generation: 42,
        maps: MapTable::EMPTY,
    };
    let mut page = [0u8; META_PAGE_SIZE_BYTES];
    encode_header(&header, &mut page);
    assert_eq!(decode_header(&page), Ok(header));
    // Without named maps every field lies in the first sector.
    assert!(page[HEADER_LEN_BYTES..].iter().all(|&b| b == 0));
    assert_eq!(&page[168..173], b"sys@3");
    assert_eq!(
        decode_header(&page[..100]),
        Err(MetaError::BadLength { len: 100 })
    );
    assert_eq!(decode_header(&[]), Err(MetaError::BadLength { len: 0 }));
    assert_eq!(
        decode_page_slot(&page[..5], 0, 0),
        Err(SlotError::Length { len: 5 })
    );
}

#[test]
fn page_slot_checks_index_tag_and_generation() {
    let mut page = [0u8; META_PAGE_SIZE_BYTES];
    encode_page_slot(&mut page, 3, 9, 0xABCD, |j| j as u64);
    let slot = decode_page_slot(&page, 3, 0xABCD).unwrap();
    assert_eq!(slot.generation, 9);
    assert!(slot.words().enumerate().all(|(j, w)| w == j as u64));
    assert_eq!(slot.words().count(), WORDS_PER_PAGE);
    assert_eq!(
        decode_page_slot(&page, 4, 0xABCD),
        Err(SlotError::PageIndex { found: 3 })
    );
    assert_eq!(
        decode_page_slot(&page, 3, 1),
        Err(SlotError::Identity {
            found: 0xABCD,
            expected: 1
        })
    );
    page[100] ^= 1;
    assert!(matches!(
        decode_page_slot(&page, 3, 0xABCD),
        Err(SlotError::Checksum { .. })
    ));
    page[0] ^= 1;
    assert_eq!(decode_page_slot(&page, 3, 0xABCD), Err(SlotError::Magic));
}

#[test]
fn a_fresh_store_opens_empty_at_generation_1() {
    let id = identity();
    let mut store = store_for(&id);
    let meta = Metadata::create(&mut store, &id).unwrap();
    assert_eq!(meta.generation(), 1);
    assert_eq!(meta.bitmap_page_count(), 3);
    assert_eq!(
        store.unflushed_count(),
        0,
        "create is durable when it returns"
    );
    let (meta, words) = open_words(&mut store, &id).unwrap();
    assert!(words.iter().all(|&w| w == 0));
    assert_eq!(meta.generation(), 1);
    assert_eq!(meta.dirty_page_count(), 0);
}

#[test]
fn a_commit_writes_only_dirty_pages_then_flushes() {
    let id = identity();
    let mut store = store_for(&id);
    let mut meta = Metadata::create(&mut store, &id).unwrap();
    let before = store.counts();
    let marks: BTreeSet<u64> = [REGIONS_PER_PAGE + 5, REGIONS_PER_PAGE + 6].into();
    let stats = commit_set(&mut meta, &mut store, &marks).unwrap();
    assert_eq!(
        stats,
        CommitStats {
            generation: 2,
            pages_written: 1,
            store_writes: 2
        }
    );
    let after = store.counts();
    assert_eq!(after.writes - before.writes, 2);
    assert_eq!(after.flushes - before.flushes, 1);
    assert_eq!(meta.dirty_page_count(), 0);
    // Nothing dirty: no I/O at all.
    let stats = meta.commit(&mut store, |_| u64::MAX).unwrap();
    assert_eq!(stats.store_writes, 0);
    assert_eq!(store.counts(), after);
    let (meta, words) = open_words(&mut store, &id).unwrap();
    assert_eq!(words, words_of(&marks));
    assert_eq!(meta.generation(), 2);
}

#[test]
fn note_marked_dirties_each_touched_page_once() {
    let id = identity();
    let mut store = store_for(&id);
    let mut meta = Metadata::create(&mut store, &id).unwrap();
    meta.note_marked(0..1);
    meta.note_marked(5..REGIONS_PER_PAGE + 1);
    assert_eq!(meta.dirty_page_count(), 2);
    meta.note_marked(0..REGIONS);
    assert_eq!(meta.dirty_page_count(), 3);
    meta.note_marked(10..10);
    assert_eq!(meta.dirty_page_count(), 3);
}

#[test]
fn marks_not_offered_by_durable_word_are_never_written() {
    let id = identity();
    let mut store = store_for(&id);
    let mut meta = Metadata::create(&mut store, &id).unwrap();
    meta.note_marked(0..REGIONS);
    meta.commit(&mut store, |_| 0).unwrap();
    let (_, words) = open_words(&mut store, &id).unwrap();
    assert!(words.iter().all(|&w| w == 0));
}

#[test]
fn bits_past_the_last_region_are_dropped() {
    let id = identity();
    let mut store = store_for(&id);
    let mut meta = Metadata::create(&mut store, &id).unwrap();
    meta.note_marked(0..REGIONS);
    meta.commit(&mut store, |_| u64::MAX).unwrap();
    let map = new_map(&id);
    Metadata::open(&mut store, &id, &map).unwrap();
    assert!(map.is_all_restored());
    assert_eq!(map.restored_count(), REGIONS);
}

#[test]
fn a_zeroed_store_is_bad_magic() {
    let id = identity();
    let mut store = store_for(&id);
    let err = open_words(&mut store, &id).unwrap_err();
    assert_eq!(err, MetaError::BadMagic { found: 0 });
    assert_eq!(
        std::format!("{err}"),
        "bad metadata magic 0x0000000000000000"
    );
}

#[test]
fn an_unknown_format_version_is_refused() {
    let id = identity();
    let mut store = store_for(&id);
    Metadata::create(&mut store, &id).unwrap();
    for slot in 0..2 {
        // Version 3 -> 4 (byte 8 is the low byte of the version).
        store.damage(slot, 8, 0b111);
    }
    assert_eq!(
        open_words(&mut store, &id).unwrap_err(),
        MetaError::UnsupportedVersion { found: 4 }
    );
}

#[test]
fn a_damaged_header_is_a_checksum_error_unless_one_slot_survives() {
    let id = identity();
    let mut store = store_for(&id);
    let mut meta = Metadata::create(&mut store, &id).unwrap();
    commit_set(&mut meta, &mut store, &[1, 2, 3].into()).unwrap();
    // One slot damaged: the other still opens it, marks intact.
    store.damage(0, 30, 0x40);
    let (_, words) = open_words(&mut store, &id).unwrap();
    assert_eq!(words, words_of(&[1, 2, 3].into()));
    // Both damaged: typed error, nothing restored.
    store.damage(1, 30, 0x40);
    assert!(matches!(
        open_words(&mut store, &id).unwrap_err(),
        MetaError::HeaderChecksum { .. }
    ));
    // Damage in the reserved bytes counts too.
    let mut store = store_for(&id);
    Metadata::create(&mut store, &id).unwrap();
    store.damage(0, 4000, 1);
    store.damage(1, 4000, 1);
    assert!(matches!(
        open_words(&mut store, &id).unwrap_err(),
        MetaError::HeaderChecksum { .. }
    ));
}

#[test]
fn metadata_formats_1_and_2_are_refused_as_outdated() {
    // 3 -> 1: a file left by a build before the header recorded the source; 3 -> 2: by
    // one before named maps.
    for (mask, found) in [(0b10, 1), (0b01, 2)] {
        let id = identity();
        let mut store = store_for(&id);
        Metadata::create(&mut store, &id).unwrap();
        for slot in 0..2 {
            store.damage(slot, 8, mask);
        }
        let err = open_words(&mut store, &id).unwrap_err();
        assert_eq!(err, MetaError::OutdatedFormat { found });
        assert!(std::format!("{err}").contains("older rehydrate"), "{err}");
        assert!(std::format!("{err}").contains("remove it"), "{err}");
        assert_eq!(Metadata::read_header(&mut store).unwrap_err(), err);
    }
}

fn binding() -> Binding {
    let mut id = [0u8; TARGET_ID_BYTES];
    id[..16].copy_from_slice(&[5; 16]);
    Binding {
        source: SourcePin::new(
            SourceKind::BackupVersion,
            "sys@3",
            REGIONS * 4096,
            3,
            [9; 32],
        )
        .unwrap(),
        target: TargetPin {
            kind: TargetKind::UnixFile,
            id,
        },
    }
}

#[test]
fn the_header_records_source_and_target_and_open_bound_refuses_others() {
    let id = identity();
    let bound = binding();
    let mut store = store_for(&id);
    Metadata::create_bound(&mut store, &id, &bound).unwrap();
    let header = Metadata::read_header(&mut store).unwrap();
    assert_eq!((header.identity, header.binding), (id, bound));

    let map = RegionMap::new(id.geometry().unwrap()).unwrap();
    let mut meta = Metadata::open_bound(&mut store, &id, &bound, &map).unwrap();
    assert_eq!(meta.binding(), &bound);
    // A commit keeps the binding in the header it rewrites.
    meta.note_marked(0..1);
    meta.commit(&mut store, |w| u64::from(w == 0)).unwrap();
    assert_eq!(Metadata::read_header(&mut store).unwrap().binding, bound);
    // Plain `open` does not judge the binding but keeps it.
    let map = RegionMap::new(id.geometry().unwrap()).unwrap();
    assert_eq!(
        Metadata::open(&mut store, &id, &map).unwrap().binding(),
        &bound
    );

    let mut other = bound;
    other.source.version = 4;
    assert_eq!(
        Metadata::open_bound(&mut store, &id, &other, &map).unwrap_err(),
        MetaError::SourceMismatch
    );
    let mut other = bound;
    other.target.id[0] ^= 1;
    assert_eq!(
        Metadata::open_bound(&mut store, &id, &other, &map).unwrap_err(),
        MetaError::TargetMismatch
    );
    assert_eq!(
        Metadata::open_bound(&mut store, &id, &Binding::UNRECORDED, &map).unwrap_err(),
        MetaError::SourceMismatch
    );
}

#[test]
fn a_header_with_an_unknown_kind_is_a_typed_error() {
    let id = identity();
    let mut store = store_for(&id);
    Metadata::create_bound(&mut store, &id, &binding()).unwrap();
    let mut page = [0u8; META_PAGE_SIZE_BYTES];
    store.read_page(0, &mut page).unwrap();
    page[69] = 77;
    let checksum = crc32c::update(crc32c::update(0, &page[..64]), &page[68..]);
    page[64..68].copy_from_slice(&checksum.to_le_bytes());
    assert_eq!(
        decode_header(&page),
        Err(MetaError::Binding(BindingError::UnknownKind {
            field: "target",
            value: 77
        }))
    );
}

#[test]
fn another_volume_region_size_or_backup_is_a_mismatch() {
    let id = identity();
    let mut store = store_for(&id);
    Metadata::create(&mut store, &id).unwrap();

    let other = Identity {
        volume_size_bytes: id.volume_size_bytes - 512,
        ..id
    };
    assert_eq!(
        open_words(&mut store, &other).unwrap_err(),
        MetaError::VolumeSizeMismatch {
            found: id.volume_size_bytes,
            expected: other.volume_size_bytes
        }
    );
    let other = Identity {
        region_size_bytes: 8192,
        ..id
    };
    assert_eq!(
        open_words(&mut store, &other).unwrap_err(),
        MetaError::RegionSizeMismatch {
            found: 4096,
            expected: 8192
        }
    );
    let mut other = Identity { ..id };
    other.backup_id[31] = 8;
    assert_eq!(
        open_words(&mut store, &other).unwrap_err(),
        MetaError::BackupMismatch {
            found: 0x0707_0707_0707_0707,
            expected: 0x0707_0707_0707_0707
        }
    );
}

#[test]
fn a_page_with_both_slots_corrupt_is_an_error_and_one_bad_slot_is_survived() {
    let id = identity();
    let mut store = store_for(&id);
    let mut meta = Metadata::create(&mut store, &id).unwrap();
    let marks: BTreeSet<u64> = [REGIONS_PER_PAGE, REGIONS_PER_PAGE + 100].into();
    commit_set(&mut meta, &mut store, &marks).unwrap();
    // Page 1 was written to slot B (generation 2); damage the older slot A.
    store.damage(slot_page(1, false), 2000, 0x01);
    let (_, words) = open_words(&mut store, &id).unwrap();
    assert_eq!(words, words_of(&marks));
    store.damage(slot_page(1, true), 10, 0x80);
    let err = open_words(&mut store, &id).unwrap_err();
    assert!(
        matches!(
            err,
            MetaError::PageCorrupt {
                page_index: 1,
                slot_a: SlotError::Checksum { .. },
                slot_b: SlotError::Checksum { .. },
            }
        ),
        "{err:?}"
    );
    assert!(std::format!("{err}").contains("bitmap page 1"));
}

#[test]
fn a_slot_of_another_page_or_restore_is_not_valid() {
    let id = identity();
    let mut store = store_for(&id);
    Metadata::create(&mut store, &id).unwrap();
    // Page 0's slots copied over page 2's: misdirected writes.
    let a = store.durable_page(slot_page(0, false)).to_vec();
    let b = store.durable_page(slot_page(0, true)).to_vec();
    store.put_durable(slot_page(2, false), &a);
    store.put_durable(slot_page(2, true), &b);
    assert!(matches!(
        open_words(&mut store, &id).unwrap_err(),
        MetaError::PageCorrupt {
            page_index: 2,
            slot_a: SlotError::PageIndex { found: 0 },
            slot_b: SlotError::PageIndex { found: 0 },
        }
    ));
    // A page slot with bits past the last region is refused, not masked.
    let mut page = [0u8; META_PAGE_SIZE_BYTES];
    encode_page_slot(&mut page, 2, 5, identity_tag(&id), |_| u64::MAX);
    store.put_durable(slot_page(2, false), &page);
    store.put_durable(slot_page(2, true), &page);
    assert!(matches!(
        open_words(&mut store, &id).unwrap_err(),
        MetaError::PageCorrupt {
            page_index: 2,
            slot_a: SlotError::TailBits,
            slot_b: SlotError::TailBits,
        }
    ));
}

#[test]
fn a_store_too_small_is_refused() {
    let id = identity();
    let needed = Metadata::store_pages(&id.geometry().unwrap());
    assert_eq!(needed, 2 + 2 * 3);
    let mut small = CrashStore::new(needed - 1);
    assert_eq!(
        Metadata::create(&mut small, &id).err(),
        Some(MetaError::StoreTooSmall {
            pages: needed - 1,
            needed
        })
    );
    let mut tiny = CrashStore::new(1);
    assert_eq!(
        open_words(&mut tiny, &id).unwrap_err(),
        MetaError::StoreTooSmall { pages: 1, needed }
    );
    // A valid header on a truncated store.
    let mut store = store_for(&id);
    Metadata::create(&mut store, &id).unwrap();
    let mut truncated = CrashStore::new(needed - 2);
    for page in 0..needed - 2 {
        truncated.put_durable(page, store.durable_page(page));
    }
    assert_eq!(
        open_words(&mut truncated, &id).unwrap_err(),
        MetaError::StoreTooSmall {
            pages: needed - 2,
            needed
        }
    );
}

#[test]
fn a_failed_commit_keeps_pages_dirty_and_a_retry_commits_them() {
    let id = identity();
    let mut store = store_for(&id);
    let mut meta = Metadata::create(&mut store, &id).unwrap();
    let marks: BTreeSet<u64> = [0, REGIONS - 1].into();
    let words = words_of(&marks);
    meta.note_marked(0..1);
    meta.note_marked(REGIONS - 1..REGIONS);
    // Fail the write of the second page, then the flush, then succeed.
    for fail_after in [1, 3] {
        store.fail_after(fail_after);
        let err = meta.commit(&mut store, |w| words[w]).unwrap_err();
        assert_eq!(
            err,
            MetaError::Store(StoreError::Device {
                code: testing::INJECTED_FAULT_CODE
            })
        );
        assert_eq!(meta.dirty_page_count(), 2);
        assert_eq!(meta.generation(), 1);
    }
    assert_eq!(meta.commit(&mut store, |w| words[w]).unwrap().generation, 2);
    let (_, got) = open_words(&mut store, &id).unwrap();
    assert_eq!(got, words);
}

#[test]
fn store_errors_surface_from_create_and_open() {
    let id = identity();
    let mut store = store_for(&id);
    store.fail_after(4);
    assert!(matches!(
        Metadata::create(&mut store, &id),
        Err(MetaError::Store(StoreError::Device { .. }))
    ));
    let mut store = store_for(&id);
    Metadata::create(&mut store, &id).unwrap();
    store.fail_after(3);
    assert!(matches!(
        open_words(&mut store, &id),
        Err(MetaError::Store(StoreError::Device { .. }))
    ));
}

#[test]
fn bad_geometry_map_mismatch_and_allocation_failure_are_typed() {
    let id = Identity {
        region_size_bytes: 1000,
        ..identity()
    };
    let mut store = CrashStore::new(16);
    assert_eq!(
        Metadata::create(&mut store, &id).err(),
        Some(MetaError::Geometry(GeometryError::RegionSize(1000)))
    );
    let id = identity();
    let mut store = store_for(&id);
    Metadata::create(&mut store, &id).unwrap();
    let small = RegionMap::new(Geometry::new(4096, 4096).unwrap()).unwrap();
    assert_eq!(
        Metadata::open(&mut store, &id, &small).err(),
        Some(MetaError::MapMismatch {
            map_regions: 1,
            expected_regions: REGIONS
        })
    );
    assert_eq!(
        try_zeroed_words(usize::MAX).err(),
        Some(MetaError::AllocFailed { bytes: usize::MAX })
    );
}

#[test]
fn formatting_again_forgets_every_old_mark() {
    let id = identity();
    let mut store = store_for(&id);
    let mut meta = Metadata::create(&mut store, &id).unwrap();
    meta.note_marked(0..REGIONS);
    meta.commit(&mut store, |_| u64::MAX).unwrap();
    meta.note_marked(0..REGIONS);
    meta.commit(&mut store, |_| u64::MAX).unwrap();
    Metadata::create(&mut store, &id).unwrap();
    let (_, words) = open_words(&mut store, &id).unwrap();
    assert!(words.iter().all(|&w| w == 0));
}

#[test]
fn a_crash_during_format_never_shows_old_marks_under_a_new_header() {
    let id = identity();
    let old: BTreeSet<u64> = [3, REGIONS_PER_PAGE * 2 + 1].into();
    // Writes + flushes of create: 2 + 1 + 6 + 1 + 2 + 1.
    for fail_after in 0..13 {
        for seed in 0..16u64 {
            let mut store = store_for(&id);
            let mut meta = Metadata::create(&mut store, &id).unwrap();
            commit_set(&mut meta, &mut store, &old).unwrap();
            store.fail_after(fail_after);
            assert!(Metadata::create(&mut store, &id).is_err());
            let mut rng = seed;
            store.crash(&mut || splitmix64(&mut rng));
            match open_words(&mut store, &id) {
                Ok((_, words)) => {
                    // The old restore intact (the header was never invalidated), or
                    // the new one empty.
                    let empty = words.iter().all(|&w| w == 0);
                    assert!(empty || words == words_of(&old), "fail_after {fail_after}");
                    if fail_after >= 3 {
                        assert!(empty, "fail_after {fail_after}");
                    }
                }
                Err(err) => assert_eq!(err, MetaError::BadMagic { found: 0 }),
            }
        }
    }
}

#[test]
fn torn_and_lost_writes_of_an_unfinished_commit_lose_and_invent_nothing() {
    let id = identity();
    // Marks in several sectors of each page, so a torn write really mixes versions:
    // region 64*j lives at byte 32 + 8*j of its page (sector 0 .. sector 7).
    let committed: BTreeSet<u64> = [
        1,
        64 * 200,
        REGIONS_PER_PAGE + 7,
        REGIONS_PER_PAGE + 64 * 500,
    ]
    .into();
    let mut offered = committed.clone();
    offered.extend([2, 64 * 100, 64 * 300, 64 * 400, 64 * 507 + 63]);
    offered.extend([
        REGIONS_PER_PAGE + 64 * 250,
        2 * REGIONS_PER_PAGE + 5,
        REGIONS - 1,
    ]);
    let mut tears = BTreeSet::new();
    for seed in 0..400u64 {
        let mut store = store_for(&id);
        let mut meta = Metadata::create(&mut store, &id).unwrap();
        commit_set(&mut meta, &mut store, &committed).unwrap();
        // Two commits that never flush: pages and header written twice, unflushed.
        for _ in 0..2 {
            store.fail_after(4);
            commit_set(&mut meta, &mut store, &offered).unwrap_err();
        }
        let mut rng = seed;
        let report = store.crash(&mut || splitmix64(&mut rng));
        if let Some((_, sectors)) = report.torn {
            tears.insert(sectors);
        }
        let (_, words) = open_words(&mut store, &id).unwrap();
        let (must, may) = (words_of(&committed), words_of(&offered));
        for w in 0..words.len() {
            assert_eq!(must[w] & !words[w], 0, "lost a committed mark, seed {seed}");
            assert_eq!(words[w] & !may[w], 0, "invented a mark, seed {seed}");
        }
    }
    assert_eq!(
        tears.len(),
        9,
        "every prefix 0..=8 sectors was exercised: {tears:?}"
    );
}

/// One step of the property test's engine.
#[derive(Clone, Debug)]
enum Op {
    /// Mark regions in memory (data written, not yet flushed).
    Mark { start: u64, len: u64 },
    /// The data device flushed: every mark so far is durable.
    FlushData,
    /// Commit the metadata with the durable marks.
    Commit,
    /// The store fails its n-th next operation.
    Fault(u64),
    /// Commit, but the store's flush fails: the writes stay in the volatile cache.
    CommitUnflushed,
    /// Power loss, then reopen.
    Crash(u64),
    /// Reopen without power loss.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..REGIONS, 1u64..3000).prop_map(|(start, len)| Op::Mark { start, len }),
        3 => Just(Op::FlushData),
        4 => Just(Op::Commit),
        1 => (0u64..6).prop_map(Op::Fault),
        2 => Just(Op::CommitUnflushed),
        2 => any::<u64>().prop_map(Op::Crash),
        1 => Just(Op::Reopen),
    ]
}

struct Engine {
    map: RegionMap,
    meta: Metadata,
    /// Marks whose data is flushed, as map words.
    flushed: Vec<u64>,
    /// Ranges marked since the last data flush (noted again when it completes).
    pending: Vec<Range<u64>>,
    /// Every bit ever passed through `durable_word`.
    offered: Vec<u64>,
    /// Every bit of a commit that returned Ok (or found durable by open).
    committed: Vec<u64>,
}

impl Engine {
    fn reopen(&mut self, store: &mut CrashStore, id: &Identity) -> Result<(), TestCaseError> {
        store.clear_faults();
        let map = new_map(id);
        let meta = Metadata::open(store, id, &map)
            .map_err(|e| TestCaseError::fail(std::format!("open failed: {e}")))?;
        for w in 0..map.word_count() {
            let got = map.word(w);
            prop_assert_eq!(
                self.committed[w] & !got,
                0,
                "committed mark lost in word {}",
                w
            );
            prop_assert_eq!(got & !self.offered[w], 0, "mark invented in word {}", w);
        }
        let words: Vec<u64> = (0..map.word_count()).map(|w| map.word(w)).collect();
        // open flushed first, so what it loaded is durable.
        self.flushed = words.clone();
        self.committed = words;
        self.pending.clear();
        self.map = map;
        self.meta = meta;
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn crashes_never_lose_a_committed_mark_nor_invent_one(ops in proptest::collection::vec(op(), 1..60)) {
        let id = identity();
        let mut store = store_for(&id);
        let meta = Metadata::create(&mut store, &id).unwrap();
        let words = REGIONS.div_ceil(64) as usize;
        let mut engine = Engine {
            map: new_map(&id),
            meta,
            flushed: vec![0; words],
            pending: Vec::new(),
            offered: vec![0; words],
            committed: vec![0; words],
        };
        for op in ops {
            match op {
                Op::Mark { start, len } => {
                    let end = (start + len).min(REGIONS);
                    engine.map.mark_range(start..end);
                    engine.meta.note_marked(start..end);
                    engine.pending.push(start..end);
                }
                Op::FlushData => {
                    for (w, f) in engine.flushed.iter_mut().enumerate() {
                        *f = engine.map.word(w);
                    }
                    // The contract: note regions again once their data is durable.
                    for range in engine.pending.drain(..) {
                        engine.meta.note_marked(range);
                    }
                }
                Op::Commit | Op::CommitUnflushed => {
                    if matches!(op, Op::CommitUnflushed) {
                        // Every page write and the header write succeed, the flush fails.
                        store.fail_after(engine.meta.dirty_page_count() + 1);
                    }
                    let snapshot = engine.flushed.clone();
                    for (o, s) in engine.offered.iter_mut().zip(&snapshot) {
                        *o |= s;
                    }
                    let dirty = engine.meta.dirty_page_count();
                    match engine.meta.commit(&mut store, |w| snapshot[w]) {
                        Ok(stats) => {
                            prop_assert_eq!(stats.pages_written, dirty);
                            prop_assert_eq!(engine.meta.dirty_page_count(), 0);
                            engine.committed = snapshot;
                        }
                        Err(e) => {
                            prop_assert!(matches!(e, MetaError::Store(_)));
                            prop_assert_eq!(engine.meta.dirty_page_count(), dirty);
                        }
                    }
                }
                Op::Fault(n) => store.fail_after(n),
                Op::Crash(seed) => {
                    let mut rng = seed;
                    store.crash(&mut || splitmix64(&mut rng));
                    engine.reopen(&mut store, &id)?;
                }
                Op::Reopen => engine.reopen(&mut store, &id)?,
            }
        }
        let mut rng = 1;
        store.crash(&mut || splitmix64(&mut rng));
        engine.reopen(&mut store, &id)?;
    }
}
