//! The engine's invariants, checked after every event in debug builds, and the
//! progress check the simulator runs after every step.

use super::state::{InFlight, Kind};
use super::{Engine, Stall};
use crate::mutants;

impl Engine {
    /// Checks that every held request can make progress: it waits behind an earlier
    /// request on its sectors, or on a region somebody is getting (the service was
    /// asked, or a hydrate write or an overwriting write is at the device).
    pub fn check_progress(&self) -> Result<(), Stall> {
        for h in &self.held {
            let stall = |region, why| Stall {
                id: h.id,
                region,
                why,
            };
            if h.blockers > 0 {
                continue;
            }
            let Some(region) = h.attached else {
                return Err(stall(None, "not waiting on anything and not forwarded"));
            };
            let covered = self.covered(h.kind, h.offset, h.len);
            let needs = self.needs_data(h.kind, h.offset, h.len, region);
            let got = if needs {
                self.being_got(region)
            } else {
                covered.contains(&region) && self.hydrating.contains(region)
            };
            if !got {
                return Err(stall(Some(region), "waits on a region nobody is getting"));
            }
        }
        Ok(())
    }

    pub(super) fn check_invariants(&self) {
        if !cfg!(debug_assertions) || mutants::any() {
            return;
        }
        assert!(self.held.len() <= self.config.held_max);
        assert!(self.committed_generation <= self.flushed_generation);
        assert!(self.marks_taken <= self.marks_flushed && self.marks_flushed <= self.marks.len());
        assert!(self.held.windows(2).all(|w| w[0].key < w[1].key));
        assert!(self.waiters.windows(2).all(|w| w[0] < w[1]));
        assert!(self.in_flight.windows(2).all(|w| w[0].lower < w[1].lower));
        self.requested.check();
        self.hydrating.check();
        let attached = self.held.iter().filter(|h| h.attached.is_some()).count();
        assert_eq!(
            attached,
            self.waiters.len(),
            "one waiter entry per waiting request"
        );
        for h in &self.held {
            let touched = self.geometry.regions_touched(h.offset, h.len);
            assert!(touched.start <= h.cursor && h.cursor <= touched.end);
            assert!(h.asked_to <= touched.end);
            // A read's cursor only moves forward; a write's may step back to a region
            // that started hydrating, but it asks for at most its head and tail.
            assert!(
                h.kind != Kind::Read || h.asked_to <= h.cursor + self.config.ask_window_regions
            );
            if let Some(r) = h.attached {
                assert_eq!(r, h.cursor, "a held request waits on its cursor region");
                assert!(self.waiters.binary_search(&(r, h.key)).is_ok());
            } else {
                assert!(
                    h.cursor == touched.end && h.blockers > 0,
                    "idle held request"
                );
            }
        }
        let requested = self.requested.region_count();
        let window_total = self.held.len() as u64 * self.config.ask_window_regions;
        assert!(
            requested <= window_total,
            "{requested} regions asked for {} held requests",
            self.held.len()
        );
        for run in self.requested.iter().chain(self.hydrating.iter()) {
            assert!(
                self.map.first_missing_from(run.start) == Some(run.start)
                    && run.clone().all(|r| !self.map.is_restored(r)),
                "a restored region in {run:?} is asked or hydrating"
            );
        }
        for run in self.requested.iter() {
            assert!(
                !self.hydrating.intersects(run),
                "asked and hydrating at once"
            );
        }
        let sequenced = self
            .in_flight
            .iter()
            .filter(|l| matches!(&l.io, InFlight::Request(r) if r.sequenced.is_some()))
            .count();
        assert_eq!(sequenced, self.sequenced_count);
        let parts = self
            .in_flight
            .iter()
            .filter(|l| matches!(l.io, InFlight::Hydrate { .. }))
            .count();
        assert_eq!(parts, self.hydrate_parts);
        assert!(self.hydrating.run_count() <= self.hydrate_parts);
        assert!(self.batches.len() <= self.config.hydrate_batches_max);
        if let Err(stall) = self.check_progress() {
            panic!("held request cannot progress: {stall:?}");
        }
    }
}
