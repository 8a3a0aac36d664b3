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
//! Requests are 512-byte aligned (advertised as the minimum block size, so qemu and
//! libnbd align for us); only the last request of an export whose size is not a whole
//! number of sectors may end unaligned, at the end.

pub mod extents;
pub mod front;
pub mod io;
pub(crate) mod serve;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
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
    /// The export's size: the source's exact size.
    pub size_bytes: u64,
    /// The target, for pass-through I/O and block status.
    pub target: Arc<Target>,
    /// The region map, for block status.
    pub map: Arc<RegionMap>,
}

/// The live volume as an NBD export.
pub struct LiveExport<S> {
    shared: Arc<Shared>,
    source: Arc<S>,
    requests: mpsc::UnboundedSender<Request>,
    description: String,
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
        }
    }

    /// Checks alignment: offsets and lengths in whole sectors, but a request may end
    /// unaligned exactly at the end of an export of odd size.
    fn check(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        let end = offset.checked_add(len).ok_or(ExportError::OutOfRange)?;
        if end > self.shared.size_bytes {
            return Err(ExportError::OutOfRange);
        }
        let aligned = offset % SECTOR_SIZE_BYTES == 0
            && (len % SECTOR_SIZE_BYTES == 0 || end == self.shared.size_bytes);
        if !aligned {
            return Err(ExportError::Misaligned(SECTOR_SIZE_BYTES as u32));
        }
        Ok(())
    }

    /// Runs `op`: straight on the target when the engine is a pass-through, else
    /// through the shell and the engine.
    fn submit(&self, op: io::Op) -> BoxFuture<'_, Result<Bytes, ExportError>> {
        Box::pin(async move {
            if let Some((offset, len)) = op.range() {
                self.check(offset, len)?;
            }
            if self.shared.stopping.load(Ordering::Acquire) {
                return Err(ExportError::ShuttingDown);
            }
            // The one branch a restored volume costs.
            if self.shared.passthrough.load(Ordering::Acquire) {
                let target = Arc::clone(&self.shared.target);
                return tokio::task::spawn_blocking(move || io::perform(&target, &op))
                    .await
                    .map_err(|e| ExportError::Io(std::io::Error::other(e)))?
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

    fn min_block_bytes(&self) -> u32 {
        SECTOR_SIZE_BYTES as u32
    }

    fn read(&self, offset: u64, length: u32) -> BoxFuture<'_, Result<Bytes, ExportError>> {
        self.submit(io::Op::Read {
            offset,
            len: u64::from(length),
        })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, Result<(), ExportError>> {
        let done = self.submit(io::Op::Write { offset, data, fua });
        Box::pin(async move { done.await.map(drop) })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), ExportError>> {
        let done = self.submit(io::Op::Flush);
        Box::pin(async move { done.await.map(drop) })
    }

    fn trim(&self, offset: u64, length: u32) -> BoxFuture<'_, Result<(), ExportError>> {
        let done = self.submit(io::Op::Trim {
            offset,
            len: u64::from(length),
        });
        Box::pin(async move { done.await.map(drop) })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        length: u32,
        fua: bool,
    ) -> BoxFuture<'_, Result<(), ExportError>> {
        let done = self.submit(io::Op::Zeroes {
            offset,
            len: u64::from(length),
            fua,
        });
        Box::pin(async move { done.await.map(drop) })
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
