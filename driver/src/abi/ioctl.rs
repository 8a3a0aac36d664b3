//! IOCTL codes: `CTL_CODE` as Windows defines it, and one code per message exchange.
//!
//! A control code packs four fields (winioctl.h / devioctl.h):
//!
//! ```text
//! bits 31..16  device type   0x0000-0x7FFF Microsoft, 0x8000-0xFFFF vendors (bit 31 "common")
//! bits 15..14  required access  FILE_ANY_ACCESS / FILE_READ_ACCESS / FILE_WRITE_ACCESS
//! bits 13..2   function      0x000-0x7FF Microsoft, 0x800-0xFFF vendors (bit 13 "custom")
//! bits  1..0   transfer method  BUFFERED / IN_DIRECT / OUT_DIRECT / NEITHER
//! ```
//!
//! How each exchange travels (the bytes are the same encoded messages in the simulator's
//! in-process channel; only the Windows plumbing differs):
//!
//! ```text
//! IOCTL                method      access   input buffer      output buffer
//! ATTACH               BUFFERED    write    Attach            -
//! GET_MISSING          BUFFERED    write    -                 MissingBatch  (pended: inverted call)
//! HYDRATE              IN_DIRECT   write    -                 Hydrate       (MDL, read by the driver)
//! FETCH_FAILED         BUFFERED    write    FetchFailed       -
//! QUERY_BITMAP         OUT_DIRECT  read     BitmapQuery       BitmapPage    (MDL, written by the driver)
//! GET_STATUS           BUFFERED    read     -                 StatusCounters
//! CONTROL              BUFFERED    write    Control           -
//! GET_RECORDS          OUT_DIRECT  write    -                 RecordBatch   (pended: inverted call)
//! ACK_RECORDS          BUFFERED    write    RecordAck         -
//! MARK                 BUFFERED    write    Mark              -
//! ```
//!
//! The three write-capture exchanges (T3, [`super::capture`]) have their codes here but
//! join [`Ioctl`] only when the filter dispatches them: the filter's control callback
//! matches every [`Ioctl`], and until it captures writes it completes their codes with
//! `STATUS_INVALID_DEVICE_REQUEST` like any unknown code.
//!
//! For `HYDRATE` the whole encoded message (header, fields and payload) is the buffer
//! DeviceIoControl calls the output buffer: with `METHOD_IN_DIRECT` the I/O manager
//! probes it for *read* access and describes it with an MDL, so the driver reads the
//! payload in place instead of the I/O manager copying up to 8 MiB into nonpaged pool.

use super::MessageKind;

/// The I/O manager copies the input buffer into a system buffer and copies the output
/// back on completion.
pub const METHOD_BUFFERED: u32 = 0;
/// Input buffered; the output buffer is locked and described by an MDL, probed for read
/// access (the driver reads data from it).
pub const METHOD_IN_DIRECT: u32 = 1;
/// Input buffered; the output buffer is locked and described by an MDL, probed for write
/// access (the driver writes data into it).
pub const METHOD_OUT_DIRECT: u32 = 2;
/// The driver gets the user-mode addresses as they are. Never used here: it would put
/// probing user memory in the filter's hands.
pub const METHOD_NEITHER: u32 = 3;

/// Any handle to the device may send the code.
pub const FILE_ANY_ACCESS: u32 = 0;
/// The handle must have been opened for reading.
pub const FILE_READ_ACCESS: u32 = 1;
/// The handle must have been opened for writing.
pub const FILE_WRITE_ACCESS: u32 = 2;

/// The control device's type. Types 0x8000-0xFFFF are reserved for vendors (bit 15 of
/// the type, bit 31 of the code, is the "common" bit). 0xA752 ends in 0x52, `'R'`, and
/// keeps clear of 0x8000, the value samples and many third-party drivers copy, so a code
/// meant for some other driver's device never decodes to one of ours in a trace.
pub const FILE_DEVICE_REHYDRATE: u32 = 0xA752;

/// First function code of the vendor range (bit 11 of the function, bit 13 of the code,
/// is the "custom" bit).
pub const FUNCTION_VENDOR_MIN: u32 = 0x800;
/// Function codes are 12 bits wide.
const FUNCTION_MAX: u32 = 0xFFF;

/// The Windows `CTL_CODE` macro: `(device_type << 16) | (access << 14) | (function << 2)
/// | method`. Like the macro it does not mask its arguments; the constants below are
/// checked at compile time to decode back to their parts.
pub const fn ctl_code(device_type: u32, function: u32, method: u32, access: u32) -> u32 {
    (device_type << 16) | (access << 14) | (function << 2) | method
}

/// The device type field of a control code (`DEVICE_TYPE_FROM_CTL_CODE`).
pub const fn ctl_device_type(code: u32) -> u32 {
    code >> 16
}

/// The required-access field of a control code.
pub const fn ctl_access(code: u32) -> u32 {
    (code >> 14) & 0x3
}

/// The function field of a control code.
pub const fn ctl_function(code: u32) -> u32 {
    (code >> 2) & FUNCTION_MAX
}

/// The transfer-method field of a control code (`METHOD_FROM_CTL_CODE`).
pub const fn ctl_method(code: u32) -> u32 {
    code & 0x3
}

// Mutating exchanges need a handle opened for writing; queries only for reading, so a
// status tool can open the control device read-only and cannot disturb a restore.

/// Function code of [`IOCTL_REHYDRATE_ATTACH`].
pub const FUNCTION_ATTACH: u32 = 0x801;
/// Function code of [`IOCTL_REHYDRATE_GET_MISSING`].
pub const FUNCTION_GET_MISSING: u32 = 0x802;
/// Function code of [`IOCTL_REHYDRATE_HYDRATE`].
pub const FUNCTION_HYDRATE: u32 = 0x803;
/// Function code of [`IOCTL_REHYDRATE_FETCH_FAILED`].
pub const FUNCTION_FETCH_FAILED: u32 = 0x804;
/// Function code of [`IOCTL_REHYDRATE_QUERY_BITMAP`].
pub const FUNCTION_QUERY_BITMAP: u32 = 0x805;
/// Function code of [`IOCTL_REHYDRATE_GET_STATUS`].
pub const FUNCTION_GET_STATUS: u32 = 0x806;
/// Function code of [`IOCTL_REHYDRATE_CONTROL`].
pub const FUNCTION_CONTROL: u32 = 0x807;
/// Function code of [`IOCTL_REHYDRATE_GET_RECORDS`].
pub const FUNCTION_GET_RECORDS: u32 = 0x808;
/// Function code of [`IOCTL_REHYDRATE_ACK_RECORDS`].
pub const FUNCTION_ACK_RECORDS: u32 = 0x809;
/// Function code of [`IOCTL_REHYDRATE_MARK`].
pub const FUNCTION_MARK: u32 = 0x80A;

/// Service → driver: [`Attach`](super::Attach). Buffered: 56 bytes.
pub const IOCTL_REHYDRATE_ATTACH: u32 = ctl_code(
    FILE_DEVICE_REHYDRATE,
    FUNCTION_ATTACH,
    METHOD_BUFFERED,
    FILE_WRITE_ACCESS,
);

/// The inverted call: the service sends it with an empty input and an output buffer of
/// [`MISSING_BATCH_MAX_BYTES`](super::MISSING_BATCH_MAX_BYTES); the driver parks it and
/// completes it with a [`MissingBatch`](super::MissingBatch) when regions are wanted.
/// Buffered, because the request may stay parked for hours: direct I/O would keep the
/// service's pages locked that long, while a 6 KiB system buffer costs nothing. Write
/// access because taking a batch consumes the driver's queue of wanted ranges.
pub const IOCTL_REHYDRATE_GET_MISSING: u32 = ctl_code(
    FILE_DEVICE_REHYDRATE,
    FUNCTION_GET_MISSING,
    METHOD_BUFFERED,
    FILE_WRITE_ACCESS,
);

/// Service → driver: [`Hydrate`](super::Hydrate), the whole message in the direct
/// (MDL) buffer. `METHOD_IN_DIRECT`: payloads reach 8 MiB, and the driver reads them in
/// place (and can hand the pages to the lower write) instead of the I/O manager copying
/// them into nonpaged pool first.
pub const IOCTL_REHYDRATE_HYDRATE: u32 = ctl_code(
    FILE_DEVICE_REHYDRATE,
    FUNCTION_HYDRATE,
    METHOD_IN_DIRECT,
    FILE_WRITE_ACCESS,
);

/// Service → driver: [`FetchFailed`](super::FetchFailed). Buffered: 32 bytes.
pub const IOCTL_REHYDRATE_FETCH_FAILED: u32 = ctl_code(
    FILE_DEVICE_REHYDRATE,
    FUNCTION_FETCH_FAILED,
    METHOD_BUFFERED,
    FILE_WRITE_ACCESS,
);

/// [`BitmapQuery`](super::BitmapQuery) in, [`BitmapPage`](super::BitmapPage) out.
/// `METHOD_OUT_DIRECT`: a page is up to 32 KiB, written straight into the service's
/// locked pages; the request completes at once, so the pages are not held locked long.
pub const IOCTL_REHYDRATE_QUERY_BITMAP: u32 = ctl_code(
    FILE_DEVICE_REHYDRATE,
    FUNCTION_QUERY_BITMAP,
    METHOD_OUT_DIRECT,
    FILE_READ_ACCESS,
);

/// Empty input, [`StatusCounters`](super::StatusCounters) out. Buffered: 80 bytes.
pub const IOCTL_REHYDRATE_GET_STATUS: u32 = ctl_code(
    FILE_DEVICE_REHYDRATE,
    FUNCTION_GET_STATUS,
    METHOD_BUFFERED,
    FILE_READ_ACCESS,
);

/// Service → driver: [`Control`](super::Control). Buffered: 16 bytes.
pub const IOCTL_REHYDRATE_CONTROL: u32 = ctl_code(
    FILE_DEVICE_REHYDRATE,
    FUNCTION_CONTROL,
    METHOD_BUFFERED,
    FILE_WRITE_ACCESS,
);

/// Write capture's inverted call: the service sends it with an empty input and an output
/// buffer of [`RECORD_BATCH_MAX_BYTES`](super::RECORD_BATCH_MAX_BYTES); the driver parks
/// it and completes it with a [`RecordBatch`](super::RecordBatch) once records wait.
/// `METHOD_OUT_DIRECT`: the batch carries every captured write's data, so the driver
/// writes it straight into the service's locked pages instead of a system buffer the
/// I/O manager then copies; a parked request keeps its 4 MiB locked, which a busy volume
/// completes at once and an idle one can afford. Write access: taking a batch moves the
/// driver's cursor of records sent.
pub const IOCTL_REHYDRATE_GET_RECORDS: u32 = ctl_code(
    FILE_DEVICE_REHYDRATE,
    FUNCTION_GET_RECORDS,
    METHOD_OUT_DIRECT,
    FILE_WRITE_ACCESS,
);

/// Service → driver: [`RecordAck`](super::RecordAck). Buffered: 16 bytes.
pub const IOCTL_REHYDRATE_ACK_RECORDS: u32 = ctl_code(
    FILE_DEVICE_REHYDRATE,
    FUNCTION_ACK_RECORDS,
    METHOD_BUFFERED,
    FILE_WRITE_ACCESS,
);

/// Service → driver: [`Mark`](super::Mark). Buffered: 80 bytes.
pub const IOCTL_REHYDRATE_MARK: u32 = ctl_code(
    FILE_DEVICE_REHYDRATE,
    FUNCTION_MARK,
    METHOD_BUFFERED,
    FILE_WRITE_ACCESS,
);

/// The control codes this driver answers, for dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Ioctl {
    /// [`IOCTL_REHYDRATE_ATTACH`].
    Attach = IOCTL_REHYDRATE_ATTACH,
    /// [`IOCTL_REHYDRATE_GET_MISSING`].
    GetMissing = IOCTL_REHYDRATE_GET_MISSING,
    /// [`IOCTL_REHYDRATE_HYDRATE`].
    Hydrate = IOCTL_REHYDRATE_HYDRATE,
    /// [`IOCTL_REHYDRATE_FETCH_FAILED`].
    FetchFailed = IOCTL_REHYDRATE_FETCH_FAILED,
    /// [`IOCTL_REHYDRATE_QUERY_BITMAP`].
    QueryBitmap = IOCTL_REHYDRATE_QUERY_BITMAP,
    /// [`IOCTL_REHYDRATE_GET_STATUS`].
    GetStatus = IOCTL_REHYDRATE_GET_STATUS,
    /// [`IOCTL_REHYDRATE_CONTROL`].
    Control = IOCTL_REHYDRATE_CONTROL,
}

impl Ioctl {
    /// Every code, in function order.
    pub const ALL: [Ioctl; 7] = [
        Ioctl::Attach,
        Ioctl::GetMissing,
        Ioctl::Hydrate,
        Ioctl::FetchFailed,
        Ioctl::QueryBitmap,
        Ioctl::GetStatus,
        Ioctl::Control,
    ];

    /// The control code.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The exchange a control code names; `None` for codes this driver does not answer
    /// (the shell completes those with `STATUS_INVALID_DEVICE_REQUEST`).
    pub const fn from_code(code: u32) -> Option<Ioctl> {
        let mut i = 0;
        while i < Ioctl::ALL.len() {
            if Ioctl::ALL[i] as u32 == code {
                return Some(Ioctl::ALL[i]);
            }
            i += 1;
        }
        None
    }

    /// The message the service sends in the request, if any. The driver decodes the
    /// request's bytes with this kind expected.
    pub const fn input_kind(self) -> Option<MessageKind> {
        match self {
            Ioctl::Attach => Some(MessageKind::Attach),
            Ioctl::Hydrate => Some(MessageKind::Hydrate),
            Ioctl::FetchFailed => Some(MessageKind::FetchFailed),
            Ioctl::QueryBitmap => Some(MessageKind::BitmapQuery),
            Ioctl::Control => Some(MessageKind::Control),
            Ioctl::GetMissing | Ioctl::GetStatus => None,
        }
    }

    /// The message the driver completes the request with, if any.
    pub const fn output_kind(self) -> Option<MessageKind> {
        match self {
            Ioctl::GetMissing => Some(MessageKind::MissingBatch),
            Ioctl::QueryBitmap => Some(MessageKind::BitmapPage),
            Ioctl::GetStatus => Some(MessageKind::StatusCounters),
            Ioctl::Attach | Ioctl::Hydrate | Ioctl::FetchFailed | Ioctl::Control => None,
        }
    }

    /// Output buffer the service must supply: the largest answer this code can carry.
    pub const fn output_max_bytes(self) -> usize {
        match self.output_kind() {
            Some(kind) => kind.max_bytes(),
            None => 0,
        }
    }
}

const fn all_distinct(codes: &[Ioctl]) -> bool {
    let mut i = 0;
    while i < codes.len() {
        let mut j = i + 1;
        while j < codes.len() {
            if codes[i] as u32 == codes[j] as u32 {
                return false;
            }
            j += 1;
        }
        i += 1;
    }
    true
}

const fn decodes_to(code: u32, function: u32, method: u32, access: u32) -> bool {
    ctl_device_type(code) == FILE_DEVICE_REHYDRATE
        && ctl_function(code) == function
        && ctl_method(code) == method
        && ctl_access(code) == access
}

const _: () = assert!(FILE_DEVICE_REHYDRATE >= 0x8000 && FILE_DEVICE_REHYDRATE <= 0xFFFF);
const _: () = assert!(all_distinct(&Ioctl::ALL));
const _: () = assert!(FUNCTION_VENDOR_MIN <= FUNCTION_ATTACH && FUNCTION_MARK <= FUNCTION_MAX);
const _: () = assert!(decodes_to(
    IOCTL_REHYDRATE_GET_RECORDS,
    FUNCTION_GET_RECORDS,
    METHOD_OUT_DIRECT,
    FILE_WRITE_ACCESS
));
const _: () = assert!(decodes_to(
    IOCTL_REHYDRATE_ACK_RECORDS,
    FUNCTION_ACK_RECORDS,
    METHOD_BUFFERED,
    FILE_WRITE_ACCESS
));
const _: () = assert!(decodes_to(
    IOCTL_REHYDRATE_MARK,
    FUNCTION_MARK,
    METHOD_BUFFERED,
    FILE_WRITE_ACCESS
));
const _: () = assert!(decodes_to(
    IOCTL_REHYDRATE_ATTACH,
    FUNCTION_ATTACH,
    METHOD_BUFFERED,
    FILE_WRITE_ACCESS
));
const _: () = assert!(decodes_to(
    IOCTL_REHYDRATE_GET_MISSING,
    FUNCTION_GET_MISSING,
    METHOD_BUFFERED,
    FILE_WRITE_ACCESS
));
const _: () = assert!(decodes_to(
    IOCTL_REHYDRATE_HYDRATE,
    FUNCTION_HYDRATE,
    METHOD_IN_DIRECT,
    FILE_WRITE_ACCESS
));
const _: () = assert!(decodes_to(
    IOCTL_REHYDRATE_FETCH_FAILED,
    FUNCTION_FETCH_FAILED,
    METHOD_BUFFERED,
    FILE_WRITE_ACCESS
));
const _: () = assert!(decodes_to(
    IOCTL_REHYDRATE_QUERY_BITMAP,
    FUNCTION_QUERY_BITMAP,
    METHOD_OUT_DIRECT,
    FILE_READ_ACCESS
));
const _: () = assert!(decodes_to(
    IOCTL_REHYDRATE_GET_STATUS,
    FUNCTION_GET_STATUS,
    METHOD_BUFFERED,
    FILE_READ_ACCESS
));
const _: () = assert!(decodes_to(
    IOCTL_REHYDRATE_CONTROL,
    FUNCTION_CONTROL,
    METHOD_BUFFERED,
    FILE_WRITE_ACCESS
));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctl_code_matches_known_windows_codes() {
        // IOCTL_DISK_GET_DRIVE_GEOMETRY = CTL_CODE(IOCTL_DISK_BASE=7, 0, BUFFERED, ANY).
        assert_eq!(
            ctl_code(0x7, 0, METHOD_BUFFERED, FILE_ANY_ACCESS),
            0x0007_0000
        );
        // IOCTL_VOLUME_GET_VOLUME_DISK_EXTENTS = CTL_CODE('V'=0x56, 0, BUFFERED, ANY).
        assert_eq!(
            ctl_code(0x56, 0, METHOD_BUFFERED, FILE_ANY_ACCESS),
            0x0056_0000
        );
        // IOCTL_DISK_GET_LENGTH_INFO = CTL_CODE(7, 0x17, BUFFERED, READ).
        assert_eq!(
            ctl_code(0x7, 0x17, METHOD_BUFFERED, FILE_READ_ACCESS),
            0x0007_405C
        );
        // IOCTL_STORAGE_QUERY_PROPERTY = CTL_CODE(0x2D, 0x500, BUFFERED, ANY).
        assert_eq!(
            ctl_code(0x2D, 0x500, METHOD_BUFFERED, FILE_ANY_ACCESS),
            0x002D_1400
        );
    }

    #[test]
    fn codes_are_vendor_codes_and_map_back() {
        for ioctl in Ioctl::ALL {
            let code = ioctl.code();
            assert_eq!(Ioctl::from_code(code), Some(ioctl));
            assert_ne!(code & (1 << 31), 0, "common bit: {code:#x}");
            assert_ne!(code & (1 << 13), 0, "custom bit: {code:#x}");
            assert_ne!(ctl_method(code), METHOD_NEITHER);
            assert!(ioctl.input_kind().is_some() || ioctl.output_kind().is_some());
        }
        assert_eq!(Ioctl::from_code(0), None);
        // The capture codes are distinct from every dispatched one (they join `Ioctl`
        // when the filter handles them).
        for code in [
            IOCTL_REHYDRATE_GET_RECORDS,
            IOCTL_REHYDRATE_ACK_RECORDS,
            IOCTL_REHYDRATE_MARK,
        ] {
            assert_eq!(Ioctl::from_code(code), None, "{code:#x}");
            assert_ne!(code & (1 << 13), 0, "custom bit: {code:#x}");
        }
        assert_eq!(Ioctl::from_code(IOCTL_REHYDRATE_ATTACH ^ 1), None);
    }

    #[test]
    fn output_buffers_fit_the_largest_answer() {
        assert_eq!(
            Ioctl::GetMissing.output_max_bytes(),
            super::super::MISSING_BATCH_MAX_BYTES
        );
        assert_eq!(
            Ioctl::QueryBitmap.output_max_bytes(),
            super::super::BITMAP_PAGE_MAX_BYTES
        );
        assert_eq!(
            Ioctl::GetStatus.output_max_bytes(),
            super::super::STATUS_COUNTERS_BYTES
        );
        assert_eq!(Ioctl::Hydrate.output_max_bytes(), 0);
    }
}
