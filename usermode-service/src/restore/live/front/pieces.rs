//! The overlay mode's pieces ([`Action::Piece`](rehydrate_driver::engine::Action)): part
//! of a client request performed on one of two files (the overlay or the target). A
//! read in several pieces is put together in an [`Assembly`] its pieces write into; a
//! piece that is the whole request is performed like a forward.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rehydrate_driver::engine::{LowerId, RequestId};
use rehydrate_driver::Status;

use super::super::io::{perform, perform_now, Op};
use super::Front;
use crate::restore::target::Target;

/// A read's bytes, written by its pieces as they finish (each into its own range).
#[derive(Debug, Clone)]
pub(super) struct Assembly(Arc<Mutex<Vec<u8>>>);

impl Assembly {
    fn new(len: usize) -> Assembly {
        Assembly(Arc::new(Mutex::new(vec![0; len])))
    }

    fn put(&self, at: usize, bytes: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(to) = buf.get_mut(at..at + bytes.len()) {
            to.copy_from_slice(bytes);
        }
    }

    /// The whole read (every piece finished).
    pub(super) fn take(self) -> Bytes {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Bytes::from(std::mem::take(&mut *buf))
    }
}

/// `op` cut to `[from, to)` (inside its range).
fn part(op: &Op, from: u64, to: u64) -> Op {
    match op {
        Op::Read { .. } => Op::Read {
            offset: from,
            len: to - from,
        },
        Op::Write { offset, data, fua } => Op::Write {
            offset: from,
            data: data.slice((from - offset) as usize..(to - offset) as usize),
            fua: *fua,
        },
        Op::Zeroes { fua, .. } => Op::Zeroes {
            offset: from,
            len: to - from,
            fua: *fua,
        },
        Op::Trim { .. } => Op::Trim {
            offset: from,
            len: to - from,
        },
        Op::Flush => Op::Flush,
    }
}

impl Front {
    /// `Action::Piece`: performs `[offset, offset + len)` of request `id` on `file`,
    /// reporting back as a forward does.
    pub fn piece(
        &mut self,
        id: RequestId,
        lower: LowerId,
        file: &Arc<Target>,
        offset: u64,
        len: u64,
    ) {
        let Some(entry) = self.entries.get_mut(&id) else {
            debug_assert!(false, "piece of unknown request {id}");
            return;
        };
        let Some((start, client_len)) = entry.op.range() else {
            // A flush is never cut into pieces.
            debug_assert!(false, "piece of a flush");
            return;
        };
        // The engine works in whole sectors; an export of odd size ends mid-sector.
        let (from, to) = (offset.max(start), (offset + len).min(start + client_len));
        let whole = from == start && to == start + client_len;
        let op = part(&entry.op, from, to.max(from));
        let assembly = match (&entry.op, whole) {
            (Op::Read { .. }, false) => Some(
                entry
                    .assembly
                    .get_or_insert_with(|| Assembly::new(client_len as usize))
                    .clone(),
            ),
            _ => None,
        };
        let at = (from - start) as usize;
        let finish = move |result: std::io::Result<Bytes>| -> (Status, Bytes) {
            match result {
                Ok(data) => match &assembly {
                    Some(a) => {
                        a.put(at, &data);
                        (Status::SUCCESS, Bytes::new())
                    }
                    None => (Status::SUCCESS, data),
                },
                Err(e) => {
                    tracing::error!(%e, "live export: overlay-mode I/O failed");
                    (Status::IO_DEVICE_ERROR, Bytes::new())
                }
            }
        };
        if to <= from {
            let _ = self
                .done_tx
                .send((lower, id, Status::SUCCESS, Bytes::new()));
            return;
        }
        if let Some(done) = perform_now(file, &op) {
            let (status, data) = finish(done);
            let _ = self.done_tx.send((lower, id, status, data));
            return;
        }
        let (file, tx) = (Arc::clone(file), self.done_tx.clone());
        tokio::task::spawn_blocking(move || {
            let (status, data) = finish(perform(&file, &op));
            let _ = tx.send((lower, id, status, data));
        });
    }
}
