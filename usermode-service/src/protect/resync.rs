//! Closing gaps: the read-back task, and the comparison a protect makes when it starts
//! over a target that may not equal its journal's head.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rehydrate_backup::journal::export::PointExport;
use rehydrate_driver::Geometry;
use rehydrate_nbd::Export;

use super::error::ProtectError;
use super::shared::{lock, now_unix_ns, Protected, RECHECK};
use crate::restore::Target;

/// Bytes compared at once when a protect starts.
pub const COMPARE_PIECE_BYTES: u64 = 1 << 20;

/// Reads back what the capture asks (the regions of a gap) until `shared.stopping` is set
/// and no gap is open, or journaling failed.
pub async fn run(shared: Arc<Protected>) {
    // Each turn reads back one range or waits for a wake-up (bounded by RECHECK).
    loop {
        if lock(&shared.failure).is_some() {
            return;
        }
        let next = lock(&shared.capture).next_resync(now_unix_ns());
        let Some(r) = next else {
            let done = shared.stopping.load(Ordering::Acquire) && !lock(&shared.capture).in_gap();
            if done {
                return;
            }
            tokio::select! {
                () = shared.resync.notified() => {}
                () = tokio::time::sleep(RECHECK) => {}
            }
            continue;
        };
        let target = Arc::clone(&shared.target);
        let data = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; r.len as usize];
            target.read_at(r.offset, &mut buf).map(|()| buf)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = &data {
            tracing::warn!(%e, offset = r.offset, len = r.len, "protect: reading back a gap's region failed; trying again");
        }
        let done = lock(&shared.capture).resync_done(r.ticket, data.as_deref().ok(), now_unix_ns());
        if let Err(e) = done {
            shared.fail(format!("reading back a gap: {e}"));
            return;
        }
        shared.pump.wake();
        shared.room.notify_waiters();
    }
}

/// Region runs where `target` differs from `head` (the journal's head served as a
/// point): compared piece by piece, each region byte for byte.
pub async fn differing_regions(
    target: &Arc<Target>,
    head: &PointExport,
    geometry: &Geometry,
) -> Result<Vec<Range<u64>>, ProtectError> {
    let size = geometry.volume_size_bytes();
    let region = u64::from(geometry.region_size_bytes());
    let piece = COMPARE_PIECE_BYTES.max(region) / region * region;
    let mut runs: Vec<Range<u64>> = Vec::new();
    let mut at = 0;
    // One step per piece: size / 1 MiB steps.
    while at < size {
        let len = piece.min(size - at);
        let journal = head.read(at, len as u32).await.map_err(|e| {
            ProtectError::JournalFailed(format!("reading the journal's head at {at}: {e}"))
        })?;
        let t = Arc::clone(target);
        let local = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len as usize];
            t.read_at(at, &mut buf).map(|()| buf)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|source| crate::ServiceError::TargetIo {
            op: "read",
            path: target.path().to_owned(),
            source,
        })?;
        for (i, (a, b)) in journal
            .chunks(region as usize)
            .zip(local.chunks(region as usize))
            .enumerate()
        {
            if a != b {
                let r = at / region + i as u64;
                match runs.last_mut() {
                    Some(last) if last.end == r => last.end = r + 1,
                    _ => runs.push(r..r + 1),
                }
            }
        }
        at += len;
    }
    Ok(runs)
}
