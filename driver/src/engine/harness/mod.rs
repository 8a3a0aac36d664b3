//! A test bench for the engine: a lower device with a volatile cache, a backup, a
//! service that answers or fails fetches, an atomic metadata store, and an oracle that
//! knows what every sector may hold (DESIGN.md section 3). Unit tests drive it by hand;
//! the model test drives it from proptest.
//!
//! Every check panics with a message starting `model:` (so a test can tell the oracle
//! catching a bug from anything else). Besides values it judges every error completion
//! on its own (`judge.rs`): a status is explained only by a fault the bench injected
//! that hit that request while it was alive. Reads may race writes that are still at
//! the device; the bench's service remembers the regions whose delivered data the
//! engine dropped, and after every step the bench checks the engine's stated bounds
//! and that nothing is left stranded.

mod judge;

extern crate std;

use std::collections::BTreeMap;
use std::vec;
use std::vec::Vec;

use super::{Action, BatchId, Engine, EngineConfig, Event, LowerId, RequestId};
use crate::commit::perform_commit;
use crate::geometry::{Geometry, SECTOR_SIZE_BYTES};
use crate::meta::testing::{splitmix64, CrashStore};
use crate::meta::{Identity, Metadata};
use crate::region::RegionMap;
use crate::status::{FailReason, Status};
use alloc::sync::Arc;
use core::ops::Range;
use std::collections::BTreeSet;

/// What the device holds where nobody wrote: never acceptable.
pub(crate) const GARBAGE: u32 = 0xFFFF_FFFF;
/// What a trimmed sector holds.
pub(crate) const TRIMMED: u32 = 0x7777_7777;

/// What a sector may hold when read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    Exact(u32),
    AnyOf(Vec<u32>),
    Any,
}

impl Expect {
    fn allows(&self, v: u32) -> bool {
        match self {
            Expect::Exact(e) => *e == v,
            Expect::AnyOf(set) => set.contains(&v),
            Expect::Any => v != GARBAGE,
        }
    }

    /// This set plus `v`.
    fn with(&self, v: u32) -> Expect {
        match self {
            Expect::Exact(e) if *e == v => Expect::Exact(v),
            Expect::Exact(e) => Expect::AnyOf(vec![*e, v]),
            Expect::AnyOf(set) => {
                let mut set = set.clone();
                set.push(v);
                Expect::AnyOf(set)
            }
            Expect::Any => Expect::Any,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct AppReq {
    pub kind: AppKind,
    pub sector: usize,
    pub sectors: usize,
    pub issue_seq: u64,
    pub ever_held: bool,
    pub forwarded: bool,
    /// Its lower I/O completed (its data is on the device, or it failed).
    pub lower_done: bool,
    /// Values a write carries, one per sector.
    pub values: Vec<u32>,
    /// What a forwarded read saw.
    pub read: Option<Vec<u32>>,
    /// When it was issued (bench time).
    pub issued_ns: u64,
    /// Error statuses a fault that hit it explains (bits of `Status::fault_bit`).
    pub excused: u16,
    /// A read racing writes at the device: per sector, what it may also return (what
    /// was acknowledged when it was issued, or a racing write's value).
    pub race: Vec<Expect>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AppKind {
    Read,
    Write { fua: bool },
    Discard,
    Flush,
}

#[derive(Clone, Debug)]
enum LowerOp {
    App { id: RequestId },
    Hydrate { sector: usize, values: Vec<u32> },
    Flush { snapshot: Vec<(u32, u64)> },
}

/// The bench. Sector values are `u32` tags instead of 512-byte payloads.
pub(crate) struct Harness {
    pub engine: Engine,
    pub geometry: Geometry,
    config: EngineConfig,
    pub sectors: usize,
    pub backup: Vec<u32>,
    zero_regions: Vec<bool>,
    live: Vec<u32>,
    /// When each live value was written (a tick of `write_clock`).
    live_at: Vec<u64>,
    durable: Vec<u32>,
    durable_at: Vec<u64>,
    write_clock: u64,
    /// Newest acknowledged content.
    acked: Vec<Expect>,
    /// Content a completed flush (or FUA) guarantees across power loss.
    stable: Vec<Expect>,
    /// Writes that reached the device or may have, since `stable`: the value (TRIMMED
    /// for a trim) and when the device applied it, if it did.
    hist: Vec<Vec<(u32, Option<u64>)>>,
    /// When the device applied the value in `stable`.
    stable_at: Vec<u64>,
    /// Counts forwards and completions, to order acknowledgements against flushes.
    clock: u64,
    /// When each forwarded flush went down.
    flush_issued_at: BTreeMap<RequestId, u64>,
    pub apps: BTreeMap<RequestId, AppReq>,
    lower: Vec<(LowerId, LowerOp)>,
    /// Fetches the engine asked for and the service has not answered.
    pub fetches: Vec<Range<u64>>,
    commits: Vec<u64>,
    /// The real metadata over a store with a volatile cache and torn writes.
    meta: Metadata,
    store: CrashStore,
    identity: Identity,
    /// Marks of commits that returned Ok: never lost (rule 2).
    committed_words: Vec<u64>,
    /// Marks ever offered to the metadata, each checked against durable data.
    offered_words: Vec<u64>,
    rng: u64,
    /// Regions of each hydrate batch sent, by batch.
    batches: BTreeMap<BatchId, Range<u64>>,
    /// Regions whose data the service delivered and the engine dropped, not restored
    /// since: the service believes them done, so somebody must ask for them again.
    dropped: BTreeSet<u64>,
    /// Reservations the engine was told to fail are not used up yet.
    no_memory: bool,
    /// The regions of the hydrate being fed, batch by batch.
    delivering: Range<u64>,
    /// The last time a tick gave the current engine (None: it has had none yet).
    engine_clock: Option<u64>,
    next_id: RequestId,
    next_batch: BatchId,
    /// Per region the service gave up on (a failed fetch, or every region when it
    /// restarted): the first batch whose success makes it believe the region done
    /// again. A batch delivered before it gave up completing later does not (the
    /// hydrator sweeps the region again, whatever acks follow).
    believed_from: BTreeMap<u64, BatchId>,
    issue_seq: u64,
    value_seq: u32,
    now_ns: u64,
    pub completed_reads: u64,
    pub all_restored_seen: bool,
    out: Vec<Action>,
}

impl Harness {
    /// A volume of `regions` regions of 4 KiB (the last cut to `tail_sectors` if non-zero),
    /// where every `zero_every`-th region of the backup is zeros.
    pub fn new(regions: u64, tail_sectors: u64, zero_every: u64, config: EngineConfig) -> Harness {
        let size = if tail_sectors == 0 {
            regions * 4096
        } else {
            (regions - 1) * 4096 + tail_sectors * SECTOR_SIZE_BYTES
        };
        let geometry = Geometry::new(size, 4096).unwrap();
        let sectors = (size / SECTOR_SIZE_BYTES) as usize;
        let zero_regions: Vec<bool> = (0..regions)
            .map(|r| zero_every != 0 && r % zero_every == zero_every - 1)
            .collect();
        let backup: Vec<u32> = (0..sectors)
            .map(|s| if zero_regions[s / 8] { 0 } else { s as u32 + 1 })
            .collect();
        let map = Arc::new(RegionMap::new(geometry).unwrap());
        let identity = Identity {
            volume_size_bytes: size,
            region_size_bytes: 4096,
            backup_id: [7; 32],
        };
        let mut store = CrashStore::new(Metadata::store_pages(&geometry));
        let meta = Metadata::create(&mut store, &identity).unwrap();
        Harness {
            engine: Engine::new(map, config),
            geometry,
            config,
            sectors,
            acked: backup.iter().map(|&v| Expect::Exact(v)).collect(),
            stable: backup.iter().map(|&v| Expect::Exact(v)).collect(),
            hist: vec![Vec::new(); sectors],
            stable_at: vec![0; sectors],
            clock: 0,
            flush_issued_at: BTreeMap::new(),
            backup,
            zero_regions,
            live: vec![GARBAGE; sectors],
            live_at: vec![0; sectors],
            durable: vec![GARBAGE; sectors],
            durable_at: vec![0; sectors],
            write_clock: 0,
            apps: BTreeMap::new(),
            lower: Vec::new(),
            fetches: Vec::new(),
            commits: Vec::new(),
            meta,
            store,
            identity,
            committed_words: vec![0; (regions as usize).div_ceil(64)],
            offered_words: vec![0; (regions as usize).div_ceil(64)],
            rng: regions ^ 0x5EED,
            batches: BTreeMap::new(),
            dropped: BTreeSet::new(),
            no_memory: false,
            delivering: 0..0,
            engine_clock: None,
            next_id: 1,
            next_batch: 1,
            believed_from: BTreeMap::new(),
            issue_seq: 0,
            value_seq: 0,
            now_ns: 0,
            completed_reads: 0,
            all_restored_seen: false,
            out: Vec::new(),
        }
    }

    /// May an app request on these sectors be issued now? A file system never has two
    /// overlapping requests at the device at once unless the filter holds or ordered
    /// the earlier one (held, or held and still at the device); reads may also race
    /// reads, and writes or trims still at the device.
    pub fn may_issue(&self, kind: AppKind, sector: usize, sectors: usize) -> bool {
        self.apps.values().all(|a| {
            let overlap = a.sector < sector + sectors && sector < a.sector + a.sectors;
            let at_device = a.forwarded && !a.lower_done;
            !overlap
                || a.kind == AppKind::Flush
                || a.ever_held && !a.lower_done
                || kind == AppKind::Read && a.kind == AppKind::Read
                || kind == AppKind::Read && at_device && a.kind != AppKind::Flush
        })
    }

    fn feed(&mut self, event: Event) {
        let mut out = core::mem::take(&mut self.out);
        out.clear();
        self.engine.handle(event, &mut out);
        if !self.engine.reservations_pending() {
            self.no_memory = false;
        }
        if std::env::var_os("HARNESS_TRACE").is_some() {
            std::eprintln!("event {event:?}");
            for a in &out {
                std::eprintln!("   -> {a:?}");
            }
        }
        for action in out.drain(..) {
            self.apply(action);
        }
        self.out = out;
        self.check_step();
    }

    /// Issues an app request; returns its id.
    pub fn issue(&mut self, kind: AppKind, sector: usize, sectors: usize) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        self.issue_seq += 1;
        let values = match kind {
            AppKind::Write { .. } => (0..sectors)
                .map(|_| {
                    self.value_seq += 1;
                    0x4000_0000 | self.value_seq
                })
                .collect(),
            _ => Vec::new(),
        };
        self.apps.insert(
            id,
            AppReq {
                kind,
                sector,
                sectors,
                issue_seq: self.issue_seq,
                ever_held: false,
                forwarded: false,
                lower_done: false,
                values,
                read: None,
                // Held requests are timed by the engine's clock, which moves with ticks.
                issued_ns: self.engine_clock.unwrap_or(self.now_ns),
                excused: 0,
                race: Vec::new(),
            },
        );
        self.note_issue(id);
        let offset = sector as u64 * SECTOR_SIZE_BYTES;
        let len = sectors as u64 * SECTOR_SIZE_BYTES;
        let event = match kind {
            AppKind::Read => Event::Read { id, offset, len },
            AppKind::Write { fua } => Event::Write {
                id,
                offset,
                len,
                fua,
            },
            AppKind::Discard => Event::Discard { id, offset, len },
            AppKind::Flush => Event::Flush { id },
        };
        self.feed(event);
        id
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Forward { id, lower } => {
                let app = self
                    .apps
                    .get(&id)
                    .expect("forward of unknown request")
                    .clone();
                // The ordering rule: nothing overtakes an earlier held request.
                for other in self.apps.values() {
                    let overlap = other.sector < app.sector + app.sectors
                        && app.sector < other.sector + other.sectors;
                    let ordered = app.kind != AppKind::Flush && other.kind != AppKind::Flush;
                    assert!(
                        !(ordered
                            && overlap
                            && other.issue_seq < app.issue_seq
                            && other.ever_held
                            && !other.lower_done),
                        "model: request {id} overtook an earlier held request on its sectors"
                    );
                }
                self.clock += 1;
                if let AppKind::Write { .. } = app.kind {
                    for (i, &v) in app.values.iter().enumerate() {
                        self.hist[app.sector + i].push((v, None));
                    }
                }
                if app.kind == AppKind::Discard {
                    for s in app.sector..app.sector + app.sectors {
                        self.hist[s].push((TRIMMED, None));
                    }
                }
                if app.kind == AppKind::Flush {
                    self.flush_issued_at.insert(id, self.clock);
                }
                let op = if app.kind == AppKind::Flush {
                    LowerOp::Flush {
                        snapshot: self.snapshot(),
                    }
                } else {
                    LowerOp::App { id }
                };
                self.apps.get_mut(&id).unwrap().forwarded = true;
                self.lower.push((lower, op));
            }
            Action::Hold { id } => {
                self.apps
                    .get_mut(&id)
                    .expect("hold of unknown request")
                    .ever_held = true;
            }
            Action::Fetch { regions, .. } => {
                assert!(regions.end <= self.geometry.region_count());
                for r in regions.clone() {
                    assert!(
                        !self.engine.map().is_restored(r),
                        "fetch of restored region {r}"
                    );
                }
                self.fetches.push(regions);
            }
            Action::WriteHydrate {
                lower,
                offset,
                len,
                zero,
                ..
            } => {
                let sector = (offset / SECTOR_SIZE_BYTES) as usize;
                let n = (len / SECTOR_SIZE_BYTES) as usize;
                let values = if zero {
                    vec![0; n]
                } else {
                    self.backup[sector..sector + n].to_vec()
                };
                self.lower
                    .push((lower, LowerOp::Hydrate { sector, values }));
            }
            Action::FlushDown { lower } => {
                let snapshot = self.snapshot();
                self.lower.push((lower, LowerOp::Flush { snapshot }));
            }
            Action::CommitMetadata { commit } => self.commits.push(commit),
            Action::Complete { id, status } => self.complete(id, status),
            Action::HydrateDone { batch, status } => {
                let regions = self.batches.remove(&batch);
                if status.is_success() {
                    // Delivered: what is not restored now, the engine dropped.
                    let map = self.engine.map().clone();
                    let believed = |r: &u64| self.believed_from.get(r).is_none_or(|&b| batch >= b);
                    let dropped: Vec<u64> = regions
                        .clone()
                        .into_iter()
                        .flatten()
                        .filter(|&r| !map.is_restored(r) && believed(&r))
                        .collect();
                    self.dropped.extend(dropped);
                } else if !status.is_success() {
                    // Refused, or a write of it failed: the service fetches it again
                    // (and no longer believes any of it done).
                    if let Some(r) = regions {
                        for region in r.clone() {
                            self.dropped.remove(&region);
                        }
                        self.fetches.push(r);
                    }
                }
            }
            Action::Piece { .. }
            | Action::Copy { .. }
            | Action::FlushOverlay { .. }
            | Action::DestinationRestored
            | Action::Merged
            | Action::MergeFailed { .. } => panic!("model: the in-place engine emitted {action:?}"),
            Action::AllRestored => {
                assert!(!self.all_restored_seen, "model: AllRestored said twice");
                assert!(self.engine.map().is_all_restored());
                self.all_restored_seen = true;
            }
        }
    }

    fn snapshot(&self) -> Vec<(u32, u64)> {
        self.live
            .iter()
            .copied()
            .zip(self.live_at.iter().copied())
            .collect()
    }

    /// The device writes `values` from `sector` into its cache (and its medium with FUA).
    fn device_write(&mut self, sector: usize, values: &[u32], fua: bool) {
        self.write_clock += 1;
        for (i, &v) in values.iter().enumerate() {
            self.live[sector + i] = v;
            self.live_at[sector + i] = self.write_clock;
            if fua {
                self.durable[sector + i] = v;
                self.durable_at[sector + i] = self.write_clock;
            }
        }
    }

    fn complete(&mut self, id: RequestId, status: Status) {
        let app = self
            .apps
            .remove(&id)
            .expect("completion of unknown request");
        self.clock += 1;
        let issued_at = self.flush_issued_at.remove(&id);
        if !status.is_success() {
            self.judge_failure(id, &app, status);
            if let (AppKind::Write { .. }, true) = (app.kind, app.forwarded) {
                // A failed write may have torn: each sector old or new.
                for (i, &v) in app.values.iter().enumerate() {
                    let s = app.sector + i;
                    self.acked[s] = match &self.acked[s] {
                        Expect::Exact(old) => Expect::AnyOf(vec![*old, v]),
                        Expect::AnyOf(olds) => {
                            let mut set = olds.clone();
                            set.push(v);
                            Expect::AnyOf(set)
                        }
                        Expect::Any => Expect::Any,
                    };
                }
            }
            return;
        }
        assert!(
            app.forwarded,
            "request {id} completed with success but never went down"
        );
        let range = app.sector..app.sector + app.sectors;
        match app.kind {
            AppKind::Read => {
                let data = app.read.expect("read completed without data");
                for (i, (s, &v)) in range.zip(data.iter()).enumerate() {
                    let raced = app.race.get(i).is_some_and(|r| r.allows(v));
                    assert!(
                        raced || self.acked[s].allows(v),
                        "model: sector {s}: read {v:#x}, expected {:?} (backup {:#x})",
                        self.acked[s],
                        self.backup[s]
                    );
                    if app.race.is_empty() {
                        self.acked[s] = Expect::Exact(v);
                    }
                }
                self.completed_reads += 1;
            }
            AppKind::Write { fua } => {
                for (s, &v) in range.zip(app.values.iter()) {
                    // `acked` and `hist` took the value when the data reached the device.
                    if fua {
                        let applied = self.hist[s].iter().find(|e| e.0 == v).and_then(|e| e.1);
                        if let Some(at) = applied {
                            self.make_stable(s, at + 1);
                        }
                    }
                }
            }
            AppKind::Discard => {
                for s in range {
                    self.acked[s] = Expect::Any;
                }
            }
            AppKind::Flush => {
                // Everything acknowledged before the flush went down is now stable.
                let at = issued_at.expect("flush completed without going down");
                for s in 0..self.sectors {
                    self.make_stable(s, at);
                }
            }
        }
    }

    /// The device applied `v` to sector `s` now.
    fn apply_hist(&mut self, s: usize, v: u32) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(e) = self.hist[s]
            .iter_mut()
            .rev()
            .find(|e| e.0 == v && e.1.is_none())
        {
            e.1 = Some(clock);
        }
    }

    /// The newest value the device applied to sector `s` before `before` is durable.
    fn make_stable(&mut self, s: usize, before: u64) {
        let newest = self.hist[s]
            .iter()
            .filter_map(|&(v, at)| at.filter(|&a| a < before).map(|a| (a, v)))
            .max();
        if let Some((at, v)) = newest {
            if at > self.stable_at[s] {
                self.stable[s] = if v == TRIMMED {
                    Expect::Any
                } else {
                    Expect::Exact(v)
                };
                self.stable_at[s] = at;
                self.hist[s].retain(|&(_, a)| a.is_none_or(|a| a > at));
            }
        }
    }

    /// Completes the `pick`-th lower I/O (modulo how many there are), failing it with a
    /// media error when `fail`.
    pub fn complete_lower(&mut self, pick: usize, fail: bool) -> bool {
        if self.lower.is_empty() {
            return false;
        }
        let (lower, op) = self.lower.remove(pick % self.lower.len());
        let status = if fail {
            Status::IO_DEVICE_ERROR
        } else {
            Status::SUCCESS
        };
        if fail {
            self.excuse_lower_failure(&op);
        }
        match op {
            LowerOp::App { id } => {
                let app = self
                    .apps
                    .get(&id)
                    .expect("lower I/O of unknown request")
                    .clone();
                self.apps.get_mut(&id).unwrap().lower_done = true;
                let range = app.sector..app.sector + app.sectors;
                if !fail {
                    match app.kind {
                        AppKind::Read => {
                            self.apps.get_mut(&id).unwrap().read = Some(self.live[range].to_vec());
                        }
                        AppKind::Write { fua } => {
                            for (s, &v) in range.clone().zip(app.values.iter()) {
                                self.acked[s] = Expect::Exact(v);
                                self.apply_hist(s, v);
                            }
                            self.device_write(range.start, &app.values, fua);
                        }
                        AppKind::Discard => {
                            for s in range.clone() {
                                self.apply_hist(s, TRIMMED);
                            }
                            self.device_write(range.start, &vec![TRIMMED; app.sectors], false);
                        }
                        AppKind::Flush => unreachable!(),
                    }
                } else if matches!(app.kind, AppKind::Write { .. }) {
                    // A failed write may have torn: the first half landed.
                    self.device_write(range.start, &app.values[..app.sectors / 2], false);
                }
            }
            LowerOp::Hydrate { sector, values } => {
                if !fail {
                    self.device_write(sector, &values, false);
                }
            }
            LowerOp::Flush { snapshot } => {
                if !fail {
                    // Writes completed before the flush was issued are durable.
                    for (s, &(v, at)) in snapshot.iter().enumerate() {
                        if at > self.durable_at[s] {
                            self.durable[s] = v;
                            self.durable_at[s] = at;
                        }
                    }
                }
            }
        }
        self.feed(Event::LowerCompleted { lower, status });
        true
    }

    /// Performs the oldest pending metadata commit through the real metadata; with
    /// `fail_after`, the store fails that many operations in (a torn commit).
    pub fn commit(&mut self, fail_after: Option<u64>) -> bool {
        if self.commits.is_empty() {
            return false;
        }
        let commit = self.commits.remove(0);
        if let Some(n) = fail_after {
            self.store.fail_after(n);
            self.excuse_durability(Status::IO_DEVICE_ERROR);
        }
        let result = perform_commit(&mut self.engine, &mut self.meta, &mut self.store);
        self.store.clear_faults();
        // Rule 2: whatever this commit may have written (all of it, or any part if it
        // failed) is a mark over durable data.
        for w in 0..self.offered_words.len() {
            let word = self.engine.durable_word(w);
            let mut newly = word & !self.offered_words[w];
            while newly != 0 {
                let region = w as u64 * 64 + u64::from(newly.trailing_zeros());
                newly &= newly - 1;
                self.check_region_durable(region);
            }
            self.offered_words[w] |= word;
            if result.is_ok() {
                self.committed_words[w] |= word;
            }
        }
        self.feed(Event::MetadataCommitted {
            commit,
            ok: result.is_ok(),
        });
        true
    }

    fn after_crash(&self, s: usize) -> Expect {
        if self.hist[s].iter().any(|&(v, _)| v == TRIMMED) {
            return Expect::Any;
        }
        let mut set: Vec<u32> = self.hist[s].iter().map(|&(v, _)| v).collect();
        match &self.stable[s] {
            Expect::Exact(v) => set.push(*v),
            Expect::AnyOf(vs) => set.extend(vs.iter().copied()),
            Expect::Any => return Expect::Any,
        }
        Expect::AnyOf(set)
    }

    fn check_region_durable(&self, region: u64) {
        let bytes = self.geometry.regions_byte_range(region..region + 1);
        for s in
            (bytes.start / SECTOR_SIZE_BYTES) as usize..(bytes.end / SECTOR_SIZE_BYTES) as usize
        {
            let v = self.durable[s];
            assert!(
                self.after_crash(s).allows(v),
                "model: region {region} durable before its data: sector {s} holds {v:#x} durably, may hold {:?}",
                self.after_crash(s)
            );
        }
    }

    /// Answers the `pick`-th outstanding fetch with data (or zero-fill for zero regions).
    pub fn deliver(&mut self, pick: usize) -> bool {
        if self.fetches.is_empty() {
            return false;
        }
        let regions = self.fetches.remove(pick % self.fetches.len());
        self.hydrate(regions);
        true
    }

    /// Sends hydrate data for `regions` whether or not anyone asked (background sweep,
    /// duplicates, stale data).
    pub fn hydrate(&mut self, regions: Range<u64>) {
        // The service splits at zero/data boundaries, as block status lets it.
        self.delivering = regions.clone();
        let mut r = regions.start;
        while r < regions.end {
            let zero = self.zero_regions[r as usize];
            let mut end = r + 1;
            while end < regions.end && self.zero_regions[end as usize] == zero {
                end += 1;
            }
            let bytes = self.geometry.regions_byte_range(r..end);
            let batch = self.next_batch;
            self.next_batch += 1;
            self.batches.insert(batch, r..end);
            self.feed(Event::Hydrate {
                batch,
                offset: bytes.start,
                len: bytes.end - bytes.start,
                zero,
            });
            r = end;
        }
        self.delivering = 0..0;
    }

    /// Fails the `pick`-th outstanding fetch.
    pub fn fail_fetch(&mut self, pick: usize, reason: FailReason) -> bool {
        if self.fetches.is_empty() {
            return false;
        }
        let regions = self.fetches.remove(pick % self.fetches.len());
        self.fail_range(regions, reason);
        true
    }

    /// The service reports `regions` failed, whatever it was asked (a whole chunk, a
    /// widened range): only the regions the engine asked for and did not get fail.
    pub fn fail_range(&mut self, regions: Range<u64>, reason: FailReason) {
        let regions = regions.start..regions.end.min(self.geometry.region_count());
        if regions.is_empty() {
            return;
        }
        // The service gave up on them: it does not believe them done (it sweeps them
        // again later).
        for r in regions.clone() {
            self.dropped.remove(&r);
            self.believed_from.insert(r, self.next_batch);
        }
        self.excuse_fetch_failure(regions.clone(), reason);
        let bytes = self.geometry.regions_byte_range(regions);
        self.feed(Event::FetchFailed {
            offset: bytes.start,
            len: bytes.end - bytes.start,
            reason,
        });
    }

    /// The file system cancels the `pick`-th request the engine holds.
    pub fn cancel(&mut self, pick: usize) -> bool {
        let held: Vec<RequestId> = self
            .apps
            .iter()
            .filter(|(_, a)| a.ever_held && !a.forwarded)
            .map(|(&id, _)| id)
            .collect();
        if held.is_empty() {
            return false;
        }
        let id = held[pick % held.len()];
        self.excuse(id, Status::CANCELLED);
        self.feed(Event::Cancel { id });
        true
    }

    /// The engine's next `count` reservations fail, as if memory ran out.
    pub fn no_memory(&mut self, count: u32) {
        self.engine.fail_next_reservations(count);
        self.no_memory = count > 0;
        let live: Vec<RequestId> = self.apps.keys().copied().collect();
        for id in live {
            self.excuse(id, Status::INSUFFICIENT_RESOURCES);
        }
    }

    pub fn tick(&mut self, advance_ns: u64) {
        self.now_ns += advance_ns;
        self.engine_clock = Some(self.now_ns);
        self.feed(Event::Tick {
            now_ns: self.now_ns,
        });
    }

    /// The service restarts: outstanding fetches are lost and asked again; the new
    /// instance sweeps everything, so it believes nothing done.
    pub fn restart_service(&mut self) {
        self.fetches.clear();
        self.dropped.clear();
        for r in 0..self.geometry.region_count() {
            self.believed_from.insert(r, self.next_batch);
        }
        self.feed(Event::ServiceAttached);
    }

    /// Power loss and reboot: each sector keeps its durable value or a later one, the
    /// engine reloads from the durable metadata, requests in flight are gone.
    pub fn crash(&mut self, keep_live: impl Fn(usize) -> bool, downtime_ns: u64) {
        // A reboot takes a while: the new engine's first clock is well past zero.
        self.now_ns += downtime_ns;
        self.engine_clock = None;
        self.dropped.clear();
        self.batches.clear();
        for s in 0..self.sectors {
            if keep_live(s) && self.live_at[s] > self.durable_at[s] {
                self.durable[s] = self.live[s];
                self.durable_at[s] = self.live_at[s];
            }
            self.live[s] = self.durable[s];
            self.live_at[s] = self.durable_at[s];
        }
        let mut rng = self.rng;
        self.store.crash(&mut || splitmix64(&mut rng));
        self.rng = rng;
        let map = Arc::new(RegionMap::new(self.geometry).unwrap());
        self.meta = Metadata::open(&mut self.store, &self.identity, &map)
            .expect("model: metadata must open after any crash");
        for (w, &bits) in self.committed_words.iter().enumerate() {
            assert_eq!(
                map.word(w) & bits,
                bits,
                "model: a committed mark was lost in word {w}"
            );
            assert_eq!(
                map.word(w) & !self.offered_words[w],
                0,
                "model: a mark nobody offered appeared in word {w}"
            );
        }
        for s in 0..self.sectors {
            self.acked[s] = self.after_crash(s);
            self.stable[s] = self.acked[s].clone();
            self.stable_at[s] = 0;
            self.hist[s].clear();
        }
        // Durable marks must cover data that survived (rule 3).
        for region in 0..self.geometry.region_count() {
            if map.is_restored(region) {
                self.check_region_durable(region);
            }
        }
        self.engine = Engine::new(map, self.config);
        self.apps.clear();
        self.lower.clear();
        self.fetches.clear();
        self.commits.clear();
        self.flush_issued_at.clear();
        self.all_restored_seen = false;
    }

    /// Runs everything to the end: answers every fetch, sweeps the rest, completes all
    /// I/O and commits; then reads the whole volume and checks it.
    pub fn drain_and_verify(&mut self) {
        for _ in 0..100_000 {
            if self.complete_lower(0, false) || self.commit(None) || self.deliver(0) {
                continue;
            }
            if let Some(r) = self.engine.map().next_missing_run(0, 16) {
                self.hydrate(r);
                continue;
            }
            if !self.apps.is_empty() {
                // Held requests whose fetches were lost (failed or dropped): time them out.
                self.tick(self.config.hold_deadline_ns);
                continue;
            }
            if !self.engine.is_passthrough() || !self.all_restored_seen {
                self.tick(self.config.commit_interval_ns);
                continue;
            }
            break;
        }
        assert!(
            self.apps.is_empty() && self.lower.is_empty(),
            "model: did not settle"
        );
        assert!(self.engine.map().is_all_restored(), "model: not restored");
        assert!(self.engine.is_passthrough(), "model: no pass-through");
        assert!(self.all_restored_seen, "model: AllRestored never said");
        let step = 8;
        for s in (0..self.sectors).step_by(step) {
            let n = step.min(self.sectors - s);
            let id = self.issue(AppKind::Read, s, n);
            while self.apps.contains_key(&id) {
                assert!(self.complete_lower(0, false));
            }
        }
    }
}
