//! Restore data for a range, or the news that the range is all zeros.

use super::wire::{self, Writer};
use super::{AbiError, MessageKind, HEADER_BYTES, HYDRATE_MAX_BYTES, HYDRATE_PREFIX_BYTES};

bitflags::bitflags! {
    /// How a hydrate carries its data. Crosses the ABI as a `u32`; undefined bits are
    /// refused.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct HydrateFlags: u32 {
        /// The range is zeros (a hole or zero chunk in the backup): no payload follows,
        /// and the driver writes zeros (or discards) without data crossing the boundary.
        const ZERO = 1 << 0;
    }
}

/// Service → driver: data for a range. The driver writes it down only where the regions
/// are still missing and not overwritten meanwhile (rule 4), so a late or duplicate
/// hydrate is harmless.
///
/// ```text
/// offset size         field
///      0    8         header       kind 3, total_len 32 + payload_len
///      8    8         offset       multiple of 512
///     16    8         len          non-zero multiple of 512, <= HYDRATE_MAX_BYTES (8 MiB);
///                                  offset + len fits in u64
///     24    4         flags        HydrateFlags
///     28    4         payload_len  0 with ZERO, else == len
///     32    payload_len payload    the range's bytes
/// ```
///
/// Decoding borrows the payload from the buffer: no copy of up to 8 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hydrate<'a> {
    /// Byte offset of the range on the volume.
    pub offset: u64,
    /// Byte length of the range.
    pub len: u64,
    /// How the data is carried.
    pub flags: HydrateFlags,
    /// The data: `len` bytes, or empty with [`HydrateFlags::ZERO`].
    pub payload: &'a [u8],
}

impl<'a> Hydrate<'a> {
    /// A hydrate carrying `payload` for the range starting at `offset`.
    pub fn data(offset: u64, payload: &'a [u8]) -> Hydrate<'a> {
        Hydrate {
            offset,
            len: u64::try_from(payload.len()).unwrap_or(u64::MAX),
            flags: HydrateFlags::empty(),
            payload,
        }
    }

    /// A hydrate saying the range is zeros.
    pub fn zero(offset: u64, len: u64) -> Hydrate<'static> {
        Hydrate {
            offset,
            len,
            flags: HydrateFlags::ZERO,
            payload: &[],
        }
    }

    /// Bytes [`encode`](Self::encode) writes.
    pub fn encoded_len(&self) -> usize {
        HYDRATE_PREFIX_BYTES.saturating_add(self.payload.len())
    }

    /// Encodes into the front of `out`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, AbiError> {
        let payload_len = u64::try_from(self.payload.len()).unwrap_or(u64::MAX);
        check(self.offset, self.len, self.flags.bits(), payload_len)?;
        let total = self.encoded_len();
        let mut w = Writer::new(out, total)?;
        write_prefix(&mut w, self.offset, self.len, self.flags, total)?;
        w.put(self.payload)?;
        Ok(w.finish(total))
    }

    /// Writes only the 32-byte prefix of a hydrate for `offset`/`len`/`flags`, so the
    /// service can read the payload from the network straight into
    /// `out[HYDRATE_PREFIX_BYTES..]` instead of copying it there. `out` must already be
    /// large enough for the whole message; returns the whole message's length.
    pub fn encode_prefix(
        offset: u64,
        len: u64,
        flags: HydrateFlags,
        out: &mut [u8],
    ) -> Result<usize, AbiError> {
        let payload_len = if flags.contains(HydrateFlags::ZERO) {
            0
        } else {
            len
        };
        check(offset, len, flags.bits(), payload_len)?;
        // len <= HYDRATE_MAX_BYTES after the check, so this fits.
        let total =
            HYDRATE_PREFIX_BYTES.saturating_add(usize::try_from(payload_len).unwrap_or(usize::MAX));
        let mut w = Writer::new(out, total)?;
        write_prefix(&mut w, offset, len, flags, total)?;
        Ok(total)
    }

    /// Decodes a whole buffer that must hold exactly one hydrate; the payload borrows
    /// from `bytes`.
    pub fn decode(bytes: &'a [u8]) -> Result<Hydrate<'a>, AbiError> {
        let mut r = wire::body(bytes, MessageKind::Hydrate)?;
        if bytes.len() < HYDRATE_PREFIX_BYTES {
            return Err(AbiError::Length {
                kind: MessageKind::Hydrate,
                expected: HYDRATE_PREFIX_BYTES,
                got: bytes.len(),
            });
        }
        let offset = r.u64()?;
        let len = r.u64()?;
        let bits = r.u32()?;
        let payload_len = r.u32()?;
        let flags = check(offset, len, bits, u64::from(payload_len))?;
        // payload_len <= HYDRATE_MAX_BYTES after the check, so this cannot overflow.
        let expected =
            HYDRATE_PREFIX_BYTES.saturating_add(usize::try_from(payload_len).unwrap_or(usize::MAX));
        if bytes.len() != expected {
            return Err(AbiError::Length {
                kind: MessageKind::Hydrate,
                expected,
                got: bytes.len(),
            });
        }
        let payload = r.rest();
        debug_assert_eq!(payload.len() as u64, u64::from(payload_len));
        Ok(Hydrate {
            offset,
            len,
            flags,
            payload,
        })
    }
}

/// The checks shared by the encoder and the decoder.
fn check(offset: u64, len: u64, bits: u32, payload_len: u64) -> Result<HydrateFlags, AbiError> {
    wire::check_range(offset, len)?;
    if len > u64::from(HYDRATE_MAX_BYTES) {
        return Err(AbiError::HydrateTooLong {
            len,
            max: HYDRATE_MAX_BYTES,
        });
    }
    let flags = HydrateFlags::from_bits(bits).ok_or(AbiError::UnknownFlags {
        kind: MessageKind::Hydrate,
        bits,
        unknown: bits & !HydrateFlags::all().bits(),
    })?;
    let expected = if flags.contains(HydrateFlags::ZERO) {
        0
    } else {
        len
    };
    if payload_len != expected {
        return Err(AbiError::PayloadLength {
            len,
            flags: bits,
            payload_len,
        });
    }
    Ok(flags)
}

fn write_prefix(
    w: &mut Writer<'_>,
    offset: u64,
    len: u64,
    flags: HydrateFlags,
    total: usize,
) -> Result<(), AbiError> {
    let payload_len = total.saturating_sub(HYDRATE_PREFIX_BYTES);
    let payload_len = u32::try_from(payload_len).map_err(|_| AbiError::HydrateTooLong {
        len: payload_len as u64,
        max: HYDRATE_MAX_BYTES,
    })?;
    wire::write_header(w, MessageKind::Hydrate, total)?;
    w.u64(offset)?;
    w.u64(len)?;
    w.u32(flags.bits())?;
    w.u32(payload_len)
}

const _: () = assert!(HYDRATE_PREFIX_BYTES == HEADER_BYTES + 8 + 8 + 4 + 4);
