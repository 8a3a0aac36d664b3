//! Run CPU-bound work (hashing, compression, verification) on rayon's pool and await it.
//!
//! Why rayon and not tokio tasks: hashing and compressing a 1 MiB chunk takes about a
//! millisecond of pure CPU. On tokio's worker threads that would stall the I/O the
//! same threads drive; on `spawn_blocking` it would run on a pool sized for blocked I/O
//! (hundreds of threads), oversubscribing the cores. Rayon's pool has one thread per
//! core, so CPU work runs at full speed while tokio keeps store I/O in flight.

use crate::error::BackupError;

/// Run `work` on the rayon pool and wait for its result without blocking the runtime.
pub async fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BackupError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        // The receiver may be gone if the caller was cancelled; the result is not needed.
        let _ = tx.send(work());
    });
    rx.await
        .map_err(|_| BackupError::Internal("cpu worker ended without a result".into()))
}
