//! Incremental backup: only the chunks that a list of changed byte ranges touches are
//! read; every other chunk is the base version's, taken from its index. The caller
//! vouches that outside the ranges the source still equals the base (a changed-region
//! map kept while the volume was written says so: `rehydrate backup --changed-map`).
//!
//! The base is named by version *and* index checksum, so a store that holds another
//! version under that number (another store, a volume recreated) is refused, never
//! mixed in: the caller then reads everything ([`IncrementalError::Base`]).

use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use crate::backup::{chunk_len, open_source, run, BackupOptions, BackupSummary, BaseIndex, Plan};
use crate::error::BackupError;
use crate::index::{ChunkRef, Index};
use crate::store::{version_path, ChunkStore};

/// What changed since which version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changes {
    /// The version the source equalled before the changes.
    pub base_version: u32,
    /// That version's index checksum.
    pub base_checksum: [u8; 32],
    /// Byte ranges that may differ from the base, ascending, not overlapping.
    pub ranges: Vec<Range<u64>>,
}

/// Why the base cannot be used (the caller reads everything instead).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BaseError {
    /// The store has no such version of the volume.
    #[error("the store has no version {version} of the volume")]
    Missing {
        /// The version.
        version: u32,
    },
    /// The store's version of that number is another one.
    #[error("version {version} in the store is not the one the changes count from")]
    Differs {
        /// The version.
        version: u32,
    },
    /// The base has another size than the source.
    #[error("version {version} holds {base_bytes} bytes, the source {source_bytes}")]
    Size {
        /// The version.
        version: u32,
        /// Its size.
        base_bytes: u64,
        /// The source's.
        source_bytes: u64,
    },
    /// The base was cut into chunks of another size than this backup asks for.
    #[error("version {version} has {base_bytes}-byte chunks, this backup {asked_bytes}")]
    ChunkSize {
        /// The version.
        version: u32,
        /// Its chunk size.
        base_bytes: u64,
        /// The one asked for.
        asked_bytes: u64,
    },
}

/// An incremental backup's failure.
#[derive(Debug, thiserror::Error)]
pub enum IncrementalError {
    /// The base cannot be used; nothing was written.
    #[error("{0}")]
    Base(BaseError),
    /// The backup itself failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
}

/// The chunks of `chunk_size_bytes` that `ranges` touch, ascending, once each, within
/// `chunk_count`.
pub fn chunks_touched(ranges: &[Range<u64>], chunk_size_bytes: u64, chunk_count: u64) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for r in ranges.iter().filter(|r| r.start < r.end) {
        let first = r.start / chunk_size_bytes;
        let last = ((r.end - 1) / chunk_size_bytes).min(chunk_count.saturating_sub(1));
        let from = match out.last() {
            Some(&l) if l >= first => l + 1,
            _ => first,
        };
        out.extend(from..=last);
    }
    debug_assert!(out.windows(2).all(|w| w[0] < w[1]));
    out
}

/// Backs up `source` as a new version of `options.volume`, reading only the chunks that
/// `changes` touch and taking the rest from the base version.
pub async fn backup_changes(
    store: &ChunkStore,
    source: &Path,
    options: &BackupOptions,
    changes: &Changes,
) -> Result<BackupSummary, IncrementalError> {
    let started = Instant::now();
    let version = changes.base_version;
    let index_bytes = match store.read_index_bytes(&options.volume, version).await {
        Ok(bytes) => bytes,
        Err(BackupError::VersionNotFound { .. }) => {
            return Err(IncrementalError::Base(BaseError::Missing { version }))
        }
        Err(e) => return Err(e.into()),
    };
    let base = Index::decode(&index_bytes).map_err(|source| BackupError::Index {
        path: version_path(&options.volume, version).to_string(),
        source,
    })?;
    let checksum = base
        .checksum()
        .map_err(|e| BackupError::Internal(e.to_string()))?;
    if checksum != changes.base_checksum {
        return Err(IncrementalError::Base(BaseError::Differs { version }));
    }
    let (file, size_bytes) = open_source(source)?;
    if base.volume_size_bytes != size_bytes {
        return Err(IncrementalError::Base(BaseError::Size {
            version,
            base_bytes: base.volume_size_bytes,
            source_bytes: size_bytes,
        }));
    }
    if base.chunk_size != options.chunk_size {
        return Err(IncrementalError::Base(BaseError::ChunkSize {
            version,
            base_bytes: base.chunk_size.bytes(),
            asked_bytes: options.chunk_size.bytes(),
        }));
    }
    let chunk_count = options.chunk_size.chunk_count(size_bytes);
    debug_assert_eq!(chunk_len(chunk_count)?, base.chunks.len());
    let read = chunks_touched(&changes.ranges, options.chunk_size.bytes(), chunk_count);
    let (mut unread_zero, mut unread_data) = (0u64, 0u64);
    let mut next = read.iter().peekable();
    for (i, c) in base.chunks.iter().enumerate() {
        if next.peek() == Some(&&(i as u64)) {
            next.next();
            continue;
        }
        match c {
            ChunkRef::Zero => unread_zero += 1,
            ChunkRef::Data(_) => unread_data += 1,
        }
    }
    let plan = Plan {
        read_count: read.len() as u64,
        read: Box::new(read.into_iter()),
        chunks: base.chunks,
        unread_zero,
        unread_data,
        incremental_from: Some(version),
        base: Some(BaseIndex {
            volume: options.volume.clone(),
            version,
            index_bytes,
        }),
    };
    Ok(run(store, source, file, size_bytes, options, plan, started).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::backup;
    use crate::name::VolumeName;
    use crate::size::ChunkSize;

    const CHUNK: u64 = 65536;

    fn options(name: &str) -> BackupOptions {
        BackupOptions {
            volume: VolumeName::new(name).unwrap(),
            chunk_size: ChunkSize::from_shift(16).unwrap(),
            progress: false,
            rate_limit_bytes_per_sec: None,
            verify: false,
        }
    }

    #[test]
    fn chunks_touched_are_each_chunk_once_in_order() {
        let ranges = [
            0..1,
            10..CHUNK + 1,
            CHUNK + 5..CHUNK + 6,
            5 * CHUNK..9 * CHUNK,
        ];
        assert_eq!(chunks_touched(&ranges, CHUNK, 8), vec![0, 1, 5, 6, 7]);
        let empty: Range<u64> = 3..3;
        assert_eq!(chunks_touched(&[empty], CHUNK, 8), Vec::<u64>::new());
        assert_eq!(chunks_touched(&[], CHUNK, 8), Vec::<u64>::new());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_incremental_version_equals_a_full_backup_of_the_same_image() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().join("store").to_str().unwrap(), true).unwrap();
        let image = dir.path().join("img");
        let mut data: Vec<u8> = (0..10 * CHUNK + 777).map(|i| (i * 31 / 7) as u8).collect();
        data[3 * CHUNK as usize..4 * CHUNK as usize].fill(0);
        std::fs::write(&image, &data).unwrap();
        let v1 = backup(&store, &image, &options("vol")).await.unwrap();
        let base = store.read_index(&options("vol").volume, 1).await.unwrap();

        // Change a few bytes in chunks 1 and 3 (which was zero), and the short last one.
        data[CHUNK as usize + 5] ^= 0xFF;
        data[3 * CHUNK as usize + 100] = 1;
        let last = data.len() - 1;
        data[last] ^= 1;
        std::fs::write(&image, &data).unwrap();
        let changes = Changes {
            base_version: v1.version,
            base_checksum: base.checksum().unwrap(),
            ranges: vec![
                CHUNK + 5..CHUNK + 6,
                3 * CHUNK + 100..3 * CHUNK + 101,
                last as u64..last as u64 + 1,
            ],
        };
        let inc = backup_changes(&store, &image, &options("vol"), &changes)
            .await
            .unwrap();
        assert_eq!(inc.incremental_from, Some(1));
        assert_eq!(
            inc.read_bytes,
            2 * CHUNK + 777,
            "only the changed chunks were read"
        );
        assert_eq!(inc.new_chunks, 3);
        assert_eq!(inc.zero_chunks + inc.reused_chunks + inc.new_chunks, 11);
        assert!(
            inc.to_string()
                .ends_with("incremental_from=1 read_bytes=131849"),
            "{inc}"
        );
        // A full backup of the same image names exactly the same chunks.
        let full = backup(&store, &image, &options("vol")).await.unwrap();
        let a = store
            .read_index(&options("vol").volume, inc.version)
            .await
            .unwrap();
        let b = store
            .read_index(&options("vol").volume, full.version)
            .await
            .unwrap();
        assert_eq!(a.chunks, b.chunks);
        assert_eq!(
            inc.index_checksum,
            a.checksum().unwrap(),
            "the summary names the version"
        );
        assert_eq!(a.volume_size_bytes, b.volume_size_bytes);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_base_that_is_not_the_one_counted_from_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().join("store").to_str().unwrap(), true).unwrap();
        let image = dir.path().join("img");
        std::fs::write(&image, vec![5u8; 2 * CHUNK as usize]).unwrap();
        backup(&store, &image, &options("vol")).await.unwrap();
        let changes = |version, checksum| Changes {
            base_version: version,
            base_checksum: checksum,
            ranges: std::iter::once(0..1).collect(),
        };
        let e = backup_changes(&store, &image, &options("vol"), &changes(2, [0; 32]))
            .await
            .unwrap_err();
        assert!(
            matches!(e, IncrementalError::Base(BaseError::Missing { version: 2 })),
            "{e}"
        );
        let e = backup_changes(&store, &image, &options("vol"), &changes(1, [0; 32]))
            .await
            .unwrap_err();
        assert!(
            matches!(e, IncrementalError::Base(BaseError::Differs { version: 1 })),
            "{e}"
        );
        let checksum = store
            .read_index(&options("vol").volume, 1)
            .await
            .unwrap()
            .checksum()
            .unwrap();
        std::fs::write(&image, vec![5u8; 3 * CHUNK as usize]).unwrap();
        let e = backup_changes(&store, &image, &options("vol"), &changes(1, checksum))
            .await
            .unwrap_err();
        assert!(
            matches!(e, IncrementalError::Base(BaseError::Size { .. })),
            "{e}"
        );
        std::fs::write(&image, vec![5u8; 2 * CHUNK as usize]).unwrap();
        let mut bigger = options("vol");
        bigger.chunk_size = ChunkSize::from_shift(17).unwrap();
        let e = backup_changes(&store, &image, &bigger, &changes(1, checksum))
            .await
            .unwrap_err();
        assert!(
            matches!(e, IncrementalError::Base(BaseError::ChunkSize { .. })),
            "{e}"
        );
        assert_eq!(
            store.versions(&options("vol").volume).await.unwrap(),
            vec![1]
        );
    }
}
