//! Deliberate, named bugs, compiled in only with the `mutants` feature and chosen at run
//! time, so the simulator can prove its oracle catches each kind of mistake the engine
//! could make. Without the feature [`active`] is a constant `false` and every hook
//! compiles away. The crate's own tests (the engine model) select mutants too; there the
//! choice is per thread, since the test harness runs tests side by side.

use core::sync::atomic::AtomicU8;
#[cfg(not(test))]
use core::sync::atomic::Ordering;

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
    /// On a fetch failure, fail every held request that needs any unrestored region of
    /// the reported range, not only the waiters of regions that failed (issue 10, item 6).
    FailWaitersOfWholeRange = 7,
    /// Keep regions asked of the service after every request waiting on them left
    /// (issue 10, item 8).
    KeepUnwantedRequests = 8,
    /// Ask the service for every missing region of a held request at once, however
    /// many (issue 10, item 8: one entry per region of a large read).
    AskEveryMissingRegion = 9,
    /// Leave a region whose covering write failed missing with nobody asked to fetch
    /// it again (issue 10, item 12a: the service already dropped data for it).
    NoReaskAfterFailedClaim = 10,
    /// Time held requests from the engine's start instead of the first clock it was
    /// given (issue 10, item 12b: a reboot late in the run times them out at once).
    HoldDeadlineFromEngineStart = 11,
    /// The filter completes a held request without unmarking it cancelable first.
    CompleteWhileCancelable = 12,
    /// A completed flush makes marks durable that were recorded after it was issued.
    FlushCoversLaterMarks = 13,
    /// A FUA write completes without a flush and commit even when a region it touched
    /// is marked but not durably committed.
    SkipFuaCommitWhenUnflushed = 14,
    /// Write capture: number a write when it is dispatched, not when it completes.
    SequenceAtDispatch = 15,
    /// Write capture: make a flush's recovery point when the flush is dispatched, inside
    /// the epoch it has not closed yet.
    PointInsideUnflushedEpoch = 16,
    /// Journal: apply the records of a torn segment tail instead of truncating them.
    TornTailApplied = 17,
    /// Overlay mode: application writes go to the destination before the cutover.
    AppWriteToDestination = 18,
    /// Overlay mode: a region enters the durable overlay map when its overlay write
    /// completes, before an overlay flush.
    MarkOverlayBeforeFlush = 19,
    /// Overlay mode: the merge commits *merged* (the overlay's end) without waiting
    /// for the destination flush.
    ClearOverlayBeforeDestinationFlush = 20,
    /// Overlay mode: reads of regions in the overlay map are served from the
    /// destination (backup data).
    ServeBackupForOverlayRegion = 21,
    /// DR primary: mark a region sent when its read for sending completes, not before
    /// the read is admitted (a write admitted meanwhile stays local and is lost).
    MarkSentAfterRead = 22,
    /// DR site: apply a fetched region's data as soon as it arrives, ahead of the stream
    /// items before it.
    FetchReplyOutOfOrder = 23,
    /// DR site: drop a replicated write whose region's data has not landed yet, as if
    /// it were stale.
    DropReplicatedWrite = 24,
    /// DR site: write region data without ordering it against the replicated writes
    /// around it, so it can land over a newer write.
    StaleRegionOverWrite = 25,
}

impl Mutant {
    /// Every mutant, for sweeps.
    pub const ALL: [Mutant; 14] = [
        Mutant::CommitMetadataBeforeDataFlush,
        Mutant::MarkBeforeLowerWriteCompletes,
        Mutant::SkipFetchForPartialWrite,
        Mutant::AcceptStaleHydrate,
        Mutant::LoseMarkOnTornCommit,
        Mutant::ForwardReadBeforeRestored,
        Mutant::FailWaitersOfWholeRange,
        Mutant::KeepUnwantedRequests,
        Mutant::AskEveryMissingRegion,
        Mutant::NoReaskAfterFailedClaim,
        Mutant::HoldDeadlineFromEngineStart,
        Mutant::CompleteWhileCancelable,
        Mutant::FlushCoversLaterMarks,
        Mutant::SkipFuaCommitWhenUnflushed,
    ];

    /// The write-capture and journal mutants: caught by the capture's model tests, the
    /// journal's tests, and (the first two) the simulator's protected runs
    /// (`rehydrate-sim --journal`, `sim/tests/journal.rs`), which [`Mutant::ALL`]'s
    /// unprotected sweeps do not make.
    pub const CAPTURE: [Mutant; 3] = [
        Mutant::SequenceAtDispatch,
        Mutant::PointInsideUnflushedEpoch,
        Mutant::TornTailApplied,
    ];

    /// The overlay mode's mutants (caught by the overlay model and sweep).
    pub const OVERLAY: [Mutant; 4] = [
        Mutant::AppWriteToDestination,
        Mutant::MarkOverlayBeforeFlush,
        Mutant::ClearOverlayBeforeDestinationFlush,
        Mutant::ServeBackupForOverlayRegion,
    ];

    /// The disaster-recovery mutants (technique T5): caught by the two-site model test
    /// in `rehydrate_driver::dr` and by the simulator's two-site sweep
    /// (`rehydrate-sim dr-sweep`), which [`Mutant::ALL`]'s single-machine sweeps do not
    /// run.
    pub const DR: [Mutant; 4] = [
        Mutant::MarkSentAfterRead,
        Mutant::FetchReplyOutOfOrder,
        Mutant::DropReplicatedWrite,
        Mutant::StaleRegionOverWrite,
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
            Mutant::FailWaitersOfWholeRange => "fail-waiters-of-whole-range",
            Mutant::KeepUnwantedRequests => "keep-unwanted-requests",
            Mutant::AskEveryMissingRegion => "ask-every-missing-region",
            Mutant::NoReaskAfterFailedClaim => "no-reask-after-failed-claim",
            Mutant::HoldDeadlineFromEngineStart => "hold-deadline-from-engine-start",
            Mutant::CompleteWhileCancelable => "complete-while-cancelable",
            Mutant::FlushCoversLaterMarks => "flush-covers-later-marks",
            Mutant::SkipFuaCommitWhenUnflushed => "skip-fua-commit-when-unflushed",
            Mutant::SequenceAtDispatch => "sequence-at-dispatch",
            Mutant::PointInsideUnflushedEpoch => "point-inside-unflushed-epoch",
            Mutant::TornTailApplied => "torn-tail-applied",
            Mutant::AppWriteToDestination => "app-write-to-destination",
            Mutant::MarkOverlayBeforeFlush => "mark-overlay-before-flush",
            Mutant::ClearOverlayBeforeDestinationFlush => "clear-overlay-before-destination-flush",
            Mutant::ServeBackupForOverlayRegion => "serve-backup-for-overlay-region",
            Mutant::MarkSentAfterRead => "mark-sent-after-read",
            Mutant::FetchReplyOutOfOrder => "fetch-reply-out-of-order",
            Mutant::DropReplicatedWrite => "drop-replicated-write",
            Mutant::StaleRegionOverWrite => "stale-region-over-write",
        }
    }

    /// The mutant called `name`.
    pub fn from_name(name: &str) -> Option<Mutant> {
        Mutant::ALL
            .into_iter()
            .chain(Mutant::CAPTURE)
            .chain(Mutant::OVERLAY)
            .chain(Mutant::DR)
            .find(|m| m.name() == name)
    }
}

#[cfg_attr(test, allow(dead_code))]
static ACTIVE: AtomicU8 = AtomicU8::new(0);

#[cfg(test)]
std::thread_local! {
    static ACTIVE_HERE: core::cell::Cell<u8> = const { core::cell::Cell::new(0) };
}

/// The selected mutant's number (0: none).
#[inline(always)]
fn selected() -> u8 {
    #[cfg(test)]
    {
        ACTIVE_HERE.with(|a| a.get())
    }
    #[cfg(not(test))]
    {
        if cfg!(feature = "mutants") {
            ACTIVE.load(Ordering::Relaxed)
        } else {
            0
        }
    }
}

/// Selects the mutant for the whole process (`None`: the real engine); in this crate's
/// tests, for the calling thread. Without the `mutants` feature (outside this crate's
/// tests) selecting one is refused.
pub fn set(mutant: Option<Mutant>) -> bool {
    let value = mutant.map_or(0, |m| m as u8);
    #[cfg(test)]
    {
        ACTIVE_HERE.with(|a| a.set(value));
        true
    }
    #[cfg(not(test))]
    {
        if !cfg!(feature = "mutants") && mutant.is_some() {
            return false;
        }
        ACTIVE.store(value, Ordering::Relaxed);
        true
    }
}

/// True when `mutant` is selected (always false without the feature).
#[inline(always)]
pub fn active(mutant: Mutant) -> bool {
    selected() == mutant as u8
}

/// True when any mutant is selected: the engine's own debug assertions stand back so
/// the simulator's oracle, not a panic, is what catches the bug.
#[inline(always)]
pub fn any() -> bool {
    selected() != 0
}
