//! Named region maps: more maps beside the restore map in one metadata store, each
//! committed in the same commit as the restore map, each with its own generation.
//!
//! DESIGN.md section 6 asks for this once, for several users: the changed-region map
//! of incremental backups ([`crate::changed`]), the overlay map (T2), the sent map (T5),
//! the journal's gaps (T3). The metadata keeps, per map, a name, a *reset generation*
//! and a small record its owner fills (see the layout in [`super::layout`]).
//!
//! # Generations and resets
//!
//! A named map, unlike the restore map, can be emptied ([`super::Metadata::reset_map`]).
//! Its slots carry the commit generation that wrote them like every slot; the header
//! records the generation of the commit that last emptied the map. A slot older than
//! that holds nothing of the map (it is from before the reset) however valid it is. So
//! a reset costs no erasure: it moves the reset generation, and pages are written again
//! only as they are marked (or repaired, below). Between resets the map only grows, as
//! the restore map does, and loading ORs both valid slots of a page.
//!
//! # The two phases
//!
//! A commit that changes a named map's record writes the dirty pages, flushes, and
//! only then writes the header and flushes again. A record may say "every change up to
//! now is in the map" (the changed map's clean stop); it must never become durable
//! before the pages that say so. Commits that change only pages keep the single flush
//! of the restore map.
//!
//! A reset goes the other way: its header (the new reset generation, and the record
//! set with it, which speaks for the emptied map) is written and flushed first, alone,
//! and the map's pages after it. Until that header is durable the map is its old self;
//! from then on every older slot holds nothing, so whatever a page holds is of the new
//! epoch. (Pages written first would be emptied pages newer than the header, taken for
//! the current copy on reload while the old epoch still holds, and the next torn write
//! of the other slot would lose what that epoch committed.) Marks made between the
//! clear and the reset's commit are written with its pages, after its header: a crash
//! between them may lose them, as it may lose any mark not yet committed.
//!
//! Every slot a load reads moves the metadata's generation past its own, so a later
//! reset's generation is newer than any slot written before it (a failed commit can
//! leave slots newer than every header).
//!
//! # Damage
//!
//! A page of a named map with no valid slot is not an error of the whole metadata (the
//! restore goes on): [`super::Metadata::load_map`] says the map is damaged, and its owner
//! decides. The owner must not trust the map again before a reset even if a later
//! commit writes that page (it then holds only what was marked since): the changed map
//! drops its base, so it is not trusted until a backup resets it. The commit after a
//! reset writes every damaged page, which repairs it.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use super::layout::REGIONS_PER_PAGE;
use super::MetaError;
use crate::geometry::Geometry;

/// Most named maps one store holds.
pub const NAMED_MAPS_MAX: usize = 4;
/// Bytes of a map's name.
pub const MAP_NAME_BYTES: usize = 8;
/// Bytes of the record a map's owner keeps in the header.
pub const MAP_RECORD_BYTES: usize = 112;

/// A map's name: 1 to 8 ASCII letters, digits, `-` or `_`, zero-padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MapName([u8; MAP_NAME_BYTES]);

impl MapName {
    /// The name `text`, if it is a valid one.
    pub const fn new(text: &str) -> Option<MapName> {
        let bytes = text.as_bytes();
        if bytes.is_empty() || bytes.len() > MAP_NAME_BYTES {
            return None;
        }
        let mut out = [0u8; MAP_NAME_BYTES];
        let mut i = 0;
        while i < bytes.len() {
            out[i] = bytes[i];
            i += 1;
        }
        MapName::from_bytes(out)
    }

    /// The name in `bytes` as the header holds it, if valid: name characters, then
    /// only zeros, at least one character.
    pub const fn from_bytes(bytes: [u8; MAP_NAME_BYTES]) -> Option<MapName> {
        let mut i = 0;
        let mut ended = false;
        while i < MAP_NAME_BYTES {
            let b = bytes[i];
            let name_char = b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
            if b == 0 {
                ended = true;
            } else if ended || !name_char {
                return None;
            }
            i += 1;
        }
        if bytes[0] == 0 {
            return None;
        }
        Some(MapName(bytes))
    }

    /// The bytes as the header holds them.
    pub fn as_bytes(&self) -> &[u8; MAP_NAME_BYTES] {
        &self.0
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        let len = self
            .0
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(MAP_NAME_BYTES);
        // Checked ASCII on construction.
        core::str::from_utf8(&self.0[..len]).unwrap_or("")
    }
}

/// One named map as the header records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// Its name.
    pub name: MapName,
    /// The commit that last emptied it: its slots of older generations hold nothing.
    pub reset_generation: u64,
    /// What its owner keeps with it.
    pub record: [u8; MAP_RECORD_BYTES],
}

/// The named maps of a store, in order (map `m` is the `m`-th).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapTable {
    len: usize,
    entries: [MapEntry; NAMED_MAPS_MAX],
}

const UNUSED: MapEntry = MapEntry {
    name: MapName([0; MAP_NAME_BYTES]),
    reset_generation: 0,
    record: [0; MAP_RECORD_BYTES],
};

impl MapTable {
    /// No named map.
    pub const EMPTY: MapTable = MapTable {
        len: 0,
        entries: [UNUSED; NAMED_MAPS_MAX],
    };

    /// A table of fresh maps called `names` (empty records, never reset).
    pub fn of(names: &[MapName]) -> Result<MapTable, MetaError> {
        let mut table = MapTable::EMPTY;
        for &name in names {
            table.push(MapEntry {
                name,
                reset_generation: 0,
                record: [0; MAP_RECORD_BYTES],
            })?;
        }
        Ok(table)
    }

    /// Adds an entry; refused past [`NAMED_MAPS_MAX`] or for a name already there.
    pub fn push(&mut self, entry: MapEntry) -> Result<(), MetaError> {
        if self.len >= NAMED_MAPS_MAX {
            return Err(MetaError::MapTable("more than 4 named maps"));
        }
        if self.entries().iter().any(|e| e.name == entry.name) {
            return Err(MetaError::MapTable("a map name appears twice"));
        }
        self.entries[self.len] = entry;
        self.len += 1;
        Ok(())
    }

    /// Maps in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[MapEntry] {
        &self.entries[..self.len]
    }

    /// The entries, in order, to change.
    pub(super) fn entries_mut(&mut self) -> &mut [MapEntry] {
        &mut self.entries[..self.len]
    }

    /// The index of the map called `name`.
    pub fn find(&self, name: &MapName) -> Option<usize> {
        self.entries().iter().position(|e| e.name == *name)
    }
}

/// The bits of one named map in memory, shared between whoever marks it (any thread:
/// marks are atomic) and the metadata's commits, which write the pages marked since
/// the last commit.
pub struct NamedMap {
    geometry: Geometry,
    words: Box<[AtomicU64]>,
    /// One bit per bitmap page: marked since it was last written.
    dirty_pages: Box<[AtomicU64]>,
}

impl core::fmt::Debug for NamedMap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NamedMap")
            .field("regions", &self.geometry.region_count())
            .field("marked", &self.marked_count())
            .finish_non_exhaustive()
    }
}

fn try_zeroed(len: usize) -> Result<Box<[AtomicU64]>, MetaError> {
    let mut v: Vec<AtomicU64> = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| MetaError::AllocFailed {
            bytes: len.saturating_mul(8),
        })?;
    v.resize_with(len, || AtomicU64::new(0));
    Ok(v.into_boxed_slice())
}

impl NamedMap {
    /// An empty map for a volume of `geometry`.
    pub fn new(geometry: Geometry) -> Result<NamedMap, MetaError> {
        let word_count = geometry.region_count().div_ceil(64);
        let pages = geometry.region_count().div_ceil(REGIONS_PER_PAGE);
        Ok(NamedMap {
            geometry,
            // Bounded by the geometry's region-count bound: both fit any usize.
            words: try_zeroed(word_count as usize)?,
            dirty_pages: try_zeroed(pages.div_ceil(64) as usize)?,
        })
    }

    /// The volume's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Sets the bits of `regions` (clipped to the volume); the pages holding a newly set
    /// bit are written by the next commit. Lock-free; a bit already set costs a load.
    pub fn mark(&self, regions: Range<u64>) {
        let end = regions.end.min(self.geometry.region_count());
        let mut region = regions.start;
        // Bounded: one step per 64-region word in the range.
        while region < end {
            let w = (region / 64) as usize;
            let word_end = ((region / 64 + 1) * 64).min(end);
            let bits = word_bits(region % 64, word_end - region);
            let Some(word) = self.words.get(w) else {
                debug_assert!(false, "word {w} past the map");
                return;
            };
            if word.load(Ordering::Relaxed) & bits != bits {
                let before = word.fetch_or(bits, Ordering::AcqRel);
                if before & bits != bits {
                    self.dirty_page(region / REGIONS_PER_PAGE);
                }
            }
            region = word_end;
        }
    }

    fn dirty_page(&self, page: u64) {
        if let Some(w) = self.dirty_pages.get((page / 64) as usize) {
            w.fetch_or(1 << (page % 64), Ordering::AcqRel);
        }
    }

    /// Whether `region` is marked.
    pub fn is_marked(&self, region: u64) -> bool {
        self.word((region / 64) as usize) & (1 << (region % 64)) != 0
    }

    /// Word `w` of the map (bit `b` = region `64*w + b`); 0 past the end.
    pub fn word(&self, w: usize) -> u64 {
        self.words.get(w).map_or(0, |x| x.load(Ordering::Acquire))
    }

    /// Words in the map.
    pub fn word_count(&self) -> usize {
        self.words.len()
    }

    /// Regions marked.
    pub fn marked_count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// The runs of marked regions, in order.
    pub fn runs(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        let count = self.geometry.region_count();
        let mut region = 0u64;
        core::iter::from_fn(move || {
            let start = self.next(region, true, count)?;
            let end = self.next(start, false, count).unwrap_or(count);
            region = end;
            Some(start..end)
        })
    }

    /// First region at or after `from` whose bit is `set`.
    fn next(&self, from: u64, set: bool, count: u64) -> Option<u64> {
        let mut region = from;
        while region < count {
            let word = self.word((region / 64) as usize);
            let bits = if set { word } else { !word } >> (region % 64);
            if bits != 0 {
                let found = region + u64::from(bits.trailing_zeros());
                return (found < count).then_some(found);
            }
            region = (region / 64 + 1) * 64;
        }
        None
    }

    /// Clears every bit (the map's owner then has the metadata reset it, which writes
    /// every page). Marks made meanwhile by other threads may or may not survive it.
    pub fn clear(&self) {
        for w in self.words.iter() {
            w.store(0, Ordering::Release);
        }
    }

    /// ORs `bits` into word `w` as loaded from a valid slot (no page becomes dirty: it
    /// is already what the store holds).
    pub(super) fn load_word(&self, w: usize, bits: u64) {
        if let Some(word) = self.words.get(w) {
            word.fetch_or(bits, Ordering::AcqRel);
        }
    }

    /// Takes the dirty-page bits of word `i` of the page set (they are cleared).
    pub(super) fn take_dirty(&self, i: usize) -> u64 {
        self.dirty_pages
            .get(i)
            .map_or(0, |w| w.swap(0, Ordering::AcqRel))
    }

    /// Marks every page in `bits` (word `i` of the page set) dirty again (a commit failed).
    pub(super) fn redirty(&self, i: usize, bits: u64) {
        if let Some(w) = self.dirty_pages.get(i) {
            w.fetch_or(bits, Ordering::AcqRel);
        }
    }

    /// Whether any page is dirty.
    pub(super) fn any_dirty(&self) -> bool {
        self.dirty_pages
            .iter()
            .any(|w| w.load(Ordering::Acquire) != 0)
    }
}

/// `len` bits from bit `first` (`first + len <= 64`).
fn word_bits(first: u64, len: u64) -> u64 {
    debug_assert!(len >= 1 && first + len <= 64);
    if len == 64 {
        u64::MAX
    } else {
        ((1u64 << len) - 1) << first
    }
}
