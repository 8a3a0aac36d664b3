//! [`VersionExport`]: one volume version served read-only over NBD.
//!
//! Reads are assembled from chunks (verified, through the shared [`ChunkCache`]); zero
//! chunks read as zeroes and are holes in block status. A chunk that fails verification
//! fails every read that touches it with `NBD_EIO` and is logged with its hash and the
//! volume offsets it serves; its bytes are never sent.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;
use rehydrate_nbd::{BoxFuture, Export, ExportError, Extent};

use crate::cache::ChunkCache;
use crate::chunk::ChunkHash;
use crate::error::BackupError;
use crate::identity::ExportIdentity;
use crate::index::{ChunkRef, Index, IndexError};
use crate::name::VolumeName;
use crate::size::MAX_CHUNK_BYTES;

/// Zeroes for zero chunks, shared rather than allocated per read (it lives in `.bss`).
static ZEROES: [u8; MAX_CHUNK_BYTES] = [0; MAX_CHUNK_BYTES];
/// Most volume offsets named in one corruption log line.
const MAX_LOGGED_OFFSETS: usize = 16;

/// One version of a volume, as an NBD export.
pub struct VersionExport {
    volume: VolumeName,
    version: u32,
    index: Arc<Index>,
    cache: Arc<ChunkCache>,
    /// The description every client is told (see [`crate::identity`]).
    identity: ExportIdentity,
}

impl VersionExport {
    /// Serve `index` (version `version` of `volume`) through `cache`. Fails only for an
    /// index that cannot be encoded (a decoded one always can).
    pub fn new(
        volume: VolumeName,
        version: u32,
        index: Arc<Index>,
        cache: Arc<ChunkCache>,
    ) -> Result<Self, IndexError> {
        let identity = ExportIdentity {
            volume: volume.clone(),
            version,
            size_bytes: index.volume_size_bytes,
            index_checksum: index.checksum()?,
            point: None,
        };
        Ok(Self {
            volume,
            version,
            index,
            cache,
            identity,
        })
    }

    /// What this export is, as its description tells clients.
    pub fn identity(&self) -> &ExportIdentity {
        &self.identity
    }

    /// The version served.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The bytes of chunk `i`, clipped to `[from, to)` within the chunk.
    async fn chunk_slice(&self, i: u64, from: usize, to: usize) -> Result<Bytes, ExportError> {
        let len = self.index.chunk_len(i);
        debug_assert!(from < to && to <= len);
        match self.index.chunks.get(i as usize) {
            Some(ChunkRef::Zero) => Ok(Bytes::from_static(&ZEROES[from..to])),
            Some(ChunkRef::Data(hash)) => match self.cache.get(hash, len).await {
                Ok(data) => Ok(data.slice(from..to)),
                Err(e) => Err(self.failed(hash, &e)),
            },
            None => Err(ExportError::OutOfRange),
        }
    }

    /// Allocation status of `[offset, offset + length)`: zero chunks are holes.
    fn extents(&self, offset: u64, length: u32) -> Vec<Extent> {
        let end = offset
            .saturating_add(length.into())
            .min(self.index.volume_size_bytes);
        let chunk_bytes = self.index.chunk_size.bytes();
        let mut extents: Vec<Extent> = Vec::new();
        let mut at = offset;
        // One step per chunk in range: at most length / 64 KiB + 1 steps.
        while at < end {
            let i = at / chunk_bytes;
            let run_end = ((i + 1) * chunk_bytes).min(end);
            let hole = matches!(self.index.chunks.get(i as usize), Some(ChunkRef::Zero));
            let len = run_end - at;
            match extents.last_mut() {
                Some(last) if last.hole == hole => last.length_bytes += len,
                _ => extents.push(if hole {
                    Extent::hole(len)
                } else {
                    Extent::data(len)
                }),
            }
            at = run_end;
        }
        extents
    }

    /// Log a chunk that could not be served, with every volume offset it backs.
    fn failed(&self, hash: &ChunkHash, error: &BackupError) -> ExportError {
        let chunk_bytes = self.index.chunk_size.bytes();
        let offsets: Vec<u64> = (0u64..)
            .zip(self.index.chunks.iter())
            .filter(|(_, c)| **c == ChunkRef::Data(*hash))
            .map(|(i, _)| i * chunk_bytes)
            .take(MAX_LOGGED_OFFSETS)
            .collect();
        tracing::error!(
            volume = %self.volume,
            version = self.version,
            chunk = %hash,
            ?offsets,
            chunk_bytes,
            %error,
            "chunk cannot be served; reads touching it fail with EIO"
        );
        match error {
            BackupError::CorruptChunk { hash, reason } => {
                ExportError::Corrupt(format!("chunk {hash}: {reason}"))
            }
            _ => ExportError::Io(std::io::Error::other(error.to_string())),
        }
    }
}

impl Export for VersionExport {
    fn size_bytes(&self) -> u64 {
        self.index.volume_size_bytes
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
            let chunk_bytes = self.index.chunk_size.bytes();
            let (first, last) = (offset / chunk_bytes, (end - 1) / chunk_bytes);
            // All chunks of one request are fetched concurrently; a request spans at most
            // 32 MiB (the server's payload bound), so at most 513 chunks.
            let parts = try_join_all((first..=last).map(|i| {
                let base = i * chunk_bytes;
                let from = offset.max(base) - base;
                let to = end.min(base + chunk_bytes) - base;
                self.chunk_slice(i, from as usize, to as usize)
            }))
            .await?;
            if let [only] = parts.as_slice() {
                // The common case: no copy, a view into the cached chunk.
                return Ok(only.clone());
            }
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
        let extents = self.extents(offset, length);
        Box::pin(async move { Ok(extents) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{backup, BackupOptions};
    use crate::size::ChunkSize;
    use crate::store::ChunkStore;

    const CHUNK: usize = 65536;

    /// Chunks: data, zero, data, short data tail (100 bytes).
    async fn export() -> (tempfile::TempDir, Vec<u8>, VersionExport) {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().join("s").to_str().unwrap(), true).unwrap();
        let mut data: Vec<u8> = (0..3 * CHUNK + 100).map(|i| (i % 251) as u8 + 1).collect();
        data[CHUNK..2 * CHUNK].fill(0);
        let image = dir.path().join("img");
        std::fs::write(&image, &data).unwrap();
        let options = BackupOptions {
            volume: VolumeName::new("v").unwrap(),
            chunk_size: ChunkSize::from_shift(16).unwrap(),
            progress: false,
            rate_limit_bytes_per_sec: None,
            verify: false,
        };
        backup(&store, &image, &options).await.unwrap();
        let index = store.read_index(&options.volume, 1).await.unwrap();
        let cache = Arc::new(ChunkCache::new(store, 1 << 20));
        let export = VersionExport::new(options.volume, 1, Arc::new(index), cache).unwrap();
        (dir, data, export)
    }

    #[tokio::test]
    async fn reads_any_range_across_chunks() {
        let (_dir, data, export) = export().await;
        assert_eq!(export.size_bytes(), data.len() as u64);
        assert!(export.read_only());
        let size = data.len() as u64;
        for (offset, len) in [
            (0, 1),
            (0, size),
            (CHUNK as u64 - 3, 6),
            (CHUNK as u64, 10),
            (size - 1, 1),
            (100, 3 * CHUNK as u32 as u64),
        ] {
            let got = export.read(offset, len as u32).await.unwrap();
            assert_eq!(
                &got[..],
                &data[offset as usize..(offset + len) as usize],
                "{offset}+{len}"
            );
        }
        assert!(matches!(
            export.read(size, 1).await,
            Err(ExportError::OutOfRange)
        ));
        assert!(matches!(
            export.read(u64::MAX, 2).await,
            Err(ExportError::OutOfRange)
        ));
        assert!(export
            .write(0, Bytes::from_static(b"x"), false)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn zero_chunks_are_holes() {
        let (_dir, data, export) = export().await;
        let c = CHUNK as u64;
        let all = export.block_status(0, data.len() as u32).await.unwrap();
        assert_eq!(
            all,
            vec![Extent::data(c), Extent::hole(c), Extent::data(c + 100)]
        );
        assert_eq!(
            export.block_status(c + 5, 10).await.unwrap(),
            vec![Extent::hole(10)]
        );
        assert_eq!(
            export.block_status(c - 1, 2).await.unwrap(),
            vec![Extent::data(1), Extent::hole(1)]
        );
    }
}
