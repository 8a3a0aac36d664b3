//! What replication does differently on Unix and Windows: the session lock, and how a
//! batch of written chunks is made durable. Everything else in replication is portable.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use crate::chunk::ChunkHash;
use crate::store::ChunkStore;

/// Open (creating) the lock file at `path` and take it exclusively without waiting:
/// `None` if another session holds it. The lock goes with the file (and the process).
#[cfg(unix)]
pub fn open_locked(path: &Path) -> io::Result<Option<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Open (creating) the lock file at `path` and take it exclusively without waiting:
/// `None` if another session holds it (an open that shares nothing is the lock).
#[cfg(windows)]
pub fn open_locked(path: &Path) -> io::Result<Option<File>> {
    use std::os::windows::fs::OpenOptionsExt;
    const ERROR_SHARING_VIOLATION: i32 = 32;
    match OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .share_mode(0)
        .open(path)
    {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.raw_os_error() == Some(ERROR_SHARING_VIOLATION) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Make the chunks `hashes`, written under `root`, durable with the directory entries
/// naming them. Blocking.
///
/// Unix: one `syncfs` of the store's file system, one journal commit for the batch;
/// fsyncing each file and each of the 256 fan-out directories instead costs a commit
/// apiece, which made that the bottleneck. Windows: the store's own per-file sync (NTFS
/// logs directory changes itself).
pub fn make_durable(
    root: &Path,
    store: &ChunkStore,
    hashes: &[ChunkHash],
    runtime: &tokio::runtime::Handle,
) -> Result<(), String> {
    #[cfg(unix)]
    {
        let _ = (store, hashes, runtime);
        File::open(root)
            .and_then(|dir| rustix::fs::syncfs(&dir).map_err(io::Error::from))
            .map_err(|e| format!("cannot sync {}: {e}", root.display()))
    }
    #[cfg(not(unix))]
    {
        let _ = root;
        runtime
            .block_on(store.sync_chunks(hashes.to_vec()))
            .map_err(|e| e.to_string())
    }
}
