//! [`PointExport`]: one recovery point served read-only over NBD, instantly: each read
//! is assembled from the point's interval map — journal records where they wrote, the
//! base version's chunks everywhere else. Nothing is copied or materialised first.

use std::fs::File;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;
use rehydrate_nbd::{BoxFuture, Export, ExportError, Extent, PositionalIo};

use super::map::{PointMap, Source};
use crate::export::VersionExport;
use crate::identity::ExportIdentity;

/// A point of the journal, as an NBD export.
pub struct PointExport {
    base: VersionExport,
    map: Arc<PointMap>,
    files: Arc<Vec<Arc<File>>>,
    identity: ExportIdentity,
}

impl PointExport {
    /// Serves `map` (over the segment `files`) on top of `base`, telling clients
    /// `identity`.
    pub fn new(
        base: VersionExport,
        map: Arc<PointMap>,
        files: Arc<Vec<Arc<File>>>,
        identity: ExportIdentity,
    ) -> PointExport {
        debug_assert!(identity.point.is_some());
        PointExport {
            base,
            map,
            files,
            identity,
        }
    }

    /// What the export is.
    pub fn identity(&self) -> &ExportIdentity {
        &self.identity
    }

    /// Reads `[offset, offset + length)`: every journal piece in one blocking task (a
    /// sequential read over a point written by small random writes is hundreds of
    /// pieces), base pieces through the version's chunk cache meanwhile, zeros as they
    /// are.
    async fn assemble(&self, offset: u64, length: usize) -> Result<Bytes, ExportError> {
        let end = offset + length as u64;
        let pieces = self.map.lookup(offset..end);
        let mut journal: Vec<(Arc<File>, u64, Range<usize>)> = Vec::new();
        let mut base: Vec<Range<u64>> = Vec::new();
        for (range, source) in pieces {
            let at = (range.start - offset) as usize..(range.end - offset) as usize;
            match source {
                None => base.push(range),
                Some(Source::Zero) => {}
                Some(Source::Data {
                    segment,
                    at: file_at,
                }) => {
                    let file = self.files.get(segment as usize).cloned().ok_or_else(|| {
                        ExportError::Corrupt(format!("no journal segment {segment}"))
                    })?;
                    journal.push((file, file_at, at));
                }
            }
        }
        if journal.is_empty() {
            if let [only] = base.as_slice() {
                // The common case of a region nobody wrote: the base's bytes, no copy.
                if only.start == offset && only.end == end {
                    return self.base.read(offset, length as u32).await;
                }
            }
        }
        let read_journal = async move {
            if journal.is_empty() {
                return Ok(BytesMut::zeroed(length));
            }
            tokio::task::spawn_blocking(move || {
                let mut out = BytesMut::zeroed(length);
                for (file, file_at, at) in &journal {
                    file.read_exact_at(&mut out[at.clone()], *file_at)?;
                }
                Ok::<BytesMut, std::io::Error>(out)
            })
            .await
            .map_err(|e| ExportError::Io(std::io::Error::other(e)))?
            .map_err(ExportError::Io)
        };
        // A request spans at most 32 MiB; the base's pieces are read meanwhile.
        let read_base = try_join_all(
            base.iter()
                .map(|r| self.base.read(r.start, (r.end - r.start) as u32)),
        );
        let (out, base_parts) = tokio::join!(read_journal, read_base);
        let (mut out, base_parts) = (out?, base_parts?);
        for (r, part) in base.iter().zip(&base_parts) {
            let at = (r.start - offset) as usize;
            out[at..at + part.len()].copy_from_slice(part);
        }
        Ok(out.freeze())
    }
}

impl Export for PointExport {
    fn size_bytes(&self) -> u64 {
        self.base.size_bytes()
    }

    fn read_only(&self) -> bool {
        true
    }

    fn description(&self) -> String {
        self.identity.render()
    }

    fn read(&self, offset: u64, length: u32) -> BoxFuture<'_, Result<Bytes, ExportError>> {
        Box::pin(async move {
            let end = rehydrate_nbd::range_end(offset, length.into(), self.size_bytes())?;
            if length == 0 {
                return Ok(Bytes::new());
            }
            debug_assert!(end > offset);
            self.assemble(offset, length as usize).await
        })
    }

    fn block_status(
        &self,
        offset: u64,
        length: u32,
    ) -> BoxFuture<'_, Result<Vec<Extent>, ExportError>> {
        Box::pin(async move {
            let end = offset.saturating_add(length.into()).min(self.size_bytes());
            let mut out: Vec<Extent> = Vec::new();
            for (range, source) in self.map.lookup(offset..end) {
                let len = range.end - range.start;
                let extents = match source {
                    None => self.base.block_status(range.start, len as u32).await?,
                    Some(Source::Zero) => vec![Extent::hole(len)],
                    Some(Source::Data { .. }) => vec![Extent::data(len)],
                };
                for e in extents {
                    match out.last_mut() {
                        Some(last) if last.hole == e.hole && last.zero == e.zero => {
                            last.length_bytes += e.length_bytes
                        }
                        _ => out.push(e),
                    }
                }
            }
            Ok(out)
        })
    }
}
