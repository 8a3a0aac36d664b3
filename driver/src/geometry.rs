//! Volume geometry: how byte ranges map onto regions, and what a valid request is.
//!
//! A volume is any whole number of 512-byte sectors. It is cut into regions of one
//! power-of-two size between 4 KiB and 1 MiB; the last region is partial when the volume
//! size is not a multiple of the region size. Every request the engine sees is checked
//! here first (rule 7: untrusted input becomes a typed error, never a panic).

use core::ops::Range;

/// The sector every request offset and length must be a multiple of.
pub const SECTOR_SIZE_BYTES: u64 = 512;
/// Smallest region size.
pub const REGION_SIZE_MIN_BYTES: u32 = 4 * 1024;
/// Largest region size.
pub const REGION_SIZE_MAX_BYTES: u32 = 1024 * 1024;
/// Region size when none is given.
pub const REGION_SIZE_DEFAULT_BYTES: u32 = REGION_SIZE_MIN_BYTES;
/// Bound on regions per volume: keeps the bitmap at most 512 MiB (16 TiB at 4 KiB
/// regions, 4 PiB at 1 MiB) so a corrupt or hostile size cannot demand unbounded memory.
pub const REGION_COUNT_MAX: u64 = 1 << 32;

const _: () = assert!(REGION_SIZE_MIN_BYTES.is_power_of_two());
const _: () = assert!(REGION_SIZE_MAX_BYTES.is_power_of_two());
const _: () = assert!(REGION_SIZE_MIN_BYTES as u64 % SECTOR_SIZE_BYTES == 0);
const _: () = assert!(REGION_SIZE_MIN_BYTES <= REGION_SIZE_DEFAULT_BYTES);
const _: () = assert!(REGION_SIZE_DEFAULT_BYTES <= REGION_SIZE_MAX_BYTES);

/// Why a geometry cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    /// The region size is not a power of two between 4 KiB and 1 MiB.
    #[error("region size {0} bytes is not a power of two from 4KiB to 1MiB")]
    RegionSize(u32),
    /// The volume size is zero or not a multiple of 512 bytes.
    #[error("volume size {0} bytes is zero or not a multiple of 512")]
    VolumeSize(u64),
    /// The volume has more regions than the bitmap bound allows.
    #[error("volume of {volume_size_bytes} bytes needs more than 2^32 regions of {region_size_bytes} bytes")]
    TooManyRegions {
        /// Volume size asked for.
        volume_size_bytes: u64,
        /// Region size asked for.
        region_size_bytes: u32,
    },
}

/// Why a request's byte range is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Offset or length is not a multiple of 512 bytes.
    #[error("offset {offset} or length {len} is not a multiple of 512 bytes")]
    Misaligned {
        /// Byte offset of the request.
        offset: u64,
        /// Byte length of the request.
        len: u64,
    },
    /// The request has zero length.
    #[error("zero-length request at offset {0}")]
    Empty(u64),
    /// Offset plus length does not fit in 64 bits.
    #[error("offset {offset} plus length {len} overflows")]
    Overflow {
        /// Byte offset of the request.
        offset: u64,
        /// Byte length of the request.
        len: u64,
    },
    /// The range ends past the end of the volume.
    #[error("range {offset}+{len} ends past the volume end {volume_size_bytes}")]
    PastEnd {
        /// Byte offset of the request.
        offset: u64,
        /// Byte length of the request.
        len: u64,
        /// Size of the volume.
        volume_size_bytes: u64,
    },
}

impl RangeError {
    /// The status the request is completed with.
    pub const fn status(self) -> crate::Status {
        use crate::Status;
        match self {
            RangeError::Misaligned { .. } => Status::INVALID_PARAMETER,
            RangeError::Empty(_) => Status::INVALID_BUFFER_SIZE,
            RangeError::Overflow { .. } => Status::INTEGER_OVERFLOW,
            RangeError::PastEnd { .. } => Status::NONEXISTENT_SECTOR,
        }
    }
}

/// The shape of a volume cut into regions. Cheap to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    volume_size_bytes: u64,
    region_shift: u32,
    region_count: u64,
}

impl Geometry {
    /// Builds the geometry of a volume, checking both sizes.
    pub fn new(volume_size_bytes: u64, region_size_bytes: u32) -> Result<Geometry, GeometryError> {
        if !region_size_bytes.is_power_of_two()
            || !(REGION_SIZE_MIN_BYTES..=REGION_SIZE_MAX_BYTES).contains(&region_size_bytes)
        {
            return Err(GeometryError::RegionSize(region_size_bytes));
        }
        if volume_size_bytes == 0 || volume_size_bytes % SECTOR_SIZE_BYTES != 0 {
            return Err(GeometryError::VolumeSize(volume_size_bytes));
        }
        let region_shift = region_size_bytes.trailing_zeros();
        let region_count = volume_size_bytes.div_ceil(u64::from(region_size_bytes));
        if region_count > REGION_COUNT_MAX {
            return Err(GeometryError::TooManyRegions {
                volume_size_bytes,
                region_size_bytes,
            });
        }
        debug_assert!(region_count >= 1);
        debug_assert!((region_count - 1) << region_shift < volume_size_bytes);
        Ok(Geometry {
            volume_size_bytes,
            region_shift,
            region_count,
        })
    }

    /// Size of the volume in bytes.
    #[inline]
    pub const fn volume_size_bytes(&self) -> u64 {
        self.volume_size_bytes
    }

    /// Size of every region but possibly the last.
    #[inline]
    pub const fn region_size_bytes(&self) -> u32 {
        1 << self.region_shift
    }

    /// log2 of the region size.
    #[inline]
    pub const fn region_shift(&self) -> u32 {
        self.region_shift
    }

    /// Number of regions, the last possibly partial.
    #[inline]
    pub const fn region_count(&self) -> u64 {
        self.region_count
    }

    /// The region holding byte `offset` (which must be inside the volume).
    #[inline]
    pub const fn region_of(&self, offset: u64) -> u64 {
        offset >> self.region_shift
    }

    /// Byte offset of the first byte of `region`.
    #[inline]
    pub const fn region_start_bytes(&self, region: u64) -> u64 {
        region << self.region_shift
    }

    /// Byte length of `region`: the region size, or less for a partial last region.
    #[inline]
    pub fn region_len_bytes(&self, region: u64) -> u64 {
        debug_assert!(region < self.region_count);
        let start = self.region_start_bytes(region);
        (self.volume_size_bytes - start).min(u64::from(self.region_size_bytes()))
    }

    /// Byte range `[start, end)` covered by the regions `regions`.
    pub fn regions_byte_range(&self, regions: Range<u64>) -> Range<u64> {
        debug_assert!(regions.start <= regions.end && regions.end <= self.region_count);
        let start = self.region_start_bytes(regions.start);
        let end = self
            .region_start_bytes(regions.end)
            .min(self.volume_size_bytes);
        start..end
    }

    /// Checks a request's byte range; `Ok` means it is sector-aligned, non-empty and
    /// inside the volume.
    pub fn check(&self, offset: u64, len: u64) -> Result<(), RangeError> {
        if offset % SECTOR_SIZE_BYTES != 0 || len % SECTOR_SIZE_BYTES != 0 {
            return Err(RangeError::Misaligned { offset, len });
        }
        if len == 0 {
            return Err(RangeError::Empty(offset));
        }
        let Some(end) = offset.checked_add(len) else {
            return Err(RangeError::Overflow { offset, len });
        };
        if end > self.volume_size_bytes {
            return Err(RangeError::PastEnd {
                offset,
                len,
                volume_size_bytes: self.volume_size_bytes,
            });
        }
        Ok(())
    }

    /// Regions a checked range touches at all.
    #[inline]
    pub fn regions_touched(&self, offset: u64, len: u64) -> Range<u64> {
        debug_assert!(self.check(offset, len).is_ok());
        let first = self.region_of(offset);
        let last = self.region_of(offset + len - 1);
        first..last + 1
    }

    /// Regions a checked range covers completely. A partial last region counts as
    /// covered when the range reaches the end of the volume.
    pub fn regions_covered(&self, offset: u64, len: u64) -> Range<u64> {
        debug_assert!(self.check(offset, len).is_ok());
        let end = offset + len;
        let mask = u64::from(self.region_size_bytes()) - 1;
        let first = (offset + mask) >> self.region_shift;
        let last_exclusive = if end == self.volume_size_bytes {
            self.region_count
        } else {
            end >> self.region_shift
        };
        if first >= last_exclusive {
            first..first
        } else {
            first..last_exclusive
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_sizes_outside_the_allowed_powers_of_two_are_refused() {
        for bad in [0, 512, 2048, 4095, 4097, 6144, 2 << 20, u32::MAX] {
            assert_eq!(
                Geometry::new(1 << 20, bad),
                Err(GeometryError::RegionSize(bad))
            );
        }
        for shift in 12..=20 {
            assert!(Geometry::new(1 << 30, 1 << shift).is_ok());
        }
    }

    #[test]
    fn volume_sizes_must_be_whole_sectors() {
        assert_eq!(Geometry::new(0, 4096), Err(GeometryError::VolumeSize(0)));
        assert_eq!(
            Geometry::new(513, 4096),
            Err(GeometryError::VolumeSize(513))
        );
        let g = Geometry::new(512, 4096).unwrap();
        assert_eq!(g.region_count(), 1);
        assert_eq!(g.region_len_bytes(0), 512);
    }

    #[test]
    fn huge_volumes_are_refused_rather_than_allocated() {
        let err = Geometry::new(u64::MAX - 511, 4096).unwrap_err();
        assert!(matches!(err, GeometryError::TooManyRegions { .. }));
        assert!(
            Geometry::new(1 << 44, 4096).is_ok(),
            "16 TiB at 4 KiB is the bound"
        );
        assert!(Geometry::new((1 << 44) + 512, 4096).is_err());
    }

    #[test]
    fn last_region_may_be_partial() {
        let g = Geometry::new(10 * 4096 + 1024, 4096).unwrap();
        assert_eq!(g.region_count(), 11);
        assert_eq!(g.region_len_bytes(10), 1024);
        assert_eq!(g.region_len_bytes(9), 4096);
        assert_eq!(g.regions_byte_range(9..11), 9 * 4096..10 * 4096 + 1024);
    }

    #[test]
    fn each_bad_request_gets_its_own_error_and_status() {
        let g = Geometry::new(1 << 20, 4096).unwrap();
        let cases = [
            (g.check(100, 512), crate::Status::INVALID_PARAMETER),
            (g.check(512, 100), crate::Status::INVALID_PARAMETER),
            (g.check(512, 0), crate::Status::INVALID_BUFFER_SIZE),
            (
                g.check(u64::MAX - 511, 1024),
                crate::Status::INTEGER_OVERFLOW,
            ),
            (g.check(1 << 20, 512), crate::Status::NONEXISTENT_SECTOR),
            (
                g.check((1 << 20) - 512, 1024),
                crate::Status::NONEXISTENT_SECTOR,
            ),
        ];
        for (result, status) in cases {
            assert_eq!(result.unwrap_err().status(), status);
        }
        assert!(g.check((1 << 20) - 512, 512).is_ok());
    }

    #[test]
    fn touched_and_covered_regions_of_unaligned_ranges() {
        let g = Geometry::new(64 * 4096, 4096).unwrap();
        // Head and tail partial: touches 1..=4, covers 2..4.
        assert_eq!(g.regions_touched(4096 + 512, 3 * 4096), 1..5);
        assert_eq!(g.regions_covered(4096 + 512, 3 * 4096), 2..4);
        // Inside one region: touches it, covers none.
        assert_eq!(g.regions_touched(512, 1024), 0..1);
        assert!(g.regions_covered(512, 1024).is_empty());
        // Aligned: touched == covered.
        assert_eq!(g.regions_covered(8192, 8192), 2..4);
    }

    #[test]
    fn a_range_reaching_the_end_covers_the_partial_last_region() {
        let g = Geometry::new(4 * 4096 + 512, 4096).unwrap();
        assert_eq!(g.regions_covered(4 * 4096, 512), 4..5);
        assert_eq!(g.regions_covered(3 * 4096, 4096 + 512), 3..5);
    }
}
