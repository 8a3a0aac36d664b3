//! Reading, zero-checking and hashing a backup's chunks: on one thread per core for
//! what the page cache holds, on the blocking pool for what must come from the device.
//!
//! Why lanes rather than a blocking task per chunk: reading a cached chunk and hashing
//! it is pure CPU, so more threads than cores only add thread creation, switches and
//! buffers. A task per chunk made a 2-core machine start a thread for each of an
//! incremental backup's 11 chunks, and the announcement's few file operations (see
//! [`crate::marks`]) queued behind them on the same pool: its wait, not the reading,
//! ended the read phase. A read that would wait for the device still goes to the
//! blocking pool, so uncached sources keep up to [`IN_FLIGHT_CHUNKS`] reads queued at
//! the device.
//!
//! # Hashing first
//!
//! A chunk the store already holds needs only its hash, not its bytes. Kept whole, each
//! such chunk costs a buffer of fresh memory (a page fault and zeroing per page the
//! first time, a huge page compacted out of fragmented memory at worst) and is hashed
//! from memory rather than from the cache: an incremental backup's 11 MiB took longer
//! that way than reading and hashing them. So a lane reads a cached chunk in pieces
//! into its own small buffer and hashes as it goes, unless most chunks checked so far
//! had to be stored (then the bytes are wanted: it keeps them whole), or the backup
//! expects new chunks (see [`Expect`]). A chunk that turns out new is read again whole
//! ([`Reader::whole`]); if the source changed between the two reads, the second read
//! is what is backed up (it is hashed again).
//!
//! Memory: at most [`IN_FLIGHT_CHUNKS`] chunk buffers are out at once, however the
//! work is spread between lanes, device reads and the caller: a lane waits for a
//! [`Permit`] before it takes a chunk, the permit goes back when the caller drops the
//! [`ReadChunk`] it came with, and a whole read for that chunk is made under it.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rehydrate_nbd::positional::read_cached_at;
use rehydrate_nbd::PositionalIo;
use tokio::sync::mpsc;

use crate::backup::IN_FLIGHT_CHUNKS;
use crate::chunk::{self, ChunkHash};
use crate::chunk_buf::{BufferPool, ChunkBuf};
use crate::error::BackupError;
use crate::size::ChunkSize;

/// Lanes per core. One per core left the cores idle whenever the store's work for the
/// chunks already read (announcing, checking, fsyncs: short waits on other threads)
/// preempted a lane: a full re-backup of a cached 1 GiB took 11% longer than with a
/// thread per chunk; two per core matched it (four on 2 cores: no better).
const LANES_PER_CORE: usize = 2;

/// The piece a lane reads and hashes at a time when it does not keep a chunk: small
/// enough to stay in the core's cache between the read and the hash.
const PIECE_BYTES: usize = 128 << 10;

/// What the chunks read are expected to be, until the store says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// New: a first backup, or one with nothing to compare against. Read whole.
    New,
    /// Mostly stored already (a backup with a parent or base version): hashed first.
    Stored,
}

/// One chunk as read: its index and length, its hash (`None`: all zero), and its bytes
/// if the lane kept them.
pub(crate) struct ReadChunk {
    pub index: u64,
    pub len: usize,
    pub data: Option<ChunkBuf>,
    pub hash: Option<ChunkHash>,
    /// Held until the caller is done with the chunk (see the module note).
    pub permit: Permit,
}

/// What the lanes read, and how.
pub(crate) struct Source {
    pub file: Arc<File>,
    pub path: PathBuf,
    pub size_bytes: u64,
    pub chunk_size: ChunkSize,
    /// Reads at most this many bytes per second (from when the lanes start).
    pub rate_bytes_per_sec: Option<u64>,
}

/// Starts reading the chunks `indices` names (in that order, a few at a time), whole
/// chunks into buffers from `pool`, and returns the handle for reading one again whole
/// and where the chunks arrive, in no set order. The first error ends the reading; the
/// lanes also stop once the receiver is dropped.
pub(crate) fn start(
    source: Source,
    indices: Box<dyn Iterator<Item = u64> + Send>,
    pool: Arc<BufferPool>,
    expect: Expect,
) -> (
    Reader,
    mpsc::UnboundedReceiver<Result<ReadChunk, BackupError>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let lanes = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_mul(LANES_PER_CORE)
        .clamp(1, IN_FLIGHT_CHUNKS);
    let shared = Arc::new(Shared {
        source,
        indices: Mutex::new(indices),
        pool,
        permits: Arc::new(Permits::new(IN_FLIGHT_CHUNKS)),
        started: Instant::now(),
        device: tokio::runtime::Handle::current(),
        expect,
        found_new: AtomicU64::new(0),
        found_stored: AtomicU64::new(0),
    });
    for _ in 0..lanes {
        let (shared, tx) = (Arc::clone(&shared), tx.clone());
        tokio::task::spawn_blocking(move || shared.run_lane(&tx));
    }
    (Reader(shared), rx)
}

/// The caller's side of the lanes: reads a chunk again whole, and hears what the store
/// had, which decides whether the lanes keep the chunks they read.
#[derive(Clone)]
pub(crate) struct Reader(Arc<Shared>);

impl Reader {
    /// Chunk `index`, read whole (on the blocking pool), and its hash; for a chunk
    /// read without its bytes that must now be stored. Call it while holding the
    /// chunk's [`Permit`]: the buffer is that permit's.
    pub(crate) async fn whole(
        &self,
        index: u64,
    ) -> Result<(ChunkBuf, Option<ChunkHash>), BackupError> {
        let shared = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            let (offset, len) = shared.span(index);
            let mut data = shared.pool.take(len);
            shared
                .source
                .file
                .read_exact_at(&mut data, offset)
                .map_err(|e| shared.source_error(e))?;
            let hash = hash_of(&data);
            Ok((data, hash))
        })
        .await
        .map_err(|e| BackupError::Internal(e.to_string()))?
    }

    /// The store held a chunk read (`true`) or it had to be stored (`false`).
    pub(crate) fn found(&self, stored: bool) {
        let count = if stored {
            &self.0.found_stored
        } else {
            &self.0.found_new
        };
        count.fetch_add(1, Ordering::Relaxed);
    }
}

type Sender = mpsc::UnboundedSender<Result<ReadChunk, BackupError>>;

struct Shared {
    source: Source,
    indices: Mutex<Box<dyn Iterator<Item = u64> + Send>>,
    pool: Arc<BufferPool>,
    permits: Arc<Permits>,
    started: Instant,
    /// Where reads that must wait for the device go.
    device: tokio::runtime::Handle,
    expect: Expect,
    /// What the store had of the chunks checked so far (see [`Reader::found`]).
    found_new: AtomicU64,
    found_stored: AtomicU64,
}

impl Shared {
    /// Takes chunks until none is left, an error, or nobody listens.
    fn run_lane(self: &Arc<Self>, tx: &Sender) {
        // This lane's piece buffer, made once (see `PIECE_BYTES`).
        let mut piece = vec![0u8; PIECE_BYTES.min(self.source.chunk_size.len())];
        loop {
            if tx.is_closed() {
                return;
            }
            let Some(index) = self.indices.lock().ok().and_then(|mut i| i.next()) else {
                return;
            };
            let (offset, len) = self.span(index);
            if let Some(rate) = self.source.rate_bytes_per_sec {
                let due =
                    self.started + Duration::from_secs_f64(offset as f64 / rate.max(1) as f64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            let permit = self.permits.acquire();
            if !self.keeps_whole() {
                match self.hash_cached(&mut piece, offset, len) {
                    Ok(Some(hash)) => {
                        let chunk = ReadChunk {
                            index,
                            len,
                            data: None,
                            hash,
                            permit,
                        };
                        if tx.send(Ok(chunk)).is_err() {
                            return;
                        }
                        continue;
                    }
                    // Not all cached: read whole, below.
                    Ok(None) => {}
                    Err(e) => {
                        let _ = tx.send(Err(self.source_error(e)));
                        return;
                    }
                }
            }
            let mut data = self.pool.take(len);
            let cached = match read_cached_at(&self.source.file, &mut data, offset) {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.send(Err(self.source_error(e)));
                    return;
                }
            };
            if cached == len {
                if tx.send(Ok(finish(index, data, permit))).is_err() {
                    return;
                }
                continue;
            }
            // The rest must come from the device: on the blocking pool, so this lane
            // goes on with the next chunk (bounded by the permits).
            let (shared, tx) = (Arc::clone(self), tx.clone());
            self.device.spawn_blocking(move || {
                let read = shared
                    .source
                    .file
                    .read_exact_at(&mut data[cached..], offset + cached as u64);
                let _ = tx.send(match read {
                    Ok(()) => Ok(finish(index, data, permit)),
                    Err(e) => Err(shared.source_error(e)),
                });
            });
        }
    }

    /// Where chunk `index` starts, and its length.
    fn span(&self, index: u64) -> (u64, usize) {
        let chunk_bytes = self.source.chunk_size.bytes();
        let offset = index * chunk_bytes;
        debug_assert!(
            offset < self.source.size_bytes,
            "chunk {index} past the end"
        );
        (
            offset,
            (self.source.size_bytes - offset).min(chunk_bytes) as usize,
        )
    }

    /// Whether lanes read chunks whole now: when new ones are expected, or once most
    /// chunks checked had to be stored.
    fn keeps_whole(&self) -> bool {
        let new = self.found_new.load(Ordering::Relaxed);
        let stored = self.found_stored.load(Ordering::Relaxed);
        match self.expect {
            Expect::New => new >= stored,
            Expect::Stored => new > stored,
        }
    }

    /// The hash of the `len` bytes at `offset`, read piece by piece into `piece` from
    /// the page cache only (`Some(None)`: all zero); `None` if a piece is not cached.
    fn hash_cached(
        &self,
        piece: &mut [u8],
        offset: u64,
        len: usize,
    ) -> std::io::Result<Option<Option<ChunkHash>>> {
        let mut hasher = blake3::Hasher::new();
        let mut zero = true;
        let mut done = 0;
        while done < len {
            let part_len = (len - done).min(piece.len());
            let part = &mut piece[..part_len];
            if read_cached_at(&self.source.file, part, offset + done as u64)? < part.len() {
                return Ok(None);
            }
            zero = zero && chunk::is_zero(part);
            hasher.update(part);
            done += part.len();
        }
        debug_assert_eq!(done, len);
        Ok(Some(
            (!zero).then(|| ChunkHash(*hasher.finalize().as_bytes())),
        ))
    }

    fn source_error(&self, e: std::io::Error) -> BackupError {
        BackupError::Source {
            path: self.source.path.clone(),
            source: e,
        }
    }
}

/// Zero check and hash of a chunk read whole.
fn finish(index: u64, data: ChunkBuf, permit: Permit) -> ReadChunk {
    ReadChunk {
        index,
        len: data.len(),
        hash: hash_of(&data),
        data: Some(data),
        permit,
    }
}

/// A chunk's hash, `None` if it is all zero.
fn hash_of(data: &[u8]) -> Option<ChunkHash> {
    (!chunk::is_zero(data)).then(|| ChunkHash::of(data))
}

/// A counting semaphore for blocking threads: the lanes wait on it, whoever drops a
/// [`Permit`] (on any thread, async or not) wakes one of them. Tokio's semaphore would
/// need each lane to block on an async acquire; this is the plain version.
struct Permits {
    free: Mutex<usize>,
    returned: Condvar,
}

impl Permits {
    fn new(count: usize) -> Permits {
        assert!(count > 0, "no permits would stall every lane");
        Permits {
            free: Mutex::new(count),
            returned: Condvar::new(),
        }
    }

    fn acquire(self: &Arc<Self>) -> Permit {
        // A poisoned lock only means another lane panicked; the count is still right.
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.returned.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Permit(Arc::clone(self))
    }
}

/// One chunk buffer's worth of the lanes' allowance, returned when dropped.
pub(crate) struct Permit(Arc<Permits>);

impl Drop for Permit {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.returned.notify_one();
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest chunk size (64 KiB), for small test images.
    const CHUNK_SHIFT: u8 = crate::size::MIN_CHUNK_SHIFT;

    fn chunk() -> ChunkSize {
        ChunkSize::from_shift(CHUNK_SHIFT).unwrap()
    }

    /// A file of `chunks` whole chunks and `tail_bytes` more: chunk `i` is filled with
    /// byte `i % 7` (so chunks 0, 7, 14, … are all zero), the tail with 0xEE.
    fn image(chunks: usize, tail_bytes: usize) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let mut bytes = Vec::new();
        for i in 0..chunks {
            bytes.extend(std::iter::repeat_n((i % 7) as u8, chunk().len()));
        }
        bytes.extend(std::iter::repeat_n(0xEE, tail_bytes));
        std::fs::write(&path, &bytes).unwrap();
        (dir, path, bytes)
    }

    fn source(path: &std::path::Path, size_bytes: u64) -> Source {
        Source {
            file: Arc::new(File::open(path).unwrap()),
            path: path.to_owned(),
            size_bytes,
            chunk_size: chunk(),
            rate_bytes_per_sec: None,
        }
    }

    /// A chunk as received, copied out (so its permit goes back at once, as the
    /// backup's would); `data` is empty when the lane kept no bytes.
    #[derive(Debug)]
    struct Got {
        index: u64,
        len: usize,
        data: Vec<u8>,
        hash: Option<ChunkHash>,
    }

    /// Everything the lanes send, in chunk order (errors last).
    async fn read_all(
        source: Source,
        indices: Vec<u64>,
        expect: Expect,
    ) -> Vec<Result<Got, BackupError>> {
        let pool = Arc::new(BufferPool::new(chunk().len()));
        let (_reader, mut rx) = start(source, Box::new(indices.into_iter()), pool, expect);
        let mut all = Vec::new();
        while let Some(got) = rx.recv().await {
            all.push(got.map(|c| Got {
                index: c.index,
                len: c.len,
                data: c.data.as_deref().map(<[u8]>::to_vec).unwrap_or_default(),
                hash: c.hash,
            }));
        }
        all.sort_by_key(|r| r.as_ref().map_or(u64::MAX, |c| c.index));
        all
    }

    fn assert_read_as_in(chunks: &[Result<Got, BackupError>], bytes: &[u8], want: &[u64]) {
        let got: Vec<u64> = chunks.iter().map(|c| c.as_ref().unwrap().index).collect();
        assert_eq!(got, want, "each chunk asked for, once");
        for read in chunks {
            let read = read.as_ref().unwrap();
            let start = (read.index * chunk().bytes()) as usize;
            let expected = &bytes[start..(start + chunk().len()).min(bytes.len())];
            assert_eq!(read.len, expected.len(), "chunk {}", read.index);
            if !read.data.is_empty() {
                assert_eq!(&read.data[..], expected, "chunk {}", read.index);
            }
            let zero = expected.iter().all(|&b| b == 0);
            assert_eq!(read.hash, (!zero).then(|| ChunkHash::of(expected)));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_chunk_asked_for_arrives_once_with_its_bytes_and_hash() {
        // 40 chunks (more than are in flight at once) and a short last one.
        let (_dir, path, bytes) = image(40, 1000);
        let want: Vec<u64> = (0..41).filter(|i| i % 3 != 2).collect();
        for expect in [Expect::New, Expect::Stored] {
            let chunks = read_all(source(&path, bytes.len() as u64), want.clone(), expect).await;
            assert_read_as_in(&chunks, &bytes, &want);
            let kept = chunks
                .iter()
                .filter(|c| !c.as_ref().unwrap().data.is_empty());
            match expect {
                // New chunks are wanted whole; stored ones only hashed (none is found
                // here, as nobody calls `found`).
                Expect::New => assert_eq!(kept.count(), want.len()),
                Expect::Stored => assert_eq!(kept.count(), 0),
            }
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_not_in_the_page_cache_are_read_from_the_device_alike() {
        let (_dir, path, bytes) = image(24, 0);
        let file = File::open(&path).unwrap();
        file.sync_all().unwrap();
        let want: Vec<u64> = (0..24).collect();
        for expect in [Expect::New, Expect::Stored] {
            rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            let chunks = read_all(source(&path, bytes.len() as u64), want.clone(), expect).await;
            assert_read_as_in(&chunks, &bytes, &want);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_source_shorter_than_said_is_an_error_naming_it() {
        // Said to hold 4 chunks, holds 2 and a half.
        let (_dir, path, _) = image(2, 100);
        let chunks = read_all(
            source(&path, 4 * chunk().bytes()),
            (0..4).collect(),
            Expect::New,
        )
        .await;
        let error = chunks
            .iter()
            .find_map(|c| c.as_ref().err())
            .expect("a chunk past the end fails");
        match error {
            BackupError::Source { path: named, .. } => assert_eq!(named, &path),
            other => panic!("not a source error: {other}"),
        }
        assert!(
            chunks[0].is_ok() && chunks[1].is_ok(),
            "the chunks before read"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_chunks_are_out_than_may_be_in_flight() {
        let (_dir, path, bytes) = image(IN_FLIGHT_CHUNKS + 8, 0);
        let pool = Arc::new(BufferPool::new(chunk().len()));
        let indices = Box::new(0..(IN_FLIGHT_CHUNKS + 8) as u64);
        let (_reader, mut rx) = start(
            source(&path, bytes.len() as u64),
            indices,
            pool,
            Expect::New,
        );
        let mut held = Vec::new();
        for _ in 0..IN_FLIGHT_CHUNKS {
            held.push(rx.recv().await.unwrap().unwrap());
        }
        // Every permit is held here: the lanes wait for one.
        let more = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        assert!(more.is_err(), "a chunk beyond the allowance arrived");
        drop(held.pop());
        let next = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert!(
            next.unwrap().unwrap().is_ok(),
            "a returned permit lets one more through"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lanes_stop_once_nobody_listens() {
        let (_dir, path, bytes) = image(IN_FLIGHT_CHUNKS * 4, 0);
        let source = source(&path, bytes.len() as u64);
        let file = Arc::clone(&source.file);
        let pool = Arc::new(BufferPool::new(chunk().len()));
        let indices = Box::new(0..(IN_FLIGHT_CHUNKS * 4) as u64);
        let (reader, mut rx) = start(source, indices, pool, Expect::New);
        drop(reader);
        let first = rx.recv().await.unwrap().unwrap();
        drop((first, rx));
        // The lanes (and reads on the blocking pool) hold the file while they run.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&file) > 1 {
            assert!(Instant::now() < deadline, "the lanes went on reading");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_read_without_its_bytes_is_read_again_whole_and_new_ones_switch_the_lanes() {
        let chunks = IN_FLIGHT_CHUNKS * 6;
        let (_dir, path, bytes) = image(chunks, 0);
        let pool = Arc::new(BufferPool::new(chunk().len()));
        let indices = Box::new(0..chunks as u64);
        let (reader, mut rx) = start(
            source(&path, bytes.len() as u64),
            indices,
            pool,
            Expect::Stored,
        );
        let first = rx.recv().await.unwrap().unwrap();
        assert!(first.data.is_none(), "hashed without its bytes first");
        // Read again whole: the same bytes, the same hash.
        let (whole, hash) = reader.whole(first.index).await.unwrap();
        let start = (first.index * chunk().bytes()) as usize;
        assert_eq!(&whole[..], &bytes[start..start + chunk().len()]);
        assert_eq!(hash, first.hash);
        drop((whole, first));
        // Every chunk had to be stored: the lanes keep the bytes from then on.
        for _ in 0..4 {
            reader.found(false);
        }
        let mut kept = 0;
        while let Some(got) = rx.recv().await {
            kept += usize::from(got.unwrap().data.is_some());
        }
        // Chunks already taken by a lane when the news came may still come bare.
        assert!(
            kept >= chunks - 1 - 2 * IN_FLIGHT_CHUNKS,
            "only {kept} kept"
        );
    }
}
