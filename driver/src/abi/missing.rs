//! The driver's answer to the inverted call: ranges it wants restored.

use core::fmt;

use super::wire::{self, Reader, Writer};
use super::{
    AbiError, MessageKind, HEADER_BYTES, MISSING_BATCH_MAX, MISSING_BATCH_MAX_BYTES,
    MISSING_BATCH_PREFIX_BYTES, MISSING_RANGE_BYTES,
};

bitflags::bitflags! {
    /// Why the driver wants a range; the hydrator schedules by it. Crosses the ABI as a
    /// `u32`; undefined bits are refused, so a newer driver's hint is never misread.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct MissingFlags: u32 {
        /// A read is held on this range: fetch it before anything else.
        const ON_DEMAND = 1 << 0;
        /// No request waits: scan-ahead near recent misses, fetch when there is room.
        const BACKGROUND = 1 << 1;
        /// A write covering part of a region waits on it (read-modify-write).
        const WRITE_PARTIAL = 1 << 2;
    }
}

/// One wanted range.
///
/// ```text
/// offset size field        (relative to the entry; entry i starts at 16 + 24*i)
///      0    8 offset       multiple of 512
///      8    8 len          non-zero multiple of 512; offset + len fits in u64
///     16    4 flags        MissingFlags
///     20    4 reserved     zero
///     24      end
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct MissingRange {
    /// Byte offset of the range on the volume.
    pub offset: u64,
    /// Byte length of the range.
    pub len: u64,
    /// Why it is wanted.
    pub flags: MissingFlags,
}

impl MissingRange {
    /// The checks the decoder applies to an entry.
    pub fn check(&self) -> Result<(), AbiError> {
        wire::check_range(self.offset, self.len)?;
        check_flags(self.flags.bits())?;
        Ok(())
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), AbiError> {
        w.u64(self.offset)?;
        w.u64(self.len)?;
        w.u32(self.flags.bits())?;
        w.u32(0)
    }

    fn read(r: &mut Reader<'_>) -> Result<MissingRange, AbiError> {
        let offset = r.u64()?;
        let len = r.u64()?;
        let bits = r.u32()?;
        r.reserved_u32()?;
        wire::check_range(offset, len)?;
        let flags = check_flags(bits)?;
        Ok(MissingRange { offset, len, flags })
    }
}

fn check_flags(bits: u32) -> Result<MissingFlags, AbiError> {
    MissingFlags::from_bits(bits).ok_or(AbiError::UnknownFlags {
        kind: MessageKind::MissingBatch,
        bits,
        unknown: bits & !MissingFlags::all().bits(),
    })
}

/// Driver → service: completes a pended `GET_MISSING` with up to [`MISSING_BATCH_MAX`]
/// ranges. Built from a slice without copying ([`MissingBatch::new`]); decoded as a view
/// over the checked bytes, so neither side allocates.
///
/// ```text
/// offset size       field
///      0    8       header     kind 2, total_len 16 + 24 * count
///      8    4       count      <= MISSING_BATCH_MAX (256); zero is allowed
///     12    4       reserved   zero
///     16   24*count entries    MissingRange each
/// ```
#[derive(Clone, Copy)]
pub struct MissingBatch<'a> {
    ranges: Ranges<'a>,
}

/// Where the entries live: the sender's slice, or the receiver's checked bytes.
#[derive(Clone, Copy)]
enum Ranges<'a> {
    Typed(&'a [MissingRange]),
    Wire { entries: &'a [u8], count: usize },
}

impl<'a> MissingBatch<'a> {
    /// A batch of `ranges`, checked as the decoder will check it.
    pub fn new(ranges: &'a [MissingRange]) -> Result<MissingBatch<'a>, AbiError> {
        check_count(ranges.len())?;
        for range in ranges {
            range.check()?;
        }
        Ok(MissingBatch {
            ranges: Ranges::Typed(ranges),
        })
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        match self.ranges {
            Ranges::Typed(ranges) => ranges.len(),
            Ranges::Wire { count, .. } => count,
        }
    }

    /// True for a batch of no ranges.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Range `index`, or `None` past the end.
    pub fn get(&self, index: usize) -> Option<MissingRange> {
        match self.ranges {
            Ranges::Typed(ranges) => ranges.get(index).copied(),
            Ranges::Wire { entries, count } => {
                if index >= count {
                    return None;
                }
                let start = index.checked_mul(MISSING_RANGE_BYTES)?;
                let entry = entries.get(start..start.checked_add(MISSING_RANGE_BYTES)?)?;
                let range = MissingRange::read(&mut Reader::new(entry));
                debug_assert!(range.is_ok(), "entries were checked when decoded");
                range.ok()
            }
        }
    }

    /// The ranges in order.
    pub fn iter(&self) -> impl Iterator<Item = MissingRange> + 'a {
        let batch = *self;
        (0..batch.len()).map_while(move |i| batch.get(i))
    }

    /// Bytes [`encode`](Self::encode) writes.
    pub fn encoded_len(&self) -> usize {
        MISSING_BATCH_PREFIX_BYTES + self.len().saturating_mul(MISSING_RANGE_BYTES)
    }

    /// Encodes into the front of `out`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, AbiError> {
        let count = check_count(self.len())?;
        let total = self.encoded_len();
        debug_assert!(total <= MISSING_BATCH_MAX_BYTES);
        let mut w = Writer::new(out, total)?;
        wire::write_header(&mut w, MessageKind::MissingBatch, total)?;
        w.u32(count)?;
        w.u32(0)?;
        for range in self.iter() {
            range.check()?;
            range.write(&mut w)?;
        }
        Ok(w.finish(total))
    }

    /// Decodes a whole buffer that must hold exactly one batch; every entry is checked.
    pub fn decode(bytes: &'a [u8]) -> Result<MissingBatch<'a>, AbiError> {
        let mut r = wire::body(bytes, MessageKind::MissingBatch)?;
        if bytes.len() < MISSING_BATCH_PREFIX_BYTES {
            return Err(AbiError::Length {
                kind: MessageKind::MissingBatch,
                expected: MISSING_BATCH_PREFIX_BYTES,
                got: bytes.len(),
            });
        }
        let count = r.u32()?;
        r.reserved_u32()?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        check_count(count)?;
        // count <= 256, so this cannot overflow.
        let expected = MISSING_BATCH_PREFIX_BYTES + count * MISSING_RANGE_BYTES;
        if bytes.len() != expected {
            return Err(AbiError::Length {
                kind: MessageKind::MissingBatch,
                expected,
                got: bytes.len(),
            });
        }
        let entries = r.rest();
        // Check each entry with the message's reader, so errors name message offsets.
        for _ in 0..count {
            MissingRange::read(&mut r)?;
        }
        Ok(MissingBatch {
            ranges: Ranges::Wire { entries, count },
        })
    }
}

fn check_count(count: usize) -> Result<u32, AbiError> {
    if count > MISSING_BATCH_MAX {
        return Err(AbiError::CountTooLarge {
            kind: MessageKind::MissingBatch,
            count: u64::try_from(count).unwrap_or(u64::MAX),
            max: MISSING_BATCH_MAX as u64,
        });
    }
    // MISSING_BATCH_MAX fits in u32 (asserted in the module root).
    u32::try_from(count).map_err(|_| AbiError::CountTooLarge {
        kind: MessageKind::MissingBatch,
        count: count as u64,
        max: MISSING_BATCH_MAX as u64,
    })
}

impl PartialEq for MissingBatch<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for MissingBatch<'_> {}

impl fmt::Debug for MissingBatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

const _: () = assert!(MISSING_BATCH_PREFIX_BYTES == HEADER_BYTES + 4 + 4);
const _: () = assert!(MISSING_RANGE_BYTES == 8 + 8 + 4 + 4);
// The in-memory entry is the wire entry (padding where the reserved word is), so an
// engine holding a full batch holds 6 KiB.
const _: () = assert!(core::mem::size_of::<MissingRange>() == MISSING_RANGE_BYTES);
