//! Data from the service: hydrate messages written to regions that still want them,
//! and fetch failures that fail exactly the requests waiting on what failed.

use alloc::vec::Vec;
use core::ops::Range;

use super::room::{room, room_runs};
use super::state::{Batch, Held, InFlight, Kind};
use super::{Action, BatchId, Engine};
use crate::mutants::{self, Mutant};
use crate::status::{FailReason, Status};

impl Engine {
    /// True when hydrate data for `region` may be written: nothing restored, claimed or
    /// already being hydrated is overwritten (rule 4).
    pub(super) fn takes_hydrate(&self, region: u64, claims: bool) -> bool {
        !self.map.is_restored(region)
            && !self.hydrating.contains(region)
            && (!claims || !self.claimed(region) || mutants::active(Mutant::AcceptStaleHydrate))
    }

    pub(super) fn on_hydrate(
        &mut self,
        batch: BatchId,
        offset: u64,
        len: u64,
        zero: bool,
        out: &mut Vec<Action>,
    ) {
        let region_bytes = u64::from(self.geometry.region_size_bytes());
        let aligned = self.geometry.check(offset, len).is_ok()
            && offset % region_bytes == 0
            && ((offset + len) % region_bytes == 0
                || offset + len == self.geometry.volume_size_bytes());
        if !aligned || self.batches.iter().any(|b| b.id == batch) {
            out.push(Action::HydrateDone {
                batch,
                status: Status::INVALID_PARAMETER,
            });
            return;
        }
        let regions = self.geometry.regions_touched(offset, len);
        // Claims are few (one per write at the device): look them up only if one
        // reaches this range.
        let claims = self.in_flight.iter().any(|l| {
            matches!(&l.io, InFlight::Request(r)
                if r.claimed.start < regions.end && regions.start < r.claimed.end)
        });
        // First count the parts, so nothing changes if there is no room for them.
        let mut parts = 0usize;
        let mut in_run = false;
        for region in regions.clone() {
            let takes = self.takes_hydrate(region, claims);
            parts += usize::from(takes && !in_run);
            in_run = takes;
        }
        let batches = self.batches.len();
        let room = batches < self.config.hydrate_batches_max
            && self.reservation_allowed()
            && room(&mut self.batches, batches + 1)
            && self.room_for_lower(parts)
            && self.room_for_marks(parts)
            // A run per hydrate write at most (removing one may split a run).
            && room_runs(&mut self.hydrating, self.hydrate_parts + parts + 1)
            && self.requested.room_more(parts + 1);
        if !room {
            out.push(Action::HydrateDone {
                batch,
                status: Status::INSUFFICIENT_RESOURCES,
            });
            return;
        }
        let mut run: Option<Range<u64>> = None;
        for region in regions.clone() {
            if self.takes_hydrate(region, claims) {
                run = match run {
                    Some(r) if r.end == region => Some(r.start..region + 1),
                    Some(r) => {
                        self.write_hydrate(batch, offset, zero, r, out);
                        Some(region..region + 1)
                    }
                    None => Some(region..region + 1),
                };
            } else {
                self.counters.stale_regions_dropped += 1;
            }
        }
        if let Some(r) = run {
            self.write_hydrate(batch, offset, zero, r, out);
        }
        if parts == 0 {
            out.push(Action::HydrateDone {
                batch,
                status: Status::SUCCESS,
            });
        } else {
            self.batches.push(Batch {
                id: batch,
                outstanding: u32::try_from(parts).unwrap_or(u32::MAX),
                status: Status::SUCCESS,
            });
        }
    }

    pub(super) fn write_hydrate(
        &mut self,
        batch: BatchId,
        batch_offset: u64,
        zero: bool,
        regions: Range<u64>,
        out: &mut Vec<Action>,
    ) {
        let bytes = self.geometry.regions_byte_range(regions.clone());
        let lower = self.lower_id();
        if mutants::active(Mutant::MarkBeforeLowerWriteCompletes) {
            self.map.mark_range(regions.clone());
        }
        // Its waiters stay attached: the region is being got now.
        self.requested.remove(regions.clone());
        self.hydrating.insert(regions.clone());
        self.hydrate_parts += 1;
        self.marks_reserved += 1;
        self.push_lower(lower, InFlight::Hydrate { batch, regions });
        out.push(Action::WriteHydrate {
            lower,
            batch,
            offset: bytes.start,
            len: bytes.end - bytes.start,
            payload_offset: bytes.start - batch_offset,
            zero,
        });
    }

    pub(super) fn on_fetch_failed(
        &mut self,
        offset: u64,
        len: u64,
        reason: FailReason,
        out: &mut Vec<Action>,
    ) {
        if self.geometry.check(offset, len).is_err() {
            return;
        }
        let range = self.geometry.regions_touched(offset, len);
        // Only regions the service was asked for and had not answered failed; the rest
        // of the range is being hydrated, overwritten, restored, or was never asked.
        if !self.requested.intersects(range.clone()) {
            return;
        }
        self.counters.fetch_failures += 1;
        let whole = mutants::active(Mutant::FailWaitersOfWholeRange);
        let mut keys = core::mem::take(&mut self.fail_scratch);
        keys.clear();
        for h in &self.held {
            let hit = self.need_ranges(h).into_iter().flatten().any(|need| {
                let both = need.start.max(range.start)..need.end.min(range.end);
                if whole {
                    self.first_missing(both).is_some()
                } else {
                    self.requested.intersects(both)
                }
            });
            if hit {
                keys.push(h.key);
            }
        }
        self.requested.remove(range);
        for &key in &keys {
            self.drop_held(key, reason.status(), out);
        }
        self.fail_scratch = keys;
    }

    /// The regions whose data held request `h` needs: all it touches for a read, the
    /// partly covered head and tail regions for a write, none for a trim.
    pub(super) fn need_ranges(&self, h: &Held) -> [Option<Range<u64>>; 2] {
        let touched = self.geometry.regions_touched(h.offset, h.len);
        match h.kind {
            Kind::Read => [Some(touched), None],
            Kind::Discard => [None, None],
            Kind::Write { .. } => {
                let covered = self.covered(h.kind, h.offset, h.len);
                if covered.is_empty() {
                    return [Some(touched), None];
                }
                let head = (touched.start < covered.start).then_some(touched.start..covered.start);
                let tail = (covered.end < touched.end).then_some(covered.end..touched.end);
                [head, tail]
            }
        }
    }
}
