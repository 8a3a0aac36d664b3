//! A plain reference for write capture, and a harness that drives a [`Capture`] with
//! random operations and checks it against the reference after every step.
//!
//! The reference is what an application could observe:
//! * the **volume** applies a write when it completes (its data is on the device from
//!   then on); a power loss lands or drops each write still in flight;
//! * a **point** is the volume as it was when a flush completed successfully;
//! * the **journal** is what the service received and made durable, replayed over the
//!   snapshot the capture started from.
//!
//! The rules checked (each violation names one):
//! * `stream`: batches decode and continue the journal without a hole;
//! * `point-before-flush`: a point record reaches the journal only after its flush
//!   completed, and only for a flush that succeeded;
//! * `point-content`: every point the capture offered, replayed from the journal, is
//!   the volume as it was when its flush completed;
//! * `listed-point`: every point the journal lists (a flush or mark outside a gap) is
//!   one the capture offered;
//! * `sync-durable`: in sync mode a write is answered only once its record is durable;
//! * `crash-prefix`: after a power loss, the journal lists exactly the offered points
//!   up to its durable head;
//! * `capture-error`: the capture refused a call the shell made correctly.
//!
//! Used by the unit model tests (proptest over seeds) and by the mutant tests, which
//! must see a violation for each deliberate bug.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{
    Admit, Capture, CaptureConfig, CaptureMode, FlushTicket, Point, ResyncTicket, WriteData,
    WriteDone, WriteTicket,
};
use crate::abi::{Label, RecordBatch, RecordKind, RECORD_BATCH_MAX_BYTES};
use crate::geometry::{Geometry, SECTOR_SIZE_BYTES};

/// What a run models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HarnessConfig {
    /// Sync or async capture.
    pub mode: CaptureMode,
    /// The capture buffer (small, so gaps and held writes happen).
    pub buffer_max_bytes: u64,
    /// Volume size in sectors.
    pub sectors: u64,
    /// Region size.
    pub region_size_bytes: u32,
}

/// One step of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// An application write (or write of zeros) of `sectors` at `sector`, filled with
    /// `fill`; dispatched if the capture admits it, else held.
    Write {
        /// First sector.
        sector: u64,
        /// Sectors.
        sectors: u64,
        /// Write zeros.
        zero: bool,
        /// Data byte.
        fill: u8,
    },
    /// The device completes (or fails) the `pick`-th write in flight.
    Complete {
        /// Which (modulo the writes in flight).
        pick: usize,
        /// The device failed it (its data may or may not have landed: it does).
        fail: bool,
    },
    /// The application flushes.
    Flush,
    /// The device completes (or fails) the `pick`-th flush in flight; with `mark`, it
    /// was the shell's flush for a mark.
    FlushDone {
        /// Which.
        pick: usize,
        /// Failed.
        fail: bool,
        /// A mark.
        mark: bool,
    },
    /// The service takes one batch.
    Take,
    /// The service makes what it took durable and acknowledges it.
    Sync,
    /// The service restarts: what it took and did not make durable is lost.
    ServiceRestart,
    /// The shell starts the next read-back of a gap.
    ResyncStart,
    /// The `pick`-th read-back in flight finishes (or fails).
    ResyncDone {
        /// Which.
        pick: usize,
        /// The read failed.
        fail: bool,
    },
    /// Power loss: writes in flight land or not (bit `i` of `keep` for the i-th), the
    /// capture and everything not durable are gone; the shell starts again.
    Crash {
        /// Which in-flight writes landed.
        keep: u64,
    },
}

/// A rule the capture broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The step it was found at.
    pub step: usize,
    /// The rule's name.
    pub rule: &'static str,
    /// What was seen.
    pub detail: String,
}

/// What a clean run did, for tests that want to see the interesting paths taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Points offered.
    pub points: u64,
    /// Gaps opened.
    pub gaps: u64,
    /// Writes held by the capture at least once.
    pub held: u64,
    /// Power losses.
    pub crashes: u64,
    /// Points checked against the reference.
    pub points_checked: u64,
}

/// A journal record as the service keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Kept {
    seq: u64,
    kind: RecordKind,
    offset: u64,
    len: u64,
    payload: Vec<u8>,
}

struct Held {
    offset: u64,
    data: Option<Vec<u8>>,
    len: u64,
}

struct InFlight {
    ticket: WriteTicket,
    offset: u64,
    data: Option<Vec<u8>>,
    len: u64,
}

struct Harness {
    config: HarnessConfig,
    geometry: Geometry,
    base: Vec<u8>,
    device: Vec<u8>,
    capture: Capture,
    held: VecDeque<Held>,
    writes: Vec<InFlight>,
    flushes: Vec<FlushTicket>,
    resyncs: Vec<(ResyncTicket, u64, Vec<u8>)>,
    /// Sync-mode writes waiting for their record to be durable: (seq, offset, data).
    answers: Vec<(u64, u64, Vec<u8>)>,
    /// The journal: durable records, then records taken but not durable.
    durable: Vec<Kept>,
    taken: Vec<Kept>,
    /// Points offered with the volume as it was then.
    offered: Vec<(Point, Vec<u8>)>,
    marks: u64,
    /// The service's batch buffer, allocated once.
    batch: Vec<u8>,
    now: u64,
    step: usize,
    report: Report,
}

/// Runs `ops` against a fresh capture; the first rule broken ends the run.
pub fn run(config: HarnessConfig, ops: &[Op]) -> Result<Report, Violation> {
    let mut h = Harness::new(config)?;
    for (step, op) in ops.iter().enumerate() {
        h.step = step;
        h.apply(op)?;
        h.check_journal()?;
    }
    h.step = ops.len();
    h.drain()?;
    h.check_points()?;
    Ok(h.report)
}

/// A deterministic run of `count` operations from `seed` (xorshift; no proptest in the
/// library), biased towards many writes in flight, out-of-order completions and
/// concurrent flushes.
pub fn ops_from_seed(seed: u64, count: usize, sectors: u64) -> Vec<Op> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |bound: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % bound.max(1)
    };
    (0..count)
        .map(|_| match next(100) {
            0..=29 => {
                let sector = next(sectors);
                let sectors = 1 + next((sectors - sector).min(24));
                Op::Write {
                    sector,
                    sectors,
                    zero: next(8) == 0,
                    fill: next(255) as u8 + 1,
                }
            }
            30..=49 => Op::Complete {
                pick: next(64) as usize,
                fail: next(40) == 0,
            },
            50..=57 => Op::Flush,
            58..=67 => Op::FlushDone {
                pick: next(8) as usize,
                fail: next(12) == 0,
                mark: next(4) == 0,
            },
            68..=77 => Op::Take,
            78..=85 => Op::Sync,
            86..=87 => Op::ServiceRestart,
            88..=92 => Op::ResyncStart,
            93..=98 => Op::ResyncDone {
                pick: next(8) as usize,
                fail: next(10) == 0,
            },
            // Power loss in one of 300 steps: runs keep points long enough to check.
            _ if next(3) == 0 => Op::Crash {
                keep: next(u64::MAX),
            },
            _ => Op::Take,
        })
        .collect()
}

impl Harness {
    fn new(config: HarnessConfig) -> Result<Harness, Violation> {
        let bytes = config.sectors * SECTOR_SIZE_BYTES;
        let geometry = Geometry::new(bytes, config.region_size_bytes).map_err(|e| Violation {
            step: 0,
            rule: "config",
            detail: format!("{e}"),
        })?;
        let base: Vec<u8> = (0..bytes).map(|i| (i / 512 % 251) as u8).collect();
        let capture = new_capture(&config, geometry, 1)?;
        Ok(Harness {
            config,
            geometry,
            device: base.clone(),
            base,
            capture,
            held: VecDeque::new(),
            writes: Vec::new(),
            flushes: Vec::new(),
            resyncs: Vec::new(),
            answers: Vec::new(),
            durable: Vec::new(),
            taken: Vec::new(),
            offered: Vec::new(),
            marks: 0,
            batch: vec![0u8; RECORD_BATCH_MAX_BYTES],
            now: 1,
            step: 0,
            report: Report::default(),
        })
    }

    fn violation(&self, rule: &'static str, detail: String) -> Violation {
        Violation {
            step: self.step,
            rule,
            detail,
        }
    }

    fn refused(&self, what: &str, e: super::CaptureError) -> Violation {
        self.violation("capture-error", format!("{what}: {e}"))
    }

    fn apply(&mut self, op: &Op) -> Result<(), Violation> {
        self.now += 1_000;
        match *op {
            Op::Write {
                sector,
                sectors,
                zero,
                fill,
            } => {
                let len = sectors * SECTOR_SIZE_BYTES;
                let data = (!zero).then(|| vec![fill; len as usize]);
                self.held.push_back(Held {
                    offset: sector * SECTOR_SIZE_BYTES,
                    data,
                    len,
                });
                self.dispatch_held()?;
            }
            Op::Complete { pick, fail } => self.complete(pick, fail)?,
            Op::Flush => {
                let t = self.capture.begin_flush(self.now);
                self.flushes.push(t);
            }
            Op::FlushDone { pick, fail, mark } => self.flush_done(pick, fail, mark)?,
            Op::Take => self.take()?,
            Op::Sync => self.sync()?,
            Op::ServiceRestart => {
                self.taken.clear();
                let head = self.durable.last().map_or(0, |k| k.seq);
                self.capture
                    .rewind(head)
                    .map_err(|e| self.refused("rewind", e))?;
            }
            Op::ResyncStart => {
                if let Some(r) = self.capture.next_resync(self.now) {
                    let data = self.device[r.offset as usize..(r.offset + r.len) as usize].to_vec();
                    self.resyncs.push((r.ticket, r.offset, data));
                }
            }
            Op::ResyncDone { pick, fail } => {
                if !self.resyncs.is_empty() {
                    let (ticket, offset, data) = self.resyncs.remove(pick % self.resyncs.len());
                    // The read returns what the range held when it was issued: no write
                    // may have completed over it since (the capture holds them).
                    let now_there = &self.device[offset as usize..offset as usize + data.len()];
                    if now_there != data.as_slice() {
                        return Err(self.violation(
                            "resync-overlap",
                            format!("a write completed over the read-back at {offset}"),
                        ));
                    }
                    let read = (!fail).then_some(data.as_slice());
                    self.capture
                        .resync_done(ticket, read, self.now)
                        .map_err(|e| self.refused("resync_done", e))?;
                    self.dispatch_held()?;
                }
            }
            Op::Crash { keep } => self.crash(keep)?,
        }
        Ok(())
    }

    /// Dispatches held writes in order until the capture says wait.
    fn dispatch_held(&mut self) -> Result<(), Violation> {
        // Bounded by the writes held.
        while let Some(w) = self.held.front() {
            let admit = self
                .capture
                .begin_write(w.offset, w.len, w.data.is_none())
                .map_err(|e| self.refused("begin_write", e))?;
            match admit {
                Admit::Wait => {
                    self.report.held += 1;
                    return Ok(());
                }
                Admit::Go(ticket) => {
                    let Some(w) = self.held.pop_front() else {
                        break;
                    };
                    self.writes.push(InFlight {
                        ticket,
                        offset: w.offset,
                        data: w.data,
                        len: w.len,
                    });
                }
            }
        }
        Ok(())
    }

    fn land(&mut self, w: &InFlight) {
        let range = w.offset as usize..(w.offset + w.len) as usize;
        match &w.data {
            Some(d) => self.device[range].copy_from_slice(d),
            None => self.device[range].fill(0),
        }
    }

    fn complete(&mut self, pick: usize, fail: bool) -> Result<(), Violation> {
        if self.writes.is_empty() {
            return Ok(());
        }
        let w = self.writes.remove(pick % self.writes.len());
        // A failed write may have landed: the worst case for the journal.
        self.land(&w);
        let data = match &w.data {
            Some(d) => WriteData::Bytes(d),
            None => WriteData::Zeroes,
        };
        let done = self
            .capture
            .write_completed(w.ticket, data, !fail, self.now)
            .map_err(|e| self.refused("write_completed", e))?;
        match done {
            WriteDone::Now if !fail && self.config.mode == CaptureMode::Sync => {
                return Err(self.violation(
                    "sync-durable",
                    format!(
                        "write at {} answered before its record was durable",
                        w.offset
                    ),
                ));
            }
            WriteDone::Now => {}
            WriteDone::WhenDurable(seq) => {
                let data = w.data.unwrap_or_else(|| vec![0; w.len as usize]);
                self.answers.push((seq, w.offset, data));
            }
        }
        self.dispatch_held()
    }

    fn flush_done(&mut self, pick: usize, fail: bool, mark: bool) -> Result<(), Violation> {
        if self.flushes.is_empty() {
            return Ok(());
        }
        let t = self.flushes.remove(pick % self.flushes.len());
        let label = if mark && !fail {
            self.marks += 1;
            Label::new(&format!("m{}", self.marks)).ok()
        } else {
            None
        };
        let point = match self.capture.flush_completed(t, !fail, label, self.now) {
            Ok(p) => p,
            // A mark may be refused while a gap is open or the buffer is full.
            Err(super::CaptureError::MarkInGap | super::CaptureError::MarkNoRoom) => None,
            Err(e) => return Err(self.refused("flush_completed", e)),
        };
        if let Some(p) = point {
            if fail {
                return Err(self.violation(
                    "point-before-flush",
                    format!("a failed flush offered point {}", p.seq),
                ));
            }
            if self
                .offered
                .last()
                .is_none_or(|(last, _)| last.seq != p.seq)
            {
                self.report.points += 1;
                self.offered.push((p, self.device.clone()));
            } else if self
                .offered
                .last()
                .is_some_and(|(_, snap)| *snap != self.device)
            {
                return Err(self.violation(
                    "point-content",
                    format!("point {} offered again after the volume changed", p.seq),
                ));
            }
        }
        Ok(())
    }

    fn take(&mut self) -> Result<(), Violation> {
        let mut out = core::mem::take(&mut self.batch);
        let taken = self.take_into(&mut out);
        self.batch = out;
        taken
    }

    fn take_into(&mut self, out: &mut [u8]) -> Result<(), Violation> {
        let Some(len) = self
            .capture
            .next_batch(out)
            .map_err(|e| self.refused("next_batch", e))?
        else {
            return Ok(());
        };
        let batch = RecordBatch::decode(&out[..len])
            .map_err(|e| self.violation("stream", format!("batch does not decode: {e}")))?;
        for r in batch.iter() {
            let last = self
                .taken
                .last()
                .or(self.durable.last())
                .map_or(0, |k| k.seq);
            if r.seq != last + 1 {
                return Err(self.violation("stream", format!("record {} follows {last}", r.seq)));
            }
            if r.kind.is_point() && !self.offered.iter().any(|(p, _)| p.seq == r.seq) {
                return Err(self.violation(
                    "point-before-flush",
                    format!(
                        "point record {} journaled before its flush completed",
                        r.seq
                    ),
                ));
            }
            self.taken.push(Kept {
                seq: r.seq,
                kind: r.kind,
                offset: r.offset,
                len: r.len,
                payload: r.payload.to_vec(),
            });
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), Violation> {
        if self.taken.is_empty() {
            return Ok(());
        }
        self.durable.append(&mut self.taken);
        let head = self.durable.last().map_or(0, |k| k.seq);
        self.capture.ack(head).map_err(|e| self.refused("ack", e))?;
        // Sync-mode writes whose record is durable are answered now: check it is there.
        let mut i = 0;
        while i < self.answers.len() {
            let (seq, offset, _) = self.answers[i];
            if seq <= head {
                let found = self
                    .durable
                    .iter()
                    .any(|k| k.seq == seq && k.kind.is_data() && k.offset + k.len > offset);
                if !found {
                    return Err(self.violation(
                        "sync-durable",
                        format!("write answered at seq {seq} has no durable record"),
                    ));
                }
                self.answers.swap_remove(i);
                continue;
            }
            i += 1;
        }
        self.dispatch_held()
    }

    fn crash(&mut self, keep: u64) -> Result<(), Violation> {
        self.report.crashes += 1;
        let writes = core::mem::take(&mut self.writes);
        for (i, w) in writes.iter().enumerate() {
            if keep >> (i % 64) & 1 == 1 {
                self.land(w);
            }
        }
        self.taken.clear();
        self.held.clear();
        self.flushes.clear();
        self.resyncs.clear();
        self.answers.clear();
        let head = self.durable.last().map_or(0, |k| k.seq);
        // Points not durable are gone; the durable ones must be exactly those listed.
        self.offered.retain(|(p, _)| p.seq <= head);
        let listed = self.listed_points();
        let offered: Vec<u64> = self.offered.iter().map(|(p, _)| p.seq).collect();
        if listed != offered {
            return Err(self.violation(
                "crash-prefix",
                format!("after power loss the journal lists {listed:?}, offered {offered:?}"),
            ));
        }
        self.report.gaps += self.capture.counters().gaps;
        self.capture = new_capture(&self.config, self.geometry, head + 1)?;
        // The shell's start: everything that differs from the journal is read back.
        let journal = self.replay(u64::MAX);
        self.capture.open_gap(self.now);
        let region = u64::from(self.geometry.region_size_bytes());
        for r in 0..self.geometry.region_count() {
            let bytes = self.geometry.regions_byte_range(r..r + 1);
            let range = bytes.start as usize..bytes.end as usize;
            if journal[range.clone()] != self.device[range] {
                self.capture
                    .mark_dirty(r * region, bytes.end - bytes.start, self.now)
                    .map_err(|e| self.refused("mark_dirty", e))?;
            }
        }
        Ok(())
    }

    /// The volume the journal's durable records give at `seq`.
    fn replay(&self, seq: u64) -> Vec<u8> {
        let mut v = self.base.clone();
        for k in self.durable.iter().filter(|k| k.seq <= seq) {
            let range = k.offset as usize..(k.offset + k.len) as usize;
            match k.kind {
                RecordKind::Write => v[range].copy_from_slice(&k.payload),
                RecordKind::Zero => v[range].fill(0),
                _ => {}
            }
        }
        v
    }

    /// Points the durable journal lists: flushes and marks outside gaps.
    fn listed_points(&self) -> Vec<u64> {
        let mut in_gap = false;
        let mut out = Vec::new();
        for k in &self.durable {
            match k.kind {
                RecordKind::GapBegin => in_gap = true,
                RecordKind::GapEnd => in_gap = false,
                kind if kind.is_point() && !in_gap => out.push(k.seq),
                _ => {}
            }
        }
        out
    }

    fn check_journal(&self) -> Result<(), Violation> {
        for seq in self.listed_points() {
            if !self.offered.iter().any(|(p, _)| p.seq == seq) {
                return Err(self.violation(
                    "listed-point",
                    format!("the journal lists point {seq}, which the capture never offered"),
                ));
            }
        }
        Ok(())
    }

    /// Completes everything, closes any gap and journals every record.
    fn drain(&mut self) -> Result<(), Violation> {
        // Each round completes a write or a read-back, or journals a batch; the bound
        // is generous and reaching it is itself a violation (no progress).
        for _ in 0..20_000 {
            if !self.writes.is_empty() {
                self.complete(0, false)?;
            } else if !self.resyncs.is_empty() {
                self.apply(&Op::ResyncDone {
                    pick: 0,
                    fail: false,
                })?;
            } else if !self.flushes.is_empty() {
                self.flush_done(0, false, false)?;
            } else if self.capture.has_unsent() || !self.taken.is_empty() {
                self.take()?;
                self.sync()?;
            } else if self.capture.in_gap() {
                let before = self.capture.dirty_regions();
                self.apply(&Op::ResyncStart)?;
                if self.resyncs.is_empty() && self.capture.in_gap() && before > 0 {
                    // No room: journal what waits first.
                    self.take()?;
                    self.sync()?;
                }
            } else if !self.held.is_empty() {
                self.dispatch_held()?;
                if self.writes.is_empty() {
                    return Err(self.violation("progress", "held writes never admitted".into()));
                }
            } else {
                self.check_journal()?;
                return Ok(());
            }
        }
        Err(self.violation("progress", "draining did not finish".into()))
    }

    fn check_points(&mut self) -> Result<(), Violation> {
        for (p, snapshot) in &self.offered {
            let got = self.replay(p.seq);
            if got != *snapshot {
                let at = got
                    .iter()
                    .zip(snapshot)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(self.violation(
                    "point-content",
                    format!(
                        "point {} replays byte {at} as {:#x}, the volume held {:#x}",
                        p.seq, got[at], snapshot[at]
                    ),
                ));
            }
            self.report.points_checked += 1;
        }
        self.report.gaps += self.capture.counters().gaps;
        Ok(())
    }
}

fn new_capture(
    config: &HarnessConfig,
    geometry: Geometry,
    first_seq: u64,
) -> Result<Capture, Violation> {
    let c = CaptureConfig {
        buffer_max_bytes: config.buffer_max_bytes,
        writes_in_flight_max: 16,
        dirty_runs_max: 4,
        resync_read_max_bytes: 2 * u64::from(config.region_size_bytes),
        ..CaptureConfig::new(config.mode, first_seq)
    };
    Capture::new(geometry, c).map_err(|e| Violation {
        step: 0,
        rule: "config",
        detail: format!("{e}"),
    })
}
