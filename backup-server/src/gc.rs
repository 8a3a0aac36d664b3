//! `gc`: delete the chunks no version references, safely while backups run.
//!
//! Safety comes from the handshake in [`crate::marks`] (not from a grace period on chunk
//! age, which cannot protect an old chunk a running backup reuses): chunks that a
//! running backup announced count as referenced, and the chunks about to be deleted are
//! published in `gc/condemned` before the final look at indexes and announcements.
//!
//! Steps: list chunks; read every index and every live announcement; write the
//! unreferenced chunks to `gc/condemned` (create-if-not-exists, so one gc runs at a
//! time); read indexes and announcements again (new ones only: indexes never change);
//! delete the condemned chunks still unreferenced; delete expired announcements (of
//! backups that died); delete `gc/condemned`. Each chunk gets one line with its size.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, PutMode, PutPayload};

use crate::chunk::ChunkHash;
use crate::error::BackupError;
use crate::index::ChunkRef;
use crate::marks::{self, CONDEMNED_MAGIC, PENDING_MAGIC};
use crate::store::ChunkStore;

/// Deletions in flight at once.
const DELETES_IN_FLIGHT: usize = 16;

/// Delete chunks that no version references.
#[derive(Args, Clone, Debug)]
pub struct GcArgs {
    /// The store: a directory path or an object store URL (s3://bucket/prefix).
    #[arg(long, value_name = "STORE")]
    pub store: String,
    /// Print what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// A backup's announced chunks stop protecting them once its newest announcement is
    /// this old (a backup that died): e.g. 30m, 24h, 7d.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub pending_expiry: Duration,
}

/// `30s`, `10m`, `24h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}: a number and s, m, h or d (e.g. 24h)");
    let (digits, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    };
    secs.map(Duration::from_secs).ok_or_else(bad)
}

/// What `gc` found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcSummary {
    /// Chunks in the store when gc began.
    pub chunks: u64,
    /// Chunks deleted (or that would be).
    pub removed_chunks: u64,
    /// Their stored bytes.
    pub removed_bytes: u64,
    /// Stored bytes of the chunks kept.
    pub kept_bytes: u64,
    /// Announcement sets of running backups that protected chunks.
    pub live_backups: u64,
    /// Announcement sets of dead backups deleted (or that would be).
    pub expired_backups: u64,
}

/// Everything referenced, and what was read to learn it (to read only what is new).
#[derive(Default)]
struct References {
    chunks: HashSet<ChunkHash>,
    indexes_read: HashSet<Path>,
    pending_read: HashSet<Path>,
    live_backups: u64,
    expired: Vec<Path>,
}

impl References {
    /// Read every index and every live announcement not read yet.
    async fn update(&mut self, store: &ChunkStore, expiry: Duration) -> Result<(), BackupError> {
        // Announcements first, then indexes. A backup withdraws its announcements
        // only after its index is published, so a chunk it announced is seen either
        // here or in an index listed below. The other order has a hole: an index
        // published just after the indexes were listed, its announcements withdrawn
        // just before they are, and the chunk seen in neither.
        let objects = store.objects();
        let root = marks::pending_root();
        let listed: Vec<ObjectMeta> = objects
            .list(Some(&root))
            .try_collect()
            .await
            .map_err(|e| BackupError::store(&root, e))?;
        // One set per backup (`pending/ID/N`); live while its newest batch is fresh.
        let mut sets: HashMap<String, Vec<&ObjectMeta>> = HashMap::new();
        for meta in &listed {
            let id = meta.location.parts().nth(1).map(|p| p.as_ref().to_owned());
            sets.entry(id.unwrap_or_default()).or_default().push(meta);
        }
        let now = SystemTime::now();
        self.live_backups = 0;
        self.expired.clear();
        for batches in sets.values() {
            let newest = batches.iter().map(|m| m.last_modified).max();
            let age = newest
                .and_then(|t| now.duration_since(SystemTime::from(t)).ok())
                .unwrap_or_default();
            if age > expiry {
                self.expired
                    .extend(batches.iter().map(|m| m.location.clone()));
                continue;
            }
            self.live_backups += 1;
            for meta in batches {
                if !self.pending_read.insert(meta.location.clone()) {
                    continue;
                }
                // A set withdrawn meanwhile (its backup published) reads as absent.
                if let Some(hashes) = marks::read(&**objects, &meta.location, PENDING_MAGIC).await?
                {
                    self.chunks.extend(hashes);
                }
            }
        }
        for volume in store.volumes().await? {
            for version in store.versions(&volume).await? {
                let path = crate::store::version_path(&volume, version);
                if !self.indexes_read.insert(path) {
                    continue;
                }
                match store.read_index(&volume, version).await {
                    Ok(index) => self
                        .chunks
                        .extend(index.chunks.iter().filter_map(|c| match c {
                            ChunkRef::Data(h) => Some(*h),
                            ChunkRef::Zero => None,
                        })),
                    // Forgotten since it was listed: it references nothing any more.
                    Err(BackupError::VersionNotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// Run `gc`, printing one line per chunk through `print`; the last line is the summary
/// `gc: chunks=N removed_chunks=R removed_bytes=B kept_bytes=K live_backups=L
/// expired_backups=E dry_run=D`.
pub async fn run_gc(
    args: &GcArgs,
    print: &mut (dyn FnMut(&str) + Send),
) -> Result<GcSummary, BackupError> {
    let store = ChunkStore::open(&args.store, false)?;
    if !args.dry_run {
        store.check_conditional_put().await?;
    }
    gc(&store, args.dry_run, args.pending_expiry, print).await
}

/// Collect garbage in `store` (see the module comment).
pub async fn gc(
    store: &ChunkStore,
    dry_run: bool,
    pending_expiry: Duration,
    print: &mut (dyn FnMut(&str) + Send),
) -> Result<GcSummary, BackupError> {
    let objects = store.objects();
    let chunk_root = Path::from("chunks");
    let listed: Vec<ObjectMeta> = objects
        .list(Some(&chunk_root))
        .try_collect()
        .await
        .map_err(|e| BackupError::store(&chunk_root, e))?;
    let chunks: HashMap<ChunkHash, u64> = listed
        .iter()
        .filter_map(|m| {
            let hash = m.location.filename().and_then(ChunkHash::from_hex)?;
            Some((hash, m.size))
        })
        .collect();
    let mut refs = References::default();
    refs.update(store, pending_expiry).await?;
    let mut condemned: Vec<ChunkHash> = chunks
        .keys()
        .filter(|h| !refs.chunks.contains(h))
        .copied()
        .collect();
    condemned.sort_unstable_by_key(|h| h.0);
    let mut summary = GcSummary {
        chunks: chunks.len() as u64,
        ..GcSummary::default()
    };

    let removable = if dry_run {
        condemned
    } else {
        let path = marks::condemned_path();
        let payload = PutPayload::from(Bytes::from(marks::encode(CONDEMNED_MAGIC, &condemned)));
        match objects
            .put_opts(&path, payload, PutMode::Create.into())
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                let since = objects
                    .head(&path)
                    .await
                    .map_or("an unknown time".into(), |m| m.last_modified.to_rfc3339());
                return Err(BackupError::GcRunning {
                    since,
                    path: path.to_string(),
                });
            }
            Err(e) => return Err(BackupError::store(&path, e)),
        }
        let result = delete_condemned(store, &mut refs, condemned, pending_expiry).await;
        // Ending the run releases backups waiting on it, whatever happened.
        let ended = objects.delete(&path).await;
        let removable = result?;
        ended.map_err(|e| BackupError::store(&path, e))?;
        removable
    };

    let verb = if dry_run { "would remove" } else { "removed" };
    for hash in &removable {
        let bytes = chunks.get(hash).copied().unwrap_or(0);
        summary.removed_chunks += 1;
        summary.removed_bytes += bytes;
        print(&format!("{verb} chunk {hash} bytes={bytes}"));
    }
    let removed: HashSet<&ChunkHash> = removable.iter().collect();
    summary.kept_bytes = chunks
        .iter()
        .filter(|(h, _)| !removed.contains(h))
        .map(|(_, b)| b)
        .sum();
    summary.live_backups = refs.live_backups;
    summary.expired_backups = refs
        .expired
        .iter()
        .filter_map(|p| p.parts().nth(1))
        .collect::<HashSet<_>>()
        .len() as u64;
    print(&format!(
        "gc: chunks={} removed_chunks={} removed_bytes={} kept_bytes={} live_backups={} expired_backups={} dry_run={dry_run}",
        summary.chunks,
        summary.removed_chunks,
        summary.removed_bytes,
        summary.kept_bytes,
        summary.live_backups,
        summary.expired_backups,
    ));
    Ok(summary)
}

/// With `gc/condemned` written: look again, delete what is still unreferenced, then
/// the expired announcements. Returns the chunks deleted.
async fn delete_condemned(
    store: &ChunkStore,
    refs: &mut References,
    condemned: Vec<ChunkHash>,
    pending_expiry: Duration,
) -> Result<Vec<ChunkHash>, BackupError> {
    refs.update(store, pending_expiry).await?;
    let doomed: Vec<ChunkHash> = condemned
        .into_iter()
        .filter(|h| !refs.chunks.contains(h))
        .collect();
    let objects = store.objects();
    futures::stream::iter(doomed.iter().map(|h| h.path()))
        .map(|path| async move {
            match objects.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(BackupError::store(&path, e)),
            }
        })
        .buffer_unordered(DELETES_IN_FLIGHT)
        .try_collect::<()>()
        .await?;
    for path in &refs.expired {
        match objects.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(BackupError::store(path, e)),
        }
    }
    // Locally, the expired backups' directories (`pending/ID`) go too.
    let dirs: HashSet<Path> = refs
        .expired
        .iter()
        .filter_map(|p| {
            let mut parts = p.parts();
            Some(Path::from_iter([parts.next()?, parts.next()?]))
        })
        .collect();
    for dir in dirs {
        if let Err(e) = store.remove_empty_dir(&dir).await {
            tracing::warn!(%dir, %e, "gc: could not remove an expired backup's empty directory");
        }
    }
    Ok(doomed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "h", "10", "1.5h", "-1h", "99999999999999999999d", "10w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
