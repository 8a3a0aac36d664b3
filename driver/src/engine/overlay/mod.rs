//! The overlay mode (technique T2): the application runs on a *pseudo-volume* whose
//! writes go to an overlay, while the restore fills the real destination; a guarded
//! cutover then merges the overlay into the destination. Sans-IO like the in-place
//! engine, which it wraps: the in-place [`Engine`] keeps the destination's map (D:
//! regions restored), fetches what is missing and writes restore data; this layer
//! keeps the overlay map (O: regions whose current data is in the overlay), splits
//! requests into pieces per lower device, fills regions into the overlay, and plans
//! the merge.
//!
//! # The rules it keeps
//! * **Read**: the regions in O are read from the overlay, the others from the
//!   destination through the in-place engine (which holds the piece and fetches what
//!   D lacks). One request, several [`Action::Piece`]s, one completion.
//! * **Write**: always to the overlay. The regions it covers wholly need nothing first
//!   and join O when it completes. A partly covered head or tail region not in O is
//!   first *filled*: its data is read from the destination (fetched into D first if
//!   needed) and copied into the overlay ([`Action::Copy`]), and it joins O; then the
//!   write goes down. A write never goes down over a region being filled, and a fill
//!   never starts over a region a write at the overlay covers, so a fill never
//!   overwrites newer data.
//! * **Application data never reaches the destination before the cutover**: only the
//!   in-place engine writes it, and only restore data.
//! * **O marks**: a region joins O in memory when its overlay data is at the device,
//!   and reaches the metadata only after a flush of the overlay issued after that
//!   (flush the overlay, then commit, as rule 2 has it for D). O never shrinks.
//! * **Flush / FUA**: the overlay is flushed and the O marks it made durable are
//!   committed before the flush (or a FUA write whose regions are not durably in O)
//!   completes. The destination holds no application data, so it needs no flush for
//!   the application's sake.
//! * **Trim**: a hint, dropped (completes with success) until the cutover: trimming
//!   the overlay would hide nothing and trimming the destination would change it.
//! * **Ordering**: as the in-place engine's: a request never overtakes an earlier one
//!   on the same sectors that was held (by this layer or, for a piece, by the in-place
//!   engine) and has not completed.
//! * **Merge**: see [`merge`]. After it the volume is the destination, every request is
//!   one piece to it, and [`OverlayEngine::is_passthrough`] lets a shell bypass this.
//!
//! # Bounds
//! * requests in progress (held, or with pieces at a device) ≤ `requests_max`; more
//!   are refused with `INSUFFICIENT_RESOURCES`. A request has one piece per run of
//!   regions alike (in O or not), so pieces ≤ requests × regions per request; each
//!   costs one entry, reserved with `try_reserve` before it is sent;
//! * fills in progress ≤ `fills_max`; a write that needs one waits for room;
//! * O marks not yet flushed: one run per completed write or fill; past
//!   `engine.marks_soft_max` the overlay is flushed at once;
//! * merge copies in flight ≤ `merge_copies_max`, each ≤ `merge_copy_bytes`, and one
//!   bit per region for the merge's clean set, allocated when the merge starts.
//!
//! Work per event: the requests it wakes are found by a walk of the requests in
//! progress (≤ `requests_max`), done at most a few times per event.

mod checks;
pub mod commit;
mod copy;
mod durable;
pub mod merge;
pub mod record;
mod requests;

#[cfg(any(test, feature = "testing"))]
mod harness;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
#[cfg(any(test, feature = "testing"))]
pub mod workload;

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::Range;

use super::state::Kind;
use super::{Action, Engine, EngineConfig, Event, LowerId, RequestId};
use crate::geometry::Geometry;
use crate::meta::NamedMap;
use crate::region::RegionMap;
use crate::status::Status;
pub use merge::{MergeRefused, MergeStart};
pub use record::{OverlayPin, Record, RecordError, State, OVERLAY_MAP};

/// Room for `extra` more elements in `v` without allocating later.
fn more<T>(v: &mut Vec<T>, extra: usize) -> bool {
    let total = v.len() + extra;
    super::room::room(v, total)
}

/// Lower handles this layer makes have this bit set; the in-place engine's never do
/// (they count from 1), so a completion finds its owner by one test.
pub const OWN_LOWER: LowerId = 1 << 63;

/// Tunables of the overlay mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverlayConfig {
    /// The in-place engine's (the hold deadline, commit interval and mark bound apply
    /// to this layer too).
    pub engine: EngineConfig,
    /// Most requests in progress at once.
    pub requests_max: usize,
    /// Most fills in progress at once.
    pub fills_max: usize,
    /// Largest merge copy.
    pub merge_copy_bytes: u64,
    /// Most merge copies in flight.
    pub merge_copies_max: usize,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig {
            engine: EngineConfig::default(),
            requests_max: 4096,
            fills_max: 64,
            merge_copy_bytes: 1 << 20,
            merge_copies_max: 8,
        }
    }
}

/// Counters for `status` and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverlayCounters {
    /// Pieces sent to the overlay.
    pub overlay_pieces: u64,
    /// Pieces sent to the destination.
    pub destination_pieces: u64,
    /// Regions filled into the overlay for partial writes.
    pub fills: u64,
    /// Fills that failed.
    pub fill_failures: u64,
    /// Trims dropped before the cutover.
    pub trims_dropped: u64,
    /// Requests this layer completed with an error itself.
    pub requests_failed: u64,
    /// Metadata commits that succeeded.
    pub commits: u64,
    /// Bytes the merge copied into the destination.
    pub merge_copied_bytes: u64,
    /// Requests held by the merge.
    pub merge_held: u64,
}

/// Who waits on a request the in-place engine has.
#[derive(Clone, Copy, Debug)]
enum Owner {
    /// A read piece of request `key`.
    Piece { key: u64, offset: u64, len: u64 },
    /// The fill of `region`.
    Fill { region: u64 },
}

/// I/O this layer sent itself.
#[derive(Clone, Debug)]
enum Own {
    /// A piece of request `key`.
    Piece { key: u64 },
    /// An overlay flush, number `seq`.
    FlushOverlay { seq: u64 },
    /// A destination flush: the application's (after the merge) or the merge's.
    FlushDestination { id: Option<RequestId> },
    /// A merge copy of `regions`; `spoiled` when a write touched them meanwhile.
    MergeCopy { regions: Range<u64>, spoiled: bool },
}

/// A request from above in progress.
#[derive(Clone, Debug)]
struct Req {
    key: u64,
    id: RequestId,
    kind: Kind,
    offset: u64,
    len: u64,
    since_ns: u64,
    /// It was held: later requests on its sectors wait until it completes.
    ordering: bool,
    /// [`Action::Hold`] was emitted for it.
    hold_said: bool,
    /// Earlier ordering requests on its sectors that have not completed.
    blockers: u32,
    /// Sent down: its pieces.
    run: Option<Run>,
}

#[derive(Clone, Debug)]
struct Run {
    pieces: u32,
    status: Status,
    /// Regions a write covers wholly (they join O when it completes).
    claimed: Range<u64>,
}

/// An O mark whose overlay data may not be durable yet.
#[derive(Clone, Debug)]
struct Mark {
    regions: Range<u64>,
    /// Overlay flushes issued before it was recorded: flush `tag + 1` and later cover it.
    tag: u64,
}

/// The commit in flight.
#[derive(Clone, Copy, Debug)]
struct Commit {
    id: u64,
    /// The in-place engine's commit it carries, if any.
    inner: Option<u64>,
    /// `flushed_gen` it covers (set when the shell performs it).
    covers: u64,
    /// The record state it writes.
    state: State,
}

/// The overlay-mode engine of one volume. See the module comment for its rules.
pub struct OverlayEngine {
    inner: Engine,
    geometry: Geometry,
    config: OverlayConfig,
    /// O in memory: regions whose current data is at the overlay device.
    o: Arc<RegionMap>,
    /// O as commits write it: only regions whose overlay data was flushed.
    o_durable: Arc<NamedMap>,
    /// The record as it should become durable; `record_state` what is durable.
    record: Record,
    record_state: State,
    now_ns: u64,
    clock_known: bool,
    reqs: Vec<Req>,
    next_key: u64,
    /// In-place engine requests this layer made, by id (ids only grow).
    inner_ids: Vec<(RequestId, Owner)>,
    next_inner: RequestId,
    /// Own lower I/O in flight, by handle (handles only grow).
    own: Vec<(LowerId, Own)>,
    next_own: u64,
    /// Regions being filled, with the in-place request reading each.
    fills: Vec<(u64, RequestId)>,
    marks: VecDeque<Mark>,
    /// Marks that writes and fills at a device may still record (room kept for them).
    marks_reserved: usize,
    overlay_flushes: u64,
    overlay_flushes_in_flight: u32,
    last_flush_ns: u64,
    flushed_gen: u64,
    committed_gen: u64,
    /// Flushes and FUA writes waiting for a commit covering this generation.
    flush_waiters: Vec<(RequestId, u64)>,
    /// FUA writes and flushes waiting for overlay flush `seq`.
    seq_waiters: Vec<(RequestId, u64)>,
    commit: Option<Commit>,
    inner_commit_wanted: Option<u64>,
    next_commit: u64,
    merge: Option<merge::Merge>,
    merged: bool,
    restored_said: bool,
    /// Something changed that may let a waiting request or the merge move.
    wake: bool,
    /// Events for the in-place engine, fed in order (never re-entrantly).
    to_inner: VecDeque<Event>,
    scratch: Vec<Action>,
    counters: OverlayCounters,
}

impl OverlayEngine {
    /// An engine over the destination's map `d` and the overlay's durable map
    /// `o_durable` (both loaded from the durable metadata), in the state `record` says.
    pub fn new(
        d: Arc<RegionMap>,
        o_durable: Arc<NamedMap>,
        record: Record,
        config: OverlayConfig,
    ) -> Result<OverlayEngine, crate::region::AllocError> {
        let geometry = *d.geometry();
        debug_assert_eq!(o_durable.geometry().region_count(), geometry.region_count());
        let o = Arc::new(RegionMap::new(geometry)?);
        for run in o_durable.runs() {
            o.mark_range(run);
        }
        Ok(OverlayEngine {
            inner: Engine::new(d, config.engine),
            geometry,
            config,
            o,
            o_durable,
            record,
            record_state: record.state,
            now_ns: 0,
            clock_known: false,
            reqs: Vec::new(),
            next_key: 1,
            inner_ids: Vec::new(),
            next_inner: 1,
            own: Vec::new(),
            next_own: 1,
            fills: Vec::new(),
            marks: VecDeque::new(),
            marks_reserved: 0,
            overlay_flushes: 0,
            overlay_flushes_in_flight: 0,
            last_flush_ns: 0,
            flushed_gen: 0,
            committed_gen: 0,
            flush_waiters: Vec::new(),
            seq_waiters: Vec::new(),
            commit: None,
            inner_commit_wanted: None,
            next_commit: 1,
            merge: None,
            merged: record.state == State::Merged,
            restored_said: false,
            wake: false,
            to_inner: VecDeque::new(),
            scratch: Vec::new(),
            counters: OverlayCounters::default(),
        })
    }

    /// The in-place engine of the destination (its map is D).
    pub fn destination(&self) -> &Engine {
        &self.inner
    }

    /// The destination's map, D.
    pub fn map(&self) -> &Arc<RegionMap> {
        self.inner.map()
    }

    /// O in memory: regions whose current data is in the overlay.
    pub fn overlay_map(&self) -> &Arc<RegionMap> {
        &self.o
    }

    /// O as the metadata commits it.
    pub fn durable_overlay_map(&self) -> &Arc<NamedMap> {
        &self.o_durable
    }

    /// The volume's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The tunables.
    pub fn config(&self) -> &OverlayConfig {
        &self.config
    }

    /// The record as the next commit writes it.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// The state last made durable.
    pub fn durable_state(&self) -> State {
        self.record_state
    }

    /// True once the cutover committed (the volume is the destination).
    pub fn is_merged(&self) -> bool {
        self.merged
    }

    /// True while a merge runs.
    pub fn is_merging(&self) -> bool {
        self.merge.is_some()
    }

    /// This layer's counters.
    pub fn counters(&self) -> OverlayCounters {
        self.counters
    }

    /// Requests in progress (held or at a device).
    pub fn requests_in_progress(&self) -> usize {
        self.reqs.len()
    }

    /// Requests held right now, by this layer or by the in-place engine.
    pub fn held_count(&self) -> usize {
        self.reqs.iter().filter(|r| r.run.is_none()).count() + self.inner.held_count()
    }

    /// True once merged and idle: every request may go to the destination unchanged.
    pub fn is_passthrough(&self) -> bool {
        self.merged
            && self.reqs.is_empty()
            && self.own.is_empty()
            && self.commit.is_none()
            && self.flush_waiters.is_empty()
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
            Event::Flush { id } => self.on_flush(id, out),
            Event::LowerCompleted { lower, status } if lower & OWN_LOWER != 0 => {
                self.on_own(lower, status, out)
            }
            Event::MetadataCommitted { commit, ok } => self.on_committed(commit, ok, out),
            Event::Cancel { id } => self.on_cancel(id, out),
            Event::Remove => self.on_remove(out),
            Event::Tick { now_ns } => {
                self.to_inner.push_back(event);
                self.on_tick(now_ns, out);
            }
            // The destination's own business.
            Event::Hydrate { .. }
            | Event::FetchFailed { .. }
            | Event::LowerCompleted { .. }
            | Event::ServiceAttached => self.to_inner.push_back(event),
        }
        self.settle(out);
        self.check_invariants();
    }

    /// Feeds the in-place engine and moves waiting requests and the merge until
    /// nothing changes. Bounded: each round either ends or follows a change that
    /// completed, sent or failed something, and those are finite per event.
    fn settle(&mut self, out: &mut Vec<Action>) {
        let rounds_max = 4 * (self.reqs.len() + self.fills.len() + self.config.fills_max) + 64;
        for _ in 0..rounds_max {
            self.pump(out);
            if !self.wake {
                return;
            }
            self.wake = false;
            self.advance_waiting(out);
            self.step_merge(out);
        }
        debug_assert!(self.to_inner.is_empty() && !self.wake, "did not settle");
    }

    /// Feeds queued events to the in-place engine and translates what it asks.
    fn pump(&mut self, out: &mut Vec<Action>) {
        while let Some(event) = self.to_inner.pop_front() {
            let mut actions = core::mem::take(&mut self.scratch);
            actions.clear();
            self.inner.handle(event, &mut actions);
            for action in actions.drain(..) {
                self.on_inner_action(action, out);
            }
            self.scratch = actions;
        }
    }

    /// One action of the in-place engine: its requests are this layer's pieces and
    /// fills; the rest passes through.
    fn on_inner_action(&mut self, action: Action, out: &mut Vec<Action>) {
        match action {
            Action::Forward { id, lower } => match self.owner(id) {
                Some(Owner::Piece { key, offset, len }) => {
                    if let Some(req) = self.req(key) {
                        let id = req.id;
                        self.counters.destination_pieces += 1;
                        out.push(Action::Piece {
                            id,
                            lower,
                            target: super::Target::Destination,
                            offset,
                            len,
                        });
                    }
                }
                Some(Owner::Fill { region }) => {
                    let bytes = self.geometry.regions_byte_range(region..region + 1);
                    out.push(Action::Copy {
                        lower,
                        from: super::Target::Destination,
                        to: super::Target::Overlay,
                        offset: bytes.start,
                        len: bytes.end - bytes.start,
                    });
                }
                None => debug_assert!(false, "forward of unknown inner request {id}"),
            },
            Action::Hold { id } => {
                if let Some(Owner::Piece { key, .. }) = self.owner(id) {
                    self.note_held(key, out);
                }
            }
            Action::Complete { id, status } => {
                let Ok(at) = self.inner_ids.binary_search_by_key(&id, |e| e.0) else {
                    debug_assert!(false, "completion of unknown inner request {id}");
                    return;
                };
                match self.inner_ids.remove(at).1 {
                    Owner::Piece { key, .. } => self.piece_done(key, status, out),
                    Owner::Fill { region } => self.fill_done(region, status, out),
                }
            }
            Action::CommitMetadata { commit } => {
                debug_assert!(self.inner_commit_wanted.is_none());
                self.inner_commit_wanted = Some(commit);
                self.maybe_commit(out);
            }
            Action::AllRestored => {
                if !self.restored_said {
                    self.restored_said = true;
                    out.push(Action::DestinationRestored);
                }
                self.wake = true;
            }
            Action::Fetch { .. }
            | Action::WriteHydrate { .. }
            | Action::HydrateDone { .. }
            | Action::FlushDown { .. } => out.push(action),
            Action::Piece { .. }
            | Action::Copy { .. }
            | Action::FlushOverlay { .. }
            | Action::DestinationRestored
            | Action::Merged
            | Action::MergeFailed { .. } => {
                debug_assert!(false, "the in-place engine emitted {action:?}")
            }
        }
    }

    fn owner(&self, inner_id: RequestId) -> Option<Owner> {
        self.inner_ids
            .binary_search_by_key(&inner_id, |e| e.0)
            .ok()
            .map(|at| self.inner_ids[at].1)
    }

    fn req_index(&self, key: u64) -> Option<usize> {
        self.reqs.binary_search_by_key(&key, |r| r.key).ok()
    }

    fn req(&self, key: u64) -> Option<&Req> {
        self.req_index(key).map(|i| &self.reqs[i])
    }

    fn own_lower(&mut self) -> LowerId {
        let lower = OWN_LOWER | self.next_own;
        self.next_own += 1;
        lower
    }

    fn inner_id(&mut self) -> RequestId {
        let id = self.next_inner;
        self.next_inner += 1;
        id
    }

    /// Remembers own I/O (room was kept for it).
    fn push_own(&mut self, lower: LowerId, io: Own) {
        debug_assert!(self.own.last().is_none_or(|l| l.0 < lower));
        self.own.push((lower, io));
    }

    fn on_own(&mut self, lower: LowerId, status: Status, out: &mut Vec<Action>) {
        let Ok(at) = self.own.binary_search_by_key(&lower, |l| l.0) else {
            debug_assert!(false, "completion of unknown own I/O {lower:#x}");
            return;
        };
        match self.own.remove(at).1 {
            Own::Piece { key } => self.piece_done(key, status, out),
            Own::FlushOverlay { seq } => self.overlay_flushed(seq, status, out),
            Own::FlushDestination { id } => self.destination_flushed(id, status, out),
            Own::MergeCopy { regions, spoiled } => self.copied(regions, spoiled, status, out),
        }
        self.wake = true;
    }

    fn on_tick(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        if !self.clock_known {
            // Requests held so far were stamped before the engine knew the time.
            self.clock_known = true;
            for r in &mut self.reqs {
                r.since_ns = now_ns;
            }
            self.last_flush_ns = now_ns;
        }
        self.now_ns = self.now_ns.max(now_ns);
        let deadline = self.config.engine.hold_deadline_ns;
        let now = self.now_ns;
        // Bounded by the requests in progress.
        while let Some(key) = self
            .reqs
            .iter()
            .find(|r| r.run.is_none() && now.saturating_sub(r.since_ns) >= deadline)
            .map(|r| r.key)
        {
            self.drop_req(key, Status::IO_TIMEOUT, out);
        }
        self.tick_durability(out);
        self.wake = true;
    }
}
