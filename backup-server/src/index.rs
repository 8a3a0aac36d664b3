//! A volume version's index: which chunk holds each chunk-sized piece of the volume.
//!
//! Stored at `volumes/NAME/versions/NNNNNNNN.idx` (eight decimal digits), written only
//! after every chunk it names is stored, and published with create-if-not-exists, so a
//! reader sees a whole index or none. Byte by byte, integers little-endian:
//!
//! ```text
//! offset  size  field
//!      0     8  magic "RHYDRIDX"
//!      8     2  format version = 1
//!     10     1  chunk size as log2: 16 (64 KiB) ..= 23 (8 MiB)
//!     11     1  flags, must be 0
//!     12     4  parent version: the newest version when this backup began, 0 = none
//!     16     8  volume size in bytes, at most MAX_VOLUME_BYTES
//!     24     8  creation time, seconds since the Unix epoch (UTC)
//!     32     8  chunk count; must equal ceil(volume size / chunk size)
//!     40    32  checksum: BLAKE3 of bytes 0..40 followed by every entry
//!     72  32*N  entries, one per chunk in volume order: the chunk's BLAKE3 hash,
//!               or 32 zero bytes (ZERO marker) for an all-zero chunk, which is not stored
//! ```
//!
//! The file is exactly `72 + 32 * N` bytes. Decoding checks every field and the length
//! before allocating, so it allocates at most what the input's own length justifies.

use crate::chunk::ChunkHash;
use crate::size::ChunkSize;

/// The magic at offset 0.
pub const MAGIC: [u8; 8] = *b"RHYDRIDX";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Header length in bytes.
pub const HEADER_BYTES: usize = 72;
/// Bytes per entry.
pub const ENTRY_BYTES: usize = 32;
/// Offset of the checksum within the header.
const CHECKSUM_OFFSET: usize = 40;
/// Largest volume an index may describe (1 PiB); keeps every offset computation far
/// from overflow.
pub const MAX_VOLUME_BYTES: u64 = 1 << 50;
/// The ZERO marker.
const ZERO_ENTRY: [u8; ENTRY_BYTES] = [0; ENTRY_BYTES];

const _: () = assert!(CHECKSUM_OFFSET + 32 == HEADER_BYTES);
const _: () = assert!(ENTRY_BYTES == std::mem::size_of::<ChunkHash>());
// The smallest chunk size over the largest volume gives 2^34 entries; their count
// times 32 must still fit in u64 with room to add the header.
const _: () = assert!(
    (MAX_VOLUME_BYTES >> crate::size::MIN_CHUNK_SHIFT) < (u64::MAX / ENTRY_BYTES as u64 / 2)
);

/// One chunk-sized piece of a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChunkRef {
    /// All zeroes; nothing stored.
    Zero,
    /// The stored chunk with this hash.
    Data(ChunkHash),
}

/// A decoded index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    /// Size of the volume in bytes.
    pub volume_size_bytes: u64,
    /// Chunk size of this version.
    pub chunk_size: ChunkSize,
    /// The version that was newest when this one was made (0: none).
    pub parent_version: u32,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix_secs: u64,
    /// One entry per chunk, in volume order.
    pub chunks: Vec<ChunkRef>,
}

/// Why bytes are not a valid index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// Shorter than the header.
    #[error("truncated: {0} bytes, the header alone is 72")]
    Truncated(usize),
    /// The magic is wrong: not an index.
    #[error("bad magic")]
    BadMagic,
    /// Written by an unknown format version.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u16),
    /// The chunk size byte is outside 16..=23.
    #[error("invalid chunk size shift {0}")]
    BadChunkSize(u8),
    /// Reserved flags are set.
    #[error("unknown flags {0:#04x}")]
    BadFlags(u8),
    /// The volume size exceeds [`MAX_VOLUME_BYTES`].
    #[error("volume size {0} bytes is too large")]
    VolumeTooLarge(u64),
    /// The chunk count does not follow from the volume and chunk sizes.
    #[error("chunk count {found} does not match the volume size (expected {expected})")]
    ChunkCount {
        /// ceil(volume size / chunk size).
        expected: u64,
        /// The header's count.
        found: u64,
    },
    /// The file length does not match the chunk count.
    #[error("length {found} bytes, expected {expected}")]
    Length {
        /// 72 + 32 * count.
        expected: u64,
        /// The actual length.
        found: u64,
    },
    /// The checksum does not match: the index is damaged.
    #[error("checksum mismatch")]
    Checksum,
    /// An index must describe its chunks with the count the volume needs; an encoder
    /// was handed an inconsistent [`Index`].
    #[error("index has {found} entries, the volume needs {expected}")]
    Inconsistent {
        /// What the volume size needs.
        expected: u64,
        /// What the index holds.
        found: u64,
    },
}

/// The distinct stored chunks `chunks` names, in order (zero markers left out).
pub fn distinct_data_chunks(chunks: &[ChunkRef]) -> impl Iterator<Item = ChunkHash> + '_ {
    let mut seen = std::collections::HashSet::new();
    chunks.iter().filter_map(move |c| match c {
        ChunkRef::Data(h) if seen.insert(*h) => Some(*h),
        ChunkRef::Data(_) | ChunkRef::Zero => None,
    })
}

impl Index {
    /// Expected length of chunk `i` (the last chunk of the volume may be short).
    pub fn chunk_len(&self, i: u64) -> usize {
        self.chunk_size.chunk_len(self.volume_size_bytes, i)
    }

    /// Encode to the stored form.
    pub fn encode(&self) -> Result<Vec<u8>, IndexError> {
        if self.volume_size_bytes > MAX_VOLUME_BYTES {
            return Err(IndexError::VolumeTooLarge(self.volume_size_bytes));
        }
        let expected = self.chunk_size.chunk_count(self.volume_size_bytes);
        let found = self.chunks.len() as u64;
        if expected != found {
            return Err(IndexError::Inconsistent { expected, found });
        }
        let mut out = Vec::with_capacity(HEADER_BYTES + ENTRY_BYTES * self.chunks.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.push(self.chunk_size.shift());
        out.push(0);
        out.extend_from_slice(&self.parent_version.to_le_bytes());
        out.extend_from_slice(&self.volume_size_bytes.to_le_bytes());
        out.extend_from_slice(&self.created_unix_secs.to_le_bytes());
        out.extend_from_slice(&found.to_le_bytes());
        debug_assert_eq!(out.len(), CHECKSUM_OFFSET);
        out.extend_from_slice(&[0; 32]);
        for entry in &self.chunks {
            match entry {
                ChunkRef::Zero => out.extend_from_slice(&ZERO_ENTRY),
                ChunkRef::Data(hash) => {
                    // A real hash of 32 zero bytes would read back as ZERO; BLAKE3 makes
                    // that a 2^-256 event, so treat it as the bug it would be.
                    debug_assert_ne!(hash.0, ZERO_ENTRY);
                    out.extend_from_slice(&hash.0);
                }
            }
        }
        let sum = checksum(&out);
        out[CHECKSUM_OFFSET..HEADER_BYTES].copy_from_slice(&sum);
        Ok(out)
    }

    /// The checksum the stored form carries (bytes 40..72): BLAKE3 of the header's first
    /// 40 bytes and every entry. Names this version's contents exactly: `rehydrate
    /// serve` tells clients it, and a restore pins it.
    pub fn checksum(&self) -> Result<[u8; 32], IndexError> {
        let encoded = self.encode()?;
        let mut sum = [0u8; 32];
        sum.copy_from_slice(&encoded[CHECKSUM_OFFSET..HEADER_BYTES]);
        Ok(sum)
    }

    /// Decode and check the stored form.
    pub fn decode(bytes: &[u8]) -> Result<Self, IndexError> {
        let header: &[u8; HEADER_BYTES] = bytes
            .get(..HEADER_BYTES)
            .and_then(|h| h.try_into().ok())
            .ok_or(IndexError::Truncated(bytes.len()))?;
        let u16_at = |o: usize| u16::from_le_bytes([header[o], header[o + 1]]);
        let u32_at =
            |o: usize| u32::from_le_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[o..o + 8]);
            u64::from_le_bytes(b)
        };
        if header[..8] != MAGIC {
            return Err(IndexError::BadMagic);
        }
        let format = u16_at(8);
        if format != FORMAT_VERSION {
            return Err(IndexError::UnsupportedVersion(format));
        }
        let chunk_size =
            ChunkSize::from_shift(header[10]).ok_or(IndexError::BadChunkSize(header[10]))?;
        if header[11] != 0 {
            return Err(IndexError::BadFlags(header[11]));
        }
        let parent_version = u32_at(12);
        let volume_size_bytes = u64_at(16);
        if volume_size_bytes > MAX_VOLUME_BYTES {
            return Err(IndexError::VolumeTooLarge(volume_size_bytes));
        }
        let created_unix_secs = u64_at(24);
        let found = u64_at(32);
        let expected = chunk_size.chunk_count(volume_size_bytes);
        if found != expected {
            return Err(IndexError::ChunkCount { expected, found });
        }
        // No overflow: count <= 2^34 (checked above via the volume size bound).
        let expected_len = HEADER_BYTES as u64 + ENTRY_BYTES as u64 * expected;
        if bytes.len() as u64 != expected_len {
            return Err(IndexError::Length {
                expected: expected_len,
                found: bytes.len() as u64,
            });
        }
        if checksum(bytes) != header[CHECKSUM_OFFSET..HEADER_BYTES] {
            return Err(IndexError::Checksum);
        }
        // The length check above bounds this allocation by the input's length.
        let chunks = bytes[HEADER_BYTES..]
            .chunks_exact(ENTRY_BYTES)
            .map(|e| {
                let mut hash = [0u8; ENTRY_BYTES];
                hash.copy_from_slice(e);
                if hash == ZERO_ENTRY {
                    ChunkRef::Zero
                } else {
                    ChunkRef::Data(ChunkHash(hash))
                }
            })
            .collect();
        Ok(Self {
            volume_size_bytes,
            chunk_size,
            parent_version,
            created_unix_secs,
            chunks,
        })
    }
}

/// BLAKE3 over the header before the checksum, then the entries.
fn checksum(bytes: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&bytes[..CHECKSUM_OFFSET]);
    hasher.update(bytes.get(HEADER_BYTES..).unwrap_or_default());
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(size: u64) -> Index {
        let chunk_size = ChunkSize::from_shift(16).unwrap();
        let n = chunk_size.chunk_count(size);
        Index {
            volume_size_bytes: size,
            chunk_size,
            parent_version: 3,
            created_unix_secs: 1_700_000_000,
            chunks: (0..n)
                .map(|i| {
                    if i % 3 == 0 {
                        ChunkRef::Zero
                    } else {
                        ChunkRef::Data(ChunkHash::of(&i.to_le_bytes()))
                    }
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let index = sample(5 * 65536 + 17);
        let bytes = index.encode().unwrap();
        assert_eq!(bytes.len(), HEADER_BYTES + 6 * ENTRY_BYTES);
        assert_eq!(&bytes[..8], b"RHYDRIDX");
        assert_eq!(bytes[10], 16);
        assert_eq!(Index::decode(&bytes).unwrap(), index);
        assert_eq!(index.chunk_len(0), 65536);
        assert_eq!(index.chunk_len(5), 17);
        assert_eq!(index.chunk_len(6), 0);
    }

    #[test]
    fn every_damage_is_a_typed_error() {
        let bytes = sample(3 * 65536).encode().unwrap();
        assert_eq!(Index::decode(&bytes[..10]), Err(IndexError::Truncated(10)));
        assert!(matches!(
            Index::decode(&bytes[..bytes.len() - 1]),
            Err(IndexError::Length { .. })
        ));
        let mut b = bytes.clone();
        b[0] = b'X';
        assert_eq!(Index::decode(&b), Err(IndexError::BadMagic));
        let mut b = bytes.clone();
        b[8] = 2;
        assert_eq!(Index::decode(&b), Err(IndexError::UnsupportedVersion(2)));
        let mut b = bytes.clone();
        b[10] = 24;
        assert_eq!(Index::decode(&b), Err(IndexError::BadChunkSize(24)));
        let mut b = bytes.clone();
        b[11] = 1;
        assert_eq!(Index::decode(&b), Err(IndexError::BadFlags(1)));
        let mut b = bytes.clone();
        b[32] = 200;
        assert!(matches!(
            Index::decode(&b),
            Err(IndexError::ChunkCount { .. })
        ));
        let mut b = bytes.clone();
        b[23] = 0xff;
        assert!(matches!(
            Index::decode(&b),
            Err(IndexError::VolumeTooLarge(_))
        ));
        let mut b = bytes.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        assert_eq!(Index::decode(&b), Err(IndexError::Checksum));
        let mut bad = sample(65536);
        bad.chunks.push(ChunkRef::Zero);
        assert!(matches!(bad.encode(), Err(IndexError::Inconsistent { .. })));
    }

    fn arb_index() -> impl Strategy<Value = Index> {
        (16u8..=23, 0u64..(1 << 26), any::<u32>(), any::<u64>()).prop_flat_map(
            |(shift, size, parent, created)| {
                let chunk_size = ChunkSize::from_shift(shift).unwrap();
                let n = chunk_size.chunk_count(size) as usize;
                let entry = prop_oneof![
                    Just(ChunkRef::Zero),
                    any::<[u8; 32]>().prop_filter_map("zero", |h| {
                        (h != [0; 32]).then_some(ChunkRef::Data(ChunkHash(h)))
                    })
                ];
                proptest::collection::vec(entry, n).prop_map(move |chunks| Index {
                    volume_size_bytes: size,
                    chunk_size,
                    parent_version: parent,
                    created_unix_secs: created,
                    chunks,
                })
            },
        )
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(index in arb_index()) {
            let bytes = index.encode().unwrap();
            prop_assert_eq!(Index::decode(&bytes).unwrap(), index);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Index::decode(&bytes);
        }

        #[test]
        fn damaged_indexes_are_refused(index in arb_index(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = index.encode().unwrap();
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            // Any single flipped bit is caught: by a field check or by the checksum.
            prop_assert!(Index::decode(&bytes).is_err());
        }
    }
}
