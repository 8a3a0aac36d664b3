//! Named maps: layout of the table, commits beside the restore map, resets, records in
//! the strict two-phase commit, damage, and crashes against a plain model.

use super::testing::{splitmix64, CrashStore};
use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::vec::Vec;

/// Three bitmap pages, the last partial.
const REGIONS: u64 = 2 * REGIONS_PER_PAGE + 1000 + 13;
const CHANGED: MapName = match MapName::new("changed") {
    Some(n) => n,
    None => panic!("a valid name"),
};
const OVERLAY: MapName = match MapName::new("overlay") {
    Some(n) => n,
    None => panic!("a valid name"),
};

fn identity() -> Identity {
    Identity {
        volume_size_bytes: REGIONS * 4096,
        region_size_bytes: 4096,
        backup_id: [9; 32],
    }
}

fn geometry() -> Geometry {
    identity().geometry().unwrap()
}

fn store(maps: usize) -> CrashStore {
    CrashStore::new(Metadata::store_pages_with(&geometry(), maps))
}

fn create(store: &mut CrashStore) -> Metadata {
    Metadata::create_with_maps(
        store,
        &identity(),
        &Binding::UNRECORDED,
        &[CHANGED, OVERLAY],
    )
    .unwrap()
}

/// Opens the store and loads named map `m`; its marked regions, and the load report.
fn reopen(store: &mut CrashStore, m: usize) -> (Metadata, BTreeSet<u64>, MapLoad) {
    let restore = RegionMap::new(geometry()).unwrap();
    let mut meta = Metadata::open(store, &identity(), &restore).unwrap();
    let named = NamedMap::new(geometry()).unwrap();
    let load = meta.load_map(store, m, &named).unwrap();
    let set = named.runs().flat_map(|r| r.collect::<Vec<_>>()).collect();
    (meta, set, load)
}

fn record(byte: u8) -> [u8; MAP_RECORD_BYTES] {
    [byte; MAP_RECORD_BYTES]
}

#[test]
fn map_names_are_checked() {
    assert_eq!(CHANGED.as_str(), "changed");
    assert!(MapName::new("").is_none());
    assert!(MapName::new("ninechars").is_none());
    assert!(MapName::new("a b").is_none());
    assert!(MapName::new("sent_2-x").is_some());
    assert!(
        MapName::from_bytes(*b"ab\0c\0\0\0\0").is_none(),
        "a hole in the name"
    );
    assert!(MapName::from_bytes([0; 8]).is_none());
}

#[test]
fn the_table_round_trips_and_its_damage_is_typed() {
    let mut maps = MapTable::of(&[CHANGED, OVERLAY]).unwrap();
    maps.entries_mut()[1].reset_generation = 40;
    maps.entries_mut()[1].record = record(0xAB);
    let header = Header {
        identity: identity(),
        binding: Binding::UNRECORDED,
        generation: 42,
        maps,
    };
    let mut page = [0u8; META_PAGE_SIZE_BYTES];
    encode_header(&header, &mut page);
    assert_eq!(decode_header(&page), Ok(header));
    // The table is in the second sector: count at 424, entry 1 at 512 + 128.
    assert_eq!(page[424], 2);
    assert_eq!(&page[MAP_TABLE_OFFSET..MAP_TABLE_OFFSET + 7], b"changed");
    let e1 = MAP_TABLE_OFFSET + MAP_ENTRY_BYTES;
    assert_eq!(&page[e1..e1 + 7], b"overlay");
    assert_eq!(page[e1 + 8], 40);
    assert_eq!(page[e1 + 16], 0xAB);
    assert!(page[MAP_TABLE_OFFSET + 2 * MAP_ENTRY_BYTES..]
        .iter()
        .all(|&b| b == 0));

    // Each bad table, sealed with a valid checksum, is a typed error.
    let reseal = |page: &mut [u8; META_PAGE_SIZE_BYTES]| {
        let crc = crc32c::update(crc32c::update(0, &page[..64]), &page[68..]);
        page[64..68].copy_from_slice(&crc.to_le_bytes());
    };
    type Damage<'a> = (&'a dyn Fn(&mut Page), &'a str);
    let cases: [Damage<'_>; 6] = [
        (&|p| p[424] = 5, "more than 4"),
        (&|p| p[MAP_TABLE_OFFSET] = b' ', "map name"),
        (&|p| p[e1..e1 + 8].copy_from_slice(b"changed\0"), "twice"),
        (&|p| p[e1 + 8] = 43, "reset after"),
        (&|p| p[500] = 1, "reserved"),
        (
            &|p| p[MAP_TABLE_OFFSET + 3 * MAP_ENTRY_BYTES] = 1,
            "unused map entry",
        ),
    ];
    for (damage, what) in cases {
        let mut bad = page;
        damage(&mut bad);
        reseal(&mut bad);
        match decode_header(&bad) {
            Err(MetaError::MapTable(reason)) => assert!(reason.contains(what), "{reason}"),
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn named_maps_commit_beside_the_restore_map_and_reload() {
    let mut store = store(2);
    let mut meta = create(&mut store);
    let changed = Arc::new(NamedMap::new(geometry()).unwrap());
    meta.attach(0, Arc::clone(&changed)).unwrap();
    changed.mark(5..9);
    changed.mark(REGIONS_PER_PAGE * 2 + 3..REGIONS_PER_PAGE * 2 + 4);
    changed.mark(5..6); // already marked: no page becomes dirty again
    meta.note_marked(0..1);
    let stats = meta.commit(&mut store, |w| u64::from(w == 0)).unwrap();
    // Restore page 0, and pages 0 and 2 of the changed map.
    assert_eq!(stats.pages_written, 3);
    // Only pages: one flush, as for the restore map alone.
    assert_eq!(
        store.counts().flushes,
        4,
        "three for create, one for the commit"
    );
    let (_, set, load) = reopen(&mut store, 0);
    let mut want: BTreeSet<u64> = (5..9).collect();
    want.insert(REGIONS_PER_PAGE * 2 + 3);
    assert_eq!(set, want);
    assert_eq!(
        load,
        MapLoad {
            intact: true,
            stale_pages: 0
        }
    );
    // The other map holds nothing, and a commit with nothing marked does no I/O.
    assert!(reopen(&mut store, 1).1.is_empty());
    let before = store.counts();
    assert_eq!(meta.commit(&mut store, |_| 0).unwrap().store_writes, 0);
    assert_eq!(store.counts(), before);
}

#[test]
fn a_record_becomes_durable_only_after_the_pages_it_speaks_for() {
    let mut store = store(2);
    let mut meta = create(&mut store);
    let changed = Arc::new(NamedMap::new(geometry()).unwrap());
    meta.attach(0, Arc::clone(&changed)).unwrap();
    changed.mark(100..200);
    meta.set_record(0, record(1)).unwrap();
    let flushes = store.counts().flushes;
    meta.commit(&mut store, |_| 0).unwrap();
    assert_eq!(
        store.counts().flushes,
        flushes + 2,
        "pages, flush, header, flush"
    );
    // The header waits for the pages: a crash that keeps the header write always keeps
    // the page writes (they were flushed first).
    for seed in 0..64u64 {
        let mut store = store_with_record(seed);
        let restore = RegionMap::new(geometry()).unwrap();
        let mut meta = Metadata::open(&mut store, &identity(), &restore).unwrap();
        let named = NamedMap::new(geometry()).unwrap();
        meta.load_map(&mut store, 0, &named).unwrap();
        if meta.maps().entries()[0].record == record(2) {
            assert!((300..400).all(|r| named.is_marked(r)), "seed {seed}");
        }
    }
}

/// A store whose last commit (marks 300..400 and record 2) crashed unflushed.
fn store_with_record(seed: u64) -> CrashStore {
    let mut store = store(2);
    let mut meta = create(&mut store);
    let changed = Arc::new(NamedMap::new(geometry()).unwrap());
    meta.attach(0, Arc::clone(&changed)).unwrap();
    changed.mark(300..400);
    meta.set_record(0, record(2)).unwrap();
    // Any number of the commit's operations get through, then the power goes.
    store.fail_after(seed % 5);
    let _ = meta.commit(&mut store, |_| 0);
    let mut rng = seed;
    store.crash(&mut || splitmix64(&mut rng));
    store
}

#[test]
fn a_reset_empties_the_map_and_later_marks_count() {
    let mut store = store(2);
    let mut meta = create(&mut store);
    let changed = Arc::new(NamedMap::new(geometry()).unwrap());
    meta.attach(0, Arc::clone(&changed)).unwrap();
    changed.mark(0..REGIONS);
    meta.commit(&mut store, |_| 0).unwrap();
    assert_eq!(reopen(&mut store, 0).1.len() as u64, REGIONS);
    changed.clear();
    meta.reset_map(0).unwrap();
    meta.set_record(0, record(7)).unwrap();
    changed.mark(10..11);
    let stats = meta.commit(&mut store, |_| 0).unwrap();
    assert_eq!(
        stats.pages_written, 1,
        "a reset writes only what was marked since"
    );
    let generation = stats.generation;
    let (meta2, set, load) = reopen(&mut store, 0);
    assert_eq!(set, [10].into());
    assert_eq!(meta2.maps().entries()[0].reset_generation, generation);
    assert_eq!(meta2.maps().entries()[0].record, record(7));
    assert!(load.intact);
    // The older slot of each page (all marked) is still valid, but from before the
    // reset: it adds nothing. The other map was never touched.
    assert!(reopen(&mut store, 1).1.is_empty());
    assert_eq!(meta2.maps().entries()[1].reset_generation, 0);
}

#[test]
fn a_damaged_named_page_is_reported_and_a_reset_repairs_it() {
    let mut store = store(2);
    let mut meta = create(&mut store);
    let changed = Arc::new(NamedMap::new(geometry()).unwrap());
    meta.attach(0, Arc::clone(&changed)).unwrap();
    changed.mark(1..2);
    meta.commit(&mut store, |_| 0).unwrap();
    // Both slots of the changed map's page 1 damaged: the restore still opens.
    let pages = meta.bitmap_page_count();
    for b in [false, true] {
        store.damage(super::named_slot_page(pages, 0, 1, b), 100, 1);
    }
    let (mut meta, set, load) = reopen(&mut store, 0);
    assert!(!load.intact);
    assert_eq!(set, [1].into(), "what the valid pages hold is loaded");
    let changed = Arc::new(NamedMap::new(geometry()).unwrap());
    meta.attach(0, Arc::clone(&changed)).unwrap();
    meta.reset_map(0).unwrap();
    meta.commit(&mut store, |_| 0).unwrap();
    let (_, set, load) = reopen(&mut store, 0);
    assert!(load.intact && set.is_empty());
}

#[test]
fn named_map_operations_are_checked() {
    let mut store = store(2);
    let restore = RegionMap::new(geometry()).unwrap();
    create(&mut store);
    let mut meta = Metadata::open(&mut store, &identity(), &restore).unwrap();
    let map = Arc::new(NamedMap::new(geometry()).unwrap());
    // Opened: its current slots are unknown until it is loaded.
    assert!(matches!(
        meta.attach(0, Arc::clone(&map)),
        Err(MetaError::MapTable(_))
    ));
    assert!(matches!(meta.reset_map(0), Err(MetaError::MapTable(_))));
    assert!(matches!(
        meta.set_record(2, record(1)),
        Err(MetaError::MapTable(_))
    ));
    assert!(matches!(
        meta.load_map(&mut store, 2, &map),
        Err(MetaError::MapTable(_))
    ));
    let small = NamedMap::new(Geometry::new(4096, 4096).unwrap()).unwrap();
    assert!(matches!(
        meta.load_map(&mut store, 0, &small),
        Err(MetaError::MapMismatch { .. })
    ));
    meta.load_map(&mut store, 0, &map).unwrap();
    meta.attach(0, map).unwrap();
    // A store sized for fewer maps than asked for is refused.
    let mut short = CrashStore::new(Metadata::store_pages_with(&geometry(), 1));
    assert!(matches!(
        Metadata::create_with_maps(
            &mut short,
            &identity(),
            &Binding::UNRECORDED,
            &[CHANGED, OVERLAY]
        ),
        Err(MetaError::StoreTooSmall { .. })
    ));
    assert!(matches!(
        Metadata::create_with_maps(
            &mut store,
            &identity(),
            &Binding::UNRECORDED,
            &[CHANGED, CHANGED]
        ),
        Err(MetaError::MapTable(_))
    ));
}

/// One step of the crash test.
#[derive(Clone, Debug)]
enum Op {
    /// Mark regions of the changed map.
    Mark { start: u64, len: u64 },
    /// Commit; with a record change (strictly two-phase).
    Commit { record: bool },
    /// Empty the map at the next commit.
    Reset,
    /// The store fails its n-th next operation.
    Fault(u64),
    /// Power loss, then reopen and reload.
    Crash(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..REGIONS, 1u64..3000).prop_map(|(start, len)| Op::Mark { start, len }),
        3 => any::<bool>().prop_map(|record| Op::Commit { record }),
        1 => Just(Op::Reset),
        1 => (0u64..6).prop_map(Op::Fault),
        2 => any::<u64>().prop_map(Op::Crash),
    ]
}

/// What the test knows about the map.
struct Model {
    /// Marks made since the last reset began (what a load may hold, with `before`).
    since_reset: BTreeSet<u64>,
    /// Marks from before a reset whose commit has not returned Ok yet (a crash may keep
    /// the old epoch, so a load may hold them too).
    before: BTreeSet<u64>,
    /// Marks of commits that returned Ok since the last reset: a load must hold them.
    committed: BTreeSet<u64>,
    /// The record of the last commit that returned Ok, and the marks it speaks for.
    record: (u8, BTreeSet<u64>),
    /// The record the next commit writes.
    pending_record: u8,
    reset_pending: bool,
    /// Records set since a reset that no commit has acknowledged: a durable header
    /// holding one of them has the reset.
    reset_records: BTreeSet<u8>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn crashes_never_lose_a_committed_change_nor_invent_one(ops in proptest::collection::vec(op(), 1..50)) {
        let mut store = store(2);
        let mut meta = create(&mut store);
        let mut map = Arc::new(NamedMap::new(geometry()).unwrap());
        meta.attach(0, Arc::clone(&map)).unwrap();
        let mut model = Model {
            since_reset: BTreeSet::new(),
            before: BTreeSet::new(),
            committed: BTreeSet::new(),
            record: (0, BTreeSet::new()),
            pending_record: 0,
            reset_pending: false,
            reset_records: BTreeSet::new(),
        };
        let mut next_record = 1u8;
        // Each record value is used once (as the changed map's owner does, a reset
        // always comes with a new record).
        let mut new_record = |meta: &mut Metadata, model: &mut Model| {
            meta.set_record(0, [next_record; MAP_RECORD_BYTES]).unwrap();
            model.pending_record = next_record;
            if model.reset_pending {
                model.reset_records.insert(next_record);
            }
            next_record = next_record.wrapping_add(1).max(1);
        };
        for op in ops {
            match op {
                Op::Mark { start, len } => {
                    let end = (start + len).min(REGIONS);
                    map.mark(start..end);
                    model.since_reset.extend(start..end);
                }
                Op::Reset => {
                    map.clear();
                    meta.reset_map(0).unwrap();
                    model.before.extend(core::mem::take(&mut model.since_reset));
                    model.reset_pending = true;
                    new_record(&mut meta, &mut model);
                }
                Op::Commit { record: with_record } => {
                    let marked: BTreeSet<u64> = map.runs().flat_map(|r| r.collect::<Vec<_>>()).collect();
                    if with_record {
                        new_record(&mut meta, &mut model);
                    }
                    if meta.commit(&mut store, |_| 0).is_ok() {
                        if model.reset_pending {
                            model.before.clear();
                            model.committed.clear();
                            model.reset_pending = false;
                            model.reset_records.clear();
                        }
                        model.committed.extend(marked.iter().copied());
                        model.record = (model.pending_record, marked);
                    }
                }
                Op::Fault(n) => store.fail_after(n),
                Op::Crash(seed) => {
                    let mut rng = seed;
                    store.crash(&mut || splitmix64(&mut rng));
                    store.clear_faults();
                    let restore = RegionMap::new(geometry()).unwrap();
                    meta = Metadata::open(&mut store, &identity(), &restore).unwrap();
                    let loaded = Arc::new(NamedMap::new(geometry()).unwrap());
                    let load = meta.load_map(&mut store, 0, &loaded).unwrap();
                    prop_assert!(load.intact, "torn writes never leave a page without a valid slot");
                    let got: BTreeSet<u64> = loaded.runs().flat_map(|r| r.collect::<Vec<_>>()).collect();
                    let durable_record = meta.maps().entries()[0].record[0];
                    // An unacknowledged reset may have become durable: then what was
                    // committed before it is gone, as it should be.
                    let reset_happened = model.reset_records.contains(&durable_record);
                    if !reset_happened {
                        prop_assert!(got.is_superset(&model.committed), "lost a committed change");
                    }
                    let may: BTreeSet<u64> = model.since_reset.union(&model.before).copied().collect();
                    prop_assert!(got.is_subset(&may), "invented a change");
                    // A durable record never speaks for marks that are not durable.
                    if durable_record == model.record.0 {
                        prop_assert!(got.is_superset(&model.record.1), "a record spoke for marks that were lost");
                    }
                    model.pending_record = durable_record;
                    model.record = (durable_record, got.clone());
                    // Start again from what is durable.
                    model.since_reset = got.clone();
                    model.before.clear();
                    model.committed = got;
                    model.reset_pending = false;
                    model.reset_records.clear();
                    map = loaded;
                    meta.attach(0, Arc::clone(&map)).unwrap();
                }
            }
        }
    }
}
