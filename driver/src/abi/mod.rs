//! The driver/service ABI: what crosses between the kernel filter and the user-mode
//! service.
//!
//! On Windows the bytes travel through `DeviceIoControl` on the filter's control device
//! (codes in [`ioctl`]); in the simulator and in the Linux restore they travel through an
//! in-process channel. Both carry the same encoded messages, so the decoders the kernel
//! runs are the ones CI runs.
//!
//! Every message is little-endian, encoded and decoded field by field (never by
//! reinterpreting memory: the crate forbids `unsafe`), and starts with one header:
//!
//! ```text
//! offset size field
//!      0    2 abi_version   ABI_VERSION; a mismatched service/driver pair stops here
//!      2    2 kind          MessageKind
//!      4    4 total_len     bytes of the whole message, header included; must equal
//!                           the buffer length exactly
//!      8      body          per kind, laid out in each message's module
//! ```
//!
//! Every body field sits at its natural alignment (u64 at a multiple of 8), and every
//! message length is a multiple of 8, so a buffer the I/O manager allocated can be read
//! field by field in C too. Reserved fields must be zero: a later version can give them
//! a meaning that an older peer then refuses instead of ignoring.
//!
//! Decoding checks, in this order: the buffer holds a header and is no longer than
//! [`MESSAGE_MAX_BYTES`]; the version; the kind (known, then the one expected); the
//! header's total length against the buffer; the body's length against the kind's fixed
//! size or its count; then every field (reserved zero, flags known, enums known, ranges
//! aligned, counts bounded, lengths consistent). Every failure is an [`AbiError`] naming
//! the numbers; no input panics and none allocates (DESIGN.md rule 7).
//!
//! Encoding writes into a caller's buffer (the kernel writes into the request's output
//! buffer) and never allocates. It validates the message with the same checks the decoder
//! applies, so a peer never receives bytes its decoder would refuse.

mod bitmap;
mod capture;
mod fixed;
mod hydrate;
pub mod ioctl;
mod missing;
mod mode;
mod refusal;
mod wire;

pub use bitmap::{BitmapPage, BitmapQuery};
#[cfg(any(test, feature = "testing"))]
pub use capture::batch_of;
pub use capture::{
    record_bytes, CaptureRecord, Label, Mark, RecordAck, RecordBatch, RecordBatchWriter,
    RecordFlags, RecordKind, MARK_LABEL_MAX_BYTES,
};
pub use fixed::{Attach, Control, ControlCommand, DriverState, FetchFailed, StatusCounters};
pub use hydrate::{Hydrate, HydrateFlags};
pub use ioctl::{
    ctl_code, Ioctl, FILE_ANY_ACCESS, FILE_DEVICE_REHYDRATE, FILE_READ_ACCESS, FILE_WRITE_ACCESS,
    IOCTL_REHYDRATE_ACK_RECORDS, IOCTL_REHYDRATE_ATTACH, IOCTL_REHYDRATE_CONTROL,
    IOCTL_REHYDRATE_FETCH_FAILED, IOCTL_REHYDRATE_GET_MISSING, IOCTL_REHYDRATE_GET_RECORDS,
    IOCTL_REHYDRATE_GET_STATUS, IOCTL_REHYDRATE_HYDRATE, IOCTL_REHYDRATE_MARK,
    IOCTL_REHYDRATE_QUERY_BITMAP, METHOD_BUFFERED, METHOD_IN_DIRECT, METHOD_NEITHER,
    METHOD_OUT_DIRECT,
};
pub use missing::{MissingBatch, MissingFlags, MissingRange};
pub use mode::{MapSelector, RestoreMode};
pub use refusal::Refusal;

use crate::geometry::{GeometryError, RangeError, REGION_SIZE_MAX_BYTES, SECTOR_SIZE_BYTES};
use crate::status::Status;

/// The ABI version this build speaks. Bumped on any change to a layout or a meaning.
/// Version 2: the attach names the mode (in place or overlay), bitmap queries and
/// pages name their map, two control commands start the overlay's cutover, and the
/// counters say the mode, the overlay's regions and why a filter refused its volume.
/// Version 1 peers are refused ([`AbiError::Outdated`]).
pub const ABI_VERSION: u16 = 2;

/// Bytes of the common header.
pub const HEADER_BYTES: usize = 8;

/// Largest number of ranges in one [`MissingBatch`].
pub const MISSING_BATCH_MAX: usize = 256;
/// Bytes of a [`MissingBatch`] before its entries.
pub const MISSING_BATCH_PREFIX_BYTES: usize = 16;
/// Bytes of one [`MissingRange`] entry.
pub const MISSING_RANGE_BYTES: usize = 24;
/// Largest [`MissingBatch`]: the output buffer the service gives `GET_MISSING`.
pub const MISSING_BATCH_MAX_BYTES: usize =
    MISSING_BATCH_PREFIX_BYTES + MISSING_BATCH_MAX * MISSING_RANGE_BYTES;

/// Largest hydrate: 8 MiB, eight 1 MiB regions or 2048 4 KiB ones per request, enough to
/// keep a network link busy without holding a large buffer per request in flight.
pub const HYDRATE_MAX_BYTES: u32 = 8 * 1024 * 1024;
/// Bytes of a [`Hydrate`] before its payload; the payload starts here.
pub const HYDRATE_PREFIX_BYTES: usize = 32;

/// Largest number of bitmap words one [`BitmapQuery`] asks for and one [`BitmapPage`]
/// carries: 4096 words = 262,144 regions = 1 GiB of volume at 4 KiB regions.
pub const BITMAP_PAGE_WORDS_MAX: u32 = 4096;
/// Bytes of a [`BitmapPage`] before its words.
pub const BITMAP_PAGE_PREFIX_BYTES: usize = 40;
/// Largest [`BitmapPage`]: the output buffer the service gives `QUERY_BITMAP`.
pub const BITMAP_PAGE_MAX_BYTES: usize =
    BITMAP_PAGE_PREFIX_BYTES + BITMAP_PAGE_WORDS_MAX as usize * 8;

/// Bytes of an [`Attach`].
pub const ATTACH_BYTES: usize = 56;
/// Bytes of a [`FetchFailed`].
pub const FETCH_FAILED_BYTES: usize = 32;
/// Bytes of a [`BitmapQuery`].
pub const BITMAP_QUERY_BYTES: usize = 24;
/// Bytes of a [`StatusCounters`].
pub const STATUS_COUNTERS_BYTES: usize = 96;
/// Bytes of a [`Control`].
pub const CONTROL_BYTES: usize = 16;

/// Largest number of records in one [`RecordBatch`].
pub const RECORD_BATCH_MAX: usize = 4096;
/// Largest [`RecordBatch`]: the output buffer the service gives `GET_RECORDS`. Four
/// 1 MiB writes per completion keep a journal busy without pinning much memory.
pub const RECORD_BATCH_MAX_BYTES: usize = 4 * 1024 * 1024 + 4096;
/// Bytes of a [`RecordBatch`] before its records.
pub const RECORD_BATCH_PREFIX_BYTES: usize = 16;
/// Bytes of a record before its payload.
pub const RECORD_HEADER_BYTES: usize = 40;
/// Largest payload of one record: a longer write is captured as several records.
pub const RECORD_PAYLOAD_MAX_BYTES: usize = 1024 * 1024;
/// Bytes of a [`RecordAck`].
pub const RECORD_ACK_BYTES: usize = 16;
/// Bytes of a [`Mark`].
pub const MARK_BYTES: usize = 80;

/// Longest buffer any message may be: a full hydrate. Anything longer is refused before
/// a single field is read.
pub const MESSAGE_MAX_BYTES: usize = HYDRATE_PREFIX_BYTES + HYDRATE_MAX_BYTES as usize;

const _: () = assert!(core::mem::size_of::<Header>() == HEADER_BYTES);
const _: () = assert!(HYDRATE_MAX_BYTES as u64 % SECTOR_SIZE_BYTES == 0);
const _: () = assert!(
    HYDRATE_MAX_BYTES >= REGION_SIZE_MAX_BYTES,
    "one region fits one hydrate"
);
const _: () = assert!(MESSAGE_MAX_BYTES <= u32::MAX as usize, "total_len is a u32");
const _: () = assert!(MISSING_BATCH_MAX >= 1 && MISSING_BATCH_MAX <= u32::MAX as usize);
const _: () = assert!(BITMAP_PAGE_WORDS_MAX >= 1);
const _: () = assert!(MISSING_BATCH_MAX_BYTES <= MESSAGE_MAX_BYTES);
const _: () = assert!(BITMAP_PAGE_MAX_BYTES <= MESSAGE_MAX_BYTES);
// Every fixed part is whole u64s, so the bodies after them stay 8-byte aligned.
const _: () = assert!(HEADER_BYTES % 8 == 0);
const _: () = assert!(MISSING_BATCH_PREFIX_BYTES % 8 == 0 && MISSING_RANGE_BYTES % 8 == 0);
const _: () = assert!(HYDRATE_PREFIX_BYTES % 8 == 0 && BITMAP_PAGE_PREFIX_BYTES % 8 == 0);
const _: () = assert!(ATTACH_BYTES % 8 == 0 && FETCH_FAILED_BYTES % 8 == 0);
const _: () = assert!(BITMAP_QUERY_BYTES % 8 == 0 && STATUS_COUNTERS_BYTES % 8 == 0);
const _: () = assert!(CONTROL_BYTES % 8 == 0);
const _: () = assert!(RECORD_BATCH_PREFIX_BYTES % 8 == 0 && RECORD_HEADER_BYTES % 8 == 0);
const _: () = assert!(RECORD_ACK_BYTES % 8 == 0 && MARK_BYTES % 8 == 0);
const _: () = assert!(RECORD_BATCH_MAX_BYTES <= MESSAGE_MAX_BYTES);
const _: () = assert!(RECORD_BATCH_MAX >= 1 && RECORD_BATCH_MAX <= u32::MAX as usize);
const _: () = assert!(RECORD_PAYLOAD_MAX_BYTES as u64 % SECTOR_SIZE_BYTES == 0);

/// What a message is. Crosses the ABI as a `u16`; zero is never a kind, so an all-zero
/// buffer is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MessageKind {
    /// [`Attach`]: service → driver.
    Attach = 1,
    /// [`MissingBatch`]: driver → service.
    MissingBatch = 2,
    /// [`Hydrate`]: service → driver.
    Hydrate = 3,
    /// [`FetchFailed`]: service → driver.
    FetchFailed = 4,
    /// [`BitmapQuery`]: service → driver.
    BitmapQuery = 5,
    /// [`BitmapPage`]: driver → service.
    BitmapPage = 6,
    /// [`StatusCounters`]: driver → service.
    StatusCounters = 7,
    /// [`Control`]: service → driver.
    Control = 8,
    /// [`RecordBatch`]: driver → service.
    RecordBatch = 9,
    /// [`RecordAck`]: service → driver.
    RecordAck = 10,
    /// [`Mark`]: service → driver.
    Mark = 11,
}

impl MessageKind {
    /// Decodes the ABI value; unknown values are `None`.
    pub const fn from_u16(value: u16) -> Option<MessageKind> {
        match value {
            1 => Some(MessageKind::Attach),
            2 => Some(MessageKind::MissingBatch),
            3 => Some(MessageKind::Hydrate),
            4 => Some(MessageKind::FetchFailed),
            5 => Some(MessageKind::BitmapQuery),
            6 => Some(MessageKind::BitmapPage),
            7 => Some(MessageKind::StatusCounters),
            8 => Some(MessageKind::Control),
            9 => Some(MessageKind::RecordBatch),
            10 => Some(MessageKind::RecordAck),
            11 => Some(MessageKind::Mark),
            _ => None,
        }
    }

    /// The longest encoding of this kind, header included.
    pub const fn max_bytes(self) -> usize {
        match self {
            MessageKind::Attach => ATTACH_BYTES,
            MessageKind::MissingBatch => MISSING_BATCH_MAX_BYTES,
            MessageKind::Hydrate => MESSAGE_MAX_BYTES,
            MessageKind::FetchFailed => FETCH_FAILED_BYTES,
            MessageKind::BitmapQuery => BITMAP_QUERY_BYTES,
            MessageKind::BitmapPage => BITMAP_PAGE_MAX_BYTES,
            MessageKind::StatusCounters => STATUS_COUNTERS_BYTES,
            MessageKind::Control => CONTROL_BYTES,
            MessageKind::RecordBatch => RECORD_BATCH_MAX_BYTES,
            MessageKind::RecordAck => RECORD_ACK_BYTES,
            MessageKind::Mark => MARK_BYTES,
        }
    }
}

/// The common header, decoded and checked. Layout in the module comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Header {
    /// Always [`ABI_VERSION`] once decoded.
    pub abi_version: u16,
    /// What the body is.
    pub kind: MessageKind,
    /// Bytes of the whole message; equal to the buffer length once decoded.
    pub total_len: u32,
}

impl Header {
    /// Decodes and checks the header of a whole message: length bounds, version, kind,
    /// and total length equal to `bytes.len()`. The body is not looked at.
    pub fn decode(bytes: &[u8]) -> Result<Header, AbiError> {
        if bytes.len() < HEADER_BYTES {
            return Err(AbiError::Short {
                needed: HEADER_BYTES,
                got: bytes.len(),
            });
        }
        if bytes.len() > MESSAGE_MAX_BYTES {
            return Err(AbiError::TooLong {
                got: bytes.len(),
                max: MESSAGE_MAX_BYTES,
            });
        }
        let mut r = wire::Reader::new(bytes);
        let abi_version = r.u16()?;
        let kind = r.u16()?;
        let total_len = r.u32()?;
        if abi_version < ABI_VERSION && abi_version != 0 {
            return Err(AbiError::Outdated {
                got: abi_version,
                expected: ABI_VERSION,
            });
        }
        if abi_version != ABI_VERSION {
            return Err(AbiError::Version {
                got: abi_version,
                expected: ABI_VERSION,
            });
        }
        let kind = MessageKind::from_u16(kind).ok_or(AbiError::UnknownKind(kind))?;
        if usize::try_from(total_len).ok() != Some(bytes.len()) {
            return Err(AbiError::TotalLength {
                header: total_len,
                buffer: bytes.len(),
            });
        }
        Ok(Header {
            abi_version,
            kind,
            total_len,
        })
    }
}

/// Everything that can be wrong with ABI bytes, or with a message about to be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AbiError {
    /// The buffer ends before the header or a field it must hold.
    #[error("buffer of {got} bytes is shorter than the {needed} bytes needed")]
    Short {
        /// Bytes needed.
        needed: usize,
        /// Bytes in the buffer.
        got: usize,
    },
    /// The buffer is longer than any message may be.
    #[error("buffer of {got} bytes is longer than the {max}-byte message limit")]
    TooLong {
        /// Bytes in the buffer.
        got: usize,
        /// [`MESSAGE_MAX_BYTES`].
        max: usize,
    },
    /// The output buffer cannot hold the encoded message; nothing was written.
    #[error("output buffer of {got} bytes cannot hold the {needed}-byte message")]
    BufferTooSmall {
        /// Bytes the message needs.
        needed: usize,
        /// Bytes in the output buffer.
        got: usize,
    },
    /// The header carries an older ABI version: a driver and a service of different
    /// releases; both must be updated together.
    #[error("ABI version {got} is older than this build's version {expected}: update the driver and the service together")]
    Outdated {
        /// Version in the header.
        got: u16,
        /// [`ABI_VERSION`].
        expected: u16,
    },
    /// The header carries an ABI version this build does not speak.
    #[error("ABI version {got} is not the supported version {expected}")]
    Version {
        /// Version in the header.
        got: u16,
        /// [`ABI_VERSION`].
        expected: u16,
    },
    /// The header carries a message kind this ABI does not define.
    #[error("unknown message kind {0}")]
    UnknownKind(u16),
    /// The message is a known kind but not the one this exchange carries.
    #[error("expected a {expected:?} message, got {got:?}")]
    WrongKind {
        /// Kind the caller decodes.
        expected: MessageKind,
        /// Kind in the header.
        got: MessageKind,
    },
    /// The header's total length is not the buffer's length.
    #[error("header says {header} bytes but the buffer holds {buffer}")]
    TotalLength {
        /// Total length in the header.
        header: u32,
        /// Bytes in the buffer.
        buffer: usize,
    },
    /// The message length disagrees with its kind's fixed size, its count or its payload
    /// length.
    #[error("{kind:?} message of {got} bytes should be {expected} bytes")]
    Length {
        /// Kind of the message.
        kind: MessageKind,
        /// Length its fields imply.
        expected: usize,
        /// Length it has.
        got: usize,
    },
    /// A reserved field is not zero.
    #[error("reserved field at byte {offset} holds {value:#x}, not zero")]
    Reserved {
        /// Byte offset of the field in the message.
        offset: usize,
        /// Its value.
        value: u32,
    },
    /// A flags field has bits this ABI version does not define.
    #[error("{kind:?} flags {bits:#x} include undefined bits {unknown:#x}")]
    UnknownFlags {
        /// Kind of the message.
        kind: MessageKind,
        /// The whole flags field.
        bits: u32,
        /// The undefined bits among them.
        unknown: u32,
    },
    /// A fetch-failure reason that is not a [`FailReason`](crate::FailReason).
    #[error("unknown fetch failure reason {0}")]
    UnknownReason(u32),
    /// A driver state that is not a [`DriverState`].
    #[error("unknown driver state {0}")]
    UnknownState(u32),
    /// A control command that is not a [`ControlCommand`].
    #[error("unknown control command {0}")]
    UnknownCommand(u32),
    /// A refusal that is not a [`Refusal`].
    #[error("unknown refusal {0}")]
    UnknownRefusal(u32),
    /// Counters that carry a refusal with a state other than detached.
    #[error("a refused volume reported as {state:?}, not detached")]
    RefusedNotDetached {
        /// The state reported.
        state: DriverState,
    },
    /// A restore mode that is not a [`RestoreMode`].
    #[error("unknown restore mode {0}")]
    UnknownMode(u32),
    /// A map selector that is not a [`MapSelector`].
    #[error("unknown region map {0}")]
    UnknownMap(u32),
    /// A byte range is misaligned, empty or wraps past 2^64.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// A hydrate longer than [`HYDRATE_MAX_BYTES`].
    #[error("hydrate of {len} bytes exceeds the {max}-byte limit")]
    HydrateTooLong {
        /// Length asked for.
        len: u64,
        /// [`HYDRATE_MAX_BYTES`].
        max: u32,
    },
    /// A hydrate's payload length is not its length (data) or zero (`ZERO`).
    #[error("payload of {payload_len} bytes does not fit a hydrate of {len} bytes with flags {flags:#x}")]
    PayloadLength {
        /// Hydrate length.
        len: u64,
        /// Hydrate flags.
        flags: u32,
        /// Payload length given.
        payload_len: u64,
    },
    /// A count above its bound.
    #[error("{kind:?} count {count} exceeds the maximum {max}")]
    CountTooLarge {
        /// Kind of the message.
        kind: MessageKind,
        /// Count given.
        count: u64,
        /// Its bound.
        max: u64,
    },
    /// Attach sizes no volume can have.
    #[error(transparent)]
    Geometry(#[from] GeometryError),
    /// More regions restored than there are.
    #[error("restored count {restored} exceeds region count {total}")]
    RestoredCount {
        /// Regions restored.
        restored: u64,
        /// Regions in the volume.
        total: u64,
    },
    /// Bitmap words past the end of the volume's map.
    #[error("bitmap words {first_word}..+{word_count} run past the {word_total} words of {region_count} regions")]
    BitmapPastEnd {
        /// First word index in the page.
        first_word: u64,
        /// Words in the page.
        word_count: u64,
        /// Words in the whole map.
        word_total: u64,
        /// Regions in the volume.
        region_count: u64,
    },
    /// A bitmap word with bits set for regions past the end of the volume.
    #[error("bitmap word {word} sets bits {bits:#x} past the last region")]
    BitmapTailBits {
        /// Word index.
        word: u64,
        /// The bits past the end.
        bits: u64,
    },
    /// The service attaches with a volume size other than the volume's.
    #[error("attach says the volume is {attached} bytes; it is {volume}")]
    VolumeSizeMismatch {
        /// Size in the attach.
        attached: u64,
        /// Size of the volume.
        volume: u64,
    },
    /// The service attaches with a region size other than the one the restore uses.
    #[error("attach says regions are {attached} bytes; the restore uses {volume}")]
    RegionSizeMismatch {
        /// Region size in the attach.
        attached: u32,
        /// Region size of the restore in progress.
        volume: u32,
    },
    /// The service attaches with a backup other than the one the volume restores from.
    #[error("attach names a different backup than the one this volume restores from")]
    BackupIdentityMismatch,
    /// The service attaches in another mode than the restore's.
    #[error("attach asks for the {attached:?} mode; this volume restores in the {volume:?} mode")]
    ModeMismatch {
        /// Mode in the attach.
        attached: RestoreMode,
        /// Mode of the restore in progress.
        volume: RestoreMode,
    },
    /// A record kind that is not a [`RecordKind`].
    #[error("unknown record kind {0}")]
    UnknownRecordKind(u16),
    /// A record field that does not fit its kind (see [`CaptureRecord`]'s layout).
    #[error("record {seq}: field {field} does not fit the record's kind")]
    RecordField {
        /// The record's sequence number.
        seq: u64,
        /// The field.
        field: &'static str,
    },
    /// Records of a batch that do not follow each other by one.
    #[error("record {seq} does not follow record {previous}")]
    RecordOrder {
        /// Sequence of the record before.
        previous: u64,
        /// Sequence found.
        seq: u64,
    },
    /// A mark label that is empty, too long, or holds a character outside
    /// `[A-Za-z0-9._-]` (or starts with `.`).
    #[error(
        "mark label of {len} bytes is not 1 to {max} bytes of [A-Za-z0-9._-] not starting with '.'"
    )]
    BadLabel {
        /// Bytes given.
        len: usize,
        /// [`MARK_LABEL_MAX_BYTES`].
        max: usize,
    },
}

impl AbiError {
    /// The status the driver completes a refused request with.
    pub const fn status(&self) -> Status {
        match self {
            AbiError::BufferTooSmall { .. } => Status::BUFFER_TOO_SMALL,
            AbiError::Short { .. }
            | AbiError::TooLong { .. }
            | AbiError::TotalLength { .. }
            | AbiError::Length { .. } => Status::INVALID_BUFFER_SIZE,
            AbiError::VolumeSizeMismatch { .. }
            | AbiError::RegionSizeMismatch { .. }
            | AbiError::BackupIdentityMismatch
            | AbiError::ModeMismatch { .. } => Status::DEVICE_NOT_READY,
            _ => Status::INVALID_PARAMETER,
        }
    }
}

/// Any message, decoded. Borrowed variants point into the decoded buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// [`Attach`].
    Attach(Attach),
    /// [`MissingBatch`].
    MissingBatch(MissingBatch<'a>),
    /// [`Hydrate`].
    Hydrate(Hydrate<'a>),
    /// [`FetchFailed`].
    FetchFailed(FetchFailed),
    /// [`BitmapQuery`].
    BitmapQuery(BitmapQuery),
    /// [`BitmapPage`].
    BitmapPage(BitmapPage<'a>),
    /// [`StatusCounters`].
    StatusCounters(StatusCounters),
    /// [`Control`].
    Control(Control),
    /// [`RecordBatch`].
    RecordBatch(RecordBatch<'a>),
    /// [`RecordAck`].
    RecordAck(RecordAck),
    /// [`Mark`].
    Mark(Mark),
}

impl<'a> Message<'a> {
    /// Decodes any message, whatever its kind (the simulator's channel and the fuzz
    /// target). A shell that knows which kind an IOCTL carries decodes that type instead,
    /// which also refuses the wrong kind.
    pub fn decode_any(bytes: &'a [u8]) -> Result<Message<'a>, AbiError> {
        Ok(match Header::decode(bytes)?.kind {
            MessageKind::Attach => Message::Attach(Attach::decode(bytes)?),
            MessageKind::MissingBatch => Message::MissingBatch(MissingBatch::decode(bytes)?),
            MessageKind::Hydrate => Message::Hydrate(Hydrate::decode(bytes)?),
            MessageKind::FetchFailed => Message::FetchFailed(FetchFailed::decode(bytes)?),
            MessageKind::BitmapQuery => Message::BitmapQuery(BitmapQuery::decode(bytes)?),
            MessageKind::BitmapPage => Message::BitmapPage(BitmapPage::decode(bytes)?),
            MessageKind::StatusCounters => Message::StatusCounters(StatusCounters::decode(bytes)?),
            MessageKind::Control => Message::Control(Control::decode(bytes)?),
            MessageKind::RecordBatch => Message::RecordBatch(RecordBatch::decode(bytes)?),
            MessageKind::RecordAck => Message::RecordAck(RecordAck::decode(bytes)?),
            MessageKind::Mark => Message::Mark(Mark::decode(bytes)?),
        })
    }

    /// Decodes the input buffer of a request with control code `ioctl`: the message must
    /// be the kind that code carries ([`Ioctl::input_kind`]), else
    /// [`AbiError::WrongKind`]. Codes that carry no input (`GET_MISSING`, `GET_STATUS`)
    /// give `None` and their input buffer is not read.
    pub fn decode_request(ioctl: Ioctl, bytes: &'a [u8]) -> Result<Option<Message<'a>>, AbiError> {
        let Some(expected) = ioctl.input_kind() else {
            return Ok(None);
        };
        let header = Header::decode(bytes)?;
        if header.kind != expected {
            return Err(AbiError::WrongKind {
                expected,
                got: header.kind,
            });
        }
        let message = Message::decode_any(bytes)?;
        debug_assert_eq!(message.kind(), expected);
        Ok(Some(message))
    }

    /// The kind in the header.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Attach(_) => MessageKind::Attach,
            Message::MissingBatch(_) => MessageKind::MissingBatch,
            Message::Hydrate(_) => MessageKind::Hydrate,
            Message::FetchFailed(_) => MessageKind::FetchFailed,
            Message::BitmapQuery(_) => MessageKind::BitmapQuery,
            Message::BitmapPage(_) => MessageKind::BitmapPage,
            Message::StatusCounters(_) => MessageKind::StatusCounters,
            Message::Control(_) => MessageKind::Control,
            Message::RecordBatch(_) => MessageKind::RecordBatch,
            Message::RecordAck(_) => MessageKind::RecordAck,
            Message::Mark(_) => MessageKind::Mark,
        }
    }

    /// Bytes [`encode`](Self::encode) writes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Message::Attach(m) => m.encoded_len(),
            Message::MissingBatch(m) => m.encoded_len(),
            Message::Hydrate(m) => m.encoded_len(),
            Message::FetchFailed(m) => m.encoded_len(),
            Message::BitmapQuery(m) => m.encoded_len(),
            Message::BitmapPage(m) => m.encoded_len(),
            Message::StatusCounters(m) => m.encoded_len(),
            Message::Control(m) => m.encoded_len(),
            Message::RecordBatch(m) => m.encoded_len(),
            Message::RecordAck(m) => m.encoded_len(),
            Message::Mark(m) => m.encoded_len(),
        }
    }

    /// Encodes into the front of `out`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, AbiError> {
        match self {
            Message::Attach(m) => m.encode(out),
            Message::MissingBatch(m) => m.encode(out),
            Message::Hydrate(m) => m.encode(out),
            Message::FetchFailed(m) => m.encode(out),
            Message::BitmapQuery(m) => m.encode(out),
            Message::BitmapPage(m) => m.encode(out),
            Message::StatusCounters(m) => m.encode(out),
            Message::Control(m) => m.encode(out),
            Message::RecordBatch(m) => m.encode(out),
            Message::RecordAck(m) => m.encode(out),
            Message::Mark(m) => m.encode(out),
        }
    }
}

#[cfg(test)]
mod capture_tests;
#[cfg(test)]
mod tests;
