//! Deliberate, named bugs, compiled in only with the `mutants` feature and chosen at run
//! time, so the simulator can prove its oracle catches each kind of mistake the engine
//! could make. Without the feature [`active`] is a constant `false` and every hook
//! compiles away.

use core::sync::atomic::{AtomicU8, Ordering};

/// A deliberate bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Mutant {
    /// Commit marks whose data has not been flushed yet (breaks rule 2).
    CommitMetadataBeforeDataFlush = 1,
    /// Mark a hydrated region when its write is issued, not when it completes.
    MarkBeforeLowerWriteCompletes = 2,
    /// Treat the partly covered head and tail regions of a write as covered (no fetch).
    SkipFetchForPartialWrite = 3,
    /// Write hydrate data over regions a write has claimed (breaks rule 4).
    AcceptStaleHydrate = 4,
    /// Write metadata pages over their current slot, so a torn write loses marks.
    LoseMarkOnTornCommit = 5,
    /// Forward reads without waiting for their regions.
    ForwardReadBeforeRestored = 6,
    /// Write capture: number a write when it is dispatched, not when it completes.
    SequenceAtDispatch = 7,
    /// Write capture: make a flush's recovery point when the flush is dispatched, inside
    /// the epoch it has not closed yet.
    PointInsideUnflushedEpoch = 8,
    /// Journal: apply the records of a torn segment tail instead of truncating them.
    TornTailApplied = 9,
}

impl Mutant {
    /// Every mutant of the engine, for the simulator's sweeps.
    pub const ALL: [Mutant; 6] = [
        Mutant::CommitMetadataBeforeDataFlush,
        Mutant::MarkBeforeLowerWriteCompletes,
        Mutant::SkipFetchForPartialWrite,
        Mutant::AcceptStaleHydrate,
        Mutant::LoseMarkOnTornCommit,
        Mutant::ForwardReadBeforeRestored,
    ];

    /// The write-capture and journal mutants: caught by the capture's model tests and
    /// the journal's tests; they join [`Mutant::ALL`] once the simulator runs capture.
    pub const CAPTURE: [Mutant; 3] = [
        Mutant::SequenceAtDispatch,
        Mutant::PointInsideUnflushedEpoch,
        Mutant::TornTailApplied,
    ];

    /// The command-line name.
    pub const fn name(self) -> &'static str {
        match self {
            Mutant::CommitMetadataBeforeDataFlush => "commit-metadata-before-data-flush",
            Mutant::MarkBeforeLowerWriteCompletes => "mark-before-lower-write-completes",
            Mutant::SkipFetchForPartialWrite => "skip-fetch-for-partial-write",
            Mutant::AcceptStaleHydrate => "accept-stale-hydrate",
            Mutant::LoseMarkOnTornCommit => "lose-mark-on-torn-commit",
            Mutant::ForwardReadBeforeRestored => "forward-read-before-restored",
            Mutant::SequenceAtDispatch => "sequence-at-dispatch",
            Mutant::PointInsideUnflushedEpoch => "point-inside-unflushed-epoch",
            Mutant::TornTailApplied => "torn-tail-applied",
        }
    }

    /// The mutant called `name`.
    pub fn from_name(name: &str) -> Option<Mutant> {
        Mutant::ALL
            .into_iter()
            .chain(Mutant::CAPTURE)
            .find(|m| m.name() == name)
    }
}

static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// Selects the mutant for the whole process (`None`: the real engine). Without the
/// `mutants` feature selecting one is refused.
pub fn set(mutant: Option<Mutant>) -> bool {
    if !cfg!(feature = "mutants") && mutant.is_some() {
        return false;
    }
    ACTIVE.store(mutant.map_or(0, |m| m as u8), Ordering::Relaxed);
    true
}

/// True when `mutant` is selected (always false without the feature).
#[inline(always)]
pub fn active(mutant: Mutant) -> bool {
    cfg!(feature = "mutants") && ACTIVE.load(Ordering::Relaxed) == mutant as u8
}

/// True when any mutant is selected: the engine's own debug assertions stand back so
/// the simulator's oracle, not a panic, is what catches the bug.
#[inline(always)]
pub fn any() -> bool {
    cfg!(feature = "mutants") && ACTIVE.load(Ordering::Relaxed) != 0
}
