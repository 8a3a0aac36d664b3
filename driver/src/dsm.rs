//! The trim request a volume filter sees: `IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES`
//! with `DeviceDsmAction_Trim`. Its input comes from above and is untrusted: decoded
//! with bounds checks into a typed error, never a panic (rule 7).
//!
//! ```text
//! DEVICE_MANAGE_DATA_SET_ATTRIBUTES (little-endian, 28 bytes)
//! offset size field
//!      0    4 Size                   28
//!      4    4 Action                 1 = DeviceDsmAction_Trim (others are not trims)
//!      8    4 Flags                  bit 0 = DEVICE_DSM_FLAG_ENTIRE_DATA_SET_RANGE
//!     12    4 ParameterBlockOffset
//!     16    4 ParameterBlockLength
//!     20    4 DataSetRangesOffset    from the start of the buffer, 8-aligned
//!     24    4 DataSetRangesLength    a multiple of 16
//! DEVICE_DATA_SET_RANGE (16 bytes each)
//!      0    8 StartingOffset         bytes, signed in the header but never negative
//!      8    8 LengthInBytes
//! ```

/// `CTL_CODE(IOCTL_STORAGE_BASE, 0x0501, METHOD_BUFFERED, FILE_WRITE_ACCESS)`.
pub const IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES: u32 = crate::abi::ctl_code(
    0x2d,
    0x0501,
    crate::abi::METHOD_BUFFERED,
    crate::abi::FILE_WRITE_ACCESS,
);
const _: () = assert!(IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES == 0x002D_9404);

/// `DeviceDsmAction_Trim`.
pub const DSM_ACTION_TRIM: u32 = 1;
/// `DEVICE_DSM_FLAG_ENTIRE_DATA_SET_RANGE`.
pub const DSM_FLAG_ENTIRE_DATA_SET_RANGE: u32 = 1;
const HEADER_BYTES: usize = 28;
const RANGE_BYTES: usize = 16;

/// What a data-set-management request asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dsm<'a> {
    /// A trim of the whole volume.
    TrimAll,
    /// A trim of these ranges (16 bytes each; see [`Dsm::range`]).
    Trim(&'a [u8]),
    /// Another action: not a trim; passed down.
    Other(u32),
}

impl Dsm<'_> {
    /// Number of ranges of a [`Dsm::Trim`].
    pub fn range_count(&self) -> usize {
        match self {
            Dsm::Trim(bytes) => bytes.len() / RANGE_BYTES,
            _ => 0,
        }
    }

    /// Range `i` of a [`Dsm::Trim`] as (offset, length) in bytes.
    pub fn range(&self, i: usize) -> Option<(u64, u64)> {
        let Dsm::Trim(bytes) = self else { return None };
        let at = i.checked_mul(RANGE_BYTES)?;
        let r = bytes.get(at..at + RANGE_BYTES)?;
        let offset = u64::from_le_bytes(r[0..8].try_into().ok()?);
        let len = u64::from_le_bytes(r[8..16].try_into().ok()?);
        Some((offset, len))
    }
}

/// Why a data-set-management buffer is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DsmError {
    /// The buffer is shorter than the fixed header.
    #[error("data-set-management buffer of {0} bytes is shorter than its 28-byte header")]
    Short(usize),
    /// The header's Size field is not 28.
    #[error("data-set-management header size {0} is not 28")]
    HeaderSize(u32),
    /// The ranges lie outside the buffer, are misaligned, or are not whole ranges.
    #[error("data-set ranges at {offset}+{len} do not fit a {buffer}-byte buffer as whole 16-byte ranges")]
    Ranges {
        /// `DataSetRangesOffset`.
        offset: u32,
        /// `DataSetRangesLength`.
        len: u32,
        /// Buffer length.
        buffer: usize,
    },
}

fn field(bytes: &[u8], at: usize) -> u32 {
    // Callers check `bytes.len() >= HEADER_BYTES` first.
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Decodes the input buffer of `IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES`.
pub fn decode(bytes: &[u8]) -> Result<Dsm<'_>, DsmError> {
    if bytes.len() < HEADER_BYTES {
        return Err(DsmError::Short(bytes.len()));
    }
    let size = field(bytes, 0);
    if size as usize != HEADER_BYTES {
        return Err(DsmError::HeaderSize(size));
    }
    let action = field(bytes, 4);
    if action != DSM_ACTION_TRIM {
        return Ok(Dsm::Other(action));
    }
    if field(bytes, 8) & DSM_FLAG_ENTIRE_DATA_SET_RANGE != 0 {
        return Ok(Dsm::TrimAll);
    }
    let offset = field(bytes, 20);
    let len = field(bytes, 24);
    let bad = DsmError::Ranges {
        offset,
        len,
        buffer: bytes.len(),
    };
    if offset as usize % 8 != 0
        || len as usize % RANGE_BYTES != 0
        || (offset as usize) < HEADER_BYTES
    {
        return Err(bad);
    }
    let end = (offset as usize).checked_add(len as usize).ok_or(bad)?;
    let ranges = bytes.get(offset as usize..end).ok_or(bad)?;
    Ok(Dsm::Trim(ranges))
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn trim(ranges: &[(u64, u64)], flags: u32) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [
            28u32,
            DSM_ACTION_TRIM,
            flags,
            0,
            0,
            32,
            (ranges.len() * 16) as u32,
            0,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for (o, l) in ranges {
            b.extend_from_slice(&o.to_le_bytes());
            b.extend_from_slice(&l.to_le_bytes());
        }
        b
    }

    #[test]
    fn trims_decode_with_their_ranges() {
        let b = trim(&[(4096, 8192), (1 << 30, 512)], 0);
        let d = decode(&b).unwrap();
        assert_eq!(d.range_count(), 2);
        assert_eq!(d.range(0), Some((4096, 8192)));
        assert_eq!(d.range(1), Some((1 << 30, 512)));
        assert_eq!(d.range(2), None);
        assert_eq!(decode(&trim(&[], 1)).unwrap(), Dsm::TrimAll);
    }

    #[test]
    fn malformed_buffers_are_typed_errors() {
        assert_eq!(decode(&[0; 10]), Err(DsmError::Short(10)));
        let mut b = trim(&[(0, 512)], 0);
        b[0] = 27;
        assert_eq!(decode(&b), Err(DsmError::HeaderSize(27)));
        let mut b = trim(&[(0, 512)], 0);
        b[24] = 200; // ranges longer than the buffer
        assert!(matches!(decode(&b), Err(DsmError::Ranges { .. })));
        let mut b = trim(&[(0, 512)], 0);
        b[20] = 33; // misaligned
        assert!(matches!(decode(&b), Err(DsmError::Ranges { .. })));
        let mut b = trim(&[(0, 512)], 0);
        b[4] = 2;
        assert_eq!(decode(&b), Ok(Dsm::Other(2)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(d) = decode(&bytes) {
                for i in 0..d.range_count() + 1 {
                    let _ = d.range(i);
                }
            }
        }
    }
}
