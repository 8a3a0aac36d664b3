//! The engine's bookkeeping types: per-region state, held requests, lower I/O in flight.

use core::ops::Range;

use super::io::{BatchId, RequestId};
use crate::status::Status;

/// State of a region that is not restored yet but has something going on. Regions with
/// nothing going on have no entry (the map's bit says whether they are restored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RegionState {
    /// The service was asked for it; no data yet. Never set on a restored region.
    Requested,
    /// A hydrate write of it is at the lower device. Never set on a restored region.
    Hydrating,
    /// This many writes or trims that cover it wholly are at the lower device; hydrate
    /// data for it is dropped (rule 4). May outlive the mark by the first completion.
    Claimed(u32),
}

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
#[derive(Clone, Copy, Debug)]
pub(crate) struct Held {
    pub(crate) id: RequestId,
    pub(crate) kind: Kind,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) since_ns: u64,
}

/// I/O the engine sent down and awaits.
#[derive(Clone, Debug)]
pub(crate) enum InFlight {
    /// A request from above, forwarded.
    Request {
        id: RequestId,
        kind: Kind,
        /// Regions this write or trim claimed (empty for reads).
        claimed: Range<u64>,
        /// It was held once, so later requests on its sectors wait for it.
        sequenced: bool,
    },
    /// Part of a hydrate message.
    Hydrate { batch: BatchId, regions: Range<u64> },
    /// A flush: the file system's (`id`) or the engine's own.
    Flush { id: Option<RequestId>, seq: u64 },
}

/// Progress of one hydrate message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batch {
    pub(crate) outstanding: u32,
    pub(crate) status: Status,
}

/// True when `[a, a+alen)` and `[b, b+blen)` share a byte.
#[inline]
pub(crate) fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a < b + blen && b < a + alen
}
