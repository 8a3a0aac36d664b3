//! Durability: flushes, FUA writes, metadata commits and the durable view of the map.
//!
//! A mark is recorded with the number of flushes issued before it; flush `n` covers the
//! marks recorded before it was issued (a disk promises no more: writes that complete
//! after a flush was issued may not be in it). Covered marks are handed to the metadata
//! by the next commit and leave the engine when that commit is durable. A file-system
//! flush completes only once a commit covers every mark its flush made durable-eligible;
//! a FUA write likewise, unless every region it touched was already durably marked.

use alloc::vec::Vec;
use core::ops::Range;

use super::state::InFlight;
use super::{Action, Engine, RequestId};
use crate::mutants::{self, Mutant};
use crate::status::Status;

impl Engine {
    /// A flush from the file system: forwarded; completed after the commit it needs.
    pub(super) fn on_flush_request(&mut self, id: RequestId, out: &mut Vec<Action>) {
        let room =
            self.reservation_allowed() && self.room_for_lower(1) && self.room_for_durability(1);
        if !room {
            self.fail(id, Status::INSUFFICIENT_RESOURCES, out);
            return;
        }
        self.durability_requests += 1;
        self.issue_flush(Some(id), out);
    }

    /// Sends a flush down (the file system's, or the engine's own when `id` is None);
    /// returns its sequence number.
    fn issue_flush(&mut self, id: Option<RequestId>, out: &mut Vec<Action>) -> u64 {
        self.flushes_issued += 1;
        let seq = self.flushes_issued;
        let lower = self.lower_id();
        self.push_lower(lower, InFlight::Flush { id, seq });
        self.last_flush_ns = self.now_ns;
        match id {
            Some(id) => out.push(Action::Forward { id, lower }),
            None => {
                self.engine_flushes_in_flight += 1;
                out.push(Action::FlushDown { lower });
            }
        }
        seq
    }

    /// The engine's own flush, when there is room for it (else a later tick retries).
    pub(super) fn flush_down(&mut self, out: &mut Vec<Action>) -> Option<u64> {
        let len = self.in_flight.len();
        let room = len < self.in_flight.capacity() || self.in_flight.try_reserve(1).is_ok();
        room.then(|| self.issue_flush(None, out))
    }

    /// True when a FUA write that just completed on `[offset, offset+len)` needs a
    /// flush and a commit before it may complete: a region it touched is not marked,
    /// or its mark is not durably committed yet.
    pub(super) fn fua_needs_commit(&self, offset: u64, len: u64) -> bool {
        if mutants::active(Mutant::SkipFuaCommitWhenUnflushed) {
            return false;
        }
        let touched = self.geometry.regions_touched(offset, len);
        !self.map.is_range_restored(touched.clone())
            || self
                .marks
                .iter()
                .any(|m| m.regions.start < touched.end && touched.start < m.regions.end)
    }

    /// A FUA write whose regions need a durable commit waits for flush `seq` (sent
    /// here) and the commit after it.
    pub(super) fn wait_for_durable(&mut self, id: RequestId, out: &mut Vec<Action>) {
        match self.flush_down(out) {
            Some(seq) => self.fua_waiters.push((id, seq)),
            None => self.complete_durable(id, Status::INSUFFICIENT_RESOURCES, out),
        }
    }

    /// Completes a flush or FUA write the engine kept for durability.
    fn complete_durable(&mut self, id: RequestId, status: Status, out: &mut Vec<Action>) {
        debug_assert!(self.durability_requests > 0);
        self.durability_requests -= 1;
        if status.is_success() {
            out.push(Action::Complete { id, status });
        } else {
            self.fail(id, status, out);
        }
    }

    /// A flush (the file system's or the engine's) came back.
    pub(super) fn flush_done(
        &mut self,
        id: Option<RequestId>,
        seq: u64,
        status: Status,
        out: &mut Vec<Action>,
    ) {
        if id.is_none() {
            self.engine_flushes_in_flight -= 1;
        }
        if !status.is_success() {
            if let Some(id) = id {
                self.complete_durable(id, status, out);
            }
            self.fail_fua_waiters(seq, status, out);
            return;
        }
        self.flushed_upto(seq);
        let generation = self.flushed_generation;
        let mut i = 0;
        while i < self.fua_waiters.len() {
            let (waiter, needs_seq) = self.fua_waiters[i];
            if needs_seq <= seq {
                self.fua_waiters.swap_remove(i);
                if self.committed_generation >= generation {
                    self.complete_durable(waiter, Status::SUCCESS, out);
                } else {
                    self.flush_waiters.push((waiter, generation));
                }
                continue;
            }
            i += 1;
        }
        match id {
            Some(id) if self.committed_generation >= self.flushed_generation => {
                self.complete_durable(id, Status::SUCCESS, out);
            }
            Some(id) => self.flush_waiters.push((id, self.flushed_generation)),
            None => {}
        }
        self.maybe_commit(out);
    }

    /// The flush a FUA write waited for failed: so does the write.
    fn fail_fua_waiters(&mut self, seq: u64, status: Status, out: &mut Vec<Action>) {
        let mut i = 0;
        while i < self.fua_waiters.len() {
            let (waiter, needs_seq) = self.fua_waiters[i];
            if needs_seq == seq {
                self.fua_waiters.swap_remove(i);
                self.complete_durable(waiter, status, out);
                continue;
            }
            i += 1;
        }
    }

    /// Flush number `seq` completed: every mark recorded before it was issued is
    /// durable-eligible.
    fn flushed_upto(&mut self, seq: u64) {
        let later_too = mutants::active(Mutant::FlushCoversLaterMarks);
        let mut moved = false;
        while let Some(m) = self.marks.get(self.marks_flushed) {
            let covered = m.tag < seq || later_too && m.tag == seq;
            if !covered {
                break;
            }
            self.marks_flushed += 1;
            moved = true;
        }
        if moved {
            self.flushed_generation += 1;
        }
    }

    fn maybe_commit(&mut self, out: &mut Vec<Action>) {
        if self.commit_in_flight.is_some() || self.committed_generation == self.flushed_generation {
            self.maybe_all_restored(out);
            return;
        }
        let commit = self.next_commit;
        self.next_commit += 1;
        self.commit_in_flight = Some(commit);
        self.commit_covers = self.flushed_generation;
        out.push(Action::CommitMetadata { commit });
    }

    /// Hands the marks that became durable-eligible since the last call to `note` (the
    /// metadata, which dirties their pages). The shell calls it when it performs a
    /// commit. The marks stay counted as not durable until the commit succeeds.
    pub fn take_flushed_marks(&mut self, mut note: impl FnMut(Range<u64>)) {
        self.commit_covers = self.flushed_generation;
        for m in self.marks.range(self.marks_taken..self.marks_flushed) {
            note(m.regions.clone());
        }
        self.marks_taken = self.marks_flushed;
    }

    /// Sorts and merges the unflushed marks so [`Engine::durable_word`] can hide them.
    /// Call before a commit reads `durable_word`.
    pub fn prepare_durable_view(&mut self) {
        self.unflushed_sorted.clear();
        debug_assert!(self.unflushed_sorted.capacity() >= self.marks.len() - self.marks_flushed);
        self.unflushed_sorted.extend(
            self.marks
                .range(self.marks_flushed..)
                .map(|m| m.regions.clone()),
        );
        self.unflushed_sorted.sort_unstable_by_key(|r| r.start);
        // Merge overlaps so both starts and ends increase: one binary search finds the
        // first range that can reach a word.
        let mut merged = 0;
        for i in 0..self.unflushed_sorted.len() {
            let r = self.unflushed_sorted[i].clone();
            if merged > 0 && self.unflushed_sorted[merged - 1].end >= r.start {
                let last = &mut self.unflushed_sorted[merged - 1];
                last.end = last.end.max(r.end);
            } else {
                self.unflushed_sorted[merged] = r;
                merged += 1;
            }
        }
        self.unflushed_sorted.truncate(merged);
    }

    /// Word `index` of the bitmap as it may be made durable: the in-memory marks minus
    /// those whose data is not flushed yet (rule 2). Valid after
    /// [`Engine::prepare_durable_view`] until the next event.
    pub fn durable_word(&self, index: usize) -> u64 {
        let mut word = self.map.word(index);
        if word == 0
            || self.unflushed_sorted.is_empty()
            || mutants::active(Mutant::CommitMetadataBeforeDataFlush)
        {
            return word;
        }
        let first = index as u64 * 64;
        let last = first + 64;
        let from = self.unflushed_sorted.partition_point(|r| r.end <= first);
        for r in &self.unflushed_sorted[from..] {
            if r.start >= last {
                break;
            }
            let s = r.start.max(first);
            let e = r.end.min(last);
            let n = e - s;
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << (s - first)
            };
            word &= !mask;
        }
        word
    }

    pub(super) fn on_committed(&mut self, commit: u64, ok: bool, out: &mut Vec<Action>) {
        if self.commit_in_flight != Some(commit) {
            debug_assert!(false, "answer for commit {commit} not in flight");
            return;
        }
        self.commit_in_flight = None;
        let covers = self.commit_covers;
        if ok {
            self.counters.commits += 1;
            self.committed_generation = self.committed_generation.max(covers);
            // Every mark handed to the metadata so far is durable now (a failed commit
            // leaves its pages dirty, so this one wrote them too).
            self.marks.drain(..self.marks_taken);
            self.marks_flushed -= self.marks_taken;
            self.marks_taken = 0;
        }
        let mut i = 0;
        while i < self.flush_waiters.len() {
            let (id, needs) = self.flush_waiters[i];
            if needs <= covers {
                self.flush_waiters.swap_remove(i);
                let status = if ok {
                    Status::SUCCESS
                } else {
                    Status::IO_DEVICE_ERROR
                };
                self.complete_durable(id, status, out);
                continue;
            }
            i += 1;
        }
        if ok {
            self.maybe_commit(out);
        }
    }

    pub(super) fn maybe_all_restored(&mut self, out: &mut Vec<Action>) {
        if !self.all_restored_said && self.is_passthrough() {
            self.all_restored_said = true;
            out.push(Action::AllRestored);
        }
    }

    /// The periodic part: flush marks that waited long enough, retry a failed commit.
    pub(super) fn tick_durability(&mut self, out: &mut Vec<Action>) {
        let now = self.now_ns;
        let stale = self.marks.len() > self.marks_flushed
            && now.saturating_sub(self.last_flush_ns) >= self.config.commit_interval_ns;
        if stale && self.engine_flushes_in_flight == 0 {
            self.flush_down(out);
        }
        if self.commit_in_flight.is_none() && self.committed_generation != self.flushed_generation {
            self.maybe_commit(out);
        }
    }
}
