//! Performing [`Action::CommitMetadata`](crate::engine::Action::CommitMetadata): the few
//! lines every shell (kernel work item, simulator, Linux restore) runs the same way.
//!
//! The engine knows which marks are durable-eligible; the metadata knows pages and
//! slots; the store does the I/O. This joins them without giving the engine any I/O.

use crate::engine::{Engine, Event};
use crate::meta::{CommitStats, MetaError, MetaStore, Metadata};
use alloc::vec::Vec;

/// Hands the engine's newly durable-eligible marks to the metadata and commits them
/// through `store`. The shell then feeds [`Event::MetadataCommitted`] with the outcome
/// (see [`commit_and_answer`]).
pub fn perform_commit<S: MetaStore + ?Sized>(
    engine: &mut Engine,
    meta: &mut Metadata,
    store: &mut S,
) -> Result<CommitStats, MetaError> {
    engine.take_flushed_marks(|regions| meta.note_marked(regions));
    engine.prepare_durable_view();
    meta.commit(store, |word| engine.durable_word(word))
}

/// [`perform_commit`], then tells the engine how it went, appending its actions to
/// `out`. Returns the commit's result for logging.
pub fn commit_and_answer<S: MetaStore + ?Sized>(
    engine: &mut Engine,
    meta: &mut Metadata,
    store: &mut S,
    commit: u64,
    out: &mut Vec<crate::engine::Action>,
) -> Result<CommitStats, MetaError> {
    let result = perform_commit(engine, meta, store);
    engine.handle(
        Event::MetadataCommitted {
            commit,
            ok: result.is_ok(),
        },
        out,
    );
    result
}
