//! Requests from above (read, write, trim), cancellation, time and the service: how a
//! request is forwarded at once or held, what a region needs, what a write claims.

use alloc::vec::Vec;
use core::ops::Range;

use super::state::{overlaps, Held, InFlight, Kind, Lower, Sent};
use super::{emit_fetch, Action, Engine, LowerId, RequestId};
use crate::mutants::{self, Mutant};
use crate::status::Status;

impl Engine {
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
        let blockers = self.blockers_of(u64::MAX, offset, len);
        if blockers == 0 && self.first_unready(kind, offset, len, 0).is_none() {
            match self.room_for_dispatch(kind, offset, len) {
                Some(marks) => {
                    let lower = self.dispatch(id, kind, offset, len, None, marks);
                    out.push(Action::Forward { id, lower });
                }
                None => self.fail(id, Status::INSUFFICIENT_RESOURCES, out),
            }
            return;
        }
        if self.held.len() >= self.config.held_max || !self.room_for_hold() {
            self.fail(id, Status::INSUFFICIENT_RESOURCES, out);
            return;
        }
        let touched = self.geometry.regions_touched(offset, len);
        let key = self.next_key;
        self.next_key += 1;
        self.held.push(Held {
            key,
            id,
            kind,
            offset,
            len,
            since_ns: self.now_ns,
            blockers,
            cursor: touched.start,
            asked_to: touched.start,
            attached: None,
            queued: false,
        });
        self.counters.held_total += 1;
        out.push(Action::Hold { id });
        self.advance(key, out);
    }

    /// Earlier held requests (key below `before`) and sequenced requests that share a
    /// sector with the range.
    pub(super) fn blockers_of(&self, before: u64, offset: u64, len: u64) -> u32 {
        let held = self
            .held
            .iter()
            .take_while(|h| h.key < before)
            .filter(|h| overlaps(h.offset, h.len, offset, len))
            .count();
        let sequenced = if self.sequenced_count == 0 {
            0
        } else {
            self.in_flight
                .iter()
                .filter(|l| {
                    matches!(&l.io, InFlight::Request(r) if r.sequenced.is_some_and(|k| k < before)
                        && overlaps(r.offset, r.len, offset, len))
                })
                .count()
        };
        u32::try_from(held + sequenced).unwrap_or(u32::MAX)
    }

    /// Regions a write or trim overwrites wholly (the ones it claims).
    pub(super) fn covered(&self, kind: Kind, offset: u64, len: u64) -> Range<u64> {
        if matches!(kind, Kind::Write { .. }) && mutants::active(Mutant::SkipFetchForPartialWrite) {
            return self.geometry.regions_touched(offset, len);
        }
        self.geometry.regions_covered(offset, len)
    }

    /// What a request claims when it goes down.
    pub(super) fn claim_of(&self, kind: Kind, offset: u64, len: u64) -> Range<u64> {
        if kind.replaces_data() {
            self.covered(kind, offset, len)
        } else {
            0..0
        }
    }

    /// True when request `kind` on the range needs the data of `region` (a read, or the
    /// partly covered head or tail region of a write).
    pub(super) fn needs_data(&self, kind: Kind, offset: u64, len: u64, region: u64) -> bool {
        match kind {
            Kind::Read => true,
            Kind::Write { .. } => !self.covered(kind, offset, len).contains(&region),
            Kind::Discard => false,
        }
    }

    /// The first region at or after `from` that keeps the request from going down:
    /// a missing region whose data it needs, or a region it covers whose hydrate write
    /// is in flight.
    pub(super) fn first_unready(
        &self,
        kind: Kind,
        offset: u64,
        len: u64,
        from: u64,
    ) -> Option<u64> {
        let touched = self.geometry.regions_touched(offset, len);
        let from = from.max(touched.start);
        if from >= touched.end {
            return None;
        }
        if kind == Kind::Read {
            if mutants::active(Mutant::ForwardReadBeforeRestored) {
                return None;
            }
            return self.first_missing(from..touched.end);
        }
        let covered = self.covered(kind, offset, len);
        let hydrating = self
            .hydrating
            .first_in(covered.start.max(from)..covered.end);
        if kind == Kind::Discard {
            return hydrating;
        }
        // A write's partly covered regions: at most the first and the last.
        let partial = [touched.start, touched.end - 1]
            .into_iter()
            .filter(|&r| r >= from && !covered.contains(&r) && !self.map.is_restored(r))
            .min();
        match (partial, hydrating) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn first_missing(&self, range: Range<u64>) -> Option<u64> {
        self.map
            .first_missing_from(range.start)
            .filter(|&r| r < range.end)
    }

    /// True when somebody is getting `region`'s data: the service was asked, a hydrate
    /// write is at the device, or a write that overwrites it is.
    pub(super) fn being_got(&self, region: u64) -> bool {
        self.requested.contains(region) || self.hydrating.contains(region) || self.claimed(region)
    }

    /// True when a write or trim at the lower device overwrites `region` wholly.
    pub(super) fn claimed(&self, region: u64) -> bool {
        self.in_flight
            .iter()
            .any(|l| matches!(&l.io, InFlight::Request(r) if r.claimed.contains(&region)))
    }

    /// Runs of missing regions in `claimed`: the marks its completion may record.
    pub(super) fn mark_runs_in(&self, claimed: Range<u64>) -> usize {
        let mut runs = 0;
        let mut at = claimed.start;
        // Bounded: every pass moves `at` past a run.
        while let Some(start) = self.first_missing(at..claimed.end) {
            runs += 1;
            let mut end = start + 1;
            while end < claimed.end && !self.map.is_restored(end) {
                end += 1;
            }
            at = end;
        }
        runs
    }

    /// Sends a request down, claiming the regions a write or trim covers wholly.
    pub(super) fn dispatch(
        &mut self,
        id: RequestId,
        kind: Kind,
        offset: u64,
        len: u64,
        sequenced: Option<u64>,
        marks: usize,
    ) -> LowerId {
        let claimed = self.claim_of(kind, offset, len);
        debug_assert!(
            mutants::any() || !self.hydrating.intersects(claimed.clone()),
            "a write went down over a hydrate write in flight"
        );
        // Its data replaces whatever the service would bring: no longer asked for.
        // Readers waiting on these regions stay attached and get the write's data (or
        // ask again if it fails).
        self.requested.remove(claimed.clone());
        self.marks_reserved += marks;
        if kind == (Kind::Write { fua: true }) {
            self.durability_requests += 1;
        }
        if sequenced.is_some() {
            self.sequenced_count += 1;
        }
        let lower = self.lower_id();
        self.push_lower(
            lower,
            InFlight::Request(Sent {
                id,
                kind,
                offset,
                len,
                claimed,
                sequenced,
                marks,
            }),
        );
        lower
    }

    pub(super) fn push_lower(&mut self, lower: LowerId, io: InFlight) {
        debug_assert!(self.in_flight.last().is_none_or(|l| l.lower < lower));
        debug_assert!(
            self.in_flight.len() < self.in_flight.capacity(),
            "no room kept"
        );
        self.in_flight.push(Lower { lower, io });
    }

    pub(super) fn fail(&mut self, id: RequestId, status: Status, out: &mut Vec<Action>) {
        debug_assert!(status.is_error());
        self.counters.requests_failed += 1;
        out.push(Action::Complete { id, status });
    }

    pub(super) fn lower_id(&mut self) -> LowerId {
        let id = self.next_lower;
        self.next_lower += 1;
        id
    }

    /// Asks the service for `regions` on demand, joining the previous ask when
    /// adjacent. False when there is no room to remember the ask.
    pub(super) fn ask(&mut self, regions: Range<u64>, out: &mut Vec<Action>) -> bool {
        if !self.requested.room_more(1) {
            return false;
        }
        self.requested.insert(regions.clone());
        self.counters.misses_regions += regions.end - regions.start;
        emit_fetch(regions, true, out);
        true
    }

    pub(super) fn on_cancel(&mut self, id: RequestId, out: &mut Vec<Action>) {
        let Some(key) = self.held.iter().find(|h| h.id == id).map(|h| h.key) else {
            // Forwarded or completed meanwhile: the lower device or the engine finishes it.
            return;
        };
        self.counters.requests_cancelled += 1;
        self.drop_held(key, Status::CANCELLED, out);
    }

    pub(super) fn on_service_attached(&mut self, out: &mut Vec<Action>) {
        // Re-asks are on demand but not new misses.
        for run in self.requested.iter() {
            emit_fetch(run, true, out);
        }
    }

    pub(super) fn on_remove(&mut self, out: &mut Vec<Action>) {
        for h in core::mem::take(&mut self.held) {
            self.fail(h.id, Status::DEVICE_NOT_READY, out);
        }
        self.waiters.clear();
        self.wakes.clear();
        self.requested.clear();
    }

    pub(super) fn on_tick(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        if !self.clock_known {
            // Requests held so far were stamped before the engine knew the time.
            self.clock_known = true;
            if !mutants::active(Mutant::HoldDeadlineFromEngineStart) {
                for h in &mut self.held {
                    h.since_ns = now_ns;
                }
                self.last_flush_ns = now_ns;
            }
        }
        self.now_ns = self.now_ns.max(now_ns);
        let deadline = self.config.hold_deadline_ns;
        let now = self.now_ns;
        let mut keys = core::mem::take(&mut self.fail_scratch);
        keys.clear();
        keys.extend(
            self.held
                .iter()
                .filter(|h| now.saturating_sub(h.since_ns) >= deadline)
                .map(|h| h.key),
        );
        for &key in &keys {
            self.drop_held(key, Status::IO_TIMEOUT, out);
        }
        self.fail_scratch = keys;
        self.tick_durability(out);
        self.maybe_all_restored(out);
    }
}
