//! The engine's bookkeeping types: per-region state, held requests, lower I/O in flight.

use alloc::collections::BTreeMap;
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

/// Disjoint byte ranges, merged when they touch: "does anything earlier share a sector
/// with this request?" in O(log n) instead of a scan of every earlier request.
#[derive(Debug, Default)]
pub(crate) struct Intervals {
    /// start -> end; disjoint and not touching.
    map: BTreeMap<u64, u64>,
}

impl Intervals {
    pub(crate) fn clear(&mut self) {
        self.map.clear();
    }

    /// True when `[start, end)` shares a byte with a range in the set. The ranges are
    /// disjoint, so only the last one starting before `end` can.
    pub(crate) fn overlaps(&self, start: u64, end: u64) -> bool {
        self.map
            .range(..end)
            .next_back()
            .is_some_and(|(_, &e)| e > start)
    }

    /// Adds `[start, end)`, merging what it touches.
    pub(crate) fn insert(&mut self, mut start: u64, mut end: u64) {
        // Bounded: each pass removes one range.
        while let Some((&s, &e)) = self.map.range(..=end).next_back() {
            if e < start {
                break;
            }
            start = start.min(s);
            end = end.max(e);
            self.map.remove(&s);
        }
        self.map.insert(start, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use proptest::prelude::*;
    use std::vec::Vec;

    proptest! {
        #[test]
        fn intervals_agree_with_a_scan(
            ranges in proptest::collection::vec((0u64..1000, 1u64..50), 0..40),
            probes in proptest::collection::vec((0u64..1100, 1u64..50), 1..40),
        ) {
            let mut set = Intervals::default();
            let mut all: Vec<(u64, u64)> = Vec::new();
            for (s, l) in ranges {
                set.insert(s, s + l);
                all.push((s, l));
            }
            for (s, l) in probes {
                let scan = all.iter().any(|&(o, n)| overlaps(o, n, s, l));
                prop_assert_eq!(set.overlaps(s, s + l), scan);
            }
        }
    }
}
