//! The live export (`rehydrate restore ... --export ADDR`): the target served read-write
//! over NBD while it restores, through the same engine and rules as the Windows filter.
//!
//! ```text
//! NBD clients ──► nbd server (rehydrate-nbd) ──► LiveExport ──requests──► Shell task
//!                                                    │                     engine: Read/Write/
//!                                                    │                     Flush/Discard events
//!                                                    │ ◄──replies────────── Front: Forward/Hold/
//!                                                    │                     Complete performed
//!                                                    └─ pass-through (every region restored):
//!                                                       straight to the target, one branch
//! ```
//!
//! - [`LiveExport`] implements the NBD crate's `Export`: it turns each request into a
//!   [`Request`] for the shell, and once the engine is a pass-through it does the I/O
//!   itself ([`io::perform`]) without the engine.
//! - [`front::Front`] is the shell's side: the table of requests the engine knows by id,
//!   performing `Forward` (I/O on a blocking thread, answered by `LowerCompleted`),
//!   noting `Hold`, and answering `Complete`.
//! - [`extents`] answers block status for the volume as the client sees it.
//!
//! The engine works in whole 512-byte sectors. Clients may send any offset and length
//! (`nbdfuse` passes on what FUSE gets, and `fuse2fs` writes single superblock fields):
//! an unaligned read reads the sectors around it; an unaligned write or write-zeroes is
//! cut into its aligned middle and at most two partial sectors, each written by
//! read-modify-write under one lock, so two unaligned writes to different bytes of one
//! sector never lose each other. An unaligned trim trims only its whole sectors.

pub mod extents;
pub mod front;
pub mod io;
pub(crate) mod serve;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rehydrate_driver::changed::Tracker;
use rehydrate_driver::geometry::SECTOR_SIZE_BYTES;
use rehydrate_driver::RegionMap;
use rehydrate_nbd::{BoxFuture, Catalog, Export, ExportError, Extent};
use tokio::sync::{mpsc, oneshot};

use super::target::Target;
use crate::source::Source;

/// One request from a client, as the shell receives it.
#[derive(Debug)]
pub struct Request {
    /// What to do.
    pub op: io::Op,
    /// Where the answer goes: read data (empty for the rest), or the error.
    pub reply: oneshot::Sender<Result<Bytes, ExportError>>,
}

/// What the export and the shell share.
pub struct Shared {
    /// Every region is restored and durable, nothing held: I/O bypasses the engine.
    pub passthrough: AtomicBool,
    /// A stop was asked for: new requests are refused with `ESHUTDOWN`.
    pub stopping: AtomicBool,
    /// Connections open now.
    pub clients: AtomicU64,
    /// Requests being taken, and pass-through ones doing their I/O (a stop waits for
    /// them).
    pub requests_in_flight: AtomicU64,
    /// The export's size: the source's exact size.
    pub size_bytes: u64,
    /// The target, for pass-through I/O and block status.
    pub target: Arc<Target>,
    /// The region map, for block status.
    pub map: Arc<RegionMap>,
    /// Marks the map of changes since the backup as writes are taken.
    pub changes: Option<Tracker>,
    /// The overlay mode's O (regions whose data is in the overlay, not the target)
    /// until the cutover: block status reports them as data.
    pub overlay: Option<Arc<RegionMap>>,
}

/// Counts a request while it is being taken and, in pass-through, while it does its
/// I/O: a stop waits until none is.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicU64) -> InFlight<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The live volume as an NBD export.
pub struct LiveExport<S> {
    shared: Arc<Shared>,
    source: Arc<S>,
    requests: mpsc::UnboundedSender<Request>,
    description: String,
    /// Serialises the read-modify-write of partial sectors.
    rmw: tokio::sync::Mutex<()>,
}

impl<S: Source> LiveExport<S> {
    /// An export sending requests to the shell on `requests`. The channel is unbounded
    /// because the NBD server already bounds what can be in flight (connections times
    /// requests per connection).
    pub fn new(
        shared: Arc<Shared>,
        source: Arc<S>,
        requests: mpsc::UnboundedSender<Request>,
        description: String,
    ) -> LiveExport<S> {
        LiveExport {
            shared,
            source,
            requests,
            description,
            rmw: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether `offset` is a sector boundary for the engine (the export's end counts:
    /// the engine pads an odd last sector).
    fn boundary(&self, offset: u64) -> bool {
        offset % SECTOR_SIZE_BYTES == 0 || offset == self.shared.size_bytes
    }

    /// The sector holding byte `offset`, clipped at the export's end.
    fn sector_of(&self, offset: u64) -> (u64, u64) {
        let start = offset / SECTOR_SIZE_BYTES * SECTOR_SIZE_BYTES;
        (start, SECTOR_SIZE_BYTES.min(self.shared.size_bytes - start))
    }

    /// Reads any range: the whole sectors around it, sliced.
    async fn read_any(&self, offset: u64, len: u64) -> Result<Bytes, ExportError> {
        self.check(offset, len)?;
        if len == 0 || (self.boundary(offset) && self.boundary(offset + len)) {
            return self.submit(io::Op::Read { offset, len }).await;
        }
        let start = self.sector_of(offset).0;
        let (last, last_len) = self.sector_of(offset + len - 1);
        let data = self
            .submit(io::Op::Read {
                offset: start,
                len: last + last_len - start,
            })
            .await?;
        let at = (offset - start) as usize;
        Ok(data.slice(at..at + len as usize))
    }

    /// Writes `data` (or zeros) over any range: the aligned middle as it is, a partial
    /// first or last sector by read-modify-write.
    async fn write_any(
        &self,
        offset: u64,
        len: u64,
        data: Option<Bytes>,
        fua: bool,
    ) -> Result<(), ExportError> {
        self.check(offset, len)?;
        let end = offset + len;
        let bytes = |from: u64, to: u64| match &data {
            Some(d) => d.slice((from - offset) as usize..(to - offset) as usize),
            None => Bytes::from(vec![0u8; (to - from) as usize]),
        };
        let whole = |from: u64, to: u64| match &data {
            Some(_) => io::Op::Write {
                offset: from,
                data: bytes(from, to),
                fua,
            },
            None => io::Op::Zeroes {
                offset: from,
                len: to - from,
                fua,
            },
        };
        if len == 0 || (self.boundary(offset) && self.boundary(end)) {
            return self.submit(whole(offset, end)).await.map(drop);
        }
        // The aligned middle, if any, and the partial sectors at either end.
        let middle_start = offset.div_ceil(SECTOR_SIZE_BYTES) * SECTOR_SIZE_BYTES;
        let tail_sector = end / SECTOR_SIZE_BYTES * SECTOR_SIZE_BYTES;
        let middle_end = if self.boundary(end) { end } else { tail_sector };
        let mut partial = Vec::new();
        if !self.boundary(offset) {
            partial.push((offset, end.min(middle_start)));
        }
        if !self.boundary(end) && tail_sector >= middle_start {
            partial.push((tail_sector, end));
        }
        if middle_start < middle_end {
            self.submit(whole(middle_start, middle_end)).await?;
        }
        let _serial = self.rmw.lock().await;
        for (from, to) in partial {
            let (sector, sector_len) = self.sector_of(from);
            let old = self
                .submit(io::Op::Read {
                    offset: sector,
                    len: sector_len,
                })
                .await?;
            let mut new = old.to_vec();
            let at = (from - sector) as usize;
            new[at..at + (to - from) as usize].copy_from_slice(&bytes(from, to));
            self.submit(io::Op::Write {
                offset: sector,
                data: Bytes::from(new),
                fua,
            })
            .await?;
        }
        Ok(())
    }

    /// Checks the range lies inside the export.
    fn check(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        rehydrate_nbd::range_end(offset, len, self.shared.size_bytes).map(drop)
    }

    /// Runs a sector-aligned `op`: straight on the target when the engine is a
    /// pass-through, else through the shell and the engine.
    fn submit(&self, op: io::Op) -> BoxFuture<'_, Result<Bytes, ExportError>> {
        Box::pin(async move {
            if let Some((offset, len)) = op.range() {
                self.check(offset, len)?;
                debug_assert!(self.boundary(offset) && self.boundary(offset + len));
            }
            // Counted before the stop is checked, so a stop that finds none in flight
            // finds none later either (and none taken that it did not wait for).
            let _counted = InFlight::enter(&self.shared.requests_in_flight);
            if self.shared.stopping.load(Ordering::Acquire) {
                return Err(ExportError::ShuttingDown);
            }
            // A write counts as a change from the moment it is taken.
            if let (Some(tracker), Some((offset, len))) = (&self.shared.changes, op.written()) {
                tracker.on_write(offset, len);
            }
            // The one branch a restored volume costs.
            if self.shared.passthrough.load(Ordering::Acquire) {
                return io::perform_soon(&self.shared.target, op)
                    .await
                    .map_err(ExportError::Io);
            }
            let (reply, answer) = oneshot::channel();
            self.requests
                .send(Request { op, reply })
                .map_err(|_| ExportError::ShuttingDown)?;
            answer.await.map_err(|_| ExportError::ShuttingDown)?
        })
    }
}

impl<S: Source> Export for LiveExport<S> {
    fn size_bytes(&self) -> u64 {
        self.shared.size_bytes
    }

    fn read_only(&self) -> bool {
        false
    }

    /// One engine and one target behind every connection: a flush on any connection
    /// flushes the target and commits the metadata for every completed write.
    fn can_multi_conn(&self) -> bool {
        true
    }

    fn description(&self) -> String {
        self.description.clone()
    }

    fn read(&self, offset: u64, length: u32) -> BoxFuture<'_, Result<Bytes, ExportError>> {
        Box::pin(self.read_any(offset, u64::from(length)))
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, Result<(), ExportError>> {
        Box::pin(async move {
            self.write_any(offset, data.len() as u64, Some(data), fua)
                .await
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), ExportError>> {
        let done = self.submit(io::Op::Flush);
        Box::pin(async move { done.await.map(drop) })
    }

    fn trim(&self, offset: u64, length: u32) -> BoxFuture<'_, Result<(), ExportError>> {
        Box::pin(async move {
            let end = rehydrate_nbd::range_end(offset, length.into(), self.shared.size_bytes)?;
            // A trim is a hint: only its whole sectors are trimmed.
            let start = offset.div_ceil(SECTOR_SIZE_BYTES) * SECTOR_SIZE_BYTES;
            let stop = if end == self.shared.size_bytes {
                end
            } else {
                end / SECTOR_SIZE_BYTES * SECTOR_SIZE_BYTES
            };
            if start >= stop {
                return Ok(());
            }
            self.submit(io::Op::Trim {
                offset: start,
                len: stop - start,
            })
            .await
            .map(drop)
        })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        length: u32,
        fua: bool,
    ) -> BoxFuture<'_, Result<(), ExportError>> {
        Box::pin(async move { self.write_any(offset, u64::from(length), None, fua).await })
    }

    fn block_status(
        &self,
        offset: u64,
        length: u32,
    ) -> BoxFuture<'_, Result<Vec<Extent>, ExportError>> {
        Box::pin(extents::block_status(
            &self.shared,
            self.source.as_ref(),
            offset,
            u64::from(length),
        ))
    }
}

/// One open connection's view of the export: counts the clients for `status`.
struct Connection<S> {
    export: Arc<LiveExport<S>>,
}

impl<S> Drop for Connection<S> {
    fn drop(&mut self) {
        self.export.shared.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S: Source> Export for Connection<S> {
    fn size_bytes(&self) -> u64 {
        self.export.size_bytes()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn can_multi_conn(&self) -> bool {
        self.export.can_multi_conn()
    }
    fn description(&self) -> String {
        self.export.description()
    }
    fn min_block_bytes(&self) -> u32 {
        self.export.min_block_bytes()
    }
    fn read(&self, offset: u64, length: u32) -> BoxFuture<'_, Result<Bytes, ExportError>> {
        self.export.read(offset, length)
    }
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, Result<(), ExportError>> {
        self.export.write(offset, data, fua)
    }
    fn flush(&self) -> BoxFuture<'_, Result<(), ExportError>> {
        self.export.flush()
    }
    fn trim(&self, offset: u64, length: u32) -> BoxFuture<'_, Result<(), ExportError>> {
        self.export.trim(offset, length)
    }
    fn write_zeroes(
        &self,
        offset: u64,
        length: u32,
        fua: bool,
    ) -> BoxFuture<'_, Result<(), ExportError>> {
        self.export.write_zeroes(offset, length, fua)
    }
    fn block_status(
        &self,
        offset: u64,
        length: u32,
    ) -> BoxFuture<'_, Result<Vec<Extent>, ExportError>> {
        self.export.block_status(offset, length)
    }
}

/// The one export `name`, for the NBD server.
pub struct LiveCatalog<S> {
    name: String,
    export: Arc<LiveExport<S>>,
}

impl<S: Source> LiveCatalog<S> {
    /// A catalog of `export` under `name`.
    pub fn new(name: String, export: Arc<LiveExport<S>>) -> LiveCatalog<S> {
        LiveCatalog { name, export }
    }
}

impl<S: Source> Catalog for LiveCatalog<S> {
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Option<Arc<dyn Export>>, ExportError>> {
        let found = (name == self.name).then(|| {
            // Handshake lookups open it too; they drop it at once, so the count is of
            // connections in transmission (and the odd handshake in progress).
            self.export.shared.clients.fetch_add(1, Ordering::AcqRel);
            Arc::new(Connection {
                export: Arc::clone(&self.export),
            }) as Arc<dyn Export>
        });
        Box::pin(async move { Ok(found) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, ExportError>> {
        let listed = vec![(self.name.clone(), self.export.description())];
        Box::pin(async move { Ok(listed) })
    }
}
