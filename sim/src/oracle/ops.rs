//! The file system's requests in flight, as the oracle sees them: what each is, whether
//! the filter held it, sent it down, and which injected faults hit it.

use std::ops::Range;

use rehydrate_driver::Status;

use crate::content::Allowed;
use crate::verifier::{Rule, Verifier};

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

impl OpKind {
    /// True for requests on a range of sectors that reach the device.
    pub fn is_ranged(self) -> bool {
        matches!(self, OpKind::Read | OpKind::Write { .. } | OpKind::Trim)
    }
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
    /// A write: what each sector its data reached allowed just before (the first time
    /// it reached it), as sorted, disjoint runs `(first, end, allowed)`. Sectors in no
    /// run were never reached.
    pub(super) prev: Vec<(u64, u64, Allowed)>,
}

impl Op {
    /// The sectors.
    pub fn sectors(&self) -> Range<u64> {
        self.sector..self.sector + self.count
    }

    /// Regions whose data the request needs (a read: all it touches; a write: the
    /// partly covered head and tail; nothing else), as up to two ranges.
    pub fn needed_regions(
        &self,
        region_sectors: u64,
        volume_sectors: u64,
    ) -> [Option<Range<u64>>; 2] {
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

/// Most requests in flight at once (the file system's depth, the verification reads and
/// the shutdown flush stay far below it).
pub const OPS_MAX: usize = 1024;

/// The table of requests, by slot.
#[derive(Debug, Default)]
pub struct Ops {
    ops: Vec<Op>,
    free: Vec<u32>,
    /// Slots in use, in no order.
    live: Vec<u32>,
    seq: u64,
}

impl Ops {
    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.live.len()
    }

    /// The op in `slot`.
    pub fn get(&self, slot: u32) -> &Op {
        &self.ops[slot as usize]
    }

    /// The op in `slot`, mutable.
    pub fn get_mut(&mut self, slot: u32) -> &mut Op {
        &mut self.ops[slot as usize]
    }

    /// Every op in flight with its slot, in slot order.
    pub fn live(&self) -> impl Iterator<Item = (u32, &Op)> + '_ {
        self.ops
            .iter()
            .enumerate()
            .filter(|(_, o)| o.live)
            .map(|(i, o)| (i as u32, o))
    }

    /// Every op in flight, in no order (cheaper than [`Ops::live`]).
    pub fn live_unordered(&self) -> impl Iterator<Item = &Op> + '_ {
        self.live.iter().map(|&slot| &self.ops[slot as usize])
    }

    /// Registers a request; returns its slot.
    pub fn start(&mut self, kind: OpKind, sector: u64, count: u64, write_id: u64) -> u32 {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                assert!(self.ops.len() < OPS_MAX, "{OPS_MAX} requests in flight");
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
        op.excused = 0;
        op.prev.clear();
        self.live.push(slot);
        slot
    }

    /// Frees `slot`.
    pub fn end(&mut self, slot: u32) {
        let op = &mut self.ops[slot as usize];
        debug_assert!(op.live);
        op.live = false;
        op.prev.clear();
        self.free.push(slot);
        let at = self
            .live
            .iter()
            .position(|&s| s == slot)
            .expect("a live op is listed");
        self.live.swap_remove(at);
    }

    /// Power loss: every request in flight is gone.
    pub fn clear(&mut self) {
        // Freed in slot order, so the slots handed out after a power loss (and with them
        // the order `live` visits requests in) follow from the run alone.
        self.live.sort_unstable();
        for slot in self.live.drain(..) {
            let op = &mut self.ops[slot as usize];
            op.live = false;
            op.prev.clear();
            self.free.push(slot);
        }
    }

    /// May the file system issue a request on these sectors now? Never while an
    /// overlapping one is in flight, unless the filter held that one (whether or not
    /// it was sent down since: a file system cannot know what the filter did with it,
    /// and the filter orders such requests).
    pub fn may_issue(&self, sector: u64, count: u64) -> bool {
        self.live_unordered().all(|o| {
            !o.kind.is_ranged()
                || o.held
                || o.sector + o.count <= sector
                || sector + count <= o.sector
        })
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
    pub fn excuse_needing(
        &mut self,
        regions: Range<u64>,
        status: Status,
        region_sectors: u64,
        volume_sectors: u64,
    ) {
        for &slot in &self.live {
            let op = &mut self.ops[slot as usize];
            let hit = op
                .needed_regions(region_sectors, volume_sectors)
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
        for &slot in &self.live {
            let op = &mut self.ops[slot as usize];
            if matches!(op.kind, OpKind::Flush | OpKind::Write { fua: true }) {
                op.excused |= status.fault_bit();
            }
        }
    }

    /// The filter sends request `slot` down: nothing issued earlier on its sectors that
    /// the engine ever held may still be short of its lower completion.
    pub fn on_forward(&mut self, slot: u32, v: &mut Verifier) {
        let op = &self.ops[slot as usize];
        if op.kind.is_ranged() {
            let (sector, count, seq) = (op.sector, op.count, op.seq);
            if super::trace_enabled() {
                eprintln!("forward #{seq} {:?} {sector}+{count}", op.kind);
            }
            // The first in slot order, as the report has always named it.
            let overtaken = self.ops.iter().find(|other| {
                other.live
                    && other.seq < seq
                    && other.held
                    && !other.lower_done
                    && other.kind.is_ranged()
                    && other.sector < sector + count
                    && sector < other.sector + other.count
            });
            if let Some(other) = overtaken {
                v.fail(
                    Rule::Ordering,
                    format!(
                        "{:?} of sectors {sector}+{count} (request #{seq}) went down before the earlier held {:?} of {}+{} (request #{})",
                        op.kind, other.kind, other.sector, other.count, other.seq
                    ),
                );
            }
        }
        self.ops[slot as usize].forwarded = true;
    }
}
