//! Bounds-checked little-endian field access shared by every message.
//!
//! Every read and write goes through `get`/`get_mut` on a range, so a short or hostile
//! buffer becomes an [`AbiError`] and never an index panic (DESIGN.md rule 7). Decoders
//! check the whole length before they read, so the `Short` errors here are a second line
//! of defence, not the one callers normally see.

use super::{AbiError, MessageKind, ABI_VERSION, HEADER_BYTES};
use crate::geometry::{RangeError, SECTOR_SIZE_BYTES};

/// Reads fields front to back from a borrowed buffer.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    /// The next `n` bytes, borrowed.
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], AbiError> {
        let short = AbiError::Short {
            needed: self.at.saturating_add(n),
            got: self.bytes.len(),
        };
        let end = self.at.checked_add(n).ok_or(short)?;
        let field = self.bytes.get(self.at..end).ok_or(short)?;
        self.at = end;
        Ok(field)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], AbiError> {
        let at = self.at;
        let field = self.take(N)?;
        field.try_into().map_err(|_| AbiError::Short {
            needed: at.saturating_add(N),
            got: self.bytes.len(),
        })
    }

    pub(super) fn bytes32(&mut self) -> Result<[u8; 32], AbiError> {
        self.array::<32>()
    }

    pub(super) fn u16(&mut self) -> Result<u16, AbiError> {
        self.array::<2>().map(u16::from_le_bytes)
    }

    pub(super) fn u32(&mut self) -> Result<u32, AbiError> {
        self.array::<4>().map(u32::from_le_bytes)
    }

    pub(super) fn u64(&mut self) -> Result<u64, AbiError> {
        self.array::<8>().map(u64::from_le_bytes)
    }

    /// A reserved `u32`: must be zero so a later version can give it a meaning that an
    /// older peer refuses instead of silently ignoring.
    pub(super) fn reserved_u32(&mut self) -> Result<(), AbiError> {
        let offset = self.at;
        match self.u32()? {
            0 => Ok(()),
            value => Err(AbiError::Reserved { offset, value }),
        }
    }

    /// Bytes read so far: the offset of the next field in the message.
    pub(super) fn position(&self) -> usize {
        self.at
    }

    /// Everything not read yet.
    pub(super) fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.at..).unwrap_or_default()
    }
}

/// Writes fields front to back into a caller's buffer (the kernel's output buffer).
pub(super) struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl<'a> Writer<'a> {
    /// A writer over `out`, refusing up front when `needed` bytes do not fit, so a too
    /// small buffer is reported with the whole message size and left untouched.
    pub(super) fn new(out: &'a mut [u8], needed: usize) -> Result<Writer<'a>, AbiError> {
        if out.len() < needed {
            return Err(AbiError::BufferTooSmall {
                needed,
                got: out.len(),
            });
        }
        Ok(Writer { out, at: 0 })
    }

    pub(super) fn put(&mut self, bytes: &[u8]) -> Result<(), AbiError> {
        let got = self.out.len();
        let needed = self.at.saturating_add(bytes.len());
        let dst = self
            .out
            .get_mut(self.at..needed)
            .ok_or(AbiError::BufferTooSmall { needed, got })?;
        dst.copy_from_slice(bytes);
        self.at = needed;
        Ok(())
    }

    pub(super) fn u16(&mut self, value: u16) -> Result<(), AbiError> {
        self.put(&value.to_le_bytes())
    }

    pub(super) fn u32(&mut self, value: u32) -> Result<(), AbiError> {
        self.put(&value.to_le_bytes())
    }

    pub(super) fn u64(&mut self, value: u64) -> Result<(), AbiError> {
        self.put(&value.to_le_bytes())
    }

    /// Bytes written; checked against the length the encoder promised.
    pub(super) fn finish(self, expected: usize) -> usize {
        debug_assert_eq!(
            self.at, expected,
            "encoder wrote a different length than it sized"
        );
        self.at
    }
}

/// Writes the common header for a message of `total_len` bytes.
pub(super) fn write_header(
    w: &mut Writer<'_>,
    kind: MessageKind,
    total_len: usize,
) -> Result<(), AbiError> {
    debug_assert_eq!(w.at, 0, "the header comes first");
    let total = u32::try_from(total_len).map_err(|_| AbiError::TooLong {
        got: total_len,
        max: super::MESSAGE_MAX_BYTES,
    })?;
    w.u16(ABI_VERSION)?;
    w.u16(kind as u16)?;
    w.u32(total)
}

/// Checks the header of `bytes` and that it is a `kind` message; returns a reader
/// positioned on the first body byte.
pub(super) fn body(bytes: &[u8], kind: MessageKind) -> Result<Reader<'_>, AbiError> {
    let header = super::Header::decode(bytes)?;
    if header.kind != kind {
        return Err(AbiError::WrongKind {
            expected: kind,
            got: header.kind,
        });
    }
    let mut r = Reader::new(bytes);
    r.take(HEADER_BYTES)?;
    Ok(r)
}

/// A fixed-size message must be exactly `expected` bytes long.
pub(super) fn exact_len(bytes: &[u8], kind: MessageKind, expected: usize) -> Result<(), AbiError> {
    if bytes.len() != expected {
        return Err(AbiError::Length {
            kind,
            expected,
            got: bytes.len(),
        });
    }
    Ok(())
}

/// A byte range on the volume: sector-aligned, non-empty, and not wrapping past 2^64.
/// The volume end is the engine's check (it knows the geometry); the ABI only refuses
/// ranges no volume could have.
pub(super) fn check_range(offset: u64, len: u64) -> Result<(), AbiError> {
    if offset % SECTOR_SIZE_BYTES != 0 || len % SECTOR_SIZE_BYTES != 0 {
        return Err(RangeError::Misaligned { offset, len }.into());
    }
    if len == 0 {
        return Err(RangeError::Empty(offset).into());
    }
    if offset.checked_add(len).is_none() {
        return Err(RangeError::Overflow { offset, len }.into());
    }
    Ok(())
}
