//! The engine's bookkeeping types: held requests, lower I/O in flight, hydrate batches.

use core::ops::Range;

use super::io::{BatchId, LowerId, RequestId};
use crate::status::Status;

/// What a request from above asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write { fua: bool },
    Discard,
}

impl Kind {
    /// Writes and trims replace data; reads only look.
    pub(crate) fn replaces_data(self) -> bool {
        !matches!(self, Kind::Read)
    }
}

/// A request the engine is holding.
///
/// It walks its regions in order: every region before `cursor` was ready when the
/// cursor passed it; the region at `cursor` is the one it waits on (it is then listed
/// in the waiter index under `key`). Regions `cursor..asked_to` were asked of the
/// service on its behalf (a window of at most `ask_window_regions`), so a request over
/// many missing regions holds state for a window of them, not for all.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Held {
    /// Arrival order: a request is ordered after every held or sequenced request with a
    /// smaller key on its sectors.
    pub(crate) key: u64,
    pub(crate) id: RequestId,
    pub(crate) kind: Kind,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) since_ns: u64,
    /// Earlier held or sequenced requests on its sectors.
    pub(crate) blockers: u32,
    pub(crate) cursor: u64,
    pub(crate) asked_to: u64,
    /// The region it is listed as a waiter of.
    pub(crate) attached: Option<u64>,
    /// It is in the engine's list of requests to advance.
    pub(crate) queued: bool,
}

/// A request from above that the engine forwarded.
#[derive(Clone, Debug)]
pub(crate) struct Sent {
    pub(crate) id: RequestId,
    pub(crate) kind: Kind,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    /// Regions this write or trim overwrites wholly (empty for reads): hydrate data for
    /// them is dropped while it is at the device (rule 4).
    pub(crate) claimed: Range<u64>,
    /// Its key when it was held once: later requests on its sectors wait for it.
    pub(crate) sequenced: Option<u64>,
    /// Mark runs room was kept for.
    pub(crate) marks: usize,
}

/// I/O the engine sent down and awaits.
#[derive(Clone, Debug)]
pub(crate) enum InFlight {
    /// A request from above, forwarded.
    Request(Sent),
    /// Part of a hydrate message.
    Hydrate { batch: BatchId, regions: Range<u64> },
    /// A flush: the file system's (`id`) or the engine's own.
    Flush { id: Option<RequestId>, seq: u64 },
}

/// Progress of one hydrate message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batch {
    pub(crate) id: BatchId,
    pub(crate) outstanding: u32,
    pub(crate) status: Status,
}

/// An entry of the table of lower I/O in flight, kept sorted by `lower`.
#[derive(Clone, Debug)]
pub(crate) struct Lower {
    pub(crate) lower: LowerId,
    pub(crate) io: InFlight,
}

/// True when `[a, a+alen)` and `[b, b+blen)` share a byte.
#[inline]
pub(crate) fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a < b + blen && b < a + alen
}
