//! The oracle: what every sector may hold, and the file system's requests in flight.
//!
//! Per 512-byte sector of the volume it keeps
//! * `exp`: what a read may return now — the newest acknowledged write, else the
//!   backup's data (rule 1); a set after a failed write or a crash, `Any` after a trim;
//! * `stable`: what a flush or FUA guarantees across power loss;
//! * `hist`: values that reached the device since `stable`, each with the oracle clock
//!   at which the device applied it, so a flush makes exactly the older ones stable.
//!
//! After power loss a sector may hold its stable value or any value in its history
//! (rule 3); the oracle checks the device against that for every durably marked region,
//! and checks that every sector whose allowed values exclude the backup lies in a
//! durably marked region (else the filter would fetch backup data over a flushed write).
//!
//! Values enter `exp` when the device applies an application write, not when it is
//! acknowledged: the file system never keeps two overlapping requests in flight unless
//! the engine holds the earlier one, and the engine then orders them, which
//! [`Oracle::on_forward`] checks. A write the device applied that later fails widens
//! `exp` to {old, new}; a write acknowledged without reaching the device sets `exp`
//! anyway, so the read that follows exposes it.
//!
//! A request that fails is judged on its own (rule 5: nothing is lost that could be
//! served): each error status is explained only by an injected fault that hit *that*
//! request while it was alive — it was cancelled, a media error hit its own I/O, a
//! fetch failure hit a region it needed whose data was not already on its way, a
//! hydrate write of such a region failed, a flush or metadata commit its durability
//! depended on failed — or, for `IO_TIMEOUT`, it was held past the hold deadline.
//! The simulator reports those hits ([`Oracle::excuse`] and friends, see `judge.rs`).

use rehydrate_driver::Status;

use crate::data::{app_tag, describe, is_garbage, Backup};
use crate::device::Disk;
use crate::verifier::{Rule, Verifier};

/// What a sector may hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this.
    Exact(u64),
    /// Any of these.
    AnyOf(Box<[u64]>),
    /// Anything somebody wrote (after a trim): never garbage.
    Any,
}

impl Expect {
    /// True when `v` is allowed.
    #[inline]
    pub fn allows(&self, v: u64) -> bool {
        match self {
            Expect::Exact(e) => *e == v,
            Expect::AnyOf(set) => set.contains(&v),
            Expect::Any => !is_garbage(v),
        }
    }

    /// This set plus `more`.
    pub fn union(&self, more: &Expect) -> Expect {
        let mut out: Vec<u64> = match self {
            Expect::Any => return Expect::Any,
            Expect::Exact(v) => vec![*v],
            Expect::AnyOf(s) => s.to_vec(),
        };
        match more {
            Expect::Any => return Expect::Any,
            Expect::Exact(v) => out.push(*v),
            Expect::AnyOf(s) => out.extend_from_slice(s),
        }
        out.sort_unstable();
        out.dedup();
        if out.len() == 1 {
            Expect::Exact(out[0])
        } else {
            Expect::AnyOf(out.into_boxed_slice())
        }
    }
}

/// What a file-system request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Read.
    Read,
    /// Write, with force unit access or not.
    Write {
        /// `SL_WRITE_THROUGH`.
        fua: bool,
    },
    /// Flush.
    Flush,
    /// Trim (one data-set range).
    Trim,
    /// `IOCTL_DISK_GET_LENGTH_INFO`.
    GetLength,
    /// A request no volume can serve (past the end): must fail, change nothing.
    Bad,
}

/// A file-system request in flight.
#[derive(Debug)]
pub struct Op {
    /// Slot is in use.
    pub live: bool,
    /// What.
    pub kind: OpKind,
    /// First sector.
    pub sector: u64,
    /// Sectors.
    pub count: u64,
    /// Issue order.
    pub seq: u64,
    /// The write's id (its tags are `app_tag(write_id, sector)`).
    pub write_id: u64,
    /// The filter held it at once.
    pub held: bool,
    /// The filter sent it down.
    pub forwarded: bool,
    /// Its lower I/O completed.
    pub lower_done: bool,
    /// Oracle clock when issued (flushes).
    pub issued_at: u64,
    /// Simulated time when issued.
    pub issued_ns: u64,
    /// Error statuses an injected fault that hit this request explains (bits of
    /// `Status::fault_bit`).
    pub excused: u16,
    /// Per sector: `exp` before this write's data reached it, `None` if not yet.
    prev: Vec<Option<Expect>>,
}

impl Op {
    /// Regions whose data the request needs (a read: all it touches; a write: the
    /// partly covered head and tail; nothing else), as up to two ranges.
    pub fn needed_regions(
        &self,
        region_sectors: u64,
        volume_sectors: u64,
    ) -> [Option<std::ops::Range<u64>>; 2] {
        let end = self.sector + self.count;
        let touched = self.sector / region_sectors..end.div_ceil(region_sectors);
        match self.kind {
            OpKind::Read => [Some(touched), None],
            OpKind::Write { .. } => {
                let first = self.sector.div_ceil(region_sectors);
                let last = if end == volume_sectors {
                    volume_sectors.div_ceil(region_sectors)
                } else {
                    end / region_sectors
                };
                if first >= last {
                    return [Some(touched), None];
                }
                [
                    (touched.start < first).then_some(touched.start..first),
                    (last < touched.end).then_some(last..touched.end),
                ]
            }
            _ => [None, None],
        }
    }
}

/// True when `REHYDRATE_SIM_TRACE` is set: the oracle prints every request's life.
pub fn trace_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("REHYDRATE_SIM_TRACE").is_some())
}

/// Trims in `hist`: a trimmed sector may read as anything written.
const TRIMMED: u64 = u64::MAX;
/// A `hist` entry whose request is not acknowledged yet: no flush can make it stable.
const PENDING: u64 = u64::MAX;

/// The oracle of one run.
#[derive(Debug)]
pub struct Oracle {
    backup: Backup,
    sectors: u64,
    region_sectors: u64,
    /// A held request failed with `IO_TIMEOUT` no earlier than this is explained.
    hold_deadline_ns: u64,
    exp: Vec<Expect>,
    stable: Vec<Expect>,
    hist: Vec<Vec<(u64, u64)>>,
    /// Sectors that may have a history (a superset: emptied ones leave lazily).
    dirty: Vec<u32>,
    in_dirty: Vec<bool>,
    writer_seq: Vec<u64>,
    clock: u64,
    seq: u64,
    ops: Vec<Op>,
    free_ops: Vec<u32>,
    in_flight: usize,
    /// Regions known durably marked (from the metadata's durable image).
    durable_marks: Vec<u64>,
    /// Reads checked, sectors compared.
    pub sectors_checked: u64,
}

impl Oracle {
    /// An oracle for a volume of `sectors` sectors restored from `backup`, whose filter
    /// times held requests out after `hold_deadline_ns`.
    pub fn new(sectors: u64, region_sectors: u64, backup: Backup, hold_deadline_ns: u64) -> Oracle {
        let exp: Vec<Expect> = (0..sectors).map(|s| Expect::Exact(backup.tag(s))).collect();
        Oracle {
            backup,
            sectors,
            region_sectors,
            hold_deadline_ns,
            stable: exp.clone(),
            exp,
            hist: vec![Vec::new(); sectors as usize],
            dirty: Vec::new(),
            in_dirty: vec![false; sectors as usize],
            writer_seq: vec![0; sectors as usize],
            clock: 1,
            seq: 0,
            ops: Vec::new(),
            free_ops: Vec::new(),
            in_flight: 0,
            durable_marks: vec![0; sectors.div_ceil(region_sectors).div_ceil(64) as usize],
            sectors_checked: 0,
        }
    }

    /// What a read of `s` may return now.
    pub fn expect(&self, s: u64) -> &Expect {
        &self.exp[s as usize]
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The op in `slot`.
    pub fn op(&self, slot: u32) -> &Op {
        &self.ops[slot as usize]
    }

    /// The op in `slot`, mutable.
    pub fn op_mut(&mut self, slot: u32) -> &mut Op {
        &mut self.ops[slot as usize]
    }

    /// Slots of every op in flight, in slot order.
    pub fn live_ops(&self) -> Vec<u32> {
        self.live().map(|(slot, _)| slot).collect()
    }

    /// Every op in flight with its slot, in slot order.
    pub fn live(&self) -> impl Iterator<Item = (u32, &Op)> + '_ {
        self.ops
            .iter()
            .enumerate()
            .filter(|(_, o)| o.live)
            .map(|(i, o)| (i as u32, o))
    }

    /// May the file system issue a request on these sectors now? Never while an
    /// overlapping one is in flight, unless the filter held that one (whether or not
    /// it was sent down since: a file system cannot know what the filter did with it,
    /// and the filter orders such requests).
    pub fn may_issue(&self, sector: u64, count: u64) -> bool {
        self.ops.iter().all(|o| {
            !o.live
                || matches!(o.kind, OpKind::Flush | OpKind::GetLength | OpKind::Bad)
                || o.held
                || o.sector + o.count <= sector
                || sector + count <= o.sector
        })
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
        let op = &mut self.ops[slot as usize];
        if op.live {
            op.excused |= status.fault_bit();
        }
    }

    /// A fault hit the data of `regions` (region indexes): every live request that
    /// needs one of them may fail with `status`.
    pub fn excuse_needing(&mut self, regions: std::ops::Range<u64>, status: Status) {
        let (rs, sectors) = (self.region_sectors, self.sectors);
        for op in self.ops.iter_mut().filter(|o| o.live) {
            let hit = op
                .needed_regions(rs, sectors)
                .into_iter()
                .flatten()
                .any(|need| need.start.max(regions.start) < need.end.min(regions.end));
            if hit {
                op.excused |= status.fault_bit();
            }
        }
    }

    /// A flush or a metadata commit failed: every live flush and FUA write (whose
    /// completion waits for one) may fail with `status`.
    pub fn excuse_durability(&mut self, status: Status) {
        for op in self.ops.iter_mut().filter(|o| o.live) {
            if matches!(op.kind, OpKind::Flush | OpKind::Write { fua: true }) {
                op.excused |= status.fault_bit();
            }
        }
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
        self.seq += 1;
        let slot = match self.free_ops.pop() {
            Some(s) => s,
            None => {
                self.ops.push(Op {
                    live: false,
                    kind,
                    sector: 0,
                    count: 0,
                    seq: 0,
                    write_id: 0,
                    held: false,
                    forwarded: false,
                    lower_done: false,
                    issued_at: 0,
                    issued_ns: 0,
                    excused: 0,
                    prev: Vec::new(),
                });
                (self.ops.len() - 1) as u32
            }
        };
        let issued_at = self.clock;
        self.clock += 1;
        let op = &mut self.ops[slot as usize];
        debug_assert!(!op.live);
        op.live = true;
        op.kind = kind;
        op.sector = sector;
        op.count = count;
        op.seq = self.seq;
        op.write_id = write_id;
        op.held = false;
        op.forwarded = false;
        op.lower_done = false;
        op.issued_at = issued_at;
        op.issued_ns = now_ns;
        op.excused = 0;
        op.prev.clear();
        if matches!(kind, OpKind::Write { .. }) {
            op.prev.resize(count as usize, None);
        }
        self.in_flight += 1;
        if trace_enabled() {
            eprintln!("issue #{} {kind:?} {sector}+{count}", self.seq);
        }
        slot
    }

    /// The filter sends request `slot` down: nothing issued earlier on its sectors that
    /// the engine ever held may still be short of its lower completion.
    pub fn on_forward(&mut self, slot: u32, v: &mut Verifier) {
        let op = &self.ops[slot as usize];
        if !matches!(op.kind, OpKind::Read | OpKind::Write { .. } | OpKind::Trim) {
            self.ops[slot as usize].forwarded = true;
            return;
        }
        let (sector, count, seq) = (op.sector, op.count, op.seq);
        if trace_enabled() {
            eprintln!("forward #{seq} {:?} {sector}+{count}", op.kind);
        }
        for other in &self.ops {
            if other.live
                && other.seq < seq
                && other.held
                && !other.lower_done
                && matches!(
                    other.kind,
                    OpKind::Read | OpKind::Write { .. } | OpKind::Trim
                )
                && other.sector < sector + count
                && sector < other.sector + other.count
            {
                v.fail(
                    Rule::Ordering,
                    format!(
                        "{:?} of sectors {sector}+{count} (request #{seq}) went down before the earlier held {:?} of {}+{} (request #{})",
                        self.ops[slot as usize].kind, other.kind, other.sector, other.count, other.seq
                    ),
                );
                break;
            }
        }
        self.ops[slot as usize].forwarded = true;
    }

    /// Request `slot`'s lower I/O completed.
    pub fn on_lower_done(&mut self, slot: u32) {
        if trace_enabled() {
            let op = &self.ops[slot as usize];
            eprintln!(
                "lower-done #{} {:?} {}+{}",
                op.seq, op.kind, op.sector, op.count
            );
        }
        self.ops[slot as usize].lower_done = true;
    }

    fn touch(&mut self, s: u64, value: u64) {
        if !self.in_dirty[s as usize] {
            self.in_dirty[s as usize] = true;
            self.dirty.push(s as u32);
        }
        self.hist[s as usize].push((value, PENDING));
    }

    /// The request that put `value` on sector `s` was acknowledged now: a flush issued
    /// from now on covers it.
    fn acknowledge(&mut self, s: u64, value: u64) {
        let clock = self.clock;
        if let Some(e) = self.hist[s as usize]
            .iter_mut()
            .rev()
            .find(|e| e.0 == value && e.1 == PENDING)
        {
            e.1 = clock;
        }
    }

    /// The device applied `count` sectors of write `slot` from volume sector `start`.
    pub fn on_device_write(&mut self, slot: u32, start: u64, count: u64, v: &mut Verifier) {
        let op = &self.ops[slot as usize];
        if !op.live || !matches!(op.kind, OpKind::Write { .. }) {
            v.fail(Rule::Status, format!("device applied write data of request slot {slot}, which is not a write in flight"));
            return;
        }
        debug_assert!(start >= op.sector && start + count <= op.sector + op.count);
        let (first, seq, write_id) = (op.sector, op.seq, op.write_id);
        for s in start..start + count {
            if self.writer_seq[s as usize] > seq {
                v.fail(
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
            let slot_prev = &mut self.ops[slot as usize].prev[(s - first) as usize];
            if slot_prev.is_none() {
                *slot_prev = Some(prev);
            }
            self.touch(s, value);
        }
    }

    /// The device applied trim `slot` to `count` sectors from volume sector `start`.
    pub fn on_device_trim(&mut self, start: u64, count: u64) {
        for s in start..start + count {
            self.exp[s as usize] = Expect::Any;
            self.touch(s, TRIMMED);
        }
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
        let op = &self.ops[slot as usize];
        debug_assert!(op.live);
        let (kind, sector, count, seq) = (op.kind, op.sector, op.count, op.seq);
        if trace_enabled() {
            eprintln!(
                "finish #{seq} {kind:?} {sector}+{count} {status:?} held={}",
                op.held
            );
        }
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
            let op = &self.ops[slot as usize];
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
        match kind {
            OpKind::Read if status.is_success() => {
                for (i, &value) in data.iter().enumerate() {
                    let s = sector + i as u64;
                    let e = &self.exp[s as usize];
                    if !e.allows(value) {
                        let rule = if value == self.backup.tag(s) {
                            Rule::StaleRestore
                        } else {
                            Rule::ReadValue
                        };
                        v.fail(
                            rule,
                            format!(
                                "read #{seq} of sectors {sector}+{count}: sector {s} returned {}, expected {} (backup {})",
                                describe(value),
                                self.describe_expect(e),
                                describe(self.backup.tag(s))
                            ),
                        );
                        break;
                    }
                    if !matches!(e, Expect::Exact(_)) {
                        self.exp[s as usize] = Expect::Exact(value);
                    }
                }
                self.sectors_checked += data.len() as u64;
            }
            OpKind::Write { fua } if status.is_success() => {
                let write_id = self.ops[slot as usize].write_id;
                for i in 0..count {
                    let s = sector + i;
                    let value = app_tag(write_id, s);
                    if self.ops[slot as usize].prev[i as usize].is_none() {
                        // Acknowledged but never reached the device: the next read shows it.
                        if self.writer_seq[s as usize] <= seq {
                            self.exp[s as usize] = Expect::Exact(value);
                        }
                    } else {
                        self.acknowledge(s, value);
                        if fua {
                            self.make_stable_value(s, value);
                        }
                    }
                }
                self.clock += 1;
            }
            OpKind::Trim if status.is_success() => {
                for s in sector..sector + count {
                    self.acknowledge(s, TRIMMED);
                }
                self.clock += 1;
            }
            OpKind::Write { .. } => {
                // Failed: each sector it reached may hold the old or the new value.
                for i in 0..count {
                    let s = sector + i;
                    if let Some(prev) = self.ops[slot as usize].prev[i as usize].take() {
                        if self.writer_seq[s as usize] == seq {
                            self.exp[s as usize] = self.exp[s as usize].union(&prev);
                        }
                    }
                }
            }
            OpKind::Flush if status.is_success() => {
                let before = self.ops[slot as usize].issued_at;
                self.make_stable_before(before);
            }
            _ => {}
        }
        let op = &mut self.ops[slot as usize];
        op.live = false;
        op.prev.clear();
        self.free_ops.push(slot);
        self.in_flight -= 1;
    }

    fn describe_expect(&self, e: &Expect) -> String {
        match e {
            Expect::Exact(v) => describe(*v),
            Expect::Any => "anything written".to_string(),
            Expect::AnyOf(set) => {
                let items: Vec<String> = set.iter().map(|&v| describe(v)).collect();
                format!("one of [{}]", items.join(", "))
            }
        }
    }

    /// Every value acknowledged before oracle clock `before` is durable now (a flush
    /// issued then completed). Values the device applied for requests not acknowledged
    /// by then (a piece of a split write, say) are not covered: the file system cannot
    /// count on them.
    fn make_stable_before(&mut self, before: u64) {
        let mut i = 0;
        while i < self.dirty.len() {
            let s = self.dirty[i] as usize;
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
            if h.is_empty() {
                self.in_dirty[s] = false;
                self.dirty.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// A FUA write's `value` on sector `s` is durable.
    fn make_stable_value(&mut self, s: u64, value: u64) {
        let h = &mut self.hist[s as usize];
        if let Some(pos) = h.iter().rposition(|&(v, _)| v == value) {
            self.stable[s as usize] = Expect::Exact(value);
            // An emptied history leaves `dirty` at the next flush.
            h.drain(..=pos);
        }
    }

    /// What sector `s` may hold after power loss.
    pub fn allowed_after_crash(&self, s: u64, value: u64) -> bool {
        let h = &self.hist[s as usize];
        self.stable[s as usize].allows(value)
            || h.iter()
                .any(|&(v, _)| v == value || (v == TRIMMED && !is_garbage(value)))
    }

    fn after_crash_set(&self, s: u64) -> Expect {
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

    /// Power loss: requests in flight are gone; each sector may now hold its stable value
    /// or anything applied since.
    pub fn crash(&mut self) {
        for s in std::mem::take(&mut self.dirty) {
            self.in_dirty[s as usize] = false;
            let e = self.after_crash_set(u64::from(s));
            self.stable[s as usize] = e;
            self.hist[s as usize].clear();
        }
        self.exp.clone_from(&self.stable);
        for (i, op) in self.ops.iter_mut().enumerate() {
            if op.live {
                op.live = false;
                op.prev.clear();
                self.free_ops.push(i as u32);
            }
        }
        self.in_flight = 0;
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
        if trace_enabled() {
            let had: u32 = self.durable_marks.iter().map(|w| w.count_ones()).sum();
            let have: u32 = marked.iter().map(|w| w.count_ones()).sum();
            eprintln!("reboot: {had} regions were durably marked, {have} loaded");
        }
        for (w, (&have, &had)) in marked.iter().zip(self.durable_marks.iter()).enumerate() {
            if had & !have != 0 {
                let region = w as u64 * 64 + u64::from((had & !have).trailing_zeros());
                v.fail(Rule::DurableMark, format!("region {region} was durably marked before power loss and is not after reboot"));
                return;
            }
        }
        for s in 0..self.sectors {
            let region = s / self.region_sectors;
            let value = disk.live((volume_start + s) as usize);
            if Self::region_marked(marked, region) {
                if !self.exp[s as usize].allows(value) {
                    v.fail(
                        Rule::CrashState,
                        format!(
                            "after reboot region {region} is marked restored but sector {s} holds {}, allowed {}",
                            describe(value),
                            self.describe_expect(&self.exp[s as usize])
                        ),
                    );
                    return;
                }
            } else if !self.exp[s as usize].allows(self.backup.tag(s)) {
                v.fail(
                    Rule::CrashState,
                    format!(
                        "after reboot sector {s} must hold {} (flushed) but its region {region} is not marked restored: it would be fetched from the backup",
                        self.describe_expect(&self.exp[s as usize])
                    ),
                );
                return;
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
        for (w, (&now, &before)) in durable.iter().zip(self.durable_marks.iter()).enumerate() {
            if before & !now != 0 {
                let region = w as u64 * 64 + u64::from((before & !now).trailing_zeros());
                v.fail(
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
                let end = (first + self.region_sectors).min(self.sectors);
                for s in first..end {
                    let value = disk.media((volume_start + s) as usize);
                    if !self.allowed_after_crash(s, value) {
                        v.fail(
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

    /// The end: the device (everything restored, cache flushed) must hold, per sector,
    /// what a read may return.
    pub fn check_final_image(&self, disk: &Disk, volume_start: u64, v: &mut Verifier) {
        if trace_enabled() {
            let entries: usize = self
                .dirty
                .iter()
                .map(|&s| self.hist[s as usize].len())
                .sum();
            eprintln!(
                "final: {} sectors with history, {entries} entries",
                self.dirty.len()
            );
        }
        for s in 0..self.sectors {
            let value = disk.live((volume_start + s) as usize);
            if !self.exp[s as usize].allows(value) {
                v.fail(
                    Rule::ReadValue,
                    format!(
                        "final image: sector {s} holds {}, expected {}",
                        describe(value),
                        self.describe_expect(&self.exp[s as usize])
                    ),
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oracle() -> (Oracle, Verifier) {
        (
            Oracle::new(64, 8, Backup::new(1, 4096, 0), 1_000_000_000),
            Verifier::default(),
        )
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
        let mut o = Oracle::new(64, 8, Backup::new(1, 4096, 0), 1_000_000_000);
        let mut v = Verifier::default();
        let b = Backup::new(1, 4096, 0);
        let w = o.start(OpKind::Write { fua: false }, 0, 2, 5, 0);
        o.excuse(w, Status::IO_DEVICE_ERROR);
        o.on_device_write(w, 0, 1, &mut v);
        o.finish(w, Status::IO_DEVICE_ERROR, 0, &[], 0, &mut v);
        assert!(o.expect(0).allows(b.tag(0)) && o.expect(0).allows(app_tag(5, 0)));
        assert_eq!(o.expect(1), &Expect::Exact(b.tag(1)));
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
        assert_eq!(o.expect(1), &Expect::Exact(b.tag(1)));
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
        (
            Oracle::new(64, 8, Backup::new(1, 4096, 0), 20_000),
            Verifier::default(),
        )
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
