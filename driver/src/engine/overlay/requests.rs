//! Requests from above in the overlay mode: admission, ordering, holding, and the split
//! into pieces per lower device.
//!
//! A request is sent down as soon as nothing earlier on its sectors orders it and its
//! regions are ready; a read always is (the in-place engine holds its destination
//! pieces if D lacks them), a write once its partly covered regions are in O and no
//! region it covers is being filled. A read becomes one piece per run of regions that
//! are alike (in O: from the overlay; not: from the destination, through the in-place
//! engine); a write is one piece to the overlay. After the merge every request is one
//! piece to the destination.

use alloc::vec::Vec;

use super::super::room::room;
use super::super::state::{overlaps, Kind};
use super::super::{Action, Event, RequestId, Target};
use super::more;
use super::{OverlayEngine, Own, Owner, Req, Run};
use crate::mutants::{self, Mutant};
use crate::status::Status;

impl OverlayEngine {
    pub(super) fn on_request(
        &mut self,
        id: RequestId,
        kind: Kind,
        offset: u64,
        len: u64,
        out: &mut Vec<Action>,
    ) {
        if let Err(e) = self.geometry.check(offset, len) {
            self.fail(id, e.status(), out);
            return;
        }
        if kind == Kind::Discard && !self.merged {
            // A hint: trimming the overlay would hide nothing (regions not in O read
            // from the destination), and the destination takes no application change.
            self.counters.trims_dropped += 1;
            out.push(Action::Complete {
                id,
                status: Status::SUCCESS,
            });
            return;
        }
        let total = self.reqs.len() + 1;
        if total > self.config.requests_max || !room(&mut self.reqs, total) {
            self.fail(id, Status::INSUFFICIENT_RESOURCES, out);
            return;
        }
        // Every request in progress is earlier than this one.
        let blockers = self
            .reqs
            .iter()
            .filter(|r| r.ordering && overlaps(r.offset, r.len, offset, len))
            .count();
        let key = self.next_key;
        self.next_key += 1;
        self.reqs.push(Req {
            key,
            id,
            kind,
            offset,
            len,
            since_ns: self.now_ns,
            ordering: false,
            hold_said: false,
            blockers: u32::try_from(blockers).unwrap_or(u32::MAX),
            run: None,
        });
        self.try_start(key, out);
    }

    /// Sends waiting request `key` down if it may go, else holds it.
    pub(super) fn try_start(&mut self, key: u64, out: &mut Vec<Action>) {
        let Some(i) = self.req_index(key) else {
            return;
        };
        debug_assert!(self.reqs[i].run.is_none());
        if self.reqs[i].blockers == 0 && self.ready(i) {
            self.dispatch(i, out);
        } else {
            self.hold(i, out);
        }
    }

    /// True when request `i`'s regions let it go down now. Starts the fills a write
    /// needs (each once: a region being filled or overwritten is waited on).
    fn ready(&mut self, i: usize) -> bool {
        if self.merged {
            return true;
        }
        if self.holding() {
            return false;
        }
        let (kind, offset, len) = (self.reqs[i].kind, self.reqs[i].offset, self.reqs[i].len);
        if !matches!(kind, Kind::Write { .. }) {
            return true;
        }
        let touched = self.geometry.regions_touched(offset, len);
        let covered = self.geometry.regions_covered(offset, len);
        if self.fills.iter().any(|&(r, _)| covered.contains(&r)) {
            // The fill's copy would land after this write.
            return false;
        }
        let mut ready = true;
        for p in [touched.start, touched.end - 1] {
            if covered.contains(&p) || self.o.is_restored(p) {
                continue;
            }
            ready = false;
            if !self.filling(p) && !self.claimed(p) {
                // No room: it waits, and a fill ending (or a tick) retries.
                self.start_fill(p);
            }
        }
        ready
    }

    /// True while the merge holds new requests.
    pub(super) fn holding(&self) -> bool {
        self.merge.as_ref().is_some_and(|m| m.holding)
    }

    fn hold(&mut self, i: usize, out: &mut Vec<Action>) {
        let holding = self.holding();
        let r = &mut self.reqs[i];
        r.ordering = true;
        if !r.hold_said {
            r.hold_said = true;
            if holding {
                self.counters.merge_held += 1;
            }
            out.push(Action::Hold { id: r.id });
        }
    }

    /// A piece of request `key` was held by the in-place engine: the request orders
    /// the ones after it from now on (none came after it yet: the engine holds a piece
    /// when it is sent, within the event that sent it).
    pub(super) fn note_held(&mut self, key: u64, out: &mut Vec<Action>) {
        debug_assert!(
            self.reqs.last().is_some_and(|r| r.key == key)
                || self.req(key).is_some_and(|r| r.ordering),
            "a piece was held after later requests were admitted"
        );
        if let Some(i) = self.req_index(key) {
            self.hold(i, out);
        }
    }

    /// Sends request `i` down as its pieces.
    fn dispatch(&mut self, i: usize, out: &mut Vec<Action>) {
        let r = self.reqs[i].clone();
        if r.kind == Kind::Read && !self.merged {
            self.dispatch_read(i, out);
            return;
        }
        let is_write = matches!(r.kind, Kind::Write { .. });
        let target = if self.merged || is_write && mutants::active(Mutant::AppWriteToDestination) {
            Target::Destination
        } else {
            Target::Overlay
        };
        let marks = usize::from(is_write && !self.merged);
        let room = more(&mut self.own, 1) && self.room_for_marks(marks);
        if !room {
            self.drop_req(r.key, Status::INSUFFICIENT_RESOURCES, out);
            return;
        }
        self.marks_reserved += marks;
        let claimed = if is_write && !self.merged {
            self.geometry.regions_covered(r.offset, r.len)
        } else {
            0..0
        };
        self.reqs[i].run = Some(Run {
            pieces: 1,
            status: Status::SUCCESS,
            claimed,
        });
        let lower = self.own_lower();
        self.push_own(lower, Own::Piece { key: r.key });
        match target {
            Target::Overlay => self.counters.overlay_pieces += 1,
            Target::Destination => self.counters.destination_pieces += 1,
        }
        out.push(Action::Piece {
            id: r.id,
            lower,
            target,
            offset: r.offset,
            len: r.len,
        });
    }

    /// True when region `r` is read from the overlay.
    fn reads_overlay(&self, r: u64) -> bool {
        self.o.is_restored(r) && !mutants::active(Mutant::ServeBackupForOverlayRegion)
    }

    /// A read before the merge: a piece per run of regions alike.
    fn dispatch_read(&mut self, i: usize, out: &mut Vec<Action>) {
        let (key, id, offset, len) = {
            let r = &self.reqs[i];
            (r.key, r.id, r.offset, r.len)
        };
        let touched = self.geometry.regions_touched(offset, len);
        // Count first, so nothing is sent if there is no room for all of it.
        let (mut overlay_runs, mut destination_runs) = (0usize, 0usize);
        let mut last: Option<bool> = None;
        for region in touched.clone() {
            let here = self.reads_overlay(region);
            if last != Some(here) {
                if here {
                    overlay_runs += 1;
                } else {
                    destination_runs += 1;
                }
            }
            last = Some(here);
        }
        let room = more(&mut self.own, overlay_runs)
            && more(&mut self.inner_ids, destination_runs)
            && self.room_to_inner(destination_runs);
        if !room {
            self.drop_req(key, Status::INSUFFICIENT_RESOURCES, out);
            return;
        }
        self.reqs[i].run = Some(Run {
            pieces: u32::try_from(overlay_runs + destination_runs).unwrap_or(u32::MAX),
            status: Status::SUCCESS,
            claimed: 0..0,
        });
        let end = offset + len;
        let mut region = touched.start;
        // Bounded: every pass moves `region` past a run.
        while region < touched.end {
            let here = self.reads_overlay(region);
            let mut run_end = region + 1;
            while run_end < touched.end && self.reads_overlay(run_end) == here {
                run_end += 1;
            }
            let bytes = self.geometry.regions_byte_range(region..run_end);
            let (from, to) = (bytes.start.max(offset), bytes.end.min(end));
            if here {
                let lower = self.own_lower();
                self.push_own(lower, Own::Piece { key });
                self.counters.overlay_pieces += 1;
                out.push(Action::Piece {
                    id,
                    lower,
                    target: Target::Overlay,
                    offset: from,
                    len: to - from,
                });
            } else {
                let inner = self.inner_id();
                self.inner_ids.push((
                    inner,
                    Owner::Piece {
                        key,
                        offset: from,
                        len: to - from,
                    },
                ));
                self.to_inner.push_back(Event::Read {
                    id: inner,
                    offset: from,
                    len: to - from,
                });
            }
            region = run_end;
        }
    }

    /// Room for `more` events for the in-place engine.
    pub(super) fn room_to_inner(&mut self, more: usize) -> bool {
        let total = self.to_inner.len() + more;
        total <= self.to_inner.capacity() || self.to_inner.try_reserve(more).is_ok()
    }

    /// A piece of request `key` finished.
    pub(super) fn piece_done(&mut self, key: u64, status: Status, out: &mut Vec<Action>) {
        let Some(i) = self.req_index(key) else {
            debug_assert!(false, "piece of unknown request {key}");
            return;
        };
        let Some(run) = self.reqs[i].run.as_mut() else {
            debug_assert!(false, "piece of request {key} that was not sent");
            return;
        };
        run.pieces -= 1;
        if status.is_error() && run.status.is_success() {
            run.status = status;
        }
        if run.pieces > 0 {
            return;
        }
        let r = self.reqs.remove(i);
        let run = r.run.clone().unwrap_or(Run {
            pieces: 0,
            status,
            claimed: 0..0,
        });
        let status = run.status;
        let mut durable_wait = false;
        if let Kind::Write { fua } = r.kind {
            if !self.merged {
                self.marks_reserved -= 1;
                // The overlay changed under these regions: a merge copies them again.
                self.written(self.geometry.regions_touched(r.offset, r.len));
                if status.is_success() {
                    self.record_mark(run.claimed.clone(), out);
                    durable_wait = fua && self.fua_needs_commit(r.offset, r.len);
                }
            }
        }
        if durable_wait {
            self.wait_for_durable(r.id, out);
        } else if status.is_success() {
            out.push(Action::Complete { id: r.id, status });
        } else {
            self.fail(r.id, status, out);
        }
        if r.ordering {
            self.leave_ordering(r.key, r.offset, r.len);
        }
        self.wake = true;
    }

    /// Completes waiting request `key` with an error.
    pub(super) fn drop_req(&mut self, key: u64, status: Status, out: &mut Vec<Action>) {
        let Some(i) = self.req_index(key) else {
            return;
        };
        debug_assert!(self.reqs[i].run.is_none(), "dropping a request at a device");
        let r = self.reqs.remove(i);
        if r.ordering {
            self.leave_ordering(r.key, r.offset, r.len);
        }
        self.fail(r.id, status, out);
        self.wake = true;
    }

    /// Request `key` on `[offset, offset+len)` no longer orders the ones after it.
    fn leave_ordering(&mut self, key: u64, offset: u64, len: u64) {
        for g in self.reqs.iter_mut() {
            if g.key <= key || !overlaps(g.offset, g.len, offset, len) {
                continue;
            }
            debug_assert!(
                g.blockers > 0,
                "request {} was not ordered behind {key}",
                g.id
            );
            g.blockers = g.blockers.saturating_sub(1);
        }
    }

    /// Tries every waiting request that nothing earlier orders, in arrival order.
    pub(super) fn advance_waiting(&mut self, out: &mut Vec<Action>) {
        let mut i = 0;
        // Bounded: `i` moves past a request each pass.
        while let Some(r) = self.reqs.get(i) {
            let key = r.key;
            if r.run.is_none() && r.blockers == 0 {
                self.try_start(key, out);
            }
            i = self.reqs.partition_point(|r| r.key <= key);
        }
    }

    pub(super) fn fail(&mut self, id: RequestId, status: Status, out: &mut Vec<Action>) {
        debug_assert!(status.is_error());
        self.counters.requests_failed += 1;
        out.push(Action::Complete { id, status });
    }

    pub(super) fn on_cancel(&mut self, id: RequestId, out: &mut Vec<Action>) {
        let Some(r) = self.reqs.iter().find(|r| r.id == id) else {
            return;
        };
        let key = r.key;
        if r.run.is_none() {
            self.drop_req(key, Status::CANCELLED, out);
            return;
        }
        // Its destination pieces the in-place engine may still hold.
        let pieces = self
            .inner_ids
            .iter()
            .filter(|(_, o)| matches!(o, Owner::Piece { key: k, .. } if *k == key))
            .count();
        if !self.room_to_inner(pieces) {
            return;
        }
        for &(inner, owner) in &self.inner_ids {
            if matches!(owner, Owner::Piece { key: k, .. } if k == key) {
                self.to_inner.push_back(Event::Cancel { id: inner });
            }
        }
    }

    pub(super) fn on_remove(&mut self, out: &mut Vec<Action>) {
        // Bounded by the requests in progress.
        while let Some(key) = self.reqs.iter().find(|r| r.run.is_none()).map(|r| r.key) {
            self.drop_req(key, Status::DEVICE_NOT_READY, out);
        }
        if self.room_to_inner(1) {
            self.to_inner.push_back(Event::Remove);
        }
    }
}
