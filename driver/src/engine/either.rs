//! The engine of one volume in either mode, for shells that run both: the in-place
//! engine (T1) or the overlay mode (T2). Both take the same [`Event`]s and emit
//! [`Action`]s; the overlay mode's own actions ([`Action::Piece`], [`Action::Copy`],
//! ...) come only from it.

use alloc::sync::Arc;
use alloc::vec::Vec;

use super::overlay::{self, OverlayEngine};
use super::{Action, Counters, Engine, Event};
use crate::abi::RestoreMode;
use crate::geometry::Geometry;
use crate::meta::{CommitStats, MetaError, MetaStore, Metadata};
use crate::region::RegionMap;

/// The engine of one volume. One lives per volume for its whole restore, so the size
/// of the larger variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Core {
    /// Restore in place.
    InPlace(Engine),
    /// The overlay mode, whose overlay map is named map `map` of the metadata.
    Overlay {
        /// The engine.
        engine: OverlayEngine,
        /// The overlay map's index in the metadata's map table.
        map: usize,
    },
}

impl Core {
    /// Handles one event, appending what to do to `out`.
    pub fn handle(&mut self, event: Event, out: &mut Vec<Action>) {
        match self {
            Core::InPlace(e) => e.handle(event, out),
            Core::Overlay { engine, .. } => engine.handle(event, out),
        }
    }

    /// The mode.
    pub fn mode(&self) -> RestoreMode {
        match self {
            Core::InPlace(_) => RestoreMode::InPlace,
            Core::Overlay { .. } => RestoreMode::Overlay,
        }
    }

    /// The restore map (D in the overlay mode).
    pub fn map(&self) -> &Arc<RegionMap> {
        match self {
            Core::InPlace(e) => e.map(),
            Core::Overlay { engine, .. } => engine.map(),
        }
    }

    /// The volume's geometry.
    pub fn geometry(&self) -> &Geometry {
        match self {
            Core::InPlace(e) => e.geometry(),
            Core::Overlay { engine, .. } => engine.geometry(),
        }
    }

    /// True when every request may go to the lower device unchanged (in place: every
    /// region durably restored; overlay: merged), nothing held or in flight.
    pub fn is_passthrough(&self) -> bool {
        match self {
            Core::InPlace(e) => e.is_passthrough(),
            Core::Overlay { engine, .. } => engine.is_passthrough(),
        }
    }

    /// Requests held right now.
    pub fn held_count(&self) -> usize {
        match self {
            Core::InPlace(e) => e.held_count(),
            Core::Overlay { engine, .. } => engine.held_count(),
        }
    }

    /// The restore's counters; in the overlay mode the destination's, with the
    /// requests failed and the commits of the whole.
    pub fn counters(&self) -> Counters {
        match self {
            Core::InPlace(e) => e.counters(),
            Core::Overlay { engine, .. } => {
                let mine = engine.counters();
                let d = engine.destination().counters();
                Counters {
                    requests_failed: d.requests_failed + mine.requests_failed,
                    commits: mine.commits,
                    ..d
                }
            }
        }
    }

    /// The overlay engine, in the overlay mode.
    pub fn overlay(&self) -> Option<&OverlayEngine> {
        match self {
            Core::InPlace(_) => None,
            Core::Overlay { engine, .. } => Some(engine),
        }
    }

    /// The overlay engine, in the overlay mode, to change.
    pub fn overlay_mut(&mut self) -> Option<&mut OverlayEngine> {
        match self {
            Core::InPlace(_) => None,
            Core::Overlay { engine, .. } => Some(engine),
        }
    }

    /// Sorts the destination's unflushed marks so [`Core::durable_word`] can hide
    /// them (see [`Engine::prepare_durable_view`]).
    pub fn prepare_durable_view(&mut self) {
        match self {
            Core::InPlace(e) => e.prepare_durable_view(),
            Core::Overlay { engine, .. } => engine.prepare_durable_view(),
        }
    }

    /// Word `index` of the restore map as it may be made durable.
    pub fn durable_word(&self, index: usize) -> u64 {
        match self {
            Core::InPlace(e) => e.durable_word(index),
            Core::Overlay { engine, .. } => engine.durable_word(index),
        }
    }

    /// Performs [`Action::CommitMetadata`] `commit` through `store` and tells the
    /// engine how it went, appending its actions to `out`.
    pub fn commit_and_answer<S: MetaStore + ?Sized>(
        &mut self,
        meta: &mut Metadata,
        store: &mut S,
        commit: u64,
        out: &mut Vec<Action>,
    ) -> Result<CommitStats, MetaError> {
        match self {
            Core::InPlace(e) => crate::commit::commit_and_answer(e, meta, store, commit, out),
            Core::Overlay { engine, map } => {
                overlay::commit::commit_and_answer(engine, meta, *map, store, commit, out)
            }
        }
    }
}
