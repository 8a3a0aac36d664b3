//! The bench's judge: which injected fault hit which request (so each error completion
//! is judged on its own), and the checks after every step — the engine's stated bounds,
//! that every held request can progress, and that no region is left stranded.

extern crate std;

use std::vec::Vec;

use super::{AppKind, AppReq, Harness, LowerOp, TRIMMED};
use crate::engine::RequestId;
use crate::geometry::SECTOR_SIZE_BYTES;
use crate::status::{FailReason, Status};
use core::ops::Range;

impl Harness {
    /// Regions whose data `app` needs: a read all it touches, a write its partly
    /// covered head and tail, a trim nothing.
    fn needed(&self, app: &AppReq) -> [Option<Range<u64>>; 2] {
        if !matches!(app.kind, AppKind::Read | AppKind::Write { .. }) {
            return [None, None];
        }
        let offset = app.sector as u64 * SECTOR_SIZE_BYTES;
        let len = app.sectors as u64 * SECTOR_SIZE_BYTES;
        let touched = self.geometry.regions_touched(offset, len);
        match app.kind {
            AppKind::Read => [Some(touched), None],
            AppKind::Write { .. } => {
                let covered = self.geometry.regions_covered(offset, len);
                if covered.is_empty() {
                    return [Some(touched), None];
                }
                [
                    (touched.start < covered.start).then_some(touched.start..covered.start),
                    (covered.end < touched.end).then_some(covered.end..touched.end),
                ]
            }
            _ => [None, None],
        }
    }

    fn needs_any(&self, app: &AppReq, regions: &Range<u64>) -> bool {
        self.needed(app)
            .into_iter()
            .flatten()
            .any(|n| n.start.max(regions.start) < n.end.min(regions.end))
    }

    pub(super) fn excuse(&mut self, id: RequestId, status: Status) {
        if let Some(a) = self.apps.get_mut(&id) {
            a.excused |= status.fault_bit();
        }
    }

    /// Every live request that needs a region of `regions` may fail with `status`.
    fn excuse_needing(&mut self, regions: Range<u64>, status: Status) {
        let hit: Vec<RequestId> = self
            .apps
            .iter()
            .filter(|(_, a)| self.needs_any(a, &regions))
            .map(|(&id, _)| id)
            .collect();
        for id in hit {
            self.excuse(id, status);
        }
    }

    /// A flush or commit failed: every live flush and FUA write may fail.
    pub(super) fn excuse_durability(&mut self, status: Status) {
        for a in self.apps.values_mut() {
            if matches!(a.kind, AppKind::Flush | AppKind::Write { fua: true }) {
                a.excused |= status.fault_bit();
            }
        }
    }

    /// The service reports `regions` failed: what the engine asked for and did not get
    /// failed; nothing else (data on its way, restored, or not waited for yet).
    pub(super) fn excuse_fetch_failure(&mut self, regions: Range<u64>, reason: FailReason) {
        let hits: Vec<Range<u64>> = self
            .engine
            .requested_runs()
            .map(|r| r.start.max(regions.start)..r.end.min(regions.end))
            .filter(|r| !r.is_empty())
            .collect();
        for r in hits {
            self.excuse_needing(r, reason.status());
        }
    }

    /// Lower I/O `op` fails (a media error).
    pub(super) fn excuse_lower_failure(&mut self, op: &LowerOp) {
        match op {
            LowerOp::App { id } => self.excuse(*id, Status::IO_DEVICE_ERROR),
            LowerOp::Hydrate { sector, values } => {
                let first = (*sector as u64 * SECTOR_SIZE_BYTES) / self.region_bytes();
                let end = ((*sector + values.len()) as u64 * SECTOR_SIZE_BYTES)
                    .div_ceil(self.region_bytes());
                self.excuse_needing(first..end, Status::IO_DEVICE_ERROR);
            }
            LowerOp::Flush { .. } => self.excuse_durability(Status::IO_DEVICE_ERROR),
        }
    }

    fn region_bytes(&self) -> u64 {
        u64::from(self.geometry.region_size_bytes())
    }

    /// Request `id` was just registered: what it may meet from the start.
    pub(super) fn note_issue(&mut self, id: RequestId) {
        let full = self.engine.held_count() >= self.config.held_max;
        if full || self.no_memory {
            self.excuse(id, Status::INSUFFICIENT_RESOURCES);
        }
        let Some(app) = self.apps.get(&id).cloned() else {
            return;
        };
        if app.kind != AppKind::Read {
            return;
        }
        // A read overlapping writes or trims still at the device races them: each of its
        // sectors may come back old or new.
        let mut race: Vec<super::Expect> = (0..app.sectors)
            .map(|i| self.acked[app.sector + i].clone())
            .collect();
        let mut raced = false;
        for other in self.apps.values() {
            let at_device = other.forwarded && !other.lower_done;
            if !at_device || !matches!(other.kind, AppKind::Write { .. } | AppKind::Discard) {
                continue;
            }
            let from = app.sector.max(other.sector);
            let to = (app.sector + app.sectors).min(other.sector + other.sectors);
            for s in from..to {
                let v = match other.kind {
                    AppKind::Discard => TRIMMED,
                    _ => other.values[s - other.sector],
                };
                race[s - app.sector] = race[s - app.sector].with(v);
                raced = true;
            }
        }
        if !raced {
            return;
        }
        if let Some(a) = self.apps.get_mut(&id) {
            a.race = race;
        }
    }

    /// An error completion: explained only by a fault that hit this request (or, for a
    /// timeout, by having been held past the deadline).
    pub(super) fn judge_failure(&self, id: RequestId, app: &AppReq, status: Status) {
        let bit = status.fault_bit();
        let waited = self.now_ns.saturating_sub(app.issued_ns);
        let aged = status == Status::IO_TIMEOUT && waited >= self.config.hold_deadline_ns;
        assert!(
            aged || bit != 0 && app.excused & bit != 0,
            "model: request {id} ({:?} of sectors {}+{}) failed with {status:?} after {} ms, which no fault that hit it explains (excused {:#x})",
            app.kind,
            app.sector,
            app.sectors,
            waited / 1_000_000,
            app.excused
        );
    }

    fn hydrating(&self, region: u64) -> bool {
        let sectors = self.region_sectors(region);
        self.lower.iter().any(|(_, op)| match op {
            LowerOp::Hydrate { sector, values } => {
                *sector < sectors.end && sectors.start < *sector + values.len()
            }
            _ => false,
        })
    }

    fn claimed(&self, region: u64) -> bool {
        let sectors = self.region_sectors(region);
        self.lower.iter().any(|(_, op)| match op {
            LowerOp::App { id } => self.apps.get(id).is_some_and(|a| {
                matches!(a.kind, AppKind::Write { .. } | AppKind::Discard)
                    && a.sector <= sectors.start
                    && sectors.end <= a.sector + a.sectors
            }),
            _ => false,
        })
    }

    fn region_sectors(&self, region: u64) -> Range<usize> {
        let b = self.geometry.regions_byte_range(region..region + 1);
        (b.start / SECTOR_SIZE_BYTES) as usize..(b.end / SECTOR_SIZE_BYTES) as usize
    }

    /// After every step: the engine's bounds (it asks only for regions a held request
    /// needs, a window of them per request), every held request can progress, and a
    /// region whose delivered data was dropped is asked for again if it is missing.
    pub(super) fn check_step(&mut self) {
        if let Err(stall) = self.engine.check_progress() {
            panic!("model: held request cannot progress: {stall:?}");
        }
        let held: Vec<&AppReq> = self
            .apps
            .values()
            .filter(|a| a.ever_held && !a.forwarded)
            .collect();
        let window = self.config.ask_window_regions;
        let mut asked = 0;
        for run in self.engine.requested_runs() {
            asked += run.end - run.start;
            for r in run.clone() {
                assert!(
                    held.iter().any(|a| self.needs_any(a, &(r..r + 1))),
                    "model: region {r} is asked of the service but no held request needs it"
                );
            }
        }
        assert!(
            asked <= held.len() as u64 * window,
            "model: {asked} regions asked for {} held requests (window {window})",
            held.len()
        );
        let map = self.engine.map().clone();
        self.dropped.retain(|&r| !map.is_restored(r));
        for &r in &self.dropped {
            let got = self.engine.requested_runs().any(|run| run.contains(&r))
                || self.hydrating(r)
                || self.claimed(r)
                || self.delivering.contains(&r)
                // A hydrate of it still being written: if that write fails, the service
                // hears of it and fetches the region again.
                || self.batches.values().any(|b| b.contains(&r))
                || self.fetches.iter().any(|f| f.contains(&r));
            assert!(
                got,
                "model: region {r} is missing again after the engine dropped the data delivered for it, and nobody will fetch it"
            );
        }
    }
}
