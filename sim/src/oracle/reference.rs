//! The per-sector oracle the interval bookkeeping replaced, kept as a differential
//! reference: one `Expect` per sector for what a read may return, one for what a flush
//! guaranteed, and per sector the values applied since with their acknowledgement
//! clocks. Plain and slow on purpose.
//!
//! With the cross-check on ([`super::Oracle::cross_check`]) the oracle feeds every
//! event to this reference too, and after each one asserts both gave the same verdict
//! and, over the sectors the event touched, allow the same values now and after a
//! power loss (over the whole volume after a flush, a crash, a reboot and at the end).
//! A test runs seeds and mutants with it on (`sim/tests/sweep.rs`).

use crate::content::Expect;
use crate::data::{app_tag, describe, is_garbage, Backup};
use crate::device::Disk;
use crate::verifier::{Rule, Verifier};

/// Trims in `hist`: a trimmed sector may read as anything written.
const TRIMMED: u64 = u64::MAX;
/// A `hist` entry whose request is not acknowledged yet: no flush can make it stable.
const PENDING: u64 = u64::MAX;

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
        for (w, (&have, &had)) in marked.iter().zip(self.durable_marks.iter()).enumerate() {
            if had & !have != 0 {
                let region = w as u64 * 64 + u64::from((had & !have).trailing_zeros());
                self.v.fail(Rule::DurableMark, format!("region {region} was durably marked before power loss and is not after reboot"));
                return;
            }
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
        for (w, (&now, &before)) in durable.iter().zip(self.durable_marks.iter()).enumerate() {
            if before & !now != 0 {
                let region = w as u64 * 64 + u64::from((before & !now).trailing_zeros());
                self.v.fail(
                    Rule::DurableMark,
                    format!("durable mark of region {region} reverted"),
                );
                return;
            }
            let mut newly = now & !before;
            while newly != 0 {
                let region = w as u64 * 64 + u64::from(newly.trailing_zeros());
                newly &= newly - 1;
                let first = region * self.region_sectors;
                let end = (first + self.region_sectors).min(sectors);
                for s in first..end {
                    let value = disk.media((volume_start + s) as usize);
                    if !self.allowed_after_crash(s, value) {
                        self.v.fail(
                            Rule::DurableMark,
                            format!(
                                "region {region} became durably marked while sector {s} durably holds {} (its data is not durable yet)",
                                describe(value)
                            ),
                        );
                        return;
                    }
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
