//! The bytes of a journal segment: its header and its records. Integers little-endian.
//!
//! Segment header, at offset 0:
//!
//! ```text
//! offset  size  field
//!      0     8  magic "RHYDJSEG"
//!      8     2  format version = 2 (1: records checked with BLAKE3, refused)
//!     10     2  reserved, zero
//!     12     4  reserved, zero
//!     16     8  base version: the version of the volume the journal starts from
//!     24     8  first sequence: the first record's sequence (>= 1)
//!     32     8  volume size in bytes (the base version's size)
//!     40    32  base index checksum (bytes 40..72 of the base version's index)
//!     72    16  header checksum: the first 16 bytes of BLAKE3(bytes 0..72)
//!     88     8  reserved, zero
//!     96        records
//! ```
//!
//! Record, at an 8-aligned offset, one after another:
//!
//! ```text
//! offset  size  field
//!      0     4  magic "RJRC"
//!      4     2  kind: 1 write, 2 zero, 3 flush, 4 mark, 5 gap begin, 6 gap end
//!      6     2  flags: bit 0 RESYNC (write only: read back from the volume)
//!      8     8  sequence: the previous record's plus one (the segment's first: the
//!               header's first sequence)
//!     16     8  offset on the volume (write, zero: multiple of 512; else 0)
//!     24     8  length on the volume (write: 512..=1 MiB, zero: > 0, multiples of
//!               512, within the volume; else 0)
//!     32     8  time, nanoseconds since the Unix epoch, when the record was made
//!     40     8  batch: sequence of the first record of the append that wrote this one
//!     48     4  payload length (write: the length; mark: the label, 1..=64 bytes
//!               of [A-Za-z0-9._-]; else 0)
//!     52     4  checksum: CRC32C of bytes 0..52 followed by the payload
//!     56     n  payload, then zero bytes to the next multiple of 8
//! ```
//!
//! Why each field: the magic lets a scan tell a record from garbage; the sequence makes
//! any gap or reordering an error; the checksum covers the header and the payload, so
//! a torn or damaged record is never data; `batch` tells a torn append (records of the
//! last append only) from damage (a bad record followed by a record of a later append,
//! which the writer starts only after the earlier one was synced).
//!
//! Why CRC32C for records (and BLAKE3 for the header): every byte written to the
//! volume passes through it, and the instruction computes it at memory speed, where a
//! cryptographic hash would cost the writer a large share of a core. It is what storage
//! journals use to find torn and damaged records. What a point *is* (its identity for
//! pinning) is a BLAKE3 chain over every record's header and CRC (`super::Journal`).

use crate::name::MAX_VERSION;

/// The segment magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RHYDJSEG";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 2;
/// Bytes of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 96;
/// The record magic.
pub const RECORD_MAGIC: [u8; 4] = *b"RJRC";
/// Bytes of a record before its payload.
pub const RECORD_HEADER_BYTES: usize = 56;
/// Largest payload: a write record carries at most 1 MiB.
pub const PAYLOAD_MAX_BYTES: usize = 1 << 20;
/// Longest mark label.
pub const LABEL_MAX_BYTES: usize = 64;
/// Bytes of the header checksum kept.
pub const CHECKSUM_BYTES: usize = 16;
const HEADER_CHECKSUM_AT: usize = 72;
/// Where a record's checksum (CRC32C, 4 bytes) sits in its header.
pub const RECORD_CHECKSUM_AT: usize = 52;

const _: () = assert!(HEADER_CHECKSUM_AT + CHECKSUM_BYTES + 8 == SEGMENT_HEADER_BYTES);
const _: () = assert!(RECORD_CHECKSUM_AT + 4 == RECORD_HEADER_BYTES);
const _: () = assert!(SEGMENT_HEADER_BYTES % 8 == 0 && RECORD_HEADER_BYTES % 8 == 0);
const _: () = assert!(PAYLOAD_MAX_BYTES % 512 == 0);

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Data written to the volume.
    Write,
    /// Zeros written to the volume (write-zeroes, trim).
    Zero,
    /// A completed flush: a recovery point.
    Flush,
    /// A named mark: a recovery point with a label.
    Mark,
    /// Capture fell behind: no point until the gap ends.
    GapBegin,
    /// Every region written in the gap is journaled again.
    GapEnd,
}

impl Kind {
    /// The on-disk value.
    pub const fn code(self) -> u16 {
        match self {
            Kind::Write => 1,
            Kind::Zero => 2,
            Kind::Flush => 3,
            Kind::Mark => 4,
            Kind::GapBegin => 5,
            Kind::GapEnd => 6,
        }
    }

    /// The kind of an on-disk value.
    pub const fn from_code(code: u16) -> Option<Kind> {
        Some(match code {
            1 => Kind::Write,
            2 => Kind::Zero,
            3 => Kind::Flush,
            4 => Kind::Mark,
            5 => Kind::GapBegin,
            6 => Kind::GapEnd,
            _ => return None,
        })
    }

    /// A recovery point.
    pub const fn is_point(self) -> bool {
        matches!(self, Kind::Flush | Kind::Mark)
    }

    /// Changes the volume.
    pub const fn is_data(self) -> bool {
        matches!(self, Kind::Write | Kind::Zero)
    }
}

/// Flag: a write read back from the volume to close a gap.
pub const FLAG_RESYNC: u16 = 1;

/// A segment's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The base version.
    pub base_version: u32,
    /// The first record's sequence.
    pub first_seq: u64,
    /// The volume's size.
    pub volume_size_bytes: u64,
    /// The base version's index checksum.
    pub base_index_checksum: [u8; 32],
}

/// A record, its payload borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Its sequence.
    pub seq: u64,
    /// What it is.
    pub kind: Kind,
    /// [`FLAG_RESYNC`] or 0.
    pub flags: u16,
    /// Volume offset (data kinds).
    pub offset: u64,
    /// Volume length (data kinds).
    pub len: u64,
    /// When it was made.
    pub time_unix_ns: u64,
    /// First sequence of the append that wrote it.
    pub batch_seq: u64,
    /// Data of a write, label of a mark.
    pub payload: &'a [u8],
}

/// Why bytes are not a valid header or record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The bytes end before the header or record does.
    #[error("ends {missing} bytes early")]
    Truncated {
        /// Bytes missing.
        missing: usize,
    },
    /// No magic where one must be.
    #[error("no magic")]
    Magic,
    /// A segment of another format version.
    #[error("segment format version {0} is not the supported version 2")]
    Version(u16),
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// A field that does not fit (the text names it).
    #[error("field {0} is invalid")]
    Field(&'static str),
}

/// A record's checksum: CRC32C over its header before the checksum, then its payload.
pub fn record_checksum(header: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header), payload)
}

fn checksum(parts: &[&[u8]]) -> [u8; CHECKSUM_BYTES] {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p);
    }
    let mut out = [0u8; CHECKSUM_BYTES];
    out.copy_from_slice(&h.finalize().as_bytes()[..CHECKSUM_BYTES]);
    out
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Zero bytes after a payload of `len`, to the next multiple of 8.
pub const fn padding(len: usize) -> usize {
    (8 - len % 8) % 8
}

/// Bytes a record with a payload of `len` takes in a segment.
pub const fn record_bytes(len: usize) -> usize {
    RECORD_HEADER_BYTES + len + padding(len)
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&u64::from(self.base_version).to_le_bytes());
        b[24..32].copy_from_slice(&self.first_seq.to_le_bytes());
        b[32..40].copy_from_slice(&self.volume_size_bytes.to_le_bytes());
        b[40..72].copy_from_slice(&self.base_index_checksum);
        let sum = checksum(&[&b[..HEADER_CHECKSUM_AT]]);
        b[HEADER_CHECKSUM_AT..HEADER_CHECKSUM_AT + CHECKSUM_BYTES].copy_from_slice(&sum);
        b
    }

    /// Decodes and checks the header at the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, FormatError> {
        let b = bytes
            .get(..SEGMENT_HEADER_BYTES)
            .ok_or_else(|| FormatError::Truncated {
                missing: SEGMENT_HEADER_BYTES.saturating_sub(bytes.len()),
            })?;
        if b[0..8] != SEGMENT_MAGIC {
            return Err(FormatError::Magic);
        }
        let version = u16_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(FormatError::Version(version));
        }
        if checksum(&[&b[..HEADER_CHECKSUM_AT]])[..]
            != b[HEADER_CHECKSUM_AT..HEADER_CHECKSUM_AT + CHECKSUM_BYTES]
        {
            return Err(FormatError::Checksum);
        }
        if u16_at(b, 10) != 0 || u32_at(b, 12) != 0 || u64_at(b, 88) != 0 {
            return Err(FormatError::Field("reserved"));
        }
        let base_version = u32::try_from(u64_at(b, 16))
            .ok()
            .filter(|v| (1..=MAX_VERSION).contains(v))
            .ok_or(FormatError::Field("base version"))?;
        let first_seq = u64_at(b, 24);
        if first_seq == 0 {
            return Err(FormatError::Field("first sequence"));
        }
        let mut base_index_checksum = [0u8; 32];
        base_index_checksum.copy_from_slice(&b[40..72]);
        Ok(SegmentHeader {
            base_version,
            first_seq,
            volume_size_bytes: u64_at(b, 32),
            base_index_checksum,
        })
    }
}

impl<'a> Record<'a> {
    /// Bytes the record takes, padding included.
    pub fn encoded_len(&self) -> usize {
        record_bytes(self.payload.len())
    }

    /// Appends the record's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        self.encode_header_into(out);
        out.extend_from_slice(self.payload);
        out.extend_from_slice(&[0u8; 8][..padding(self.payload.len())]);
        debug_assert_eq!(out.len() - start, self.encoded_len());
    }

    /// Appends only the record's header (its checksum covers the payload too): a writer
    /// can then write the payload from where it already is, without copying it.
    pub fn encode_header_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&RECORD_MAGIC);
        out.extend_from_slice(&self.kind.code().to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        for v in [
            self.seq,
            self.offset,
            self.len,
            self.time_unix_ns,
            self.batch_seq,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        let sum = record_checksum(&out[start..start + RECORD_CHECKSUM_AT], self.payload);
        out.extend_from_slice(&sum.to_le_bytes());
        debug_assert_eq!(out.len() - start, RECORD_HEADER_BYTES);
    }

    /// The checks every record must pass besides its checksum: fields that fit its kind
    /// and a volume of `volume_size_bytes`.
    pub fn check(&self, volume_size_bytes: u64) -> Result<(), FormatError> {
        let field = FormatError::Field;
        if self.seq == 0 {
            return Err(field("sequence"));
        }
        if self.batch_seq == 0 || self.batch_seq > self.seq {
            return Err(field("batch"));
        }
        if self.flags & !FLAG_RESYNC != 0 || (self.flags != 0 && self.kind != Kind::Write) {
            return Err(field("flags"));
        }
        let in_volume = self.offset % 512 == 0
            && self.len % 512 == 0
            && self.len > 0
            && self
                .offset
                .checked_add(self.len)
                .is_some_and(|end| end <= volume_size_bytes.div_ceil(512).saturating_mul(512));
        match self.kind {
            Kind::Write => {
                if !in_volume || self.len > PAYLOAD_MAX_BYTES as u64 {
                    return Err(field("range"));
                }
                if self.payload.len() as u64 != self.len {
                    return Err(field("payload length"));
                }
            }
            Kind::Zero => {
                if !in_volume {
                    return Err(field("range"));
                }
                if !self.payload.is_empty() {
                    return Err(field("payload length"));
                }
            }
            Kind::Mark => {
                if self.offset != 0 || self.len != 0 {
                    return Err(field("range"));
                }
                if !is_label(self.payload) {
                    return Err(field("label"));
                }
            }
            Kind::Flush | Kind::GapBegin | Kind::GapEnd => {
                if self.offset != 0 || self.len != 0 {
                    return Err(field("range"));
                }
                if !self.payload.is_empty() {
                    return Err(field("payload length"));
                }
            }
        }
        Ok(())
    }

    /// Decodes and checks the record at the start of `bytes`; returns it and the bytes
    /// it takes. Allocates nothing; the payload borrows from `bytes`.
    pub fn decode(
        bytes: &'a [u8],
        volume_size_bytes: u64,
    ) -> Result<(Record<'a>, usize), FormatError> {
        let b = bytes
            .get(..RECORD_HEADER_BYTES)
            .ok_or_else(|| FormatError::Truncated {
                missing: RECORD_HEADER_BYTES.saturating_sub(bytes.len()),
            })?;
        if b[0..4] != RECORD_MAGIC {
            return Err(FormatError::Magic);
        }
        let payload_len = u32_at(b, 48) as usize;
        if payload_len > PAYLOAD_MAX_BYTES {
            return Err(FormatError::Field("payload length"));
        }
        let total = record_bytes(payload_len);
        let whole = bytes.get(..total).ok_or_else(|| FormatError::Truncated {
            missing: total.saturating_sub(bytes.len()),
        })?;
        let payload = &whole[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload_len];
        if record_checksum(&b[..RECORD_CHECKSUM_AT], payload) != u32_at(b, RECORD_CHECKSUM_AT) {
            return Err(FormatError::Checksum);
        }
        if whole[RECORD_HEADER_BYTES + payload_len..]
            .iter()
            .any(|&x| x != 0)
        {
            return Err(FormatError::Field("reserved"));
        }
        let kind = Kind::from_code(u16_at(b, 4)).ok_or(FormatError::Field("kind"))?;
        let record = Record {
            seq: u64_at(b, 8),
            kind,
            flags: u16_at(b, 6),
            offset: u64_at(b, 16),
            len: u64_at(b, 24),
            time_unix_ns: u64_at(b, 32),
            batch_seq: u64_at(b, 40),
            payload,
        };
        record.check(volume_size_bytes)?;
        Ok((record, total))
    }

    /// The label of a mark.
    pub fn label(&self) -> Option<&'a str> {
        match self.kind {
            Kind::Mark => std::str::from_utf8(self.payload).ok(),
            _ => None,
        }
    }
}

/// A mark label: 1..=64 bytes of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn is_label(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len() <= LABEL_MAX_BYTES
        && bytes[0] != b'.'
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn header() -> SegmentHeader {
        SegmentHeader {
            base_version: 3,
            first_seq: 17,
            volume_size_bytes: 1 << 20,
            base_index_checksum: [9; 32],
        }
    }

    fn write(seq: u64, payload: &[u8]) -> Record<'_> {
        Record {
            seq,
            kind: Kind::Write,
            flags: 0,
            offset: 4096,
            len: payload.len() as u64,
            time_unix_ns: 5,
            batch_seq: seq,
            payload,
        }
    }

    #[test]
    fn headers_round_trip_and_refuse_damage() {
        let h = header();
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        assert_eq!(
            SegmentHeader::decode(&b[..40]),
            Err(FormatError::Truncated { missing: 56 })
        );
        for (at, want) in [
            (0, FormatError::Magic),
            (8, FormatError::Version(FORMAT_VERSION ^ 1)),
            (20, FormatError::Checksum),
        ] {
            let mut bad = b;
            bad[at] ^= 1;
            assert_eq!(SegmentHeader::decode(&bad), Err(want), "{at}");
        }
    }

    #[test]
    fn records_round_trip_and_refuse_damage() {
        let data = vec![7u8; 4096];
        let r = write(20, &data);
        let mut out = Vec::new();
        r.encode_into(&mut out);
        assert_eq!(out.len(), RECORD_HEADER_BYTES + 4096);
        assert_eq!(Record::decode(&out, 1 << 20), Ok((r, out.len())));
        assert!(matches!(
            Record::decode(&out[..100], 1 << 20),
            Err(FormatError::Truncated { .. })
        ));
        let mut bad = out.clone();
        bad[RECORD_HEADER_BYTES + 9] ^= 1;
        assert_eq!(Record::decode(&bad, 1 << 20), Err(FormatError::Checksum));
        // Past the volume's end.
        assert_eq!(Record::decode(&out, 4096), Err(FormatError::Field("range")));
        let mark = Record {
            kind: Kind::Mark,
            offset: 0,
            len: 0,
            payload: b"pre-upgrade",
            ..r
        };
        let mut out = Vec::new();
        mark.encode_into(&mut out);
        assert_eq!(out.len() % 8, 0);
        let (back, _) = Record::decode(&out, 1 << 20).unwrap();
        assert_eq!(back.label(), Some("pre-upgrade"));
        let bad_label = Record {
            payload: b".x",
            ..mark
        };
        assert_eq!(bad_label.check(1 << 20), Err(FormatError::Field("label")));
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = SegmentHeader::decode(&bytes);
            if let Ok((r, n)) = Record::decode(&bytes, u64::MAX) {
                let mut again = Vec::new();
                r.encode_into(&mut again);
                prop_assert_eq!(&again[..], &bytes[..n]);
            }
        }
    }
}
