//! The capture buffer: records made and not yet acknowledged durable, in the order they
//! were made, with the cursor of those already handed to the service.
//!
//! ```text
//!   acked (freed)  |  sent, waiting for the ack  |  not sent yet
//!                  ^ front                       ^ sent          ^ back
//! ```
//!
//! Bytes are counted as the ABI lays records out ([`record_bytes`]), so the bound the
//! buffer keeps is the bound on what the service must take.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::abi::{record_bytes, CaptureRecord, RecordBatchWriter, RecordFlags, RecordKind};

/// One record the capture holds; the payload is a copy (the request's buffer is gone
/// once the request completes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// Sequence number.
    pub seq: u64,
    /// What it is.
    pub kind: RecordKind,
    /// Details.
    pub flags: RecordFlags,
    /// Byte offset (data kinds).
    pub offset: u64,
    /// Byte length (data kinds).
    pub len: u64,
    /// Wall clock when made.
    pub time_unix_ns: u64,
    /// Data of a write, label of a mark.
    pub payload: Vec<u8>,
}

impl Stored {
    /// The record as the ABI carries it.
    pub fn as_record(&self) -> CaptureRecord<'_> {
        CaptureRecord {
            seq: self.seq,
            kind: self.kind,
            flags: self.flags,
            offset: self.offset,
            len: self.len,
            time_unix_ns: self.time_unix_ns,
            payload: &self.payload,
        }
    }

    /// Bytes it counts for in the buffer.
    pub fn bytes(&self) -> u64 {
        record_bytes(self.payload.len()) as u64
    }
}

/// Records waiting to be journaled. See the module comment.
#[derive(Debug, Default)]
pub struct RecordBuffer {
    records: VecDeque<Stored>,
    /// `records[..sent]` were handed to the service.
    sent: usize,
    /// Sequence of the last record handed out (0: none since the durable head).
    last_sent_seq: u64,
    /// Sum of [`Stored::bytes`] over `records`.
    bytes: u64,
    durable_seq: u64,
}

impl RecordBuffer {
    /// An empty buffer after durable sequence `durable_seq`.
    pub fn new(durable_seq: u64) -> RecordBuffer {
        RecordBuffer {
            durable_seq,
            last_sent_seq: durable_seq,
            ..RecordBuffer::default()
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The highest sequence acknowledged durable.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// Sequence of the last record handed out.
    pub fn last_sent_seq(&self) -> u64 {
        self.last_sent_seq
    }

    /// The newest record, if any is held.
    pub fn last(&self) -> Option<&Stored> {
        self.records.back()
    }

    /// True when records wait to be handed out, in sequence (a record whose predecessor
    /// is not made yet waits for it: the stream never has a hole).
    pub fn has_unsent(&self) -> bool {
        self.records
            .get(self.sent)
            .is_some_and(|r| r.seq == self.last_sent_seq + 1)
    }

    /// Appends a record. Records arrive in sequence order, except that a record may be
    /// placed among those not sent yet by its sequence (so the stream stays in order
    /// whatever order they were made in).
    pub fn push(&mut self, record: Stored) {
        self.bytes += record.bytes();
        let at = self
            .records
            .iter()
            .rposition(|r| r.seq < record.seq)
            .map_or(0, |i| i + 1)
            .max(self.sent);
        debug_assert!(
            crate::mutants::any() || at == self.records.len(),
            "record {} made out of sequence order",
            record.seq
        );
        self.records.insert(at, record);
    }

    /// Writes the records not sent yet, in order and without a hole, into `w` until it
    /// is full; returns how many.
    pub fn fill(&mut self, w: &mut RecordBatchWriter<'_>) -> usize {
        let mut n = 0;
        // Bounded by the records held.
        while let Some(r) = self.records.get(self.sent) {
            if r.seq != self.last_sent_seq + 1 || !w.fits(&r.as_record()) {
                break;
            }
            if w.push(&r.as_record()).is_err() {
                debug_assert!(false, "a checked record was refused");
                break;
            }
            self.last_sent_seq = r.seq;
            self.sent += 1;
            n += 1;
        }
        n
    }

    /// Frees every record up to `durable_seq`. The caller checked the bounds.
    pub fn ack(&mut self, durable_seq: u64) {
        debug_assert!(durable_seq >= self.durable_seq && durable_seq <= self.last_sent_seq);
        // Bounded by the records held.
        while let Some(front) = self.records.front() {
            if front.seq > durable_seq {
                break;
            }
            self.bytes -= front.bytes();
            self.records.pop_front();
            self.sent = self.sent.saturating_sub(1);
        }
        self.durable_seq = durable_seq;
    }

    /// Counts every record up to `seq` as handed out (the journal already has them).
    pub fn skip_through(&mut self, seq: u64) {
        // Bounded by the records held.
        while let Some(r) = self.records.get(self.sent) {
            if r.seq > seq {
                break;
            }
            self.last_sent_seq = r.seq;
            self.sent += 1;
        }
    }

    /// Hands everything not acknowledged out again (the service reattached).
    pub fn rewind(&mut self) {
        self.sent = 0;
        self.last_sent_seq = self.durable_seq;
    }

    /// Checks the buffer's invariants (debug builds).
    pub fn check(&self) {
        if !cfg!(debug_assertions) || crate::mutants::any() {
            return;
        }
        assert!(self.sent <= self.records.len());
        assert_eq!(
            self.bytes,
            self.records.iter().map(Stored::bytes).sum::<u64>()
        );
        let mut previous = self.durable_seq;
        for r in &self.records {
            assert_eq!(
                r.seq,
                previous + 1,
                "records follow the durable head by one"
            );
            previous = r.seq;
        }
        if self.sent > 0 {
            assert_eq!(self.records[self.sent - 1].seq, self.last_sent_seq);
        } else {
            assert_eq!(self.last_sent_seq, self.durable_seq);
        }
    }
}
