//! Fills: a write that covers part of a region not in O needs the region's current
//! data in the overlay first. The region is read from the destination through the
//! in-place engine (which fetches it into D first when D lacks it), and when that read
//! goes down it becomes one [`Action::Copy`] from the destination to the overlay; when
//! it completes the region joins O and the writes waiting on it go on.
//!
//! A fill starts only for a region that no write at the overlay covers (that write
//! brings the region into O itself), and no write covering a region goes down while
//! the region is being filled, so a fill's copy never lands over newer data.

use alloc::vec::Vec;

use super::super::room::{room, room_deque};
use super::super::state::Kind;
use super::super::{Action, Event};
use super::more;
use super::{OverlayEngine, Owner};
use crate::status::Status;

impl OverlayEngine {
    /// True while `region` is being filled.
    pub(super) fn filling(&self, region: u64) -> bool {
        self.fills.iter().any(|&(r, _)| r == region)
    }

    /// True when a write at the overlay covers `region` wholly.
    pub(super) fn claimed(&self, region: u64) -> bool {
        self.reqs.iter().any(|r| {
            r.run
                .as_ref()
                .is_some_and(|run| run.claimed.contains(&region))
        })
    }

    /// Room for `more` marks beyond those recorded and reserved.
    pub(super) fn room_for_marks(&mut self, more: usize) -> bool {
        let total = self.marks.len() + self.marks_reserved + more;
        room_deque(&mut self.marks, total)
    }

    /// Starts filling `region` into the overlay; false when there is no room (the
    /// writes that need it wait, and retry when a fill ends or on a tick).
    pub(super) fn start_fill(&mut self, region: u64) -> bool {
        debug_assert!(!self.o.is_restored(region) && !self.filling(region));
        let fills = self.fills.len() + 1;
        let room = fills <= self.config.fills_max
            && room(&mut self.fills, fills)
            && more(&mut self.inner_ids, 1)
            && self.room_to_inner(1)
            && self.room_for_marks(1);
        if !room {
            return false;
        }
        let id = self.inner_id();
        self.inner_ids.push((id, Owner::Fill { region }));
        self.fills.push((region, id));
        self.marks_reserved += 1;
        self.counters.fills += 1;
        let bytes = self.geometry.regions_byte_range(region..region + 1);
        self.to_inner.push_back(Event::Read {
            id,
            offset: bytes.start,
            len: bytes.end - bytes.start,
        });
        true
    }

    /// The fill of `region` finished: it joins O, or the writes waiting on it fail.
    pub(super) fn fill_done(&mut self, region: u64, status: Status, out: &mut Vec<Action>) {
        let Some(at) = self.fills.iter().position(|&(r, _)| r == region) else {
            debug_assert!(false, "end of an unknown fill of region {region}");
            return;
        };
        self.fills.swap_remove(at);
        self.marks_reserved -= 1;
        self.wake = true;
        if status.is_success() {
            debug_assert!(!self.o.is_restored(region), "a filled region was in O");
            self.written(region..region + 1);
            self.record_mark(region..region + 1, out);
            return;
        }
        self.counters.fill_failures += 1;
        // The writes that waited on this fill (nothing earlier orders them) fail as a
        // read of the region would (rule 5); writes ordered behind others fill again
        // when their turn comes.
        let mut from = 0;
        // Bounded: every pass moves past a request.
        while let Some(key) = self
            .reqs
            .iter()
            .find(|r| {
                r.key > from
                    && r.run.is_none()
                    && r.blockers == 0
                    && self.needs_fill(r.kind, r.offset, r.len, region)
            })
            .map(|r| r.key)
        {
            from = key;
            self.drop_req(key, status, out);
        }
    }

    /// True when a request on the range needs `region` filled: a write covering part
    /// of it, while it is not in O.
    fn needs_fill(&self, kind: Kind, offset: u64, len: u64, region: u64) -> bool {
        if !matches!(kind, Kind::Write { .. }) || self.o.is_restored(region) {
            return false;
        }
        let touched = self.geometry.regions_touched(offset, len);
        let covered = self.geometry.regions_covered(offset, len);
        touched.contains(&region) && !covered.contains(&region)
    }
}
