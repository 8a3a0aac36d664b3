//! `gc` racing backups, for any store: each round leaves orphan chunks (a version whose
//! index was removed), then runs a backup that reuses half of them and writes new ones
//! while a gc starts after a random delay. Every store operation waits a random moment
//! first, so the two interleave differently each round. Afterwards every chunk of every
//! published version must exist and verify, and the next gc must leave it alone.

#![allow(dead_code)]

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use rehydrate_backup::{backup, BackupOptions, ChunkRef, ChunkSize, ChunkStore, VolumeName};

/// xorshift64*: reproducible from the seed printed on failure.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// An object store whose every operation first waits 0..`max_delay_us` microseconds.
pub struct Jittery {
    inner: Arc<dyn ObjectStore>,
    rng: Mutex<Rng>,
    max_delay_us: u64,
    hooks: Arc<Mutex<Vec<Hook>>>,
}

/// Store operations done by somebody else right after the `nth` listing (from 1) of
/// `prefix` returned: another process acting in that precise window.
pub struct Hook {
    pub prefix: &'static str,
    pub nth: usize,
    pub puts: Vec<(Path, Bytes)>,
    pub deletes: Vec<Path>,
}

/// Runs the hooks due now that a listing of `prefix` returned.
async fn run_hooks(inner: &Arc<dyn ObjectStore>, hooks: &Mutex<Vec<Hook>>, prefix: Option<&Path>) {
    let listed = prefix.map(Path::as_ref).unwrap_or_default().to_owned();
    let due: Vec<Hook> = {
        let mut hooks = hooks.lock().unwrap();
        let mut due = Vec::new();
        let mut i = 0;
        while i < hooks.len() {
            if hooks[i].prefix == listed {
                hooks[i].nth -= 1;
                if hooks[i].nth == 0 {
                    due.push(hooks.remove(i));
                    continue;
                }
            }
            i += 1;
        }
        due
    };
    for hook in due {
        for (path, bytes) in hook.puts {
            inner.put(&path, bytes.into()).await.unwrap();
        }
        for path in hook.deletes {
            inner.delete(&path).await.unwrap();
        }
    }
}

impl Jittery {
    pub fn new(inner: Arc<dyn ObjectStore>, seed: u64, max_delay_us: u64) -> Self {
        Self {
            inner,
            rng: Mutex::new(Rng::new(seed)),
            max_delay_us,
            hooks: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Runs `hook` when its listing returns.
    pub fn with_hook(self, hook: Hook) -> Self {
        self.hooks.lock().unwrap().push(hook);
        self
    }

    fn delay(&self) -> Duration {
        Duration::from_micros(self.rng.lock().unwrap().below(self.max_delay_us))
    }

    async fn pause(&self) {
        tokio::time::sleep(self.delay()).await;
    }
}

impl fmt::Debug for Jittery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Jittery({})", self.inner)
    }
}

impl fmt::Display for Jittery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[async_trait]
impl ObjectStore for Jittery {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.pause().await;
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.pause().await;
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.pause().await;
        self.inner.get_opts(location, options).await
    }
    async fn get_range(&self, location: &Path, range: Range<u64>) -> Result<Bytes> {
        self.pause().await;
        self.inner.get_range(location, range).await
    }
    async fn delete(&self, location: &Path) -> Result<()> {
        self.pause().await;
        self.inner.delete(location).await
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let (delay, listed) = (self.delay(), self.inner.list(prefix));
        let (inner, hooks, prefix) = (
            Arc::clone(&self.inner),
            Arc::clone(&self.hooks),
            prefix.cloned(),
        );
        futures::stream::once(async move {
            tokio::time::sleep(delay).await;
            let all: Vec<Result<ObjectMeta>> = listed.collect().await;
            run_hooks(&inner, &hooks, prefix.as_ref()).await;
            futures::stream::iter(all)
        })
        .flatten()
        .boxed()
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.pause().await;
        let listed = self.inner.list_with_delimiter(prefix).await;
        run_hooks(&self.inner, &self.hooks, prefix).await;
        listed
    }
    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.pause().await;
        self.inner.copy(from, to).await
    }
    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.pause().await;
        self.inner.copy_if_not_exists(from, to).await
    }
}

/// Deterministic noise.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

const CHUNK: usize = 64 * 1024;

fn options(volume: &str) -> BackupOptions {
    BackupOptions {
        volume: VolumeName::new(volume).unwrap(),
        chunk_size: ChunkSize::from_shift(16).unwrap(),
        progress: false,
        rate_limit_bytes_per_sec: None,
        verify: false,
    }
}

/// Every chunk of every published version exists and verifies.
async fn check_every_version(store: &ChunkStore, round: u64, seed: u64) {
    for volume in store.volumes().await.unwrap() {
        for version in store.versions(&volume).await.unwrap() {
            let index = store.read_index(&volume, version).await.unwrap();
            for (i, c) in index.chunks.iter().enumerate() {
                if let ChunkRef::Data(hash) = c {
                    if let Err(e) = store.get_chunk(hash, index.chunk_len(i as u64)).await {
                        panic!(
                            "seed {seed} round {round}: {volume}@{version} chunk {i} ({hash}) lost to gc: {e}"
                        );
                    }
                }
            }
        }
    }
}

/// Run `rounds` rounds against `objects` (wrap it in [`Jittery`] for interleavings);
/// `scratch` holds the images. Returns how many chunks gc removed in all: at least the
/// 8 orphans per round that no backup reuses, so a test can check gc did real work.
pub async fn race(
    objects: Arc<dyn ObjectStore>,
    scratch: &std::path::Path,
    rounds: u64,
    seed: u64,
) -> u64 {
    let store = ChunkStore::from_object_store(Arc::clone(&objects), "race");
    race_on(store, objects, scratch, rounds, seed).await
}

/// As [`race`], through `store` (a local store opened as such takes its own paths,
/// such as the read lanes' stat of chunks it seems to hold); `objects` is the same
/// store, for removing indexes behind its back.
pub async fn race_on(
    store: ChunkStore,
    objects: Arc<dyn ObjectStore>,
    scratch: &std::path::Path,
    rounds: u64,
    seed: u64,
) -> u64 {
    let mut rng = Rng::new(seed);
    let mut removed_total = 0;
    for round in 0..rounds {
        // Orphans: 16 chunks of a version whose index is then removed.
        let orphan_image = scratch.join(format!("orphan-{round}"));
        let orphan = noise(16 * CHUNK, seed ^ (round << 8));
        std::fs::write(&orphan_image, &orphan).unwrap();
        let tmp = format!("tmp-{round}");
        let s = backup(&store, &orphan_image, &options(&tmp)).await.unwrap();
        let index =
            rehydrate_backup::store::version_path(&VolumeName::new(&tmp).unwrap(), s.version);
        objects.delete(&index).await.unwrap();
        // The live backup: half the orphans again, then 16 new chunks.
        let live_image = scratch.join(format!("live-{round}"));
        let mut live = orphan[..8 * CHUNK].to_vec();
        live.extend(noise(16 * CHUNK, seed ^ (round << 8) ^ 0xABCD));
        std::fs::write(&live_image, &live).unwrap();

        // The live backup is paced to take about 100 ms (its reused chunks come first);
        // gc starts anywhere in that time, so its steps fall between the backup's
        // existence checks and its publishing in many different ways.
        let gc_delay = Duration::from_micros(rng.below(110_000));
        // One task, two futures: they interleave at every store operation (each waits
        // a random moment first), which is where the races are.
        let live_options = BackupOptions {
            rate_limit_bytes_per_sec: Some(16 << 20),
            ..options("live")
        };
        let (published, collected) =
            tokio::join!(backup(&store, &live_image, &live_options), async {
                tokio::time::sleep(gc_delay).await;
                rehydrate_backup::gc::gc(&store, false, Duration::from_secs(3600), &mut |_| {})
                    .await
            });
        let (published, collected) = (published.unwrap(), collected.unwrap());
        removed_total += collected.removed_chunks;
        // The version just published restores byte for byte (all of them are checked
        // at the end).
        let index = store
            .read_index(&VolumeName::new("live").unwrap(), published.version)
            .await
            .unwrap();
        let mut restored = Vec::new();
        for (i, c) in index.chunks.iter().enumerate() {
            let len = index.chunk_len(i as u64);
            match c {
                ChunkRef::Data(h) => match store.get_chunk(h, len).await {
                    Ok(bytes) => restored.extend_from_slice(&bytes),
                    Err(e) => panic!("seed {seed} round {round}: published chunk {i} lost: {e}"),
                },
                ChunkRef::Zero => restored.resize(restored.len() + len, 0),
            }
        }
        assert!(
            restored == live,
            "seed {seed} round {round}: restored bytes differ"
        );
    }
    // A last gc with nothing running removes what no version references, nothing else.
    let last = rehydrate_backup::gc::gc(&store, false, Duration::from_secs(3600), &mut |_| {})
        .await
        .unwrap();
    removed_total += last.removed_chunks;
    check_every_version(&store, rounds, seed).await;
    removed_total
}
