//! The filter's write capture (technique T3): feeds the sans-IO capture core
//! ([`crate::capture::Capture`]) from the filter's own request path, so the records
//! follow the volume's real completions.
//!
//! * **Write dispatch** (the engine forwards a file-system write or trim): the core
//!   admits it (`Go`, remembered by the lower id the completion will name) or holds it
//!   (`Wait`: sync mode without room, too many in flight, or a read-back over its
//!   regions). A held send goes down when [`CaptureTap::retry_held`] admits it, after an
//!   acknowledgement, a read-back or another write's completion.
//! * **Write completion** (`on_lower_complete` of that lower id, before the engine sees
//!   it): the core numbers it now, in completion order, with the data the request
//!   carried (`WdfRequestRetrieveInputBuffer` of a write) or zeros for a trim. In sync
//!   mode the answer to the file system waits until the acknowledged durable sequence
//!   reaches the write's: the engine's completion of that request is parked here.
//! * **Flush**: a file-system flush is a flush of the volume; its completion at the
//!   lower device closes the epoch and may make a point, which the shell can read from
//!   [`CaptureTap::take_offered`].
//! * **Journal side**: the service takes batches, acknowledges, rewinds after it
//!   restarted; read-backs of a gap come from [`CaptureTap::next_resync`].
//!
//! Bounds: the maps hold one entry per request the engine owns (the filter's slab bounds
//! those); offered points at most [`OFFERED_MAX`] (older ones are dropped: they are in
//! the journal anyway).

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use super::Filter;
use crate::capture::{
    Admit, Capture, CaptureError, FlushTicket, Point, Resync, ResyncTicket, WriteData, WriteDone,
    WriteTicket,
};
use crate::engine::{Action, Event, LowerId, RequestId};
use crate::framework::Framework;
use crate::status::Status;

/// Offered points kept for the shell to read.
pub const OFFERED_MAX: usize = 64;

/// What the filter noted about a request it owns, for capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Noted {
    /// A write (`zero`: a trim, the range reads as zeros).
    Write {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
        /// A trim.
        zero: bool,
    },
    /// A flush of the volume.
    Flush,
    /// A read (it must not overtake a write the capture holds).
    Read {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
    },
}

impl Noted {
    /// The bytes it touches (none for a flush).
    fn range(self) -> Option<(u64, u64)> {
        match self {
            Noted::Write { offset, len, .. } | Noted::Read { offset, len } => Some((offset, len)),
            Noted::Flush => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct SentWrite {
    ticket: WriteTicket,
    id: RequestId,
    zero: bool,
}

/// The capture of one volume, as the filter drives it.
pub struct CaptureTap {
    core: Capture,
    noted: BTreeMap<RequestId, Noted>,
    writes: BTreeMap<LowerId, SentWrite>,
    flushes: BTreeMap<LowerId, FlushTicket>,
    /// Forwards the core told to wait, and what arrived after them, in arrival order.
    held: VecDeque<(RequestId, LowerId)>,
    /// Requests sent after being held, until their lower completion: a later request
    /// on their bytes waits (as it would behind a request the engine held).
    ordered: BTreeMap<LowerId, (u64, u64)>,
    /// Sync mode: requests whose answer waits for this durable sequence.
    durable_wait: BTreeMap<RequestId, u64>,
    /// Completions the engine asked for while their durable sequence was not reached.
    parked: BTreeMap<RequestId, Status>,
    offered: VecDeque<Point>,
    /// A failure of the core on the filter's own path (a bug): capture stops.
    failed: Option<CaptureError>,
}

impl CaptureTap {
    /// A tap over `core`.
    pub fn new(core: Capture) -> CaptureTap {
        CaptureTap {
            core,
            noted: BTreeMap::new(),
            writes: BTreeMap::new(),
            flushes: BTreeMap::new(),
            held: VecDeque::new(),
            ordered: BTreeMap::new(),
            durable_wait: BTreeMap::new(),
            parked: BTreeMap::new(),
            offered: VecDeque::new(),
            failed: None,
        }
    }

    /// The core (batches, acks, counters).
    pub fn core(&self) -> &Capture {
        &self.core
    }

    /// The first error the core gave on the filter's path, if any.
    pub fn failure(&self) -> Option<CaptureError> {
        self.failed
    }

    /// Requests whose send waits for the core (writes, and what queued behind them).
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// Writes sent down and not completed: `(offset, len)` each.
    pub fn writes_in_flight(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.writes
            .values()
            .filter_map(|w| match self.noted.get(&w.id) {
                Some(Noted::Write { offset, len, .. }) => Some((*offset, *len)),
                _ => None,
            })
    }

    /// Writes held before their send: `(offset, len)` each.
    pub fn held_writes(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.held
            .iter()
            .filter_map(|(id, _)| match self.noted.get(id) {
                Some(Noted::Write { offset, len, .. }) => Some((*offset, *len)),
                _ => None,
            })
    }

    /// The write sent as `lower`: its request, length and whether it is a trim.
    pub(super) fn sent_write(&self, lower: LowerId) -> Option<(RequestId, u64, bool)> {
        let w = self.writes.get(&lower)?;
        match self.noted.get(&w.id) {
            Some(Noted::Write { len, zero, .. }) => Some((w.id, *len, *zero)),
            _ => None,
        }
    }

    /// The oldest point offered and not taken yet.
    pub fn take_offered(&mut self) -> Option<Point> {
        self.offered.pop_front()
    }

    /// The filter owns request `id`, of this kind.
    pub(super) fn note(&mut self, id: RequestId, noted: Noted) {
        self.noted.insert(id, noted);
    }

    /// The engine forwards request `id` as `lower`: `true` when it may go down now.
    /// While any write is held, every later request waits behind it (reads and
    /// flushes too), so none overtakes a write the engine believes sent.
    pub(super) fn on_forward(&mut self, id: RequestId, lower: LowerId, now_unix_ns: u64) -> bool {
        if !self.held.is_empty()
            || self.overlaps_ordered(id)
            || !self.try_send(id, lower, now_unix_ns)
        {
            self.held.push_back((id, lower));
            return false;
        }
        true
    }

    /// Tells the core about a request going down: false when it must wait.
    fn try_send(&mut self, id: RequestId, lower: LowerId, now_unix_ns: u64) -> bool {
        match self.noted.get(&id).copied() {
            Some(Noted::Write { offset, len, zero }) => {
                match self.core.begin_write(offset, len, zero) {
                    Ok(Admit::Go(ticket)) => {
                        self.writes.insert(lower, SentWrite { ticket, id, zero });
                        true
                    }
                    Ok(Admit::Wait) => false,
                    Err(e) => {
                        // Not capturable (a range the engine accepted): the write goes
                        // down and the journal can no longer vouch for the volume.
                        self.fail(e);
                        true
                    }
                }
            }
            Some(Noted::Flush) => {
                let ticket = self.core.begin_flush(now_unix_ns);
                self.flushes.insert(lower, ticket);
                true
            }
            Some(Noted::Read { .. }) | None => true,
        }
    }

    /// Held requests that may go down now, oldest first; the filter sends them.
    pub(super) fn retry_held(&mut self, now_unix_ns: u64, out: &mut Vec<(RequestId, LowerId)>) {
        // Bounded by the held requests: each turn sends one or stops.
        while let Some(&(id, lower)) = self.held.front() {
            if self.overlaps_ordered(id) || !self.try_send(id, lower, now_unix_ns) {
                return;
            }
            self.held.pop_front();
            if let Some(range) = self.noted.get(&id).and_then(|n| n.range()) {
                self.ordered.insert(lower, range);
            }
            out.push((id, lower));
        }
    }

    /// True when request `id` touches bytes of a request sent after a hold that has not
    /// completed at the lower device.
    fn overlaps_ordered(&self, id: RequestId) -> bool {
        let Some((offset, len)) = self.noted.get(&id).and_then(|n| n.range()) else {
            return false;
        };
        self.ordered
            .values()
            .any(|&(o, l)| o < offset + len && offset < o + l)
    }

    /// The lower request `lower` is over without reaching the device's completion
    /// (its send failed, or it was cancelled before it went).
    pub(super) fn lower_gone(&mut self, lower: LowerId) {
        self.ordered.remove(&lower);
    }

    /// The lower request `lower` completed with `status`; `data` reads the write's data.
    pub(super) fn on_lower_complete(
        &mut self,
        lower: LowerId,
        status: Status,
        data: Option<&[u8]>,
        now_unix_ns: u64,
    ) {
        self.ordered.remove(&lower);
        if let Some(w) = self.writes.remove(&lower) {
            let ok = status.is_success();
            let payload = if w.zero {
                WriteData::Zeroes
            } else {
                match data {
                    Some(bytes) => WriteData::Bytes(bytes),
                    None => {
                        // No data to journal: its regions are read back instead.
                        let _ = self.core.write_completed(
                            w.ticket,
                            WriteData::Zeroes,
                            false,
                            now_unix_ns,
                        );
                        return;
                    }
                }
            };
            match self
                .core
                .write_completed(w.ticket, payload, ok, now_unix_ns)
            {
                Ok(WriteDone::Now) => {}
                Ok(WriteDone::WhenDurable(seq)) => {
                    self.durable_wait.insert(w.id, seq);
                }
                Err(e) => self.fail(e),
            }
        } else if let Some(ticket) = self.flushes.remove(&lower) {
            match self
                .core
                .flush_completed(ticket, status.is_success(), None, now_unix_ns)
            {
                Ok(Some(point)) => {
                    if self.offered.len() >= OFFERED_MAX {
                        self.offered.pop_front();
                    }
                    self.offered.push_back(point);
                }
                Ok(None) => {}
                Err(e) => self.fail(e),
            }
        }
    }

    /// The engine completes request `id`: `false` when the answer must wait for the
    /// journal (it is parked and handed back by [`CaptureTap::ack`]).
    pub(super) fn on_complete(&mut self, id: RequestId, status: Status) -> bool {
        match self.durable_wait.get(&id) {
            Some(&seq) if seq > self.core.durable_seq() => {
                self.parked.insert(id, status);
                false
            }
            _ => {
                self.durable_wait.remove(&id);
                self.noted.remove(&id);
                true
            }
        }
    }

    /// A held request was cancelled: it leaves the queue; returns the lower id the
    /// engine sent it as.
    pub(super) fn cancel_held(&mut self, id: RequestId) -> Option<LowerId> {
        let at = self.held.iter().position(|&(h, _)| h == id)?;
        let (_, lower) = self.held.remove(at)?;
        Some(lower)
    }

    /// True while request `id`'s answer waits for the journal.
    pub(super) fn is_parked(&self, id: RequestId) -> bool {
        self.parked.contains_key(&id)
    }

    /// The service made the journal durable through `durable_seq`: parked answers whose
    /// sequence it reached go to `out`.
    pub fn ack(
        &mut self,
        durable_seq: u64,
        out: &mut Vec<(RequestId, Status)>,
    ) -> Result<(), CaptureError> {
        self.core.ack(durable_seq)?;
        self.release(out);
        Ok(())
    }

    fn release(&mut self, out: &mut Vec<(RequestId, Status)>) {
        let durable = self.core.durable_seq();
        let ready: Vec<RequestId> = self
            .parked
            .keys()
            .copied()
            .filter(|id| self.durable_wait.get(id).is_none_or(|&s| s <= durable))
            .collect();
        for id in ready {
            if let Some(status) = self.parked.remove(&id) {
                self.durable_wait.remove(&id);
                self.noted.remove(&id);
                out.push((id, status));
            }
        }
    }

    /// The next batch of records for the journal (see [`Capture::next_batch`]).
    pub fn next_batch(&mut self, out: &mut [u8]) -> Result<Option<usize>, CaptureError> {
        self.core.next_batch(out)
    }

    /// The service restarted and its journal ends at `durable_seq`.
    pub fn rewind(&mut self, durable_seq: u64) -> Result<(), CaptureError> {
        self.core.rewind(durable_seq)
    }

    /// The next read-back of a gap the shell performs.
    pub fn next_resync(&mut self, now_unix_ns: u64) -> Option<Resync> {
        self.core.next_resync(now_unix_ns)
    }

    fn fail(&mut self, e: CaptureError) {
        if self.failed.is_none() {
            self.failed = Some(e);
        }
    }
}

impl<F: Framework> Filter<F> {
    /// Protects the volume: from now on every write, trim and flush the filter owns is
    /// captured. Call before the first request (writes already owned are not).
    pub fn enable_capture(&mut self, tap: CaptureTap) {
        self.capture = Some(tap);
    }

    /// The capture, when the volume is protected.
    pub fn capture(&self) -> Option<&CaptureTap> {
        self.capture.as_ref()
    }

    /// The capture, for the journal side (batches, rewinds, read-backs, offered points).
    pub fn capture_mut(&mut self) -> Option<&mut CaptureTap> {
        self.capture.as_mut()
    }

    /// The service's acknowledgement of its durable sequence: answers parked for it go
    /// to the file system, held writes that now fit go down.
    pub fn capture_ack(&mut self, fw: &mut F, durable_seq: u64) -> Result<(), CaptureError> {
        let Some(tap) = self.capture.as_mut() else {
            return Ok(());
        };
        let mut ready = Vec::new();
        tap.ack(durable_seq, &mut ready)?;
        for (id, status) in ready {
            self.perform(fw, Action::Complete { id, status });
        }
        self.capture_retry(fw);
        Ok(())
    }

    /// A read-back of a gap finished; held writes over it may go down now.
    pub fn capture_resync_done(
        &mut self,
        fw: &mut F,
        ticket: ResyncTicket,
        data: Option<&[u8]>,
    ) -> Result<(), CaptureError> {
        let now_ns = fw.now_ns();
        if let Some(tap) = self.capture.as_mut() {
            tap.core.resync_done(ticket, data, now_ns)?;
        }
        self.capture_retry(fw);
        Ok(())
    }

    pub(super) fn note_capture(&mut self, id: RequestId, noted: Noted) {
        if let Some(tap) = self.capture.as_mut() {
            tap.note(id, noted);
        }
    }

    /// Numbers a completed write with the data its request carried (before the engine
    /// completes the request), or closes a flush's epoch.
    pub(super) fn capture_completed(&mut self, fw: &mut F, lower: LowerId, status: Status) {
        let now_ns = fw.now_ns();
        let Some(tap) = self.capture.as_mut() else {
            return;
        };
        let data = match tap.sent_write(lower) {
            Some((id, len, false)) => self
                .requests
                .get(id)
                .and_then(|owned| fw.input_buffer(owned.request, len as usize).ok())
                .filter(|d| d.len() as u64 >= len)
                .map(|d| &d[..len as usize]),
            _ => None,
        };
        tap.on_lower_complete(lower, status, data, now_ns);
    }

    /// A request the capture holds stays the filter's: it is cancelable meanwhile.
    pub(super) fn capture_hold(&mut self, fw: &mut F, id: RequestId, lower: LowerId) {
        let Some(owned) = self.requests.get_mut(id) else {
            return;
        };
        match fw.mark_cancelable(owned.request) {
            Ok(()) => owned.cancelable = true,
            // Cancelled already: it does not go down.
            Err(_) => {
                if let Some(tap) = self.capture.as_mut() {
                    tap.cancel_held(id);
                }
                self.events.push_back(Event::LowerCompleted {
                    lower,
                    status: Status::CANCELLED,
                });
            }
        }
    }

    /// A completed write whose answer waits for the journal is cancelable meanwhile (a
    /// cancel does not answer it early: it is answered when durable).
    pub(super) fn capture_park(&mut self, fw: &mut F, id: RequestId) {
        if let Some(owned) = self.requests.get_mut(id) {
            if fw.mark_cancelable(owned.request).is_ok() {
                owned.cancelable = true;
            }
        }
    }

    /// The cancel callback for request `id`: true when the capture dealt with it (a
    /// held write completes as cancelled; a parked answer still waits for the journal).
    pub(super) fn capture_cancel(&mut self, fw: &mut F, id: RequestId) -> bool {
        let Some(tap) = self.capture.as_mut() else {
            return false;
        };
        if let Some(lower) = tap.cancel_held(id) {
            self.run(
                fw,
                Event::LowerCompleted {
                    lower,
                    status: Status::CANCELLED,
                },
            );
            return true;
        }
        tap.is_parked(id)
    }

    /// Sends down the held writes the capture admits now.
    pub(super) fn capture_retry(&mut self, fw: &mut F) {
        let Some(tap) = self.capture.as_mut() else {
            return;
        };
        if tap.held_count() == 0 {
            return;
        }
        let mut go = Vec::new();
        tap.retry_held(fw.now_ns(), &mut go);
        for (id, lower) in go {
            if !self.release_cancelable(fw, id, false) {
                // Cancelled meanwhile: the cancel callback finishes it.
                if let Some(tap) = self.capture.as_mut() {
                    tap.lower_gone(lower);
                }
                self.events.push_back(Event::LowerCompleted {
                    lower,
                    status: Status::CANCELLED,
                });
                continue;
            }
            let sent = match self.requests.get(id) {
                Some(owned) => fw.send_to_lower(owned.request, lower),
                None => Err(Status::INVALID_PARAMETER),
            };
            if let Err(status) = sent {
                if let Some(tap) = self.capture.as_mut() {
                    tap.lower_gone(lower);
                }
                self.events
                    .push_back(Event::LowerCompleted { lower, status });
            }
        }
        self.drain(fw);
    }
}
