//! Completions of the lower I/O the engine sent: marks (rule 2: only now), released
//! claims, finished hydrate batches.

use alloc::vec::Vec;
use core::ops::Range;

use super::state::{InFlight, Kind, Sent};
use super::{emit_fetch, Action, BatchId, Engine, LowerId, Mark};
use crate::mutants::{self, Mutant};
use crate::status::Status;

impl Engine {
    pub(super) fn on_lower(&mut self, lower: LowerId, status: Status, out: &mut Vec<Action>) {
        let Ok(at) = self.in_flight.binary_search_by_key(&lower, |l| l.lower) else {
            debug_assert!(false, "completion of unknown lower I/O {lower}");
            return;
        };
        let done = self.in_flight.remove(at).io;
        match done {
            InFlight::Request(sent) => self.request_done(sent, status, out),
            InFlight::Hydrate { batch, regions } => self.hydrate_done(batch, regions, status, out),
            InFlight::Flush { id, seq } => self.flush_done(id, seq, status, out),
        }
    }

    /// A forwarded request came back from the lower device.
    pub(super) fn request_done(&mut self, sent: Sent, status: Status, out: &mut Vec<Action>) {
        let (id, kind, offset, len) = (sent.id, sent.kind, sent.offset, sent.len);
        let claimed = sent.claimed;
        self.marks_reserved -= sent.marks;
        let fua = kind == (Kind::Write { fua: true });
        if status.is_success()
            && fua
            && !self.is_passthrough()
            && self.fua_needs_commit(offset, len)
        {
            // FUA promises durability at completion, and durable data is only safe with
            // durable marks of the regions it touches (else a reboot would fetch backup
            // data over it, breaking rule 3): flush what was hydrated under it and
            // commit before completing.
            self.mark_claimed(claimed, status, out);
            self.wait_for_durable(id, out);
        } else {
            if fua {
                self.counters.fua_commits_skipped += u64::from(status.is_success());
                self.durability_requests -= 1;
            }
            out.push(Action::Complete { id, status });
            self.mark_claimed(claimed, status, out);
        }
        if let Some(key) = sent.sequenced {
            self.sequenced_count -= 1;
            self.leave_ordering(key, offset, len);
        }
    }

    /// A write or trim came back: mark what it restored, or let the regions it claimed
    /// be fetched again.
    pub(super) fn mark_claimed(
        &mut self,
        claimed: Range<u64>,
        status: Status,
        out: &mut Vec<Action>,
    ) {
        if claimed.is_empty() {
            return;
        }
        if !status.is_success() {
            self.claim_failed(claimed, out);
            return;
        }
        // Mark only regions this write restored; one restored earlier keeps its own
        // (older) place in the durability queue.
        let mut at = claimed.start;
        // Bounded: every pass moves `at` past a run.
        while let Some(start) = self.first_missing(at..claimed.end) {
            let mut end = start + 1;
            while end < claimed.end && !self.map.is_restored(end) {
                end += 1;
            }
            self.record_marks(start..end, out);
            at = end;
        }
    }

    /// The regions a failed write or trim claimed are missing again.
    pub(super) fn claim_failed(&mut self, claimed: Range<u64>, out: &mut Vec<Action>) {
        // Waiters find nobody getting them and ask.
        self.notify(claimed.clone());
        if mutants::active(Mutant::NoReaskAfterFailedClaim) {
            return;
        }
        // Nobody waits: the service may have delivered them while they were claimed
        // (the engine dropped that data) and believes them done. Ask again.
        let mut run: Option<Range<u64>> = None;
        for region in claimed {
            if self.map.is_restored(region) || self.being_got(region) {
                continue;
            }
            self.counters.regions_reasked += 1;
            run = match run {
                Some(r) if r.end == region => Some(r.start..region + 1),
                Some(r) => {
                    emit_fetch(r, false, out);
                    Some(region..region + 1)
                }
                None => Some(region..region + 1),
            };
        }
        if let Some(r) = run {
            emit_fetch(r, false, out);
        }
    }

    pub(super) fn hydrate_done(
        &mut self,
        batch: BatchId,
        regions: Range<u64>,
        status: Status,
        out: &mut Vec<Action>,
    ) {
        debug_assert!(
            mutants::any() || regions.clone().all(|r| self.hydrating.contains(r)),
            "hydrate write of {regions:?} was not hydrating"
        );
        self.hydrating.remove(regions.clone());
        self.hydrate_parts -= 1;
        self.marks_reserved -= 1;
        if status.is_success() {
            let b = self.geometry.regions_byte_range(regions.clone());
            self.counters.hydrated_bytes += b.end - b.start;
            self.record_marks(regions, out);
        } else {
            // The data did not reach the device: requests that need it fail (rule 5);
            // writes that only overwrite these regions may go down now.
            let mut keys = core::mem::take(&mut self.fail_scratch);
            keys.clear();
            for h in &self.held {
                let hit = self
                    .need_ranges(h)
                    .into_iter()
                    .flatten()
                    .any(|need| need.start.max(regions.start) < need.end.min(regions.end));
                if hit {
                    keys.push(h.key);
                }
            }
            for &key in &keys {
                self.drop_held(key, Status::IO_DEVICE_ERROR, out);
            }
            self.fail_scratch = keys;
            self.notify(regions);
        }
        if let Some(at) = self.batches.iter().position(|b| b.id == batch) {
            let b = &mut self.batches[at];
            b.outstanding -= 1;
            if !status.is_success() {
                b.status = status;
            }
            if b.outstanding == 0 {
                let status = b.status;
                self.batches.swap_remove(at);
                out.push(Action::HydrateDone { batch, status });
            }
        }
    }

    /// Marks regions whose data reached the lower device (rule 2: only now).
    pub(super) fn record_marks(&mut self, regions: Range<u64>, out: &mut Vec<Action>) {
        if regions.is_empty() {
            return;
        }
        let newly = self.map.mark_range(regions.clone());
        assert!(
            mutants::any() || newly == regions.end - regions.start,
            "a region was marked twice"
        );
        debug_assert!(
            self.marks.len() < self.marks.capacity(),
            "no room kept for a mark"
        );
        self.marks.push_back(Mark {
            regions: regions.clone(),
            tag: self.flushes_issued,
        });
        self.notify(regions);
        let unflushed = self.marks.len() - self.marks_flushed;
        let reached = self.map.is_all_restored() || unflushed >= self.config.marks_soft_max;
        if reached && self.engine_flushes_in_flight == 0 {
            // Reach the pass-through state promptly, or keep the marks bounded.
            self.flush_down(out);
        }
    }
}
