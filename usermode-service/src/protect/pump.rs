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

/// Runs until `shared.stopping` is set and nothing is left to journal, or journaling
/// fails; returns the writer (for the final state) and what it did.
pub fn run(
    shared: Arc<Protected>,
    mut writer: JournalWriter,
    wake: Receiver<()>,
) -> (JournalWriter, PumpReport) {
    let mut report = PumpReport::default();
    let mut buf = vec![0u8; RECORD_BATCH_MAX_BYTES];
    // Each turn journals one batch or waits for a wake-up (bounded by RECHECK).
    loop {
        if lock(&shared.failure).is_some() {
            return (writer, report);
        }
        let taken = lock(&shared.capture).next_batch(&mut buf);
        match taken {
            Ok(Some(len)) => {
                let appended = RecordBatch::decode(&buf[..len])
                    .map_err(|e| format!("a batch did not decode: {e}"))
                    .and_then(|batch| {
                        let records: Vec<Record<'_>> =
                            batch.iter().map(|r| journal_record(&r)).collect();
                        report.records += records.len() as u64;
                        report.bytes += records.iter().map(|r| r.payload.len() as u64).sum::<u64>();
                        writer.append(&records).map_err(|e| e.to_string())
                    });
                match appended.and_then(|head| {
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
            Ok(None) => {}
            Err(e) => {
                shared.fail(format!("taking a batch: {e}"));
                return (writer, report);
            }
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
