//! The instant-restore engine: a sans-IO state machine, one per filtered volume.
//!
//! It takes [`Event`]s and appends [`Action`]s; it never blocks, sleeps or does I/O, so
//! the kernel shell, the simulator and the Linux restore drive the very same logic.
//!
//! # The rules it keeps
//! * **Read**: all regions restored → forward. Else hold, ask the service once per
//!   missing region (however many requests wait on it), forward when all are restored.
//! * **Write**: regions it covers wholly are *claimed* and overwritten with no fetch,
//!   marked when the write completes; a partly covered head or tail region is fetched,
//!   written and marked first, then the write is forwarded.
//! * **Ordering**: a request never overtakes an earlier request on the same sectors
//!   that is held, or that was held and is still at the lower device ("sequenced").
//!   So two writes to a region whose fetch is in flight are both applied after the
//!   fetch, in arrival order, and a read held behind a write sees the write.
//!   Requests that were never held are forwarded as they come, as the volume below
//!   would see them without the filter.
//! * **Hydrate data** is written only to regions that are neither restored, nor claimed
//!   by a write, nor already being hydrated; the rest is dropped (rule 4). A region is
//!   marked only when its hydrate write completed (rule 2), and a write never goes
//!   down while a hydrate write of a region it covers is in flight.
//! * **Fetch failure** fails exactly the held requests that need a region whose fetch
//!   failed: one the service was asked for and had not answered. Requests waiting on
//!   regions being hydrated or overwritten are left alone, however wide the range the
//!   service reports.
//! * **A failed write or trim** leaves the regions it claimed missing. Requests waiting
//!   on them ask again; if nobody waits, the engine asks the service again in the
//!   background, because the service may have delivered (and the engine dropped) their
//!   data while they were claimed, and would otherwise never fetch them again.
//! * **Cancel**: a held request the file system cancels completes with `CANCELLED`.
//! * **Time**: the engine starts without a clock. A request held before the first
//!   [`Event::Tick`] is timed from that tick, never from zero (a filter started late
//!   in a boot would otherwise time out everything it held before its first tick).
//! * **Flush**: forwarded; when it completes, marks whose data it made durable are
//!   committed to the metadata; the flush completes only once that commit is durable.
//! * **Durability**: a mark is recorded with the number of flushes issued before it; a
//!   completed flush makes every mark older than it durable-eligible. Only those reach
//!   the metadata ([`Engine::durable_word`] hides the rest). A FUA write completes at
//!   once when every region it touched is durably marked; otherwise after a flush and
//!   a commit.
//! * **Trim** of whole regions marks them (trimmed data is undefined, so there is
//!   nothing to fetch); partly covered regions are left as they are.
//! * **Bad requests** complete with a specific status and change nothing.
//!
//! # Bounds
//! Every structure below has a stated bound and grows only through `try_reserve`, at
//! admission (a request being held or forwarded, a hydrate accepted, an engine flush
//! issued). An allocation that fails completes what it was for with
//! `INSUFFICIENT_RESOURCES` (a hydrate: [`Action::HydrateDone`] with it) and changes
//! nothing else; completions never allocate.
//! * held requests ≤ `held_max` (more → `INSUFFICIENT_RESOURCES`); the waiter index
//!   has one entry per held request (each waits on one region at a time);
//! * regions asked of the service and not answered ≤ held requests ×
//!   `ask_window_regions`: a held request asks for a window of its missing regions at a
//!   time, and asks for the next window as the first ones arrive; regions nobody waits
//!   for any more are dropped. They are kept as runs, so memory is per run;
//! * regions being hydrated ≤ `hydrate_batches_max` × 8 MiB of hydrate payload, kept as
//!   runs (at most one per hydrate write in flight); hydrate batches ≤
//!   `hydrate_batches_max` (more → the hydrate is refused with
//!   `INSUFFICIENT_RESOURCES`, the service tries again later);
//! * claims: one range per write or trim at the lower device, nothing per region;
//! * the lower-I/O table: one entry per I/O at the device;
//! * marks not yet durably committed: one run per completed write or hydrate write;
//!   past `marks_soft_max` the engine flushes at once, so they stay within
//!   `marks_soft_max` plus the I/O in flight.
//!
//! The work an event does is proportional to what it changes: the held requests that
//! wait on regions it changed (found through the waiter index), the held requests that
//! were ordered behind a request that left, and the regions of the request itself. A
//! held request walks its regions once over its life (its cursor only moves forward).

mod checks;
mod durable;
pub mod either;
mod hydrate;
mod io;
mod lower;
pub mod overlay;
mod progress;
mod requests;
mod room;
mod runs;
mod state;

#[cfg(test)]
mod harness;
#[cfg(test)]
mod item_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::Range;

pub use io::{Action, BatchId, Event, LowerId, RequestId, Target};
use runs::Runs;
use state::{Batch, Held, Kind, Lower};

use crate::geometry::Geometry;
use crate::region::RegionMap;

/// Tunables of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// A held request older than this is completed with `IO_TIMEOUT` (rule 5), whether
    /// or not the service answers.
    pub hold_deadline_ns: u64,
    /// Most requests held at once.
    pub held_max: usize,
    /// Unflushed hydrate marks older than this get an engine flush and a commit, so
    /// restore progress becomes durable without waiting for the file system to flush.
    pub commit_interval_ns: u64,
    /// Most missing regions one held request has asked the service for and not yet
    /// received; it asks for the next ones as these arrive.
    pub ask_window_regions: u64,
    /// Most hydrate messages being written at once.
    pub hydrate_batches_max: usize,
    /// Marks not yet flushed past which the engine flushes at once.
    pub marks_soft_max: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            hold_deadline_ns: 60_000_000_000,
            held_max: 1024,
            commit_interval_ns: 1_000_000_000,
            ask_window_regions: 64,
            hydrate_batches_max: 4096,
            marks_soft_max: 4096,
        }
    }
}

/// Counters for `status` and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Regions asked of the service on demand.
    pub misses_regions: u64,
    /// Requests held at some point.
    pub held_total: u64,
    /// Bytes written down from hydrate messages (zero-fill included).
    pub hydrated_bytes: u64,
    /// Hydrated regions dropped because they were restored, claimed or in flight.
    pub stale_regions_dropped: u64,
    /// Fetch-failed messages that hit a requested region.
    pub fetch_failures: u64,
    /// Requests completed with an error status by the engine itself.
    pub requests_failed: u64,
    /// Held requests the file system cancelled.
    pub requests_cancelled: u64,
    /// Regions asked again in the background after the write that claimed them failed.
    pub regions_reasked: u64,
    /// FUA writes completed without a flush and commit (their regions were durable).
    pub fua_commits_skipped: u64,
    /// Times a held request was advanced (the work events do on held requests).
    pub held_advances: u64,
    /// Metadata commits that succeeded.
    pub commits: u64,
}

/// A mark whose data or whose commit may not be durable yet.
#[derive(Clone, Debug)]
struct Mark {
    regions: Range<u64>,
    /// Flushes issued before it was recorded: flush `tag + 1` and later cover it.
    tag: u64,
}

/// Why [`Engine::check_progress`] found a held request stuck.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    /// The request.
    pub id: RequestId,
    /// The region it waits on, if any.
    pub region: Option<u64>,
    /// What is wrong.
    pub why: &'static str,
}

/// The engine of one volume. See the module comment for its rules.
pub struct Engine {
    geometry: Geometry,
    map: Arc<RegionMap>,
    config: EngineConfig,
    now_ns: u64,
    /// A tick gave the engine the time; before that `now_ns` means nothing.
    clock_known: bool,
    next_lower: LowerId,
    next_key: u64,
    /// Held requests in arrival (key) order.
    held: Vec<Held>,
    /// (region, key): the region each held request waits on, sorted.
    waiters: Vec<(u64, u64)>,
    /// Regions asked of the service on demand, not answered yet.
    requested: Runs,
    /// Regions whose hydrate write is at the lower device.
    hydrating: Runs,
    /// Lower I/O in flight, sorted by id (ids only grow, so pushes go at the end).
    in_flight: Vec<Lower>,
    /// Forwarded requests that were held once and are still at the lower device.
    sequenced_count: usize,
    /// Hydrate writes at the lower device.
    hydrate_parts: usize,
    batches: Vec<Batch>,
    /// Marks not yet durably committed, in the order recorded (so by tag): the first
    /// `marks_taken` were handed to a commit, the first `marks_flushed` are covered by a
    /// completed flush, the rest await one.
    marks: VecDeque<Mark>,
    marks_flushed: usize,
    marks_taken: usize,
    /// Mark runs that I/O at the device may still record (room kept for them).
    marks_reserved: usize,
    /// The unflushed marks sorted by region, built by [`Engine::prepare_durable_view`].
    unflushed_sorted: Vec<Range<u64>>,
    flushes_issued: u64,
    engine_flushes_in_flight: u32,
    /// FUA writes waiting for the engine flush with this sequence number.
    fua_waiters: Vec<(RequestId, u64)>,
    /// Flushes and FUA writes admitted and not completed: room is kept for each of them
    /// in `fua_waiters` and `flush_waiters`.
    durability_requests: usize,
    last_flush_ns: u64,
    /// Bumped each time marks become durable-eligible.
    flushed_generation: u64,
    /// `flushed_generation` covered by the last successful commit.
    committed_generation: u64,
    /// `flushed_generation` the commit in flight covers (set when it takes the marks).
    commit_covers: u64,
    commit_in_flight: Option<u64>,
    next_commit: u64,
    /// Flush requests waiting for a commit covering this generation.
    flush_waiters: Vec<(RequestId, u64)>,
    all_restored_said: bool,
    counters: Counters,
    /// Held requests to advance before the event ends (each at most once).
    wakes: Vec<u64>,
    /// Held requests an event fails (room for every held request is kept).
    fail_scratch: Vec<u64>,
    /// Reservations to refuse, for tests of running out of memory.
    reservations_to_fail: u32,
}

impl Engine {
    /// An engine over `map` (already loaded from the durable metadata).
    pub fn new(map: Arc<RegionMap>, config: EngineConfig) -> Engine {
        Engine {
            geometry: *map.geometry(),
            map,
            config,
            now_ns: 0,
            clock_known: false,
            next_lower: 1,
            next_key: 1,
            held: Vec::new(),
            waiters: Vec::new(),
            requested: Runs::default(),
            hydrating: Runs::default(),
            in_flight: Vec::new(),
            sequenced_count: 0,
            hydrate_parts: 0,
            batches: Vec::new(),
            marks: VecDeque::new(),
            marks_flushed: 0,
            marks_taken: 0,
            marks_reserved: 0,
            unflushed_sorted: Vec::new(),
            flushes_issued: 0,
            engine_flushes_in_flight: 0,
            fua_waiters: Vec::new(),
            durability_requests: 0,
            last_flush_ns: 0,
            flushed_generation: 0,
            committed_generation: 0,
            commit_covers: 0,
            commit_in_flight: None,
            next_commit: 1,
            flush_waiters: Vec::new(),
            all_restored_said: false,
            counters: Counters::default(),
            wakes: Vec::new(),
            fail_scratch: Vec::new(),
            reservations_to_fail: 0,
        }
    }

    /// The shared region map (the filter's fast path reads it without the engine).
    pub fn map(&self) -> &Arc<RegionMap> {
        &self.map
    }

    /// The volume's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The engine's tunables.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Requests held right now.
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// Regions asked of the service on demand and not answered yet, as runs (for
    /// oracles that check every one is still wanted, and the stated bound).
    pub fn requested_runs(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.requested.iter()
    }

    /// Makes the next `count` reservations fail, as if memory ran out.
    #[cfg(any(test, feature = "testing"))]
    pub fn fail_next_reservations(&mut self, count: u32) {
        self.reservations_to_fail = count;
    }

    /// True while reservations asked to fail are not used up.
    #[cfg(any(test, feature = "testing"))]
    pub fn reservations_pending(&self) -> bool {
        self.reservations_to_fail > 0
    }

    /// True once every region is restored and that is durable, and nothing is held or
    /// sequenced: the filter then forwards everything without calling the engine.
    pub fn is_passthrough(&self) -> bool {
        self.map.is_all_restored()
            // Requests forwarded from now on must not overtake held or sequenced ones.
            && self.held.is_empty()
            && self.sequenced_count == 0
            && self.marks.is_empty()
            && self.commit_in_flight.is_none()
            && self.committed_generation == self.flushed_generation
    }

    /// Handles one event, appending what to do to `out`.
    pub fn handle(&mut self, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::Read { id, offset, len } => self.on_request(id, Kind::Read, offset, len, out),
            Event::Write {
                id,
                offset,
                len,
                fua,
            } => self.on_request(id, Kind::Write { fua }, offset, len, out),
            Event::Discard { id, offset, len } => {
                self.on_request(id, Kind::Discard, offset, len, out)
            }
            Event::Flush { id } => self.on_flush_request(id, out),
            Event::Hydrate {
                batch,
                offset,
                len,
                zero,
            } => self.on_hydrate(batch, offset, len, zero, out),
            Event::FetchFailed {
                offset,
                len,
                reason,
            } => self.on_fetch_failed(offset, len, reason, out),
            Event::LowerCompleted { lower, status } => self.on_lower(lower, status, out),
            Event::MetadataCommitted { commit, ok } => self.on_committed(commit, ok, out),
            Event::Cancel { id } => self.on_cancel(id, out),
            Event::ServiceAttached => self.on_service_attached(out),
            Event::Remove => self.on_remove(out),
            Event::Tick { now_ns } => self.on_tick(now_ns, out),
        }
        self.run_wakes(out);
        self.check_invariants();
    }
}

/// Appends a fetch of `regions`, joining the previous one when adjacent and alike.
fn emit_fetch(regions: Range<u64>, on_demand: bool, out: &mut Vec<Action>) {
    if let Some(Action::Fetch {
        regions: last,
        on_demand: last_on_demand,
    }) = out.last_mut()
    {
        if *last_on_demand == on_demand && last.end == regions.start {
            last.end = regions.end;
            return;
        }
    }
    out.push(Action::Fetch { regions, on_demand });
}
