//! Performing an overlay-mode [`Action::CommitMetadata`](crate::engine::Action): the
//! in-place [`crate::commit`] for this mode. The destination's durable marks (when its
//! engine asked for a commit), the overlay map's pages (its durable map, which only
//! ever holds regions whose overlay data was flushed) and the record, in one commit.

use alloc::vec::Vec;

use super::OverlayEngine;
use crate::engine::{Action, Event};
use crate::meta::{CommitStats, MetaError, MetaStore, Metadata};

/// Commits through `store`; `map` is the overlay map's index in `meta`
/// ([`crate::meta::MapTable::find`] of [`super::OVERLAY_MAP`]), whose durable map is
/// attached to `meta`.
pub fn perform_commit<S: MetaStore + ?Sized>(
    engine: &mut OverlayEngine,
    meta: &mut Metadata,
    map: usize,
    store: &mut S,
) -> Result<CommitStats, MetaError> {
    let record = engine.prepare_commit(|regions| meta.note_marked(regions));
    meta.set_record(map, record)?;
    meta.commit(store, |word| engine.durable_word(word))
}

/// [`perform_commit`], then tells the engine how it went, appending its actions to
/// `out`. Returns the commit's result for logging.
pub fn commit_and_answer<S: MetaStore + ?Sized>(
    engine: &mut OverlayEngine,
    meta: &mut Metadata,
    map: usize,
    store: &mut S,
    commit: u64,
    out: &mut Vec<Action>,
) -> Result<CommitStats, MetaError> {
    let result = perform_commit(engine, meta, map, store);
    engine.handle(
        Event::MetadataCommitted {
            commit,
            ok: result.is_ok(),
        },
        out,
    );
    result
}
