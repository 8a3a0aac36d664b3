//! What the server serves: the [`Export`] storage trait, the [`Catalog`] that maps names to
//! exports, and [`MemExport`], an in-memory export for tests.
//!
//! The trait methods return boxed futures so exports can live behind `Arc<dyn Export>`
//! (a catalog hands out many kinds of export by name).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::consts;

/// A boxed, sendable future, as returned by [`Export`] and [`Catalog`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an export could not do what was asked; each maps to one NBD error value.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The backing storage failed (`NBD_EIO`).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The data failed verification; never served as data (`NBD_EIO`).
    #[error("data failed verification: {0}")]
    Corrupt(String),
    /// The range lies outside the export (`NBD_EINVAL`).
    #[error("range outside the export")]
    OutOfRange,
    /// The export is read-only (`NBD_EPERM`).
    #[error("export is read-only")]
    ReadOnly,
    /// No room to write (`NBD_ENOSPC`).
    #[error("no space left")]
    NoSpace,
    /// The operation is not implemented by this export (`NBD_ENOTSUP`).
    #[error("operation not supported")]
    Unsupported,
    /// The request is not aligned to the export's minimum block size (`NBD_EINVAL`).
    #[error("request not aligned to the {0}-byte minimum block size")]
    Misaligned(u32),
    /// The export is stopping and takes no new requests (`NBD_ESHUTDOWN`).
    #[error("export is shutting down")]
    ShuttingDown,
}

impl ExportError {
    /// The NBD error value sent to the client.
    pub fn errno(&self) -> u32 {
        match self {
            ExportError::Io(_) | ExportError::Corrupt(_) => consts::EIO,
            ExportError::OutOfRange | ExportError::Misaligned(_) => consts::EINVAL,
            ExportError::ShuttingDown => consts::ESHUTDOWN,
            ExportError::ReadOnly => consts::EPERM,
            ExportError::NoSpace => consts::ENOSPC,
            ExportError::Unsupported => consts::ENOTSUP,
        }
    }
}

/// The end of a request's range `offset..offset + length` in an export of `size_bytes`:
/// [`ExportError::OutOfRange`] if it overflows or passes the end. Every export checks a
/// request's range this way before it touches anything.
pub fn range_end(offset: u64, length: u64, size_bytes: u64) -> Result<u64, ExportError> {
    offset
        .checked_add(length)
        .filter(|&end| end <= size_bytes)
        .ok_or(ExportError::OutOfRange)
}

/// One run of the export with one allocation status (`base:allocation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Extent {
    /// Length of the run in bytes (non-zero).
    pub length_bytes: u64,
    /// Not allocated (`NBD_STATE_HOLE`).
    pub hole: bool,
    /// Reads as zeroes (`NBD_STATE_ZERO`).
    pub zero: bool,
}

impl Extent {
    /// An allocated run whose contents are unknown: the always-safe answer.
    pub fn data(length_bytes: u64) -> Self {
        Self {
            length_bytes,
            hole: false,
            zero: false,
        }
    }

    /// An unallocated run that reads as zeroes.
    pub fn hole(length_bytes: u64) -> Self {
        Self {
            length_bytes,
            hole: true,
            zero: true,
        }
    }

    /// The `base:allocation` status flags.
    pub fn status(&self) -> u32 {
        (if self.hole { consts::STATE_HOLE } else { 0 })
            | (if self.zero { consts::STATE_ZERO } else { 0 })
    }

    /// The extent for a `base:allocation` status.
    pub fn from_status(length_bytes: u64, status: u32) -> Self {
        Self {
            length_bytes,
            hole: status & consts::STATE_HOLE != 0,
            zero: status & consts::STATE_ZERO != 0,
        }
    }
}

/// Storage for one export. The server checks every range against [`Export::size_bytes`]
/// and [`Export::read_only`] before calling in, so implementations see only valid,
/// bounded requests (`length` at most [`consts::MAX_PAYLOAD_BYTES`] for data).
pub trait Export: Send + Sync + 'static {
    /// Size in bytes; fixed for the life of a connection.
    fn size_bytes(&self) -> u64;

    /// Whether writes, trims and write-zeroes are refused (`NBD_EPERM`).
    fn read_only(&self) -> bool;

    /// Whether flushes are visible across connections; read-only exports always are.
    fn can_multi_conn(&self) -> bool {
        self.read_only()
    }

    /// Text shown by `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`.
    fn description(&self) -> String {
        String::new()
    }

    /// Alignment every request's offset and length must have (`NBD_INFO_BLOCK_SIZE`
    /// minimum); 1 accepts any. An export with a larger minimum refuses unaligned
    /// requests itself ([`ExportError::Misaligned`]); clients that honour the minimum
    /// (qemu, libnbd) do read-modify-write on their side.
    fn min_block_bytes(&self) -> u32 {
        1
    }

    /// Read exactly `length` bytes at `offset`.
    fn read(&self, offset: u64, length: u32) -> BoxFuture<'_, Result<Bytes, ExportError>>;

    /// Write `data` at `offset`; with `fua`, persist it before returning.
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, Result<(), ExportError>> {
        let _ = (offset, data, fua);
        Box::pin(async { Err(ExportError::ReadOnly) })
    }

    /// Persist every completed write.
    fn flush(&self) -> BoxFuture<'_, Result<(), ExportError>> {
        Box::pin(async { Ok(()) })
    }

    /// Hint that a range is no longer needed; doing nothing is correct.
    fn trim(&self, offset: u64, length: u32) -> BoxFuture<'_, Result<(), ExportError>> {
        let _ = (offset, length);
        Box::pin(async { Ok(()) })
    }

    /// Make a range read as zeroes. The default writes zero buffers of at most 1 MiB.
    fn write_zeroes(
        &self,
        offset: u64,
        length: u32,
        fua: bool,
    ) -> BoxFuture<'_, Result<(), ExportError>> {
        Box::pin(async move {
            const STEP: u32 = 1 << 20;
            let zeroes = Bytes::from(vec![0u8; STEP.min(length) as usize]);
            let mut done = 0u32;
            while done < length {
                let n = STEP.min(length - done);
                self.write(offset + u64::from(done), zeroes.slice(..n as usize), fua)
                    .await?;
                done += n;
            }
            Ok(())
        })
    }

    /// Allocation status of `[offset, offset + length)`, as consecutive extents from
    /// `offset`. Returning fewer bytes than asked is allowed (the client asks again);
    /// the default says "all data", which is always correct.
    fn block_status(
        &self,
        offset: u64,
        length: u32,
    ) -> BoxFuture<'_, Result<Vec<Extent>, ExportError>> {
        let _ = offset;
        Box::pin(async move { Ok(vec![Extent::data(length.into())]) })
    }
}

/// The exports a server offers, by name.
pub trait Catalog: Send + Sync + 'static {
    /// The export called `name` (empty means the default export), or `None`.
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Option<Arc<dyn Export>>, ExportError>>;

    /// Names and descriptions of all exports, for `NBD_OPT_LIST`.
    fn list(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, ExportError>>;
}

/// A fixed map of names to exports.
#[derive(Default, Clone)]
pub struct MapCatalog {
    exports: BTreeMap<String, Arc<dyn Export>>,
}

impl MapCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) an export.
    pub fn with(mut self, name: impl Into<String>, export: Arc<dyn Export>) -> Self {
        self.exports.insert(name.into(), export);
        self
    }
}

impl Catalog for MapCatalog {
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Option<Arc<dyn Export>>, ExportError>> {
        let found = self.exports.get(name).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, ExportError>> {
        let names = self
            .exports
            .iter()
            .map(|(name, export)| (name.clone(), export.description()))
            .collect();
        Box::pin(async move { Ok(names) })
    }
}

/// An export held in memory; block status reports all-zero 4 KiB blocks as holes.
pub struct MemExport {
    data: RwLock<Vec<u8>>,
    read_only: bool,
}

impl MemExport {
    /// Granularity of the holes [`MemExport`] reports.
    pub const BLOCK_BYTES: usize = 4096;

    /// An export over `data`.
    pub fn new(data: Vec<u8>, read_only: bool) -> Self {
        Self {
            data: RwLock::new(data),
            read_only,
        }
    }

    /// A copy of the current contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.read().map(|d| d.clone()).unwrap_or_default()
    }

    fn range(
        &self,
        len: usize,
        offset: u64,
        length: u64,
    ) -> Result<std::ops::Range<usize>, ExportError> {
        let start = usize::try_from(offset).map_err(|_| ExportError::OutOfRange)?;
        let end = usize::try_from(length)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&end| end <= len)
            .ok_or(ExportError::OutOfRange)?;
        Ok(start..end)
    }
}

fn poisoned() -> ExportError {
    ExportError::Io(std::io::Error::other("export lock poisoned"))
}

impl Export for MemExport {
    fn size_bytes(&self) -> u64 {
        self.data.read().map(|d| d.len() as u64).unwrap_or(0)
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn can_multi_conn(&self) -> bool {
        // One shared buffer with no cache: every connection sees every write at once.
        true
    }

    fn read(&self, offset: u64, length: u32) -> BoxFuture<'_, Result<Bytes, ExportError>> {
        let result = self.data.read().map_err(|_| poisoned()).and_then(|data| {
            let range = self.range(data.len(), offset, length.into())?;
            Ok(Bytes::copy_from_slice(data.get(range).unwrap_or_default()))
        });
        Box::pin(async move { result })
    }

    fn write(
        &self,
        offset: u64,
        bytes: Bytes,
        _fua: bool,
    ) -> BoxFuture<'_, Result<(), ExportError>> {
        let result = if self.read_only {
            Err(ExportError::ReadOnly)
        } else {
            self.data
                .write()
                .map_err(|_| poisoned())
                .and_then(|mut data| {
                    let range = self.range(data.len(), offset, bytes.len() as u64)?;
                    if let Some(dest) = data.get_mut(range) {
                        dest.copy_from_slice(&bytes);
                    }
                    Ok(())
                })
        };
        Box::pin(async move { result })
    }

    fn block_status(
        &self,
        offset: u64,
        length: u32,
    ) -> BoxFuture<'_, Result<Vec<Extent>, ExportError>> {
        let result = self.data.read().map_err(|_| poisoned()).and_then(|data| {
            let range = self.range(data.len(), offset, length.into())?;
            let mut extents: Vec<Extent> = Vec::new();
            let mut pos = range.start;
            while pos < range.end {
                // Blocks are aligned to the export, so the first one may be partial.
                let block_end = ((pos / Self::BLOCK_BYTES + 1) * Self::BLOCK_BYTES).min(range.end);
                let zero = data
                    .get(pos..block_end)
                    .is_some_and(|b| b.iter().all(|&x| x == 0));
                let len = (block_end - pos) as u64;
                match extents.last_mut() {
                    Some(last) if last.hole == zero => last.length_bytes += len,
                    _ => extents.push(if zero {
                        Extent::hole(len)
                    } else {
                        Extent::data(len)
                    }),
                }
                pos = block_end;
            }
            Ok(extents)
        });
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod range_end_tests {
    use super::*;

    #[test]
    fn a_range_ends_inside_the_export_or_is_out_of_range() {
        assert_eq!(range_end(0, 512, 512).unwrap(), 512);
        assert_eq!(range_end(512, 0, 512).unwrap(), 512);
        assert!(matches!(
            range_end(1, 512, 512),
            Err(ExportError::OutOfRange)
        ));
        assert!(matches!(
            range_end(u64::MAX, 1, u64::MAX),
            Err(ExportError::OutOfRange)
        ));
    }
}
