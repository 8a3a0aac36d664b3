//! Backing up an image file or block device into a [`ChunkStore`].
//!
//! The source is cut into fixed-size chunks. Up to [`IN_FLIGHT_CHUNKS`] chunks move
//! through the pipeline at once, each independently: read, zero check and hash (two
//! lanes per core, see [`crate::read_lanes`]) → existence check (store `head`) →
//! compress and put-if-not-exists (store). Only when every chunk is stored and,
//! locally, synced, is the index published — so an interrupted backup leaves stored
//! chunks (reused by the next backup) but no visible version. Each hash is announced
//! before its existence check, so a concurrent `gc` spares it (see [`crate::marks`]).
//!
//! A full backup reads every chunk; an incremental one ([`crate::incremental`]) reads
//! only the chunks it is told changed and takes the others from a base version's index.
//! Both run the same pipeline ([`run`]).

use std::collections::HashSet;
use std::fs::File;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::chunk::{self, ChunkHash};
use crate::chunk_buf::BufferPool;
use crate::error::BackupError;
use crate::index::{distinct_data_chunks, ChunkRef, Index, MAX_VOLUME_BYTES};
use crate::marks::Announcer;
use crate::name::VolumeName;
use crate::read_lanes::{self, ReadChunk};
use crate::size::ChunkSize;
use crate::store::{ChunkCheck, ChunkStore, PutOutcome};

/// Chunks in the pipeline at once: enough to keep every core hashing while reads and
/// store writes wait; memory use is this times the chunk size (at most 128 MiB).
pub const IN_FLIGHT_CHUNKS: usize = 16;

/// New chunks whose files are fsynced together in the background while the backup goes
/// on (their directories wait for the end: one fsync each, however many chunks).
const SYNC_BATCH_CHUNKS: usize = 64;

/// How to back up.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// The volume to add a version to.
    pub volume: VolumeName,
    /// The chunk size of the new version.
    pub chunk_size: ChunkSize,
    /// Show a progress bar on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Read at most this many bytes per second from the source (`None`: unlimited), so a
    /// backup of a live disk leaves it room for other work.
    pub rate_limit_bytes_per_sec: Option<u64>,
    /// Read back and verify every chunk the store already has (else only its size is
    /// checked); a damaged one is replaced with the source's good data.
    pub verify: bool,
}

/// What a backup did. `Display` is the line `backup: volume=… version=… …`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BackupSummary {
    /// The volume.
    pub volume: String,
    /// The version published.
    pub version: u32,
    /// The version that was newest when the backup began (0: none).
    pub parent_version: u32,
    /// Size of the source in bytes.
    pub bytes: u64,
    /// Chunk size in bytes.
    pub chunk_size_bytes: u64,
    /// Chunks this backup stored.
    pub new_chunks: u64,
    /// Non-zero chunks already in the store (from earlier backups, or repeated within
    /// this one).
    pub reused_chunks: u64,
    /// All-zero chunks (marked in the index, not stored).
    pub zero_chunks: u64,
    /// Chunks the store had in a damaged form, replaced with the source's data.
    pub repaired_chunks: u64,
    /// An incremental backup: the version whose chunks it took for what did not change.
    pub incremental_from: Option<u32>,
    /// Bytes read from the source (all of it for a full backup).
    pub read_bytes: u64,
    /// The published index's checksum (names the version's contents exactly).
    #[serde(skip)]
    pub index_checksum: [u8; 32],
    /// Bytes written to the store for new chunks (after compression).
    pub stored_bytes: u64,
    /// Wall-clock time in seconds.
    pub secs: f64,
}

impl std::fmt::Display for BackupSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "backup: volume={} version={} bytes={} new_chunks={} reused_chunks={} zero_chunks={}",
            self.volume,
            self.version,
            self.bytes,
            self.new_chunks,
            self.reused_chunks,
            self.zero_chunks
        )?;
        // Only when it happened, so the usual line stays as it always was.
        if self.repaired_chunks > 0 {
            write!(f, " repaired_chunks={}", self.repaired_chunks)?;
        }
        if let Some(base) = self.incremental_from {
            write!(f, " incremental_from={base} read_bytes={}", self.read_bytes)?;
        }
        Ok(())
    }
}

/// What happened to one chunk.
enum Fate {
    Zero,
    Reused(ChunkHash),
    Written(ChunkHash, u64),
    Repaired(ChunkHash, u64),
}

/// Back up `source` (an image file or block device) as a new version of a volume.
pub async fn backup(
    store: &ChunkStore,
    source: &Path,
    options: &BackupOptions,
) -> Result<BackupSummary, BackupError> {
    let started = Instant::now();
    let (file, size_bytes) = open_source(source)?;
    crate::os::will_read_sequentially(&file);
    let chunk_count = options.chunk_size.chunk_count(size_bytes);
    let chunks = vec![ChunkRef::Zero; chunk_len(chunk_count)?];
    let plan = Plan {
        chunks,
        read: Box::new(0..chunk_count),
        read_count: chunk_count,
        unread_zero: 0,
        unread_data: 0,
        incremental_from: None,
        base: None,
    };
    run(store, source, file, size_bytes, options, plan, started).await
}

/// Opens the source and measures it (seeking to the end also sizes block devices,
/// whose metadata length is 0).
pub(crate) fn open_source(source: &Path) -> Result<(File, u64), BackupError> {
    let source_err = |e: std::io::Error| BackupError::Source {
        path: source.to_owned(),
        source: e,
    };
    let file = File::open(source).map_err(source_err)?;
    let size_bytes =
        std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0)).map_err(source_err)?;
    if size_bytes > MAX_VOLUME_BYTES {
        return Err(source_err(std::io::Error::other(
            "larger than the 1 PiB a version may hold",
        )));
    }
    Ok((file, size_bytes))
}

/// A chunk count as a length in memory.
pub(crate) fn chunk_len(chunk_count: u64) -> Result<usize, BackupError> {
    usize::try_from(chunk_count).map_err(|_| BackupError::Internal("chunk count overflows".into()))
}

/// What a backup reads, and what the chunks it does not read are.
pub(crate) struct Plan {
    /// The new version's chunk list; entries of chunks not read are already final.
    pub chunks: Vec<ChunkRef>,
    /// The chunks to read from the source, ascending.
    pub read: Box<dyn Iterator<Item = u64> + Send>,
    /// How many `read` yields.
    pub read_count: u64,
    /// Chunks not read whose entry is a zero marker, and those naming a stored chunk.
    pub unread_zero: u64,
    pub unread_data: u64,
    /// The version the unread chunks come from (incremental), for the summary.
    pub incremental_from: Option<u32>,
    /// That version's index as stored (incremental), looked at again once the unread
    /// chunks are announced.
    pub base: Option<BaseIndex>,
}

/// The stored index an incremental backup takes its unread chunks from.
pub(crate) struct BaseIndex {
    pub volume: VolumeName,
    pub version: u32,
    pub index_bytes: Bytes,
}

/// The pipeline both kinds of backup run: reads, hashes and stores the planned chunks,
/// syncs them, publishes the index. Every chunk the new version will name is announced
/// first (see [`crate::marks`]), those an incremental backup takes from its base
/// included, so a concurrent `gc` spares them.
pub(crate) async fn run(
    store: &ChunkStore,
    source: &Path,
    file: File,
    size_bytes: u64,
    options: &BackupOptions,
    plan: Plan,
    started: Instant,
) -> Result<BackupSummary, BackupError> {
    let marks = Arc::new(Announcer::new(store));
    let mut result = run_announcing(store, source, file, size_bytes, options, plan, &marks).await;
    // Withdraw the announcements whatever happened: once the version is visible they are
    // no longer needed (a gc sees its index; if a crash loses the index before it is
    // durable, the version is lost with its claim on the chunks), after a failure
    // nothing will publish. One left behind only delays a gc. The withdrawal runs
    // beside the version's fsyncs: neither waits for the other.
    let durable = async {
        if let Ok(summary) = &result {
            store
                .make_version_durable(&options.volume, summary.version)
                .await;
        }
    };
    let (withdrawn, ()) = futures::join!(marks.finish(), durable);
    if let Err(e) = withdrawn {
        tracing::warn!(%e, "backup: could not withdraw its pending chunk list; gc expires it");
    }
    if let Ok(summary) = &mut result {
        summary.secs = started.elapsed().as_secs_f64();
        tracing::info!(%summary, stored_bytes = summary.stored_bytes, secs = summary.secs, "backup published");
    }
    result
}

/// Announces the stored chunks a plan takes without reading them (an incremental
/// backup's unchanged chunks, named by its base version), then makes sure no gc can
/// have deleted one of them.
///
/// Why one look at the base index suffices rather than one existence check per chunk:
/// a gc deletes a chunk only if neither of its two looks at indexes and announcements
/// found it referenced. The base index was there when the plan was made and is still
/// there, byte for byte, after the announcement is visible; an index never comes back
/// once forgotten, so it was there throughout. A gc whose look fell before the
/// announcement saw the index; one whose look came after saw the announcement. Only a
/// chunk a running gc had already condemned needs its own check, after that gc ends.
///
/// It runs beside the reading of the changed chunks (nothing read depends on it) and
/// ends before the index is published, which is all the argument needs.
async fn announce_unread(
    store: &ChunkStore,
    marks: &Announcer,
    unread: Vec<ChunkHash>,
    base: Option<BaseIndex>,
) -> Result<(), BackupError> {
    if unread.is_empty() {
        return Ok(());
    }
    // One announcement for all of them; a gc that condemned one must have ended, and
    // the chunk must still be there.
    for hash in marks.announce_all(unread).await? {
        marks.wait_for_gc(&hash).await?;
        if !store.has_chunk(&hash).await? {
            return Err(BackupError::Internal(format!(
                "chunk {hash} of the base version was deleted by a gc while this backup \
                 started; back up again (in full)"
            )));
        }
    }
    if let Some(base) = &base {
        match store.read_index_bytes(&base.volume, base.version).await {
            Ok(now) if now == base.index_bytes => {}
            Ok(_) | Err(BackupError::VersionNotFound { .. }) => {
                return Err(BackupError::Internal(format!(
                    "version {} of {} was forgotten while this backup started; back up \
                     again (in full)",
                    base.version, base.volume
                )))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Announces, in one batch, the chunks of the version a full backup will be the child
/// of: most of them are usually the chunks it is about to find, each of which would
/// otherwise wait for (and often start) an announcement of its own. A full re-backup
/// of an unchanged 1 GiB volume wrote about a hundred announcement files (one per
/// chunks that arrived during the previous write), each created and deleted, and
/// creating files where many were just deleted grows costly on ext4 (its inode
/// allocator skips recently deleted inodes one by one).
///
/// Safe for the same reason [`announce_unread`] is: a chunk whose hash this batch
/// announced is still checked (condemned, then present) when it is read. Only an
/// optimization: if the parent's index cannot be read (forgotten meanwhile, damaged),
/// each chunk is announced as it comes, as without a parent. Announcing a chunk the
/// new version turns out not to name only keeps it from a gc until this backup ends.
async fn announce_parents_chunks(
    store: &ChunkStore,
    marks: &Announcer,
    volume: &VolumeName,
    parent: u32,
) {
    let index = match store.read_index(volume, parent).await {
        Ok(index) => index,
        Err(e) => {
            tracing::debug!(%e, parent, "backup: the parent's chunks are announced one by one");
            return;
        }
    };
    let hashes = distinct_data_chunks(&index.chunks).collect();
    if let Err(e) = marks.announce_all(hashes).await {
        // The chunks' own announcements will say it again, and fail the backup.
        tracing::debug!(%e, parent, "backup: announcing the parent's chunks failed");
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_announcing(
    store: &ChunkStore,
    source: &Path,
    file: File,
    size_bytes: u64,
    options: &BackupOptions,
    plan: Plan,
    marks: &Arc<Announcer>,
) -> Result<BackupSummary, BackupError> {
    let chunk_size = options.chunk_size;
    let chunk_count = chunk_size.chunk_count(size_bytes);
    debug_assert_eq!(plan.chunks.len() as u64, chunk_count);
    let Plan {
        chunks,
        read,
        read_count,
        unread_zero,
        unread_data,
        incremental_from,
        base,
    } = plan;
    debug_assert_eq!(read_count + unread_zero + unread_data, chunk_count);
    // The stored chunks the plan takes unread, once each (a full backup has none).
    let unread: Vec<ChunkHash> = if unread_data > 0 {
        distinct_data_chunks(&chunks).collect()
    } else {
        Vec::new()
    };
    let full = base.is_none() && read_count == chunk_count;
    // Needed only to publish, so they run while the chunks are read: the unread
    // chunks' announcement (see `announce_unread`) and the newest version, which
    // becomes the new one's parent. A full backup announces the parent's chunks at
    // once (see `announce_parents_chunks`).
    let before_publish = async {
        let (announced, latest) =
            futures::join!(announce_unread(store, marks, unread, base), async {
                let latest = store.latest_version(&options.volume).await?;
                if let (true, Some(parent)) = (full, latest) {
                    announce_parents_chunks(store, marks, &options.volume, parent).await;
                }
                Ok::<_, BackupError>(latest)
            });
        announced?;
        Ok::<u32, BackupError>(latest?.unwrap_or(0))
    };
    let summary = BackupSummary {
        volume: options.volume.to_string(),
        version: 0,
        parent_version: 0,
        bytes: size_bytes,
        chunk_size_bytes: chunk_size.bytes(),
        new_chunks: 0,
        reused_chunks: unread_data,
        zero_chunks: unread_zero,
        repaired_chunks: 0,
        incremental_from,
        read_bytes: 0,
        index_checksum: [0; 32],
        stored_bytes: 0,
        secs: 0.0,
    };
    let progress = progress_bar(options.progress, size_bytes);
    // Chunks not read keep the base's entry: zero markers, or chunks stored before.
    progress.inc((unread_zero + unread_data) * chunk_size.bytes());
    let reading = read_chunks(
        store, source, file, size_bytes, options, read, chunks, summary, &progress, marks,
    );
    let (parent_version, read) = futures::join!(before_publish, reading);
    let (chunks, mut summary) = read?;
    summary.parent_version = parent_version?;

    let index = Index {
        volume_size_bytes: size_bytes,
        chunk_size,
        parent_version: summary.parent_version,
        created_unix_secs: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        chunks,
    };
    summary.index_checksum = index
        .checksum()
        .map_err(|e| BackupError::Internal(e.to_string()))?;
    // Visible here; made durable by `run`.
    summary.version = store.publish_visible(&options.volume, &index).await?;
    progress.finish_and_clear();
    Ok(summary)
}

/// Reads, hashes and stores the chunks `read` names, fills their entries of `chunks`
/// and counts them in `summary`; returns once every chunk stored is durable (locally:
/// synced, files and directories).
#[allow(clippy::too_many_arguments)]
async fn read_chunks(
    store: &ChunkStore,
    source: &Path,
    file: File,
    size_bytes: u64,
    options: &BackupOptions,
    read: Box<dyn Iterator<Item = u64> + Send>,
    mut chunks: Vec<ChunkRef>,
    mut summary: BackupSummary,
    progress: &ProgressBar,
    marks: &Arc<Announcer>,
) -> Result<(Vec<ChunkRef>, BackupSummary), BackupError> {
    let chunk_size = options.chunk_size;
    let chunk_count = chunk_size.chunk_count(size_bytes);
    // Hashes handled by this run, so a chunk repeated within the image is looked up once.
    let seen: Arc<Mutex<HashSet<ChunkHash>>> = Arc::default();
    let pool = Arc::new(BufferPool::new(chunk_size.bytes() as usize));
    let source = Arc::new(read_lanes::Source {
        file: Arc::new(file),
        path: source.to_owned(),
        size_bytes,
        chunk_size,
        rate_bytes_per_sec: options.rate_limit_bytes_per_sec,
        stored: store.stored_hint(),
    });
    let mut chunks_read = read_lanes::start(Arc::clone(&source), read, Arc::clone(&pool));
    let mut written = Vec::new();
    // Files fsynced in the background while reading goes on, a batch at a time, so the
    // wait before publishing is only for the last batch and the directories.
    let mut syncing = tokio::task::JoinSet::new();
    let mut unsynced = 0;
    let mut results = futures::stream::poll_fn(|cx| chunks_read.poll_recv(cx))
        .map(|read| {
            let (seen, store, source, pool, verify, marks) = (
                Arc::clone(&seen),
                store.clone(),
                Arc::clone(&source),
                Arc::clone(&pool),
                options.verify,
                Arc::clone(marks),
            );
            async move {
                let chunk = read?;
                let (i, len) = (chunk.index, chunk.len);
                let reader = Reader { source, pool };
                let fate = back_up_chunk(&store, chunk, &seen, &reader, verify, &marks).await?;
                Ok::<_, BackupError>((i, len, fate))
            }
        })
        .buffer_unordered(IN_FLIGHT_CHUNKS);
    while let Some(result) = results.next().await {
        let (i, len, fate) = result?;
        summary.read_bytes += len as u64;
        let slot = &mut chunks[i as usize];
        match fate {
            Fate::Zero => {
                summary.zero_chunks += 1;
                *slot = ChunkRef::Zero;
            }
            Fate::Reused(hash) => {
                summary.reused_chunks += 1;
                *slot = ChunkRef::Data(hash);
            }
            Fate::Written(hash, stored) => {
                summary.new_chunks += 1;
                summary.stored_bytes += stored;
                written.push(hash);
                *slot = ChunkRef::Data(hash);
            }
            Fate::Repaired(hash, stored) => {
                summary.repaired_chunks += 1;
                summary.stored_bytes += stored;
                written.push(hash);
                *slot = ChunkRef::Data(hash);
            }
        }
        if written.len() - unsynced >= SYNC_BATCH_CHUNKS {
            let batch = written[unsynced..].to_vec();
            unsynced = written.len();
            let store = store.clone();
            syncing.spawn(async move { store.sync_chunk_files(&batch).await });
        }
        progress.inc(len as u64);
    }
    drop(results);
    debug_assert_eq!(
        summary.zero_chunks + summary.reused_chunks + summary.new_chunks + summary.repaired_chunks,
        chunk_count
    );

    // Durable before any index can name them (their writeback began as each was
    // stored): the files of the last batch and every directory, together.
    while let Some(synced) = syncing.join_next().await {
        synced.map_err(|e| BackupError::Internal(e.to_string()))??;
    }
    let (files, dirs) = futures::join!(
        store.sync_chunk_files(&written[unsynced..]),
        store.sync_chunk_dirs(&written)
    );
    files.and(dirs)?;
    Ok((chunks, summary))
}

/// Where a chunk that came without its bytes is read again.
struct Reader {
    source: Arc<read_lanes::Source>,
    pool: Arc<BufferPool>,
}

impl Reader {
    async fn read_again(&self, index: u64) -> Result<ReadChunk, BackupError> {
        let (source, pool) = (Arc::clone(&self.source), Arc::clone(&self.pool));
        tokio::task::spawn_blocking(move || read_lanes::read_again(&source, &pool, index))
            .await
            .map_err(|e| BackupError::Internal(e.to_string()))?
    }

    fn give(&self, data: Option<read_lanes::Held>) {
        // The permit goes back after the buffer (see `read_lanes`).
        if let Some(held) = data {
            self.pool.give(held.buf);
        }
    }
}

/// Stores one chunk as read (or finds it stored, or all zero) and says which.
async fn back_up_chunk(
    store: &ChunkStore,
    chunk: ReadChunk,
    seen: &Mutex<HashSet<ChunkHash>>,
    reader: &Reader,
    verify: bool,
    marks: &Announcer,
) -> Result<Fate, BackupError> {
    let ReadChunk {
        index,
        len,
        hash,
        data,
    } = chunk;
    let Some(hash) = hash else {
        reader.give(data);
        return Ok(Fate::Zero);
    };
    let first_time = seen
        .lock()
        .map_err(|_| BackupError::Internal("lock poisoned".into()))?
        .insert(hash);
    if !first_time {
        reader.give(data);
        return Ok(Fate::Reused(hash));
    }
    // Announced before the existence check, so a gc running now cannot delete a chunk
    // this backup then reuses (see `crate::marks`).
    if marks.announce(hash).await? {
        marks.wait_for_gc(&hash).await?;
    }
    let damage = match store.check_chunk(&hash, len, verify).await? {
        ChunkCheck::Missing => None,
        ChunkCheck::Present => {
            reader.give(data);
            return Ok(Fate::Reused(hash));
        }
        ChunkCheck::Damaged(reason) => Some(reason),
    };
    // The permit, if any, goes back when this returns (see `read_lanes`).
    let (data, _permit) = match data {
        Some(held) => (held.buf, held.permit),
        None => {
            // The store seemed to hold the chunk when it was read, so its bytes were let
            // go; it does not (a gc deleted it since, or it is damaged): read it again.
            tracing::debug!(chunk = %hash, index, "backup: a chunk let go as stored is not; reading it again");
            let again = reader.read_again(index).await?;
            if again.hash != Some(hash) {
                // The source changed since it was read. Not stored under the new hash:
                // other chunks of the image with the old bytes were counted as this one
                // (`seen`), and nothing would store those.
                return Err(BackupError::SourceChanged {
                    path: reader.source.path.clone(),
                    offset_bytes: index * reader.source.chunk_size.bytes(),
                });
            }
            let held = again
                .data
                .ok_or_else(|| BackupError::Internal("a chunk read again has no bytes".into()))?;
            (held.buf, held.permit)
        }
    };
    if let Some(reason) = damage {
        let encoded = crate::cpu::run(move || chunk::encode(data.into())).await?;
        let stored = encoded.stored_len();
        // The source's bytes hash to the chunk's name: they are the good copy.
        tracing::warn!(chunk = %hash, %reason, "backup: replacing a damaged chunk");
        store.replace_chunk(&hash, encoded).await?;
        return Ok(Fate::Repaired(hash, stored));
    }
    Ok(match store.encode_and_put(&hash, data.into()).await? {
        (PutOutcome::Written, stored) => Fate::Written(hash, stored),
        (PutOutcome::AlreadyStored, _) => Fate::Reused(hash),
    })
}

fn progress_bar(wanted: bool, size_bytes: u64) -> ProgressBar {
    if !wanted || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(size_bytes), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn options(name: &str) -> BackupOptions {
        BackupOptions {
            volume: VolumeName::new(name).unwrap(),
            chunk_size: ChunkSize::from_shift(16).unwrap(),
            progress: false,
            rate_limit_bytes_per_sec: None,
            verify: false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backs_up_dedups_and_marks_zeroes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().join("store").to_str().unwrap(), true).unwrap();
        let image = dir.path().join("img");
        let mut data = vec![0u8; 5 * 65536 + 1000];
        data[..65536].fill(1); // chunk 0
        data[2 * 65536..3 * 65536].fill(1); // chunk 2 repeats chunk 0
        data[5 * 65536 + 10] = 9; // the short last chunk
        std::fs::File::create(&image)
            .unwrap()
            .write_all(&data)
            .unwrap();

        let first = backup(&store, &image, &options("vol")).await.unwrap();
        assert_eq!(
            (
                first.version,
                first.new_chunks,
                first.reused_chunks,
                first.zero_chunks
            ),
            (1, 2, 1, 3)
        );
        assert_eq!(
            first.to_string(),
            format!(
                "backup: volume=vol version=1 bytes={} new_chunks=2 reused_chunks=1 zero_chunks=3",
                data.len()
            )
        );
        let again = backup(&store, &image, &options("vol")).await.unwrap();
        assert_eq!(
            (
                again.version,
                again.parent_version,
                again.new_chunks,
                again.reused_chunks
            ),
            (2, 1, 0, 3)
        );

        let index = store.read_index(&options("vol").volume, 1).await.unwrap();
        assert_eq!(index.volume_size_bytes, data.len() as u64);
        assert_eq!(index.chunks[1], ChunkRef::Zero);
        assert_eq!(index.chunks[0], index.chunks[2]);
        let ChunkRef::Data(last) = index.chunks[5] else {
            panic!("last chunk is data")
        };
        assert_eq!(
            &store.get_chunk(&last, 1000).await.unwrap()[..],
            &data[5 * 65536..]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_let_go_as_stored_is_read_again_when_the_store_lacks_it() {
        const CHUNK: usize = 65536;
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().join("store").to_str().unwrap(), true).unwrap();
        let image = dir.path().join("img");
        let mut data: Vec<u8> = (0..3 * CHUNK).map(|i| (i % 251) as u8 + 1).collect();
        std::fs::write(&image, &data).unwrap();
        let reader = Reader {
            source: Arc::new(read_lanes::Source {
                file: Arc::new(File::open(&image).unwrap()),
                path: image.clone(),
                size_bytes: data.len() as u64,
                chunk_size: ChunkSize::from_shift(16).unwrap(),
                rate_bytes_per_sec: None,
                stored: store.stored_hint(),
            }),
            pool: Arc::new(BufferPool::new(CHUNK)),
        };
        let (seen, marks) = (Mutex::default(), Announcer::new(&store));
        // As the lanes send a chunk the store seemed to hold: without its bytes.
        let let_go = |index: usize, bytes: &[u8]| ReadChunk {
            index: index as u64,
            len: CHUNK,
            hash: Some(ChunkHash::of(bytes)),
            data: None,
        };
        let chunk = |i: usize, data: &[u8]| data[i * CHUNK..(i + 1) * CHUNK].to_vec();
        let back_up = |read| back_up_chunk(&store, read, &seen, &reader, false, &marks);

        // Missing (a gc deleted it since): read again and stored.
        let fate = back_up(let_go(1, &chunk(1, &data))).await.unwrap();
        let hash = ChunkHash::of(&chunk(1, &data));
        assert!(matches!(fate, Fate::Written(h, _) if h == hash));
        assert_eq!(
            &store.get_chunk(&hash, CHUNK).await.unwrap()[..],
            &chunk(1, &data)[..]
        );

        // Damaged: read again and replaced.
        let hash = ChunkHash::of(&chunk(2, &data));
        let path = dir.path().join("store").join(hash.path().as_ref());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"\x00short").unwrap();
        let fate = back_up(let_go(2, &chunk(2, &data))).await.unwrap();
        assert!(matches!(fate, Fate::Repaired(h, _) if h == hash));
        assert_eq!(
            &store.get_chunk(&hash, CHUNK).await.unwrap()[..],
            &chunk(2, &data)[..]
        );

        // The source changed since chunk 0 was read: an error naming it, and nothing
        // stored (other chunks with the old bytes may count on this one to store them).
        let old = chunk(0, &data);
        data[5] ^= 0xFF;
        std::fs::write(&image, &data).unwrap();
        let e = back_up(let_go(0, &old)).await.err().unwrap();
        assert!(
            matches!(&e, BackupError::SourceChanged { path, offset_bytes: 0 } if path == &image),
            "{e}"
        );
        for bytes in [old, chunk(0, &data)] {
            assert!(!store.has_chunk(&ChunkHash::of(&bytes)).await.unwrap());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_stored_hint_answers_for_files_that_fit_the_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().join("store").to_str().unwrap(), true).unwrap();
        let hint = store.stored_hint().expect("a local store answers");
        let bytes = vec![7u8; 1000];
        let hash = ChunkHash::of(&bytes);
        assert!(!hint(&hash, bytes.len()), "nothing stored yet");
        store
            .encode_and_put(&hash, bytes.clone().into())
            .await
            .unwrap();
        assert!(hint(&hash, bytes.len()));
        assert!(!hint(&hash, 0), "too large for a chunk of that length");
    }

    /// A plan that takes every chunk of version 1 unread, as an incremental backup with
    /// nothing changed does.
    async fn unread_plan(store: &ChunkStore, volume: &VolumeName) -> Plan {
        let index_bytes = store.read_index_bytes(volume, 1).await.unwrap();
        let index = Index::decode(&index_bytes).unwrap();
        let zero = index
            .chunks
            .iter()
            .filter(|c| **c == ChunkRef::Zero)
            .count() as u64;
        Plan {
            unread_zero: zero,
            unread_data: index.chunks.len() as u64 - zero,
            chunks: index.chunks,
            read: Box::new(std::iter::empty()),
            read_count: 0,
            incremental_from: Some(1),
            base: Some(BaseIndex {
                volume: volume.clone(),
                version: 1,
                index_bytes,
            }),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unread_chunks_count_only_while_their_base_index_is_still_there() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().join("store").to_str().unwrap(), true).unwrap();
        let image = dir.path().join("img");
        std::fs::write(&image, vec![3u8; 3 * 65536]).unwrap();
        let opts = options("vol");
        backup(&store, &image, &opts).await.unwrap();
        let run_plan = |plan| {
            let (file, size) = open_source(&image).unwrap();
            run(&store, &image, file, size, &opts, plan, Instant::now())
        };

        // The base still there: a new version naming its chunks, nothing read.
        let again = run_plan(unread_plan(&store, &opts.volume).await)
            .await
            .unwrap();
        assert_eq!(
            (again.version, again.read_bytes, again.reused_chunks),
            (2, 0, 3)
        );

        // Forgotten after the plan was made (a gc may then have taken its chunks): no
        // version is published.
        let plan = unread_plan(&store, &opts.volume).await;
        std::fs::remove_file(dir.path().join("store/volumes/vol/versions/00000001.idx")).unwrap();
        let err = run_plan(plan).await.unwrap_err();
        assert!(err.to_string().contains("forgotten"), "{err}");
        assert_eq!(store.versions(&opts.volume).await.unwrap(), vec![2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_backup_announces_its_parents_chunks_in_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().join("store").to_str().unwrap(), true).unwrap();
        let image = dir.path().join("img");
        let data: Vec<u8> = (0..4u8).flat_map(|i| vec![i + 1; 65536]).collect();
        std::fs::write(&image, &data).unwrap();
        let opts = options("vol");
        backup(&store, &image, &opts).await.unwrap();
        let parent = store.read_index(&opts.volume, 1).await.unwrap();

        let marks = Announcer::new(&store);
        let batches = || {
            std::fs::read_dir(dir.path().join("store/pending"))
                .into_iter()
                .flatten()
                .flat_map(|backup| std::fs::read_dir(backup.unwrap().path()).unwrap())
                .count()
        };
        announce_parents_chunks(&store, &marks, &opts.volume, 1).await;
        assert_eq!(batches(), 1, "the parent's chunks in one batch");
        // Each chunk found again is announced already: no batch of its own.
        for chunk in &parent.chunks {
            let ChunkRef::Data(hash) = chunk else {
                panic!("no chunk of the image is zero")
            };
            assert!(!marks.announce(*hash).await.unwrap());
        }
        assert_eq!(batches(), 1);
        // A chunk the parent does not name is announced as before.
        assert!(!marks.announce(ChunkHash::of(b"new")).await.unwrap());
        assert_eq!(batches(), 2);
        marks.finish().await.unwrap();

        // A parent that cannot be read only means no batch ahead.
        let marks = Announcer::new(&store);
        announce_parents_chunks(&store, &marks, &opts.volume, 7).await;
        assert_eq!(batches(), 0);
        // And the backup itself, with its parent there, gives the same version.
        let again = backup(&store, &image, &opts).await.unwrap();
        assert_eq!((again.version, again.reused_chunks), (2, 4));
        assert_eq!(batches(), 0, "a backup withdraws its announcements");
    }

    #[tokio::test]
    async fn a_missing_source_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().to_str().unwrap(), true).unwrap();
        let err = backup(&store, &dir.path().join("nope"), &options("v"))
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("cannot read source"), "{err}");
    }
}
