//! The protected volume served read-write over NBD: reads go straight to the target,
//! writes, write-zeroes, trims and flushes go through write capture ([`Protected`]).
//!
//! Requests must be whole 512-byte sectors (advertised as the minimum block size, so
//! qemu and libnbd clients align on their side): the capture journals sectors, and a
//! partial sector would need a read-modify-write that races other writes to it. Multi-
//! conn is advertised: one target and one capture sit behind every connection, so a
//! flush on one makes every connection's completed writes durable and is one point.

use std::sync::Arc;

use bytes::Bytes;
use rehydrate_driver::geometry::SECTOR_SIZE_BYTES;
use rehydrate_nbd::{BoxFuture, Catalog, Export, ExportError, Extent};

use super::shared::Protected;

/// The protected volume as an NBD export.
pub struct ProtectExport {
    shared: Arc<Protected>,
    description: String,
}

impl ProtectExport {
    /// Serves `shared`'s volume, telling clients `description`.
    pub fn new(shared: Arc<Protected>, description: String) -> ProtectExport {
        ProtectExport {
            shared,
            description,
        }
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        rehydrate_nbd::range_end(offset, len, self.shared.size_bytes)?;
        if offset % SECTOR_SIZE_BYTES != 0 || len % SECTOR_SIZE_BYTES != 0 {
            return Err(ExportError::Misaligned(SECTOR_SIZE_BYTES as u32));
        }
        Ok(())
    }
}

impl Export for ProtectExport {
    fn size_bytes(&self) -> u64 {
        self.shared.size_bytes
    }

    fn read_only(&self) -> bool {
        false
    }

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
        Box::pin(async move {
            self.check(offset, u64::from(length))?;
            let _in = self.shared.enter()?;
            self.shared.read(offset, u64::from(length)).await
        })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, Result<(), ExportError>> {
        Box::pin(async move {
            let len = data.len() as u64;
            self.check(offset, len)?;
            if len == 0 {
                return Ok(());
            }
            let _in = self.shared.enter()?;
            self.shared.write(offset, len, Some(data), fua).await
        })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        length: u32,
        fua: bool,
    ) -> BoxFuture<'_, Result<(), ExportError>> {
        Box::pin(async move {
            self.check(offset, u64::from(length))?;
            if length == 0 {
                return Ok(());
            }
            let _in = self.shared.enter()?;
            self.shared
                .write(offset, u64::from(length), None, fua)
                .await
        })
    }

    /// A trim is journaled as zeros: the target reads zeros there afterwards.
    fn trim(&self, offset: u64, length: u32) -> BoxFuture<'_, Result<(), ExportError>> {
        self.write_zeroes(offset, length, false)
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), ExportError>> {
        Box::pin(async move {
            let _in = self.shared.enter()?;
            self.shared.flush().await.map(drop)
        })
    }

    fn block_status(
        &self,
        offset: u64,
        length: u32,
    ) -> BoxFuture<'_, Result<Vec<Extent>, ExportError>> {
        Box::pin(async move {
            let end = rehydrate_nbd::range_end(offset, length.into(), self.shared.size_bytes)?;
            let target = Arc::clone(&self.shared.target);
            tokio::task::spawn_blocking(move || target.allocation(offset, end))
                .await
                .map_err(|e| ExportError::Io(std::io::Error::other(e)))?
                .or_else(|_| Ok(vec![Extent::data(end - offset)]))
        })
    }
}

/// The one export, by name.
pub struct ProtectCatalog {
    name: String,
    export: Arc<ProtectExport>,
}

impl ProtectCatalog {
    /// `export` under `name`.
    pub fn new(name: String, export: Arc<ProtectExport>) -> ProtectCatalog {
        ProtectCatalog { name, export }
    }
}

impl Catalog for ProtectCatalog {
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Option<Arc<dyn Export>>, ExportError>> {
        let found = (name == self.name).then(|| Arc::clone(&self.export) as Arc<dyn Export>);
        Box::pin(async move { Ok(found) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, ExportError>> {
        let listed = vec![(self.name.clone(), self.export.description())];
        Box::pin(async move { Ok(listed) })
    }
}
