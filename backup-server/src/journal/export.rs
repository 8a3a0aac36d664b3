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

    async fn piece(&self, range: Range<u64>, source: Option<Source>) -> Result<Bytes, ExportError> {
        let len = (range.end - range.start) as usize;
        match source {
            None => self.base.read(range.start, len as u32).await,
            Some(Source::Zero) => Ok(Bytes::from(vec![0u8; len])),
            Some(Source::Data { segment, at }) => {
                let file =
                    self.files.get(segment as usize).cloned().ok_or_else(|| {
                        ExportError::Corrupt(format!("no journal segment {segment}"))
                    })?;
                tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
                })
                .await
                .map_err(|e| ExportError::Io(std::io::Error::other(e)))?
                .map_err(ExportError::Io)
            }
        }
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
            let end = offset
                .checked_add(length.into())
                .filter(|&e| e <= self.size_bytes())
                .ok_or(ExportError::OutOfRange)?;
            if length == 0 {
                return Ok(Bytes::new());
            }
            let pieces = self.map.lookup(offset..end);
            if let [(range, source)] = pieces.as_slice() {
                return self.piece(range.clone(), *source).await;
            }
            // A request spans at most 32 MiB; its pieces are read concurrently.
            let parts = try_join_all(pieces.into_iter().map(|(r, s)| self.piece(r, s))).await?;
            let mut out = BytesMut::with_capacity(length as usize);
            parts.iter().for_each(|p| out.extend_from_slice(p));
            debug_assert_eq!(out.len(), length as usize);
            Ok(out.freeze())
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
