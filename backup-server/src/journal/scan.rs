//! Scanning a segment's records: the valid prefix, and what ends it.
//!
//! A segment ends in one of three ways:
//! * **clean**: the last record ends where the bytes end;
//! * **torn**: the last segment's final append did not finish (the writer was killed or
//!   power was lost before its sync): from the first record that is incomplete or fails
//!   its checksum to the end, nothing is a record of a later append. Those bytes were
//!   never acknowledged; they are never applied, and the writer truncates them;
//! * **damaged**: a bad record in a sealed segment, or a bad record followed by a record
//!   of a *later* append (the writer starts an append only after the previous one was
//!   synced, so the bad record had been durable): the records before it stand, the
//!   journal ends there, and every point after it is refused with this reason.

use super::format::{
    record_bytes, Kind, Record, PAYLOAD_MAX_BYTES, RECORD_CHECKSUM_AT, RECORD_HEADER_BYTES,
    RECORD_MAGIC,
};
use crate::journal::format::FormatError;

/// One record found, with where its payload lies in the segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its sequence.
    pub seq: u64,
    /// What it is.
    pub kind: Kind,
    /// Flags.
    pub flags: u16,
    /// Volume offset.
    pub offset: u64,
    /// Volume length.
    pub len: u64,
    /// When it was made.
    pub time_unix_ns: u64,
    /// Byte offset of its payload in the segment file.
    pub payload_at: u64,
    /// The mark's label.
    pub label: Option<String>,
    /// The record's header as stored, checksum included (it names the record in the
    /// journal's chain digest).
    pub header: [u8; RECORD_HEADER_BYTES],
}

/// How the scanned bytes end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tail {
    /// At a record boundary.
    Clean,
    /// A torn final append starts here (byte offset in the segment).
    Torn {
        /// Where the valid records end.
        at: u64,
    },
    /// A record that had been durable is bad.
    Damaged {
        /// Its byte offset in the segment.
        at: u64,
        /// The sequence it should have had.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
}

/// What a scan found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scanned {
    /// The valid records, in order.
    pub entries: Vec<Entry>,
    /// Byte offset (in the segment) where the valid records end.
    pub end: u64,
    /// How the bytes end.
    pub tail: Tail,
}

/// Scans `bytes`, which start at byte `start` of a segment, for records beginning with
/// sequence `expected_seq`. `last` says whether this is the journal's last segment (only
/// there can an append be torn). Allocates per record found, never per byte.
pub fn scan(
    bytes: &[u8],
    start: u64,
    expected_seq: u64,
    volume_size_bytes: u64,
    last: bool,
) -> Scanned {
    let mut entries = Vec::new();
    let mut at = 0usize;
    let mut seq = expected_seq;
    // One step per record: each consumes at least RECORD_HEADER_BYTES.
    while at < bytes.len() {
        let problem = match Record::decode(&bytes[at..], volume_size_bytes) {
            Ok((r, n)) if r.seq == seq => {
                entries.push(entry(&r, &bytes[at..], start + at as u64));
                at += n;
                seq += 1;
                continue;
            }
            Ok((r, _)) => FormatError::Field(if r.seq < seq {
                "sequence (repeated)"
            } else {
                "sequence (skipped)"
            }),
            Err(e) => e,
        };
        let bad_at = start + at as u64;
        if crate::journal::mutant_torn_tail_applied() && last {
            if let Some((r, n)) = decode_ignoring_checksum(&bytes[at..], volume_size_bytes, seq) {
                entries.push(entry(&r, &bytes[at..], bad_at));
                at += n;
                seq += 1;
                continue;
            }
        }
        let later = later_append(&bytes[at..], seq, volume_size_bytes);
        let tail = if last && later.is_none() {
            Tail::Torn { at: bad_at }
        } else {
            let reason = match later {
                Some(off) => format!(
                    "{problem}, and a record of a later append follows at byte {}",
                    bad_at + off as u64
                ),
                None => problem.to_string(),
            };
            Tail::Damaged {
                at: bad_at,
                seq,
                reason,
            }
        };
        return Scanned {
            entries,
            end: bad_at,
            tail,
        };
    }
    Scanned {
        entries,
        end: start + at as u64,
        tail: Tail::Clean,
    }
}

/// The entry of record `r`, whose bytes start `raw`, at byte `at` of the segment.
fn entry(r: &Record<'_>, raw: &[u8], at: u64) -> Entry {
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header.copy_from_slice(&raw[..RECORD_HEADER_BYTES]);
    Entry {
        seq: r.seq,
        kind: r.kind,
        flags: r.flags,
        offset: r.offset,
        len: r.len,
        time_unix_ns: r.time_unix_ns,
        payload_at: at + RECORD_HEADER_BYTES as u64,
        label: r.label().map(str::to_owned),
        header,
    }
}

/// The offset (within `bytes`) of a valid record written by an append that started
/// after sequence `seq`, if any: proof that the record at the start of `bytes` had been
/// durable. Looks only where a record magic stands, at 8-aligned offsets.
fn later_append(bytes: &[u8], seq: u64, volume_size_bytes: u64) -> Option<usize> {
    let mut at = 8;
    // Bounded by the bytes: one step per 8-byte word.
    while at + RECORD_HEADER_BYTES <= bytes.len() {
        if bytes[at..at + 4] == RECORD_MAGIC {
            if let Ok((r, _)) = Record::decode(&bytes[at..], volume_size_bytes) {
                if r.batch_seq > seq {
                    return Some(at);
                }
            }
        }
        at += 8;
    }
    None
}

/// The mutant's decoder: a record whose fields check out is taken whatever its
/// checksum says (a torn write of its payload goes unnoticed).
fn decode_ignoring_checksum(
    bytes: &[u8],
    volume_size_bytes: u64,
    seq: u64,
) -> Option<(Record<'_>, usize)> {
    let header = bytes.get(..RECORD_HEADER_BYTES)?;
    let payload_len = u32::from_le_bytes(header[48..52].try_into().ok()?) as usize;
    let total = record_bytes(payload_len.min(PAYLOAD_MAX_BYTES));
    let whole = bytes.get(..total)?;
    // Re-seal a copy with a checksum that matches, so the ordinary decoder checks the
    // rest; then hand out the record over the original bytes.
    let mut copy = whole.to_vec();
    let sum = super::format::record_checksum(
        &copy[..RECORD_CHECKSUM_AT],
        &copy[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload_len],
    );
    copy[RECORD_CHECKSUM_AT..RECORD_HEADER_BYTES].copy_from_slice(&sum.to_le_bytes());
    let (r, n) = Record::decode(&copy, volume_size_bytes).ok()?;
    if r.seq != seq {
        return None;
    }
    let record = Record {
        seq: r.seq,
        kind: r.kind,
        flags: r.flags,
        offset: r.offset,
        len: r.len,
        time_unix_ns: r.time_unix_ns,
        batch_seq: r.batch_seq,
        payload: &whole[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload_len],
    };
    Some((record, n))
}
