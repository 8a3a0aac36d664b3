//! The handshake that lets `gc` run while backups run: backups announce the chunks they
//! are about to reference; `gc` announces the chunks it is about to delete.
//!
//! Why not a grace period on chunk age: a backup that finds a chunk already stored
//! reuses it without writing it, so the chunk can be old, unreferenced (its versions
//! forgotten), and about to be deleted by a `gc` that cannot see the backup's index
//! yet. Age says nothing about that reuse, and object stores cannot "touch" an object
//! cheaply. So both sides write before they read (as in Dekker's algorithm):
//!
//! - a backup writes each chunk hash to `pending/ID/NNNNNNNN` *before* it checks whether
//!   the store has the chunk, then reads `gc/condemned`; if a running gc condemned the
//!   chunk, the backup waits for that gc to end and checks again (storing the chunk if
//!   it is gone). It deletes its `pending/ID/` objects after publishing its index.
//! - `gc` lists chunks, live pending hashes and indexes, writes the unreferenced chunks
//!   to `gc/condemned` (create-if-not-exists: one gc at a time), lists pending hashes
//!   and indexes *again*, and deletes only the condemned chunks still unreferenced.
//!   Pending hashes are listed before indexes each time: a backup deletes its pending
//!   objects only after publishing its index, so what a listing of pending objects
//!   misses, the later listing of indexes finds.
//!
//! Either the backup's announcement came before gc's second listing (gc sees it and
//! spares the chunk) or after gc's condemned list was written (the backup sees the
//! chunk condemned and waits). Object stores here are strongly consistent (S3 has been
//! since 2020; a local directory trivially). A killed backup's pending hashes protect
//! its chunks until they are older than the pending expiry (`gc --pending-expiry`,
//! default 24 hours); a backup must therefore not stall longer than that.
//!
//! Both objects have one format, integers little-endian:
//!
//! ```text
//! offset  size  field
//!      0     8  magic: "RHYDPEND" (pending hashes) or "RHYDCOND" (condemned chunks)
//!      8     4  format version = 1
//!     12     4  reserved, 0
//!     16     8  hash count N
//!     24  32*N  chunk hashes
//! 24+32N    32  checksum: BLAKE3 of every byte before it
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

use crate::chunk::ChunkHash;
use crate::error::BackupError;
use crate::store::{local_io, ChunkStore};

/// Magic of a backup's pending hashes.
pub const PENDING_MAGIC: [u8; 8] = *b"RHYDPEND";
/// Magic of a gc's condemned chunks.
pub const CONDEMNED_MAGIC: [u8; 8] = *b"RHYDCOND";
const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 24;
const CHECKSUM_BYTES: usize = 32;
/// How often a backup waiting on a gc looks again.
const GC_POLL: Duration = Duration::from_millis(250);
/// Longest a backup waits for a gc holding a chunk it needs.
pub const MAX_GC_WAIT: Duration = Duration::from_secs(3600);

const _: () = assert!(std::mem::size_of::<ChunkHash>() == 32);

/// Why bytes are not a marks object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarksError {
    /// Shorter than header and checksum.
    #[error("truncated: {0} bytes")]
    Truncated(usize),
    /// Not the magic expected.
    #[error("bad magic")]
    BadMagic,
    /// Unknown format version or reserved bits set.
    #[error("unsupported format {0}")]
    Unsupported(u32),
    /// The length does not match the count.
    #[error("length {found} bytes does not match {count} hashes")]
    Length {
        /// Actual length.
        found: usize,
        /// Declared count.
        count: u64,
    },
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
}

/// Encode `hashes` under `magic`.
pub fn encode(magic: [u8; 8], hashes: &[ChunkHash]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + 32 * hashes.len() + CHECKSUM_BYTES);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(hashes.len() as u64).to_le_bytes());
    for h in hashes {
        out.extend_from_slice(&h.0);
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Decode an object written by [`encode`] with `magic`; checks every field before
/// allocating, so it allocates at most what the input's length justifies.
pub fn decode(magic: [u8; 8], bytes: &[u8]) -> Result<Vec<ChunkHash>, MarksError> {
    if bytes.len() < HEADER_BYTES + CHECKSUM_BYTES {
        return Err(MarksError::Truncated(bytes.len()));
    }
    if bytes[..8] != magic {
        return Err(MarksError::BadMagic);
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    if word(8) != FORMAT_VERSION || word(12) != 0 {
        return Err(MarksError::Unsupported(word(8)));
    }
    let mut count_bytes = [0u8; 8];
    count_bytes.copy_from_slice(&bytes[16..24]);
    let count = u64::from_le_bytes(count_bytes);
    let body = bytes.len() - HEADER_BYTES - CHECKSUM_BYTES;
    if body % 32 != 0 || (body / 32) as u64 != count {
        return Err(MarksError::Length {
            found: bytes.len(),
            count,
        });
    }
    let (signed, sum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
    if blake3::hash(signed).as_bytes() != sum {
        return Err(MarksError::Checksum);
    }
    Ok(signed[HEADER_BYTES..]
        .chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            ChunkHash(h)
        })
        .collect())
}

/// `gc/condemned`.
pub fn condemned_path() -> Path {
    Path::from_iter(["gc", "condemned"])
}

/// `pending/`.
pub fn pending_root() -> Path {
    Path::from("pending")
}

/// Read and decode a marks object; `None` if it does not exist.
pub async fn read(
    objects: &dyn ObjectStore,
    path: &Path,
    magic: [u8; 8],
) -> Result<Option<Vec<ChunkHash>>, BackupError> {
    let bytes = match objects.get(path).await {
        Ok(got) => got.bytes().await.map_err(|e| BackupError::store(path, e))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(BackupError::store(path, e)),
    };
    decode(magic, &bytes)
        .map(Some)
        .map_err(|e| BackupError::Marks {
            path: path.to_string(),
            source: e,
        })
}

/// The identity of one `gc/condemned` object (one gc run): its entity tag and its
/// last-modified time in nanoseconds, to notice it went or was replaced. A local store's
/// tag is made by [`local_condemned_tag`]; tags are only compared with tags made the
/// same way, by [`Announcer::condemned_tag`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct RunTag(Option<String>, i64);

async fn condemned_tag(objects: &dyn ObjectStore) -> Result<Option<RunTag>, BackupError> {
    let path = condemned_path();
    match objects.head(&path).await {
        Ok(meta) => Ok(Some(RunTag(
            meta.e_tag,
            meta.last_modified.timestamp_nanos_opt().unwrap_or_default(),
        ))),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(BackupError::store(&path, e)),
    }
}

/// The tag of a local store's `gc/condemned` file, by `stat`: a gc run writes the file
/// anew (another inode, another time), and removes it when it ends.
fn local_condemned_tag(root: &std::path::Path) -> std::io::Result<Option<RunTag>> {
    let meta = match std::fs::metadata(root.join(condemned_path().as_ref())) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0u64;
    let modified_nanos = meta
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    Ok(Some(RunTag(
        Some(format!("{inode:x}-{:x}", meta.len())),
        modified_nanos,
    )))
}

/// Writes a local store's batch file as the object store's put would (a temporary name
/// beside it, then renamed into place; its directory made if missing), then reads the
/// gc's tag: in one blocking call. Locally, each hop to the blocking pool is a thread
/// wake-up, and on a machine whose cores are busy reading and hashing the backup's
/// chunks, the two hops a put and a head took were the longest wait of a small
/// incremental backup.
fn local_put_then_tag(
    root: &std::path::Path,
    path: &Path,
    bytes: &[u8],
) -> std::io::Result<Option<RunTag>> {
    let file = root.join(path.as_ref());
    let (mut staging_file, staging) = crate::local_chunk::create_staging(&file)?;
    let written = std::io::Write::write_all(&mut staging_file, bytes)
        .and_then(|()| std::fs::rename(&staging, &file));
    if written.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    written?;
    local_condemned_tag(root)
}

/// A backup's side of the handshake: announces hashes in batches and keeps the newest
/// condemned list it has read.
///
/// Batches are group commits: one caller writes a batch while the others' hashes queue
/// for the next, and when a batch is visible every caller it covered goes on at once.
/// (With an async lock held across the write, the callers a batch covered took the lock
/// one after another afterwards, a task wake-up each: a chain that ended an incremental
/// backup's read phase most of a millisecond after its last chunk was hashed.)
pub struct Announcer {
    store: ChunkStore,
    id: String,
    state: Mutex<AnnouncerState>,
    /// Woken whenever a batch's write ends, whichever way.
    batch_ended: tokio::sync::Notify,
}

#[derive(Default)]
struct AnnouncerState {
    /// Batches numbered so far (their objects are `pending/ID/1..=batches`).
    batches: u32,
    /// Hashes in batches that are visible.
    announced: HashSet<ChunkHash>,
    /// Hashes waiting for the next batch (none of them announced).
    queued: HashSet<ChunkHash>,
    /// A batch is being written.
    writing: bool,
    condemned: Option<(RunTag, Arc<HashSet<ChunkHash>>)>,
}

/// The writer's claim on the announcer while its batch is written. Dropped before the
/// write ended (the backup was cancelled) or after it failed, it puts the batch's
/// hashes back in the queue for the next writer; either way the waiters are woken.
struct Writing<'a> {
    announcer: &'a Announcer,
    batch: Vec<ChunkHash>,
    /// The gc's list read after the batch became visible, once it did.
    visible: Option<Option<(RunTag, Arc<HashSet<ChunkHash>>)>>,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        {
            let mut state = self.announcer.state();
            state.writing = false;
            let batch = std::mem::take(&mut self.batch);
            match self.visible.take() {
                Some(condemned) => {
                    state.announced.extend(batch);
                    state.condemned = condemned;
                }
                None => state.queued.extend(batch),
            }
        }
        self.announcer.batch_ended.notify_waiters();
    }
}

impl Announcer {
    /// A new announcer with an identity of its own.
    pub fn new(store: &ChunkStore) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self {
            store: store.clone(),
            id: format!("{nanos:032x}-{:08x}", std::process::id()),
            state: Mutex::new(AnnouncerState::default()),
            batch_ended: tokio::sync::Notify::new(),
        }
    }

    /// The state, locked. It is only ever changed in whole steps under the lock, so a
    /// panic elsewhere while it was held leaves it consistent.
    fn state(&self) -> std::sync::MutexGuard<'_, AnnouncerState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Announce `hash` (durably visible when this returns) and say whether a running
    /// gc has condemned it: then call [`Announcer::wait_for_gc`] before checking
    /// whether the store has it.
    pub async fn announce(&self, hash: ChunkHash) -> Result<bool, BackupError> {
        Ok(!self.announce_all(vec![hash]).await?.is_empty())
    }

    /// Announce every hash of `hashes` (durably visible when this returns; in one
    /// batch with whatever else is waiting) and return those a running gc has
    /// condemned: wait for that gc ([`Announcer::wait_for_gc`]) before checking whether
    /// the store has them. An incremental backup names its base's unchanged chunks this
    /// way, one object for all of them rather than one per chunk.
    pub async fn announce_all(
        &self,
        hashes: Vec<ChunkHash>,
    ) -> Result<Vec<ChunkHash>, BackupError> {
        loop {
            // Listening before looking: a batch that ends after the look still wakes us.
            let ended = self.batch_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let claim = {
                let mut state = self.state();
                let missing: Vec<ChunkHash> = hashes
                    .iter()
                    .filter(|h| !state.announced.contains(h))
                    .copied()
                    .collect();
                if missing.is_empty() {
                    let condemned = state.condemned.as_ref().map(|(_, set)| set);
                    return Ok(hashes
                        .into_iter()
                        .filter(|h| condemned.is_some_and(|set| set.contains(h)))
                        .collect());
                }
                state.queued.extend(missing);
                if state.writing {
                    None
                } else {
                    state.writing = true;
                    state.batches += 1;
                    let batch: Vec<ChunkHash> = state.queued.drain().collect();
                    Some((state.batches, batch))
                }
            };
            match claim {
                // Another caller is writing: ours go in the next batch (or that one).
                None => ended.await,
                Some((number, batch)) => {
                    let mut writing = Writing {
                        announcer: self,
                        batch,
                        visible: None,
                    };
                    let path = self.batch_path(number);
                    let bytes = Bytes::from(encode(PENDING_MAGIC, &writing.batch));
                    // Read the gc's side only after ours is visible.
                    let tag = self.put_then_tag(&path, bytes).await?;
                    let previous = self.state().condemned.clone();
                    writing.visible = Some(match (tag, previous) {
                        (None, _) => None,
                        (Some(tag), Some((seen, set))) if seen == tag => Some((seen, set)),
                        (Some(tag), _) => {
                            read(&**self.store.objects(), &condemned_path(), CONDEMNED_MAGIC)
                                .await?
                                .map(|hashes| (tag, Arc::new(hashes.into_iter().collect())))
                        }
                    });
                    // Dropping the claim publishes the batch's hashes to every caller.
                    drop(writing);
                }
            }
        }
    }

    /// Wait until the gc run whose condemned list held `hash` has ended (its list gone
    /// or replaced), at most [`MAX_GC_WAIT`].
    pub async fn wait_for_gc(&self, hash: &ChunkHash) -> Result<(), BackupError> {
        let Some(tag) = self.state().condemned.as_ref().map(|(t, _)| t.clone()) else {
            return Ok(());
        };
        tracing::info!(chunk = %hash, "a running gc condemned a chunk this backup needs; waiting for it to end");
        let started = Instant::now();
        while self.condemned_tag().await?.as_ref() == Some(&tag) {
            if started.elapsed() > MAX_GC_WAIT {
                return Err(BackupError::GcStuck {
                    waited_secs: MAX_GC_WAIT.as_secs(),
                    path: condemned_path().to_string(),
                });
            }
            tokio::time::sleep(GC_POLL).await;
        }
        Ok(())
    }

    /// Puts a batch at `path`, then reads the gc's tag (after the batch is visible).
    async fn put_then_tag(&self, path: &Path, bytes: Bytes) -> Result<Option<RunTag>, BackupError> {
        if let Some(root) = self.store.local_root() {
            let (root, at) = (root.to_owned(), path.clone());
            return local_io(path, move || local_put_then_tag(&root, &at, &bytes)).await;
        }
        self.store
            .objects()
            .put(path, PutPayload::from(bytes))
            .await
            .map_err(|e| BackupError::store(path, e))?;
        condemned_tag(&**self.store.objects()).await
    }

    /// The gc's tag now: locally by `stat` (one blocking call), else a `head`.
    async fn condemned_tag(&self) -> Result<Option<RunTag>, BackupError> {
        if let Some(root) = self.store.local_root() {
            let root = root.to_owned();
            return local_io(&condemned_path(), move || local_condemned_tag(&root)).await;
        }
        condemned_tag(&**self.store.objects()).await
    }

    /// Withdraw every announcement (after the index is published, or on failure).
    pub async fn finish(&self) -> Result<(), BackupError> {
        // Every batch this announcer numbered, whether its put got through or not (a
        // missing one is fine): no listing needed, which would cost a round trip (and,
        // locally, a stat per file) before the deletes could start.
        let batches = self.state().batches;
        // All at once: each is one round trip, and nothing orders them.
        futures::future::try_join_all((1..=batches).map(|batch| async move {
            let path = self.batch_path(batch);
            match self.store.objects().delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(BackupError::store(&path, e)),
            }
        }))
        .await?;
        // Locally the directory the first batch created goes too: one left per backup
        // would pile up under `pending/` for every gc to walk.
        if batches > 0 {
            self.store.remove_empty_dir(&self.dir()).await?;
        }
        Ok(())
    }

    /// `pending/ID`: this announcer's batches.
    fn dir(&self) -> Path {
        pending_root().child(self.id.as_str())
    }

    /// `pending/ID/NNNNNNNN`: this announcer's batch `batch`.
    fn batch_path(&self, batch: u32) -> Path {
        self.dir().child(format!("{batch:08}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_rejects() {
        let hashes = vec![ChunkHash::of(b"a"), ChunkHash::of(b"b")];
        let bytes = encode(PENDING_MAGIC, &hashes);
        assert_eq!(bytes.len(), HEADER_BYTES + 64 + CHECKSUM_BYTES);
        assert_eq!(decode(PENDING_MAGIC, &bytes).unwrap(), hashes);
        assert_eq!(decode(CONDEMNED_MAGIC, &bytes), Err(MarksError::BadMagic));
        assert_eq!(
            decode(PENDING_MAGIC, &bytes[..10]),
            Err(MarksError::Truncated(10))
        );
        let mut bad = bytes.clone();
        bad[30] ^= 1;
        assert_eq!(decode(PENDING_MAGIC, &bad), Err(MarksError::Checksum));
        let mut long = bytes.clone();
        long.insert(30, 0);
        assert!(matches!(
            decode(PENDING_MAGIC, &long),
            Err(MarksError::Length { .. })
        ));
        let mut count = bytes;
        count[16] = 3;
        assert!(matches!(
            decode(PENDING_MAGIC, &count),
            Err(MarksError::Length { .. })
        ));
        assert_eq!(
            decode(CONDEMNED_MAGIC, &encode(CONDEMNED_MAGIC, &[])).unwrap(),
            vec![]
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(PENDING_MAGIC, &bytes);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_local_batch_reads_as_a_gc_reads_it_and_a_wait_lasts_as_long_as_the_gc_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().to_str().unwrap(), true).unwrap();
        let marks = Announcer::new(&store);
        let b = ChunkHash::of(b"b");
        let condemn = |hashes: Vec<ChunkHash>| {
            let store = store.clone();
            async move {
                let cond = PutPayload::from(encode(CONDEMNED_MAGIC, &hashes));
                store.objects().put(&condemned_path(), cond).await.unwrap();
            }
        };
        condemn(vec![b]).await;
        assert!(marks.announce(b).await.unwrap());
        // What a gc reads: the batch, whole, under its name; no temporary name left.
        let batch = marks.batch_path(1);
        assert_eq!(
            read(&**store.objects(), &batch, PENDING_MAGIC)
                .await
                .unwrap(),
            Some(vec![b])
        );
        let names: Vec<String> = std::fs::read_dir(dir.path().join("pending").join(&marks.id))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["00000001".to_owned()]);
        // The same gc run still holds its list: the wait goes on.
        let waited = tokio::time::timeout(Duration::from_millis(600), marks.wait_for_gc(&b)).await;
        assert!(waited.is_err(), "the wait ended while the gc ran");
        // That run ends and another starts (its list written anew): the wait is over.
        store.objects().delete(&condemned_path()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        condemn(vec![b]).await;
        tokio::time::timeout(Duration::from_secs(5), marks.wait_for_gc(&b))
            .await
            .expect("a replaced list ends the wait")
            .unwrap();
        marks.finish().await.unwrap();
    }

    /// The store's announcement objects, as a gc lists them.
    async fn pending_objects(store: &ChunkStore) -> Vec<object_store::ObjectMeta> {
        store
            .objects()
            .list(Some(&pending_root()))
            .try_collect()
            .await
            .unwrap()
    }

    /// Every hash in the store's announcement objects, as a gc reads them.
    async fn announced_in(store: &ChunkStore) -> HashSet<ChunkHash> {
        let mut all = HashSet::new();
        for meta in pending_objects(store).await {
            let read = read(&**store.objects(), &meta.location, PENDING_MAGIC).await;
            all.extend(read.unwrap().unwrap_or_default());
        }
        all
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_announcements_share_batches_and_each_is_visible_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().to_str().unwrap(), true).unwrap();
        let marks = Arc::new(Announcer::new(&store));
        let callers = (0..64u32).map(|i| {
            let (marks, store) = (Arc::clone(&marks), store.clone());
            tokio::spawn(async move {
                let hash = ChunkHash::of(&i.to_le_bytes());
                assert!(!marks.announce(hash).await.unwrap());
                // Returned: a gc looking now finds it.
                assert!(announced_in(&store).await.contains(&hash), "hash {i}");
            })
        });
        let done = futures::future::join_all(callers);
        for caller in tokio::time::timeout(Duration::from_secs(20), done)
            .await
            .unwrap()
        {
            caller.unwrap();
        }
        let batches = marks.state().batches;
        assert!(
            (1..64).contains(&batches),
            "{batches} batches for 64 callers"
        );
        marks.finish().await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_caller_it_covered_and_leaves_none_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().to_str().unwrap(), true).unwrap();
        // `pending` cannot be made a directory: every batch write fails.
        std::fs::write(dir.path().join("pending"), b"not a directory").unwrap();
        let marks = Announcer::new(&store);
        let (a, b) = (ChunkHash::of(b"a"), ChunkHash::of(b"b"));
        let both = async { tokio::join!(marks.announce(a), marks.announce(b)) };
        let (first, second) = tokio::time::timeout(Duration::from_secs(10), both)
            .await
            .expect("a caller was left waiting");
        assert!(first.is_err() && second.is_err());
        // Once batches can be written, what failed is announced with the next one.
        std::fs::remove_file(dir.path().join("pending")).unwrap();
        assert!(!marks.announce(a).await.unwrap());
        let seen = announced_in(&store).await;
        assert!(seen.contains(&a) && seen.contains(&b));
        marks.finish().await.unwrap();
    }

    #[tokio::test]
    async fn announcements_are_visible_and_withdrawn() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().to_str().unwrap(), true).unwrap();
        let marks = Announcer::new(&store);
        let (a, b) = (ChunkHash::of(b"a"), ChunkHash::of(b"b"));
        assert!(!marks.announce(a).await.unwrap());
        // A gc condemns b; the next announcement sees it.
        let cond = PutPayload::from(encode(CONDEMNED_MAGIC, &[b]));
        store.objects().put(&condemned_path(), cond).await.unwrap();
        assert!(marks.announce(b).await.unwrap());
        let pending = || async { pending_objects(&store).await.len() };
        assert_eq!(pending().await, 2);
        // The gc ends: the wait is over.
        store.objects().delete(&condemned_path()).await.unwrap();
        marks.wait_for_gc(&b).await.unwrap();
        let own_dir = dir.path().join("pending").join(&marks.id);
        assert!(own_dir.is_dir());
        marks.finish().await.unwrap();
        assert_eq!(pending().await, 0);
        // Nothing is left behind, not even the backup's directory.
        assert!(!own_dir.exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("pending"))
                .unwrap()
                .count(),
            0
        );
        // An announcer that announced nothing withdraws nothing.
        Announcer::new(&store).finish().await.unwrap();
    }
}
