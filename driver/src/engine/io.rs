//! What goes into the engine (events) and what comes out (actions).
//!
//! The engine is sans-IO: the kernel shell, the simulator and the Linux restore all turn
//! real happenings into [`Event`]s and carry out the [`Action`]s, and nothing else.

use core::ops::Range;

use crate::status::{FailReason, Status};

/// The shell's handle for a request from above (a WDFREQUEST in the kernel). The engine
/// only stores and returns it.
pub type RequestId = u64;

/// The engine's handle for I/O it sends to the lower device. Unique for the engine's life.
pub type LowerId = u64;

/// The service's handle for one hydrate message, acknowledged by [`Action::HydrateDone`].
pub type BatchId = u64;

/// Something that happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A read from the file system.
    Read {
        /// Request handle.
        id: RequestId,
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
    },
    /// A write from the file system.
    Write {
        /// Request handle.
        id: RequestId,
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
        /// Force unit access: durable when it completes.
        fua: bool,
    },
    /// A flush (IRP_MJ_FLUSH_BUFFERS).
    Flush {
        /// Request handle.
        id: RequestId,
    },
    /// A trim of a byte range (the data-set-management IOCTL).
    Discard {
        /// Request handle.
        id: RequestId,
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
    },
    /// Data for a region-aligned range arrived from the service. The payload stays with
    /// the shell; [`Action::WriteHydrate`] names the parts of it to write.
    Hydrate {
        /// The service's handle, acknowledged by [`Action::HydrateDone`].
        batch: BatchId,
        /// Byte offset (region-aligned).
        offset: u64,
        /// Byte length (whole regions, or up to the volume end).
        len: u64,
        /// The range is all zeros; there is no payload.
        zero: bool,
    },
    /// The service could not fetch a range.
    FetchFailed {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
        /// Why.
        reason: FailReason,
    },
    /// I/O the engine sent down completed.
    LowerCompleted {
        /// Which I/O.
        lower: LowerId,
        /// Its status.
        status: Status,
    },
    /// A metadata commit asked for by [`Action::CommitMetadata`] finished.
    MetadataCommitted {
        /// The commit's number.
        commit: u64,
        /// True when it is durable.
        ok: bool,
    },
    /// The file system cancelled request `id` and the framework's cancel callback ran
    /// (the shell marks every held request cancelable). A held request completes with
    /// `CANCELLED`; a request already forwarded or completed is left alone.
    Cancel {
        /// Request handle.
        id: RequestId,
    },
    /// The service (re)attached: requests it may have lost are asked again.
    ServiceAttached,
    /// The volume is going away (surprise removal, stop): every held request completes
    /// with `DEVICE_NOT_READY`; I/O already at the lower device completes as usual.
    Remove,
    /// Time passed; `now_ns` is monotonic.
    Tick {
        /// Monotonic time in nanoseconds.
        now_ns: u64,
    },
}

/// Which lower device an action of the overlay mode ([`super::overlay`]) addresses. The
/// in-place engine has one lower device, the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// The overlay: where the application's writes go until the cutover.
    Overlay,
    /// The volume being restored (the in-place engine's only lower device).
    Destination,
}

/// Something the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send request `id` down unchanged; its completion comes back as
    /// [`Event::LowerCompleted`] with `lower`.
    Forward {
        /// Request handle.
        id: RequestId,
        /// Handle of the lower I/O.
        lower: LowerId,
    },
    /// Request `id` is held (pended) until a later action forwards or completes it.
    Hold {
        /// Request handle.
        id: RequestId,
    },
    /// Ask the service for these regions.
    Fetch {
        /// Regions, as region indexes.
        regions: Range<u64>,
        /// A request is waiting on them (else: scan-ahead or re-ask).
        on_demand: bool,
    },
    /// Write part of hydrate `batch` down: bytes `[offset, offset+len)` of the volume,
    /// taken from the payload at `offset - batch offset`, or zeros.
    WriteHydrate {
        /// Handle of the lower write.
        lower: LowerId,
        /// The hydrate message it came from.
        batch: BatchId,
        /// Byte offset on the volume.
        offset: u64,
        /// Byte length.
        len: u64,
        /// Byte offset into the batch's payload (meaningless when `zero`).
        payload_offset: u64,
        /// Write zeros instead of payload.
        zero: bool,
    },
    /// Flush the lower device (the engine's own, to make hydrated regions durable).
    FlushDown {
        /// Handle of the lower flush.
        lower: LowerId,
    },
    /// Commit the metadata (see [`crate::engine::Engine::durable_word`]) and answer with
    /// [`Event::MetadataCommitted`].
    CommitMetadata {
        /// The commit's number.
        commit: u64,
    },
    /// Complete request `id` with `status`.
    Complete {
        /// Request handle.
        id: RequestId,
        /// Completion status.
        status: Status,
    },
    /// Every part of hydrate `batch` was written down or dropped.
    HydrateDone {
        /// The hydrate message.
        batch: BatchId,
        /// Success, or why a part failed.
        status: Status,
    },
    /// Every region is restored and durably committed: the filter becomes a
    /// pass-through. Emitted once.
    AllRestored,
    // ----- the overlay mode only (the in-place engine never emits these) ------------
    /// Perform part of request `id` on `target`: bytes `[offset, offset+len)` of the
    /// volume, at `offset - request offset` in the request's buffer (a read reads into
    /// it, a write writes from it, a trim trims). Completes as [`Event::LowerCompleted`]
    /// with `lower`.
    Piece {
        /// Request handle.
        id: RequestId,
        /// Handle of the lower I/O.
        lower: LowerId,
        /// Which device.
        target: Target,
        /// Byte offset on the volume.
        offset: u64,
        /// Byte length.
        len: u64,
    },
    /// Read bytes `[offset, offset+len)` from `from` and write them at the same offset
    /// to `to` (a buffer of the shell's in between); one completion for both, with the
    /// first error.
    Copy {
        /// Handle of the copy.
        lower: LowerId,
        /// Device read.
        from: Target,
        /// Device written.
        to: Target,
        /// Byte offset on both.
        offset: u64,
        /// Byte length.
        len: u64,
    },
    /// Flush the overlay device.
    FlushOverlay {
        /// Handle of the lower flush.
        lower: LowerId,
    },
    /// Every region of the destination is restored and durably committed (the overlay
    /// mode's [`Action::AllRestored`]: the volume is not a pass-through yet, the
    /// cutover may begin). Emitted once.
    DestinationRestored,
    /// The cutover committed: from now on the volume is the destination, the overlay
    /// may be deleted. Emitted once.
    Merged,
    /// The cutover stopped with this error; the volume goes on as a pseudo-volume and a
    /// new cutover starts over (it is safe to repeat).
    MergeFailed {
        /// Why.
        status: Status,
    },
}
