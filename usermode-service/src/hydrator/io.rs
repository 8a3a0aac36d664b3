//! What goes into the hydrator (inputs) and what comes out (outputs).
//!
//! The hydrator is sans-IO: the tokio shell, the Windows service loop and the simulator
//! turn what happened into [`Input`]s and carry out the [`Output`]s.

use std::ops::Range;

use rehydrate_driver::abi::{BitmapPage, BitmapQuery};
use rehydrate_driver::engine::BatchId;
use rehydrate_driver::FailReason;

/// The hydrator's handle for one request to the source.
pub type FetchId = u64;

/// One piece of a completed fetch, in order; together the pieces cover the fetch's byte
/// range exactly, and every boundary between pieces is on a region boundary (build them
/// with [`super::plan_segments`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Byte offset on the volume.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
    /// The source reported the whole piece as zeros (a hole); no data was read for it.
    pub zero: bool,
}

/// Why a fetch failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchError {
    /// The source could not be reached or the connection broke: retried with backoff
    /// until the deadline, then [`FailReason::Unreachable`].
    Transient,
    /// Data arrived but failed verification (or had the wrong length): retried a few
    /// times, then [`FailReason::Corrupt`].
    Corrupt,
    /// The source does not cover the range: failed at once with
    /// [`FailReason::OutOfRange`].
    OutOfRange,
}

/// Something that happened.
#[derive(Clone, Debug)]
pub enum Input<'a> {
    /// The driver wants these regions (an ABI `MissingRange` or an engine `Fetch`; see
    /// [`super::Missing`] for the conversions).
    Missing {
        /// Region indexes.
        regions: Range<u64>,
        /// A request waits on them; else a background hint.
        on_demand: bool,
    },
    /// The answer to [`Output::QueryBitmap`].
    BitmapPage(BitmapPage<'a>),
    /// Fetch `fetch` completed; its data (for the non-zero segments) stays with the shell.
    Fetched {
        /// The fetch.
        fetch: FetchId,
        /// What the range holds.
        segments: &'a [Segment],
    },
    /// Fetch `fetch` failed.
    FetchFailed {
        /// The fetch.
        fetch: FetchId,
        /// How.
        error: FetchError,
    },
    /// The driver finished hydrate `batch` (engine `HydrateDone`).
    HydrateDone {
        /// The hydrate.
        batch: BatchId,
        /// It was written (or dropped as stale, which is as good); false: the lower write
        /// failed and its regions are still missing.
        ok: bool,
    },
    /// Time passed; monotonic nanoseconds.
    Tick {
        /// Now.
        now_ns: u64,
    },
}

/// Where a hydrate's bytes are: the payload of fetch `fetch`, starting `offset` bytes
/// into it. Valid until the shell has carried out the outputs of the call that produced
/// it; the shell may drop the fetch's buffer after that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadRef {
    /// The fetch whose data it is.
    pub fetch: FetchId,
    /// Byte offset into that fetch's data (data of the fetch's byte range, in order).
    pub offset: u64,
}

/// Something the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Fetch a range from the source; answer with [`Input::Fetched`] or
    /// [`Input::FetchFailed`].
    Fetch {
        /// Handle.
        fetch: FetchId,
        /// Byte offset (region-aligned).
        offset: u64,
        /// Byte length (whole regions, or up to the volume end).
        len: u64,
        /// Ask the source for block status first and read only the data parts.
        block_status: bool,
        /// A request waits on it.
        on_demand: bool,
    },
    /// Send a hydrate to the driver; it answers with [`Input::HydrateDone`].
    Hydrate {
        /// Handle (the engine's `BatchId`).
        batch: BatchId,
        /// Byte offset (region-aligned).
        offset: u64,
        /// Byte length.
        len: u64,
        /// Zero-fill; no payload.
        zero: bool,
        /// The bytes, unless `zero`.
        payload: Option<PayloadRef>,
    },
    /// Tell the driver a range cannot be served (rule 5).
    FetchFailed {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
        /// Why.
        reason: FailReason,
    },
    /// Ask the driver for part of its region map; answer with [`Input::BitmapPage`].
    QueryBitmap(BitmapQuery),
}

/// The hydrator's view of a missing range, from either source of misses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// Region indexes.
    pub regions: Range<u64>,
    /// A request waits on them.
    pub on_demand: bool,
}
