//! The cutover: merging the overlay into the destination, as a sans-IO planner.
//!
//! # Protocol
//! Refused unless every region of the destination is restored and durably committed
//! ([`MergeRefused`]). Then, in steps (each waits for the one before):
//!
//! 1. **Quiesce**: new requests are held; the requests and fills at a device finish.
//! 2. **Seal**: the overlay is flushed, and one commit writes O (every region whose
//!    overlay data is now durable) and the state *merging*. Until that commit is
//!    durable nothing is written to the destination, so a crash before it leaves a
//!    plain pseudo-volume; after it, the destination may hold overlay data, but only
//!    of regions in the durable O, which reads never take from the destination.
//! 3. **Copy**: every region of the durable O is copied from the overlay into the
//!    destination ([`Action::Copy`], at most `merge_copies_max` at once).
//! 4. **Flush the destination.**
//! 5. **Commit *merged*.** From then on the volume is the destination: held requests
//!    go to it, the overlay may be deleted.
//!
//! A crash at any step leaves a state that a new cutover finishes with the same
//! result: before step 2's commit, nothing happened; after it, O and the overlay are
//! intact and the copies are repeated whole; after step 5 there is nothing to do.
//! The record never goes back, and *merged* is durable only after the flush of the
//! destination (a mark of the overlay's end never precedes the data it stands for).
//!
//! # Online
//! The online merge copies while the application runs: Seal, Copy, then Quiesce,
//! Seal again, and Copy only the regions written since their first copy (a write
//! completing over a region clears its *clean* bit and spoils a copy of it in
//! flight), then steps 4 and 5. The application is held only for that last copy.

use alloc::vec::Vec;
use core::ops::Range;

use super::super::Action;
use super::more;
use super::{OverlayEngine, Own, State};
use crate::mutants::{self, Mutant};
use crate::status::Status;

/// How a cutover began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeStart {
    /// The merge runs; [`Action::Merged`] says when it is durable.
    Started,
    /// The volume was merged already: nothing to do.
    AlreadyMerged,
}

/// Why a cutover cannot begin. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MergeRefused {
    /// Regions of the destination are not restored yet.
    #[error("the destination is not completely restored ({missing_regions} of {total_regions} regions missing)")]
    Incomplete {
        /// Regions not restored.
        missing_regions: u64,
        /// Regions in the volume.
        total_regions: u64,
    },
    /// Every region is restored but not all of it is durable yet (a commit is due).
    #[error("the destination is restored but not durably committed yet; try again in a moment")]
    NotDurable,
    /// A merge runs already.
    #[error("a cutover is already in progress")]
    InProgress,
    /// No memory for the merge's region set.
    #[error("no memory for the cutover's region set")]
    NoMemory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Quiesce,
    Seal,
    Copy { last: bool },
    FlushDestination,
    CommitMerged,
}

const OFFLINE: [Step; 5] = [
    Step::Quiesce,
    Step::Seal,
    Step::Copy { last: true },
    Step::FlushDestination,
    Step::CommitMerged,
];
const ONLINE: [Step; 7] = [
    Step::Seal,
    Step::Copy { last: false },
    Step::Quiesce,
    Step::Seal,
    Step::Copy { last: true },
    Step::FlushDestination,
    Step::CommitMerged,
];

/// A merge in progress.
#[derive(Debug)]
pub(super) struct Merge {
    plan: &'static [Step],
    at: usize,
    /// New requests are held.
    pub(super) holding: bool,
    /// Seal: the overlay flush sent, and the generation it made durable-eligible.
    seal_seq: Option<u64>,
    seal_gen: Option<u64>,
    /// Copy: the next region to look at, and copies in flight.
    cursor: u64,
    copies: usize,
    /// The destination flush was sent; it completed.
    flush_sent: bool,
    flushed: bool,
    /// One bit per region: copied, and not written since.
    clean: Vec<u64>,
}

impl Merge {
    fn step(&self) -> Step {
        self.plan[self.at]
    }

    fn is_clean(&self, region: u64) -> bool {
        self.clean
            .get((region / 64) as usize)
            .is_some_and(|w| w & (1 << (region % 64)) != 0)
    }

    fn set_clean(&mut self, regions: Range<u64>, clean: bool) {
        for region in regions {
            if let Some(w) = self.clean.get_mut((region / 64) as usize) {
                if clean {
                    *w |= 1 << (region % 64);
                } else {
                    *w &= !(1 << (region % 64));
                }
            }
        }
    }
}

impl OverlayEngine {
    /// Begins the cutover: the whole merge with the application held (`online` false),
    /// or copying while it runs and holding it only for the regions written since.
    pub fn merge(
        &mut self,
        online: bool,
        out: &mut Vec<Action>,
    ) -> Result<MergeStart, MergeRefused> {
        if self.merged {
            return Ok(MergeStart::AlreadyMerged);
        }
        if self.merge.is_some() || self.merge_io_in_flight() {
            // A failed merge's copies may still land: a new one must not copy before
            // them (its clean bits would hide their stale data).
            return Err(MergeRefused::InProgress);
        }
        let d = self.inner.map();
        if !d.is_all_restored() {
            return Err(MergeRefused::Incomplete {
                missing_regions: d.region_count() - d.restored_count(),
                total_regions: d.region_count(),
            });
        }
        if !self.inner.is_passthrough() {
            return Err(MergeRefused::NotDurable);
        }
        let words = self.geometry.region_count().div_ceil(64) as usize;
        let mut clean = Vec::new();
        if clean.try_reserve_exact(words).is_err() {
            return Err(MergeRefused::NoMemory);
        }
        clean.resize(words, 0);
        self.merge = Some(Merge {
            plan: if online { &ONLINE } else { &OFFLINE },
            at: 0,
            holding: false,
            seal_seq: None,
            seal_gen: None,
            cursor: 0,
            copies: 0,
            flush_sent: false,
            flushed: false,
            clean,
        });
        self.wake = true;
        self.settle(out);
        self.check_invariants();
        Ok(MergeStart::Started)
    }

    /// True while copies or a destination flush of a merge are at a device.
    fn merge_io_in_flight(&self) -> bool {
        self.own.iter().any(|(_, io)| {
            matches!(
                io,
                Own::MergeCopy { .. } | Own::FlushDestination { id: None }
            )
        })
    }

    /// Moves the merge through as many steps as are done.
    pub(super) fn step_merge(&mut self, out: &mut Vec<Action>) {
        // Bounded: at most one pass per step of the plan, plus one.
        for _ in 0..=ONLINE.len() {
            let Some(step) = self.merge.as_ref().map(Merge::step) else {
                return;
            };
            let done = match step {
                Step::Quiesce => self.quiesced(),
                Step::Seal => self.sealed(out),
                Step::Copy { last } => self.copied_all(last, out),
                Step::FlushDestination => self.destination_flushed_step(out),
                Step::CommitMerged => {
                    self.commit_merged(out);
                    return;
                }
            };
            if !done {
                return;
            }
            if let Some(m) = self.merge.as_mut() {
                m.at += 1;
            }
        }
    }

    /// Holds new requests; true once nothing of the application's is at a device.
    fn quiesced(&mut self) -> bool {
        if let Some(m) = self.merge.as_mut() {
            m.holding = true;
        }
        self.reqs.iter().all(|r| r.run.is_none()) && self.fills.is_empty()
    }

    /// Flushes the overlay, then commits O and the state *merging*; true once durable.
    fn sealed(&mut self, out: &mut Vec<Action>) -> bool {
        let Some(m) = self.merge.as_ref() else {
            return false;
        };
        match (m.seal_seq, m.seal_gen) {
            (None, _) => {
                if let Some(seq) = self.try_flush_overlay(out) {
                    if let Some(m) = self.merge.as_mut() {
                        m.seal_seq = Some(seq);
                    }
                }
                false
            }
            (Some(_), None) => false,
            (Some(_), Some(generation)) => {
                let durable =
                    self.committed_gen >= generation && self.record_state >= State::Merging;
                if durable {
                    if let Some(m) = self.merge.as_mut() {
                        m.seal_seq = None;
                        m.seal_gen = None;
                    }
                }
                durable
            }
        }
    }

    /// The seal's overlay flush completed: commit what it made durable with the state
    /// *merging* (the commit is asked for by the caller).
    pub(super) fn merge_flushed(&mut self, seq: u64) {
        let generation = self.flushed_gen;
        let Some(m) = self.merge.as_mut() else {
            return;
        };
        if m.seal_seq == Some(seq) {
            m.seal_gen = Some(generation);
            if self.record.state < State::Merging {
                self.record.state = State::Merging;
            }
            self.wake = true;
        }
    }

    /// An overlay flush failed; if the seal sent it, the merge stops.
    pub(super) fn merge_flush_failed(&mut self, seq: u64, status: Status, out: &mut Vec<Action>) {
        if self.merge.as_ref().is_some_and(|m| m.seal_seq == Some(seq)) {
            self.merge_failed(status, out);
        }
    }

    /// Copies the durable O into the destination, skipping clean regions; true once
    /// every region is copied and no copy is in flight.
    fn copied_all(&mut self, last: bool, out: &mut Vec<Action>) -> bool {
        if last {
            debug_assert!(
                mutants::any() || self.marks.is_empty(),
                "the last copy began with O marks not yet durable"
            );
        }
        let max_copies = self.config.merge_copies_max.max(1);
        // Bounded: each pass sends a copy or ends.
        loop {
            let Some(m) = self.merge.as_ref() else {
                return false;
            };
            if m.copies >= max_copies {
                return false;
            }
            if self.flushed_gen != self.committed_gen {
                // Only regions whose O mark is committed are copied: the destination
                // differs from the backup only where a crash leaves O reading the
                // overlay. The commit of the newer marks is on its way.
                return false;
            }
            let Some(regions) = self.next_copy(m.cursor) else {
                break;
            };
            if !more(&mut self.own, 1) {
                return false;
            }
            let bytes = self.geometry.regions_byte_range(regions.clone());
            let lower = self.own_lower();
            self.push_own(
                lower,
                Own::MergeCopy {
                    regions: regions.clone(),
                    spoiled: false,
                },
            );
            if let Some(m) = self.merge.as_mut() {
                m.cursor = regions.end;
                m.copies += 1;
            }
            out.push(Action::Copy {
                lower,
                from: super::super::Target::Overlay,
                to: super::super::Target::Destination,
                offset: bytes.start,
                len: bytes.end - bytes.start,
            });
        }
        let Some(m) = self.merge.as_mut() else {
            return false;
        };
        if m.copies > 0 {
            return false;
        }
        m.cursor = 0;
        true
    }

    /// The next run of regions at or after `from` that are durably in O and not clean,
    /// at most `merge_copy_bytes` long.
    fn next_copy(&self, from: u64) -> Option<Range<u64>> {
        let m = self.merge.as_ref()?;
        let count = self.geometry.region_count();
        let region_bytes = u64::from(self.geometry.region_size_bytes());
        let max_regions = (self.config.merge_copy_bytes / region_bytes).max(1);
        let wanted = |r: u64| self.o_durable.is_marked(r) && !m.is_clean(r);
        let mut r = from;
        // Bounded by the regions; whole words with nothing to copy are skipped.
        while r < count {
            let w = (r / 64) as usize;
            let bits = self.o_durable.word(w) & !m.clean.get(w).copied().unwrap_or(0);
            let bits = bits >> (r % 64);
            if bits == 0 {
                r = (r / 64 + 1) * 64;
                continue;
            }
            r += u64::from(bits.trailing_zeros());
            break;
        }
        if r >= count {
            return None;
        }
        let mut end = r + 1;
        while end < count && end - r < max_regions && wanted(end) {
            end += 1;
        }
        Some(r..end)
    }

    /// A merge copy finished.
    pub(super) fn copied(
        &mut self,
        regions: Range<u64>,
        spoiled: bool,
        status: Status,
        out: &mut Vec<Action>,
    ) {
        let Some(m) = self.merge.as_mut() else {
            // A copy of a merge that failed: nobody counts it any more.
            return;
        };
        m.copies -= 1;
        if !status.is_success() {
            self.merge_failed(status, out);
            return;
        }
        let bytes = self.geometry.regions_byte_range(regions.clone());
        self.counters.merge_copied_bytes += bytes.end - bytes.start;
        if !spoiled {
            m.set_clean(regions, true);
        }
    }

    /// Overlay data of `regions` changed: a merge copies them again.
    pub(super) fn written(&mut self, regions: Range<u64>) {
        let Some(m) = self.merge.as_mut() else {
            return;
        };
        m.set_clean(regions.clone(), false);
        for (_, io) in self.own.iter_mut() {
            if let Own::MergeCopy {
                regions: copying,
                spoiled,
            } = io
            {
                if copying.start < regions.end && regions.start < copying.end {
                    *spoiled = true;
                }
            }
        }
    }

    /// Sends the destination flush; true once it completed.
    fn destination_flushed_step(&mut self, out: &mut Vec<Action>) -> bool {
        let Some(m) = self.merge.as_ref() else {
            return false;
        };
        if !m.flush_sent {
            if !more(&mut self.own, 1) {
                return false;
            }
            let lower = self.own_lower();
            self.push_own(lower, super::Own::FlushDestination { id: None });
            out.push(Action::FlushDown { lower });
            if let Some(m) = self.merge.as_mut() {
                m.flush_sent = true;
            }
            // The mutant commits the end of the overlay without waiting for the data.
            return mutants::active(Mutant::ClearOverlayBeforeDestinationFlush);
        }
        m.flushed
    }

    /// The merge's destination flush completed.
    pub(super) fn merge_destination_flushed(&mut self, status: Status, out: &mut Vec<Action>) {
        if !status.is_success() {
            if self.merge.is_some() {
                self.merge_failed(status, out);
            }
            return;
        }
        if let Some(m) = self.merge.as_mut() {
            m.flushed = true;
        }
    }

    /// Commits *merged*; once durable, the volume is the destination.
    fn commit_merged(&mut self, out: &mut Vec<Action>) {
        self.record.state = State::Merged;
        if self.record_state != State::Merged {
            self.maybe_commit(out);
            return;
        }
        self.merge = None;
        self.merged = true;
        self.wake = true;
        out.push(Action::Merged);
    }

    /// The merge stops; the volume goes on as a pseudo-volume (the state stays what is
    /// durable: a later cutover starts over).
    fn merge_failed(&mut self, status: Status, out: &mut Vec<Action>) {
        debug_assert!(status.is_error());
        // Only the steps before *merged* is asked for can fail.
        debug_assert!(self.record.state <= State::Merging);
        self.merge = None;
        self.wake = true;
        out.push(Action::MergeFailed { status });
    }
}
