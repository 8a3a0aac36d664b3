//! A machine's metadata commits: run by the commit work item, with media faults and
//! power loss aimed inside them, and checked against the oracle whenever one flushed.

use rehydrate_driver::meta::identity_tag;
use rehydrate_driver::Status;

use super::Machine;
use crate::faults::Fault;
use crate::link::Link;
use crate::verifier::Rule;

impl Machine {
    pub(crate) fn commit_work(&mut self, commit: u64, link: &mut Link) {
        if self.filter.is_none() {
            return;
        }
        if self.faults_on(Fault::Media) && self.wdf.k.rng.chance(self.meta_ppm) {
            let after = self.wdf.k.rng.below(6);
            self.store.store.fail_after(after);
            // The commit may fail: so may the flushes and FUA writes waiting on it.
            self.wdf.k.oracle.excuse_durability(Status::IO_DEVICE_ERROR);
            self.wdf.k.note_delay_fault();
        }
        // Aim at the first commit after a reboot, when both slots of a page are valid:
        // the slot it must write is the older one, and a torn write there must lose
        // nothing.
        let aimed = self.commits_since_boot == 0
            && self.boots > 1
            && self
                .store
                .has_page_with_both_slots(identity_tag(&self.identity))
            && self.wdf.k.rng.below(3) == 0;
        self.commits_since_boot += 1;
        if self.faults_on(Fault::PowerLoss)
            && (aimed || self.wdf.k.rng.chance(self.commit_crash_ppm))
        {
            // Power fails in the middle of this commit: after its first page write and
            // before its flush completes (a commit is its dirty pages, the header, a
            // flush; small volumes have one bitmap page).
            let after = self.wdf.k.rng.range(1, 2);
            if crate::oracle::trace_enabled() {
                eprintln!("commit {commit}: power fails after {after} store operations (unflushed now {})", self.store.store.unflushed_count());
            }
            self.store.die_after(after);
        }
        let flushes = self.store.store.counts().flushes;
        if let Some(f) = self.filter.as_mut() {
            f.on_commit_work(&mut self.wdf, commit, &mut self.store);
        }
        self.store.store.clear_faults();
        self.wdf.collect();
        if !self.store.is_dead() {
            // A commit with little to write may end before the armed failure point.
            self.store.disarm();
        }
        if self.store.is_dead() {
            if crate::oracle::trace_enabled() {
                eprintln!(
                    "power lost during commit {commit} at t={}",
                    self.wdf.k.now_ns()
                );
            }
            self.power_loss(link);
            return;
        }
        if self.store.store.counts().flushes != flushes {
            // Only a commit that flushed can change what is durable.
            self.check_commit();
        }
    }

    /// What the metadata would load right now if power failed: every mark in it must
    /// sit over durable data, and no mark may have reverted. Read from the store's
    /// durable image as `Metadata::open` does (every valid slot's bits are ORed in),
    /// decoding only the slots whose bytes changed since the last check.
    pub(crate) fn check_commit(&mut self) {
        let tag = identity_tag(&self.identity);
        let region_count = self.geometry.region_count();
        let start = self.partition_start;
        let k = &mut self.wdf.k;
        match self
            .durable_marks
            .load(&self.store.store, region_count, tag)
        {
            Ok(words) => k.oracle.check_commit(words, &k.lower.disk, start, &mut k.v),
            Err(page) => k.v.fail(
                Rule::DurableMark,
                format!("bitmap page {page} has no valid durable slot after a commit"),
            ),
        }
    }
}
