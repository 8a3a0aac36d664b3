//! Persistent metadata: which regions are durably restored, and its commit protocol.
//!
//! After power loss the filter must resume without refetching what it restored, and
//! must never take a region whose data is not durable for restored (DESIGN.md rule 2).
//! The metadata is a header plus the region bitmap cut into pages, kept in a store
//! reached only through the narrow [`MetaStore`] trait (read page, write page, flush),
//! so tests and the simulator can fake it, count it and crash it. The layout is written
//! out byte by byte in [`layout`].
//!
//! # Protocol
//!
//! Every page (the header and each bitmap page) has two slots, A and B, each carrying
//! its generation, its page index and a checksum. In memory we keep, per page, which
//! slot holds the newest copy known durable (the *current* slot). A commit writes each
//! dirty bitmap page, filled from `durable_word`, and the header into the *other* slot,
//! all stamped with generation `g + 1`, then flushes; only when the flush succeeds does
//! it make the written slots current. On error nothing flips, so a retry writes the
//! same non-current slots again. Loading (after a flush, so what we read is durable)
//! ORs the bits of *every* valid slot of a page into the map, takes the valid slot with
//! the newest generation as current, and fails with [`MetaError::PageCorrupt`] when
//! neither slot of a page is valid.
//!
//! Why this is safe, given that a crash keeps any subset of unflushed page writes and
//! tears one of them at any sector boundary:
//!
//! * **Never invents a mark.** Slot contents come from `durable_word` (or are the
//!   zeros written by [`Metadata::create`]), so every bit of a valid slot was offered
//!   by the engine as durable. A torn slot mixes sectors of two such versions and the
//!   page checksum rejects it; even a checksum collision would only yield bits of two
//!   offered versions. Slots of another restore fail the identity tag, slots of another
//!   page fail the page index, and `create` rewrites every slot before it validates the
//!   header, so a re-formatted store never resurrects its old marks.
//! * **Never loses a committed mark.** The map is monotonic, so each write of a page is
//!   a superset of every earlier committed write of it. The current slot is never
//!   written until a write to the other slot has been flushed, so whatever a crash does
//!   to the slot being written, the current slot still holds every mark committed for
//!   that page, and loading ORs it in.
//! * **Corruption is an error, never "restored".** A header that is damaged, of another
//!   format, or of another volume size, region size or backup is a typed error; a page
//!   with no valid slot is [`MetaError::PageCorrupt`]. Nothing reads as all restored.
//!
//! # Contract with the engine
//!
//! `durable_word(w)` must return only bits whose data is durable, and must never drop a
//! bit it returned before (it is the in-memory map minus marks whose data flush has not
//! completed; the map only grows). A commit cleans every dirty page, including the bits
//! `durable_word` withheld from it: call [`Metadata::note_marked`] for a region when its
//! data becomes durable (calling it also when it is marked in memory is harmless).
//!
//! # Named maps
//!
//! Beside the restore map a store may hold up to four named maps ([`maps`]), each with
//! its own pages, its own reset generation and a record its owner fills, committed in
//! the same commit as the restore map; a commit that changes a record becomes
//! two-phase in the strict sense (pages, flush, header, flush), one that resets a map
//! the other way round (header, flush, pages, flush). [`maps`] says why.
//!
//! # Memory
//!
//! One 4 KiB page buffer, plus two bits per bitmap page (dirty, current slot): at the
//! 2^32-region bound (16 TiB at 4 KiB regions) 132,105 bitmap pages, about 33 KiB.
//! Everything is allocated once, with `try_reserve`, when the metadata is created or
//! opened; commits allocate nothing. The store holds `2 + 2 * bitmap_pages` pages.

pub mod binding;
pub mod layout;
pub mod maps;
#[cfg(test)]
mod maps_tests;
pub mod premark;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::Range;

pub use binding::{
    Binding, BindingError, SourceKind, SourcePin, TargetKind, TargetPin, SOURCE_NAME_MAX_BYTES,
    TARGET_ID_BYTES,
};
pub use layout::{
    crc32c, decode_header, decode_page_slot, encode_header, encode_page_slot, identity_tag,
    map_tag, Page, PageSlot, FORMAT_VERSION, HEADER_LEN_BYTES, HEADER_MAGIC, HEADER_STORE_PAGES,
    MAP_ENTRY_BYTES, MAP_TABLE_OFFSET, META_PAGE_SIZE_BYTES, META_SECTOR_SIZE_BYTES,
    OUTDATED_FORMAT_VERSIONS, PAGE_MAGIC, REGIONS_PER_PAGE, SLOT_HEADER_BYTES, WORDS_PER_PAGE,
};
pub use maps::{
    MapEntry, MapName, MapTable, NamedMap, MAP_NAME_BYTES, MAP_RECORD_BYTES, NAMED_MAPS_MAX,
};

use crate::geometry::{Geometry, GeometryError};
use crate::region::RegionMap;

/// Why a store operation failed. The shells map their own errors (NTSTATUS, `io::Error`,
/// simulated faults) into this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The page index is past the end of the store.
    #[error("metadata page {index} is past the store's end of {page_count} pages")]
    OutOfRange {
        /// The page asked for.
        index: u64,
        /// Pages the store has.
        page_count: u64,
    },
    /// The device failed the read, write or flush.
    #[error("metadata store device error, code {code:#010x}")]
    Device {
        /// The shell's own code for the failure (an NTSTATUS, an errno), for the log.
        code: u32,
    },
}

/// The narrow storage trait the metadata is kept through (redb `StorageBackend` style):
/// small enough to fake, to crash and to count.
pub trait MetaStore {
    /// Pages the store holds (its size in bytes divided by [`META_PAGE_SIZE_BYTES`]).
    fn page_count(&self) -> u64;
    /// Reads page `index` into `buf` (`buf.len() == META_PAGE_SIZE_BYTES`).
    fn read_page(&mut self, index: u64, buf: &mut [u8]) -> Result<(), StoreError>;
    /// Writes `buf` (`META_PAGE_SIZE_BYTES` long) to page `index`. Not durable until
    /// [`MetaStore::flush`] returns `Ok`; a crash before may keep it, lose it, or keep a
    /// prefix of its 512-byte sectors.
    fn write_page(&mut self, index: u64, buf: &[u8]) -> Result<(), StoreError>;
    /// Makes every write that returned `Ok` before this call durable.
    fn flush(&mut self) -> Result<(), StoreError>;
}

/// Why one slot of a bitmap page is not valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// The slot is not one page long.
    #[error("slot of {len} bytes, expected 4096")]
    Length {
        /// Bytes given.
        len: usize,
    },
    /// The slot does not start with the bitmap magic (never written, or overwritten).
    #[error("no bitmap magic")]
    Magic,
    /// The checksum does not match (torn write or media damage).
    #[error("checksum {stored:#010x} stored, {computed:#010x} computed")]
    Checksum {
        /// Checksum in the slot.
        stored: u32,
        /// Checksum of the slot's bytes.
        computed: u32,
    },
    /// The slot belongs to another bitmap page (a misdirected write).
    #[error("slot of bitmap page {found}")]
    PageIndex {
        /// Page index in the slot.
        found: u64,
    },
    /// The slot belongs to another restore (other volume, region size or backup).
    #[error("identity tag {found:#010x}, expected {expected:#010x}")]
    Identity {
        /// Tag in the slot.
        found: u32,
        /// Tag of this restore.
        expected: u32,
    },
    /// The generation is `u64::MAX`, which no commit writes.
    #[error("generation u64::MAX")]
    Generation,
    /// Bits are set past the last region of the volume.
    #[error("bits set past the last region")]
    TailBits,
}

/// Why the metadata cannot be created, opened or committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// A buffer handed to a decoder is not one page long.
    #[error("metadata page of {len} bytes, expected 4096")]
    BadLength {
        /// Bytes given.
        len: usize,
    },
    /// Neither header slot starts with the metadata magic: not a metadata store.
    #[error("bad metadata magic {found:#018x}")]
    BadMagic {
        /// The first 8 bytes, big-endian so they read as the text they hold.
        found: u64,
    },
    /// The header is of a format version this code does not know.
    #[error("unsupported metadata format version {found} (this build reads 3)")]
    UnsupportedVersion {
        /// Version in the header.
        found: u32,
    },
    /// The header is of format 1 (written before the header recorded which backup
    /// version and which target it belongs to: its marks cannot be tied to either) or
    /// 2 (before named maps, such as the map of changes for incremental backups).
    #[error("metadata format {found} was written by an older rehydrate (format 3 records the backup version, the target and the map of changes since the backup); remove it to start the restore over")]
    OutdatedFormat {
        /// Version in the header.
        found: u32,
    },
    /// The header's source or target record is malformed.
    #[error("metadata header: {0}")]
    Binding(#[from] BindingError),
    /// The metadata was pinned to another source (version, index or sampled blocks).
    #[error("metadata is pinned to another source")]
    SourceMismatch,
    /// The metadata belongs to another target (another file, device or volume).
    #[error("metadata belongs to another target")]
    TargetMismatch,
    /// Neither header slot passes its checksum.
    #[error("metadata header checksum {stored:#010x} stored, {computed:#010x} computed")]
    HeaderChecksum {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the header's bytes.
        computed: u32,
    },
    /// The metadata belongs to a volume of another size.
    #[error("metadata is for a volume of {found} bytes, expected {expected}")]
    VolumeSizeMismatch {
        /// Size in the header.
        found: u64,
        /// Size expected.
        expected: u64,
    },
    /// The metadata uses another region size.
    #[error("metadata has regions of {found} bytes, expected {expected}")]
    RegionSizeMismatch {
        /// Region size in the header.
        found: u32,
        /// Region size expected.
        expected: u32,
    },
    /// The metadata belongs to a restore of another backup.
    #[error("metadata is for backup {found:#018x}.., expected {expected:#018x}..")]
    BackupMismatch {
        /// First 8 bytes of the backup id in the header, big-endian.
        found: u64,
        /// First 8 bytes of the backup id expected, big-endian.
        expected: u64,
    },
    /// Neither slot of a bitmap page is valid: its marks cannot be trusted.
    #[error("metadata bitmap page {page_index} is corrupt: slot A {slot_a}; slot B {slot_b}")]
    PageCorrupt {
        /// The bitmap page (not the store page).
        page_index: u64,
        /// Why slot A is not valid.
        slot_a: SlotError,
        /// Why slot B is not valid.
        slot_b: SlotError,
    },
    /// The store has fewer pages than the geometry needs.
    #[error("metadata store has {pages} pages, needs {needed}")]
    StoreTooSmall {
        /// Pages the store has.
        pages: u64,
        /// Pages needed.
        needed: u64,
    },
    /// The store failed a read, write or flush.
    #[error("metadata store I/O failed: {0}")]
    Store(#[from] StoreError),
    /// Memory for the page buffer or the page sets could not be allocated.
    #[error("cannot allocate {bytes} bytes for metadata")]
    AllocFailed {
        /// Bytes asked for.
        bytes: usize,
    },
    /// The identity's sizes do not make a valid geometry.
    #[error("metadata identity: {0}")]
    Geometry(#[from] GeometryError),
    /// The table of named maps in the header is malformed, or a named-map operation was
    /// asked for one that is not there or not loaded.
    #[error("metadata named maps: {0}")]
    MapTable(&'static str),
    /// The region map passed to `open` has another number of regions than the identity.
    #[error("region map of {map_regions} regions, identity has {expected_regions}")]
    MapMismatch {
        /// Regions in the map.
        map_regions: u64,
        /// Regions of the identity's geometry.
        expected_regions: u64,
    },
}

/// What a restore is: the volume's shape and the backup it is restored from. The header
/// records it; `open` refuses metadata of any other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Size of the volume.
    pub volume_size_bytes: u64,
    /// Size of a region.
    pub region_size_bytes: u32,
    /// Names the backup version restored (opaque; e.g. a hash of volume name + version).
    pub backup_id: [u8; 32],
}

impl Identity {
    /// The geometry these sizes make.
    pub fn geometry(&self) -> Result<Geometry, GeometryError> {
        Geometry::new(self.volume_size_bytes, self.region_size_bytes)
    }
}

/// A decoded header slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The restore the metadata belongs to.
    pub identity: Identity,
    /// The source and target it is bound to.
    pub binding: Binding,
    /// The commit that wrote this slot.
    pub generation: u64,
    /// The named maps beside the restore map.
    pub maps: MapTable,
}

/// A named map's state beside the restore map's in [`Metadata`].
struct Named {
    /// Identity tag of its slots ([`map_tag`]).
    tag: u32,
    /// One bit per bitmap page: slot B holds the newest copy (known once loaded).
    current_b: Box<[u64]>,
    /// Pages being written by the commit in progress (one bit per page).
    writing: Box<[u64]>,
    /// Its slots were read (or written by `create`), so `current_b` is known.
    loaded: bool,
    /// Where its bits come from at a commit.
    attached: Option<Arc<NamedMap>>,
    /// The next commit empties it: its reset generation moves, in a header made
    /// durable before any page is written.
    reset_pending: bool,
    /// Pages [`Metadata::load_map`] found with no valid slot (one bit per page).
    damaged: Box<[u64]>,
    /// The damaged pages are written at the next commit (after a reset, when they
    /// rightly hold nothing).
    repair: bool,
}

/// What [`Metadata::load_map`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLoad {
    /// Every page had a valid slot: the map holds what was committed. False: some page
    /// had none, and its marks are lost (the owner decides what that means).
    pub intact: bool,
    /// Bitmap pages whose newest valid slot predates the map's reset (they hold nothing).
    pub stale_pages: u64,
}

/// What a commit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CommitStats {
    /// The generation now durable.
    pub generation: u64,
    /// Bitmap pages written.
    pub pages_written: u64,
    /// Store page writes in all (bitmap pages plus the header); 0 when nothing was dirty.
    pub store_writes: u64,
}

/// The persistent metadata of one restore: see the module comment for the protocol.
pub struct Metadata {
    identity: Identity,
    binding: Binding,
    geometry: Geometry,
    identity_tag: u32,
    /// Last generation known durable (committed, or the newest found by `open`).
    generation: u64,
    /// Bitmap pages: `ceil(region_count / REGIONS_PER_PAGE)`.
    bitmap_pages: u64,
    /// One bit per bitmap page: written to memory since its last commit.
    dirty: Box<[u64]>,
    dirty_count: u64,
    /// One bit per bitmap page: set when slot B holds the newest durable copy.
    current_b: Box<[u64]>,
    header_current_b: bool,
    /// The named maps as the header records them (records and reset generations).
    maps: MapTable,
    /// One per entry of `maps`.
    named: Vec<Named>,
    /// A record or a reset awaits the next commit (which is then strictly two-phase).
    header_dirty: bool,
    /// The one page buffer, on the heap (kernel stacks are small).
    buf: Box<Page>,
}

impl core::fmt::Debug for Metadata {
    // The page buffer and page sets are noise in a log line; the counts say it all.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Metadata")
            .field("identity", &self.identity)
            .field("generation", &self.generation)
            .field("bitmap_pages", &self.bitmap_pages)
            .field("dirty_pages", &self.dirty_count)
            .field("header_current_b", &self.header_current_b)
            .finish_non_exhaustive()
    }
}

/// Bitmap pages a geometry needs.
fn bitmap_pages(geometry: &Geometry) -> u64 {
    geometry.region_count().div_ceil(REGIONS_PER_PAGE)
}

/// Store page of slot `b` (false = A) of bitmap page `page` of the restore map.
fn slot_page(page: u64, b: bool) -> u64 {
    HEADER_STORE_PAGES + 2 * page + u64::from(b)
}

/// Store page of slot `b` of bitmap page `page` of named map `m` in a store whose maps
/// have `bitmap_pages` pages each.
fn named_slot_page(bitmap_pages: u64, m: usize, page: u64, b: bool) -> u64 {
    HEADER_STORE_PAGES + 2 * bitmap_pages * (1 + m as u64) + 2 * page + u64::from(b)
}

/// Zeroed words, failing with a typed error instead of aborting.
fn try_zeroed_words(len: usize) -> Result<Box<[u64]>, MetaError> {
    let mut v: Vec<u64> = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| MetaError::AllocFailed {
            bytes: len.saturating_mul(8),
        })?;
    v.resize(len, 0);
    Ok(v.into_boxed_slice())
}

fn try_page() -> Result<Box<Page>, MetaError> {
    let failed = MetaError::AllocFailed {
        bytes: META_PAGE_SIZE_BYTES,
    };
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve_exact(META_PAGE_SIZE_BYTES)
        .map_err(|_| failed)?;
    v.resize(META_PAGE_SIZE_BYTES, 0);
    v.into_boxed_slice().try_into().map_err(|_| failed)
}

/// Bits of map word `w` that name regions of a volume of `region_count` regions.
fn word_mask(region_count: u64, w: usize, word_count: usize) -> u64 {
    if w >= word_count {
        return 0;
    }
    let regions = (region_count - w as u64 * 64).min(64);
    if regions == 64 {
        u64::MAX
    } else {
        (1u64 << regions) - 1
    }
}

fn bit(set: &[u64], index: u64) -> bool {
    set.get((index / 64) as usize)
        .is_some_and(|w| w & (1 << (index % 64)) != 0)
}

/// Sets a bit; returns true when it was clear. Indices are below the set's length by
/// construction (bitmap page indices).
fn set_bit(set: &mut [u64], index: u64) -> bool {
    match set.get_mut((index / 64) as usize) {
        Some(w) => {
            let mask = 1 << (index % 64);
            let newly = *w & mask == 0;
            *w |= mask;
            newly
        }
        None => {
            debug_assert!(false, "page {index} past the page set");
            false
        }
    }
}

fn assign_bit(set: &mut [u64], index: u64, value: bool) {
    if let Some(w) = set.get_mut((index / 64) as usize) {
        let mask = 1 << (index % 64);
        if value {
            *w |= mask;
        } else {
            *w &= !mask;
        }
    }
}

/// Reads header slot `b` (false = A): `Err` is store I/O (fatal), `Ok(Err)` a slot that
/// is not valid (the other may be).
fn read_header<S: MetaStore + ?Sized>(
    store: &mut S,
    buf: &mut Page,
    b: bool,
) -> Result<Result<Header, MetaError>, StoreError> {
    store.read_page(u64::from(b), buf.as_mut_slice())?;
    Ok(decode_header(buf.as_slice()))
}

/// The newer of two header slots, and whether it is slot B; both invalid: A's error.
fn newest_header(
    a: Result<Header, MetaError>,
    b: Result<Header, MetaError>,
) -> Result<(Header, bool), MetaError> {
    match (a, b) {
        (Ok(a), Ok(b)) if b.generation > a.generation => Ok((b, true)),
        (Ok(a), _) => Ok((a, false)),
        (Err(_), Ok(b)) => Ok((b, true)),
        (Err(e), Err(_)) => Err(e),
    }
}

fn backup_prefix(id: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&id[..8]);
    u64::from_be_bytes(first)
}

impl Metadata {
    /// Store pages a store without named maps must have for this geometry.
    pub fn store_pages(geometry: &Geometry) -> u64 {
        Self::store_pages_with(geometry, 0)
    }

    /// Store pages a store with `named_maps` named maps must have for this geometry.
    pub fn store_pages_with(geometry: &Geometry, named_maps: usize) -> u64 {
        HEADER_STORE_PAGES + 2 * bitmap_pages(geometry) * (1 + named_maps as u64)
    }

    /// In-memory state with nothing dirty and slot A current everywhere.
    fn empty(
        identity: &Identity,
        binding: &Binding,
        geometry: Geometry,
        maps: MapTable,
    ) -> Result<Metadata, MetaError> {
        let bitmap_pages = bitmap_pages(&geometry);
        // At most 132,105 pages (REGION_COUNT_MAX), so the word count fits any usize.
        let words = bitmap_pages.div_ceil(64) as usize;
        let mut named = Vec::new();
        named
            .try_reserve_exact(maps.len())
            .map_err(|_| MetaError::AllocFailed {
                bytes: maps.len() * core::mem::size_of::<Named>(),
            })?;
        for entry in maps.entries() {
            named.push(Named {
                tag: map_tag(identity, &entry.name),
                current_b: try_zeroed_words(words)?,
                writing: try_zeroed_words(words)?,
                loaded: false,
                attached: None,
                reset_pending: false,
                damaged: try_zeroed_words(words)?,
                repair: false,
            });
        }
        Ok(Metadata {
            identity: *identity,
            binding: *binding,
            geometry,
            identity_tag: identity_tag(identity),
            generation: 0,
            bitmap_pages,
            dirty: try_zeroed_words(words)?,
            dirty_count: 0,
            current_b: try_zeroed_words(words)?,
            header_current_b: false,
            maps,
            named,
            header_dirty: false,
            buf: try_page()?,
        })
    }

    /// Formats a fresh store: nothing restored, generation 1. Durable when it returns.
    ///
    /// Order matters for a crash in the middle: both header slots are first overwritten
    /// with zeros and flushed, so the old header stops validating before any old slot
    /// is touched; then every slot of every bitmap page is written (A with generation 1,
    /// B with generation 0, both all zero) and flushed; then both header slots are
    /// written and flushed. A crash before the end leaves no valid header (`open` says
    /// [`MetaError::BadMagic`] or [`MetaError::HeaderChecksum`]; format again), never
    /// the old restore's marks under a new header.
    pub fn create<S: MetaStore + ?Sized>(
        store: &mut S,
        identity: &Identity,
    ) -> Result<Metadata, MetaError> {
        Self::create_bound(store, identity, &Binding::UNRECORDED)
    }

    /// [`Metadata::create`], recording the source and target the restore is bound to.
    pub fn create_bound<S: MetaStore + ?Sized>(
        store: &mut S,
        identity: &Identity,
        binding: &Binding,
    ) -> Result<Metadata, MetaError> {
        Self::create_with_maps(store, identity, binding, &[])
    }

    /// [`Metadata::create_bound`] with empty named maps called `names` beside the
    /// restore map (the store must have [`Metadata::store_pages_with`] pages). Their
    /// pages are written like the restore map's, so each is loaded and ready to
    /// [`Metadata::attach`].
    pub fn create_with_maps<S: MetaStore + ?Sized>(
        store: &mut S,
        identity: &Identity,
        binding: &Binding,
        names: &[MapName],
    ) -> Result<Metadata, MetaError> {
        let geometry = identity.geometry()?;
        let maps = MapTable::of(names)?;
        let needed = Self::store_pages_with(&geometry, maps.len());
        let pages = store.page_count();
        if pages < needed {
            return Err(MetaError::StoreTooSmall { pages, needed });
        }
        let mut meta = Metadata::empty(identity, binding, geometry, maps)?;
        meta.buf.fill(0);
        for b in [false, true] {
            store.write_page(u64::from(b), meta.buf.as_slice())?;
        }
        store.flush()?;
        for page in 0..meta.bitmap_pages {
            for (b, generation) in [(false, 1), (true, 0)] {
                encode_page_slot(&mut meta.buf, page, generation, meta.identity_tag, |_| 0);
                store.write_page(slot_page(page, b), meta.buf.as_slice())?;
                for m in 0..meta.named.len() {
                    let tag = meta.named[m].tag;
                    encode_page_slot(&mut meta.buf, page, generation, tag, |_| 0);
                    let at = named_slot_page(meta.bitmap_pages, m, page, b);
                    store.write_page(at, meta.buf.as_slice())?;
                }
            }
        }
        store.flush()?;
        for named in &mut meta.named {
            named.loaded = true;
        }
        for (b, generation) in [(false, 1), (true, 0)] {
            let header = Header {
                identity: *identity,
                binding: *binding,
                generation,
                maps,
            };
            encode_header(&header, &mut meta.buf);
            store.write_page(u64::from(b), meta.buf.as_slice())?;
        }
        store.flush()?;
        meta.generation = 1;
        Ok(meta)
    }

    /// Opens an existing store, checks it belongs to `expected`, and ORs every durable
    /// mark into `map` (which must have `expected`'s geometry).
    ///
    /// On error `map` may already hold some marks; each of them is genuinely durable,
    /// but the caller should not resume from a failed open.
    pub fn open<S: MetaStore + ?Sized>(
        store: &mut S,
        expected: &Identity,
        map: &RegionMap,
    ) -> Result<Metadata, MetaError> {
        Self::open_checked(store, expected, None, map)
    }

    /// [`Metadata::open`], also refusing metadata bound to another source
    /// ([`MetaError::SourceMismatch`]) or another target ([`MetaError::TargetMismatch`]).
    pub fn open_bound<S: MetaStore + ?Sized>(
        store: &mut S,
        expected: &Identity,
        binding: &Binding,
        map: &RegionMap,
    ) -> Result<Metadata, MetaError> {
        Self::open_checked(store, expected, Some(binding), map)
    }

    /// The newest valid header, read without checking whom it belongs to: a shell reads
    /// it first to learn which source the restore is pinned to. Nothing is written.
    pub fn read_header<S: MetaStore + ?Sized>(store: &mut S) -> Result<Header, MetaError> {
        let pages = store.page_count();
        if pages < HEADER_STORE_PAGES {
            return Err(MetaError::StoreTooSmall {
                pages,
                needed: HEADER_STORE_PAGES,
            });
        }
        let mut buf = try_page()?;
        let a = read_header(store, &mut buf, false)?;
        let b = read_header(store, &mut buf, true)?;
        Ok(newest_header(a, b)?.0)
    }

    fn open_checked<S: MetaStore + ?Sized>(
        store: &mut S,
        expected: &Identity,
        binding: Option<&Binding>,
        map: &RegionMap,
    ) -> Result<Metadata, MetaError> {
        let geometry = expected.geometry()?;
        if map.region_count() != geometry.region_count() {
            return Err(MetaError::MapMismatch {
                map_regions: map.region_count(),
                expected_regions: geometry.region_count(),
            });
        }
        let needed = Self::store_pages(&geometry);
        let pages = store.page_count();
        if pages < HEADER_STORE_PAGES {
            return Err(MetaError::StoreTooSmall { pages, needed });
        }
        // What we read must be durable before we choose which slot to overwrite next:
        // after a restart without power loss the device cache may still hold writes of
        // a commit whose flush failed.
        store.flush()?;
        let mut buf = try_page()?;
        let a = read_header(store, &mut buf, false)?;
        let b = read_header(store, &mut buf, true)?;
        let (header, header_current_b) = newest_header(a, b)?;
        let mut meta = Metadata::empty(
            expected,
            binding.unwrap_or(&Binding::UNRECORDED),
            geometry,
            header.maps,
        )?;
        let needed = Self::store_pages_with(&geometry, header.maps.len());
        let found = header.identity;
        if found.volume_size_bytes != expected.volume_size_bytes {
            return Err(MetaError::VolumeSizeMismatch {
                found: found.volume_size_bytes,
                expected: expected.volume_size_bytes,
            });
        }
        if found.region_size_bytes != expected.region_size_bytes {
            return Err(MetaError::RegionSizeMismatch {
                found: found.region_size_bytes,
                expected: expected.region_size_bytes,
            });
        }
        if let Some(binding) = binding {
            if header.binding.source != binding.source {
                return Err(MetaError::SourceMismatch);
            }
            if header.binding.target != binding.target {
                return Err(MetaError::TargetMismatch);
            }
        }
        // Shells that do not check the binding keep the one found.
        meta.binding = header.binding;
        if found.backup_id != expected.backup_id {
            return Err(MetaError::BackupMismatch {
                found: backup_prefix(&found.backup_id),
                expected: backup_prefix(&expected.backup_id),
            });
        }
        if pages < needed {
            return Err(MetaError::StoreTooSmall { pages, needed });
        }
        meta.header_current_b = header_current_b;
        let mut newest = header.generation;

        for page in 0..meta.bitmap_pages {
            let mut slots: [Result<u64, SlotError>; 2] = [Err(SlotError::Magic); 2];
            for (b, slot) in [false, true].into_iter().zip(slots.iter_mut()) {
                store.read_page(slot_page(page, b), meta.buf.as_mut_slice())?;
                *slot = meta.load_slot(page, map);
            }
            let [slot_a, slot_b] = slots;
            let current_b = match (slot_a, slot_b) {
                (Ok(a), Ok(b)) => b > a,
                (Ok(_), Err(_)) => false,
                (Err(_), Ok(_)) => true,
                (Err(slot_a), Err(slot_b)) => {
                    return Err(MetaError::PageCorrupt {
                        page_index: page,
                        slot_a,
                        slot_b,
                    })
                }
            };
            assign_bit(&mut meta.current_b, page, current_b);
            for generation in [slot_a, slot_b].into_iter().flatten() {
                newest = newest.max(generation);
            }
        }
        // Every generation decoded is below u64::MAX, so `newest + 1` cannot overflow.
        debug_assert!(newest < u64::MAX);
        meta.generation = newest;
        Ok(meta)
    }

    /// Decodes the slot in `self.buf` as bitmap page `page` and, when it is valid, ORs
    /// its bits into `map`. Returns the slot's generation.
    fn load_slot(&self, page: u64, map: &RegionMap) -> Result<u64, SlotError> {
        let slot = decode_page_slot(self.buf.as_slice(), page, self.identity_tag)?;
        let word_count = map.word_count();
        // `page < bitmap_pages <= 132,105`, so the product fits any usize.
        let first_word = page as usize * WORDS_PER_PAGE;
        // Negative space first: a valid slot has no bit past the last region. Checked
        // before any bit is ORed, so a bad slot contributes nothing.
        for (j, word) in slot.words().enumerate() {
            if word & !word_mask(self.geometry.region_count(), first_word + j, word_count) != 0 {
                return Err(SlotError::TailBits);
            }
        }
        for (j, word) in slot.words().enumerate() {
            if word != 0 {
                map.or_word(first_word + j, word);
            }
        }
        Ok(slot.generation)
    }

    /// Records that `regions` were marked (dirties the bitmap pages holding them).
    /// O(pages touched); regions past the volume end are ignored.
    pub fn note_marked(&mut self, regions: Range<u64>) {
        debug_assert!(regions.end <= self.geometry.region_count());
        let end = regions.end.min(self.geometry.region_count());
        if regions.start >= end {
            return;
        }
        for page in regions.start / REGIONS_PER_PAGE..=(end - 1) / REGIONS_PER_PAGE {
            if set_bit(&mut self.dirty, page) {
                self.dirty_count += 1;
            }
        }
        debug_assert!(self.dirty_count <= self.bitmap_pages);
    }

    /// Writes every dirty bitmap page, filling its bits from `durable_word(word_index)`
    /// (map word indices; only words of the volume are asked for, bits past the last
    /// region are dropped), and the header, each into its non-current slot, then
    /// flushes. Durable when it returns `Ok`; on error every page stays dirty and a
    /// retry writes the same slots. Nothing dirty: no I/O at all.
    ///
    /// The pages of attached named maps marked since their last commit go in the same
    /// commit (all of a map's pages after [`Metadata::reset_map`]). When a record or a
    /// reset is part of it, the pages are flushed before the header is written (see
    /// [`maps`]).
    pub fn commit<S: MetaStore + ?Sized>(
        &mut self,
        store: &mut S,
        durable_word: impl Fn(usize) -> u64,
    ) -> Result<CommitStats, MetaError> {
        let named_dirty = self
            .named
            .iter()
            .any(|n| n.reset_pending || n.attached.as_ref().is_some_and(|m| m.any_dirty()));
        if self.dirty_count == 0 && !named_dirty && !self.header_dirty {
            return Ok(CommitStats {
                generation: self.generation,
                pages_written: 0,
                store_writes: 0,
            });
        }
        // `open` and `create` leave `generation` below u64::MAX (decoders reject it).
        let generation = self.generation + 1;
        let resetting = self.named.iter().any(|n| n.reset_pending);
        if resetting {
            // A reset is durable first, alone: every older slot of the map then holds
            // nothing, so whatever the pages written after it hold is the new epoch's.
            // Written the other way round, a crash could leave an emptied page newer
            // than the header that still has the old epoch, and a torn write of the
            // page's other slot would lose what that epoch committed.
            self.write_header(store, generation)?;
            store.flush()?;
            self.finish_header(generation);
        }
        for m in 0..self.named.len() {
            self.take_named_dirty(m);
        }
        match self.write_pages(store, generation, &durable_word, resetting) {
            Ok((pages_written, wrote_header)) => {
                self.finish_pages();
                if wrote_header {
                    self.finish_header(generation);
                }
                self.generation = generation;
                Ok(CommitStats {
                    generation,
                    pages_written,
                    store_writes: pages_written + 1,
                })
            }
            Err(e) => {
                // Nothing flips: the named pages taken for this commit are dirty again.
                for m in 0..self.named.len() {
                    self.untake_named_dirty(m);
                }
                Err(e)
            }
        }
    }

    /// Moves named map `m`'s dirty pages (and, after a reset, its damaged ones) into
    /// its `writing` set.
    fn take_named_dirty(&mut self, m: usize) {
        let named = &mut self.named[m];
        for (i, w) in named.writing.iter_mut().enumerate() {
            let dirty = named.attached.as_ref().map_or(0, |map| map.take_dirty(i));
            let repair = if named.repair { named.damaged[i] } else { 0 };
            *w = dirty | repair;
        }
    }

    fn untake_named_dirty(&mut self, m: usize) {
        let named = &mut self.named[m];
        if let Some(map) = &named.attached {
            for (i, w) in named.writing.iter().enumerate() {
                map.redirty(i, *w);
            }
        }
        named.writing.fill(0);
    }

    /// Writes the dirty pages of every map at `generation` and, unless this commit's
    /// reset already wrote it (`header_written`), the header; the bitmap pages written
    /// and whether a header was. Flushes between pages and header when a record
    /// changes, and at the end.
    fn write_pages<S: MetaStore + ?Sized>(
        &mut self,
        store: &mut S,
        generation: u64,
        durable_word: &impl Fn(usize) -> u64,
        header_written: bool,
    ) -> Result<(u64, bool), MetaError> {
        let region_count = self.geometry.region_count();
        let word_count = region_count.div_ceil(64) as usize;
        let identity_tag = self.identity_tag;
        let mut pages_written = 0u64;
        for (w, &dirty_word) in self.dirty.iter().enumerate() {
            let mut bits = dirty_word;
            // Bounded: at most 64 iterations per dirty word.
            while bits != 0 {
                let page = w as u64 * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                debug_assert!(page < self.bitmap_pages);
                let first_word = page as usize * WORDS_PER_PAGE;
                encode_page_slot(&mut self.buf, page, generation, identity_tag, |j| {
                    let index = first_word + j;
                    match word_mask(region_count, index, word_count) {
                        0 => 0,
                        // Only what the engine says is durable is ever written (rule 2).
                        mask => durable_word(index) & mask,
                    }
                });
                // The mutant overwrites the current slot in place: a torn write then
                // destroys the only copy of the last commit.
                let in_place = crate::mutants::active(crate::mutants::Mutant::LoseMarkOnTornCommit);
                let target_b = bit(&self.current_b, page) ^ !in_place;
                store.write_page(slot_page(page, target_b), self.buf.as_slice())?;
                pages_written += 1;
            }
        }
        debug_assert_eq!(pages_written, self.dirty_count);
        for m in 0..self.named.len() {
            pages_written += self.write_named(store, m, generation)?;
        }
        let write_header = self.header_dirty || !header_written;
        if self.header_dirty {
            // Phase one: the pages a record speaks for are durable before it.
            store.flush()?;
        }
        if write_header {
            self.write_header(store, generation)?;
        }
        // A reset with nothing marked since and nothing to repair wrote nothing more.
        if write_header || pages_written > 0 {
            store.flush()?;
        }
        Ok((pages_written, write_header))
    }

    /// Writes the header of a commit at `generation` into its non-current slot: the
    /// maps' records as they are now, resets pending moved to `generation`.
    fn write_header<S: MetaStore + ?Sized>(
        &mut self,
        store: &mut S,
        generation: u64,
    ) -> Result<(), MetaError> {
        let mut maps = self.maps;
        for (entry, named) in maps.entries_mut().iter_mut().zip(&self.named) {
            if named.reset_pending {
                entry.reset_generation = generation;
            }
        }
        let header = Header {
            identity: self.identity,
            binding: self.binding,
            generation,
            maps,
        };
        encode_header(&header, &mut self.buf);
        store.write_page(u64::from(!self.header_current_b), self.buf.as_slice())?;
        Ok(())
    }

    /// The header written at `generation` is durable.
    fn finish_header(&mut self, generation: u64) {
        for (entry, named) in self.maps.entries_mut().iter_mut().zip(&mut self.named) {
            if named.reset_pending {
                entry.reset_generation = generation;
                named.reset_pending = false;
                // Every older slot now holds nothing: its damaged pages are written
                // next, empty (or with what was marked since), which repairs them.
                named.repair = true;
            }
        }
        self.header_current_b = !self.header_current_b;
        self.header_dirty = false;
        self.generation = generation;
    }

    /// Writes the pages of named map `m` in its `writing` set; how many.
    fn write_named<S: MetaStore + ?Sized>(
        &mut self,
        store: &mut S,
        m: usize,
        generation: u64,
    ) -> Result<u64, MetaError> {
        let region_count = self.geometry.region_count();
        let word_count = region_count.div_ceil(64) as usize;
        let bitmap_pages = self.bitmap_pages;
        let mut written = 0u64;
        let named = &self.named[m];
        for (w, &writing) in named.writing.iter().enumerate() {
            let mut bits = writing;
            // Bounded: at most 64 iterations per word.
            while bits != 0 {
                let page = w as u64 * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                debug_assert!(page < bitmap_pages);
                let first_word = page as usize * WORDS_PER_PAGE;
                let source = named.attached.as_deref();
                encode_page_slot(&mut self.buf, page, generation, named.tag, |j| {
                    let index = first_word + j;
                    match (word_mask(region_count, index, word_count), source) {
                        (0, _) | (_, None) => 0,
                        (mask, Some(map)) => map.word(index) & mask,
                    }
                });
                let target_b = !bit(&named.current_b, page);
                let at = named_slot_page(bitmap_pages, m, page, target_b);
                store.write_page(at, self.buf.as_slice())?;
                written += 1;
            }
        }
        Ok(written)
    }

    /// The pages of a commit are durable: the slots written become current.
    fn finish_pages(&mut self) {
        let in_place = crate::mutants::active(crate::mutants::Mutant::LoseMarkOnTornCommit);
        for (current, dirty) in self.current_b.iter_mut().zip(self.dirty.iter_mut()) {
            if !in_place {
                *current ^= *dirty;
            }
            *dirty = 0;
        }
        for named in &mut self.named {
            let slots = named.current_b.iter_mut().zip(named.damaged.iter_mut());
            for ((current, damaged), writing) in slots.zip(named.writing.iter_mut()) {
                *current ^= *writing;
                *damaged &= !*writing;
                *writing = 0;
            }
            named.repair = false;
        }
        self.dirty_count = 0;
    }

    /// The named maps as the last durable header (or the next commit) has them.
    pub fn maps(&self) -> &MapTable {
        &self.maps
    }

    /// Reads every page of named map `m` (after `open`, which flushed the store) and ORs
    /// the bits of its valid slots that are not older than its reset into `into`. A page
    /// with no valid slot makes the map not intact (its marks are lost); the store is
    /// not changed. Needed before [`Metadata::attach`] on an opened store: it learns
    /// which slot of each page is current.
    pub fn load_map<S: MetaStore + ?Sized>(
        &mut self,
        store: &mut S,
        m: usize,
        into: &NamedMap,
    ) -> Result<MapLoad, MetaError> {
        let entry = *self
            .maps
            .entries()
            .get(m)
            .ok_or(MetaError::MapTable("no such named map"))?;
        if into.geometry().region_count() != self.geometry.region_count() {
            return Err(MetaError::MapMismatch {
                map_regions: into.geometry().region_count(),
                expected_regions: self.geometry.region_count(),
            });
        }
        let region_count = self.geometry.region_count();
        let word_count = region_count.div_ceil(64) as usize;
        let tag = self.named[m].tag;
        let mut load = MapLoad {
            intact: true,
            stale_pages: 0,
        };
        for page in 0..self.bitmap_pages {
            let mut slots: [Option<u64>; 2] = [None; 2];
            for (b, slot) in [false, true].into_iter().zip(slots.iter_mut()) {
                let at = named_slot_page(self.bitmap_pages, m, page, b);
                store.read_page(at, self.buf.as_mut_slice())?;
                let Ok(decoded) = decode_page_slot(self.buf.as_slice(), page, tag) else {
                    continue;
                };
                let first_word = page as usize * WORDS_PER_PAGE;
                let in_range = decoded.words().enumerate().all(|(j, word)| {
                    word & !word_mask(region_count, first_word + j, word_count) == 0
                });
                if !in_range {
                    continue;
                }
                *slot = Some(decoded.generation);
                // A slot from before the reset holds nothing of the map.
                if decoded.generation >= entry.reset_generation {
                    for (j, word) in decoded.words().enumerate() {
                        if word != 0 {
                            into.load_word(first_word + j, word);
                        }
                    }
                }
            }
            let current_b = match slots {
                [Some(a), Some(b)] => b > a,
                [Some(_), None] => false,
                [None, Some(_)] => true,
                [None, None] => {
                    load.intact = false;
                    assign_bit(&mut self.named[m].damaged, page, true);
                    false
                }
            };
            let newest = slots.into_iter().flatten().max();
            if newest.is_some_and(|g| g < entry.reset_generation) {
                load.stale_pages += 1;
            }
            // A commit that failed may have left a slot newer than any the restore
            // map or header shows: later commits must be newer still, or a reset's
            // generation could equal that slot's and let its bits count again.
            if let Some(g) = newest {
                self.generation = self.generation.max(g);
            }
            assign_bit(&mut self.named[m].current_b, page, current_b);
        }
        self.named[m].loaded = true;
        Ok(load)
    }

    /// From now on, commits write named map `m`'s pages from `map` as it gets marked.
    /// The map must have been loaded ([`Metadata::load_map`]) or created here.
    pub fn attach(&mut self, m: usize, map: Arc<NamedMap>) -> Result<(), MetaError> {
        let named = self
            .named
            .get_mut(m)
            .ok_or(MetaError::MapTable("no such named map"))?;
        if !named.loaded {
            return Err(MetaError::MapTable(
                "a named map must be loaded before it is attached",
            ));
        }
        if map.geometry().region_count() != self.geometry.region_count() {
            return Err(MetaError::MapMismatch {
                map_regions: map.geometry().region_count(),
                expected_regions: self.geometry.region_count(),
            });
        }
        named.attached = Some(map);
        Ok(())
    }

    /// Sets named map `m`'s record; durable with the next commit, after the pages that
    /// commit writes.
    pub fn set_record(
        &mut self,
        m: usize,
        record: [u8; MAP_RECORD_BYTES],
    ) -> Result<(), MetaError> {
        let entry = self
            .maps
            .entries_mut()
            .get_mut(m)
            .ok_or(MetaError::MapTable("no such named map"))?;
        if entry.record != record {
            entry.record = record;
            self.header_dirty = true;
        }
        Ok(())
    }

    /// Empties named map `m` with the next commit: the map's reset generation becomes
    /// that commit's, in a header made durable first (with the record, which then
    /// speaks for the emptied map), then every page of it is written from the attached
    /// map (clear it first), or empty when none is attached.
    pub fn reset_map(&mut self, m: usize) -> Result<(), MetaError> {
        let named = self
            .named
            .get_mut(m)
            .ok_or(MetaError::MapTable("no such named map"))?;
        if !named.loaded {
            return Err(MetaError::MapTable(
                "a named map must be loaded before it is reset",
            ));
        }
        named.reset_pending = true;
        self.header_dirty = true;
        Ok(())
    }

    /// The last generation known durable.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bitmap pages waiting for a commit.
    pub fn dirty_page_count(&self) -> u64 {
        self.dirty_count
    }

    /// Bitmap pages of this geometry.
    pub fn bitmap_page_count(&self) -> u64 {
        self.bitmap_pages
    }

    /// The restore this metadata belongs to.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The source and target the header records.
    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    /// The geometry of the volume.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }
}
