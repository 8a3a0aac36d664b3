//! A bounded LRU cache of verified, decompressed chunks, shared by every connection.
//!
//! Why the `lru` crate: it gives O(1) lookups, promotion and eviction over a hash map
//! with an intrusive list; a hand-written one would be the same structure with more
//! room for mistakes. The cache is bounded in bytes (chunk sizes differ per volume),
//! evicting least-recently-used chunks until the total fits.
//!
//! Concurrent misses on one chunk share one fetch (requests that straddle a chunk
//! boundary, or several clients reading the same region, would otherwise fetch and
//! verify it several times). Failed fetches are not cached: each read tries again, so a
//! repaired chunk is served once it is good.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use lru::LruCache;

use crate::chunk::ChunkHash;
use crate::error::BackupError;
use crate::store::ChunkStore;

type Fetch = Shared<BoxFuture<'static, Result<Bytes, Arc<BackupError>>>>;

/// The default cache size: 256 MiB of decompressed chunks.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

/// A shared chunk cache over one store.
pub struct ChunkCache {
    store: ChunkStore,
    capacity_bytes: u64,
    state: Mutex<State>,
}

struct State {
    lru: LruCache<ChunkHash, Bytes>,
    used_bytes: u64,
    in_flight: HashMap<ChunkHash, Fetch>,
}

impl ChunkCache {
    /// A cache of at most `capacity_bytes` over `store`.
    pub fn new(store: ChunkStore, capacity_bytes: u64) -> Self {
        Self {
            store,
            capacity_bytes,
            state: Mutex::new(State {
                lru: LruCache::unbounded(),
                used_bytes: 0,
                in_flight: HashMap::new(),
            }),
        }
    }

    /// The store the cache reads from.
    pub fn store(&self) -> &ChunkStore {
        &self.store
    }

    /// Bytes of chunks held now.
    pub fn used_bytes(&self) -> u64 {
        self.state.lock().map(|s| s.used_bytes).unwrap_or(0)
    }

    /// Chunk `hash` of `len` bytes, verified: from the cache, or fetched once.
    pub async fn get(&self, hash: &ChunkHash, len: usize) -> Result<Bytes, Arc<BackupError>> {
        let fetch = {
            let mut state = self.lock()?;
            if let Some(hit) = state.lru.get(hash) {
                return Ok(hit.clone());
            }
            match state.in_flight.get(hash) {
                Some(fetch) => fetch.clone(),
                None => {
                    let (store, hash_owned) = (self.store.clone(), *hash);
                    let fetch =
                        async move { store.get_chunk(&hash_owned, len).await.map_err(Arc::new) }
                            .boxed()
                            .shared();
                    state.in_flight.insert(*hash, fetch.clone());
                    fetch
                }
            }
        };
        let result = fetch.await;
        let mut state = self.lock()?;
        state.in_flight.remove(hash);
        if let Ok(data) = &result {
            self.insert(&mut state, *hash, data.clone());
        }
        result
    }

    fn insert(&self, state: &mut State, hash: ChunkHash, data: Bytes) {
        if data.len() as u64 > self.capacity_bytes {
            return;
        }
        let len = data.len() as u64;
        if let Some(old) = state.lru.put(hash, data) {
            state.used_bytes -= old.len() as u64;
        }
        state.used_bytes += len;
        // Bounded: each pop removes one entry and the cache holds finitely many.
        while state.used_bytes > self.capacity_bytes {
            match state.lru.pop_lru() {
                Some((_, evicted)) => state.used_bytes -= evicted.len() as u64,
                None => break,
            }
        }
        debug_assert!(state.used_bytes <= self.capacity_bytes);
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, Arc<BackupError>> {
        self.state
            .lock()
            .map_err(|_| Arc::new(BackupError::Internal("chunk cache lock poisoned".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk;

    #[tokio::test]
    async fn caches_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().to_str().unwrap(), true).unwrap();
        let mut hashes = Vec::new();
        for i in 0..4u8 {
            let data = vec![i + 1; 1000];
            let hash = ChunkHash::of(&data);
            store
                .put_chunk(&hash, chunk::encode(Bytes::from(data)))
                .await
                .unwrap();
            hashes.push(hash);
        }
        let cache = ChunkCache::new(store, 2500);
        for (i, hash) in hashes.iter().enumerate() {
            assert_eq!(cache.get(hash, 1000).await.unwrap()[0], i as u8 + 1);
            assert!(cache.used_bytes() <= 2500);
        }
        assert_eq!(cache.used_bytes(), 2000);
        // A cached chunk is served even after its object is gone.
        let last = hashes[3];
        std::fs::remove_file(dir.path().join(last.path().as_ref())).unwrap();
        assert_eq!(cache.get(&last, 1000).await.unwrap()[0], 4);
        // An evicted one is fetched again, and its loss is an error, not data.
        std::fs::remove_file(dir.path().join(hashes[0].path().as_ref())).unwrap();
        assert!(cache.get(&hashes[0], 1000).await.is_err());
    }
}
