//! The per-sector oracle the interval bookkeeping replaced, kept as a differential
//! reference: one `Expect` per sector for what a read may return, one for what a flush
//! guaranteed, and per sector the values applied since with their acknowledgement
//! clocks. Plain and slow on purpose.
//!
//! With the cross-check on (`super::Oracle::cross_check`, tests only) the oracle feeds every
//! event to this reference too, and after each one asserts both gave the same verdict
//! and, over the sectors the event touched, allow the same values now and after a
//! power loss (over the whole volume after a flush, a crash, a reboot and at the end).
//! The tests below run random event histories straight into both, and whole seeds
//! and mutants with it on ([`cross_checked`]).

use std::cell::Cell;

use super::{
    first_lost, lost_at_commit, lost_at_reboot, mark_changes, marked_before_durable, MarkChange,
};
use crate::content::Expect;
use crate::data::{app_tag, describe, is_garbage, Backup};
use crate::device::Disk;
use crate::verifier::{Rule, Verifier};

/// Trims in `hist`: a trimmed sector may read as anything written.
const TRIMMED: u64 = u64::MAX;
/// A `hist` entry whose request is not acknowledged yet: no flush can make it stable.
const PENDING: u64 = u64::MAX;

thread_local! {
    /// Oracles made on this thread are cross-checked (see [`cross_checked`]).
    static CROSS_CHECK: Cell<bool> = const { Cell::new(false) };
}

/// True when oracles made now on this thread are to be cross-checked (also what
/// `crate::oracle::reference_on_here` says).
pub fn on_for_new_oracles() -> bool {
    CROSS_CHECK.with(Cell::get)
}

/// Runs `f` with every oracle it makes on this thread cross-checked against the
/// reference (a disagreement panics).
#[cfg(test)]
pub fn cross_checked<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            CROSS_CHECK.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(CROSS_CHECK.with(|c| c.replace(true)));
    f()
}

/// The per-sector reference of one volume.
#[derive(Debug)]
pub struct Reference {
    backup: Backup,
    region_sectors: u64,
    exp: Vec<Expect>,
    stable: Vec<Expect>,
    hist: Vec<Vec<(u64, u64)>>,
    writer_seq: Vec<u64>,
    /// Per op slot, per sector of a write: `exp` before its data first reached it.
    prev: Vec<Vec<Option<Expect>>>,
    durable_marks: Vec<u64>,
    /// The reference's own verdicts.
    pub v: Verifier,
}

impl Reference {
    /// A volume of `sectors` restored from `backup`.
    pub fn new(sectors: u64, region_sectors: u64, backup: Backup) -> Reference {
        let exp: Vec<Expect> = (0..sectors).map(|s| Expect::Exact(backup.tag(s))).collect();
        Reference {
            backup,
            region_sectors,
            stable: exp.clone(),
            exp,
            hist: vec![Vec::new(); sectors as usize],
            writer_seq: vec![0; sectors as usize],
            prev: Vec::new(),
            durable_marks: vec![0; sectors.div_ceil(region_sectors).div_ceil(64) as usize],
            v: Verifier::default(),
        }
    }

    /// What a read of `s` may return now.
    pub fn expect(&self, s: u64) -> &Expect {
        &self.exp[s as usize]
    }

    /// What `s` may hold after power loss now.
    pub fn after_crash(&self, s: u64) -> Expect {
        let h = &self.hist[s as usize];
        if h.iter().any(|&(v, _)| v == TRIMMED) {
            return Expect::Any;
        }
        let mut e = self.stable[s as usize].clone();
        for &(v, _) in h {
            e = e.union(&Expect::Exact(v));
        }
        e
    }

    /// Write `slot` of `count` sectors was issued.
    pub fn start_write(&mut self, slot: u32, count: u64) {
        let slot = slot as usize;
        if self.prev.len() <= slot {
            self.prev.resize(slot + 1, Vec::new());
        }
        self.prev[slot].clear();
        self.prev[slot].resize(count as usize, None);
    }

    /// Request `slot` is over.
    pub fn end(&mut self, slot: u32) {
        if let Some(p) = self.prev.get_mut(slot as usize) {
            p.clear();
        }
    }

    /// The device applied `count` sectors from `start` of write `slot` (request `seq`,
    /// write `write_id`, first sector `first`).
    pub fn device_write(
        &mut self,
        slot: u32,
        (seq, write_id, first): (u64, u64, u64),
        start: u64,
        count: u64,
    ) {
        for s in start..start + count {
            if self.writer_seq[s as usize] > seq {
                self.v.fail(
                    Rule::Ordering,
                    format!(
                        "write #{seq} landed on sector {s} after the later write #{}",
                        self.writer_seq[s as usize]
                    ),
                );
                return;
            }
            self.writer_seq[s as usize] = seq;
            let value = app_tag(write_id, s);
            let prev = std::mem::replace(&mut self.exp[s as usize], Expect::Exact(value));
            let slot_prev = &mut self.prev[slot as usize][(s - first) as usize];
            if slot_prev.is_none() {
                *slot_prev = Some(prev);
            }
            self.hist[s as usize].push((value, PENDING));
        }
    }

    /// The device applied a trim to `count` sectors from `start`.
    pub fn device_trim(&mut self, start: u64, count: u64) {
        for s in start..start + count {
            self.exp[s as usize] = Expect::Any;
            self.hist[s as usize].push((TRIMMED, PENDING));
        }
    }

    fn acknowledge(&mut self, s: u64, value: u64, clock: u64) {
        if let Some(e) = self.hist[s as usize]
            .iter_mut()
            .rev()
            .find(|e| e.0 == value && e.1 == PENDING)
        {
            e.1 = clock;
        }
    }

    /// Read `seq` of `sector..sector + count` returned `data`.
    pub fn read_done(&mut self, seq: u64, sector: u64, count: u64, data: &[u64]) {
        for (i, &value) in data.iter().enumerate() {
            let s = sector + i as u64;
            let e = &self.exp[s as usize];
            if !e.allows(value) {
                let rule = if value == self.backup.tag(s) {
                    Rule::StaleRestore
                } else {
                    Rule::ReadValue
                };
                self.v.fail(
                    rule,
                    format!(
                        "read #{seq} of sectors {sector}+{count}: sector {s} returned {}, expected {} (backup {})",
                        describe(value),
                        e.describe(),
                        describe(self.backup.tag(s))
                    ),
                );
                break;
            }
            if !matches!(e, Expect::Exact(_)) {
                self.exp[s as usize] = Expect::Exact(value);
            }
        }
    }

    /// Write `slot` (request `seq`, write `write_id`) of `sector..sector + count` was
    /// acknowledged at `clock`.
    pub fn write_done(
        &mut self,
        slot: u32,
        (seq, write_id, fua): (u64, u64, bool),
        sector: u64,
        count: u64,
        clock: u64,
    ) {
        for i in 0..count {
            let s = sector + i;
            let value = app_tag(write_id, s);
            if self.prev[slot as usize][i as usize].is_none() {
                if self.writer_seq[s as usize] <= seq {
                    self.exp[s as usize] = Expect::Exact(value);
                }
            } else {
                self.acknowledge(s, value, clock);
                if fua {
                    let h = &mut self.hist[s as usize];
                    if let Some(pos) = h.iter().rposition(|&(v, _)| v == value) {
                        self.stable[s as usize] = Expect::Exact(value);
                        h.drain(..=pos);
                    }
                }
            }
        }
    }

    /// A trim of `sector..sector + count` was acknowledged at `clock`.
    pub fn trim_done(&mut self, sector: u64, count: u64, clock: u64) {
        for s in sector..sector + count {
            self.acknowledge(s, TRIMMED, clock);
        }
    }

    /// Write `slot` (request `seq`) of `sector..sector + count` failed.
    pub fn write_failed(&mut self, slot: u32, seq: u64, sector: u64, count: u64) {
        for i in 0..count {
            let s = sector + i;
            if let Some(prev) = self.prev[slot as usize][i as usize].take() {
                if self.writer_seq[s as usize] == seq {
                    self.exp[s as usize] = self.exp[s as usize].union(&prev);
                }
            }
        }
    }

    /// A flush issued at clock `before` completed.
    pub fn flush_done(&mut self, before: u64) {
        for s in 0..self.hist.len() {
            let h = &mut self.hist[s];
            if let Some(pos) = h.iter().rposition(|&(_, at)| at != PENDING && at < before) {
                let value = h[pos].0;
                self.stable[s] = if value == TRIMMED {
                    Expect::Any
                } else {
                    Expect::Exact(value)
                };
                h.drain(..=pos);
            }
        }
    }

    fn allowed_after_crash(&self, s: u64, value: u64) -> bool {
        let h = &self.hist[s as usize];
        self.stable[s as usize].allows(value)
            || h.iter()
                .any(|&(v, _)| v == value || (v == TRIMMED && !is_garbage(value)))
    }

    /// Power loss.
    pub fn crash(&mut self) {
        for s in 0..self.hist.len() {
            if !self.hist[s].is_empty() {
                self.stable[s] = self.after_crash(s as u64);
                self.hist[s].clear();
            }
        }
        self.exp.clone_from(&self.stable);
        self.prev.iter_mut().for_each(Vec::clear);
    }

    fn region_marked(words: &[u64], region: u64) -> bool {
        words
            .get((region / 64) as usize)
            .is_some_and(|w| w >> (region % 64) & 1 == 1)
    }

    /// After a reboot with `marked` loaded.
    pub fn check_reboot(&mut self, marked: &[u64], disk: &Disk, volume_start: u64) {
        if let Some(region) = first_lost(&self.durable_marks, marked) {
            self.v.fail(Rule::DurableMark, lost_at_reboot(region));
            return;
        }
        for s in 0..self.exp.len() as u64 {
            let region = s / self.region_sectors;
            let value = disk.live((volume_start + s) as usize);
            let e = &self.exp[s as usize];
            if Self::region_marked(marked, region) {
                if !e.allows(value) {
                    self.v.fail(
                        Rule::CrashState,
                        format!(
                            "after reboot region {region} is marked restored but sector {s} holds {}, allowed {}",
                            describe(value),
                            e.describe()
                        ),
                    );
                    return;
                }
            } else if !e.allows(self.backup.tag(s)) {
                self.v.fail(
                    Rule::CrashState,
                    format!(
                        "after reboot sector {s} must hold {} (flushed) but its region {region} is not marked restored: it would be fetched from the backup",
                        e.describe()
                    ),
                );
                return;
            }
        }
        self.durable_marks.clear();
        self.durable_marks.extend_from_slice(marked);
    }

    /// After a metadata commit with `durable` the words the store would load now.
    pub fn check_commit(&mut self, durable: &[u64], disk: &Disk, volume_start: u64) {
        let sectors = self.exp.len() as u64;
        for change in mark_changes(&self.durable_marks, durable) {
            let region = match change {
                MarkChange::Lost(region) => {
                    self.v.fail(Rule::DurableMark, lost_at_commit(region));
                    return;
                }
                MarkChange::Added(region) => region,
            };
            let first = region * self.region_sectors;
            let end = (first + self.region_sectors).min(sectors);
            for s in first..end {
                let value = disk.media((volume_start + s) as usize);
                if !self.allowed_after_crash(s, value) {
                    self.v
                        .fail(Rule::DurableMark, marked_before_durable(region, s, value));
                    return;
                }
            }
        }
        self.durable_marks.clear();
        self.durable_marks.extend_from_slice(durable);
    }

    /// At the end, with everything restored and flushed.
    pub fn check_final_image(&mut self, disk: &Disk, volume_start: u64) {
        for s in 0..self.exp.len() as u64 {
            let value = disk.live((volume_start + s) as usize);
            if !self.exp[s as usize].allows(value) {
                self.v.fail(
                    Rule::ReadValue,
                    format!(
                        "final image: sector {s} holds {}, expected {}",
                        describe(value),
                        self.exp[s as usize].describe()
                    ),
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The interval oracle against this reference: random event histories fed straight
    //! to both (every verdict and every allowed set must agree), then whole seeds and
    //! mutants with the cross-check on.

    use rehydrate_driver::mutants::Mutant;
    use rehydrate_driver::Status;

    use super::cross_checked;
    use crate::data::{app_tag, garbage_tag, Backup};
    use crate::device::Disk;
    use crate::oracle::{OpKind, Oracle};
    use crate::rng::Rng;
    use crate::verifier::Verifier;
    use crate::{Faults, RunConfig};

    /// A value a read of `s` may return, or (`wrong`) one it may well not.
    fn read_value(o: &Oracle, rng: &mut Rng, s: u64, write_ids: u64, wrong: bool) -> u64 {
        if wrong {
            return match rng.below(3) {
                0 => garbage_tag(s),
                1 => o.values.backup().tag(s),
                _ => app_tag(rng.below(write_ids + 1), s),
            };
        }
        match o.expect(s) {
            crate::content::Expect::Exact(v) => v,
            crate::content::Expect::AnyOf(set) => set[rng.pick(set.len())],
            crate::content::Expect::Any if rng.coin() => o.values.backup().tag(s),
            crate::content::Expect::Any => app_tag(rng.below(write_ids + 1), s),
        }
    }

    /// One random history: requests of every kind, partial and failed device writes,
    /// flushes, commits of growing marks over a disk with a cache, power loss and
    /// reboot, a final image. Returns whether a verdict was reached (both agreed).
    fn history(seed: u64) -> bool {
        let mut rng = Rng::new(seed);
        let region_sectors = [1, 4, 8][rng.pick(3)];
        let sectors = rng.range(1, 24) * 8;
        let backup = Backup::new(seed, region_sectors as u32 * 512, rng.below(4));
        let mut o = Oracle::new(sectors, region_sectors, backup, 1_000);
        assert!(o.cross_check());
        let mut v = Verifier::default();
        let mut disk = Disk::new(sectors as usize, 512, rng.coin());
        if rng.below(8) != 0 {
            // Restored already, durably; else every region still holds garbage.
            disk.write(0, sectors as usize, true, |i| backup.tag(i as u64));
        }
        let region_count = sectors.div_ceil(region_sectors);
        let mut marks = vec![0u64; region_count.div_ceil(64) as usize];
        // Regions written: the filter marks them (now and then a broken one does not).
        let mut written = marks.clone();
        // Writes in flight: slot, first sector, count, write id, fua.
        let mut writes: Vec<(u32, u64, u64, u64, bool)> = Vec::new();
        let mut write_ids = 0;
        for step in 0..400u64 {
            if v.failed() {
                break;
            }
            let at = rng.below(sectors);
            let count = rng.range(1, (sectors - at).min(32));
            match rng.below(12) {
                0..=2 if o.may_issue(at, count) => {
                    write_ids += 1;
                    let fua = rng.below(4) == 0;
                    let slot = o.start(OpKind::Write { fua }, at, count, write_ids, step);
                    for region in at / region_sectors..=(at + count - 1) / region_sectors {
                        written[(region / 64) as usize] |= 1 << (region % 64);
                    }
                    writes.push((slot, at, count, write_ids, fua));
                }
                3 | 4 if !writes.is_empty() => {
                    // The device applies part of a write in flight.
                    let (slot, first, n, id, fua) = writes[rng.pick(writes.len())];
                    let from = first + rng.below(n);
                    let len = rng.range(1, first + n - from);
                    disk.write(from as usize, len as usize, fua, |i| {
                        app_tag(id, from + i as u64)
                    });
                    o.on_device_write(slot, from, len, &mut v);
                }
                5 if !writes.is_empty() => {
                    let (slot, first, n, id, fua) = writes.swap_remove(rng.pick(writes.len()));
                    if rng.below(16) != 0 {
                        // The device applies the whole write (else it is acknowledged
                        // without reaching it, and a read shows that).
                        disk.write(first as usize, n as usize, fua, |i| {
                            app_tag(id, first + i as u64)
                        });
                        o.on_device_write(slot, first, n, &mut v);
                    }
                    if rng.below(4) == 0 {
                        o.excuse(slot, Status::IO_DEVICE_ERROR);
                        o.finish(slot, Status::IO_DEVICE_ERROR, 0, &[], step, &mut v);
                    } else {
                        let len_bytes = (n * 512) as usize;
                        o.finish(slot, Status::SUCCESS, len_bytes, &[], step, &mut v);
                    }
                }
                6 if o.may_issue(at, count) => {
                    let slot = o.start(OpKind::Read, at, count, 0, step);
                    let wrong = if rng.below(100) == 0 {
                        at + rng.below(count)
                    } else {
                        u64::MAX
                    };
                    let data: Vec<u64> = (at..at + count)
                        .map(|s| read_value(&o, &mut rng, s, write_ids, s == wrong))
                        .collect();
                    o.finish(slot, Status::SUCCESS, data.len() * 512, &data, step, &mut v);
                }
                7 if o.may_issue(at, count) => {
                    let slot = o.start(OpKind::Trim, at, count, 0, step);
                    if rng.coin() {
                        // A trim leaves the device's data as it was or anything written.
                        o.on_device_trim(at, count);
                    }
                    o.finish(slot, Status::SUCCESS, 0, &[], step, &mut v);
                }
                8 => {
                    let slot = o.start(OpKind::Flush, 0, 0, 0, step);
                    let mark = disk.cache_mark();
                    disk.flush_before(mark);
                    o.finish(slot, Status::SUCCESS, 0, &[], step, &mut v);
                }
                9 => {
                    // The filter flushes the data before a commit marks it; now and
                    // then a broken one does not.
                    if rng.below(16) != 0 {
                        disk.flush();
                    }
                    let region = rng.below(region_count);
                    marks[(region / 64) as usize] |= 1 << (region % 64);
                    if rng.below(16) != 0 {
                        marks.iter_mut().zip(&written).for_each(|(m, w)| *m |= w);
                    }
                    o.check_commit(&marks, &disk, 0, &mut v);
                }
                10 if rng.below(3) == 0 => {
                    let torn = rng.coin();
                    disk.crash(&mut rng, torn);
                    writes.clear();
                    o.crash();
                    if rng.below(64) == 0 {
                        // A mark lost across the reboot.
                        let region = rng.below(region_count);
                        marks[(region / 64) as usize] &= !(1 << (region % 64));
                    }
                    o.check_reboot(&marks, &disk, 0, &mut v);
                }
                _ => {}
            }
        }
        if !v.failed() {
            for (slot, first, n, id, fua) in writes.drain(..) {
                disk.write(first as usize, n as usize, fua, |i| {
                    app_tag(id, first + i as u64)
                });
                o.on_device_write(slot, first, n, &mut v);
                o.finish(slot, Status::SUCCESS, (n * 512) as usize, &[], 0, &mut v);
            }
            disk.flush();
            o.check_final_image(&disk, 0, &mut v);
        }
        if let Some(f) = v.first() {
            eprintln!("history {seed}: {:?} {}", f.rule, f.detail);
        }
        v.failed()
    }

    #[test]
    fn random_histories_get_the_same_verdicts_from_the_oracle_and_the_reference() {
        let mut failed = 0;
        let histories = 400;
        for seed in 0..histories {
            failed += u64::from(history(seed));
        }
        // Both verdicts occur: the histories reach violations and clean ends alike.
        assert!(
            failed > histories / 10 && failed < histories * 9 / 10,
            "{failed} of {histories} histories failed"
        );
    }

    #[test]
    fn whole_seeds_and_mutants_agree_with_the_reference() {
        for seed in 0..6 {
            let config = RunConfig::new(seed, 120, Faults::all());
            let outcome = cross_checked(|| crate::run(&config));
            assert!(
                outcome.violation.is_none(),
                "seed {seed}: {:?}",
                outcome.violation
            );
        }
        for (i, &mutant) in Mutant::ALL.iter().enumerate() {
            let config = RunConfig {
                mutant: Some(mutant),
                ..RunConfig::new(i as u64, 120, Faults::all())
            };
            // Caught or not, both oracles reach the same verdict (a panic otherwise).
            cross_checked(|| crate::run(&config));
        }
    }
}
