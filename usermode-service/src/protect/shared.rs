//! The protected volume as every task sees it: the target, the capture core behind one
//! lock, and the signals between them. This is the Linux shell of write capture: the
//! same calls the Windows filter makes from its dispatch and completion routines
//! (`begin_write` before a write goes down, `write_completed` from its completion,
//! `begin_flush`/`flush_completed` around a flush, `flush_completed` with a label for a
//! mark, `ack` from the journal side).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rehydrate_driver::abi::Label;
use rehydrate_driver::capture::{
    Admit, Capture, CaptureError, CaptureMode, Point, WriteData, WriteDone, WriteTicket,
};
use rehydrate_nbd::ExportError;
use tokio::sync::{watch, Notify};

use crate::restore::live::io::{perform_soon, Op};
use crate::restore::Target;

/// A bounded wait used where a notification could in principle be missed: nothing
/// depends on it for correctness, it only bounds how long a missed wake-up costs.
pub const RECHECK: Duration = Duration::from_millis(100);
/// How long a mark keeps retrying while a gap is open or the buffer is full.
pub const MARK_PATIENCE: Duration = Duration::from_secs(30);

/// Wakes the journal pump; wake-ups coalesce (one pending is enough).
#[derive(Clone, Debug)]
pub struct PumpWaker(std::sync::mpsc::SyncSender<()>);

impl PumpWaker {
    /// A waker and the pump's end of it.
    pub fn new() -> (PumpWaker, std::sync::mpsc::Receiver<()>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        (PumpWaker(tx), rx)
    }

    /// Wakes the pump (a no-op when a wake-up is already pending).
    pub fn wake(&self) {
        let _ = self.0.try_send(());
    }
}

/// What the export, the pump, the read-back task and the control socket share.
pub struct Protected {
    /// The protected volume.
    pub target: Arc<Target>,
    /// Its size (whole sectors).
    pub size_bytes: u64,
    /// The capture core.
    pub capture: Mutex<Capture>,
    /// Sync or async.
    pub mode: CaptureMode,
    /// Room in the buffer was freed or a read-back ended: held writes try again.
    pub room: Notify,
    /// The highest sequence the journal made durable.
    pub durable: watch::Sender<u64>,
    /// Wakes the journal pump.
    pub pump: PumpWaker,
    /// Wakes the read-back task (a gap may have opened).
    pub resync: Notify,
    /// A stop was asked for: new requests are refused.
    pub stopping: AtomicBool,
    /// Requests being served now.
    pub in_flight: AtomicU64,
    /// Why journaling stopped, if it did: no write is acknowledged after that.
    pub failure: Mutex<Option<String>>,
    /// Labels of every mark in the journal (each names one point).
    pub labels: Mutex<HashSet<String>>,
    /// `NAME@BASE`, to name points in answers.
    pub journal_name: String,
}

/// Counts a request as in flight for as long as it lives.
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn io_error(text: impl Into<String>) -> ExportError {
    ExportError::Io(std::io::Error::other(text.into()))
}

fn capture_error(e: CaptureError) -> ExportError {
    match e {
        CaptureError::Range(_) => ExportError::OutOfRange,
        other => io_error(format!("write capture: {other}")),
    }
}

/// A lock that a panicking holder poisoned still guards consistent data: the capture
/// checks its own invariants on every call.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Protected {
    /// Starts serving one request, or refuses it while stopping or after journaling
    /// failed.
    pub fn enter(&self) -> Result<InFlight<'_>, ExportError> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(&self.in_flight);
        if self.stopping.load(Ordering::Acquire) {
            return Err(ExportError::ShuttingDown);
        }
        if let Some(why) = lock(&self.failure).clone() {
            return Err(io_error(format!("journaling failed: {why}")));
        }
        Ok(guard)
    }

    /// Records that journaling failed; every waiter wakes and sees it.
    pub fn fail(&self, why: String) {
        tracing::error!(%why, "protect: journaling failed; writes are refused from now on");
        lock(&self.failure).get_or_insert(why);
        self.durable.send_modify(|_| {});
        self.room.notify_waiters();
    }

    fn failed(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// Waits until the journal made sequence `seq` durable.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), ExportError> {
        let mut rx = self.durable.subscribe();
        let done = rx
            .wait_for(|&d| d >= seq || lock(&self.failure).is_some())
            .await
            .map(|d| *d >= seq);
        match done {
            Ok(true) => Ok(()),
            _ => Err(io_error(format!(
                "journaling failed: {}",
                self.failed()
                    .unwrap_or_else(|| "the journal stopped".into())
            ))),
        }
    }

    /// Waits until the capture lets a write go down (sync mode holds writes while the
    /// buffer is full; any mode holds a write over a range being read back).
    async fn admit(&self, offset: u64, len: u64, zero: bool) -> Result<WriteTicket, ExportError> {
        // Bounded: each turn waits for room, a read-back, or the recheck interval, and
        // ends the wait on a stop or a journal failure.
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let admit = lock(&self.capture)
                .begin_write(offset, len, zero)
                .map_err(capture_error)?;
            if let Admit::Go(ticket) = admit {
                return Ok(ticket);
            }
            self.pump.wake();
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(RECHECK) => {}
            }
            if let Some(why) = self.failed() {
                return Err(io_error(format!("journaling failed: {why}")));
            }
        }
    }

    /// A write of `data` (or zeros over `len` bytes) at `offset`, captured: down to the
    /// target, numbered at completion, answered at once (async) or once durable (sync).
    pub async fn write(
        &self,
        offset: u64,
        len: u64,
        data: Option<Bytes>,
        fua: bool,
    ) -> Result<(), ExportError> {
        let ticket = self.admit(offset, len, data.is_none()).await?;
        let written = self.write_down(offset, len, data.as_ref(), fua).await;
        let (done, in_gap) = {
            let what = match &data {
                Some(d) => WriteData::Bytes(d),
                None => WriteData::Zeroes,
            };
            let mut capture = lock(&self.capture);
            let done = capture.write_completed(ticket, what, written.is_ok(), now_unix_ns());
            (done, capture.in_gap())
        };
        self.pump.wake();
        // The read-back has work only in a gap (it also looks every RECHECK): waking it
        // for every write costs a task switch per write.
        if in_gap {
            self.resync.notify_one();
        }
        written.map_err(ExportError::Io)?;
        if let WriteDone::WhenDurable(seq) = done.map_err(capture_error)? {
            self.wait_durable(seq).await?;
        }
        Ok(())
    }

    /// The write itself, on the target, as the live export performs it: in the page
    /// cache at once when that needs no waiting, else on a thread that may block. A hop
    /// to a thread for every write cost most of a random 4 KiB write's time.
    async fn write_down(
        &self,
        offset: u64,
        len: u64,
        data: Option<&Bytes>,
        fua: bool,
    ) -> std::io::Result<()> {
        let op = match data {
            Some(d) => Op::Write {
                offset,
                data: d.clone(),
                fua,
            },
            None => Op::Zeroes { offset, len, fua },
        };
        perform_soon(&self.target, op).await.map(drop)
    }

    /// Flushes the target; a completed flush makes a point (a mark with `label`): the
    /// capture's answer, or the flush's own failure.
    async fn flush_raw(
        &self,
        label: Option<Label>,
    ) -> Result<Result<Option<Point>, CaptureError>, ExportError> {
        let ticket = lock(&self.capture).begin_flush(now_unix_ns());
        let target = Arc::clone(&self.target);
        let flushed = tokio::task::spawn_blocking(move || target.flush())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let point =
            lock(&self.capture).flush_completed(ticket, flushed.is_ok(), label, now_unix_ns());
        self.pump.wake();
        flushed.map_err(ExportError::Io)?;
        Ok(point)
    }

    /// A client's flush: the target flushed, a point made; sync mode answers once the
    /// point is durable.
    pub async fn flush(&self) -> Result<Option<Point>, ExportError> {
        let point = self.flush_raw(None).await?.map_err(capture_error)?;
        if let (CaptureMode::Sync, Some(p)) = (self.mode, point) {
            self.wait_durable(p.seq).await?;
        }
        Ok(point)
    }

    /// Records a mark named `label`: a flush, then the point, durable before it returns.
    /// Retries for a while when a gap is open or the buffer is full.
    pub async fn mark(&self, label: &str) -> Result<Point, String> {
        let label = Label::new(label).map_err(|e| e.to_string())?;
        if lock(&self.labels).contains(label.as_str()) {
            return Err(format!(
                "{} already has a mark named {label}",
                self.journal_name
            ));
        }
        let _in = self.enter().map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + MARK_PATIENCE;
        // Bounded by the deadline.
        let point = loop {
            match self.flush_raw(Some(label)).await {
                Ok(Ok(Some(p))) => break p,
                Ok(Ok(None)) => return Err("the flush for the mark failed".into()),
                Ok(Err(e @ (CaptureError::MarkInGap | CaptureError::MarkNoRoom))) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(e.to_string());
                    }
                    self.resync.notify_one();
                    self.pump.wake();
                    tokio::time::sleep(RECHECK / 2).await;
                }
                Ok(Err(e)) => return Err(e.to_string()),
                Err(e) => return Err(e.to_string()),
            }
        };
        self.wait_durable(point.seq)
            .await
            .map_err(|e| e.to_string())?;
        lock(&self.labels).insert(label.as_str().to_owned());
        Ok(point)
    }

    /// Reads `len` bytes at `offset` from the target (cached data at once, as the live
    /// export does).
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes, ExportError> {
        perform_soon(&self.target, Op::Read { offset, len })
            .await
            .map_err(ExportError::Io)
    }
}
