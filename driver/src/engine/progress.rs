//! How held requests move.
//!
//! A held request walks its regions in order. It waits on one region at a time (its
//! cursor), listed in the waiter index under that region, and has asked the service
//! for a window of the missing regions ahead of it. An event that changes a region
//! (marked, a hydrate write ended, a claim released) wakes exactly the requests waiting
//! on it; a request that leaves the ordering (completed at the device, failed,
//! cancelled) wakes the later requests on its sectors whose last blocker it was. Woken
//! requests are advanced once per event, so no event walks every held request's regions.

use alloc::vec::Vec;

use super::state::{overlaps, Held};
use super::{Action, Engine};
use crate::mutants::{self, Mutant};
use crate::status::Status;

impl Engine {
    pub(super) fn held_index(&self, key: u64) -> Option<usize> {
        self.held.binary_search_by_key(&key, |h| h.key).ok()
    }

    /// Advances every woken request. Bounded: a request is queued at most once at a
    /// time, and each advance forwards, fails or re-attaches it; failing one may wake
    /// others, but only requests still held, which are fewer each time.
    pub(super) fn run_wakes(&mut self, out: &mut Vec<Action>) {
        while let Some(key) = self.wakes.pop() {
            if let Some(i) = self.held_index(key) {
                self.held[i].queued = false;
                self.advance(key, out);
            }
        }
    }

    /// Wakes the requests waiting on a region of `regions`.
    pub(super) fn notify(&mut self, regions: core::ops::Range<u64>) {
        let from = self.waiters.partition_point(|&(r, _)| r < regions.start);
        let mut i = from;
        while let Some(&(region, key)) = self.waiters.get(i) {
            if region >= regions.end {
                break;
            }
            if let Some(h) = self.held_index(key) {
                if !self.held[h].queued {
                    self.held[h].queued = true;
                    self.wakes.push(key);
                }
            }
            i += 1;
        }
    }

    /// Moves held request `key` as far as it can: past the regions that are ready,
    /// asking for the window ahead. Forwards it once every region is ready and nothing
    /// earlier on its sectors blocks it.
    pub(super) fn advance(&mut self, key: u64, out: &mut Vec<Action>) {
        let Some(i) = self.held_index(key) else {
            return;
        };
        let mut h = self.held[i];
        self.counters.held_advances += 1;
        self.detach(&mut h);
        let touched = self.geometry.regions_touched(h.offset, h.len);
        let Some(region) = self.first_unready(h.kind, h.offset, h.len, h.cursor) else {
            h.cursor = touched.end;
            self.held[i] = h;
            if h.blockers == 0 {
                self.forward_held(i, out);
            }
            return;
        };
        h.cursor = region;
        let window_end = if mutants::active(Mutant::AskEveryMissingRegion) {
            touched.end
        } else {
            region
                .saturating_add(self.config.ask_window_regions)
                .min(touched.end)
        };
        // The region it waits on is asked whenever nobody is getting it (an earlier ask
        // may have failed for another request, or a write that claimed it failed);
        // regions further ahead are asked once, as the window reaches them.
        let mut asked = true;
        if self.needs_data(h.kind, h.offset, h.len, region) && !self.being_got(region) {
            asked &= self.ask(region..region + 1, out);
        }
        let mut run: Option<core::ops::Range<u64>> = None;
        for q in h.asked_to.max(region + 1)..window_end {
            let wanted = self.needs_data(h.kind, h.offset, h.len, q)
                && !self.map.is_restored(q)
                && !self.being_got(q);
            run = match (run, wanted) {
                (Some(r), true) if r.end == q => Some(r.start..q + 1),
                (Some(r), true) => {
                    asked &= self.ask(r, out);
                    Some(q..q + 1)
                }
                (None, true) => Some(q..q + 1),
                (Some(r), false) => {
                    asked &= self.ask(r, out);
                    None
                }
                (None, false) => None,
            };
        }
        if let Some(r) = run {
            asked &= self.ask(r, out);
        }
        h.asked_to = h.asked_to.max(window_end);
        self.attach(&mut h, region);
        self.held[i] = h;
        if !asked {
            // No room to remember what it asked: it cannot wait safely.
            self.drop_held(key, Status::INSUFFICIENT_RESOURCES, out);
        }
    }

    /// Sends held request `i`, whose regions are all ready, down (it becomes sequenced).
    fn forward_held(&mut self, i: usize, out: &mut Vec<Action>) {
        let mut h = self.held[i];
        debug_assert!(h.blockers == 0 && h.attached.is_none());
        if h.kind.replaces_data() {
            // A region it covers may have started hydrating after its cursor passed it.
            if let Some(region) = self.first_unready(h.kind, h.offset, h.len, 0) {
                h.cursor = region;
                self.attach(&mut h, region);
                self.held[i] = h;
                return;
            }
        }
        let Some(marks) = self.room_for_dispatch(h.kind, h.offset, h.len) else {
            self.drop_held(h.key, Status::INSUFFICIENT_RESOURCES, out);
            return;
        };
        self.held.remove(i);
        let lower = self.dispatch(h.id, h.kind, h.offset, h.len, Some(h.key), marks);
        out.push(Action::Forward { id: h.id, lower });
    }

    fn attach(&mut self, h: &mut Held, region: u64) {
        debug_assert!(h.attached.is_none());
        let at = match self.waiters.binary_search(&(region, h.key)) {
            Ok(_) => unreachable!("request {} waits twice on region {region}", h.id),
            Err(at) => at,
        };
        debug_assert!(self.waiters.len() < self.waiters.capacity(), "no room kept");
        self.waiters.insert(at, (region, h.key));
        h.attached = Some(region);
    }

    fn detach(&mut self, h: &mut Held) {
        if let Some(region) = h.attached.take() {
            if let Ok(at) = self.waiters.binary_search(&(region, h.key)) {
                self.waiters.remove(at);
            }
        }
    }

    /// Completes held request `key` with an error: it leaves the ordering, and regions
    /// asked for it that nobody else wants are forgotten.
    pub(super) fn drop_held(&mut self, key: u64, status: Status, out: &mut Vec<Action>) {
        let Some(i) = self.held_index(key) else {
            return;
        };
        let mut h = self.held.remove(i);
        self.detach(&mut h);
        self.release_window(&h);
        self.leave_ordering(h.key, h.offset, h.len);
        self.fail(h.id, status, out);
    }

    /// A request with `key` on `[offset, offset+len)` no longer orders the requests
    /// after it (it completed at the device, or left the held queue without going down).
    pub(super) fn leave_ordering(&mut self, key: u64, offset: u64, len: u64) {
        for g in self.held.iter_mut() {
            if g.key <= key || !overlaps(g.offset, g.len, offset, len) {
                continue;
            }
            debug_assert!(
                g.blockers > 0,
                "request {} was not ordered behind {key}",
                g.id
            );
            g.blockers = g.blockers.saturating_sub(1);
            if g.blockers == 0 && !g.queued {
                g.queued = true;
                self.wakes.push(g.key);
            }
        }
    }

    /// Forgets regions `h` asked for that no other held request wants (rule: nothing is
    /// kept for a request that is gone).
    fn release_window(&mut self, h: &Held) {
        if mutants::active(Mutant::KeepUnwantedRequests) {
            return;
        }
        for q in h.cursor..h.asked_to {
            if !self.requested.contains(q) {
                continue;
            }
            let wanted = self.held.iter().any(|g| {
                g.cursor <= q && q < g.asked_to && self.needs_data(g.kind, g.offset, g.len, q)
            });
            if !wanted {
                self.requested.remove(q..q + 1);
            }
        }
    }
}
