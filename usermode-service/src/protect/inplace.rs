//! In-place recovery of a protected volume: `rehydrate restore --source
//! nbd://…/NAME@mark:LABEL --target PROTECTED` fetches only what changed since the point.
//!
//! When a new restore starts into a target that carries a protect state
//! (`TARGET.rehydrate-protect`) and the state is clean (protect stopped with everything
//! flushed and journaled up to `head`), and the source is a point of that same journal,
//! then every region no record after the point (up to `head`) wrote already holds the
//! point's data, durably: those are marked restored before the restore begins
//! ([`rehydrate_driver::meta::premark`]), and only the rest is fetched.
//!
//! Whatever the source, a restore into a protected target sets its state to running
//! before anything is written, so the next `rehydrate protect` compares the target with
//! the journal and journals what the recovery changed (inside a gap): the journal stays
//! one line of history, and recovering to another point later — after new writes —
//! again fetches only what differs.

use std::ops::Range;
use std::path::Path;

use rehydrate_backup::journal::Journal;
use rehydrate_driver::meta::premark::premark;
use rehydrate_driver::meta::{Metadata, SourceKind, SourcePin, TargetPin};
use rehydrate_driver::RegionMap;

use super::state::{Phase, State};
use crate::restore::FileMetaStore;
use crate::ServiceError;

/// Runs for a restore that creates new metadata for `target` from `source`: marks what
/// the target already holds (see the module comment); returns how many regions.
pub fn start(
    target: &Path,
    target_pin: &TargetPin,
    source: &SourcePin,
    map: &RegionMap,
    meta: &mut Metadata,
    store: &mut FileMetaStore,
) -> Result<u64, ServiceError> {
    let state = match State::read(target) {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(0),
        Err(e) => {
            tracing::warn!(%e, "in-place recovery: the protect state cannot be read; every region is fetched");
            return Ok(0);
        }
    };
    // The target is about to change: the journal no longer describes it.
    let running = State {
        phase: Phase::Running,
        ..state.clone()
    };
    running.write(target).map_err(|e| ServiceError::TargetIo {
        op: "update the protect state of",
        path: target.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let regions = match unchanged(&state, target_pin, source, map) {
        Ok(r) => r,
        Err(why) => {
            tracing::warn!(%why, "in-place recovery: fetching every region");
            return Ok(0);
        }
    };
    premark(meta, store, map, regions).map_err(|source| ServiceError::Metadata {
        path: target.to_owned(),
        source,
    })?;
    let marked = map.restored_count();
    tracing::info!(
        marked,
        regions = map.region_count(),
        "in-place recovery: regions unchanged since the point are kept"
    );
    Ok(marked)
}

/// The region runs no journal record after the point wrote, or why they cannot be told.
fn unchanged(
    state: &State,
    target_pin: &TargetPin,
    source: &SourcePin,
    map: &RegionMap,
) -> Result<Vec<Range<u64>>, String> {
    if source.kind != SourceKind::JournalPoint {
        return Err("the source is not a point of a journal".into());
    }
    if state.phase != Phase::Clean {
        return Err(
            "protect did not stop cleanly, so the target may hold unjournaled writes".into(),
        );
    }
    if state.target != *target_pin {
        return Err("the protect state belongs to another file".into());
    }
    let (volume, point) = source
        .name()
        .split_once('@')
        .ok_or("the point's name has no '@'")?;
    let seq: u64 = point
        .split_once('+')
        .and_then(|(_, s)| s.parse().ok())
        .ok_or("the point's name has no sequence")?;
    if volume != state.volume.as_str() || source.version != u64::from(state.base) {
        return Err(format!(
            "the target is protected as {}@{}, the point is of {volume}@{}",
            state.volume, state.base, source.version
        ));
    }
    let journal =
        Journal::open(&state.store, &state.volume, state.base).map_err(|e| e.to_string())?;
    let p = journal
        .point(seq)
        .ok_or("the point is not in the journal the target was protected by")?;
    if p.digest != source.digest || journal.head() < state.head || seq > state.head {
        return Err("the journal and the point disagree".into());
    }
    let geometry = map.geometry();
    let mut changed = rehydrate_driver::capture::dirty::DirtySet::new(usize::MAX);
    for e in journal.entries() {
        if e.seq > seq && e.seq <= state.head && e.kind.is_data() {
            if geometry.check(e.offset, e.len).is_err() {
                return Err(format!("record {} lies outside the volume", e.seq));
            }
            changed.insert(geometry.regions_touched(e.offset, e.len));
        }
    }
    let mut keep = Vec::new();
    let mut at = 0;
    // Complement of the changed runs: one step per run.
    while let Some(run) = changed.take(u64::MAX, |_| false) {
        if run.start > at {
            keep.push(at..run.start);
        }
        at = run.end;
    }
    if at < geometry.region_count() {
        keep.push(at..geometry.region_count());
    }
    Ok(keep)
}
