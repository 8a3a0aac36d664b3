//! Fuzzes the metadata decoders, `Metadata::open` and `Metadata::load_map` over hostile
//! stores (rule 7).
//!
//! Nothing may panic. Beyond that, an `open` that succeeds must load exactly the OR of
//! the slots that are valid for their page (no mark from nowhere), a named map's load
//! exactly the OR of its valid slots not older than its reset, and a commit of what was
//! loaded followed by a reopen must keep every mark (a durable mark never reverts).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

use rehydrate_driver::meta::{
    decode_header, decode_page_slot, encode_header, encode_page_slot, identity_tag, map_tag,
    Binding, Header, Identity, MapEntry, MapName, MapTable, MetaStore, Metadata, NamedMap, Page,
    SourceKind, SourcePin, StoreError, TargetKind, TargetPin, HEADER_STORE_PAGES,
    MAP_RECORD_BYTES, META_PAGE_SIZE_BYTES, REGIONS_PER_PAGE, TARGET_ID_BYTES, WORDS_PER_PAGE,
};
use rehydrate_driver::engine::overlay::Record as OverlayRecord;
use rehydrate_driver::{Geometry, RegionMap};

/// A plain in-memory store: no cache, no faults.
struct MemStore {
    bytes: Vec<u8>,
}

impl MemStore {
    fn page(&self, index: u64) -> Option<&[u8]> {
        let start = usize::try_from(index)
            .ok()?
            .checked_mul(META_PAGE_SIZE_BYTES)?;
        self.bytes
            .get(start..start.checked_add(META_PAGE_SIZE_BYTES)?)
    }

    fn page_mut(&mut self, index: u64) -> Option<&mut [u8]> {
        let start = usize::try_from(index)
            .ok()?
            .checked_mul(META_PAGE_SIZE_BYTES)?;
        self.bytes
            .get_mut(start..start.checked_add(META_PAGE_SIZE_BYTES)?)
    }
}

impl MetaStore for MemStore {
    fn page_count(&self) -> u64 {
        (self.bytes.len() / META_PAGE_SIZE_BYTES) as u64
    }

    fn read_page(&mut self, index: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let page_count = self.page_count();
        let page = self
            .page(index)
            .ok_or(StoreError::OutOfRange { index, page_count })?;
        buf.copy_from_slice(page);
        Ok(())
    }

    fn write_page(&mut self, index: u64, buf: &[u8]) -> Result<(), StoreError> {
        let page_count = self.page_count();
        let page = self
            .page_mut(index)
            .ok_or(StoreError::OutOfRange { index, page_count })?;
        page.copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Reads the fuzz input as an endless stream of bytes (zeros once it runs out).
struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at = self.at.saturating_add(1);
        b
    }

    fn u64(&mut self) -> u64 {
        let mut le = [0u8; 8];
        for b in &mut le {
            *b = self.byte();
        }
        u64::from_le_bytes(le)
    }
}

/// The OR of the valid slots of every bitmap page of map `m` (0: the restore map,
/// 1..: named map `m - 1`) not older than `reset_generation`: what a successful open
/// (or load) must load.
fn expected_words(
    store: &MemStore,
    geometry: &Geometry,
    tag: u32,
    m: u64,
    reset_generation: u64,
) -> Vec<u64> {
    let word_count = usize::try_from(geometry.region_count().div_ceil(64)).unwrap();
    let mut words = vec![0u64; word_count];
    let pages = geometry.region_count().div_ceil(REGIONS_PER_PAGE);
    for page in 0..pages {
        for slot in 0..2 {
            let bytes = store
                .page(HEADER_STORE_PAGES + 2 * pages * m + 2 * page + slot)
                .expect("open checked the store size");
            let Ok(decoded) = decode_page_slot(bytes, page, tag) else {
                continue;
            };
            if decoded.generation < reset_generation {
                continue;
            }
            let first = usize::try_from(page).unwrap() * WORDS_PER_PAGE;
            // A slot with a bit past the last region is not valid: it adds nothing.
            let in_range = decoded
                .words()
                .enumerate()
                .all(|(j, w)| w & !word_mask(geometry, first + j) == 0);
            if !in_range {
                continue;
            }
            for (j, w) in decoded.words().enumerate() {
                if let Some(out) = words.get_mut(first + j) {
                    *out |= w;
                }
            }
        }
    }
    words
}

/// Bits of map word `w` that name regions of the volume.
fn word_mask(geometry: &Geometry, w: usize) -> u64 {
    let first = w as u64 * 64;
    match geometry.region_count().saturating_sub(first) {
        0 => 0,
        n if n >= 64 => u64::MAX,
        n => (1 << n) - 1,
    }
}

fn map_words(map: &RegionMap) -> Vec<u64> {
    (0..map.word_count()).map(|w| map.word(w)).collect()
}

fuzz_target!(|data: &[u8]| {
    // 1. The pure decoders on the raw input, and on its first page when it has one.
    let _ = decode_header(data);
    let mut input = Input { data, at: 0 };
    let (index, tag) = (input.u64(), input.u64() as u32);
    let _ = decode_page_slot(data, index, tag);
    // The records owners keep in named maps: the overlay mode's (its state and its
    // overlay's pin) decodes to a typed error or to a record that encodes back.
    if let Some(bytes) = data.get(..MAP_RECORD_BYTES) {
        let record: [u8; MAP_RECORD_BYTES] = bytes.try_into().expect("sliced to length");
        if let Ok(decoded) = OverlayRecord::decode(&record) {
            assert_eq!(decoded.encode(), record, "an overlay record re-encodes exactly");
        }
    }
    if let Some(page) = data.get(..META_PAGE_SIZE_BYTES) {
        let _ = decode_header(page);
        if let Ok(slot) = decode_page_slot(page, index, tag) {
            assert_eq!(slot.words().count(), WORDS_PER_PAGE);
        }
    }

    // 2. `open` over a store made of the input, with some slots sealed (given valid
    //    checksums over input-chosen fields) so the checks past the checksum run too.
    let mut input = Input { data, at: 0 };
    let control = input.byte();
    let regions = 1 + u64::from(input.byte()) * 512 + u64::from(input.byte());
    let identity = Identity {
        volume_size_bytes: regions * 4096,
        region_size_bytes: 4096,
        backup_id: [input.byte(); 32],
    };
    let geometry = identity.geometry().expect("small volumes are valid");
    let tag = identity_tag(&identity);
    let maps = map_table(&mut input);
    let mut pages = Metadata::store_pages_with(&geometry, maps.len());
    if control & 0x80 != 0 {
        pages -= u64::from(input.byte()) % pages;
    }
    let rest = data.get(input.at..).unwrap_or_default();
    let len = usize::try_from(pages).unwrap() * META_PAGE_SIZE_BYTES;
    let mut store = MemStore {
        bytes: rest.iter().copied().cycle().take(len).collect(),
    };
    store.bytes.resize(len, 0);

    let mut page: Page = [0; META_PAGE_SIZE_BYTES];
    for slot in 0..HEADER_STORE_PAGES {
        if control & (1 << slot) != 0 {
            let mut id = identity;
            // Now and then another restore's header.
            if input.byte() < 16 {
                id.backup_id[0] ^= 1;
            }
            // The binding the header records: kinds and name from the input, so
            // unknown kinds and bad names reach the decoder sealed by a valid checksum.
            let generation = input.u64() % 1000;
            // The table with reset generations from the input (at most the header's).
            let mut reset = MapTable::EMPTY;
            for e in maps.entries() {
                let reset_generation = input.u64() % (generation + 1);
                let _ = reset.push(MapEntry {
                    reset_generation,
                    ..*e
                });
            }
            let header = Header {
                identity: id,
                binding: binding(&mut input),
                generation,
                maps: reset,
            };
            encode_header(&header, &mut page);
            if let Some(out) = store.page_mut(slot) {
                out.copy_from_slice(&page);
            }
        }
    }
    if control & 0x04 != 0 {
        for index in HEADER_STORE_PAGES..pages {
            let choice = input.byte();
            if choice < 64 {
                continue; // leave the raw bytes
            }
            let per_map = 2 * geometry.region_count().div_ceil(REGIONS_PER_PAGE);
            let m = (index - HEADER_STORE_PAGES) / per_map;
            let bitmap_page = (index - HEADER_STORE_PAGES) % per_map / 2;
            let claimed = if choice < 80 {
                bitmap_page + 1
            } else {
                bitmap_page
            };
            let own_tag = match m.checked_sub(1) {
                None => tag,
                Some(n) => maps
                    .entries()
                    .get(n as usize)
                    .map_or(tag, |e| map_tag(&identity, &e.name)),
            };
            let claimed_tag = if choice < 96 { own_tag ^ 1 } else { own_tag };
            let generation = input.u64() % 1000;
            // Sparse bits from the input; now and then bits past the last region.
            let seed = input.u64();
            let dense = choice > 240;
            let first = usize::try_from(bitmap_page).unwrap() * WORDS_PER_PAGE;
            encode_page_slot(&mut page, claimed, generation, claimed_tag, |j| {
                let w = seed.rotate_left(j as u32) ^ (j as u64).wrapping_mul(0x9E37_79B9);
                if dense {
                    w
                } else {
                    w & (w >> 7) & (w >> 13) & word_mask(&geometry, first + j)
                }
            });
            if let Some(out) = store.page_mut(index) {
                out.copy_from_slice(&page);
            }
        }
    }

    let map = RegionMap::new(geometry).expect("small map");
    if let Ok(header) = Metadata::read_header(&mut store) {
        // What `read_header` returns decodes again to itself.
        let mut page: Page = [0; META_PAGE_SIZE_BYTES];
        encode_header(&header, &mut page);
        assert_eq!(decode_header(&page), Ok(header));
    }
    let Ok(mut meta) = Metadata::open(&mut store, &identity, &map) else {
        return;
    };
    let loaded = map_words(&map);
    assert_eq!(
        loaded,
        expected_words(&store, &geometry, tag, 0, 0),
        "open invented or dropped a mark"
    );

    // Each named map: exactly its valid slots since its reset; then attached, so the
    // commit below writes it too.
    let table = *meta.maps();
    let mut named = Vec::new();
    for (m, entry) in table.entries().iter().enumerate() {
        let into = Arc::new(NamedMap::new(geometry).expect("small map"));
        let load = meta
            .load_map(&mut store, m, &into)
            .expect("a fault-free store loads");
        let got: Vec<u64> = (0..into.word_count()).map(|w| into.word(w)).collect();
        let expected = expected_words(
            &store,
            &geometry,
            map_tag(&identity, &entry.name),
            m as u64 + 1,
            entry.reset_generation,
        );
        assert_eq!(got, expected, "load invented or dropped a mark of map {m}");
        let _ = load.intact;
        meta.attach(m, Arc::clone(&into)).expect("loaded maps attach");
        // One more mark, so the commit writes a page of every map.
        into.mark(0..1);
        named.push(into);
    }

    // Commit what was loaded (all of it durable), reopen: nothing may revert.
    let generation = meta.generation();
    meta.note_marked(0..geometry.region_count());
    let stats = meta
        .commit(&mut store, |w| map.word(w))
        .expect("a fault-free store commits");
    assert!(stats.generation > generation);
    let again = RegionMap::new(geometry).expect("small map");
    let mut reopened = Metadata::open(&mut store, &identity, &again).expect("a committed store reopens");
    assert_eq!(map_words(&again), loaded, "a committed mark reverted");
    for (m, before) in named.iter().enumerate() {
        let into = NamedMap::new(geometry).expect("small map");
        reopened.load_map(&mut store, m, &into).expect("reloads");
        for w in 0..into.word_count() {
            assert_eq!(before.word(w) & !into.word(w), 0, "a committed mark of map {m} reverted");
        }
    }
});

/// Named maps chosen by the input: none, one or two, names from the input (a valid
/// fallback when the input's is not), records from the input.
fn map_table(input: &mut Input<'_>) -> MapTable {
    let mut table = MapTable::EMPTY;
    for i in 0..input.byte() % 3 {
        let mut bytes = [0u8; 8];
        for b in bytes.iter_mut().take(1 + usize::from(input.byte() % 8)) {
            *b = b'a' + input.byte() % 26;
        }
        let name = MapName::from_bytes(bytes)
            .or(MapName::new(["one", "two"][usize::from(i)]))
            .expect("a valid name");
        let _ = table.push(MapEntry {
            name,
            reset_generation: 0,
            record: [input.byte(); MAP_RECORD_BYTES],
        });
    }
    table
}


/// A binding chosen by the input: a pinned source of either kind with a name of up to
/// 300 bytes (too long ones fall back to unrecorded), a target of any kind.
fn binding(input: &mut Input<'_>) -> Binding {
    let kind = match input.byte() % 3 {
        0 => SourceKind::Unrecorded,
        1 => SourceKind::BackupVersion,
        _ => SourceKind::ForeignNbd,
    };
    let len = usize::from(input.byte()) + usize::from(input.byte() % 64);
    let name: String = (0..len)
        .map(|_| char::from(b'a' + input.byte() % 26))
        .collect();
    let source = SourcePin::new(kind, &name, input.u64(), input.u64(), [input.byte(); 32])
        .unwrap_or(SourcePin::UNRECORDED);
    let target = TargetPin {
        kind: match input.byte() % 4 {
            0 => TargetKind::Unrecorded,
            1 => TargetKind::UnixFile,
            2 => TargetKind::UnixBlockDevice,
            _ => TargetKind::WindowsVolume,
        },
        id: [input.byte(); TARGET_ID_BYTES],
    };
    Binding { source, target }
}
