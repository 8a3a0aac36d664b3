//! Chunk names and the stored form of a chunk.
//!
//! A chunk is named by the BLAKE3 hash of its bytes and stored at
//! `chunks/XX/HASH`, where `HASH` is the 64-digit lower-case hex hash and `XX` its first
//! two digits (256 fan-out directories keep local directories small).
//!
//! Stored object, byte by byte:
//!
//! ```text
//! offset  size  field
//!      0     1  encoding: 0x00 = raw, 0x01 = zstd
//!      1     n  raw: the chunk's bytes (n = chunk length)
//!               zstd: one zstd frame that decompresses to the chunk's bytes
//! ```
//!
//! The chunk's length is not stored: the index knows it (the chunk size, or less for a
//! volume's last chunk), so decompression allocates exactly that and no more. Every read
//! checks the length and the hash; a mismatch is corruption and never becomes data.
//! All-zero chunks are never stored (the index marks them), and a chunk is kept
//! compressed only when that saves space.

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use object_store::path::Path;
use object_store::PutPayload;

/// Encoding byte: the payload is the chunk itself.
pub const ENCODING_RAW: u8 = 0;
/// Encoding byte: the payload is a zstd frame.
pub const ENCODING_ZSTD: u8 = 1;

/// The sizes in bytes a stored chunk of `len` bytes can have: its encoding byte and at
/// least one byte of zstd frame, up to the encoding byte and the raw bytes.
pub fn stored_len_bounds(len: usize) -> std::ops::RangeInclusive<u64> {
    2..=len as u64 + 1
}
/// zstd level: the fastest regular level; backups are bound by CPU, not by space.
const ZSTD_LEVEL: i32 = 1;
/// Bytes sampled to decide whether a chunk is worth compressing at all.
const PROBE_SLICE_BYTES: usize = 8 << 10;
/// How many slices, spread across the chunk, make up the sample.
const PROBE_SLICES: usize = 8;
/// Compress only when the sample shrinks to at most this fraction (in 1/64ths) of itself.
const PROBE_KEEP_64THS: usize = 60;

/// A chunk's name: the BLAKE3 hash of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkHash(pub [u8; 32]);

impl ChunkHash {
    /// The hash of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// The object path of this chunk: `chunks/XX/HASH`.
    pub fn path(&self) -> Path {
        let hex = self.to_string();
        Path::from_iter(["chunks", &hex[..2], &hex])
    }

    /// Parse 64 lower-case hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let digits = text.as_bytes();
        if digits.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let hi = hex_value(pair[0])?;
            let lo = hex_value(pair[1])?;
            *byte = hi << 4 | lo;
        }
        Some(Self(out))
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkHash({self})")
    }
}

/// Whether every byte is zero (such chunks are marked in the index, never stored).
pub fn is_zero(data: &[u8]) -> bool {
    // Comparing 16-byte blocks lets the compiler vectorise; the tail is checked bytewise.
    let (blocks, tail) = data.split_at(data.len() - data.len() % 16);
    blocks
        .chunks_exact(16)
        .all(|b| u128::from_ne_bytes(b.try_into().unwrap_or([1; 16])) == 0)
        && tail.iter().all(|&b| b == 0)
}

thread_local! {
    // One compression context per worker thread: creating one costs more than
    // compressing a small chunk.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

fn compress(data: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        slot.as_mut()?.compress(data).ok()
    })
}

/// Whether a sample spread across `data` compresses well enough to try the whole chunk.
/// Already-compressed or encrypted data (most of a typical disk image) fails fast here
/// instead of paying for a full compression that would be thrown away.
fn worth_compressing(data: &[u8]) -> bool {
    if data.len() <= PROBE_SLICE_BYTES * PROBE_SLICES {
        return true;
    }
    let stride = data.len() / PROBE_SLICES;
    let mut sample = Vec::with_capacity(PROBE_SLICE_BYTES * PROBE_SLICES);
    for i in 0..PROBE_SLICES {
        let start = i * stride;
        sample.extend_from_slice(&data[start..start + PROBE_SLICE_BYTES]);
    }
    compress(&sample).is_some_and(|c| c.len() * 64 <= sample.len() * PROBE_KEEP_64THS)
}

/// A chunk's stored form, kept in two parts so the (usually raw) data is not copied
/// just to put one byte in front of it.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// [`ENCODING_RAW`] or [`ENCODING_ZSTD`].
    pub encoding: u8,
    /// The bytes after the encoding byte.
    pub body: Bytes,
}

impl Encoded {
    /// Length of the stored object in bytes.
    pub fn stored_len(&self) -> u64 {
        1 + self.body.len() as u64
    }

    /// The stored object as one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.body.len());
        out.push(self.encoding);
        out.extend_from_slice(&self.body);
        out
    }

    /// The stored object as a put payload (two parts, no copy).
    pub fn into_payload(self) -> PutPayload {
        let header = match self.encoding {
            ENCODING_ZSTD => Bytes::from_static(&[ENCODING_ZSTD]),
            _ => Bytes::from_static(&[ENCODING_RAW]),
        };
        PutPayload::from_iter([header, self.body])
    }
}

/// The stored form of a (non-zero) chunk: zstd when it saves space, else raw.
pub fn encode(data: Bytes) -> Encoded {
    if worth_compressing(&data) {
        if let Some(packed) = compress(&data).filter(|c| c.len() < data.len()) {
            return Encoded {
                encoding: ENCODING_ZSTD,
                body: Bytes::from(packed),
            };
        }
    }
    Encoded {
        encoding: ENCODING_RAW,
        body: data,
    }
}

/// Why a stored chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The object is empty (no encoding byte).
    #[error("empty object")]
    Empty,
    /// The encoding byte is neither raw nor zstd.
    #[error("unknown encoding byte {0:#04x}")]
    UnknownEncoding(u8),
    /// The zstd frame is damaged or decompresses to more than expected.
    #[error("zstd frame is damaged: {0}")]
    Zstd(String),
    /// The decoded chunk has the wrong length.
    #[error("length {actual} bytes, expected {expected}")]
    Length {
        /// What the index says.
        expected: usize,
        /// What was found.
        actual: usize,
    },
    /// The decoded chunk's BLAKE3 hash is not its name.
    #[error("content hash is {0}")]
    Hash(ChunkHash),
}

/// Decode and verify a stored chunk named `hash`, expected to be `expected_len` bytes.
pub fn decode(hash: &ChunkHash, stored: &[u8], expected_len: usize) -> Result<Bytes, ChunkError> {
    decode_bytes(hash, Bytes::copy_from_slice(stored), expected_len)
}

/// [`decode`] without a copy: a raw chunk is returned as a view into `stored`.
pub fn decode_bytes(
    hash: &ChunkHash,
    stored: Bytes,
    expected_len: usize,
) -> Result<Bytes, ChunkError> {
    let encoding = *stored.first().ok_or(ChunkError::Empty)?;
    let data = match encoding {
        ENCODING_RAW => stored.slice(1..),
        // Capacity `expected_len` bounds the allocation whatever the frame claims.
        ENCODING_ZSTD => zstd::bulk::decompress(&stored[1..], expected_len)
            .map(Bytes::from)
            .map_err(|e| ChunkError::Zstd(e.to_string()))?,
        other => return Err(ChunkError::UnknownEncoding(other)),
    };
    if data.len() != expected_len {
        return Err(ChunkError::Length {
            expected: expected_len,
            actual: data.len(),
        });
    }
    let actual = ChunkHash::of(&data);
    if actual != *hash {
        return Err(ChunkError::Hash(actual));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn hash_paths_and_hex() {
        let h = ChunkHash::of(b"abc");
        let hex = h.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(ChunkHash::from_hex(&hex), Some(h));
        assert_eq!(h.path().to_string(), format!("chunks/{}/{hex}", &hex[..2]));
        assert_eq!(ChunkHash::from_hex(&hex.to_uppercase()), None);
        assert_eq!(ChunkHash::from_hex("ab"), None);
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 1000]));
        let mut v = vec![0u8; 1000];
        v[999] = 1;
        assert!(!is_zero(&v));
        v[999] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }

    #[test]
    fn compressible_chunks_are_compressed_and_round_trip() {
        let mut data = vec![7u8; 1 << 20];
        data[12345] = 1;
        let stored = encode(Bytes::from(data.clone())).to_vec();
        assert_eq!(stored[0], ENCODING_ZSTD);
        assert!(stored.len() < data.len() / 10);
        assert_eq!(
            &decode(&ChunkHash::of(&data), &stored, data.len()).unwrap()[..],
            &data[..]
        );
    }

    #[test]
    fn random_chunks_are_raw_and_round_trip() {
        let data = noise(1 << 20, 9);
        let stored = encode(Bytes::from(data.clone())).to_vec();
        assert_eq!(stored[0], ENCODING_RAW);
        assert_eq!(stored.len(), data.len() + 1);
        assert_eq!(
            &decode(&ChunkHash::of(&data), &stored, data.len()).unwrap()[..],
            &data[..]
        );
        let small = noise(100, 3);
        assert_eq!(
            &decode(
                &ChunkHash::of(&small),
                &encode(Bytes::from(small.clone())).to_vec(),
                100
            )
            .unwrap()[..],
            &small[..]
        );
    }

    #[test]
    fn damage_is_detected() {
        let data = noise(70000, 5);
        let hash = ChunkHash::of(&data);
        let mut stored = encode(Bytes::from(data.clone())).to_vec();
        stored[500] ^= 1;
        assert!(matches!(
            decode(&hash, &stored, data.len()),
            Err(ChunkError::Hash(_))
        ));
        assert_eq!(decode(&hash, &[], 1), Err(ChunkError::Empty));
        assert_eq!(
            decode(&hash, &[9, 1, 2], 2),
            Err(ChunkError::UnknownEncoding(9))
        );
        assert!(matches!(
            decode(&hash, &encode(Bytes::from(data.clone())).to_vec(), 10),
            Err(ChunkError::Length { .. })
        ));
        let packed = encode(Bytes::from(vec![5u8; 70000])).to_vec();
        assert!(matches!(
            decode(&hash, &packed, 1000),
            Err(ChunkError::Zstd(_))
        ));
        let mut torn = packed.clone();
        torn.truncate(packed.len() / 2);
        assert!(decode(&ChunkHash::of(&[5u8; 70000]), &torn, 70000).is_err());
    }
}
