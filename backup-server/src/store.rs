//! [`ChunkStore`]: chunks, volumes and versions over any `object_store`.
//!
//! Layout (each object's own format is described in [`crate::chunk`] and [`crate::index`]):
//!
//! ```text
//! chunks/XX/HASH                          one chunk; HASH = BLAKE3 hex, XX = its first 2 digits
//! volumes/NAME/versions/NNNNNNNN.idx      one version of volume NAME (8 decimal digits, from 1)
//! ```
//!
//! Nothing is ever overwritten. Chunks and indexes are written with put-if-not-exists
//! (`PutMode::Create`): a local store writes a temporary file and hard-links it into
//! place, an object store commits the object whole, so a half-written object is never
//! visible under its name. A local store also fsyncs each new chunk and the
//! directories holding them (all at once) before the index that names them is
//! published, and the index after.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use crate::chunk::{self, ChunkHash};
use crate::error::BackupError;
use crate::index::Index;
use crate::location::StoreLocation;
use crate::name::{VolumeName, MAX_VERSION, VERSION_DIGITS};

/// Files and directories fsynced at once before a publish: enough that most share one
/// journal commit.
const SYNC_IN_FLIGHT: usize = 64;
/// How many version numbers one publish tries before giving up under contention.
const MAX_PUBLISH_ATTEMPTS: u32 = 64;

/// A chunk store.
#[derive(Clone)]
pub struct ChunkStore {
    objects: Arc<dyn ObjectStore>,
    /// The root directory of a local store (for fsync); `None` for object stores, where
    /// a completed put is already durable.
    local_root: Option<PathBuf>,
    shown: String,
}

impl std::fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkStore({})", self.shown)
    }
}

/// How a chunk a backup would reuse stands ([`ChunkStore::check_chunk`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkCheck {
    /// The store does not have it.
    Missing,
    /// The store has it, plausible (or verified, when asked).
    Present,
    /// The store has it damaged; the text says how.
    Damaged(String),
}

/// What storing a chunk did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// This call wrote the chunk.
    Written,
    /// The chunk was already there (stored earlier, or by a concurrent backup).
    AlreadyStored,
}

impl ChunkStore {
    /// Open the store `STORE` names (a directory path or an object store URL); `create`
    /// makes a missing local directory (backups do, servers do not).
    pub fn open(store: &str, create: bool) -> Result<Self, BackupError> {
        let (objects, local_root) = StoreLocation::parse(store)?.open(create)?;
        Ok(Self {
            objects,
            local_root,
            shown: store.to_owned(),
        })
    }

    /// A store over any object store (tests, embedding). No fsync is done.
    pub fn from_object_store(objects: Arc<dyn ObjectStore>, shown: impl Into<String>) -> Self {
        Self {
            objects,
            local_root: None,
            shown: shown.into(),
        }
    }

    /// The store as it was named.
    pub fn name(&self) -> &str {
        &self.shown
    }

    /// The object store underneath (retention and gc work on it directly).
    pub(crate) fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.objects
    }

    /// Check that the store honours create-if-not-exists, which publishing relies on to
    /// give concurrent backups distinct versions: write a probe object twice with
    /// `PutMode::Create`; the second write must be refused. A store that accepts both
    /// (an S3-compatible server ignoring `If-None-Match`) is refused here, at startup,
    /// rather than risking two backups publishing the same version number. Local
    /// directories always support it (hard links), so they are not probed.
    pub async fn check_conditional_put(&self) -> Result<(), BackupError> {
        if self.local_root.is_some() {
            return Ok(());
        }
        let path = Path::from_iter(["probe", "conditional-put"]);
        let put = || {
            self.objects.put_opts(
                &path,
                PutPayload::from_static(b"create-if-not-exists probe"),
                PutMode::Create.into(),
            )
        };
        // The first write may find the probe from an earlier run: both are fine.
        match put().await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(self.no_conditional_put(e.to_string())),
        }
        match put().await {
            Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Ok(_) => Err(self.no_conditional_put(
                "a second create-if-not-exists write of one object succeeded".into(),
            )),
            Err(e) => Err(self.no_conditional_put(e.to_string())),
        }
    }

    fn no_conditional_put(&self, reason: String) -> BackupError {
        BackupError::NoConditionalPut {
            store: self.shown.clone(),
            reason,
        }
    }

    /// Whether chunk `hash` is stored (existence only; reads verify content).
    pub async fn has_chunk(&self, hash: &ChunkHash) -> Result<bool, BackupError> {
        let path = hash.path();
        match self.objects.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(BackupError::store(&path, e)),
        }
    }

    /// A quick, blocking answer to whether the store seems to hold a chunk of a given
    /// hash and length, for the read lanes to let go of bytes they will not need (see
    /// [`crate::read_lanes`]): a local store's file is there with a size that fits.
    /// Only a hint: [`ChunkStore::check_chunk`] decides. `None` for an object store,
    /// where each answer would be a request.
    pub(crate) fn stored_hint(&self) -> Option<crate::read_lanes::StoredHint> {
        let root = self.local_root.clone()?;
        Some(Arc::new(move |hash: &ChunkHash, len: usize| {
            std::fs::metadata(root.join(hash.path().as_ref()))
                .is_ok_and(|m| chunk::stored_len_bounds(len).contains(&m.len()))
        }))
    }

    /// How a chunk the store may already have stands, for a backup that would reuse it:
    /// missing, present and plausible, or damaged. Cheap by default: its size and first
    /// byte must fit a chunk of `len` bytes (raw: exactly `len + 1` bytes; zstd: 2 to
    /// `len + 1`). With `verify` the chunk is read back and checked against its hash.
    pub async fn check_chunk(
        &self,
        hash: &ChunkHash,
        len: usize,
        verify: bool,
    ) -> Result<ChunkCheck, BackupError> {
        let path = hash.path();
        let (size, encoding) = if let Some(root) = &self.local_root {
            // Size and first byte in one blocking call (a re-backup asks for every chunk).
            let file = root.join(path.as_ref());
            match local_io(&path, move || crate::local_chunk::head(&file)).await? {
                Some(found) => found,
                None => return Ok(ChunkCheck::Missing),
            }
        } else {
            let size = match self.objects.head(&path).await {
                Ok(meta) => meta.size,
                Err(object_store::Error::NotFound { .. }) => return Ok(ChunkCheck::Missing),
                Err(e) => return Err(BackupError::store(&path, e)),
            };
            let encoding = if size == 0 {
                None
            } else {
                self.objects
                    .get_range(&path, 0..1)
                    .await
                    .map_err(|e| BackupError::store(&path, e))?
                    .first()
                    .copied()
            };
            (size, encoding)
        };
        let plausible = match encoding {
            Some(chunk::ENCODING_RAW) => size == *chunk::stored_len_bounds(len).end(),
            Some(chunk::ENCODING_ZSTD) => chunk::stored_len_bounds(len).contains(&size),
            _ => false,
        };
        if !plausible {
            return Ok(ChunkCheck::Damaged(format!(
                "stored size {size} bytes with encoding {encoding:?} cannot hold a {len}-byte chunk"
            )));
        }
        if !verify {
            return Ok(ChunkCheck::Present);
        }
        match self.get_chunk(hash, len).await {
            Ok(_) => Ok(ChunkCheck::Present),
            Err(BackupError::CorruptChunk { reason, .. }) => Ok(ChunkCheck::Damaged(reason)),
            Err(BackupError::MissingChunk { .. }) => Ok(ChunkCheck::Missing),
            Err(e) => Err(e),
        }
    }

    /// Replaces a damaged chunk with its good encoded form. The only overwrite the store
    /// ever does: the new object is written whole and then takes the name (a temporary
    /// file renamed into place locally, an atomic put on object stores), so a reader
    /// sees the damaged chunk or the good one, never half of one.
    pub async fn replace_chunk(
        &self,
        hash: &ChunkHash,
        encoded: chunk::Encoded,
    ) -> Result<(), BackupError> {
        let path = hash.path();
        let opts = PutOptions::from(PutMode::Overwrite);
        self.objects
            .put_opts(&path, encoded.into_payload(), opts)
            .await
            .map_err(|e| BackupError::store(&path, e))?;
        self.start_writeback(&path).await;
        Ok(())
    }

    /// Store a chunk's encoded form (see [`chunk::encode`]) under `hash`, unless present.
    pub async fn put_chunk(
        &self,
        hash: &ChunkHash,
        encoded: chunk::Encoded,
    ) -> Result<PutOutcome, BackupError> {
        let path = hash.path();
        let opts = PutOptions::from(PutMode::Create);
        match self
            .objects
            .put_opts(&path, encoded.into_payload(), opts)
            .await
        {
            Ok(_) => {
                self.start_writeback(&path).await;
                Ok(PutOutcome::Written)
            }
            Err(object_store::Error::AlreadyExists { .. }) => Ok(PutOutcome::AlreadyStored),
            Err(e) => Err(BackupError::store(&path, e)),
        }
    }

    /// Encode a chunk's bytes (see [`chunk::encode`]) and store them under `hash` unless
    /// present; what happened and the stored size in bytes. A local store does it all in
    /// one blocking call ([`crate::local_chunk`]); an object store compresses on the CPU
    /// pool and puts.
    pub async fn encode_and_put(
        &self,
        hash: &ChunkHash,
        data: Bytes,
    ) -> Result<(PutOutcome, u64), BackupError> {
        let Some(root) = &self.local_root else {
            let encoded = crate::cpu::run(move || chunk::encode(data)).await?;
            let stored = encoded.stored_len();
            return Ok((self.put_chunk(hash, encoded).await?, stored));
        };
        let path = hash.path();
        let file = root.join(path.as_ref());
        local_io(&path, move || crate::local_chunk::put(&file, data)).await
    }

    /// Fetch chunk `hash`, expected to be `expected_len` bytes, verified against its name.
    pub async fn get_chunk(
        &self,
        hash: &ChunkHash,
        expected_len: usize,
    ) -> Result<Bytes, BackupError> {
        let path = hash.path();
        let stored = match self.objects.get(&path).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(|e| BackupError::store(&path, e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BackupError::MissingChunk {
                    hash: hash.to_string(),
                })
            }
            Err(e) => return Err(BackupError::store(&path, e)),
        };
        let hash = *hash;
        crate::cpu::run(move || chunk::decode_bytes(&hash, stored, expected_len))
            .await?
            .map_err(|e| BackupError::CorruptChunk {
                hash: hash.to_string(),
                reason: e.to_string(),
            })
    }

    /// Every stored chunk's name (for checks and tests; lists the whole store).
    pub async fn chunk_hashes(&self) -> Result<Vec<ChunkHash>, BackupError> {
        let prefix = Path::from("chunks");
        let listed: Vec<_> = self
            .objects
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| BackupError::store(&prefix, e))?;
        Ok(listed
            .iter()
            .filter_map(|m| m.location.filename().and_then(ChunkHash::from_hex))
            .collect())
    }

    /// Names of all volumes with at least one listed object.
    pub async fn volumes(&self) -> Result<Vec<VolumeName>, BackupError> {
        let prefix = Path::from("volumes");
        let listed = self
            .objects
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| BackupError::store(&prefix, e))?;
        // Anything that is not a valid name was not written by us: skip it.
        let mut names: Vec<_> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(|n| VolumeName::new(n).ok()))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The published versions of `volume`, ascending.
    pub async fn versions(&self, volume: &VolumeName) -> Result<Vec<u32>, BackupError> {
        let prefix = versions_dir(volume);
        if let Some(root) = &self.local_root {
            // The names alone, in one blocking call: the object store's local listing
            // also stats every file (two or three calls each), which with a few hundred
            // versions took milliseconds of every backup.
            let dir = root.join(prefix.as_ref());
            let mut found = local_io(&prefix, move || version_file_names(&dir)).await?;
            found.sort_unstable();
            return Ok(found);
        }
        let listed: Vec<_> = self
            .objects
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| BackupError::store(&prefix, e))?;
        let found: BTreeSet<u32> = listed
            .iter()
            .filter_map(|m| m.location.filename().and_then(parse_version_file))
            .collect();
        Ok(found.into_iter().collect())
    }

    /// The newest version of `volume`, if any.
    pub async fn latest_version(&self, volume: &VolumeName) -> Result<Option<u32>, BackupError> {
        Ok(self.versions(volume).await?.last().copied())
    }

    /// Read and check version `version` of `volume`.
    pub async fn read_index(
        &self,
        volume: &VolumeName,
        version: u32,
    ) -> Result<Index, BackupError> {
        let path = version_path(volume, version);
        let bytes = match self.objects.get(&path).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(|e| BackupError::store(&path, e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BackupError::VersionNotFound {
                    volume: volume.to_string(),
                    version,
                })
            }
            Err(e) => return Err(BackupError::store(&path, e)),
        };
        crate::cpu::run(move || Index::decode(&bytes))
            .await?
            .map_err(|source| BackupError::Index {
                path: path.to_string(),
                source,
            })
    }

    /// Publish `index` as the next version of `volume` and return its number. Every
    /// chunk it names must already be stored (and, locally, synced: see
    /// [`ChunkStore::sync_chunks`]). Concurrent publishers get distinct numbers:
    /// each tries create-if-not-exists and moves to the next number if it lost.
    pub async fn publish(&self, volume: &VolumeName, index: &Index) -> Result<u32, BackupError> {
        let version = self.publish_visible(volume, index).await?;
        self.make_version_durable(volume, version).await;
        Ok(version)
    }

    /// Version `version` of `volume`, published, made durable (local stores: fsync of
    /// its index and of the directories above it). A failure is logged, not returned:
    /// the version is visible, so the backup has succeeded, and an error a script would
    /// retry would publish the volume twice.
    pub async fn make_version_durable(&self, volume: &VolumeName, version: u32) {
        if let Err(e) = self
            .sync_all(&[version_path(volume, version)], true, true)
            .await
        {
            tracing::error!(%volume, version, %e, "version published, but making it durable failed; it may not survive a power loss");
        }
    }

    /// [`ChunkStore::publish`] up to the version becoming visible; the caller makes it
    /// durable ([`ChunkStore::make_version_durable`]).
    pub async fn publish_visible(
        &self,
        volume: &VolumeName,
        index: &Index,
    ) -> Result<u32, BackupError> {
        let encoded = index.encode().map_err(|source| BackupError::Index {
            path: versions_dir(volume).to_string(),
            source,
        })?;
        let payload = PutPayload::from(Bytes::from(encoded));
        // The newest version when the backup began is the first guess (no listing); the
        // first number found taken sends us to the newest there is now.
        let mut next = index.parent_version;
        let mut listed = false;
        for _ in 0..MAX_PUBLISH_ATTEMPTS {
            next = next
                .checked_add(1)
                .filter(|&n| n <= MAX_VERSION)
                .ok_or_else(|| BackupError::VersionsExhausted(volume.to_string()))?;
            let path = version_path(volume, next);
            match self
                .objects
                .put_opts(&path, payload.clone(), PutMode::Create.into())
                .await
            {
                // Published: the version is visible from here on.
                Ok(_) => return Ok(next),
                Err(object_store::Error::AlreadyExists { .. }) => {
                    tracing::debug!(%volume, version = next, "version taken by a concurrent backup, trying the next");
                    if !listed {
                        listed = true;
                        next = next.max(self.latest_version(volume).await?.unwrap_or(0));
                    }
                }
                Err(e) => return Err(BackupError::store(&path, e)),
            }
        }
        Err(BackupError::PublishContention {
            volume: volume.to_string(),
            attempts: MAX_PUBLISH_ATTEMPTS,
        })
    }

    /// Make newly written chunks durable (local stores only): fsync each file and the
    /// directories holding them, all at once. Call before publishing an index that
    /// names them.
    ///
    /// Why all at once: each fsync that finds the journal already committed still sends
    /// the device a cache flush of its own (milliseconds on most disks), while fsyncs
    /// in flight together share one journal commit and its flush. Order among them
    /// does not matter: the entries are in place already, and the only rule is that
    /// all of them are durable before the index that names the chunks is published.
    pub async fn sync_chunks(&self, hashes: Vec<ChunkHash>) -> Result<(), BackupError> {
        let paths: Vec<Path> = hashes.iter().map(ChunkHash::path).collect();
        self.sync_all(&paths, true, true).await
    }

    /// The first half of [`ChunkStore::sync_chunks`], for a backup to overlap with its
    /// reading: fsync the chunks' files (not their directories) now.
    pub async fn sync_chunk_files(&self, hashes: &[ChunkHash]) -> Result<(), BackupError> {
        let paths: Vec<Path> = hashes.iter().map(ChunkHash::path).collect();
        self.sync_all(&paths, true, false).await
    }

    /// The second half: fsync the directories holding the chunks (whose files
    /// [`ChunkStore::sync_chunk_files`] synced).
    pub async fn sync_chunk_dirs(&self, hashes: &[ChunkHash]) -> Result<(), BackupError> {
        let paths: Vec<Path> = hashes.iter().map(ChunkHash::path).collect();
        self.sync_all(&paths, false, true).await
    }

    /// Ask the kernel to start writing a new local file out now (without waiting), so
    /// the fsync before publishing finds little left to write. `POSIX_FADV_DONTNEED`
    /// starts writeback of dirty pages and drops clean ones: backup data read once
    /// should not crowd the page cache anyway. Only a hint: failures are ignored.
    async fn start_writeback(&self, path: &Path) {
        let Some(root) = &self.local_root else { return };
        let file = root.join(path.as_ref());
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(f) = std::fs::File::open(&file) {
                crate::os::start_writeback(&f);
            }
        })
        .await;
    }

    /// fsync `paths` themselves when `files`, and when `dirs` the directories holding
    /// them and their parents up to the root, [`SYNC_IN_FLIGHT`] at a time (see
    /// [`ChunkStore::sync_chunks`] for why together). Local stores only.
    async fn sync_all(&self, paths: &[Path], files: bool, dirs: bool) -> Result<(), BackupError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let mut parents = BTreeSet::new();
        for path in paths.iter().filter(|_| dirs) {
            let mut dir = root.join(path.as_ref());
            while dir.pop() && dir.starts_with(root) {
                parents.insert(dir.clone());
            }
        }
        let mut targets: Vec<(PathBuf, bool)> = Vec::with_capacity(paths.len() + parents.len());
        if files {
            targets.extend(paths.iter().map(|p| (root.join(p.as_ref()), false)));
        }
        targets.extend(parents.into_iter().map(|d| (d, true)));
        futures::stream::iter(targets)
            .map(|(path, is_dir)| {
                tokio::task::spawn_blocking(move || {
                    let synced = if is_dir {
                        crate::os::sync_dir(&path)
                    } else {
                        crate::os::sync_file(&path)
                    };
                    synced.map_err(|source| BackupError::Sync { path, source })
                })
            })
            .buffer_unordered(SYNC_IN_FLIGHT)
            .map(|joined| joined.map_err(|e| BackupError::Internal(e.to_string()))?)
            .try_collect::<()>()
            .await
    }
}

/// What [`ChunkStore::publish_version`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishVersionOutcome {
    /// This call published the version.
    Published,
    /// The version was already there with exactly these bytes.
    AlreadyPresent,
}

/// The object holding a store's identity (16 random bytes).
const STORE_ID_PATH: &str = "store-id";

impl ChunkStore {
    /// The object at `path`, whole, or `None` if there is none.
    async fn fetch_object(&self, path: &Path) -> Result<Option<Bytes>, BackupError> {
        if let Some(root) = &self.local_root {
            // One blocking call (open, size, read) where the object store's local get
            // takes two hops, each a thread wake-up.
            let file = root.join(path.as_ref());
            let read = local_io(path, move || match std::fs::read(file) {
                Ok(bytes) => Ok(Some(Bytes::from(bytes))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            });
            return read.await;
        }
        match self.objects.get(path).await {
            Ok(got) => got
                .bytes()
                .await
                .map(Some)
                .map_err(|e| BackupError::store(path, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(BackupError::store(path, e)),
        }
    }

    /// Removes the directory `path` names in a local store if it is empty; one that is
    /// gone or still holds something is left be. Object stores have no directories.
    pub(crate) async fn remove_empty_dir(&self, path: &Path) -> Result<(), BackupError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let dir = root.join(path.as_ref());
        local_io(path, move || match std::fs::remove_dir(dir) {
            Err(e)
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::DirectoryNotEmpty
                ) =>
            {
                Err(e)
            }
            _ => Ok(()),
        })
        .await
    }

    /// The store's root directory, for a local store (`None` for an object store): the
    /// journal lives there, in files appended in place.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }

    /// This store's identity: 16 bytes made once, at first use, and kept in the object
    /// `store-id` (create-if-not-exists, so concurrent first uses agree).
    pub async fn identity(&self) -> Result<[u8; 16], BackupError> {
        let path = Path::from(STORE_ID_PATH);
        let read = |bytes: &[u8]| -> Result<[u8; 16], BackupError> {
            bytes.try_into().map_err(|_| BackupError::InvalidStore {
                store: self.shown.clone(),
                reason: format!("{STORE_ID_PATH} is not 16 bytes"),
            })
        };
        if let Some(bytes) = self.fetch_object(&path).await? {
            return read(&bytes);
        }
        let mut seed = blake3::Hasher::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        seed.update(&now.as_nanos().to_le_bytes());
        seed.update(&std::process::id().to_le_bytes());
        seed.update(self.shown.as_bytes());
        seed.update(&(&seed as *const _ as usize).to_le_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&seed.finalize().as_bytes()[..16]);
        let payload = PutPayload::from(Bytes::copy_from_slice(&id));
        match self
            .objects
            .put_opts(&path, payload, PutMode::Create.into())
            .await
        {
            Ok(_) => {
                self.sync_all(&[path], true, true).await?;
                Ok(id)
            }
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Another process made it first: use theirs.
                read(&self.fetch_object(&path).await?.unwrap_or_default())
            }
            Err(e) => Err(BackupError::store(&path, e)),
        }
    }

    /// Version `version` of `volume`'s index file exactly as stored (not decoded).
    pub async fn read_index_bytes(
        &self,
        volume: &VolumeName,
        version: u32,
    ) -> Result<Bytes, BackupError> {
        self.fetch_object(&version_path(volume, version))
            .await?
            .ok_or_else(|| BackupError::VersionNotFound {
                volume: volume.to_string(),
                version,
            })
    }

    /// Chunk `hash` in its stored form, after checking that it decodes to `expected_len`
    /// bytes with that hash (for sending it on without recompressing).
    pub async fn get_chunk_stored(
        &self,
        hash: &ChunkHash,
        expected_len: usize,
    ) -> Result<chunk::Encoded, BackupError> {
        let stored =
            self.fetch_object(&hash.path())
                .await?
                .ok_or_else(|| BackupError::MissingChunk {
                    hash: hash.to_string(),
                })?;
        let hash = *hash;
        let checked = stored.clone();
        crate::cpu::run(move || chunk::decode_bytes(&hash, checked, expected_len))
            .await?
            .map_err(|e| BackupError::CorruptChunk {
                hash: hash.to_string(),
                reason: e.to_string(),
            })?;
        let encoding = *stored.first().unwrap_or(&chunk::ENCODING_RAW);
        Ok(chunk::Encoded {
            encoding,
            body: stored.slice(1..),
        })
    }

    /// Publish `index` (an encoded index, checked by the caller) as exactly version
    /// `version` of `volume`, create-if-not-exists, then make it durable. The same bytes
    /// already there count as published; different bytes are a conflict.
    pub async fn publish_version(
        &self,
        volume: &VolumeName,
        version: u32,
        index: Bytes,
    ) -> Result<PublishVersionOutcome, BackupError> {
        let path = version_path(volume, version);
        let outcome = match self
            .objects
            .put_opts(
                &path,
                PutPayload::from(index.clone()),
                PutMode::Create.into(),
            )
            .await
        {
            Ok(_) => PublishVersionOutcome::Published,
            Err(object_store::Error::AlreadyExists { .. }) => {
                if self.read_index_bytes(volume, version).await? != index {
                    return Err(BackupError::VersionConflict {
                        volume: volume.to_string(),
                        version,
                    });
                }
                PublishVersionOutcome::AlreadyPresent
            }
            Err(e) => return Err(BackupError::store(&path, e)),
        };
        self.sync_all(&[path], true, true).await?;
        Ok(outcome)
    }
}

/// Runs a local store's file operations on the blocking pool in one call (each hop
/// there is a thread wake-up), their error read as the object store's would be,
/// naming `path`.
pub(crate) async fn local_io<T: Send + 'static>(
    path: &Path,
    io: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, BackupError> {
    tokio::task::spawn_blocking(io)
        .await
        .map_err(|e| BackupError::Internal(e.to_string()))?
        .map_err(|e| local_error(path, e))
}

/// A local store's I/O error, as the object store's own would read.
fn local_error(path: &Path, e: std::io::Error) -> BackupError {
    let source = object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(e),
    };
    BackupError::store(path, source)
}

fn versions_dir(volume: &VolumeName) -> Path {
    Path::from_iter(["volumes", volume.as_str(), "versions"])
}

/// `volumes/NAME/versions/NNNNNNNN.idx`.
pub fn version_path(volume: &VolumeName, version: u32) -> Path {
    versions_dir(volume).child(format!("{version:0width$}.idx", width = VERSION_DIGITS))
}

/// The version numbers named by the files in a local store's `dir` (none if it does not
/// exist, as an object store lists nothing under a missing prefix), unordered.
fn version_file_names(dir: &std::path::Path) -> std::io::Result<Vec<u32>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        // The file type comes with the name on most file systems (no stat).
        if entry.file_type()?.is_dir() {
            continue;
        }
        if let Some(version) = entry.file_name().to_str().and_then(parse_version_file) {
            found.push(version);
        }
    }
    Ok(found)
}

/// The version number in a file name `NNNNNNNN.idx`; anything else is not a version.
fn parse_version_file(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".idx")?;
    if digits.len() != VERSION_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&v| v >= 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::ChunkRef;
    use crate::size::ChunkSize;

    fn tiny_index(parent: u32) -> Index {
        Index {
            volume_size_bytes: 10,
            chunk_size: ChunkSize::DEFAULT,
            parent_version: parent,
            created_unix_secs: 0,
            chunks: vec![ChunkRef::Zero],
        }
    }

    #[test]
    fn version_file_names() {
        let v = VolumeName::new("disk").unwrap();
        assert_eq!(
            version_path(&v, 1).to_string(),
            "volumes/disk/versions/00000001.idx"
        );
        assert_eq!(parse_version_file("00000001.idx"), Some(1));
        assert_eq!(parse_version_file("99999999.idx"), Some(99_999_999));
        for bad in [
            "00000000.idx",
            "1.idx",
            "0000000a.idx",
            "00000001.idx#3",
            "00000001",
        ] {
            assert_eq!(parse_version_file(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn chunks_round_trip_and_versions_count_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().join("s").to_str().unwrap(), true).unwrap();
        let data = vec![3u8; 100_000];
        let hash = ChunkHash::of(&data);
        assert!(!store.has_chunk(&hash).await.unwrap());
        assert_eq!(
            store
                .put_chunk(&hash, chunk::encode(Bytes::from(data.clone())))
                .await
                .unwrap(),
            PutOutcome::Written
        );
        assert_eq!(
            store
                .put_chunk(&hash, chunk::encode(Bytes::from(data.clone())))
                .await
                .unwrap(),
            PutOutcome::AlreadyStored
        );
        assert!(store.has_chunk(&hash).await.unwrap());
        assert_eq!(
            &store.get_chunk(&hash, data.len()).await.unwrap()[..],
            &data[..]
        );
        assert_eq!(store.chunk_hashes().await.unwrap(), vec![hash]);
        let missing = ChunkHash::of(b"nope");
        assert!(matches!(
            store.get_chunk(&missing, 4).await,
            Err(BackupError::MissingChunk { .. })
        ));

        let vol = VolumeName::new("disk").unwrap();
        assert_eq!(store.latest_version(&vol).await.unwrap(), None);
        assert_eq!(store.publish(&vol, &tiny_index(0)).await.unwrap(), 1);
        assert_eq!(store.publish(&vol, &tiny_index(1)).await.unwrap(), 2);
        assert_eq!(store.versions(&vol).await.unwrap(), vec![1, 2]);
        assert_eq!(store.read_index(&vol, 2).await.unwrap(), tiny_index(1));
        assert!(matches!(
            store.read_index(&vol, 3).await,
            Err(BackupError::VersionNotFound { .. })
        ));
        assert_eq!(store.volumes().await.unwrap(), vec![vol]);
    }

    #[tokio::test]
    async fn a_local_store_lists_and_reads_versions_as_the_object_store_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().to_str().unwrap(), true).unwrap();
        let vol = VolumeName::new("disk").unwrap();
        // No directory yet: no versions, as an object store lists nothing.
        assert_eq!(store.versions(&vol).await.unwrap(), Vec::<u32>::new());
        for parent in 0..3 {
            store.publish(&vol, &tiny_index(parent)).await.unwrap();
        }
        // Strays a listing must skip: a staging file, other names, an empty directory.
        let versions = dir.path().join("volumes/disk/versions");
        std::fs::write(versions.join("00000007.idx#1"), b"partial").unwrap();
        std::fs::write(versions.join("notes.txt"), b"x").unwrap();
        std::fs::create_dir(versions.join("00000009.idx")).unwrap();
        let by_object_store: BTreeSet<u32> = store
            .objects()
            .list(Some(&versions_dir(&vol)))
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .iter()
            .filter_map(|m| m.location.filename().and_then(parse_version_file))
            .collect();
        let listed = store.versions(&vol).await.unwrap();
        assert_eq!(listed, vec![1, 2, 3]);
        assert_eq!(listed, by_object_store.into_iter().collect::<Vec<_>>());
        // Reads return the file's bytes; a missing version is said to be missing.
        assert_eq!(
            store.read_index_bytes(&vol, 2).await.unwrap(),
            std::fs::read(versions.join("00000002.idx")).unwrap()
        );
        assert!(matches!(
            store.read_index_bytes(&vol, 4).await,
            Err(BackupError::VersionNotFound { .. })
        ));
    }

    #[tokio::test]
    async fn concurrent_publishers_get_distinct_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().to_str().unwrap(), true).unwrap();
        let vol = VolumeName::new("v").unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (store, vol) = (store.clone(), vol.clone());
                tokio::spawn(async move { store.publish(&vol, &tiny_index(0)).await.unwrap() })
            })
            .collect();
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        got.sort_unstable();
        assert_eq!(got, (1..=8).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_damaged_index_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().to_str().unwrap(), true).unwrap();
        let vol = VolumeName::new("v").unwrap();
        store.publish(&vol, &tiny_index(0)).await.unwrap();
        let file = dir.path().join("volumes/v/versions/00000001.idx");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&file, bytes).unwrap();
        assert!(matches!(
            store.read_index(&vol, 1).await,
            Err(BackupError::Index { .. })
        ));
    }
}
