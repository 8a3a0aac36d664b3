//! The journal pump: the service side of write capture. It takes batches of records
//! from the capture (the bytes the Windows driver would complete a pended
//! `GET_RECORDS` with, decoded by the same ABI code), appends each batch to the journal
//! as one synced append, and acknowledges the durable head back to the capture.
//!
//! It runs on its own thread: appends are blocking writes and `fdatasync`s, and one
//! append at a time is what the journal's torn-tail rule assumes. Records that arrive
//! while an append is being synced wait in the capture buffer and go in the next one,
//! so under load appends grow and syncs stay few (group commit).

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;

use rehydrate_backup::journal::format::{Kind, Record, FLAG_RESYNC};
use rehydrate_backup::journal::writer::JournalWriter;
use rehydrate_driver::abi::{
    CaptureRecord, RecordBatch, RecordFlags, RecordKind, RECORD_BATCH_MAX_BYTES,
};

use super::shared::{lock, Protected, RECHECK};

/// What the pump did, for the summary line.
#[derive(Clone, Copy, Debug, Default)]
pub struct PumpReport {
    /// Appends made.
    pub appends: u64,
    /// Records journaled.
    pub records: u64,
    /// Payload bytes journaled.
    pub bytes: u64,
}

/// The journal's form of a captured record (same fields; the batch is filled in by the
/// writer).
pub fn journal_record<'a>(r: &CaptureRecord<'a>) -> Record<'a> {
    let kind = match r.kind {
        RecordKind::Write => Kind::Write,
        RecordKind::Zero => Kind::Zero,
        RecordKind::Flush => Kind::Flush,
        RecordKind::Mark => Kind::Mark,
        RecordKind::GapBegin => Kind::GapBegin,
        RecordKind::GapEnd => Kind::GapEnd,
    };
    let flags = if r.flags.contains(RecordFlags::RESYNC) {
        FLAG_RESYNC
    } else {
        0
    };
    Record {
        seq: r.seq,
        kind,
        flags,
        offset: r.offset,
        len: r.len,
        time_unix_ns: r.time_unix_ns,
        batch_seq: r.seq,
        payload: r.payload,
    }
}

/// Batches gathered into one append at most: one sync covers them all (32 MiB).
pub const APPEND_BATCHES_MAX: usize = 8;

/// Runs until `shared.stopping` is set and nothing is left to journal, or journaling
/// fails; returns the writer (for the final state) and what it did.
pub fn run(
    shared: Arc<Protected>,
    mut writer: JournalWriter,
    wake: Receiver<()>,
) -> (JournalWriter, PumpReport) {
    let mut report = PumpReport::default();
    // Allocated lazily by the system: pages are touched only when a batch fills them.
    let mut bufs: Vec<Vec<u8>> = (0..APPEND_BATCHES_MAX)
        .map(|_| vec![0u8; RECORD_BATCH_MAX_BYTES])
        .collect();
    // Each turn journals what waits (one append, one sync) or waits for a wake-up
    // (bounded by RECHECK).
    loop {
        if lock(&shared.failure).is_some() {
            return (writer, report);
        }
        let mut lens = Vec::with_capacity(APPEND_BATCHES_MAX);
        for buf in bufs.iter_mut() {
            // The lock is held for one batch at a time: writers complete in between.
            match lock(&shared.capture).next_batch(buf) {
                Ok(Some(len)) => lens.push(len),
                Ok(None) => break,
                Err(e) => {
                    shared.fail(format!("taking a batch: {e}"));
                    return (writer, report);
                }
            }
        }
        if !lens.is_empty() {
            match append(&mut writer, &bufs, &lens, &mut report).and_then(|head| {
                lock(&shared.capture)
                    .ack(head)
                    .map(|()| head)
                    .map_err(|e| e.to_string())
            }) {
                Ok(head) => {
                    report.appends += 1;
                    shared.durable.send_replace(head);
                    shared.room.notify_waiters();
                    shared.resync.notify_one();
                }
                Err(e) => {
                    shared.fail(e);
                    return (writer, report);
                }
            }
            continue;
        }
        if shared.stopping.load(Ordering::Acquire) && lock(&shared.capture).is_idle() {
            return (writer, report);
        }
        match wake.recv_timeout(RECHECK) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return (writer, report),
        }
    }
}

/// Appends the records of the batches in `bufs[i][..lens[i]]` as one synced append;
/// returns the durable head.
fn append(
    writer: &mut JournalWriter,
    bufs: &[Vec<u8>],
    lens: &[usize],
    report: &mut PumpReport,
) -> Result<u64, String> {
    let mut records: Vec<Record<'_>> = Vec::new();
    for (buf, &len) in bufs.iter().zip(lens) {
        let batch =
            RecordBatch::decode(&buf[..len]).map_err(|e| format!("a batch did not decode: {e}"))?;
        records.extend(batch.iter().map(|r| journal_record(&r)));
    }
    report.records += records.len() as u64;
    report.bytes += records.iter().map(|r| r.payload.len() as u64).sum::<u64>();
    writer.append(&records).map_err(|e| e.to_string())
}
