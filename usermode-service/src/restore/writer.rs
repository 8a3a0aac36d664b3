//! The restore's writer: one thread that writes hydrate data to the target while the
//! shell's task goes on taking fetched data, so network and disk overlap.
//!
//! It takes every job queued when it wakes (up to [`BATCH_BYTES_MAX`]), sorts them by
//! offset and writes each run of adjacent ones with one `pwritev`, so the target sees
//! few, large, mostly sequential writes however the fetches completed.
//!
//! Writeback window: after each batch it asks the kernel to start writing the batch
//! out ([`Target::start_writeback`]), and once more than [`WRITEBACK_WINDOW_BYTES`]
//! were written since, it waits for the oldest batch's writeback to end and drops its
//! pages from the page cache ([`Target::settle`]). So the page cache a restore fills
//! stays within the window however large the volume: the next writes reuse those pages
//! rather than taking fresh memory for each (on a virtual machine whose free memory
//! goes back to the host, copying into fresh pages cost most of a restore's time), the
//! disk writes all along instead of at the end, and the engine's periodic `fdatasync`
//! and the last one find little left to do. The wait paces the writer to the disk,
//! and through the bounded fetch buffers the fetching too, as `nbdcopy` does.
//!
//! A job's completion is sent (its `LowerId` and status, for the engine's
//! `LowerCompleted`) only after its write returned and its buffer was let go, so the
//! shell can take the buffer back for reuse; before any waiting for writeback.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use rehydrate_driver::engine::LowerId;
use rehydrate_driver::Status;
use tokio::sync::mpsc::UnboundedSender;

use super::buffers::BufferPool;
use super::target::Target;

/// Most bytes written in one batch: large enough for long sequential runs, small enough
/// that completions come back steadily.
pub const BATCH_BYTES_MAX: u64 = 16 << 20;
/// Most jobs in one batch.
pub const BATCH_JOBS_MAX: usize = 1024;
/// Bytes written whose writeback may still be going on (and whose pages stay cached)
/// before the writer waits for the oldest: a few batches, enough to keep the disk busy.
pub const WRITEBACK_WINDOW_BYTES: u64 = 32 << 20;

/// One hydrate write the engine asked for.
#[derive(Debug)]
pub enum Job {
    /// Write `data` at `offset`.
    Write {
        /// The engine's handle for it.
        lower: LowerId,
        /// Byte offset on the target.
        offset: u64,
        /// The bytes (a slice of a fetch buffer).
        data: Bytes,
    },
    /// Make `[offset, offset + len)` read as zeros.
    Zero {
        /// The engine's handle for it.
        lower: LowerId,
        /// Byte offset on the target.
        offset: u64,
        /// Byte length.
        len: u64,
    },
}

impl Job {
    fn offset(&self) -> u64 {
        match self {
            Job::Write { offset, .. } | Job::Zero { offset, .. } => *offset,
        }
    }

    fn len(&self) -> u64 {
        match self {
            Job::Write { data, .. } => data.len() as u64,
            Job::Zero { len, .. } => *len,
        }
    }

    fn lower(&self) -> LowerId {
        match self {
            Job::Write { lower, .. } | Job::Zero { lower, .. } => *lower,
        }
    }
}

/// The writer thread's handle. Dropping it lets the thread finish the jobs queued, then
/// waits for it.
pub struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread writing to `target`; completions go to `done`, written
    /// buffers back to `pool`.
    pub fn start(
        target: Arc<Target>,
        pool: Arc<BufferPool>,
        done: UnboundedSender<(LowerId, Status)>,
    ) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("restore-writer".into())
            .spawn(move || run(&target, &pool, &rx, &done))?;
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a job. If the thread is gone (it never ends on its own while the handle
    /// lives), the job is answered as failed.
    pub fn submit(&self, job: Job, done: &UnboundedSender<(LowerId, Status)>) {
        let lower = job.lower();
        let queued = self.tx.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if !queued {
            let _ = done.send((lower, Status::IO_DEVICE_ERROR));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    target: &Target,
    pool: &BufferPool,
    rx: &mpsc::Receiver<Job>,
    done: &UnboundedSender<(LowerId, Status)>,
) {
    let mut batch: Vec<Job> = Vec::new();
    let mut results: Vec<(LowerId, Status)> = Vec::new();
    let mut window = Window::default();
    while let Ok(first) = rx.recv() {
        let mut bytes = first.len();
        batch.push(first);
        while bytes < BATCH_BYTES_MAX && batch.len() < BATCH_JOBS_MAX {
            match rx.try_recv() {
                Ok(job) => {
                    bytes += job.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let span = write_batch(target, &mut batch, &mut results);
        // Buffers are let go before their completions are sent (see the module comment);
        // the last holder of a whole fetch buffer gives it back for reuse.
        for job in batch.drain(..) {
            if let Job::Write { data, .. } = job {
                pool.give(data);
            }
        }
        for r in results.drain(..) {
            let _ = done.send(r);
        }
        if let Some((offset, len)) = span {
            target.start_writeback(offset, len);
            window.push(offset, len);
            while let Some((offset, len)) = window.pop_over(WRITEBACK_WINDOW_BYTES) {
                target.settle(offset, len);
            }
        }
    }
}

/// The spans written whose writeback may still be going on, oldest first.
#[derive(Debug, Default)]
struct Window {
    spans: VecDeque<(u64, u64)>,
    /// The sum of the spans' lengths.
    bytes: u64,
}

impl Window {
    fn push(&mut self, offset: u64, len: u64) {
        self.spans.push_back((offset, len));
        self.bytes += len;
    }

    /// The oldest span, taken out, while the window holds more than `max_bytes`.
    fn pop_over(&mut self, max_bytes: u64) -> Option<(u64, u64)> {
        if self.bytes <= max_bytes {
            return None;
        }
        let (offset, len) = self.spans.pop_front()?;
        self.bytes -= len;
        debug_assert_eq!(self.spans.is_empty(), self.bytes == 0);
        Some((offset, len))
    }
}

/// Writes the jobs, runs of adjacent writes with one call each; appends each job's
/// completion to `results`. Returns the span the data writes covered (offset, length),
/// if any: what to write out.
fn write_batch(
    target: &Target,
    batch: &mut [Job],
    results: &mut Vec<(LowerId, Status)>,
) -> Option<(u64, u64)> {
    batch.sort_unstable_by_key(Job::offset);
    let (mut span_start, mut span_end) = (u64::MAX, 0u64);
    let mut i = 0;
    while i < batch.len() {
        // The run of writes starting at `i` that follow each other without a gap.
        let mut j = i + 1;
        if matches!(batch[i], Job::Write { .. }) {
            while j < batch.len()
                && matches!(batch[j], Job::Write { .. })
                && batch[j].offset() == batch[j - 1].offset() + batch[j - 1].len()
            {
                j += 1;
            }
        }
        let run = &batch[i..j];
        let result = match run {
            [Job::Zero { offset, len, .. }] => target.zero(*offset, *len),
            _ => {
                let slices: Vec<&[u8]> = run
                    .iter()
                    .filter_map(|job| match job {
                        Job::Write { data, .. } => Some(&data[..]),
                        Job::Zero { .. } => None,
                    })
                    .collect();
                target.write_vectored_at(run[0].offset(), &slices)
            }
        };
        let status = match result {
            Ok(()) => Status::SUCCESS,
            Err(e) => {
                tracing::error!(%e, offset = run[0].offset(), jobs = run.len(), "restore: write failed");
                Status::IO_DEVICE_ERROR
            }
        };
        let end = run[j - i - 1].offset() + run[j - i - 1].len();
        if matches!(run[0], Job::Write { .. }) {
            span_start = span_start.min(run[0].offset());
            span_end = span_end.max(end);
        }
        results.extend(run.iter().map(|job| (job.lower(), status)));
        i = j;
    }
    (span_start < span_end).then(|| (span_start, span_end - span_start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_written_in_order_and_completed_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let mut target = Target::create(&path, 64 * 1024).unwrap();
        target.fit(64 * 1024, false).unwrap();
        target.write_at(0, &[0xEE; 64 * 1024]).unwrap();
        let target = Arc::new(target);
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let pool = Arc::new(BufferPool::new(4096, 8));
        let writer =
            Writer::start(Arc::clone(&target), Arc::clone(&pool), done_tx.clone()).unwrap();
        let piece = |byte: u8| Bytes::from(vec![byte; 4096]);
        // Out of order, adjacent and not, a zero range among them.
        writer.submit(
            Job::Write {
                lower: 3,
                offset: 8192,
                data: piece(3),
            },
            &done_tx,
        );
        writer.submit(
            Job::Write {
                lower: 1,
                offset: 0,
                data: piece(1),
            },
            &done_tx,
        );
        writer.submit(
            Job::Write {
                lower: 2,
                offset: 4096,
                data: piece(2),
            },
            &done_tx,
        );
        writer.submit(
            Job::Zero {
                lower: 4,
                offset: 16384,
                len: 8192,
            },
            &done_tx,
        );
        writer.submit(
            Job::Write {
                lower: 5,
                offset: 40960,
                data: piece(5),
            },
            &done_tx,
        );
        drop(writer);
        drop(done_tx);
        assert_eq!(pool.kept(), 4, "written buffers come back for reuse");
        let mut done = Vec::new();
        while let Ok(d) = done_rx.try_recv() {
            done.push(d);
        }
        done.sort_unstable_by_key(|d| d.0);
        assert_eq!(
            done,
            (1..=5).map(|l| (l, Status::SUCCESS)).collect::<Vec<_>>(),
            "each job completed once"
        );
        let bytes = std::fs::read(&path).unwrap();
        for (at, byte) in [
            (0, 1),
            (4096, 2),
            (8192, 3),
            (16384, 0),
            (20480, 0),
            (40960, 5),
        ] {
            assert!(bytes[at..at + 4096].iter().all(|&b| b == byte), "at {at}");
        }
        assert!(bytes[12288..16384].iter().all(|&b| b == 0xEE), "untouched");
        assert!(bytes[24576..40960].iter().all(|&b| b == 0xEE), "untouched");
    }

    #[test]
    fn writes_past_the_writeback_window_all_land() {
        // More than the window, in pieces that come out of order: the oldest batches
        // are waited for and dropped from the cache while later ones are written.
        const PIECE: usize = 1 << 20;
        let pieces = (WRITEBACK_WINDOW_BYTES as usize / PIECE) * 2 + 4;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let size = (pieces * PIECE) as u64;
        let mut target = Target::create(&path, size).unwrap();
        target.fit(size, false).unwrap();
        let target = Arc::new(target);
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let pool = Arc::new(BufferPool::new(PIECE, 4));
        let writer =
            Writer::start(Arc::clone(&target), Arc::clone(&pool), done_tx.clone()).unwrap();
        // Each pair swapped (`pieces` is even): every piece once, out of order.
        let order = (0..pieces).map(|i| i ^ 1);
        for i in order {
            writer.submit(
                Job::Write {
                    lower: i as u64,
                    offset: (i * PIECE) as u64,
                    data: Bytes::from(vec![i as u8; PIECE]),
                },
                &done_tx,
            );
        }
        drop(writer);
        drop(done_tx);
        let mut done = 0;
        while let Ok((_, status)) = done_rx.try_recv() {
            assert_eq!(status, Status::SUCCESS);
            done += 1;
        }
        assert_eq!(done, pieces, "each job completed once");
        let bytes = std::fs::read(&path).unwrap();
        for (i, piece) in bytes.chunks(PIECE).enumerate() {
            assert!(piece.iter().all(|&b| b == i as u8), "piece {i}");
        }
    }

    #[test]
    fn the_window_gives_up_its_oldest_spans_only_past_its_bound() {
        let mut w = Window::default();
        w.push(0, 10);
        w.push(100, 10);
        assert_eq!(w.pop_over(20), None, "at the bound: nothing to wait for");
        w.push(50, 5);
        assert_eq!(w.pop_over(20), Some((0, 10)), "the oldest first");
        assert_eq!(w.pop_over(20), None);
        assert_eq!(w.pop_over(0), Some((100, 10)));
        assert_eq!(w.pop_over(0), Some((50, 5)));
        assert_eq!(w.pop_over(0), None, "empty");
    }

    #[test]
    fn a_batch_is_written_in_offset_order_with_a_result_per_job() {
        let dir = tempfile::tempdir().unwrap();
        let mut target = Target::create(&dir.path().join("t"), 3 * 4096).unwrap();
        target.fit(3 * 4096, false).unwrap();
        let mut batch: Vec<Job> = (0..3u64)
            .rev()
            .map(|i| Job::Write {
                lower: i,
                offset: i * 4096,
                data: Bytes::from(vec![i as u8; 4096]),
            })
            .collect();
        let mut results = Vec::new();
        let span = write_batch(&target, &mut batch, &mut results);
        assert_eq!(span, Some((0, 3 * 4096)), "the span the writes covered");
        assert_eq!(
            batch.iter().map(Job::offset).collect::<Vec<_>>(),
            [0, 4096, 8192]
        );
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(|r| r.1 == Status::SUCCESS));
    }
}
