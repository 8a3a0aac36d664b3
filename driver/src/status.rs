//! Completion statuses the filter gives requests, as NTSTATUS values.
//!
//! The engine never invents a status the kernel would not understand: every value here
//! is a real NTSTATUS, so the KMDF shell passes it to `WdfRequestComplete` unchanged and
//! the simulator's file system sees what a Windows file system would.

/// An NTSTATUS value. Severity is in the top two bits; `is_error` checks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct Status(pub u32);

impl Status {
    /// The request succeeded.
    pub const SUCCESS: Status = Status(0x0000_0000);
    /// The request is pended; it completes later.
    pub const PENDING: Status = Status(0x0000_0103);
    /// Offset or length is not a multiple of the 512-byte sector.
    pub const INVALID_PARAMETER: Status = Status(0xC000_000D);
    /// A zero-length read, write or discard.
    pub const INVALID_BUFFER_SIZE: Status = Status(0xC000_0206);
    /// The range ends past the end of the volume.
    pub const NONEXISTENT_SECTOR: Status = Status(0xC000_0015);
    /// Offset plus length overflows 64 bits.
    pub const INTEGER_OVERFLOW: Status = Status(0xC000_0095);
    /// The backup could not be reached before the fetch deadline.
    pub const IO_TIMEOUT: Status = Status(0xC000_00B5);
    /// Data from the backup failed verification.
    pub const CRC_ERROR: Status = Status(0xC000_003F);
    /// The backup does not hold the range (it is smaller than the volume).
    pub const DEVICE_DATA_ERROR: Status = Status(0xC000_009C);
    /// The service is detached or the restore was cancelled.
    pub const DEVICE_NOT_READY: Status = Status(0xC000_00A3);
    /// The held-request queue is full; the file system retries.
    pub const INSUFFICIENT_RESOURCES: Status = Status(0xC000_009A);
    /// The lower device failed the I/O.
    pub const IO_DEVICE_ERROR: Status = Status(0xC000_0185);
    /// The request was cancelled.
    pub const CANCELLED: Status = Status(0xC000_0120);
    /// The request is not one this filter or the device supports.
    pub const INVALID_DEVICE_REQUEST: Status = Status(0xC000_0010);
    /// A buffer was too small for the answer.
    pub const BUFFER_TOO_SMALL: Status = Status(0xC000_0023);
    /// The request is valid but not supported now (an offloaded data transfer while the
    /// volume is restoring: the caller falls back to normal reads and writes).
    pub const NOT_SUPPORTED: Status = Status(0xC000_00BB);
    /// The filter refused the volume it started on: it is not the one the restore
    /// writes (`STATUS_WRONG_VOLUME`). The service's requests get it; the volume's own
    /// I/O passes by untouched.
    pub const WRONG_VOLUME: Status = Status(0xC000_0012);

    /// True for error severity (top two bits `11`).
    #[inline]
    pub const fn is_error(self) -> bool {
        self.0 >> 30 == 0b11
    }

    /// True for success and informational severities.
    #[inline]
    pub const fn is_success(self) -> bool {
        self.0 >> 31 == 0
    }

    /// One bit per error status an injected fault can cause (0 for every other status),
    /// for oracles that record which failures a request may meet.
    pub const fn fault_bit(self) -> u16 {
        match self {
            Status::CANCELLED => 1,
            Status::IO_TIMEOUT => 2,
            Status::CRC_ERROR => 4,
            Status::DEVICE_DATA_ERROR => 8,
            Status::IO_DEVICE_ERROR => 16,
            Status::DEVICE_NOT_READY => 32,
            Status::INSUFFICIENT_RESOURCES => 64,
            _ => 0,
        }
    }
}

/// Why the service could not fetch a range. Crosses the ABI as a `u32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum FailReason {
    /// The backup was unreachable past the fetch deadline.
    Unreachable = 1,
    /// Data arrived but failed verification every time it was fetched.
    Corrupt = 2,
    /// The backup does not cover the range.
    OutOfRange = 3,
    /// The restore was cancelled or the service is detaching.
    Cancelled = 4,
    /// Any other failure of the source.
    Other = 5,
}

impl FailReason {
    /// Decodes the ABI value; unknown values are `None` (the ABI decoder turns that into
    /// a typed error).
    pub const fn from_u32(value: u32) -> Option<FailReason> {
        match value {
            1 => Some(FailReason::Unreachable),
            2 => Some(FailReason::Corrupt),
            3 => Some(FailReason::OutOfRange),
            4 => Some(FailReason::Cancelled),
            5 => Some(FailReason::Other),
            _ => None,
        }
    }

    /// The status a held request waiting on a range that failed for this reason gets.
    pub const fn status(self) -> Status {
        match self {
            FailReason::Unreachable => Status::IO_TIMEOUT,
            FailReason::Corrupt => Status::CRC_ERROR,
            FailReason::OutOfRange => Status::DEVICE_DATA_ERROR,
            FailReason::Cancelled => Status::DEVICE_NOT_READY,
            FailReason::Other => Status::IO_DEVICE_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_are_read_from_the_top_bits() {
        assert!(Status::SUCCESS.is_success());
        assert!(Status::PENDING.is_success());
        assert!(!Status::PENDING.is_error());
        for s in [
            Status::INVALID_PARAMETER,
            Status::INVALID_BUFFER_SIZE,
            Status::NONEXISTENT_SECTOR,
            Status::INTEGER_OVERFLOW,
            Status::IO_TIMEOUT,
            Status::CRC_ERROR,
            Status::NOT_SUPPORTED,
            Status::WRONG_VOLUME,
            Status::CANCELLED,
        ] {
            assert!(s.is_error(), "{s:?}");
            assert!(!s.is_success(), "{s:?}");
        }
    }

    #[test]
    fn fail_reasons_round_trip_and_unknown_values_are_rejected() {
        for r in [
            FailReason::Unreachable,
            FailReason::Corrupt,
            FailReason::OutOfRange,
            FailReason::Cancelled,
            FailReason::Other,
        ] {
            assert_eq!(FailReason::from_u32(r as u32), Some(r));
            assert!(r.status().is_error());
        }
        assert_eq!(FailReason::from_u32(0), None);
        assert_eq!(FailReason::from_u32(6), None);
        assert_eq!(FailReason::from_u32(u32::MAX), None);
    }
}
