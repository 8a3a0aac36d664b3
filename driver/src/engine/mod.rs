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
//! * **Fetch failure** fails exactly the held requests that need a failed region.
//! * **Flush**: forwarded; when it completes, marks whose data it made durable are
//!   committed to the metadata; the flush completes only once that commit is durable.
//! * **Durability**: a mark is recorded with the number of flushes issued before it; a
//!   completed flush makes every mark older than it durable-eligible. Only those reach
//!   the metadata ([`Engine::durable_word`] hides the rest).
//! * **Trim** of whole regions marks them (trimmed data is undefined, so there is
//!   nothing to fetch); partly covered regions are left as they are.
//! * **Bad requests** complete with a specific status and change nothing.
//!
//! # Bounds
//! Held requests ≤ `EngineConfig::held_max` (more → `INSUFFICIENT_RESOURCES`). Region
//! states, lower I/O and unflushed marks are bounded by the I/O in flight and held.

mod io;
mod state;

#[cfg(test)]
mod harness;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::Range;

pub use io::{Action, BatchId, Event, LowerId, RequestId};
use state::{overlaps, Batch, Held, InFlight, Intervals, Kind, RegionState};

use crate::geometry::Geometry;
use crate::mutants::{self, Mutant};
use crate::region::RegionMap;
use crate::status::{FailReason, Status};

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
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            hold_deadline_ns: 60_000_000_000,
            held_max: 1024,
            commit_interval_ns: 1_000_000_000,
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
    /// Metadata commits that succeeded.
    pub commits: u64,
}

/// The engine of one volume. See the module comment for its rules.
pub struct Engine {
    geometry: Geometry,
    map: Arc<RegionMap>,
    config: EngineConfig,
    now_ns: u64,
    next_lower: LowerId,
    regions: BTreeMap<u64, RegionState>,
    held: VecDeque<Held>,
    /// Ranges of requests that were held and are now at the lower device.
    sequenced: Vec<(LowerId, u64, u64)>,
    in_flight: BTreeMap<LowerId, InFlight>,
    batches: BTreeMap<BatchId, Batch>,
    /// Marks whose data may not be durable yet, with the flush count when marked.
    unflushed: VecDeque<(Range<u64>, u64)>,
    /// Marks whose data is durable, not yet handed to the metadata.
    flushed: Vec<Range<u64>>,
    /// `unflushed` sorted by region, built by [`Engine::prepare_durable_view`].
    unflushed_sorted: Vec<Range<u64>>,
    flushes_issued: u64,
    engine_flushes_in_flight: u32,
    /// FUA writes waiting for the engine flush with this sequence number.
    fua_waiters: Vec<(RequestId, u64)>,
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
    scratch: Intervals,
    fetch_scratch: Vec<u64>,
}

impl Engine {
    /// An engine over `map` (already loaded from the durable metadata).
    pub fn new(map: Arc<RegionMap>, config: EngineConfig) -> Engine {
        Engine {
            geometry: *map.geometry(),
            map,
            config,
            now_ns: 0,
            next_lower: 1,
            regions: BTreeMap::new(),
            held: VecDeque::new(),
            sequenced: Vec::new(),
            in_flight: BTreeMap::new(),
            batches: BTreeMap::new(),
            unflushed: VecDeque::new(),
            flushed: Vec::new(),
            unflushed_sorted: Vec::new(),
            flushes_issued: 0,
            engine_flushes_in_flight: 0,
            fua_waiters: Vec::new(),
            last_flush_ns: 0,
            flushed_generation: 0,
            committed_generation: 0,
            commit_covers: 0,
            commit_in_flight: None,
            next_commit: 1,
            flush_waiters: Vec::new(),
            all_restored_said: false,
            counters: Counters::default(),
            scratch: Intervals::default(),
            fetch_scratch: Vec::new(),
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

    /// Counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Requests held right now.
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// True once every region is restored and that is durable, and nothing is held or
    /// sequenced: the filter then forwards everything without calling the engine.
    pub fn is_passthrough(&self) -> bool {
        self.map.is_all_restored()
            // Requests forwarded from now on must not overtake held or sequenced ones.
            && self.held.is_empty()
            && self.sequenced.is_empty()
            && self.unflushed.is_empty()
            && self.flushed.is_empty()
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
            Event::Flush { id } => {
                self.on_flush(Some(id), out);
            }
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
            Event::ServiceAttached => self.on_service_attached(out),
            Event::Remove => self.on_remove(out),
            Event::Tick { now_ns } => self.on_tick(now_ns, out),
        }
        self.check_invariants();
    }

    // ----- requests from above -------------------------------------------------------

    fn on_request(
        &mut self,
        id: RequestId,
        kind: Kind,
        offset: u64,
        len: u64,
        out: &mut Vec<Action>,
    ) {
        if let Err(e) = self.geometry.check(offset, len) {
            self.fail(id, e.status(), out);
            return;
        }
        let blocked = self.overlaps_ordered(offset, len);
        if !blocked && self.needs(kind, offset, len, false) {
            let lower = self.dispatch(id, kind, offset, len, false);
            out.push(Action::Forward { id, lower });
            return;
        }
        if self.held.len() >= self.config.held_max {
            self.fail(id, Status::INSUFFICIENT_RESOURCES, out);
            return;
        }
        self.held.push_back(Held {
            id,
            kind,
            offset,
            len,
            since_ns: self.now_ns,
        });
        self.counters.held_total += 1;
        out.push(Action::Hold { id });
        // A new arrival unblocks nothing held before it: only ask for what it needs.
        self.fetch_scratch.clear();
        self.needs(kind, offset, len, true);
        self.emit_fetches(true, out);
    }

    /// True when a held or sequenced request shares a sector with the range.
    fn overlaps_ordered(&self, offset: u64, len: u64) -> bool {
        self.held
            .iter()
            .any(|h| overlaps(h.offset, h.len, offset, len))
            || self
                .sequenced
                .iter()
                .any(|&(_, o, l)| overlaps(o, l, offset, len))
    }

    /// True when the request can go down now. With `ask`, regions it needs that nobody
    /// is getting are put in `fetch_scratch` and marked requested.
    fn needs(&mut self, kind: Kind, offset: u64, len: u64, ask: bool) -> bool {
        if kind == Kind::Read && mutants::active(Mutant::ForwardReadBeforeRestored) {
            return true;
        }
        let touched = self.geometry.regions_touched(offset, len);
        if self.map.is_range_restored(touched.clone()) {
            return true;
        }
        let covered = if kind.replaces_data() {
            self.covered(kind, offset, len)
        } else {
            0..0
        };
        let mut ready = true;
        for region in touched {
            if self.map.is_restored(region) {
                continue;
            }
            let state = self.regions.get(&region).copied();
            if covered.contains(&region) {
                // Overwritten whole: no fetch, but never race a hydrate write of it.
                if state == Some(RegionState::Hydrating) {
                    ready = false;
                }
                continue;
            }
            if kind == Kind::Discard {
                // A partly trimmed region keeps its untrimmed sectors; nothing to wait for.
                continue;
            }
            ready = false;
            if ask && state.is_none() {
                self.regions.insert(region, RegionState::Requested);
                self.fetch_scratch.push(region);
            }
        }
        ready
    }

    /// Regions a write or trim overwrites wholly.
    fn covered(&self, kind: Kind, offset: u64, len: u64) -> Range<u64> {
        if matches!(kind, Kind::Write { .. }) && mutants::active(Mutant::SkipFetchForPartialWrite) {
            return self.geometry.regions_touched(offset, len);
        }
        self.geometry.regions_covered(offset, len)
    }

    /// Sends a request down, claiming the regions a write or trim covers wholly.
    fn dispatch(
        &mut self,
        id: RequestId,
        kind: Kind,
        offset: u64,
        len: u64,
        sequenced: bool,
    ) -> LowerId {
        let claimed = if kind.replaces_data() {
            self.covered(kind, offset, len)
        } else {
            0..0
        };
        for region in claimed.clone() {
            if self.map.is_restored(region) {
                continue;
            }
            let entry = self
                .regions
                .entry(region)
                .or_insert(RegionState::Claimed(0));
            *entry = match *entry {
                RegionState::Claimed(n) => RegionState::Claimed(n + 1),
                RegionState::Requested => RegionState::Claimed(1),
                // `needs` never lets a write go down over a hydrate write in flight.
                RegionState::Hydrating => RegionState::Claimed(1),
            };
        }
        let lower = self.lower_id();
        if sequenced {
            self.sequenced.push((lower, offset, len));
        }
        self.in_flight.insert(
            lower,
            InFlight::Request {
                id,
                kind,
                claimed,
                sequenced,
            },
        );
        lower
    }

    /// Walks the held queue in arrival order: asks for what each needs, and forwards
    /// each that is ready and has no earlier held or sequenced request on its sectors.
    fn pump(&mut self, out: &mut Vec<Action>) {
        let mut earlier = core::mem::take(&mut self.scratch);
        earlier.clear();
        for &(_, o, l) in &self.sequenced {
            earlier.insert(o, o + l);
        }
        self.fetch_scratch.clear();
        let mut i = 0;
        while i < self.held.len() {
            let h = self.held[i];
            let blocked = earlier.overlaps(h.offset, h.offset + h.len);
            let ready = self.needs(h.kind, h.offset, h.len, true);
            earlier.insert(h.offset, h.offset + h.len);
            if ready && !blocked {
                self.held.remove(i);
                let lower = self.dispatch(h.id, h.kind, h.offset, h.len, true);
                out.push(Action::Forward { id: h.id, lower });
                continue;
            }
            i += 1;
        }
        self.scratch = earlier;
        self.emit_fetches(true, out);
    }

    /// Turns `fetch_scratch` into coalesced `Fetch` actions.
    fn emit_fetches(&mut self, on_demand: bool, out: &mut Vec<Action>) {
        if self.fetch_scratch.is_empty() {
            return;
        }
        self.fetch_scratch.sort_unstable();
        self.fetch_scratch.dedup();
        if on_demand {
            self.counters.misses_regions += self.fetch_scratch.len() as u64;
        }
        let mut run: Option<Range<u64>> = None;
        for &region in &self.fetch_scratch {
            run = match run {
                Some(r) if r.end == region => Some(r.start..region + 1),
                Some(r) => {
                    out.push(Action::Fetch {
                        regions: r,
                        on_demand,
                    });
                    Some(region..region + 1)
                }
                None => Some(region..region + 1),
            };
        }
        if let Some(r) = run {
            out.push(Action::Fetch {
                regions: r,
                on_demand,
            });
        }
        self.fetch_scratch.clear();
    }

    fn fail(&mut self, id: RequestId, status: Status, out: &mut Vec<Action>) {
        debug_assert!(status.is_error());
        self.counters.requests_failed += 1;
        out.push(Action::Complete { id, status });
    }

    fn lower_id(&mut self) -> LowerId {
        let id = self.next_lower;
        self.next_lower += 1;
        id
    }

    // ----- data from the service -----------------------------------------------------

    fn on_hydrate(
        &mut self,
        batch: BatchId,
        offset: u64,
        len: u64,
        zero: bool,
        out: &mut Vec<Action>,
    ) {
        let aligned = self.geometry.check(offset, len).is_ok()
            && offset % u64::from(self.geometry.region_size_bytes()) == 0
            && ((offset + len) % u64::from(self.geometry.region_size_bytes()) == 0
                || offset + len == self.geometry.volume_size_bytes());
        if !aligned || self.batches.contains_key(&batch) {
            out.push(Action::HydrateDone {
                batch,
                status: Status::INVALID_PARAMETER,
            });
            return;
        }
        let regions = self.geometry.regions_touched(offset, len);
        let mut accepted: Option<Range<u64>> = None;
        let mut outstanding = 0u32;
        for region in regions.clone() {
            let takes = !self.map.is_restored(region)
                && match self.regions.get(&region) {
                    None | Some(RegionState::Requested) => true,
                    Some(RegionState::Claimed(_)) => mutants::active(Mutant::AcceptStaleHydrate),
                    Some(RegionState::Hydrating) => false,
                };
            if takes {
                self.regions.insert(region, RegionState::Hydrating);
                accepted = match accepted {
                    Some(r) if r.end == region => Some(r.start..region + 1),
                    Some(r) => {
                        self.write_hydrate(batch, offset, zero, r, out);
                        outstanding += 1;
                        Some(region..region + 1)
                    }
                    None => Some(region..region + 1),
                };
            } else {
                self.counters.stale_regions_dropped += 1;
            }
        }
        if let Some(r) = accepted {
            self.write_hydrate(batch, offset, zero, r, out);
            outstanding += 1;
        }
        if outstanding == 0 {
            out.push(Action::HydrateDone {
                batch,
                status: Status::SUCCESS,
            });
        } else {
            self.batches.insert(
                batch,
                Batch {
                    outstanding,
                    status: Status::SUCCESS,
                },
            );
        }
    }

    fn write_hydrate(
        &mut self,
        batch: BatchId,
        batch_offset: u64,
        zero: bool,
        regions: Range<u64>,
        out: &mut Vec<Action>,
    ) {
        let bytes = self.geometry.regions_byte_range(regions.clone());
        let lower = self.lower_id();
        if mutants::active(Mutant::MarkBeforeLowerWriteCompletes) {
            self.map.mark_range(regions.clone());
        }
        self.in_flight
            .insert(lower, InFlight::Hydrate { batch, regions });
        out.push(Action::WriteHydrate {
            lower,
            batch,
            offset: bytes.start,
            len: bytes.end - bytes.start,
            payload_offset: bytes.start - batch_offset,
            zero,
        });
    }

    fn on_fetch_failed(
        &mut self,
        offset: u64,
        len: u64,
        reason: FailReason,
        out: &mut Vec<Action>,
    ) {
        if self.geometry.check(offset, len).is_err() {
            return;
        }
        let failed = self.geometry.regions_touched(offset, len);
        let mut hit = false;
        for region in failed.clone() {
            if self.regions.get(&region) == Some(&RegionState::Requested) {
                self.regions.remove(&region);
                hit = true;
            }
        }
        if !hit {
            return;
        }
        self.counters.fetch_failures += 1;
        self.fail_waiters(failed, reason.status(), out);
        self.pump(out);
    }

    /// Fails every held request that needs a missing region in `regions`.
    fn fail_waiters(&mut self, regions: Range<u64>, status: Status, out: &mut Vec<Action>) {
        let mut i = 0;
        while i < self.held.len() {
            let h = self.held[i];
            if self.waits_on(&h, regions.clone()) {
                self.held.remove(i);
                self.fail(h.id, status, out);
                continue;
            }
            i += 1;
        }
    }

    /// True when held request `h` needs data of a missing region in `regions`.
    fn waits_on(&self, h: &Held, regions: Range<u64>) -> bool {
        let touched = self.geometry.regions_touched(h.offset, h.len);
        let covered = self.geometry.regions_covered(h.offset, h.len);
        let start = touched.start.max(regions.start);
        let end = touched.end.min(regions.end);
        (start..end).any(|r| {
            !self.map.is_restored(r)
                && match h.kind {
                    Kind::Read => true,
                    Kind::Write { .. } => !covered.contains(&r),
                    Kind::Discard => false,
                }
        })
    }

    // ----- completions from below ----------------------------------------------------

    fn on_lower(&mut self, lower: LowerId, status: Status, out: &mut Vec<Action>) {
        let Some(done) = self.in_flight.remove(&lower) else {
            debug_assert!(false, "completion of unknown lower I/O {lower}");
            return;
        };
        match done {
            InFlight::Request {
                id,
                kind,
                claimed,
                sequenced,
            } => {
                // Mark only regions this write restored; one restored earlier keeps
                // its own (older) place in the durability queue.
                let mut run: Option<Range<u64>> = None;
                for region in claimed {
                    let was_missing = !self.map.is_restored(region);
                    self.unclaim(region);
                    if !(status.is_success() && was_missing) {
                        continue;
                    }
                    run = match run {
                        Some(r) if r.end == region => Some(r.start..region + 1),
                        Some(r) => {
                            self.record_marks(r, out);
                            Some(region..region + 1)
                        }
                        None => Some(region..region + 1),
                    };
                }
                if let Some(r) = run {
                    self.record_marks(r, out);
                }
                if sequenced {
                    self.sequenced.retain(|&(l, _, _)| l != lower);
                }
                if status.is_success()
                    && kind == (Kind::Write { fua: true })
                    && !self.is_passthrough()
                {
                    // FUA promises durability at completion, and durable data is only
                    // safe with durable marks of the regions it touches (else a reboot
                    // would fetch backup data over it, breaking rule 3): flush what was
                    // hydrated under it and commit before completing.
                    let seq = self.on_flush(None, out);
                    self.fua_waiters.push((id, seq));
                } else {
                    out.push(Action::Complete { id, status });
                }
                self.pump(out);
            }
            InFlight::Hydrate { batch, regions } => {
                for region in regions.clone() {
                    let was = self.regions.remove(&region);
                    debug_assert!(mutants::any() || was == Some(RegionState::Hydrating));
                }
                if status.is_success() {
                    self.counters.hydrated_bytes += {
                        let b = self.geometry.regions_byte_range(regions.clone());
                        b.end - b.start
                    };
                    self.record_marks(regions, out);
                } else {
                    self.fail_waiters(regions, Status::IO_DEVICE_ERROR, out);
                }
                if let Some(b) = self.batches.get_mut(&batch) {
                    b.outstanding -= 1;
                    if !status.is_success() {
                        b.status = status;
                    }
                    if b.outstanding == 0 {
                        let status = b.status;
                        self.batches.remove(&batch);
                        out.push(Action::HydrateDone { batch, status });
                    }
                }
                self.pump(out);
            }
            InFlight::Flush { id, seq } => {
                if id.is_none() {
                    self.engine_flushes_in_flight -= 1;
                }
                if !status.is_success() {
                    if let Some(id) = id {
                        out.push(Action::Complete { id, status });
                    }
                    self.fail_fua_waiters(seq, status, out);
                    return;
                }
                self.flush_done(seq);
                let generation = self.flushed_generation;
                let mut i = 0;
                while i < self.fua_waiters.len() {
                    let (waiter, needs_seq) = self.fua_waiters[i];
                    if needs_seq <= seq {
                        self.fua_waiters.swap_remove(i);
                        if self.committed_generation >= generation {
                            out.push(Action::Complete {
                                id: waiter,
                                status: Status::SUCCESS,
                            });
                        } else {
                            self.flush_waiters.push((waiter, generation));
                        }
                        continue;
                    }
                    i += 1;
                }
                match id {
                    Some(id) if self.committed_generation >= self.flushed_generation => {
                        out.push(Action::Complete {
                            id,
                            status: Status::SUCCESS,
                        });
                    }
                    Some(id) => self.flush_waiters.push((id, self.flushed_generation)),
                    None => {}
                }
                self.maybe_commit(out);
            }
        }
    }

    /// The flush a FUA write waited for failed: so does the write.
    fn fail_fua_waiters(&mut self, seq: u64, status: Status, out: &mut Vec<Action>) {
        let mut i = 0;
        while i < self.fua_waiters.len() {
            let (waiter, needs_seq) = self.fua_waiters[i];
            if needs_seq == seq {
                self.fua_waiters.swap_remove(i);
                out.push(Action::Complete { id: waiter, status });
                continue;
            }
            i += 1;
        }
    }

    fn unclaim(&mut self, region: u64) {
        match self.regions.get(&region).copied() {
            Some(RegionState::Claimed(n)) if n > 1 => {
                self.regions.insert(region, RegionState::Claimed(n - 1));
            }
            Some(RegionState::Claimed(_)) => {
                self.regions.remove(&region);
            }
            // A region restored before the write went down was never claimed.
            None => debug_assert!(self.map.is_restored(region)),
            Some(other) => debug_assert!(mutants::any(), "unclaim of {region} in state {other:?}"),
        }
    }

    /// Marks regions whose data reached the lower device (rule 2: only now).
    fn record_marks(&mut self, regions: Range<u64>, out: &mut Vec<Action>) {
        if regions.is_empty() {
            return;
        }
        let newly = self.map.mark_range(regions.clone());
        assert!(
            mutants::any() || newly == regions.end - regions.start,
            "a region was marked twice"
        );
        self.unflushed.push_back((regions, self.flushes_issued));
        if self.map.is_all_restored() && self.engine_flushes_in_flight == 0 {
            // Reach the pass-through state promptly.
            self.flush_down(out);
        }
    }

    // ----- durability ----------------------------------------------------------------

    /// Sends a flush down (the file system's, or the engine's own when `id` is None);
    /// returns its sequence number.
    fn on_flush(&mut self, id: Option<RequestId>, out: &mut Vec<Action>) -> u64 {
        self.flushes_issued += 1;
        let lower = self.lower_id();
        self.in_flight.insert(
            lower,
            InFlight::Flush {
                id,
                seq: self.flushes_issued,
            },
        );
        self.last_flush_ns = self.now_ns;
        match id {
            Some(id) => out.push(Action::Forward { id, lower }),
            None => {
                self.engine_flushes_in_flight += 1;
                out.push(Action::FlushDown { lower });
            }
        }
        self.flushes_issued
    }

    fn flush_down(&mut self, out: &mut Vec<Action>) {
        self.on_flush(None, out);
    }

    /// Flush number `seq` completed: every mark made before it was issued is durable.
    fn flush_done(&mut self, seq: u64) {
        let mut moved = false;
        while let Some((_, marked_at)) = self.unflushed.front() {
            if *marked_at >= seq {
                break;
            }
            if let Some((regions, _)) = self.unflushed.pop_front() {
                self.flushed.push(regions);
                moved = true;
            }
        }
        if moved {
            self.flushed_generation += 1;
        }
    }

    fn maybe_commit(&mut self, out: &mut Vec<Action>) {
        if self.commit_in_flight.is_some() || self.committed_generation == self.flushed_generation {
            self.maybe_all_restored(out);
            return;
        }
        let commit = self.next_commit;
        self.next_commit += 1;
        self.commit_in_flight = Some(commit);
        self.commit_covers = self.flushed_generation;
        out.push(Action::CommitMetadata { commit });
    }

    /// Hands the marks that became durable-eligible since the last call to the metadata
    /// (which dirties their pages). The shell calls it when it performs a commit.
    pub fn take_flushed_marks(&mut self) -> Vec<Range<u64>> {
        self.commit_covers = self.flushed_generation;
        core::mem::take(&mut self.flushed)
    }

    /// Sorts and merges the unflushed marks so [`Engine::durable_word`] can hide them.
    /// Call before a commit reads `durable_word`.
    pub fn prepare_durable_view(&mut self) {
        self.unflushed_sorted.clear();
        self.unflushed_sorted
            .extend(self.unflushed.iter().map(|(r, _)| r.clone()));
        self.unflushed_sorted.sort_unstable_by_key(|r| r.start);
        // Merge overlaps so both starts and ends increase: one binary search finds the
        // first range that can reach a word.
        let mut merged = 0;
        for i in 0..self.unflushed_sorted.len() {
            let r = self.unflushed_sorted[i].clone();
            if merged > 0 && self.unflushed_sorted[merged - 1].end >= r.start {
                let last = &mut self.unflushed_sorted[merged - 1];
                last.end = last.end.max(r.end);
            } else {
                self.unflushed_sorted[merged] = r;
                merged += 1;
            }
        }
        self.unflushed_sorted.truncate(merged);
    }

    /// Word `index` of the bitmap as it may be made durable: the in-memory marks minus
    /// those whose data is not flushed yet (rule 2). Valid after
    /// [`Engine::prepare_durable_view`] until the next event.
    pub fn durable_word(&self, index: usize) -> u64 {
        let mut word = self.map.word(index);
        if word == 0
            || self.unflushed_sorted.is_empty()
            || mutants::active(Mutant::CommitMetadataBeforeDataFlush)
        {
            return word;
        }
        let first = index as u64 * 64;
        let last = first + 64;
        let from = self.unflushed_sorted.partition_point(|r| r.end <= first);
        for r in &self.unflushed_sorted[from..] {
            if r.start >= last {
                break;
            }
            let s = r.start.max(first);
            let e = r.end.min(last);
            let n = e - s;
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << (s - first)
            };
            word &= !mask;
        }
        word
    }

    fn on_committed(&mut self, commit: u64, ok: bool, out: &mut Vec<Action>) {
        if self.commit_in_flight != Some(commit) {
            debug_assert!(false, "answer for commit {commit} not in flight");
            return;
        }
        self.commit_in_flight = None;
        let covers = self.commit_covers;
        if ok {
            self.counters.commits += 1;
            self.committed_generation = self.committed_generation.max(covers);
        }
        let mut i = 0;
        while i < self.flush_waiters.len() {
            let (id, needs) = self.flush_waiters[i];
            if needs <= covers {
                self.flush_waiters.swap_remove(i);
                if ok {
                    out.push(Action::Complete {
                        id,
                        status: Status::SUCCESS,
                    });
                } else {
                    self.fail(id, Status::IO_DEVICE_ERROR, out);
                }
                continue;
            }
            i += 1;
        }
        if ok {
            self.maybe_commit(out);
        }
    }

    fn maybe_all_restored(&mut self, out: &mut Vec<Action>) {
        if !self.all_restored_said && self.is_passthrough() {
            self.all_restored_said = true;
            out.push(Action::AllRestored);
        }
    }

    // ----- the service and time ------------------------------------------------------

    fn on_service_attached(&mut self, out: &mut Vec<Action>) {
        self.fetch_scratch.clear();
        for (&region, &state) in &self.regions {
            if state == RegionState::Requested {
                self.fetch_scratch.push(region);
            }
        }
        // Re-asks are on demand but not new misses.
        let misses = self.counters.misses_regions;
        self.emit_fetches(true, out);
        self.counters.misses_regions = misses;
        self.pump(out);
    }

    fn on_remove(&mut self, out: &mut Vec<Action>) {
        while let Some(h) = self.held.pop_front() {
            self.fail(h.id, Status::DEVICE_NOT_READY, out);
        }
        self.regions
            .retain(|_, state| *state != RegionState::Requested);
    }

    fn on_tick(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        self.now_ns = self.now_ns.max(now_ns);
        let deadline = self.config.hold_deadline_ns;
        let now = self.now_ns;
        let mut i = 0;
        let mut expired = false;
        while i < self.held.len() {
            let h = self.held[i];
            if now.saturating_sub(h.since_ns) >= deadline {
                self.held.remove(i);
                self.fail(h.id, Status::IO_TIMEOUT, out);
                expired = true;
                continue;
            }
            i += 1;
        }
        if expired {
            self.pump(out);
        }
        let stale = self.unflushed.front().is_some_and(|_| {
            now.saturating_sub(self.last_flush_ns) >= self.config.commit_interval_ns
        });
        if stale && self.engine_flushes_in_flight == 0 {
            self.flush_down(out);
        }
        if self.commit_in_flight.is_none() && self.committed_generation != self.flushed_generation {
            self.maybe_commit(out);
        }
        self.maybe_all_restored(out);
    }

    // ----- invariants ----------------------------------------------------------------

    fn check_invariants(&self) {
        if !cfg!(debug_assertions) || mutants::any() {
            return;
        }
        assert!(self.held.len() <= self.config.held_max);
        assert!(self.committed_generation <= self.flushed_generation);
        for (&region, &state) in &self.regions {
            assert!(region < self.geometry.region_count());
            if matches!(state, RegionState::Requested | RegionState::Hydrating) {
                assert!(
                    !self.map.is_restored(region),
                    "{region} {state:?} but restored"
                );
            }
            if let RegionState::Claimed(n) = state {
                assert!(n > 0);
            }
        }
        for (lower, _, _) in &self.sequenced {
            assert!(matches!(
                self.in_flight.get(lower),
                Some(InFlight::Request {
                    sequenced: true,
                    ..
                })
            ));
        }
    }
}
