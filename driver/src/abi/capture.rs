//! Write capture across the boundary (technique T3, reused by T5): the driver hands the
//! service batches of captured records through a pended request, the service
//! acknowledges the sequence its journal made durable, and asks for named marks.
//!
//! ```text
//! exchange       direction          message          what it carries
//! GET_RECORDS    driver → service   RecordBatch      records in sequence order (pended: inverted call)
//! ACK_RECORDS    service → driver   RecordAck        the highest sequence durably journaled
//! MARK           service → driver   Mark             a label; the driver flushes, then records it
//! ```
//!
//! A record is one of: a completed write (its data), a completed write of zeros, a
//! completed flush (a recovery point), a mark (a recovery point with a label), or the
//! start and end of a gap (async capture fell behind; points inside are never offered).
//! The driver numbers records in the order they complete; a batch carries consecutive
//! sequence numbers in increasing order.

use core::fmt;

use super::wire::{self, Reader, Writer};
use super::{
    AbiError, MessageKind, HEADER_BYTES, MARK_BYTES, RECORD_ACK_BYTES, RECORD_BATCH_MAX,
    RECORD_BATCH_MAX_BYTES, RECORD_BATCH_PREFIX_BYTES, RECORD_HEADER_BYTES,
    RECORD_PAYLOAD_MAX_BYTES,
};

/// Longest mark label, in bytes.
pub const MARK_LABEL_MAX_BYTES: usize = 64;

/// What a record is. Crosses the ABI as a `u16`; zero is never a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum RecordKind {
    /// A completed write: `offset`, `len` and `len` bytes of data.
    Write = 1,
    /// A completed write of zeros (write-zeroes, trim): `offset`, `len`, no data.
    Zero = 2,
    /// A completed flush: a recovery point holding every record before it.
    Flush = 3,
    /// A named mark: a recovery point (the driver flushed first) with a label.
    Mark = 4,
    /// Capture fell behind (async mode) or lost track of some regions: until the
    /// matching [`RecordKind::GapEnd`] no point is offered.
    GapBegin = 5,
    /// Every region written during the gap has been journaled again: points may follow.
    GapEnd = 6,
}

impl RecordKind {
    /// Decodes the ABI value; unknown values are `None`.
    pub const fn from_u16(value: u16) -> Option<RecordKind> {
        Some(match value {
            1 => RecordKind::Write,
            2 => RecordKind::Zero,
            3 => RecordKind::Flush,
            4 => RecordKind::Mark,
            5 => RecordKind::GapBegin,
            6 => RecordKind::GapEnd,
            _ => return None,
        })
    }

    /// True for the kinds that change the volume's contents.
    pub const fn is_data(self) -> bool {
        matches!(self, RecordKind::Write | RecordKind::Zero)
    }

    /// True for the kinds that are recovery points.
    pub const fn is_point(self) -> bool {
        matches!(self, RecordKind::Flush | RecordKind::Mark)
    }
}

bitflags::bitflags! {
    /// Details of a record. Crosses the ABI as a `u16`; undefined bits are refused.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct RecordFlags: u16 {
        /// The data was read back from the volume to close a gap, not written by a
        /// client (only on [`RecordKind::Write`]).
        const RESYNC = 1 << 0;
    }
}

/// A checked mark label: 1 to [`MARK_LABEL_MAX_BYTES`] bytes of `[A-Za-z0-9._-]`, not
/// starting with `.`, so it can stand in an export name (`NAME@mark:LABEL`) and a file
/// listing as it is.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Label {
    len: u8,
    bytes: [u8; MARK_LABEL_MAX_BYTES],
}

impl Label {
    /// Checks `text`.
    pub fn new(text: &str) -> Result<Label, AbiError> {
        Label::from_bytes(text.as_bytes())
    }

    /// Checks raw bytes (the decoders' path).
    pub fn from_bytes(raw: &[u8]) -> Result<Label, AbiError> {
        let valid = !raw.is_empty()
            && raw.len() <= MARK_LABEL_MAX_BYTES
            && raw[0] != b'.'
            && raw
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(AbiError::BadLabel {
                len: raw.len(),
                max: MARK_LABEL_MAX_BYTES,
            });
        }
        let mut bytes = [0u8; MARK_LABEL_MAX_BYTES];
        bytes[..raw.len()].copy_from_slice(raw);
        Ok(Label {
            // At most 64, checked above.
            len: raw.len() as u8,
            bytes,
        })
    }

    /// The label's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(MARK_LABEL_MAX_BYTES)]
    }

    /// The label as text (always ASCII).
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Label({:?})", self.as_str())
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One captured record.
///
/// ```text
/// offset size          field        (relative to the record; records follow each other)
///      0    8          seq          > 0; each record one more than the one before it
///      8    8          offset       Write/Zero: multiple of 512; else 0
///     16    8          len          Write: 512..=1 MiB, Zero: non-zero, multiples of
///                                   512, offset + len fits in u64; else 0
///     24    8          time_unix_ns wall clock when the record was made (completion)
///     32    2          kind         RecordKind (1..=6)
///     34    2          flags        RecordFlags (RESYNC only on Write)
///     36    4          payload_len  Write: len; Mark: the label's 1..=64 bytes; else 0
///     40    payload_len payload     the data, or the label
///     ..    0..7       padding      zero, to the next multiple of 8
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureRecord<'a> {
    /// Sequence number: completion order.
    pub seq: u64,
    /// What the record is.
    pub kind: RecordKind,
    /// Details.
    pub flags: RecordFlags,
    /// Byte offset on the volume (data kinds).
    pub offset: u64,
    /// Byte length on the volume (data kinds).
    pub len: u64,
    /// Wall clock when made, in nanoseconds since the Unix epoch.
    pub time_unix_ns: u64,
    /// The data of a write, the label of a mark, else empty.
    pub payload: &'a [u8],
}

impl<'a> CaptureRecord<'a> {
    /// Bytes this record takes in a batch, padding included.
    pub fn encoded_len(&self) -> usize {
        record_bytes(self.payload.len())
    }

    /// The mark's label (only for [`RecordKind::Mark`]).
    pub fn label(&self) -> Option<Label> {
        match self.kind {
            RecordKind::Mark => Label::from_bytes(self.payload).ok(),
            _ => None,
        }
    }

    /// The checks the decoder applies to a record.
    pub fn check(&self) -> Result<(), AbiError> {
        if self.seq == 0 {
            return Err(AbiError::RecordField {
                seq: self.seq,
                field: "seq",
            });
        }
        let payload_len = self.payload.len() as u64;
        let field = |field| AbiError::RecordField {
            seq: self.seq,
            field,
        };
        if !self.flags.is_empty() && self.kind != RecordKind::Write {
            return Err(field("flags"));
        }
        match self.kind {
            RecordKind::Write => {
                wire::check_range(self.offset, self.len)?;
                if self.len > RECORD_PAYLOAD_MAX_BYTES as u64 {
                    return Err(field("len"));
                }
                if payload_len != self.len {
                    return Err(field("payload_len"));
                }
            }
            RecordKind::Zero => {
                wire::check_range(self.offset, self.len)?;
                if payload_len != 0 {
                    return Err(field("payload_len"));
                }
            }
            RecordKind::Mark => {
                if self.offset != 0 || self.len != 0 {
                    return Err(field("offset"));
                }
                Label::from_bytes(self.payload)?;
            }
            RecordKind::Flush | RecordKind::GapBegin | RecordKind::GapEnd => {
                if self.offset != 0 || self.len != 0 {
                    return Err(field("offset"));
                }
                if payload_len != 0 {
                    return Err(field("payload_len"));
                }
            }
        }
        Ok(())
    }

    /// Writes the record (checked) at the writer's position.
    fn write(&self, w: &mut Writer<'_>) -> Result<(), AbiError> {
        self.check()?;
        let payload_len = u32::try_from(self.payload.len()).map_err(|_| AbiError::RecordField {
            seq: self.seq,
            field: "payload_len",
        })?;
        w.u64(self.seq)?;
        w.u64(self.offset)?;
        w.u64(self.len)?;
        w.u64(self.time_unix_ns)?;
        w.u16(self.kind as u16)?;
        w.u16(self.flags.bits())?;
        w.u32(payload_len)?;
        w.put(self.payload)?;
        let pad = padding(self.payload.len());
        w.put(&[0u8; 8][..pad])
    }

    /// Reads and checks one record at the reader's position.
    fn read(r: &mut Reader<'a>) -> Result<CaptureRecord<'a>, AbiError> {
        let seq = r.u64()?;
        let offset = r.u64()?;
        let len = r.u64()?;
        let time_unix_ns = r.u64()?;
        let kind = r.u16()?;
        let flags = r.u16()?;
        let payload_len = r.u32()?;
        let kind = RecordKind::from_u16(kind).ok_or(AbiError::UnknownRecordKind(kind))?;
        let flags = RecordFlags::from_bits(flags).ok_or(AbiError::UnknownFlags {
            kind: MessageKind::RecordBatch,
            bits: u32::from(flags),
            unknown: u32::from(flags & !RecordFlags::all().bits()),
        })?;
        // Bounded before it is used as a length: a record never exceeds the batch.
        if payload_len as usize > RECORD_PAYLOAD_MAX_BYTES {
            return Err(AbiError::RecordField {
                seq,
                field: "payload_len",
            });
        }
        let payload = r.take(payload_len as usize)?;
        let pad_at = r.position();
        let pad = r.take(padding(payload.len()))?;
        if let Some(i) = pad.iter().position(|&b| b != 0) {
            return Err(AbiError::Reserved {
                offset: pad_at + i,
                value: u32::from(pad[i]),
            });
        }
        let record = CaptureRecord {
            seq,
            kind,
            flags,
            offset,
            len,
            time_unix_ns,
            payload,
        };
        record.check()?;
        Ok(record)
    }
}

/// Zero bytes after a payload of `payload_len`, to the next multiple of 8.
const fn padding(payload_len: usize) -> usize {
    (8 - payload_len % 8) % 8
}

/// Bytes a record with `payload_len` bytes of payload takes in a batch.
pub const fn record_bytes(payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + payload_len + padding(payload_len)
}

/// Driver → service: completes a pended `GET_RECORDS` with up to [`RECORD_BATCH_MAX`]
/// records, consecutive and increasing in sequence. Decoded as a view over the checked
/// bytes (payloads borrow from them); built with [`RecordBatchWriter`] straight into
/// the request's output buffer, so neither side copies a payload twice.
///
/// ```text
/// offset size   field
///      0    8   header     kind 9, total_len 16 + the records' bytes
///      8    4   count      <= RECORD_BATCH_MAX (4096); zero is allowed
///     12    4   reserved   zero
///     16    ..  records    CaptureRecord each, 8-aligned
/// ```
#[derive(Clone, Copy)]
pub struct RecordBatch<'a> {
    records: &'a [u8],
    count: usize,
}

impl<'a> RecordBatch<'a> {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True for a batch of no records.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The records in order.
    pub fn iter(&self) -> impl Iterator<Item = CaptureRecord<'a>> + 'a {
        let mut r = Reader::new(self.records);
        (0..self.count).map_while(move |_| {
            let record = CaptureRecord::read(&mut r);
            debug_assert!(record.is_ok(), "records were checked when decoded");
            record.ok()
        })
    }

    /// Bytes [`encode`](Self::encode) writes.
    pub fn encoded_len(&self) -> usize {
        RECORD_BATCH_PREFIX_BYTES + self.records.len()
    }

    /// Encodes into the front of `out` (the records are already checked bytes).
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, AbiError> {
        let total = self.encoded_len();
        let mut w = Writer::new(out, total)?;
        wire::write_header(&mut w, MessageKind::RecordBatch, total)?;
        w.u32(check_count(self.count)?)?;
        w.u32(0)?;
        w.put(self.records)?;
        Ok(w.finish(total))
    }

    /// Decodes a whole buffer that must hold exactly one batch; every record is checked,
    /// and sequence numbers must increase by one from record to record.
    pub fn decode(bytes: &'a [u8]) -> Result<RecordBatch<'a>, AbiError> {
        let mut r = wire::body(bytes, MessageKind::RecordBatch)?;
        if bytes.len() > RECORD_BATCH_MAX_BYTES {
            return Err(AbiError::TooLong {
                got: bytes.len(),
                max: RECORD_BATCH_MAX_BYTES,
            });
        }
        if bytes.len() < RECORD_BATCH_PREFIX_BYTES {
            return Err(AbiError::Length {
                kind: MessageKind::RecordBatch,
                expected: RECORD_BATCH_PREFIX_BYTES,
                got: bytes.len(),
            });
        }
        let count = r.u32()?;
        r.reserved_u32()?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        check_count(count)?;
        let records = r.rest();
        let mut previous: Option<u64> = None;
        // Bounded by the count (at most 4096), and each step consumes at least 40 bytes.
        for _ in 0..count {
            let record = CaptureRecord::read(&mut r)?;
            check_follows(previous, record.seq)?;
            previous = Some(record.seq);
        }
        if !r.rest().is_empty() {
            return Err(AbiError::Length {
                kind: MessageKind::RecordBatch,
                expected: r.position(),
                got: bytes.len(),
            });
        }
        Ok(RecordBatch { records, count })
    }
}

fn check_follows(previous: Option<u64>, seq: u64) -> Result<(), AbiError> {
    match previous {
        Some(p) if p.checked_add(1) != Some(seq) => Err(AbiError::RecordOrder { previous: p, seq }),
        _ => Ok(()),
    }
}

fn check_count(count: usize) -> Result<u32, AbiError> {
    if count > RECORD_BATCH_MAX {
        return Err(AbiError::CountTooLarge {
            kind: MessageKind::RecordBatch,
            count: u64::try_from(count).unwrap_or(u64::MAX),
            max: RECORD_BATCH_MAX as u64,
        });
    }
    // RECORD_BATCH_MAX fits in u32 (asserted in the module root).
    Ok(count as u32)
}

impl PartialEq for RecordBatch<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count && self.records == other.records
    }
}

impl Eq for RecordBatch<'_> {}

impl fmt::Debug for RecordBatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Builds a [`RecordBatch`] record by record in a caller's buffer (the kernel writes
/// into the pended request's output buffer), checking each record as the decoder will.
pub struct RecordBatchWriter<'a> {
    out: &'a mut [u8],
    at: usize,
    count: usize,
    last_seq: Option<u64>,
}

impl<'a> RecordBatchWriter<'a> {
    /// A writer over `out`, which must hold at least the batch prefix.
    pub fn new(out: &'a mut [u8]) -> Result<RecordBatchWriter<'a>, AbiError> {
        if out.len() < RECORD_BATCH_PREFIX_BYTES {
            return Err(AbiError::BufferTooSmall {
                needed: RECORD_BATCH_PREFIX_BYTES,
                got: out.len(),
            });
        }
        Ok(RecordBatchWriter {
            out,
            at: RECORD_BATCH_PREFIX_BYTES,
            count: 0,
            last_seq: None,
        })
    }

    /// Records written so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// True when `record` fits the rest of the buffer and the batch bounds.
    pub fn fits(&self, record: &CaptureRecord<'_>) -> bool {
        self.count < RECORD_BATCH_MAX
            && self
                .at
                .checked_add(record.encoded_len())
                .is_some_and(|end| end <= self.out.len() && end <= RECORD_BATCH_MAX_BYTES)
    }

    /// Appends `record`; refused (nothing written) when it does not fit, is invalid, or
    /// does not follow the previous record's sequence.
    pub fn push(&mut self, record: &CaptureRecord<'_>) -> Result<(), AbiError> {
        check_follows(self.last_seq, record.seq)?;
        if !self.fits(record) {
            return Err(AbiError::BufferTooSmall {
                needed: self.at.saturating_add(record.encoded_len()),
                got: self.out.len().min(RECORD_BATCH_MAX_BYTES),
            });
        }
        record.check()?;
        let end = self.at + record.encoded_len();
        let mut w = Writer::new(&mut self.out[self.at..end], record.encoded_len())?;
        record.write(&mut w)?;
        w.finish(record.encoded_len());
        self.at = end;
        self.count += 1;
        self.last_seq = Some(record.seq);
        Ok(())
    }

    /// Writes the prefix; returns the whole message's length.
    pub fn finish(self) -> Result<usize, AbiError> {
        let total = self.at;
        let count = check_count(self.count)?;
        let mut w = Writer::new(
            &mut self.out[..RECORD_BATCH_PREFIX_BYTES],
            RECORD_BATCH_PREFIX_BYTES,
        )?;
        wire::write_header(&mut w, MessageKind::RecordBatch, total)?;
        w.u32(count)?;
        w.u32(0)?;
        w.finish(RECORD_BATCH_PREFIX_BYTES);
        Ok(total)
    }
}

/// Service → driver: every record up to `durable_seq` is durably journaled; the driver
/// frees them (and, in sync mode, completes the writes waiting on them).
///
/// ```text
/// offset size field
///      0    8 header       kind 10, total_len 16
///      8    8 durable_seq  highest sequence durably journaled (0: none yet)
///     16      end
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordAck {
    /// Highest sequence durably journaled.
    pub durable_seq: u64,
}

impl RecordAck {
    /// Bytes [`encode`](Self::encode) writes.
    pub const fn encoded_len(&self) -> usize {
        RECORD_ACK_BYTES
    }

    /// Encodes into the front of `out`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, AbiError> {
        let mut w = Writer::new(out, RECORD_ACK_BYTES)?;
        wire::write_header(&mut w, MessageKind::RecordAck, RECORD_ACK_BYTES)?;
        w.u64(self.durable_seq)?;
        Ok(w.finish(RECORD_ACK_BYTES))
    }

    /// Decodes a whole buffer that must hold exactly one acknowledgement.
    pub fn decode(bytes: &[u8]) -> Result<RecordAck, AbiError> {
        let mut r = wire::body(bytes, MessageKind::RecordAck)?;
        wire::exact_len(bytes, MessageKind::RecordAck, RECORD_ACK_BYTES)?;
        Ok(RecordAck {
            durable_seq: r.u64()?,
        })
    }
}

/// Service → driver: flush the volume, then record a mark named `label` (a recovery
/// point people can name: `NAME@mark:LABEL`).
///
/// ```text
/// offset size field
///      0    8 header     kind 11, total_len 80
///      8    4 label_len  1..=64
///     12    4 reserved   zero
///     16   64 label      [A-Za-z0-9._-], not starting with '.'; zero after label_len
///     80      end
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mark {
    /// The mark's name.
    pub label: Label,
}

impl Mark {
    /// Bytes [`encode`](Self::encode) writes.
    pub const fn encoded_len(&self) -> usize {
        MARK_BYTES
    }

    /// Encodes into the front of `out`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, AbiError> {
        let mut w = Writer::new(out, MARK_BYTES)?;
        wire::write_header(&mut w, MessageKind::Mark, MARK_BYTES)?;
        w.u32(u32::from(self.label.len))?;
        w.u32(0)?;
        w.put(&self.label.bytes)?;
        Ok(w.finish(MARK_BYTES))
    }

    /// Decodes a whole buffer that must hold exactly one mark.
    pub fn decode(bytes: &[u8]) -> Result<Mark, AbiError> {
        let mut r = wire::body(bytes, MessageKind::Mark)?;
        wire::exact_len(bytes, MessageKind::Mark, MARK_BYTES)?;
        let len = r.u32()? as usize;
        r.reserved_u32()?;
        let at = r.position();
        let raw = r.take(MARK_LABEL_MAX_BYTES)?;
        if len == 0 || len > raw.len() {
            return Err(AbiError::BadLabel {
                len,
                max: MARK_LABEL_MAX_BYTES,
            });
        }
        let label = Label::from_bytes(&raw[..len])?;
        // Negative space: nothing after the label, so one mark has one encoding.
        if let Some(i) = raw[len..].iter().position(|&b| b != 0) {
            return Err(AbiError::Reserved {
                offset: at + len + i,
                value: u32::from(raw[len + i]),
            });
        }
        Ok(Mark { label })
    }
}

const _: () = assert!(RECORD_BATCH_PREFIX_BYTES == HEADER_BYTES + 4 + 4);
const _: () = assert!(RECORD_HEADER_BYTES == 8 + 8 + 8 + 8 + 2 + 2 + 4);
const _: () = assert!(RECORD_ACK_BYTES == HEADER_BYTES + 8);
const _: () = assert!(MARK_BYTES == HEADER_BYTES + 4 + 4 + MARK_LABEL_MAX_BYTES);
const _: () = assert!(MARK_LABEL_MAX_BYTES <= u8::MAX as usize);
// One record of the largest payload always fits a batch.
const _: () = assert!(
    RECORD_BATCH_PREFIX_BYTES + record_bytes(RECORD_PAYLOAD_MAX_BYTES) <= RECORD_BATCH_MAX_BYTES
);

/// One batch of `records`, encoded (for tests and simulators that play the driver).
#[cfg(any(test, feature = "testing"))]
pub fn batch_of(records: &[CaptureRecord<'_>]) -> Result<alloc::vec::Vec<u8>, AbiError> {
    let mut out = alloc::vec![0u8; RECORD_BATCH_MAX_BYTES];
    let mut w = RecordBatchWriter::new(&mut out)?;
    for r in records {
        w.push(r)?;
    }
    let len = w.finish()?;
    out.truncate(len);
    Ok(out)
}
