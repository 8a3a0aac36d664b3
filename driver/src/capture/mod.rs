//! Write capture (technique T3's point-in-time journal, and T5's replicated writes): a
//! sans-IO core that turns completed writes and flushes into a numbered stream of
//! records for the service to journal.
//!
//! # The rules it keeps
//! * **Sequence at completion.** A write gets its sequence number when it *completes*
//!   at the lower device, never when it is dispatched: the stream's order is the order
//!   in which the volume acknowledged writes, which is the only order an application
//!   can have depended on.
//! * **Points only at flush boundaries.** A completed flush closes an epoch and makes
//!   a recovery point holding every record before it; a mark is such a point with a
//!   label (the shell flushes first). A failed flush makes no point, and a flush with
//!   no write since the last point makes none either (the last point is returned).
//! * **A bounded buffer.** Records wait in the buffer until the service acknowledges
//!   them durable. Sync mode holds a write before dispatch until its record has room
//!   (so an acknowledged write's record is durable: its completion waits for the ack);
//!   async mode never holds a write: when a record does not fit it opens a *gap*,
//!   keeps only the regions written in a dirty map, and later reads them back from the
//!   volume as `RESYNC` records. No point is made while a gap is open, and the gap
//!   closes only when every dirty region was read back with no write in flight over
//!   it, so a point after a gap holds exactly what the volume held.
//! * **Acknowledged means durable.** The service acknowledges the highest sequence its
//!   journal made durable; records up to it are freed. After the service restarts it
//!   says where its journal ends and the capture sends everything after again.
//!
//! # How a shell drives it
//! ```text
//! write dispatch   begin_write(offset, len, zero) → Go(ticket) | Wait (hold, retry after an ack)
//! write completion write_completed(ticket, data, ok, now) → Now | WhenDurable(seq)
//! flush dispatch   begin_flush() → ticket
//! flush completion flush_completed(ticket, ok, label, now) → Some(point) | None
//! journal          next_batch(buffer) → RecordBatch bytes;  ack(durable_seq);  rewind()
//! gap              next_resync() → read this range;  resync_done(ticket, data, now)
//! startup          mark_dirty(range, now): regions that may differ from the journal
//! ```
//!
//! # Bounds
//! Buffered bytes ≤ `buffer_max_bytes` (plus one write larger than the free space,
//! admitted only into an empty buffer, and the two gap markers); writes in flight ≤
//! `writes_in_flight_max`; dirty runs ≤ `dirty_runs_max`; one resync read per call.

pub mod buffer;
pub mod dirty;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ops::Range;

use buffer::{RecordBuffer, Stored};
use dirty::DirtySet;

use crate::abi::{
    record_bytes, AbiError, Label, RecordBatchWriter, RecordFlags, RecordKind, RECORD_HEADER_BYTES,
    RECORD_PAYLOAD_MAX_BYTES,
};
use crate::geometry::Geometry;
use crate::mutants::{self, Mutant};

/// What happens when a record does not fit the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureMode {
    /// Hold writes until their records fit; a write completes only once its record is
    /// durable.
    Sync,
    /// Never hold a write; fall back to a dirty map and a gap.
    Async,
}

/// Tunables of the capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Sync or async.
    pub mode: CaptureMode,
    /// Bytes of records (as the ABI lays them out) held before the mode's fallback.
    pub buffer_max_bytes: u64,
    /// Sequence of the first record: the journal's durable head plus one.
    pub first_seq: u64,
    /// Writes in flight at once; more wait.
    pub writes_in_flight_max: usize,
    /// Runs the dirty map keeps before it merges neighbours.
    pub dirty_runs_max: usize,
    /// Longest read-back of dirty regions at once.
    pub resync_read_max_bytes: u64,
}

/// Room data records always leave for points and gap markers.
pub const CONTROL_RESERVE_BYTES: u64 = 4096;
/// Smallest buffer. Any size above it makes progress: a record larger than the free
/// space is taken into an empty buffer.
pub const BUFFER_MIN_BYTES: u64 = 2 * CONTROL_RESERVE_BYTES;

const _: () = assert!(CONTROL_RESERVE_BYTES >= 4 * record_bytes(64) as u64);

impl CaptureConfig {
    /// A configuration with the defaults for everything but the mode and first sequence.
    pub fn new(mode: CaptureMode, first_seq: u64) -> CaptureConfig {
        CaptureConfig {
            mode,
            buffer_max_bytes: 64 << 20,
            first_seq,
            writes_in_flight_max: 4096,
            dirty_runs_max: 4096,
            resync_read_max_bytes: RECORD_PAYLOAD_MAX_BYTES as u64,
        }
    }
}

/// A write the capture let through, to be named at its completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteTicket(u64);

/// A flush the capture saw dispatched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlushTicket(u64);

/// A read-back of dirty regions the shell performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResyncTicket(u64);

/// Whether a write may go down now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Dispatch it; name it with the ticket when it completes.
    Go(WriteTicket),
    /// Hold it: no room for its record (sync), too many in flight, or a read-back of
    /// its regions is in flight. Ask again after the next ack or read-back.
    Wait,
}

/// What a completed write carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteData<'a> {
    /// The bytes written (exactly the write's length).
    Bytes(&'a [u8]),
    /// The range now reads as zeros (write-zeroes, trim).
    Zeroes,
}

/// When the shell may complete a write to its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteDone {
    /// Now.
    Now,
    /// Once the acknowledged durable sequence reaches this one (sync mode).
    WhenDurable(u64),
}

/// A recovery point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    /// Its sequence: the point holds every record up to it.
    pub seq: u64,
    /// Wall clock when its flush completed.
    pub time_unix_ns: u64,
    /// The mark's label, for a mark.
    pub label: Option<Label>,
}

/// A range the shell must read from the volume and hand back with
/// [`Capture::resync_done`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resync {
    /// Its name.
    pub ticket: ResyncTicket,
    /// Byte offset (region-aligned).
    pub offset: u64,
    /// Byte length (whole regions, or to the volume's end).
    pub len: u64,
}

/// Counters for status lines and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureCounters {
    /// Records made.
    pub records: u64,
    /// Bytes of write data captured (read-backs included).
    pub data_bytes: u64,
    /// Gaps opened.
    pub gaps: u64,
    /// Points made.
    pub points: u64,
    /// Completed flushes that made no point (inside a gap, or no room).
    pub points_skipped: u64,
    /// Bytes read back to close gaps.
    pub resync_bytes: u64,
    /// Times a write was told to wait.
    pub writes_waited: u64,
}

/// Everything the capture refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CaptureError {
    /// A configuration the capture cannot run with.
    #[error("capture buffer of {buffer_bytes} bytes is below the minimum of {min_bytes}")]
    BufferTooSmall {
        /// Bytes configured.
        buffer_bytes: u64,
        /// [`BUFFER_MIN_BYTES`].
        min_bytes: u64,
    },
    /// The first sequence must be at least 1.
    #[error("the first sequence number must be at least 1")]
    FirstSeq,
    /// A range outside the volume, misaligned or empty.
    #[error(transparent)]
    Range(#[from] crate::geometry::RangeError),
    /// A ticket the capture did not give, or gave and already took back.
    #[error("unknown ticket {0}")]
    UnknownTicket(u64),
    /// The data handed over is not the write's length.
    #[error("write of {len} bytes completed with {data_len} bytes of data")]
    DataLength {
        /// The write's length.
        len: u64,
        /// Bytes handed over.
        data_len: u64,
    },
    /// An acknowledgement beyond what was handed out.
    #[error("acknowledged sequence {ack} was never sent (last sent {sent})")]
    AckBeyondSent {
        /// The acknowledged sequence.
        ack: u64,
        /// The last sequence handed out.
        sent: u64,
    },
    /// An acknowledgement behind one already given: the journal lost durable records.
    #[error("acknowledged sequence {ack} is behind the durable sequence {durable}")]
    AckBehind {
        /// The acknowledged sequence.
        ack: u64,
        /// The durable sequence known.
        durable: u64,
    },
    /// A mark cannot be a point now: a gap is open.
    #[error("a mark cannot be made while the journal has a gap; try again once it caught up")]
    MarkInGap,
    /// A mark cannot be recorded now: the buffer is full.
    #[error("a mark cannot be made while the capture buffer is full; try again")]
    MarkNoRoom,
    /// The encoded batch was refused (a bug: the records were checked when made).
    #[error(transparent)]
    Abi(#[from] AbiError),
}

#[derive(Clone, Debug)]
struct InFlightWrite {
    offset: u64,
    len: u64,
    zero: bool,
    /// Sync mode: buffer bytes held for its records.
    reserved_bytes: u64,
    /// Sequence numbers given at dispatch (only under the mutant that does so).
    dispatch_seqs: Option<Range<u64>>,
}

#[derive(Clone, Debug)]
struct InFlightResync {
    offset: u64,
    len: u64,
    reserved_bytes: u64,
}

/// The capture of one volume. See the module comment for its rules.
pub struct Capture {
    geometry: Geometry,
    config: CaptureConfig,
    next_seq: u64,
    buffer: RecordBuffer,
    /// Sync mode reservations of writes in flight and read-backs.
    reserved_bytes: u64,
    next_ticket: u64,
    writes: BTreeMap<u64, InFlightWrite>,
    flushes: BTreeMap<u64, Option<Point>>,
    resyncs: BTreeMap<u64, InFlightResync>,
    gap_open: bool,
    dirty: DirtySet,
    /// Sequence of the last data record (0: none since this capture started).
    last_data_seq: u64,
    last_point: Option<Point>,
    counters: CaptureCounters,
}

impl Capture {
    /// A capture of a volume of `geometry` whose journal ends at `config.first_seq - 1`.
    pub fn new(geometry: Geometry, config: CaptureConfig) -> Result<Capture, CaptureError> {
        if config.buffer_max_bytes < BUFFER_MIN_BYTES {
            return Err(CaptureError::BufferTooSmall {
                buffer_bytes: config.buffer_max_bytes,
                min_bytes: BUFFER_MIN_BYTES,
            });
        }
        if config.first_seq == 0 {
            return Err(CaptureError::FirstSeq);
        }
        let region = u64::from(geometry.region_size_bytes());
        let config = CaptureConfig {
            writes_in_flight_max: config.writes_in_flight_max.max(1),
            resync_read_max_bytes: (config.resync_read_max_bytes / region * region)
                .clamp(region, RECORD_PAYLOAD_MAX_BYTES as u64 / region * region),
            ..config
        };
        Ok(Capture {
            geometry,
            config,
            next_seq: config.first_seq,
            buffer: RecordBuffer::new(config.first_seq - 1),
            reserved_bytes: 0,
            next_ticket: 1,
            writes: BTreeMap::new(),
            flushes: BTreeMap::new(),
            resyncs: BTreeMap::new(),
            gap_open: false,
            dirty: DirtySet::new(config.dirty_runs_max),
            last_data_seq: 0,
            last_point: None,
            counters: CaptureCounters::default(),
        })
    }

    /// The configuration in force (bounds normalised).
    pub fn config(&self) -> &CaptureConfig {
        &self.config
    }

    /// The sequence the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest sequence acknowledged durable.
    pub fn durable_seq(&self) -> u64 {
        self.buffer.durable_seq()
    }

    /// True while a gap is open (no point can be made).
    pub fn in_gap(&self) -> bool {
        self.gap_open
    }

    /// Regions waiting to be read back.
    pub fn dirty_regions(&self) -> u64 {
        self.dirty.region_count()
    }

    /// The newest point made.
    pub fn last_point(&self) -> Option<Point> {
        self.last_point
    }

    /// Counters so far.
    pub fn counters(&self) -> CaptureCounters {
        self.counters
    }

    /// Bytes of records held now.
    pub fn buffered_bytes(&self) -> u64 {
        self.buffer.bytes()
    }

    /// True when nothing waits: no record held, no write, flush or read-back in flight,
    /// no gap.
    pub fn is_idle(&self) -> bool {
        self.buffer.is_empty()
            && self.writes.is_empty()
            && self.flushes.is_empty()
            && self.resyncs.is_empty()
            && !self.gap_open
    }

    // ----- writes ------------------------------------------------------------------

    /// A write of `len` bytes at `offset` (zeros when `zero`) is about to go down.
    pub fn begin_write(
        &mut self,
        offset: u64,
        len: u64,
        zero: bool,
    ) -> Result<Admit, CaptureError> {
        self.geometry.check(offset, len)?;
        let overlaps_resync = self
            .resyncs
            .values()
            .any(|r| overlaps(r.offset, r.len, offset, len));
        if overlaps_resync || self.writes.len() >= self.config.writes_in_flight_max {
            self.counters.writes_waited += 1;
            return Ok(Admit::Wait);
        }
        let reserved_bytes = match self.config.mode {
            CaptureMode::Async => 0,
            CaptureMode::Sync => {
                let needed = records_bytes(len, zero);
                if !self.data_fits(needed) {
                    self.counters.writes_waited += 1;
                    return Ok(Admit::Wait);
                }
                self.reserved_bytes += needed;
                needed
            }
        };
        let dispatch_seqs = mutants::active(Mutant::SequenceAtDispatch).then(|| {
            let first = self.next_seq;
            self.next_seq += record_count(len, zero);
            first..self.next_seq
        });
        let ticket = self.ticket();
        self.writes.insert(
            ticket,
            InFlightWrite {
                offset,
                len,
                zero,
                reserved_bytes,
                dispatch_seqs,
            },
        );
        self.check_invariants();
        Ok(Admit::Go(WriteTicket(ticket)))
    }

    /// The write named `ticket` completed (`ok`) or failed at the lower device; `data`
    /// is what it wrote. A failed write may have changed some of its sectors, so its
    /// regions are read back (a gap) rather than trusted either way.
    pub fn write_completed(
        &mut self,
        ticket: WriteTicket,
        data: WriteData<'_>,
        ok: bool,
        now_unix_ns: u64,
    ) -> Result<WriteDone, CaptureError> {
        let w = self
            .writes
            .remove(&ticket.0)
            .ok_or(CaptureError::UnknownTicket(ticket.0))?;
        self.reserved_bytes -= w.reserved_bytes;
        let bytes = match (data, w.zero) {
            _ if !ok => None,
            (WriteData::Bytes(b), false) if b.len() as u64 == w.len => Some(b),
            (WriteData::Zeroes, true) => None,
            (other, _) => {
                // The shell handed the wrong data: the volume holds something the
                // capture cannot tell, so read it back rather than guess.
                self.mark_dirty(w.offset, w.len, now_unix_ns)?;
                self.check_invariants();
                return Err(CaptureError::DataLength {
                    len: w.len,
                    data_len: match other {
                        WriteData::Bytes(b) => b.len() as u64,
                        WriteData::Zeroes => 0,
                    },
                });
            }
        };
        if !ok {
            self.mark_dirty(w.offset, w.len, now_unix_ns)?;
            self.check_invariants();
            return Ok(WriteDone::Now);
        }
        let needed = records_bytes(w.len, w.zero);
        // Sync mode reserved the room at dispatch; async takes it if it is there.
        if w.reserved_bytes == 0 && !self.data_fits(needed) {
            self.mark_dirty(w.offset, w.len, now_unix_ns)?;
            self.check_invariants();
            return Ok(WriteDone::Now);
        }
        let last = self.record_data(
            w.offset,
            w.len,
            bytes,
            RecordFlags::empty(),
            now_unix_ns,
            w.dispatch_seqs,
        );
        self.check_invariants();
        Ok(match self.config.mode {
            CaptureMode::Sync => WriteDone::WhenDurable(last),
            CaptureMode::Async => WriteDone::Now,
        })
    }

    /// Makes the records of one write (or read-back): pieces of at most 1 MiB, each its
    /// own sequence; returns the last sequence.
    fn record_data(
        &mut self,
        offset: u64,
        len: u64,
        data: Option<&[u8]>,
        flags: RecordFlags,
        now_unix_ns: u64,
        seqs: Option<Range<u64>>,
    ) -> u64 {
        let piece_max = RECORD_PAYLOAD_MAX_BYTES as u64;
        let mut seqs = seqs.unwrap_or(self.next_seq..self.next_seq);
        let mut at = 0u64;
        let mut last = 0;
        // One step per piece: len / 1 MiB + 1 at most.
        loop {
            let piece = match data {
                Some(_) => (len - at).min(piece_max),
                None => len,
            };
            let seq = match seqs.next() {
                Some(s) => s,
                None => {
                    let s = self.next_seq;
                    self.next_seq += 1;
                    s
                }
            };
            let (kind, payload) = match data {
                Some(d) => (
                    RecordKind::Write,
                    d[at as usize..(at + piece) as usize].to_vec(),
                ),
                None => (RecordKind::Zero, Vec::new()),
            };
            self.counters.records += 1;
            self.counters.data_bytes += payload.len() as u64;
            self.buffer.push(Stored {
                seq,
                kind,
                flags,
                offset: offset + at,
                len: piece,
                time_unix_ns: now_unix_ns,
                payload,
            });
            last = last.max(seq);
            at += piece;
            if at >= len {
                break;
            }
        }
        self.last_data_seq = self.last_data_seq.max(last);
        last
    }

    // ----- flushes and marks -------------------------------------------------------

    /// A flush is about to go down.
    pub fn begin_flush(&mut self, now_unix_ns: u64) -> FlushTicket {
        let ticket = self.ticket();
        // The mutant makes its point before the flush completed.
        let early = if mutants::active(Mutant::PointInsideUnflushedEpoch) {
            self.make_point(None, now_unix_ns).ok().flatten()
        } else {
            None
        };
        self.flushes.insert(ticket, early);
        FlushTicket(ticket)
    }

    /// The flush named `ticket` completed (`ok`) or failed. A completed flush outside a
    /// gap makes a point (with `label`, a mark); it returns the point.
    pub fn flush_completed(
        &mut self,
        ticket: FlushTicket,
        ok: bool,
        label: Option<Label>,
        now_unix_ns: u64,
    ) -> Result<Option<Point>, CaptureError> {
        let early = self
            .flushes
            .remove(&ticket.0)
            .ok_or(CaptureError::UnknownTicket(ticket.0))?;
        if early.is_some() && label.is_none() {
            return Ok(early);
        }
        if !ok {
            return Ok(None);
        }
        let point = self.make_point(label, now_unix_ns);
        self.check_invariants();
        point
    }

    fn make_point(
        &mut self,
        label: Option<Label>,
        now_unix_ns: u64,
    ) -> Result<Option<Point>, CaptureError> {
        if self.gap_open {
            if label.is_some() {
                return Err(CaptureError::MarkInGap);
            }
            self.counters.points_skipped += 1;
            return Ok(None);
        }
        // Nothing written since the last point: it still stands.
        if let (None, Some(p)) = (label, self.last_point) {
            if p.seq > self.last_data_seq {
                return Ok(Some(p));
            }
        }
        let payload = label.map(|l| l.as_bytes().to_vec()).unwrap_or_default();
        if !self.control_fits(record_bytes(payload.len()) as u64) {
            if label.is_some() {
                return Err(CaptureError::MarkNoRoom);
            }
            self.counters.points_skipped += 1;
            return Ok(None);
        }
        let kind = match label {
            Some(_) => RecordKind::Mark,
            None => RecordKind::Flush,
        };
        let seq = self.push_control(kind, payload, now_unix_ns);
        let point = Point {
            seq,
            time_unix_ns: now_unix_ns,
            label,
        };
        self.counters.points += 1;
        self.last_point = Some(point);
        Ok(Some(point))
    }

    fn push_control(&mut self, kind: RecordKind, payload: Vec<u8>, now_unix_ns: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.counters.records += 1;
        self.buffer.push(Stored {
            seq,
            kind,
            flags: RecordFlags::empty(),
            offset: 0,
            len: 0,
            time_unix_ns: now_unix_ns,
            payload,
        });
        seq
    }

    // ----- the journal side --------------------------------------------------------

    /// True when records wait to be handed out.
    pub fn has_unsent(&self) -> bool {
        self.buffer.has_unsent()
    }

    /// Encodes the records not handed out yet into `out` as one
    /// [`RecordBatch`](crate::abi::RecordBatch) (at most
    /// [`RECORD_BATCH_MAX_BYTES`](crate::abi::RECORD_BATCH_MAX_BYTES)); `None` when
    /// none wait. `out` should be that large: a smaller one may not hold one record.
    pub fn next_batch(&mut self, out: &mut [u8]) -> Result<Option<usize>, CaptureError> {
        if !self.buffer.has_unsent() {
            return Ok(None);
        }
        let mut w = RecordBatchWriter::new(out)?;
        if self.buffer.fill(&mut w) == 0 {
            return Err(CaptureError::Abi(AbiError::BufferTooSmall {
                needed: crate::abi::RECORD_BATCH_MAX_BYTES,
                got: out.len(),
            }));
        }
        let len = w.finish()?;
        self.check_invariants();
        Ok(Some(len))
    }

    /// Every record up to `durable_seq` is durably journaled: frees them.
    pub fn ack(&mut self, durable_seq: u64) -> Result<(), CaptureError> {
        if durable_seq < self.buffer.durable_seq() {
            return Err(CaptureError::AckBehind {
                ack: durable_seq,
                durable: self.buffer.durable_seq(),
            });
        }
        if durable_seq > self.buffer.last_sent_seq() {
            return Err(CaptureError::AckBeyondSent {
                ack: durable_seq,
                sent: self.buffer.last_sent_seq(),
            });
        }
        self.buffer.ack(durable_seq);
        self.check_invariants();
        Ok(())
    }

    /// The service (re)attached with a journal that ends at `durable_seq`: records
    /// after it are handed out again.
    pub fn rewind(&mut self, durable_seq: u64) -> Result<(), CaptureError> {
        if durable_seq < self.buffer.durable_seq() {
            return Err(CaptureError::AckBehind {
                ack: durable_seq,
                durable: self.buffer.durable_seq(),
            });
        }
        let highest = self
            .buffer
            .last()
            .map_or(self.buffer.durable_seq(), |r| r.seq);
        if durable_seq > highest {
            return Err(CaptureError::AckBeyondSent {
                ack: durable_seq,
                sent: highest,
            });
        }
        self.buffer.rewind();
        // The journal may have made durable records whose acknowledgement was lost.
        self.buffer.skip_through(durable_seq);
        self.buffer.ack(durable_seq);
        self.check_invariants();
        Ok(())
    }

    // ----- gaps --------------------------------------------------------------------

    /// Regions of `[offset, offset + len)` may hold data the journal does not have:
    /// opens a gap (if none is open) and marks them to be read back.
    pub fn mark_dirty(
        &mut self,
        offset: u64,
        len: u64,
        now_unix_ns: u64,
    ) -> Result<(), CaptureError> {
        self.geometry.check(offset, len)?;
        self.open_gap(now_unix_ns);
        self.dirty
            .insert(self.geometry.regions_touched(offset, len));
        Ok(())
    }

    /// Opens a gap if none is open. A shell starting over a journal that may not match
    /// the volume (it stopped inside a gap, or uncleanly) opens one before anything
    /// else, marks what differs dirty, and the gap closes once that is read back.
    pub fn open_gap(&mut self, now_unix_ns: u64) {
        if !self.gap_open {
            self.gap_open = true;
            self.counters.gaps += 1;
            // Gap markers may use the reserve: at most one pair per gap.
            self.push_control(RecordKind::GapBegin, Vec::new(), now_unix_ns);
        }
    }

    /// The next range to read back, if a gap is open, a dirty run has no write or
    /// read-back in flight over it, and its records have room.
    pub fn next_resync(&mut self, now_unix_ns: u64) -> Option<Resync> {
        if !self.gap_open {
            return None;
        }
        if self.dirty.is_empty() {
            self.maybe_close_gap(now_unix_ns);
            return None;
        }
        let region_bytes = u64::from(self.geometry.region_size_bytes());
        let max_regions = self.config.resync_read_max_bytes / region_bytes;
        let needed = record_bytes(self.config.resync_read_max_bytes as usize) as u64;
        if !self.data_fits(needed) {
            return None;
        }
        let geometry = self.geometry;
        let writes = &self.writes;
        let resyncs = &self.resyncs;
        let regions = self.dirty.take(max_regions, |regions| {
            let bytes = geometry.regions_byte_range(regions);
            let (o, l) = (bytes.start, bytes.end - bytes.start);
            writes.values().any(|w| overlaps(w.offset, w.len, o, l))
                || resyncs.values().any(|r| overlaps(r.offset, r.len, o, l))
        })?;
        let bytes = self.geometry.regions_byte_range(regions);
        let (offset, len) = (bytes.start, bytes.end - bytes.start);
        let reserved_bytes = record_bytes(len as usize) as u64;
        self.reserved_bytes += reserved_bytes;
        let ticket = self.ticket();
        self.resyncs.insert(
            ticket,
            InFlightResync {
                offset,
                len,
                reserved_bytes,
            },
        );
        self.check_invariants();
        Some(Resync {
            ticket: ResyncTicket(ticket),
            offset,
            len,
        })
    }

    /// The read-back named `ticket` finished: `data` is what the volume holds there, or
    /// `None` when the read failed (the regions stay dirty and are tried again).
    pub fn resync_done(
        &mut self,
        ticket: ResyncTicket,
        data: Option<&[u8]>,
        now_unix_ns: u64,
    ) -> Result<(), CaptureError> {
        let r = self
            .resyncs
            .remove(&ticket.0)
            .ok_or(CaptureError::UnknownTicket(ticket.0))?;
        self.reserved_bytes -= r.reserved_bytes;
        match data {
            Some(d) if d.len() as u64 == r.len => {
                self.counters.resync_bytes += r.len;
                self.record_data(
                    r.offset,
                    r.len,
                    Some(d),
                    RecordFlags::RESYNC,
                    now_unix_ns,
                    None,
                );
            }
            Some(d) => {
                self.dirty
                    .insert(self.geometry.regions_touched(r.offset, r.len));
                self.check_invariants();
                return Err(CaptureError::DataLength {
                    len: r.len,
                    data_len: d.len() as u64,
                });
            }
            None => self
                .dirty
                .insert(self.geometry.regions_touched(r.offset, r.len)),
        }
        self.maybe_close_gap(now_unix_ns);
        self.check_invariants();
        Ok(())
    }

    fn maybe_close_gap(&mut self, now_unix_ns: u64) {
        if self.gap_open && self.dirty.is_empty() && self.resyncs.is_empty() {
            self.push_control(RecordKind::GapEnd, Vec::new(), now_unix_ns);
            self.gap_open = false;
        }
    }

    // ----- room --------------------------------------------------------------------

    /// True when `bytes` of data records fit, leaving the control reserve. A write
    /// larger than the free space fits an empty buffer, so none waits forever.
    fn data_fits(&self, bytes: u64) -> bool {
        let used = self.buffer.bytes() + self.reserved_bytes;
        let limit = self.config.buffer_max_bytes - CONTROL_RESERVE_BYTES;
        used + bytes <= limit || used == 0
    }

    /// True when a point's record fits, leaving room for the two gap markers.
    fn control_fits(&self, bytes: u64) -> bool {
        let used = self.buffer.bytes() + self.reserved_bytes;
        used + bytes + 2 * RECORD_HEADER_BYTES as u64 <= self.config.buffer_max_bytes
    }

    fn ticket(&mut self) -> u64 {
        let t = self.next_ticket;
        self.next_ticket += 1;
        t
    }

    fn check_invariants(&self) {
        if !cfg!(debug_assertions) || mutants::any() {
            return;
        }
        self.buffer.check();
        assert!(self.writes.len() <= self.config.writes_in_flight_max);
        let reserved: u64 = self.writes.values().map(|w| w.reserved_bytes).sum::<u64>()
            + self.resyncs.values().map(|r| r.reserved_bytes).sum::<u64>();
        assert_eq!(reserved, self.reserved_bytes);
        assert_eq!(
            self.buffer
                .last()
                .map_or(self.buffer.durable_seq(), |r| r.seq),
            self.next_seq - 1,
            "every sequence given is in the buffer or durable"
        );
        if !self.gap_open {
            assert!(self.dirty.is_empty() && self.resyncs.is_empty());
        }
        if let Some(p) = self.last_point {
            assert!(p.seq < self.next_seq);
        }
        // No write and read-back over the same sectors at once.
        for r in self.resyncs.values() {
            assert!(!self
                .writes
                .values()
                .any(|w| overlaps(w.offset, w.len, r.offset, r.len)));
        }
    }
}

/// Records one write of `len` bytes becomes.
fn record_count(len: u64, zero: bool) -> u64 {
    if zero {
        1
    } else {
        len.div_ceil(RECORD_PAYLOAD_MAX_BYTES as u64).max(1)
    }
}

/// Buffer bytes one write of `len` bytes takes.
fn records_bytes(len: u64, zero: bool) -> u64 {
    if zero {
        return record_bytes(0) as u64;
    }
    let piece = RECORD_PAYLOAD_MAX_BYTES as u64;
    let whole = len / piece;
    let rest = len % piece;
    whole * record_bytes(RECORD_PAYLOAD_MAX_BYTES) as u64
        + if rest > 0 {
            record_bytes(rest as usize) as u64
        } else {
            0
        }
}

fn overlaps(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}
