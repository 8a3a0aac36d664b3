//! The oracle of a restored volume (T1): what every sector may hold, and the file
//! system's requests in flight (`ops.rs`).
//!
//! It keeps, as runs of sectors (`crate::content`), never per sector:
//! * *now*: what a read may return — the newest acknowledged write, else the backup's
//!   data (rule 1); a set after a failed write or a crash, anything written after a
//!   trim — and which request wrote each run last;
//! * *durable*: what a flush or FUA write guaranteed across power loss, and a log of
//!   what the device applied since, each entry with the oracle clock at which its
//!   request was acknowledged, so a flush makes exactly the older ones stable.
//!
//! After power loss a sector may hold its stable value or any value logged since
//! (rule 3); the oracle checks the device against that for every durably marked region,
//! and checks that every sector whose allowed values exclude the backup lies in a
//! durably marked region (else the filter would fetch backup data over a flushed write).
//!
//! Values enter *now* when the device applies an application write, not when it is
//! acknowledged: the file system never keeps two overlapping requests in flight unless
//! the engine holds the earlier one, and the engine then orders them, which
//! [`Oracle::on_forward`] checks. A write the device applied that later fails widens
//! *now* to {old, new}; a write acknowledged without reaching the device sets *now*
//! anyway, so the read that follows exposes it.
//!
//! A request that fails is judged on its own (rule 5: nothing is lost that could be
//! served): each error status is explained only by an injected fault that hit *that*
//! request while it was alive — it was cancelled, a media error hit its own I/O, a
//! fetch failure hit a region it needed whose data was not already on its way, a
//! hydrate write of such a region failed, a flush or metadata commit its durability
//! depended on failed — or, for `IO_TIMEOUT`, it was held past the hold deadline.
//! The simulator reports those hits ([`Oracle::excuse`] and friends, see `judge.rs`).
//!
//! What a commit left durable is read from the metadata store by [`DurableMarks`]
//! (`marks.rs`), which decodes only the slots the commit rewrote; only regions newly
//! marked are checked against the data.
//!
//! The per-sector oracle this replaced lives on in `reference.rs`, for tests: with
//! `Oracle::cross_check` on, every event also goes to it and both must agree.

mod marks;
mod ops;
// The per-sector reference: built only by tests (`Oracle::cross_check`); a sweep's
// oracle never has one, and pays one `None` check per event for it.
#[cfg_attr(not(test), allow(dead_code))]
mod reference;

/// True when oracles made on this thread now are cross-checked against the reference
/// (a switch per thread, for the tests).
pub fn reference_on_here() -> bool {
    reference::on_for_new_oracles()
}

use std::ops::Range;

use rehydrate_driver::Status;

use crate::content::durable::PENDING;
use crate::content::{Allowed, Durable, IntervalMap, Src, Values};
use crate::data::{describe, Backup};
use crate::device::Disk;
use crate::verifier::{Rule, Verifier};

pub use crate::content::Expect;
pub use marks::DurableMarks;
pub use ops::{Op, OpKind, Ops};
use reference::Reference;

/// True when `REHYDRATE_SIM_TRACE` is set: the oracle prints every request's life.
pub fn trace_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("REHYDRATE_SIM_TRACE").is_some())
}

/// What a read of a run may return now, and the request that wrote it last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Now {
    allowed: Allowed,
    /// Issue order of the last application write the device applied here (0: none):
    /// no earlier write may land over it.
    writer_seq: u64,
}

/// Volumes at most this many sectors (64 MiB) are cross-checked against the per-sector
/// reference when a test asks (its state is about a hundred bytes a sector); every
/// volume a seed draws is smaller.
#[cfg(test)]
pub const CROSS_CHECK_SECTORS_MAX: u64 = 1 << 17;

/// The oracle of one run.
#[derive(Debug)]
pub struct Oracle {
    values: Values,
    sectors: u64,
    region_sectors: u64,
    /// A held request failed with `IO_TIMEOUT` no earlier than this is explained.
    hold_deadline_ns: u64,
    now: IntervalMap<Now>,
    durable: Durable,
    clock: u64,
    ops: Ops,
    /// Regions known durably marked (from the metadata's durable image).
    durable_marks: Vec<u64>,
    /// Runs a read settled (a set narrowed to the value found), kept for its capacity.
    settled: Vec<(Range<u64>, Allowed)>,
    /// Reads checked, sectors compared.
    pub sectors_checked: u64,
    /// The per-sector reference, when cross-checking.
    reference: Option<Box<Reference>>,
}

impl Oracle {
    /// An oracle for a volume of `sectors` sectors restored from `backup`, whose filter
    /// times held requests out after `hold_deadline_ns`.
    pub fn new(sectors: u64, region_sectors: u64, backup: Backup, hold_deadline_ns: u64) -> Oracle {
        let from_backup = Allowed::One(Src::Backup);
        #[cfg_attr(not(test), allow(unused_mut))]
        let mut oracle = Oracle {
            values: Values::new(backup),
            sectors,
            region_sectors,
            hold_deadline_ns,
            now: IntervalMap::new(
                sectors,
                Now {
                    allowed: from_backup,
                    writer_seq: 0,
                },
            ),
            durable: Durable::new(sectors, from_backup),
            clock: 1,
            ops: Ops::default(),
            durable_marks: vec![0; sectors.div_ceil(region_sectors).div_ceil(64) as usize],
            settled: Vec::new(),
            sectors_checked: 0,
            reference: None,
        };
        #[cfg(test)]
        if reference::on_for_new_oracles() {
            let on = oracle.cross_check();
            assert!(on, "a volume of {sectors} sectors is cross-checked");
        }
        oracle
    }

    /// From now on, feeds every event to the per-sector reference too and asserts both
    /// agree (a panic says where not). Only for volumes of at most
    /// [`CROSS_CHECK_SECTORS_MAX`] sectors, before any request; false when refused.
    /// Tests only: sweeps run the interval oracle alone.
    #[cfg(test)]
    pub fn cross_check(&mut self) -> bool {
        if self.sectors > CROSS_CHECK_SECTORS_MAX || self.clock != 1 {
            return false;
        }
        let backup = *self.values.backup();
        self.reference = Some(Box::new(Reference::new(
            self.sectors,
            self.region_sectors,
            backup,
        )));
        true
    }

    /// True while the reference follows this oracle.
    #[cfg(test)]
    pub fn is_cross_checked(&self) -> bool {
        self.reference.is_some()
    }

    /// What a read of `s` may return now.
    pub fn expect(&self, s: u64) -> Expect {
        self.values.expect(self.now.get(s).allowed, s)
    }

    /// What `s` may hold after power loss now.
    pub fn expect_after_crash(&mut self, s: u64) -> Expect {
        let a = self.durable.after_crash(&mut self.values, s);
        self.values.expect(a, s)
    }

    /// Runs of sectors the oracle keeps now (what a read may return, what a power loss
    /// may leave, what was applied since the last flush).
    pub fn runs(&self) -> (usize, usize, usize) {
        (
            self.now.run_count(),
            self.durable.stable().run_count(),
            self.durable.log().len(),
        )
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.ops.in_flight()
    }

    /// The op in `slot`.
    pub fn op(&self, slot: u32) -> &Op {
        self.ops.get(slot)
    }

    /// The op in `slot`, mutable.
    pub fn op_mut(&mut self, slot: u32) -> &mut Op {
        self.ops.get_mut(slot)
    }

    /// Slots of every op in flight, in slot order.
    pub fn live_ops(&self) -> Vec<u32> {
        self.live().map(|(slot, _)| slot).collect()
    }

    /// Every op in flight with its slot, in slot order.
    pub fn live(&self) -> impl Iterator<Item = (u32, &Op)> + '_ {
        self.ops.live()
    }

    /// Every op in flight, in no order (cheaper than [`Oracle::live`]: it walks only
    /// the ops in flight, not every slot).
    pub fn live_unordered(&self) -> impl Iterator<Item = &Op> + '_ {
        self.ops.live_unordered()
    }

    /// May the file system issue a request on these sectors now? (See [`Ops::may_issue`].)
    pub fn may_issue(&self, sector: u64, count: u64) -> bool {
        self.ops.may_issue(sector, count)
    }

    /// Sectors per region.
    pub fn region_sectors(&self) -> u64 {
        self.region_sectors
    }

    /// Volume size in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// A fault hit request `slot`: it may fail with `status`.
    pub fn excuse(&mut self, slot: u32, status: Status) {
        self.ops.excuse(slot, status);
    }

    /// A fault hit the data of `regions` (region indexes): every live request that
    /// needs one of them may fail with `status`.
    pub fn excuse_needing(&mut self, regions: Range<u64>, status: Status) {
        self.ops
            .excuse_needing(regions, status, self.region_sectors, self.sectors);
    }

    /// A flush or a metadata commit failed: every live flush and FUA write (whose
    /// completion waits for one) may fail with `status`.
    pub fn excuse_durability(&mut self, status: Status) {
        self.ops.excuse_durability(status);
    }

    /// Registers a request about to be issued at `now_ns`; returns its slot.
    pub fn start(
        &mut self,
        kind: OpKind,
        sector: u64,
        count: u64,
        write_id: u64,
        now_ns: u64,
    ) -> u32 {
        let slot = self.ops.start(kind, sector, count, write_id);
        let op = self.ops.get_mut(slot);
        op.issued_at = self.clock;
        op.issued_ns = now_ns;
        self.clock += 1;
        if trace_enabled() {
            eprintln!("issue #{} {kind:?} {sector}+{count}", op.seq);
        }
        if let (Some(r), OpKind::Write { .. }) = (self.reference.as_mut(), kind) {
            r.start_write(slot, count);
        }
        slot
    }

    /// The filter sends request `slot` down: nothing issued earlier on its sectors that
    /// the engine ever held may still be short of its lower completion.
    pub fn on_forward(&mut self, slot: u32, v: &mut Verifier) {
        self.ops.on_forward(slot, v);
    }

    /// Request `slot`'s lower I/O completed.
    pub fn on_lower_done(&mut self, slot: u32) {
        let op = self.ops.get_mut(slot);
        if trace_enabled() {
            eprintln!(
                "lower-done #{} {:?} {}+{}",
                op.seq, op.kind, op.sector, op.count
            );
        }
        op.lower_done = true;
    }

    /// The device applied `count` sectors of write `slot` from volume sector `start`.
    pub fn on_device_write(&mut self, slot: u32, start: u64, count: u64, v: &mut Verifier) {
        let op = self.ops.get(slot);
        if !op.live || !matches!(op.kind, OpKind::Write { .. }) {
            v.fail(Rule::Status, format!("device applied write data of request slot {slot}, which is not a write in flight"));
            return;
        }
        let range = start..start + count;
        debug_assert!(start >= op.sector && range.end <= op.sector + op.count);
        let (seq, write_id, first) = (op.seq, op.write_id, op.sector);
        let was_failed = v.failed();
        let later = self
            .now
            .iter(range.clone())
            .find(|(_, n)| n.writer_seq > seq);
        if let Some((run, later)) = later {
            v.fail(
                Rule::Ordering,
                format!(
                    "write #{seq} landed on sector {} after the later write #{}",
                    run.start, later.writer_seq
                ),
            );
        } else {
            self.note_reached(slot, range.clone());
            let written = Allowed::One(Src::App(write_id));
            self.now.set(
                range.clone(),
                Now {
                    allowed: written,
                    writer_seq: seq,
                },
            );
            self.durable.apply(range.clone(), written);
        }
        self.cross(v, was_failed, range.clone(), |r| {
            r.device_write(slot, (seq, write_id, first), start, count)
        });
    }

    /// Records, for the sectors of `range` that write `slot` reaches for the first time,
    /// what they allowed before.
    fn note_reached(&mut self, slot: u32, range: Range<u64>) {
        let op = self.ops.get_mut(slot);
        let prev = &mut op.prev;
        let mut at = range.start;
        let mut i = prev.partition_point(|&(_, end, _)| end <= range.start);
        // Bounded by the runs of `range` and of what was reached before.
        while at < range.end {
            let gap_end = match prev.get(i) {
                Some(&(s, e, _)) if s <= at => {
                    at = e.min(range.end);
                    i += 1;
                    continue;
                }
                Some(&(s, _, _)) => s.min(range.end),
                None => range.end,
            };
            for (run, now) in self.now.iter(at..gap_end) {
                prev.insert(i, (run.start, run.end, now.allowed));
                i += 1;
            }
            at = gap_end;
        }
        debug_assert!(prev.windows(2).all(|w| w[0].1 <= w[1].0));
    }

    /// The device applied a trim to `count` sectors from volume sector `start`.
    pub fn on_device_trim(&mut self, start: u64, count: u64) {
        let range = start..start + count;
        self.now.update(range.clone(), |n| Now {
            allowed: Allowed::Any,
            ..n
        });
        self.durable.apply(range.clone(), Allowed::Any);
        if let Some(r) = self.reference.as_mut() {
            r.device_trim(start, count);
        }
        self.compare(range);
    }

    /// Request `slot` completed at `now_ns`; `data` is what a read returned. Checks it
    /// and frees the slot.
    pub fn finish(
        &mut self,
        slot: u32,
        status: Status,
        information: usize,
        data: &[u64],
        now_ns: u64,
        v: &mut Verifier,
    ) {
        let op = self.ops.get(slot);
        debug_assert!(op.live);
        let (kind, sector, count, seq) = (op.kind, op.sector, op.count, op.seq);
        if trace_enabled() {
            eprintln!(
                "finish #{seq} {kind:?} {sector}+{count} {status:?} held={}",
                op.held
            );
        }
        self.judge_status(slot, status, information, now_ns, v);
        let was_failed = v.failed();
        let clock = self.clock;
        let write_id = op.write_id;
        match kind {
            OpKind::Read if status.is_success() => {
                self.check_read(seq, sector, count, data, v);
                self.cross(v, was_failed, op_range(sector, count), |r| {
                    r.read_done(seq, sector, count, data)
                });
            }
            OpKind::Write { fua } if status.is_success() => {
                self.write_done(slot, fua);
                self.clock += 1;
                self.cross(v, was_failed, op_range(sector, count), |r| {
                    r.write_done(slot, (seq, write_id, fua), sector, count, clock)
                });
            }
            OpKind::Trim if status.is_success() => {
                self.durable
                    .acknowledge(op_range(sector, count), Allowed::Any, clock);
                self.clock += 1;
                self.cross(v, was_failed, op_range(sector, count), |r| {
                    r.trim_done(sector, count, clock)
                });
            }
            OpKind::Write { .. } => {
                self.write_failed(slot);
                self.cross(v, was_failed, op_range(sector, count), |r| {
                    r.write_failed(slot, seq, sector, count)
                });
            }
            OpKind::Flush if status.is_success() => {
                let before = self.ops.get(slot).issued_at;
                self.durable
                    .stabilize(0..self.sectors, |e| e.ack != PENDING && e.ack < before);
                let all = 0..self.sectors;
                self.cross(v, was_failed, all, |r| r.flush_done(before));
            }
            _ => {}
        }
        self.ops.end(slot);
        if let Some(r) = self.reference.as_mut() {
            r.end(slot);
        }
    }

    /// Rule 5 for request `slot` completing with `status` and `information` at `now_ns`.
    fn judge_status(
        &self,
        slot: u32,
        status: Status,
        information: usize,
        now_ns: u64,
        v: &mut Verifier,
    ) {
        let op = self.ops.get(slot);
        let (kind, sector, count, seq) = (op.kind, op.sector, op.count, op.seq);
        let len_bytes = (count * 512) as usize;
        if kind == OpKind::Bad {
            if !status.is_error() {
                v.fail(
                    Rule::Status,
                    format!("request #{seq} past the volume end completed with {status:?}"),
                );
            }
        } else if status.is_success() {
            if matches!(kind, OpKind::Read | OpKind::Write { .. }) && information != len_bytes {
                v.fail(
                    Rule::Status,
                    format!("{kind:?} #{seq} of {len_bytes} bytes completed with information {information}"),
                );
            }
        } else {
            let bit = status.fault_bit();
            let timed_out = status == Status::IO_TIMEOUT
                && now_ns.saturating_sub(op.issued_ns) >= self.hold_deadline_ns;
            if (bit == 0 || op.excused & bit == 0) && !timed_out {
                v.fail(
                    Rule::Status,
                    format!(
                        "{kind:?} #{seq} of sectors {sector}+{count} failed with {status:?} after {} ms, which no fault that hit it explains (excused {:#x})",
                        now_ns.saturating_sub(op.issued_ns) / 1_000_000,
                        op.excused
                    ),
                );
            }
        }
    }

    /// Rules 1 and 4 for read `seq` of `sector..` that returned `data`: each sector holds
    /// what it may now. A sector that may hold one of several values holds, from now on,
    /// the one the read found.
    fn check_read(&mut self, seq: u64, sector: u64, count: u64, data: &[u64], v: &mut Verifier) {
        let end = sector + data.len() as u64;
        let values = &self.values;
        let mut settled = std::mem::take(&mut self.settled);
        settled.clear();
        let mut wrong = None;
        'runs: for (run, now) in self.now.iter(sector..end) {
            let got = &data[(run.start - sector) as usize..(run.end - sector) as usize];
            match now.allowed {
                Allowed::One(src) => {
                    if let Some(i) = first_mismatch(values, src, run.start, got) {
                        wrong = Some((run.start + i as u64, now.allowed));
                        break 'runs;
                    }
                }
                allowed => {
                    for (s, &value) in run.zip(got) {
                        if !values.allows(allowed, s, value) {
                            wrong = Some((s, allowed));
                            break 'runs;
                        }
                        let one = values.settle(allowed, s, value);
                        match settled.last_mut() {
                            Some((r, last)) if r.end == s && *last == one => r.end = s + 1,
                            _ => settled.push((s..s + 1, one)),
                        }
                    }
                }
            }
        }
        for (r, one) in settled.drain(..) {
            self.now.update(r, |n| Now { allowed: one, ..n });
        }
        self.settled = settled;
        self.sectors_checked += data.len() as u64;
        if let Some((s, allowed)) = wrong {
            let value = data[(s - sector) as usize];
            let backup = self.values.backup().tag(s);
            let rule = if value == backup {
                Rule::StaleRestore
            } else {
                Rule::ReadValue
            };
            v.fail(
                rule,
                format!(
                    "read #{seq} of sectors {sector}+{count}: sector {s} returned {}, expected {} (backup {})",
                    describe(value),
                    self.values.expect(allowed, s).describe(),
                    describe(backup)
                ),
            );
        }
    }

    /// Write `slot` was acknowledged: its data is what a read returns, and a flush
    /// issued from now on covers it (a FUA write's is durable already).
    fn write_done(&mut self, slot: u32, fua: bool) {
        let op = self.ops.get(slot);
        let (seq, range) = (op.seq, op.sectors());
        let written = Allowed::One(Src::App(op.write_id));
        // Acknowledged but never reached the device: the next read shows it.
        let mut at = range.start;
        for i in 0..=op.prev.len() {
            let gap_end = op.prev.get(i).map_or(range.end, |p| p.0);
            if at < gap_end {
                self.now.update(at..gap_end, |n| {
                    if n.writer_seq <= seq {
                        Now {
                            allowed: written,
                            ..n
                        }
                    } else {
                        n
                    }
                });
            }
            at = op.prev.get(i).map_or(range.end, |p| p.1);
        }
        if op.prev.is_empty() {
            return;
        }
        self.durable.acknowledge(range.clone(), written, self.clock);
        if fua {
            self.durable.stabilize(range, |e| e.value == written);
        }
    }

    /// Write `slot` failed: each sector its data reached, and which no later write
    /// overwrote, may hold what it held before or the new value.
    fn write_failed(&mut self, slot: u32) {
        let op = self.ops.get(slot);
        let seq = op.seq;
        for &(start, end, before) in &op.prev {
            let values = &mut self.values;
            self.now.update(start..end, |n| {
                if n.writer_seq == seq {
                    Now {
                        allowed: values.union(n.allowed, before),
                        ..n
                    }
                } else {
                    n
                }
            });
        }
    }

    /// Power loss: requests in flight are gone; each sector may now hold its stable value
    /// or anything applied since.
    pub fn crash(&mut self) {
        self.durable.crash(&mut self.values);
        let stable: Vec<(Range<u64>, Allowed)> =
            self.durable.stable().iter(0..self.sectors).collect();
        for (run, allowed) in stable {
            self.now.update(run, |n| Now { allowed, ..n });
        }
        self.ops.clear();
        if let Some(r) = self.reference.as_mut() {
            r.crash();
        }
        self.compare(0..self.sectors);
    }

    fn region_marked(words: &[u64], region: u64) -> bool {
        words
            .get((region / 64) as usize)
            .is_some_and(|w| w >> (region % 64) & 1 == 1)
    }

    /// After a reboot: `marked` are the bitmap words the filter loaded. Checks that no
    /// committed mark was lost, that every marked region holds only allowed data, and
    /// that no flushed write lies in an unmarked region (the filter would fetch backup
    /// data over it).
    pub fn check_reboot(
        &mut self,
        marked: &[u64],
        disk: &Disk,
        volume_start: u64,
        v: &mut Verifier,
    ) {
        let was_failed = v.failed();
        self.check_reboot_content(marked, disk, volume_start, v);
        let all = 0..self.sectors;
        self.cross(v, was_failed, all, |r| {
            r.check_reboot(marked, disk, volume_start)
        });
    }

    fn check_reboot_content(
        &mut self,
        marked: &[u64],
        disk: &Disk,
        volume_start: u64,
        v: &mut Verifier,
    ) {
        if trace_enabled() {
            let had: u32 = self.durable_marks.iter().map(|w| w.count_ones()).sum();
            let have: u32 = marked.iter().map(|w| w.count_ones()).sum();
            eprintln!("reboot: {had} regions were durably marked, {have} loaded");
        }
        if let Some(region) = first_lost(&self.durable_marks, marked) {
            v.fail(Rule::DurableMark, lost_at_reboot(region));
            return;
        }
        let (values, rs) = (&self.values, self.region_sectors);
        for (run, now) in self.now.iter(0..self.sectors) {
            let a = now.allowed;
            let mut s = run.start;
            // Bounded: each pass moves to the next region of the run.
            while s < run.end {
                let region = s / rs;
                let end = ((region + 1) * rs).min(run.end);
                if Self::region_marked(marked, region) {
                    if let Some(t) = (s..end)
                        .find(|&t| !values.allows(a, t, disk.live((volume_start + t) as usize)))
                    {
                        let value = disk.live((volume_start + t) as usize);
                        v.fail(
                            Rule::CrashState,
                            format!(
                                "after reboot region {region} is marked restored but sector {t} holds {}, allowed {}",
                                describe(value),
                                values.expect(a, t).describe()
                            ),
                        );
                        return;
                    }
                } else if !values.allows_backup(a) {
                    if let Some(t) =
                        (s..end).find(|&t| !values.allows(a, t, values.backup().tag(t)))
                    {
                        v.fail(
                            Rule::CrashState,
                            format!(
                                "after reboot sector {t} must hold {} (flushed) but its region {region} is not marked restored: it would be fetched from the backup",
                                values.expect(a, t).describe()
                            ),
                        );
                        return;
                    }
                }
                s = end;
            }
        }
        self.durable_marks.clear();
        self.durable_marks.extend_from_slice(marked);
    }

    /// After a metadata commit: `durable` are the bitmap words the store would load now.
    /// A mark may become durable only over durable data (rule 2), and never revert.
    pub fn check_commit(
        &mut self,
        durable: &[u64],
        disk: &Disk,
        volume_start: u64,
        v: &mut Verifier,
    ) {
        let was_failed = v.failed();
        self.check_commit_content(durable, disk, volume_start, v);
        // Only the regions newly marked were looked at: the reference is compared where
        // its verdict could differ.
        self.cross(v, was_failed, 0..0, |r| {
            r.check_commit(durable, disk, volume_start)
        });
    }

    fn check_commit_content(
        &mut self,
        durable: &[u64],
        disk: &Disk,
        volume_start: u64,
        v: &mut Verifier,
    ) {
        for change in mark_changes(&self.durable_marks, durable) {
            let region = match change {
                MarkChange::Lost(region) => {
                    v.fail(Rule::DurableMark, lost_at_commit(region));
                    return;
                }
                MarkChange::Added(region) => region,
            };
            let first = region * self.region_sectors;
            let end = (first + self.region_sectors).min(self.sectors);
            let not_durable = self
                .durable
                .first_not_durable(&self.values, first..end, |s| {
                    disk.media((volume_start + s) as usize)
                });
            if let Some((s, value)) = not_durable {
                v.fail(Rule::DurableMark, marked_before_durable(region, s, value));
                return;
            }
        }
        self.durable_marks.clear();
        self.durable_marks.extend_from_slice(durable);
    }

    /// The end: the device (everything restored, cache flushed) must hold, per sector,
    /// what a read may return.
    pub fn check_final_image(&mut self, disk: &Disk, volume_start: u64, v: &mut Verifier) {
        if trace_enabled() {
            let (now, stable, log) = self.runs();
            eprintln!("final: {now} runs now, {stable} stable runs, {log} log entries");
        }
        let was_failed = v.failed();
        let values = &self.values;
        let wrong = self.now.iter(0..self.sectors).find_map(|(run, now)| {
            run.clone()
                .find(|&s| !values.allows(now.allowed, s, disk.live((volume_start + s) as usize)))
                .map(|s| (s, now.allowed))
        });
        if let Some((s, allowed)) = wrong {
            let value = disk.live((volume_start + s) as usize);
            v.fail(
                Rule::ReadValue,
                format!(
                    "final image: sector {s} holds {}, expected {}",
                    describe(value),
                    values.expect(allowed, s).describe()
                ),
            );
        }
        let all = 0..self.sectors;
        self.cross(v, was_failed, all, |r| {
            r.check_final_image(disk, volume_start)
        });
    }

    /// With the cross-check on: `event` goes to the reference, both must have reached
    /// the same verdict, and (when neither failed) allow the same values over `range`.
    /// Once either failed, or anything failed before, the run is over: the reference
    /// stops following.
    fn cross(
        &mut self,
        v: &Verifier,
        was_failed: bool,
        range: Range<u64>,
        event: impl FnOnce(&mut Reference),
    ) {
        let Some(r) = self.reference.as_mut() else {
            return;
        };
        if was_failed {
            self.reference = None;
            return;
        }
        event(r);
        let mine = v.first().map(|f| (f.rule, f.detail.as_str()));
        let theirs = r.v.first().map(|f| (f.rule, f.detail.as_str()));
        assert_eq!(
            mine, theirs,
            "cross-check: the interval oracle and the per-sector reference disagree"
        );
        if mine.is_some() {
            self.reference = None;
            return;
        }
        self.compare(range);
    }

    /// With the cross-check on: both allow the same values over `range`, now and after
    /// a power loss.
    fn compare(&mut self, range: Range<u64>) {
        let Some(r) = self.reference.take() else {
            return;
        };
        for s in range {
            let (mine, theirs) = (self.expect(s), r.expect(s));
            assert!(
                mine == *theirs,
                "cross-check: sector {s} may read as {} here, {} in the reference",
                mine.describe(),
                theirs.describe()
            );
            let (mine, theirs) = (self.expect_after_crash(s), r.after_crash(s));
            assert!(
                mine == theirs,
                "cross-check: sector {s} may hold {} after a crash here, {} in the reference",
                mine.describe(),
                theirs.describe()
            );
        }
        self.reference = Some(r);
    }
}

/// The sectors of a request.
fn op_range(sector: u64, count: u64) -> Range<u64> {
    sector..sector + count
}

/// How the durable restore map moved between two loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MarkChange {
    /// This region was marked and is not any more.
    Lost(u64),
    /// This region is newly marked.
    Added(u64),
}

/// The changes from map words `before` to `now`, word by word: within a word, its first
/// lost mark alone if it lost one, else each region it adds, in order.
fn mark_changes<'a>(before: &'a [u64], now: &'a [u64]) -> impl Iterator<Item = MarkChange> + 'a {
    before
        .iter()
        .zip(now)
        .enumerate()
        .flat_map(|(w, (&before, &now))| {
            let base = w as u64 * 64;
            let lost = before & !now;
            let (first_lost, mut added) = if lost != 0 {
                let region = base + u64::from(lost.trailing_zeros());
                (Some(MarkChange::Lost(region)), 0)
            } else {
                (None, now & !before)
            };
            first_lost.into_iter().chain(std::iter::from_fn(move || {
                (added != 0).then(|| {
                    let region = base + u64::from(added.trailing_zeros());
                    added &= added - 1;
                    MarkChange::Added(region)
                })
            }))
        })
}

/// The first mark of `had` that `have` lost, if any.
fn first_lost(had: &[u64], have: &[u64]) -> Option<u64> {
    mark_changes(had, have).find_map(|c| match c {
        MarkChange::Lost(region) => Some(region),
        MarkChange::Added(_) => None,
    })
}

/// Why a mark lost across a reboot breaks a rule.
fn lost_at_reboot(region: u64) -> String {
    format!("region {region} was durably marked before power loss and is not after reboot")
}

/// Why a mark lost at a commit breaks a rule.
fn lost_at_commit(region: u64) -> String {
    format!("durable mark of region {region} reverted")
}

/// Why a mark over data that may not survive power loss breaks a rule.
fn marked_before_durable(region: u64, s: u64, value: u64) -> String {
    format!(
        "region {region} became durably marked while sector {s} durably holds {} (its data is not durable yet)",
        describe(value)
    )
}

/// The first of `got` (sectors from `first`) that is not `src`'s value.
#[inline]
fn first_mismatch(values: &Values, src: Src, first: u64, got: &[u64]) -> Option<usize> {
    (0..got.len()).find(|&i| values.value(src, first + i as u64) != got[i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::app_tag;

    /// An oracle of a small volume whose filter times held requests out after
    /// `hold_deadline_ns`, cross-checked against the reference.
    pub(super) fn oracle_timing_out_after(hold_deadline_ns: u64) -> (Oracle, Verifier) {
        let mut o = Oracle::new(64, 8, Backup::new(1, 4096, 0), hold_deadline_ns);
        assert!(o.cross_check());
        (o, Verifier::default())
    }

    fn oracle() -> (Oracle, Verifier) {
        oracle_timing_out_after(1_000_000_000)
    }

    #[test]
    fn reads_must_see_the_backup_then_the_newest_write() {
        let (mut o, mut v) = oracle();
        let b = Backup::new(1, 4096, 0);
        let r = o.start(OpKind::Read, 0, 2, 0, 0);
        o.finish(r, Status::SUCCESS, 1024, &[b.tag(0), b.tag(1)], 0, &mut v);
        assert!(!v.failed());
        let w = o.start(OpKind::Write { fua: false }, 1, 1, 9, 0);
        o.on_device_write(w, 1, 1, &mut v);
        o.finish(w, Status::SUCCESS, 512, &[], 0, &mut v);
        let r = o.start(OpKind::Read, 1, 1, 0, 0);
        o.finish(r, Status::SUCCESS, 512, &[b.tag(1)], 0, &mut v);
        assert_eq!(v.first().unwrap().rule, Rule::StaleRestore);
    }

    #[test]
    fn garbage_is_never_a_valid_read_even_after_a_trim() {
        let (mut o, mut v) = oracle();
        let t = o.start(OpKind::Trim, 0, 8, 0, 0);
        o.on_device_trim(0, 8);
        o.finish(t, Status::SUCCESS, 0, &[], 0, &mut v);
        let r = o.start(OpKind::Read, 0, 1, 0, 0);
        o.finish(
            r,
            Status::SUCCESS,
            512,
            &[crate::data::garbage_tag(0)],
            0,
            &mut v,
        );
        assert_eq!(v.first().unwrap().rule, Rule::ReadValue);
    }

    #[test]
    fn an_acknowledged_write_that_never_reached_the_device_is_caught() {
        let (mut o, mut v) = oracle();
        let b = Backup::new(1, 4096, 0);
        let w = o.start(OpKind::Write { fua: false }, 3, 1, 5, 0);
        o.finish(w, Status::SUCCESS, 512, &[], 0, &mut v);
        let r = o.start(OpKind::Read, 3, 1, 0, 0);
        o.finish(r, Status::SUCCESS, 512, &[b.tag(3)], 0, &mut v);
        assert!(v.failed());
    }

    #[test]
    fn a_failed_write_allows_old_or_new() {
        let (mut o, mut v) = oracle();
        let b = Backup::new(1, 4096, 0);
        let w = o.start(OpKind::Write { fua: false }, 0, 2, 5, 0);
        o.excuse(w, Status::IO_DEVICE_ERROR);
        o.on_device_write(w, 0, 1, &mut v);
        o.finish(w, Status::IO_DEVICE_ERROR, 0, &[], 0, &mut v);
        assert!(o.expect(0).allows(b.tag(0)) && o.expect(0).allows(app_tag(5, 0)));
        assert_eq!(o.expect(1), Expect::Exact(b.tag(1)));
        assert!(!v.failed());
    }

    #[test]
    fn unexplained_errors_and_wrong_lengths_are_failures() {
        let (mut o, mut v) = oracle();
        let r = o.start(OpKind::Read, 0, 1, 0, 0);
        o.finish(r, Status::IO_TIMEOUT, 0, &[], 0, &mut v);
        assert_eq!(v.first().unwrap().rule, Rule::Status);
        let (mut o, mut v) = oracle();
        let b = Backup::new(1, 4096, 0);
        let r = o.start(OpKind::Read, 0, 1, 0, 0);
        o.finish(r, Status::SUCCESS, 100, &[b.tag(0)], 0, &mut v);
        assert_eq!(v.first().unwrap().rule, Rule::Status);
        let (mut o, mut v) = oracle();
        let bad = o.start(OpKind::Bad, 0, 1, 0, 0);
        o.finish(bad, Status::SUCCESS, 0, &[], 0, &mut v);
        assert_eq!(v.first().unwrap().rule, Rule::Status);
    }

    #[test]
    fn after_a_crash_flushed_values_are_required_and_unflushed_ones_optional() {
        let (mut o, mut v) = oracle();
        let b = Backup::new(1, 4096, 0);
        let w1 = o.start(OpKind::Write { fua: false }, 0, 1, 1, 0);
        o.on_device_write(w1, 0, 1, &mut v);
        o.finish(w1, Status::SUCCESS, 512, &[], 0, &mut v);
        let f = o.start(OpKind::Flush, 0, 0, 0, 0);
        let w2 = o.start(OpKind::Write { fua: false }, 0, 1, 2, 0);
        o.on_device_write(w2, 0, 1, &mut v);
        o.finish(w2, Status::SUCCESS, 512, &[], 0, &mut v);
        o.finish(f, Status::SUCCESS, 0, &[], 0, &mut v);
        o.crash();
        assert!(o.expect(0).allows(app_tag(1, 0)));
        assert!(o.expect(0).allows(app_tag(2, 0)));
        assert!(
            !o.expect(0).allows(b.tag(0)),
            "the flushed write may not revert to backup"
        );
        assert_eq!(o.expect(1), Expect::Exact(b.tag(1)));
        assert!(!v.failed());
    }

    #[test]
    fn a_mark_over_data_that_is_not_durable_is_caught_at_commit() {
        let (mut o, mut v) = oracle();
        let disk = Disk::new(64, 512, true);
        // Region 0 durably marked while the device's medium still holds garbage.
        o.check_commit(&[1], &disk, 0, &mut v);
        assert_eq!(v.first().unwrap().rule, Rule::DurableMark);
    }

    #[test]
    fn a_lost_durable_mark_is_caught_at_reboot() {
        let (mut o, mut v) = oracle();
        let mut disk = Disk::new(64, 512, false);
        let b = Backup::new(1, 4096, 0);
        disk.write(0, 8, false, |i| b.tag(i as u64));
        o.check_commit(&[1], &disk, 0, &mut v);
        assert!(!v.failed());
        o.crash();
        o.check_reboot(&[0], &disk, 0, &mut v);
        assert_eq!(v.first().unwrap().rule, Rule::DurableMark);
    }

    #[test]
    fn overtaking_a_held_request_is_caught() {
        let (mut o, mut v) = oracle();
        let w = o.start(OpKind::Write { fua: false }, 0, 4, 1, 0);
        o.op_mut(w).held = true;
        assert!(o.may_issue(2, 1), "a held request may be overlapped");
        let r = o.start(OpKind::Read, 2, 1, 0, 0);
        o.on_forward(r, &mut v);
        assert_eq!(v.first().unwrap().rule, Rule::Ordering);
    }
}

#[cfg(test)]
mod judging_tests {
    use super::*;

    fn oracle() -> (Oracle, Verifier) {
        super::tests::oracle_timing_out_after(20_000)
    }

    #[test]
    fn item7_a_failure_is_explained_only_by_a_fault_that_hit_that_request() {
        // A fetch failure for region 1 excuses a read of region 1, not one of region 2.
        let (mut o, mut v) = oracle();
        let hit = o.start(OpKind::Read, 8, 8, 0, 0);
        let other = o.start(OpKind::Read, 16, 8, 0, 0);
        o.excuse_needing(1..2, Status::IO_TIMEOUT);
        o.finish(hit, Status::IO_TIMEOUT, 0, &[], 100, &mut v);
        assert!(!v.failed());
        o.finish(other, Status::IO_TIMEOUT, 0, &[], 100, &mut v);
        assert_eq!(v.first().unwrap().rule, Rule::Status);
    }

    #[test]
    fn item7_a_write_is_hit_only_through_its_partly_covered_regions() {
        let (mut o, mut v) = oracle();
        // Sectors 4..20: region 0 and 2 partly, region 1 wholly.
        let w = o.start(OpKind::Write { fua: false }, 4, 16, 1, 0);
        o.excuse_needing(1..2, Status::IO_TIMEOUT);
        o.finish(w, Status::IO_TIMEOUT, 0, &[], 100, &mut v);
        assert_eq!(v.first().unwrap().rule, Rule::Status);
        let (mut o, mut v) = oracle();
        let w = o.start(OpKind::Write { fua: false }, 4, 16, 1, 0);
        o.excuse_needing(2..3, Status::CRC_ERROR);
        o.finish(w, Status::CRC_ERROR, 0, &[], 100, &mut v);
        assert!(!v.failed());
    }

    #[test]
    fn item7_a_timeout_is_explained_by_age_and_a_status_by_its_own_fault_only() {
        let (mut o, mut v) = oracle();
        let old = o.start(OpKind::Read, 0, 1, 0, 0);
        o.finish(old, Status::IO_TIMEOUT, 0, &[], 20_000, &mut v);
        assert!(!v.failed(), "held past the deadline");
        let young = o.start(OpKind::Read, 0, 1, 0, 0);
        o.excuse(young, Status::CANCELLED);
        o.finish(young, Status::IO_TIMEOUT, 0, &[], 19_999, &mut v);
        assert_eq!(v.first().unwrap().rule, Rule::Status);
        let (mut o, mut v) = oracle();
        let f = o.start(OpKind::Flush, 0, 0, 0, 0);
        let r = o.start(OpKind::Read, 0, 1, 0, 0);
        o.excuse_durability(Status::IO_DEVICE_ERROR);
        o.finish(f, Status::IO_DEVICE_ERROR, 0, &[], 1, &mut v);
        assert!(!v.failed());
        o.finish(r, Status::IO_DEVICE_ERROR, 0, &[], 1, &mut v);
        assert!(v.failed(), "a read does not wait for a commit");
    }
}
