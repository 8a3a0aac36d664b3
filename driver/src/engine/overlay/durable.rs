//! Durability of the overlay side: overlay flushes, O marks, and the one commit
//! pipeline shared with the in-place engine.
//!
//! An O mark is recorded with the number of overlay flushes issued before it; flush
//! `n` covers the marks recorded before it was issued. Covered marks go into the
//! durable map (the [`NamedMap`](crate::meta::NamedMap) commits write), which so never
//! holds a region whose overlay data is not durable; each batch moved makes a new
//! generation, and a flush (or FUA write) completes once a commit covers the
//! generation its overlay flush made.
//!
//! Commits: the in-place engine asks for its own (D marks); this layer carries them,
//! one at a time, in its commits, which also write O and the record. A commit that
//! changes the record is strictly two-phase in the metadata (pages, flush, header).

use alloc::vec::Vec;
use core::ops::Range;

use super::super::room::room;
use super::super::{Action, Event, RequestId};
use super::more;
use super::{Commit, Mark, OverlayEngine, Own};
use crate::mutants::{self, Mutant};
use crate::status::Status;

impl OverlayEngine {
    /// A flush from above: the overlay is flushed and its O marks committed (after the
    /// merge: the destination is flushed).
    pub(super) fn on_flush(&mut self, id: RequestId, out: &mut Vec<Action>) {
        let waiting = self.flush_waiters.len() + self.seq_waiters.len() + 1;
        let room = more(&mut self.own, 1)
            && room(&mut self.seq_waiters, waiting)
            && room(&mut self.flush_waiters, waiting);
        if !room {
            self.fail(id, Status::INSUFFICIENT_RESOURCES, out);
            return;
        }
        if self.merged {
            let lower = self.own_lower();
            self.push_own(lower, Own::FlushDestination { id: Some(id) });
            out.push(Action::FlushDown { lower });
            return;
        }
        let seq = self.flush_overlay(out);
        self.seq_waiters.push((id, seq));
    }

    /// Sends an overlay flush down; returns its number. Room for it was kept.
    pub(super) fn flush_overlay(&mut self, out: &mut Vec<Action>) -> u64 {
        self.overlay_flushes += 1;
        let seq = self.overlay_flushes;
        let lower = self.own_lower();
        self.push_own(lower, Own::FlushOverlay { seq });
        self.overlay_flushes_in_flight += 1;
        self.last_flush_ns = self.now_ns;
        out.push(Action::FlushOverlay { lower });
        seq
    }

    /// The engine's own overlay flush, when there is room (else a tick retries).
    pub(super) fn try_flush_overlay(&mut self, out: &mut Vec<Action>) -> Option<u64> {
        more(&mut self.own, 1).then(|| self.flush_overlay(out))
    }

    /// Overlay data of `regions` is at the device: they join O in memory, and the
    /// durable map after the next overlay flush.
    pub(super) fn record_mark(&mut self, regions: Range<u64>, out: &mut Vec<Action>) {
        if regions.is_empty() {
            return;
        }
        self.o.mark_range(regions.clone());
        if mutants::active(Mutant::MarkOverlayBeforeFlush) {
            self.o_durable.mark(regions);
            self.flushed_gen += 1;
            self.maybe_commit(out);
            return;
        }
        debug_assert!(
            self.marks.len() < self.marks.capacity(),
            "no room kept for a mark"
        );
        self.marks.push_back(Mark {
            regions,
            tag: self.overlay_flushes,
        });
        if self.marks.len() >= self.config.engine.marks_soft_max
            && self.overlay_flushes_in_flight == 0
        {
            self.try_flush_overlay(out);
        }
    }

    /// True when a FUA write that completed on the range must wait for an overlay
    /// flush and a commit: a region it touched is not durably in O yet.
    pub(super) fn fua_needs_commit(&self, offset: u64, len: u64) -> bool {
        let touched = self.geometry.regions_touched(offset, len);
        // The durable map's newest marks may still wait for their commit.
        self.committed_gen < self.flushed_gen
            || touched.clone().any(|r| !self.o_durable.is_marked(r))
            || self
                .marks
                .iter()
                .any(|m| m.regions.start < touched.end && touched.start < m.regions.end)
    }

    /// A FUA write whose regions are not durably in O waits for an overlay flush sent
    /// now and the commit after it.
    pub(super) fn wait_for_durable(&mut self, id: RequestId, out: &mut Vec<Action>) {
        let waiting = self.flush_waiters.len() + self.seq_waiters.len() + 1;
        let room = room(&mut self.seq_waiters, waiting) && room(&mut self.flush_waiters, waiting);
        match room.then(|| self.try_flush_overlay(out)).flatten() {
            Some(seq) => self.seq_waiters.push((id, seq)),
            None => self.fail(id, Status::INSUFFICIENT_RESOURCES, out),
        }
    }

    /// Overlay flush `seq` completed: the marks recorded before it was issued join the
    /// durable map; its waiters wait for a commit of them.
    pub(super) fn overlay_flushed(&mut self, seq: u64, status: Status, out: &mut Vec<Action>) {
        self.overlay_flushes_in_flight -= 1;
        if !status.is_success() {
            let mut i = 0;
            while i < self.seq_waiters.len() {
                if self.seq_waiters[i].1 == seq {
                    let (id, _) = self.seq_waiters.swap_remove(i);
                    self.fail(id, status, out);
                    continue;
                }
                i += 1;
            }
            self.merge_flush_failed(seq, status, out);
            return;
        }
        let mut moved = false;
        // Bounded by the marks; they are in tag order.
        while let Some(m) = self.marks.front() {
            if m.tag >= seq {
                break;
            }
            self.o_durable.mark(m.regions.clone());
            self.marks.pop_front();
            moved = true;
        }
        if moved {
            self.flushed_gen += 1;
        }
        let generation = self.flushed_gen;
        let mut i = 0;
        while i < self.seq_waiters.len() {
            let (id, needs) = self.seq_waiters[i];
            if needs <= seq {
                self.seq_waiters.swap_remove(i);
                if self.committed_gen >= generation {
                    out.push(Action::Complete {
                        id,
                        status: Status::SUCCESS,
                    });
                } else {
                    self.flush_waiters.push((id, generation));
                }
                continue;
            }
            i += 1;
        }
        self.merge_flushed(seq);
        self.maybe_commit(out);
    }

    /// A destination flush (the merge's, or the application's after the merge).
    pub(super) fn destination_flushed(
        &mut self,
        id: Option<RequestId>,
        status: Status,
        out: &mut Vec<Action>,
    ) {
        match id {
            Some(id) if status.is_success() => out.push(Action::Complete { id, status }),
            Some(id) => self.fail(id, status, out),
            None => self.merge_destination_flushed(status, out),
        }
    }

    /// Asks for a commit when something waits for one and none is in flight.
    pub(super) fn maybe_commit(&mut self, out: &mut Vec<Action>) {
        if self.commit.is_some() {
            return;
        }
        let wanted = self.inner_commit_wanted.is_some()
            || self.flushed_gen > self.committed_gen
            || self.record.state != self.record_state;
        if !wanted {
            return;
        }
        let id = self.next_commit;
        self.next_commit += 1;
        self.commit = Some(Commit {
            id,
            inner: self.inner_commit_wanted.take(),
            covers: self.flushed_gen,
            state: self.record.state,
        });
        out.push(Action::CommitMetadata { commit: id });
    }

    /// The shell performs the commit in flight now: the in-place engine's marks that
    /// became durable-eligible go to `note` (the metadata), and the record to write is
    /// returned. Then the shell commits with [`OverlayEngine::durable_word`] and
    /// answers with [`Event::MetadataCommitted`].
    pub fn prepare_commit(
        &mut self,
        note: impl FnMut(Range<u64>),
    ) -> [u8; crate::meta::MAP_RECORD_BYTES] {
        if let Some(c) = self.commit.as_mut() {
            // Everything in the durable map now goes into this commit.
            c.covers = self.flushed_gen;
            c.state = self.record.state;
            if c.inner.is_some() {
                self.inner.take_flushed_marks(note);
            }
        }
        self.inner.prepare_durable_view();
        let mut record = self.record;
        if let Some(c) = &self.commit {
            record.state = c.state;
        }
        record.encode()
    }

    /// Sorts D's unflushed marks so [`OverlayEngine::durable_word`] can hide them, for
    /// a shell that commits outside [`OverlayEngine::prepare_commit`] (a record of its
    /// own; nothing of this engine's commit changes).
    pub fn prepare_durable_view(&mut self) {
        self.inner.prepare_durable_view();
    }

    /// Word `index` of D as it may be made durable (valid after
    /// [`OverlayEngine::prepare_commit`] until the next event).
    pub fn durable_word(&self, index: usize) -> u64 {
        self.inner.durable_word(index)
    }

    pub(super) fn on_committed(&mut self, commit: u64, ok: bool, out: &mut Vec<Action>) {
        let Some(c) = self.commit.filter(|c| c.id == commit) else {
            debug_assert!(false, "answer for commit {commit} not in flight");
            return;
        };
        self.commit = None;
        if let Some(inner) = c.inner {
            if self.room_to_inner(1) {
                self.to_inner
                    .push_back(Event::MetadataCommitted { commit: inner, ok });
            }
        }
        let status = if ok {
            self.counters.commits += 1;
            self.committed_gen = self.committed_gen.max(c.covers);
            debug_assert!(self.record_state <= c.state, "the record went back");
            self.record_state = c.state;
            Status::SUCCESS
        } else {
            Status::IO_DEVICE_ERROR
        };
        let mut i = 0;
        while i < self.flush_waiters.len() {
            let (id, needs) = self.flush_waiters[i];
            if needs <= c.covers {
                self.flush_waiters.swap_remove(i);
                if ok {
                    out.push(Action::Complete { id, status });
                } else {
                    self.fail(id, status, out);
                }
                continue;
            }
            i += 1;
        }
        self.wake = true;
        if ok {
            self.maybe_commit(out);
        }
    }

    /// The periodic part: flush O marks that waited long enough, retry a commit.
    pub(super) fn tick_durability(&mut self, out: &mut Vec<Action>) {
        let stale = !self.marks.is_empty()
            && self.now_ns.saturating_sub(self.last_flush_ns)
                >= self.config.engine.commit_interval_ns;
        if stale && self.overlay_flushes_in_flight == 0 {
            self.try_flush_overlay(out);
        }
        self.maybe_commit(out);
    }
}
