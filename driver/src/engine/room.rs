//! Room for what an admitted request, hydrate or flush can still add: every
//! structure grows here, through `try_reserve`, and nowhere else (completions never
//! allocate). A reservation that fails makes the caller refuse with
//! `INSUFFICIENT_RESOURCES`.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::runs::Runs;
use super::state::Kind;
use super::Engine;

/// Room for `total` elements in `v` without allocating later.
pub(super) fn room<T>(v: &mut Vec<T>, total: usize) -> bool {
    total <= v.capacity() || v.try_reserve(total - v.len()).is_ok()
}

pub(super) fn room_deque<T>(v: &mut VecDeque<T>, total: usize) -> bool {
    total <= v.capacity() || v.try_reserve(total - v.len()).is_ok()
}

/// Room for `total` runs in `runs` without allocating later.
pub(super) fn room_runs(runs: &mut Runs, total: usize) -> bool {
    runs.room(total)
}

impl Engine {
    /// False when a test asked for this reservation to fail.
    pub(super) fn reservation_allowed(&mut self) -> bool {
        if self.reservations_to_fail > 0 {
            self.reservations_to_fail -= 1;
            return false;
        }
        true
    }

    /// Room for one more lower I/O now and for every held request to go down later.
    pub(super) fn room_for_lower(&mut self, more: usize) -> bool {
        let total = self.in_flight.len() + self.held.len() + more;
        room(&mut self.in_flight, total)
    }

    /// Room for `runs` more marks to be recorded by I/O at the device.
    pub(super) fn room_for_marks(&mut self, runs: usize) -> bool {
        let total = self.marks.len() + self.marks_reserved + runs;
        room_deque(&mut self.marks, total) && room(&mut self.unflushed_sorted, total)
    }

    /// Everything holding one more request can need: its entry, its waiter entry, its
    /// window of asked regions, a slot to go down, and the scratch list.
    pub(super) fn room_for_hold(&mut self) -> bool {
        let held = self.held.len() + 1;
        let window = usize::try_from(self.config.ask_window_regions).unwrap_or(usize::MAX);
        let asked_runs_max = held.saturating_mul(window).saturating_add(1);
        self.reservation_allowed()
            && room(&mut self.held, held)
            && room(&mut self.waiters, held)
            && room(&mut self.wakes, held)
            && room(&mut self.fail_scratch, held)
            && room_runs(&mut self.requested, asked_runs_max)
            && self.room_for_lower(1)
    }

    /// Room to send request `kind` on `[offset, offset+len)` down: its lower entry, the
    /// marks it may record, and its place in the durability lists.
    pub(super) fn room_for_dispatch(&mut self, kind: Kind, offset: u64, len: u64) -> Option<usize> {
        let claimed = self.claim_of(kind, offset, len);
        let marks = self.mark_runs_in(claimed);
        let durability = usize::from(kind == Kind::Write { fua: true });
        let ok = self.reservation_allowed()
            && self.room_for_lower(1)
            && self.room_for_marks(marks)
            && self.requested.room_more(1)
            && self.room_for_durability(durability);
        ok.then_some(marks)
    }

    pub(super) fn room_for_durability(&mut self, more: usize) -> bool {
        let total = self.durability_requests + more;
        room(&mut self.fua_waiters, total) && room(&mut self.flush_waiters, total)
    }
}
