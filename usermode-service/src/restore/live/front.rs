//! The shell's side of the live export: the requests the engine knows by id, and the
//! three engine actions that concern them. `Forward` runs the I/O at once when it needs
//! no waiting, else on a blocking thread, and reports back as [`LowerDone`] (the shell feeds `LowerCompleted`); `Hold` starts
//! the miss clock; `Complete` answers the client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rehydrate_driver::engine::{Event, LowerId, RequestId};
use rehydrate_driver::Status;
use rehydrate_nbd::ExportError;
use tokio::sync::{mpsc, oneshot};

use super::io::{perform, perform_now, Op};
use super::Request;
use crate::restore::target::Target;

mod pieces;

/// A forwarded request's I/O finished: its lower handle, request, status and read data.
pub type LowerDone = (LowerId, RequestId, Status, Bytes);

/// Latencies kept for the status's percentiles (the most recent ones).
pub const LATENCIES_KEPT: usize = 4096;

#[derive(Debug)]
struct Entry {
    op: Op,
    /// `None` for the shell's own flush at a stop.
    reply: Option<oneshot::Sender<Result<Bytes, ExportError>>>,
    held_at: Option<Instant>,
    data: Bytes,
    /// A read done in pieces (the overlay mode) is put together here.
    assembly: Option<pieces::Assembly>,
}

/// Requests in the engine's hands.
#[derive(Debug)]
pub struct Front {
    target: Arc<Target>,
    entries: HashMap<RequestId, Entry>,
    next_id: RequestId,
    done_tx: mpsc::UnboundedSender<LowerDone>,
    /// Miss latencies in ms, most recent last, at most [`LATENCIES_KEPT`].
    latencies_ms: std::collections::VecDeque<f64>,
    /// Misses answered since the last [`Front::take_misses`].
    fresh_misses: Vec<f64>,
}

/// Status an engine completion is answered with.
fn answer(status: Status) -> Result<(), ExportError> {
    if status.is_success() {
        return Ok(());
    }
    Err(match status {
        Status::INVALID_PARAMETER | Status::NONEXISTENT_SECTOR | Status::INVALID_BUFFER_SIZE => {
            ExportError::OutOfRange
        }
        Status::DEVICE_NOT_READY => ExportError::ShuttingDown,
        other => ExportError::Io(std::io::Error::other(format!(
            "the restore could not serve this request (status {:#010x})",
            other.0
        ))),
    })
}

impl Front {
    /// A front performing I/O on `target`, reporting on `done_tx`.
    pub fn new(target: Arc<Target>, done_tx: mpsc::UnboundedSender<LowerDone>) -> Front {
        Front {
            target,
            entries: HashMap::new(),
            next_id: 1,
            done_tx,
            latencies_ms: std::collections::VecDeque::new(),
            fresh_misses: Vec::new(),
        }
    }

    /// Takes a client request; returns the engine event for it.
    pub fn submit(&mut self, request: Request) -> Event {
        self.add(request.op, Some(request.reply))
    }

    /// The shell's own flush (at a stop): completes with no client to answer.
    pub fn own_flush(&mut self) -> (RequestId, Event) {
        let event = self.add(Op::Flush, None);
        (self.next_id - 1, event)
    }

    fn add(&mut self, op: Op, reply: Option<oneshot::Sender<Result<Bytes, ExportError>>>) -> Event {
        let id = self.next_id;
        self.next_id += 1;
        let event = match (&op, op.sector_range()) {
            (Op::Read { .. }, Some((offset, len))) => Event::Read { id, offset, len },
            (Op::Write { fua, .. } | Op::Zeroes { fua, .. }, Some((offset, len))) => Event::Write {
                id,
                offset,
                len,
                fua: *fua,
            },
            (Op::Trim { .. }, Some((offset, len))) => Event::Discard { id, offset, len },
            _ => Event::Flush { id },
        };
        self.entries.insert(
            id,
            Entry {
                op,
                reply,
                held_at: None,
                data: Bytes::new(),
                assembly: None,
            },
        );
        event
    }

    /// `Action::Forward`: performs the request's I/O off the shell's task.
    pub fn forward(&mut self, id: RequestId, lower: LowerId) {
        let Some(entry) = self.entries.get(&id) else {
            debug_assert!(false, "forward of unknown request {id}");
            return;
        };
        // Cached data and plain writes at once; the rest on a thread that may block.
        if let Some(done) = perform_now(&self.target, &entry.op) {
            let (status, data) = match done {
                Ok(data) => (Status::SUCCESS, data),
                Err(e) => {
                    tracing::error!(%e, op = ?entry.op, "live export: target I/O failed");
                    (Status::IO_DEVICE_ERROR, Bytes::new())
                }
            };
            let _ = self.done_tx.send((lower, id, status, data));
            return;
        }
        let (op, target, tx) = (
            entry.op.clone(),
            Arc::clone(&self.target),
            self.done_tx.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let (status, data) = match perform(&target, &op) {
                Ok(data) => (Status::SUCCESS, data),
                Err(e) => {
                    tracing::error!(%e, ?op, "live export: target I/O failed");
                    (Status::IO_DEVICE_ERROR, Bytes::new())
                }
            };
            let _ = tx.send((lower, id, status, data));
        });
    }

    /// A forwarded request's I/O finished: keeps a read's data for its completion.
    pub fn lower_done(&mut self, id: RequestId, data: Bytes) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.data = data;
        }
    }

    /// `Action::Hold`: the request waits for data; its miss clock starts.
    pub fn hold(&mut self, id: RequestId) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.held_at.get_or_insert_with(Instant::now);
        }
    }

    /// `Action::Complete`: answers the client. Returns true for the shell's own flush.
    pub fn complete(&mut self, id: RequestId, status: Status) -> bool {
        let Some(entry) = self.entries.remove(&id) else {
            debug_assert!(false, "completion of unknown request {id}");
            return false;
        };
        if let Some(at) = entry.held_at {
            let ms = at.elapsed().as_secs_f64() * 1e3;
            if self.latencies_ms.len() == LATENCIES_KEPT {
                self.latencies_ms.pop_front();
            }
            self.latencies_ms.push_back(ms);
            if self.fresh_misses.len() < LATENCIES_KEPT {
                self.fresh_misses.push(ms);
            }
        }
        let Some(reply) = entry.reply else {
            return true;
        };
        let data = match entry.op {
            Op::Read { .. } if entry.assembly.is_some() => entry
                .assembly
                .map(pieces::Assembly::take)
                .unwrap_or_default(),
            // The engine read whole sectors; the client asked for its own length.
            Op::Read { len, .. } => entry.data.slice(..(len as usize).min(entry.data.len())),
            _ => Bytes::new(),
        };
        let _ = reply.send(answer(status).map(|()| data));
        false
    }

    /// Requests not answered yet (held, or at the target).
    pub fn in_flight(&self) -> usize {
        self.entries.len()
    }

    /// Requests held right now.
    pub fn held(&self) -> u64 {
        self.entries
            .values()
            .filter(|e| e.held_at.is_some())
            .count() as u64
    }

    /// Miss latency percentile `p` (0..=1) over the recent misses, in ms.
    pub fn latency_ms(&self, p: f64) -> Option<f64> {
        if self.latencies_ms.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = self.latencies_ms.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let i = ((sorted.len() - 1) as f64 * p).round() as usize;
        sorted.get(i).copied()
    }

    /// Latencies of the misses answered since the last call (for the timeline).
    pub fn take_misses(&mut self) -> Vec<f64> {
        std::mem::take(&mut self.fresh_misses)
    }
}
