//! Block status (`base:allocation`) of the live volume as the client sees it: a
//! restored region is what the target holds (its holes read as zeros), a missing one is
//! what the source holds (the client reads the backup's data there). Anything that
//! cannot be told is reported as data, which is always true.

use std::sync::atomic::Ordering;

use rehydrate_nbd::{ExportError, Extent};

use super::Shared;
use crate::source::Source;

/// Most bytes one answer covers; the client asks again for the rest (the protocol lets
/// a server answer less than asked), so each answer is bounded work.
pub const SPAN_MAX_BYTES: u64 = 256 << 20;

/// The extents of `[offset, offset + len)`, consecutive from `offset`.
pub async fn block_status<S: Source>(
    shared: &Shared,
    source: &S,
    offset: u64,
    len: u64,
) -> Result<Vec<Extent>, ExportError> {
    let end = offset
        .saturating_add(len.min(SPAN_MAX_BYTES))
        .min(shared.size_bytes);
    if offset >= end {
        return Err(ExportError::OutOfRange);
    }
    let geometry = *shared.map.geometry();
    let region = u64::from(geometry.region_size_bytes());
    let passthrough = shared.passthrough.load(Ordering::Acquire);
    let all_restored = passthrough || shared.map.is_all_restored();
    // Overlay mode before the cutover: a region in O is the overlay's data, whatever
    // the target holds there.
    let overlay = shared.overlay.as_ref().filter(|_| !passthrough);
    let state = |r: u64| match overlay {
        Some(o) if o.is_restored(r) => 2u8,
        _ => u8::from(all_restored || shared.map.is_restored(r)),
    };
    let mut out: Vec<Extent> = Vec::new();
    let mut at = offset;
    // One step per run of regions in the same state: bounded by the regions in the span.
    while at < end {
        let here = state(at / region);
        let mut run_end = ((at / region) + 1) * region;
        while run_end < end && state(run_end / region) == here {
            run_end += region;
        }
        let run_end = run_end.min(end);
        let extents = if here == 2 {
            vec![Extent::data(run_end - at)]
        } else if here == 1 {
            shared
                .target
                .allocation(at, run_end)
                .unwrap_or_else(|_| vec![Extent::data(run_end - at)])
        } else {
            match source.block_status(at, run_end - at).await {
                Ok(map) => map
                    .iter()
                    .map(|a| {
                        if a.zero {
                            Extent::hole(a.len)
                        } else {
                            Extent::data(a.len)
                        }
                    })
                    .collect(),
                Err(_) => vec![Extent::data(run_end - at)],
            }
        };
        // Clip to the run (a source may answer past it or short of it).
        let mut covered = 0u64;
        for e in extents {
            let len = e.length_bytes.min(run_end - at - covered);
            if len == 0 {
                break;
            }
            push(
                &mut out,
                Extent {
                    length_bytes: len,
                    ..e
                },
            );
            covered += len;
        }
        if covered < run_end - at {
            push(&mut out, Extent::data(run_end - at - covered));
        }
        at = run_end;
    }
    debug_assert_eq!(
        out.iter().map(|e| e.length_bytes).sum::<u64>(),
        end - offset
    );
    Ok(out)
}

fn push(out: &mut Vec<Extent>, e: Extent) {
    match out.last_mut() {
        Some(last) if last.hole == e.hole && last.zero == e.zero => {
            last.length_bytes += e.length_bytes
        }
        _ => out.push(e),
    }
}
