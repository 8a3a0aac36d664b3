//! The on-disk layout of the metadata store, byte by byte, and its pure codecs.
//!
//! Every integer is little-endian. The store is an array of 4096-byte pages:
//!
//! ```text
//! store page   0              header, slot A
//! store page   1              header, slot B
//! store page   2 + 2*p        restore map, bitmap page p, slot A     p in 0..bitmap_pages
//! store page   3 + 2*p        restore map, bitmap page p, slot B
//! store page   2 + 2*P*(1+m) + 2*p (+1)
//!                             named map m, bitmap page p, slot A (B)  m in 0..map_count
//! bitmap_pages = P = ceil(region_count / 32512)
//! store_pages = 2 + 2 * P * (1 + map_count)
//! ```
//!
//! Header slot (one page; the restore's fields fit in the first 512-byte sector, the
//! table of named maps in the second; a torn header write fails the checksum, and the
//! other slot still holds the previous commit):
//!
//! ```text
//! offset size  field
//!      0    8  magic              "RHYDMETA"
//!      8    4  format_version     u32 = FORMAT_VERSION (3); 1 and 2 are refused as
//!                                 outdated
//!     12    4  region_size_bytes  u32, power of two 4 KiB..=1 MiB
//!     16    8  volume_size_bytes  u64, multiple of 512 (the source rounded up to a sector)
//!     24   32  backup_id          opaque bytes naming the backup version restored
//!     56    8  generation         u64, the commit that wrote this slot (< u64::MAX)
//!     64    4  checksum           CRC32C of bytes 0..64 followed by bytes 68..4096
//!     68    1  source_kind        0 unrecorded, 1 backup version, 2 other NBD server
//!     69    1  target_kind        0 unrecorded, 1 Unix file, 2 Unix block device,
//!                                 3 Windows volume (binding.rs says what target_id holds)
//!     70    2  source_name_len    u16, at most 256
//!     72    8  source_size_bytes  u64, the source's exact size
//!     80    8  source_version     u64, the backup version's number (0: none)
//!     88   32  source_digest      index checksum, or checksum of sampled blocks
//!    120   48  target_id          kind-specific identity of the target, zero-padded
//!    168  256  source_name        UTF-8: `NAME@N`, or `nbd://HOST:PORT/EXPORT`; zero after
//!                                 source_name_len
//!    424    4  map_count          u32, named maps after the restore map, at most 4
//!    428   84  reserved           written as zero, covered by the checksum
//!    512  512  map table          4 entries of 128 bytes; entry m < map_count:
//!                +0   8  name           ASCII letters, digits, `-` or `_`, zero-padded;
//!                                       not empty, not repeated in the table
//!                +8   8  reset_generation u64, the commit that last emptied the map
//!                                       (at most this header's generation): its slots
//!                                       of an older generation hold nothing of it
//!               +16 112  record         bytes the map's owner keeps with it (the changed
//!                                       map's: `crate::changed`), opaque here
//!                                       entries m >= map_count: all zero
//!   1024 3072  reserved           written as zero, covered by the checksum
//! ```
//!
//! Bitmap page slot (one page):
//!
//! ```text
//! offset size  field
//!      0    8  magic              "RHYDBITS"
//!      8    8  page_index         u64, the bitmap page p this slot belongs to
//!     16    8  generation         u64, the commit that wrote this slot (< u64::MAX)
//!     24    4  identity_tag       u32, CRC32C of volume_size (8 LE) ++ region_size
//!                                 (4 LE) ++ backup_id (32): binds the slot to one restore
//!     28    4  checksum           CRC32C of bytes 0..28 followed by bytes 32..4096
//!     32 4064  bits               508 u64 words; word j is region-map word 508*p + j
//!                                 (bit b of it = region 64*(508*p + j) + b restored).
//!                                 Bits past the last region are zero.
//! ```
//!
//! A named map's slots have the same layout; their identity tag is [`map_tag`], the
//! restore's tag continued over the map's name, so a slot of one map never passes as
//! another's.
//!
//! A page write torn at any sector boundary mixes sectors of two versions; the checksum
//! over the whole page rejects the mix (the slot header and the first bits share sector
//! 0, the rest of the bits are spread over sectors 1..8).

use super::binding::{Binding, SourcePin, TargetPin, SOURCE_NAME_MAX_BYTES, TARGET_ID_BYTES};
use super::maps::{MapEntry, MapName, MapTable, MAP_NAME_BYTES, MAP_RECORD_BYTES, NAMED_MAPS_MAX};
use super::{Header, Identity, MetaError, SlotError};

/// Size of one metadata page, the unit of every store read and write.
pub const META_PAGE_SIZE_BYTES: usize = 4096;
/// The unit a device writes atomically; a torn page write lands a prefix of these.
pub const META_SECTOR_SIZE_BYTES: usize = 512;
/// The on-disk format this code reads and writes.
pub const FORMAT_VERSION: u32 = 3;
/// Formats refused as outdated: 1 recorded neither source nor target, 2 had no named
/// maps (nor their table in the header).
pub const OUTDATED_FORMAT_VERSIONS: [u32; 2] = [1, 2];
/// Bytes of a header slot that carry the restore's fields, the map count included (the
/// rest of the first sector is reserved zero).
pub const HEADER_LEN_BYTES: usize = 428;
/// Where the table of named maps starts in a header slot (the second sector).
pub const MAP_TABLE_OFFSET: usize = 512;
/// Bytes of one entry of the table.
pub const MAP_ENTRY_BYTES: usize = 128;
/// First bytes of a header slot.
pub const HEADER_MAGIC: [u8; 8] = *b"RHYDMETA";
/// First bytes of a bitmap page slot.
pub const PAGE_MAGIC: [u8; 8] = *b"RHYDBITS";
/// Bytes at the start of a bitmap page slot before the bits.
pub const SLOT_HEADER_BYTES: usize = 32;
/// Region-map words held by one bitmap page.
pub const WORDS_PER_PAGE: usize = (META_PAGE_SIZE_BYTES - SLOT_HEADER_BYTES) / 8;
/// Regions held by one bitmap page.
pub const REGIONS_PER_PAGE: u64 = WORDS_PER_PAGE as u64 * 64;
/// Store pages before the first bitmap page: the two header slots.
pub const HEADER_STORE_PAGES: u64 = 2;

/// A page, as the codecs see it: the size is in the type, so field offsets (all
/// constants, asserted below to lie inside the page) cannot index out of bounds.
pub type Page = [u8; META_PAGE_SIZE_BYTES];

const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_REGION_SIZE: usize = 12;
const H_VOLUME_SIZE: usize = 16;
const H_BACKUP_ID: usize = 24;
const H_GENERATION: usize = 56;
const H_CHECKSUM: usize = 64;
const H_SOURCE_KIND: usize = 68;
const H_TARGET_KIND: usize = 69;
const H_SOURCE_NAME_LEN: usize = 70;
const H_SOURCE_SIZE: usize = 72;
const H_SOURCE_VERSION: usize = 80;
const H_SOURCE_DIGEST: usize = 88;
const H_TARGET_ID: usize = 120;
const H_SOURCE_NAME: usize = 168;
const H_MAP_COUNT: usize = 424;
const H_RESERVED: usize = 428;
const M_NAME: usize = 0;
const M_RESET_GENERATION: usize = 8;
const M_RECORD: usize = 16;

const P_MAGIC: usize = 0;
const P_INDEX: usize = 8;
const P_GENERATION: usize = 16;
const P_TAG: usize = 24;
const P_CHECKSUM: usize = 28;
const P_BITS: usize = 32;

// The layout above, checked by the compiler.
const _: () = assert!(META_PAGE_SIZE_BYTES % META_SECTOR_SIZE_BYTES == 0);
const _: () = assert!(META_PAGE_SIZE_BYTES / META_SECTOR_SIZE_BYTES == 8);
const _: () = assert!(H_MAGIC + 8 == H_VERSION);
const _: () = assert!(H_VERSION + 4 == H_REGION_SIZE);
const _: () = assert!(H_REGION_SIZE + 4 == H_VOLUME_SIZE);
const _: () = assert!(H_VOLUME_SIZE + 8 == H_BACKUP_ID);
const _: () = assert!(H_BACKUP_ID + 32 == H_GENERATION);
const _: () = assert!(H_GENERATION + 8 == H_CHECKSUM);
const _: () = assert!(H_CHECKSUM + 4 == H_SOURCE_KIND);
const _: () = assert!(H_SOURCE_KIND + 1 == H_TARGET_KIND);
const _: () = assert!(H_TARGET_KIND + 1 == H_SOURCE_NAME_LEN);
const _: () = assert!(H_SOURCE_NAME_LEN + 2 == H_SOURCE_SIZE);
const _: () = assert!(H_SOURCE_SIZE + 8 == H_SOURCE_VERSION);
const _: () = assert!(H_SOURCE_VERSION + 8 == H_SOURCE_DIGEST);
const _: () = assert!(H_SOURCE_DIGEST + 32 == H_TARGET_ID);
const _: () = assert!(H_TARGET_ID + TARGET_ID_BYTES == H_SOURCE_NAME);
const _: () = assert!(H_SOURCE_NAME + SOURCE_NAME_MAX_BYTES == H_MAP_COUNT);
const _: () = assert!(H_MAP_COUNT + 4 == HEADER_LEN_BYTES);
const _: () = assert!(H_RESERVED == HEADER_LEN_BYTES);
// Every 8-byte field is 8-byte aligned (a reader may map the page as words).
const _: () = assert!(H_SOURCE_SIZE % 8 == 0 && H_SOURCE_VERSION % 8 == 0);
// The restore's fields live in the first sector, the map table in the second.
const _: () = assert!(HEADER_LEN_BYTES <= META_SECTOR_SIZE_BYTES);
const _: () = assert!(MAP_TABLE_OFFSET == META_SECTOR_SIZE_BYTES);
const _: () = assert!(M_NAME + MAP_NAME_BYTES == M_RESET_GENERATION);
const _: () = assert!(M_RESET_GENERATION + 8 == M_RECORD);
const _: () = assert!(M_RECORD + MAP_RECORD_BYTES == MAP_ENTRY_BYTES);
const _: () =
    assert!(MAP_TABLE_OFFSET + NAMED_MAPS_MAX * MAP_ENTRY_BYTES == 2 * META_SECTOR_SIZE_BYTES);
const _: () = assert!(MAP_TABLE_OFFSET % 8 == 0 && MAP_ENTRY_BYTES % 8 == 0);
const _: () = assert!(P_MAGIC + 8 == P_INDEX);
const _: () = assert!(P_INDEX + 8 == P_GENERATION);
const _: () = assert!(P_GENERATION + 8 == P_TAG);
const _: () = assert!(P_TAG + 4 == P_CHECKSUM);
const _: () = assert!(P_CHECKSUM + 4 == P_BITS);
const _: () = assert!(P_BITS == SLOT_HEADER_BYTES);
// The bits fill the rest of the page exactly, in whole words.
const _: () = assert!(SLOT_HEADER_BYTES + WORDS_PER_PAGE * 8 == META_PAGE_SIZE_BYTES);
const _: () = assert!(WORDS_PER_PAGE == 508 && REGIONS_PER_PAGE == 32_512);
// At the region-count bound the store and the in-memory page sets stay small:
// 132,105 bitmap pages, 2 bits each in memory (about 33 KiB).
const _: () = assert!(crate::geometry::REGION_COUNT_MAX.div_ceil(REGIONS_PER_PAGE) == 132_105);

/// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven, eight bytes a
/// step ("slicing by 8").
///
/// Written here rather than taken from a crate: it is short, needs no feature flags to
/// be `no_std`, uses no vector or floating-point state (a kernel driver would have to
/// save it), and its 8 KiB of tables are built at compile time. One byte a step cost
/// about 10 µs a page; loading a large volume's maps checks thousands of pages, and
/// the simulator checks every page of every commit.
pub mod crc32c {
    const POLY: u32 = 0x82F6_3B78;

    /// `TABLES[0]` is the classic byte table; `TABLES[k][b]` is the CRC of byte `b`
    /// followed by `k` zero bytes, so eight table lookups advance the CRC by 8 bytes.
    const fn make_tables() -> [[u32; 256]; 8] {
        let mut tables = [[0u32; 256]; 8];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut k = 0;
            while k < 8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
                k += 1;
            }
            tables[0][i] = crc;
            i += 1;
        }
        let mut t = 1;
        while t < 8 {
            let mut i = 0;
            while i < 256 {
                let prev = tables[t - 1][i];
                tables[t][i] = (prev >> 8) ^ tables[0][(prev & 0xFF) as usize];
                i += 1;
            }
            t += 1;
        }
        tables
    }

    static TABLES: [[u32; 256]; 8] = make_tables();

    /// Continues a CRC over `bytes`: `update(update(0, a), b) == checksum(a ++ b)`.
    pub fn update(crc: u32, bytes: &[u8]) -> u32 {
        let t = &TABLES;
        let mut c = !crc;
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            // Every index is masked to 0..=255, inside its 256-entry table.
            let lo = c ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            let hi = u32::from_le_bytes([w[4], w[5], w[6], w[7]]);
            c = t[7][(lo & 0xFF) as usize]
                ^ t[6][((lo >> 8) & 0xFF) as usize]
                ^ t[5][((lo >> 16) & 0xFF) as usize]
                ^ t[4][(lo >> 24) as usize]
                ^ t[3][(hi & 0xFF) as usize]
                ^ t[2][((hi >> 8) & 0xFF) as usize]
                ^ t[1][((hi >> 16) & 0xFF) as usize]
                ^ t[0][(hi >> 24) as usize];
        }
        for &b in words.remainder() {
            c = t[0][((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
        }
        !c
    }

    /// CRC32C of `bytes`.
    pub fn checksum(bytes: &[u8]) -> u32 {
        update(0, bytes)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use proptest::prelude::*;

        /// One byte a step, straight from the polynomial: the reference.
        fn bitwise(crc: u32, bytes: &[u8]) -> u32 {
            let mut c = !crc;
            for &b in bytes {
                c ^= u32::from(b);
                for _ in 0..8 {
                    c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
                }
            }
            !c
        }

        #[test]
        fn known_answers() {
            // RFC 3720 (iSCSI), B.4, and the usual check value of "123456789".
            assert_eq!(checksum(b"123456789"), 0xE306_9283);
            assert_eq!(checksum(&[0u8; 32]), 0x8A91_36AA);
            assert_eq!(checksum(&[0xFFu8; 32]), 0x62A8_AB43);
            let ascending: [u8; 32] = core::array::from_fn(|i| i as u8);
            assert_eq!(checksum(&ascending), 0x46DD_794E);
        }

        proptest! {
            #[test]
            fn eight_at_a_time_agrees_with_one_bit_at_a_time(
                crc in any::<u32>(),
                bytes in proptest::collection::vec(any::<u8>(), 0..100),
                cut in 0usize..100,
            ) {
                prop_assert_eq!(update(crc, &bytes), bitwise(crc, &bytes));
                let cut = cut.min(bytes.len());
                prop_assert_eq!(
                    update(update(crc, &bytes[..cut]), &bytes[cut..]),
                    update(crc, &bytes)
                );
            }
        }
    }
}

fn get<const N: usize>(page: &Page, at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    // `at + N <= META_PAGE_SIZE_BYTES` for every call (constant offsets, asserted above).
    out.copy_from_slice(&page[at..at + N]);
    out
}

fn put(page: &mut Page, at: usize, bytes: &[u8]) {
    page[at..at + bytes.len()].copy_from_slice(bytes);
}

fn u32_at(page: &Page, at: usize) -> u32 {
    u32::from_le_bytes(get(page, at))
}

fn u64_at(page: &Page, at: usize) -> u64 {
    u64::from_le_bytes(get(page, at))
}

/// Checksum of a page with the 4 checksum bytes at `hole` left out.
fn page_checksum(page: &Page, hole: usize) -> u32 {
    let crc = crc32c::update(0, &page[..hole]);
    crc32c::update(crc, &page[hole + 4..])
}

/// The tag that binds a bitmap slot to one restore (see the layout).
pub fn identity_tag(identity: &Identity) -> u32 {
    let crc = crc32c::update(0, &identity.volume_size_bytes.to_le_bytes());
    let crc = crc32c::update(crc, &identity.region_size_bytes.to_le_bytes());
    crc32c::update(crc, &identity.backup_id)
}

/// The tag that binds a bitmap slot to one named map of one restore: the restore's tag
/// continued over the map's name.
pub fn map_tag(identity: &Identity, name: &MapName) -> u32 {
    crc32c::update(identity_tag(identity), name.as_bytes())
}

/// Writes a header slot into `page` (all of it: reserved bytes become zero).
pub fn encode_header(header: &Header, page: &mut Page) {
    debug_assert!(header.generation < u64::MAX, "generation exhausted");
    page.fill(0);
    put(page, H_MAGIC, &HEADER_MAGIC);
    put(page, H_VERSION, &FORMAT_VERSION.to_le_bytes());
    put(
        page,
        H_REGION_SIZE,
        &header.identity.region_size_bytes.to_le_bytes(),
    );
    put(
        page,
        H_VOLUME_SIZE,
        &header.identity.volume_size_bytes.to_le_bytes(),
    );
    put(page, H_BACKUP_ID, &header.identity.backup_id);
    put(page, H_GENERATION, &header.generation.to_le_bytes());
    let source = &header.binding.source;
    let (name_len, name) = source.raw_name();
    put(page, H_SOURCE_KIND, &[source.kind as u8]);
    put(page, H_TARGET_KIND, &[header.binding.target.kind as u8]);
    put(page, H_SOURCE_NAME_LEN, &name_len.to_le_bytes());
    put(page, H_SOURCE_SIZE, &source.size_bytes.to_le_bytes());
    put(page, H_SOURCE_VERSION, &source.version.to_le_bytes());
    put(page, H_SOURCE_DIGEST, &source.digest);
    put(page, H_TARGET_ID, &header.binding.target.id);
    put(page, H_SOURCE_NAME, name);
    put(page, H_MAP_COUNT, &(header.maps.len() as u32).to_le_bytes());
    for (m, entry) in header.maps.entries().iter().enumerate() {
        let at = MAP_TABLE_OFFSET + m * MAP_ENTRY_BYTES;
        put(page, at + M_NAME, entry.name.as_bytes());
        put(
            page,
            at + M_RESET_GENERATION,
            &entry.reset_generation.to_le_bytes(),
        );
        put(page, at + M_RECORD, &entry.record);
    }
    let checksum = page_checksum(page, H_CHECKSUM);
    put(page, H_CHECKSUM, &checksum.to_le_bytes());
    // Pair assertion: what we write, we read back the same.
    debug_assert_eq!(decode_header(page.as_slice()).ok(), Some(*header));
}

/// Decodes a header slot. Any byte string is accepted as input; every failure is typed.
///
/// Checks, in order: length, magic, format version (1 and 2 are outdated; a later
/// version may move the checksum), checksum, generation below `u64::MAX`, the binding's
/// kinds and name, the map table (count, names, reset generations, reserved bytes
/// zero). It does not compare the identity:
/// that is [`super::Metadata::open`]'s job, which knows what to expect.
pub fn decode_header(bytes: &[u8]) -> Result<Header, MetaError> {
    let page: &Page = bytes
        .try_into()
        .map_err(|_| MetaError::BadLength { len: bytes.len() })?;
    let magic = get::<8>(page, H_MAGIC);
    if magic != HEADER_MAGIC {
        return Err(MetaError::BadMagic {
            found: u64::from_be_bytes(magic),
        });
    }
    let version = u32_at(page, H_VERSION);
    if OUTDATED_FORMAT_VERSIONS.contains(&version) {
        return Err(MetaError::OutdatedFormat { found: version });
    }
    if version != FORMAT_VERSION {
        return Err(MetaError::UnsupportedVersion { found: version });
    }
    let stored = u32_at(page, H_CHECKSUM);
    let computed = page_checksum(page, H_CHECKSUM);
    if stored != computed {
        return Err(MetaError::HeaderChecksum { stored, computed });
    }
    let generation = u64_at(page, H_GENERATION);
    if generation == u64::MAX {
        // Never written (commit would overflow it); treat as damage, not as data.
        return Err(MetaError::HeaderChecksum { stored, computed });
    }
    let source = SourcePin::decode(
        get::<1>(page, H_SOURCE_KIND)[0],
        u16::from_le_bytes(get(page, H_SOURCE_NAME_LEN)),
        u64_at(page, H_SOURCE_SIZE),
        u64_at(page, H_SOURCE_VERSION),
        get(page, H_SOURCE_DIGEST),
        &get::<SOURCE_NAME_MAX_BYTES>(page, H_SOURCE_NAME),
    )
    .map_err(MetaError::Binding)?;
    let target = TargetPin::decode(
        get::<1>(page, H_TARGET_KIND)[0],
        get::<TARGET_ID_BYTES>(page, H_TARGET_ID),
    )
    .map_err(MetaError::Binding)?;
    let maps = decode_map_table(page, generation)?;
    Ok(Header {
        maps,
        identity: Identity {
            volume_size_bytes: u64_at(page, H_VOLUME_SIZE),
            region_size_bytes: u32_at(page, H_REGION_SIZE),
            backup_id: get(page, H_BACKUP_ID),
        },
        binding: Binding { source, target },
        generation,
    })
}

/// The table of named maps of a header page whose checksum passed.
fn decode_map_table(page: &Page, generation: u64) -> Result<MapTable, MetaError> {
    let count = u32_at(page, H_MAP_COUNT);
    if count as usize > NAMED_MAPS_MAX {
        return Err(MetaError::MapTable("more than 4 named maps"));
    }
    if page[H_RESERVED..MAP_TABLE_OFFSET].iter().any(|&b| b != 0) {
        return Err(MetaError::MapTable("reserved header bytes are not zero"));
    }
    let mut table = MapTable::EMPTY;
    for m in 0..NAMED_MAPS_MAX {
        let at = MAP_TABLE_OFFSET + m * MAP_ENTRY_BYTES;
        let entry = &page[at..at + MAP_ENTRY_BYTES];
        if m >= count as usize {
            if entry.iter().any(|&b| b != 0) {
                return Err(MetaError::MapTable("an unused map entry is not zero"));
            }
            continue;
        }
        let name = MapName::from_bytes(get(page, at + M_NAME)).ok_or(MetaError::MapTable(
            "a map name is empty or not letters, digits, - or _",
        ))?;
        let reset_generation = u64_at(page, at + M_RESET_GENERATION);
        if reset_generation > generation {
            return Err(MetaError::MapTable(
                "a map was reset after the header was written",
            ));
        }
        table
            .push(MapEntry {
                name,
                reset_generation,
                record: get(page, at + M_RECORD),
            })
            .map_err(|_| MetaError::MapTable("a map name appears twice"))?;
    }
    Ok(table)
}

/// A bitmap page slot that passed every check of [`decode_page_slot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageSlot<'a> {
    /// The commit that wrote this slot.
    pub generation: u64,
    /// The bits: `WORDS_PER_PAGE * 8` bytes, little-endian words.
    pub bits: &'a [u8],
}

impl PageSlot<'_> {
    /// The slot's words, in order: word `j` is region-map word `WORDS_PER_PAGE * p + j`.
    pub fn words(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits.chunks_exact(8).map(|w| {
            let mut le = [0u8; 8];
            le.copy_from_slice(w);
            u64::from_le_bytes(le)
        })
    }
}

/// Writes a bitmap page slot into `page`; `word(j)` gives word `j` of the page.
pub fn encode_page_slot(
    page: &mut Page,
    page_index: u64,
    generation: u64,
    identity_tag: u32,
    mut word: impl FnMut(usize) -> u64,
) {
    debug_assert!(generation < u64::MAX, "generation exhausted");
    put(page, P_MAGIC, &PAGE_MAGIC);
    put(page, P_INDEX, &page_index.to_le_bytes());
    put(page, P_GENERATION, &generation.to_le_bytes());
    put(page, P_TAG, &identity_tag.to_le_bytes());
    for (j, out) in page[P_BITS..].chunks_exact_mut(8).enumerate() {
        out.copy_from_slice(&word(j).to_le_bytes());
    }
    let checksum = page_checksum(page, P_CHECKSUM);
    put(page, P_CHECKSUM, &checksum.to_le_bytes());
    debug_assert!(decode_page_slot(page.as_slice(), page_index, identity_tag).is_ok());
}

/// Decodes a bitmap page slot that should belong to bitmap page `expected_index` of the
/// restore whose [`identity_tag`] is `expected_tag`. Any byte string is accepted.
///
/// Checks, in order: length, magic, checksum, page index, identity tag, generation
/// below `u64::MAX`. Tail bits past the last region are checked by the caller, which
/// knows the region count.
pub fn decode_page_slot(
    bytes: &[u8],
    expected_index: u64,
    expected_tag: u32,
) -> Result<PageSlot<'_>, SlotError> {
    let page: &Page = bytes
        .try_into()
        .map_err(|_| SlotError::Length { len: bytes.len() })?;
    if get::<8>(page, P_MAGIC) != PAGE_MAGIC {
        return Err(SlotError::Magic);
    }
    let stored = u32_at(page, P_CHECKSUM);
    let computed = page_checksum(page, P_CHECKSUM);
    if stored != computed {
        return Err(SlotError::Checksum { stored, computed });
    }
    let found = u64_at(page, P_INDEX);
    if found != expected_index {
        return Err(SlotError::PageIndex { found });
    }
    let tag = u32_at(page, P_TAG);
    if tag != expected_tag {
        return Err(SlotError::Identity {
            found: tag,
            expected: expected_tag,
        });
    }
    let generation = u64_at(page, P_GENERATION);
    if generation == u64::MAX {
        return Err(SlotError::Generation);
    }
    Ok(PageSlot {
        generation,
        bits: &page[P_BITS..],
    })
}
