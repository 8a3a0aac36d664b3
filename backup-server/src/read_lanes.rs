//! Reading, zero-checking and hashing a backup's chunks: on a few threads per core (the
//! lanes) for what the page cache holds, on the blocking pool for what must come from
//! the device.
//!
//! Why lanes rather than a blocking task per chunk: reading a cached chunk and hashing
//! it is pure CPU, so many more threads than cores only add thread creation, switches
//! and buffers. A task per chunk made a 2-core machine start a thread for each of an
//! incremental backup's 11 chunks, and the announcement's few file operations (see
//! [`crate::marks`]) queued behind them on the same pool: its wait, not the reading,
//! ended the read phase. A read that would wait for the device still goes to the
//! blocking pool, so uncached sources keep up to [`IN_FLIGHT_CHUNKS`] reads queued at
//! the device.
//!
//! Memory: at most [`IN_FLIGHT_CHUNKS`] chunk buffers are out at once, however the
//! work is spread between lanes, device reads and the caller: a lane waits for a
//! [`Permit`] before it takes a buffer, and the permit goes back when the caller drops
//! the [`ReadChunk`] it came with. (A chunk read again by [`read_again`], which is
//! rare, takes a buffer outside that allowance: waiting for a permit there could wait
//! for chunks that the caller, busy with it, never takes.)
//!
//! Bytes the store already holds are let go at once: a lane asks [`Source::stored`]
//! after hashing a chunk, and a chunk the store seems to hold (or an all-zero one)
//! goes out without its bytes, its buffer back in the pool before the lane takes the
//! next. The pool hands out the buffer given back last, so a re-backup of chunks
//! already stored keeps reusing as many buffers as there are lanes: a buffer's first
//! use is the costly one (the kernel zeroes its pages), and an incremental backup of
//! 11 MiB spent more time there than in hashing when each chunk took a fresh one. The
//! answer is only a hint (a gc may delete the chunk before the backup announces it, or
//! the file may be damaged): a caller that then finds the chunk missing reads it again
//! ([`read_again`]), and fails if the bytes are no longer those hashed.

use std::fs::File;
use std::path::PathBuf;
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

/// One chunk as read: its index and length, its hash (`None`: all zero), and its
/// bytes unless they were let go (see the module note).
pub(crate) struct ReadChunk {
    pub index: u64,
    pub len: usize,
    pub hash: Option<ChunkHash>,
    pub data: Option<Held>,
}

/// A chunk's bytes as kept for the caller.
pub(crate) struct Held {
    pub buf: ChunkBuf,
    /// Held until the caller is done with the bytes (see the module note); `None` for
    /// a chunk read again.
    pub permit: Option<Permit>,
}

/// Whether the store seems to hold a chunk of this hash and length: a quick answer
/// (a local store's `stat`), checked again by the caller.
pub(crate) type StoredHint = Arc<dyn Fn(&ChunkHash, usize) -> bool + Send + Sync>;

/// What the lanes read, and how.
pub(crate) struct Source {
    pub file: Arc<File>,
    pub path: PathBuf,
    pub size_bytes: u64,
    pub chunk_size: ChunkSize,
    /// Reads at most this many bytes per second (from when the lanes start).
    pub rate_bytes_per_sec: Option<u64>,
    /// Asked for each chunk read; `None`: every non-zero chunk keeps its bytes.
    pub stored: Option<StoredHint>,
}

impl Source {
    /// Chunk `index`'s offset and length in bytes.
    fn chunk_at(&self, index: u64) -> (u64, usize) {
        let len = self.chunk_size.chunk_len(self.size_bytes, index);
        debug_assert!(len > 0, "chunk {index} past the end");
        (index * self.chunk_size.bytes(), len)
    }

    fn error(&self, e: std::io::Error) -> BackupError {
        BackupError::Source {
            path: self.path.clone(),
            source: e,
        }
    }

    /// Zero check and hash of a chunk read whole; its bytes go back to `pool` unless
    /// the caller needs them (see the module note).
    fn finish(
        &self,
        index: u64,
        buf: ChunkBuf,
        permit: Option<Permit>,
        pool: &BufferPool,
    ) -> ReadChunk {
        let len = buf.len();
        let hash = hash_unless_zero(&buf);
        let needed = match (&hash, &self.stored) {
            (None, _) => false,
            (Some(hash), Some(stored)) => !stored(hash, len),
            (Some(_), None) => true,
        };
        let data = if needed {
            Some(Held { buf, permit })
        } else {
            pool.give(buf);
            None
        };
        ReadChunk {
            index,
            len,
            hash,
            data,
        }
    }
}

/// Reads chunk `index` again, whole and from wherever it is (the blocking pool's
/// business: call it there), for a caller whose chunk came without its bytes; the bytes
/// are always kept. The source may have changed since: the hash is the new bytes'.
pub(crate) fn read_again(
    source: &Source,
    pool: &BufferPool,
    index: u64,
) -> Result<ReadChunk, BackupError> {
    let (offset, len) = source.chunk_at(index);
    let mut buf = pool.take(len);
    source
        .file
        .read_exact_at(&mut buf, offset)
        .map_err(|e| source.error(e))?;
    Ok(ReadChunk {
        index,
        len,
        hash: hash_unless_zero(&buf),
        data: Some(Held { buf, permit: None }),
    })
}

/// A chunk's hash, `None` when all its bytes are zero (such chunks are not stored).
fn hash_unless_zero(bytes: &[u8]) -> Option<ChunkHash> {
    (!chunk::is_zero(bytes)).then(|| ChunkHash::of(bytes))
}

/// Starts reading the chunks `indices` names (in that order, a few at a time) into
/// buffers from `pool`, and returns where they arrive, in no set order. The first error
/// ends the reading; the lanes also stop once the receiver is dropped.
pub(crate) fn start(
    source: Arc<Source>,
    indices: Box<dyn Iterator<Item = u64> + Send>,
    pool: Arc<BufferPool>,
) -> mpsc::UnboundedReceiver<Result<ReadChunk, BackupError>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        source,
        indices: Mutex::new(indices),
        pool,
        permits: Arc::new(Permits::new(IN_FLIGHT_CHUNKS)),
        started: Instant::now(),
        device: tokio::runtime::Handle::current(),
    });
    for _ in 0..lanes() {
        let (shared, tx) = (Arc::clone(&shared), tx.clone());
        tokio::task::spawn_blocking(move || shared.run_lane(&tx));
    }
    rx
}

/// How many lanes read at once.
fn lanes() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_mul(LANES_PER_CORE)
        .clamp(1, IN_FLIGHT_CHUNKS)
}

type Sender = mpsc::UnboundedSender<Result<ReadChunk, BackupError>>;

struct Shared {
    source: Arc<Source>,
    indices: Mutex<Box<dyn Iterator<Item = u64> + Send>>,
    pool: Arc<BufferPool>,
    permits: Arc<Permits>,
    started: Instant,
    /// Where reads that must wait for the device go.
    device: tokio::runtime::Handle,
}

impl Shared {
    /// Takes chunks until none is left, an error, or nobody listens.
    fn run_lane(self: &Arc<Self>, tx: &Sender) {
        loop {
            if tx.is_closed() {
                return;
            }
            let Some(index) = self.indices.lock().ok().and_then(|mut i| i.next()) else {
                return;
            };
            let (offset, len) = self.source.chunk_at(index);
            if let Some(rate) = self.source.rate_bytes_per_sec {
                let due =
                    self.started + Duration::from_secs_f64(offset as f64 / rate.max(1) as f64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            let permit = self.permits.acquire();
            let mut data = self.pool.take(len);
            let cached = match read_cached_at(&self.source.file, &mut data, offset) {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.send(Err(self.source.error(e)));
                    return;
                }
            };
            if cached == len {
                let chunk = self.source.finish(index, data, Some(permit), &self.pool);
                if tx.send(Ok(chunk)).is_err() {
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
                    Ok(()) => Ok(shared
                        .source
                        .finish(index, data, Some(permit), &shared.pool)),
                    Err(e) => Err(shared.source.error(e)),
                });
            });
        }
    }
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
            stored: None,
        }
    }

    /// A chunk as received, copied out (so its permit goes back at once, as the
    /// backup's would).
    #[derive(Debug)]
    struct Got {
        index: u64,
        len: usize,
        data: Option<Vec<u8>>,
        hash: Option<ChunkHash>,
    }

    impl From<ReadChunk> for Got {
        fn from(c: ReadChunk) -> Got {
            Got {
                index: c.index,
                len: c.len,
                data: c.data.map(|held| held.buf.to_vec()),
                hash: c.hash,
            }
        }
    }

    /// Everything the lanes send, in chunk order (errors last).
    async fn read_all(source: Source, indices: Vec<u64>) -> Vec<Result<Got, BackupError>> {
        let pool = Arc::new(BufferPool::new(chunk().len()));
        let mut rx = start(Arc::new(source), Box::new(indices.into_iter()), pool);
        let mut all = Vec::new();
        while let Some(got) = rx.recv().await {
            all.push(got.map(Got::from));
        }
        all.sort_by_key(|r| r.as_ref().map_or(u64::MAX, |c| c.index));
        all
    }

    /// Each chunk of `want` arrived once, with its length and hash; with its bytes when
    /// it is not all zero and `kept` (the store did not seem to hold it), else without.
    fn assert_read_as_in_kept(
        chunks: &[Result<Got, BackupError>],
        bytes: &[u8],
        want: &[u64],
        kept: bool,
    ) {
        let got: Vec<u64> = chunks.iter().map(|c| c.as_ref().unwrap().index).collect();
        assert_eq!(got, want, "each chunk asked for, once");
        for read in chunks {
            let read = read.as_ref().unwrap();
            let start = (read.index * chunk().bytes()) as usize;
            let expected = &bytes[start..(start + chunk().len()).min(bytes.len())];
            assert_eq!(read.len, expected.len(), "chunk {}", read.index);
            let zero = expected.iter().all(|&b| b == 0);
            assert_eq!(read.hash, (!zero).then(|| ChunkHash::of(expected)));
            let data = read.data.as_deref();
            assert_eq!(
                data,
                (kept && !zero).then_some(expected),
                "chunk {}",
                read.index
            );
        }
    }

    fn assert_read_as_in(chunks: &[Result<Got, BackupError>], bytes: &[u8], want: &[u64]) {
        assert_read_as_in_kept(chunks, bytes, want, true);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_chunk_asked_for_arrives_once_with_its_bytes_and_hash() {
        // 40 chunks (more than are in flight at once) and a short last one.
        let (_dir, path, bytes) = image(40, 1000);
        let want: Vec<u64> = (0..41).filter(|i| i % 3 != 2).collect();
        let chunks = read_all(source(&path, bytes.len() as u64), want.clone()).await;
        assert_read_as_in(&chunks, &bytes, &want);
        assert_eq!(chunks.last().unwrap().as_ref().unwrap().len, 1000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_the_store_seems_to_hold_come_without_bytes_and_reuse_few_buffers() {
        let (_dir, path, bytes) = image(40, 1000);
        let mut held = source(&path, bytes.len() as u64);
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&asked);
        held.stored = Some(Arc::new(move |hash: &ChunkHash, len: usize| {
            log.lock().unwrap().push((*hash, len));
            true
        }));
        let pool = Arc::new(BufferPool::new(chunk().len()));
        let want: Vec<u64> = (0..41).collect();
        let mut rx = start(
            Arc::new(held),
            Box::new(want.clone().into_iter()),
            Arc::clone(&pool),
        );
        // Every chunk kept as received, as a caller still busy with them would.
        let mut received = Vec::new();
        // (Chunks holding their buffers would stop the lanes at the allowance.)
        let wait = Duration::from_secs(10);
        while let Some(chunk) = tokio::time::timeout(wait, rx.recv()).await.unwrap() {
            received.push(chunk.unwrap());
        }
        received.sort_by_key(|c| c.index);
        let slots_touched = pool.slots_touched();
        let chunks: Vec<_> = received.into_iter().map(|c| Ok(Got::from(c))).collect();
        assert_read_as_in_kept(&chunks, &bytes, &want, false);
        // Asked once for each non-zero chunk, with its hash and length.
        let mut asked = asked.lock().unwrap().clone();
        asked.sort_by_key(|(_, len)| *len);
        let non_zero: Vec<_> = chunks
            .iter()
            .filter_map(|c| {
                c.as_ref()
                    .unwrap()
                    .hash
                    .map(|h| (h, c.as_ref().unwrap().len))
            })
            .collect();
        assert_eq!(asked.len(), non_zero.len());
        assert!(non_zero.iter().all(|c| asked.contains(c)));
        // A buffer given back before its lane takes the next is the one it takes: no
        // more buffers were ever used than lanes read at once.
        if let Some(touched) = slots_touched {
            assert!(
                touched <= lanes(),
                "{touched} buffers for {} lanes",
                lanes()
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_read_again_comes_with_the_bytes_the_source_holds_now() {
        let (_dir, path, mut bytes) = image(3, 1000);
        let mut held = source(&path, bytes.len() as u64);
        held.stored = Some(Arc::new(|_: &ChunkHash, _| true));
        let pool = BufferPool::new(chunk().len());
        let again = Got::from(read_again(&held, &pool, 3).unwrap());
        assert_eq!(again.data.as_deref(), Some(&bytes[3 * chunk().len()..]));
        assert_eq!(again.hash, Some(ChunkHash::of(&bytes[3 * chunk().len()..])));
        // Chunk 1 changed since it was read.
        bytes[chunk().len()] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        let again = Got::from(read_again(&held, &pool, 1).unwrap());
        let now = &bytes[chunk().len()..2 * chunk().len()];
        assert_eq!(
            (again.data.as_deref(), again.hash),
            (Some(now), Some(ChunkHash::of(now)))
        );
        // Chunk 0 is all zero: kept all the same (the caller asked for the bytes).
        let again = Got::from(read_again(&held, &pool, 0).unwrap());
        assert_eq!((again.len, again.hash), (chunk().len(), None));
        assert!(again.data.is_some());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_not_in_the_page_cache_are_read_from_the_device_alike() {
        let (_dir, path, bytes) = image(24, 0);
        let file = File::open(&path).unwrap();
        file.sync_all().unwrap();
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let want: Vec<u64> = (0..24).collect();
        let chunks = read_all(source(&path, bytes.len() as u64), want.clone()).await;
        assert_read_as_in(&chunks, &bytes, &want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_source_shorter_than_said_is_an_error_naming_it() {
        // Said to hold 4 chunks, holds 2 and a half.
        let (_dir, path, _) = image(2, 100);
        let chunks = read_all(source(&path, 4 * chunk().bytes()), (0..4).collect()).await;
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
        let mut rx = start(Arc::new(source(&path, bytes.len() as u64)), indices, pool);
        let mut held = Vec::new();
        // All-zero chunks come without their bytes, and hold no permit.
        while held.len() < IN_FLIGHT_CHUNKS {
            let chunk = rx.recv().await.unwrap().unwrap();
            if chunk.data.is_some() {
                held.push(chunk);
            }
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
        let source = Arc::new(source(&path, bytes.len() as u64));
        let file = Arc::clone(&source.file);
        let pool = Arc::new(BufferPool::new(chunk().len()));
        let mut rx = start(source, Box::new(0..(IN_FLIGHT_CHUNKS * 4) as u64), pool);
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
    async fn a_rate_limit_paces_the_reads() {
        // 4 chunks of 64 KiB at 1 MiB/s: the last starts 192 KiB in, at 0.1875 s.
        let (_dir, path, bytes) = image(4, 0);
        let mut paced = source(&path, bytes.len() as u64);
        paced.rate_bytes_per_sec = Some(1 << 20);
        let started = Instant::now();
        let chunks = read_all(paced, (0..4).collect()).await;
        assert!(
            started.elapsed() >= Duration::from_millis(187),
            "{:?}",
            started.elapsed()
        );
        assert_read_as_in(&chunks, &bytes, &[0, 1, 2, 3]);
    }
}
