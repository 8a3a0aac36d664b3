//! A test bench for the overlay mode: two lower devices (the overlay and the
//! destination) with volatile caches, a backup, a service that answers fetches, the
//! real metadata (restore map, overlay map, record) over a store with a volatile cache
//! and torn writes, and an oracle of the pseudo-volume. Every check panics with a
//! message starting `model:`.
//!
//! What it checks, after every step or where the rule applies:
//! * every completed read returns, per sector, the newest acknowledged write else the
//!   backup's data (or, racing a write at the device, that write's data);
//! * before the cutover's *merging* commit, the destination holds only backup data
//!   (or nothing); after it, it may hold other data only in regions of the committed O;
//! * a mark of O offered to a commit stands over overlay data that is durable and is a
//!   value the pseudo-volume may hold after a crash; a mark of D over durable backup
//!   data; committed marks and the committed state never go back across a crash;
//! * a cutover is refused while D is incomplete, and then changes nothing;
//! * when *merged* is said, the destination equals the pseudo-volume byte for byte,
//!   durably;
//! * an error completion is explained by a fault injected while the request lived.

extern crate std;

use std::collections::BTreeMap;
use std::vec;
use std::vec::Vec;

use alloc::sync::Arc;
use core::ops::Range;

use super::super::{Action, BatchId, Event, LowerId, RequestId, Target};
use super::{MergeRefused, MergeStart, OverlayConfig, OverlayEngine, OverlayPin, Record, State};
use crate::geometry::{Geometry, SECTOR_SIZE_BYTES};
use crate::meta::testing::{splitmix64, CrashStore};
use crate::meta::{Binding, Identity, Metadata, NamedMap};
use crate::region::RegionMap;
use crate::status::{FailReason, Status};

use super::OVERLAY_MAP;

/// What a device holds where nobody wrote: never acceptable in a read.
pub(crate) const GARBAGE: u32 = 0xFFFF_FFFF;
/// Application requests the bench keeps alive at most.
pub(crate) const APPS_MAX: usize = 40;
/// What a trimmed sector holds.
const TRIMMED: u32 = 0x7777_7777;

/// What a sector may hold.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    One(u32),
    AnyOf(Vec<u32>),
    Any,
}

impl Expect {
    fn allows(&self, v: u32) -> bool {
        match self {
            Expect::One(e) => *e == v,
            Expect::AnyOf(set) => set.contains(&v),
            Expect::Any => v != GARBAGE,
        }
    }

    fn with(&self, v: u32) -> Expect {
        match self {
            Expect::One(e) if *e == v => Expect::One(v),
            Expect::One(e) => Expect::AnyOf(vec![*e, v]),
            Expect::AnyOf(set) if set.contains(&v) => self.clone(),
            Expect::AnyOf(set) => {
                let mut set = set.clone();
                set.push(v);
                Expect::AnyOf(set)
            }
            Expect::Any => Expect::Any,
        }
    }
}

/// A device with a volatile write cache: `live` is what reads see, `durable` what power
/// loss keeps; each value carries the time the device applied it.
#[derive(Clone, Debug)]
struct Dev {
    live: Vec<(u32, u64)>,
    durable: Vec<(u32, u64)>,
}

impl Dev {
    fn new(sectors: usize) -> Dev {
        Dev {
            live: vec![(GARBAGE, 0); sectors],
            durable: vec![(GARBAGE, 0); sectors],
        }
    }

    fn write(&mut self, clock: &mut u64, sector: usize, values: &[u32], fua: bool) {
        *clock += 1;
        for (i, &v) in values.iter().enumerate() {
            self.live[sector + i] = (v, *clock);
            if fua {
                self.durable[sector + i] = (v, *clock);
            }
        }
    }

    fn read(&self, sector: usize, n: usize) -> Vec<u32> {
        self.live[sector..sector + n].iter().map(|e| e.0).collect()
    }

    /// A flush whose snapshot of the cache was taken when it was issued completed.
    fn flushed(&mut self, snapshot: &[(u32, u64)]) {
        for (s, &(v, at)) in snapshot.iter().enumerate() {
            if at > self.durable[s].1 {
                self.durable[s] = (v, at);
            }
        }
    }

    fn crash(&mut self, keep: &dyn Fn(usize) -> bool) {
        for s in 0..self.live.len() {
            if keep(s) && self.live[s].1 > self.durable[s].1 {
                self.durable[s] = self.live[s];
            }
            self.live[s] = self.durable[s];
        }
    }
}

/// What an application request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AppKind {
    Read,
    Write { fua: bool },
    Discard,
    Flush,
}

#[derive(Clone, Debug)]
struct App {
    kind: AppKind,
    sector: usize,
    sectors: usize,
    values: Vec<u32>,
    /// A read's data as its pieces bring it.
    read: Vec<Option<u32>>,
    /// A read's allowed values, taken when it was issued.
    expect: Vec<Expect>,
    held: bool,
    /// A fault hit it while it lived: an error completion is explained.
    excused: bool,
    issued_ns: u64,
    /// A flush: the acknowledgement count when it was issued.
    snap: u64,
}

#[derive(Clone, Debug)]
enum LowerOp {
    Piece {
        id: RequestId,
        target: Target,
        sector: usize,
        sectors: usize,
    },
    Copy {
        from: Target,
        to: Target,
        sector: usize,
        sectors: usize,
    },
    Hydrate {
        sector: usize,
        values: Vec<u32>,
    },
    Flush {
        target: Target,
        snapshot: Vec<(u32, u64)>,
    },
}

/// The bench. Sector values are `u32` tags instead of 512-byte payloads.
pub(crate) struct Bench {
    pub engine: OverlayEngine,
    config: OverlayConfig,
    geometry: Geometry,
    pub sectors: usize,
    backup: Vec<u32>,
    zero_regions: Vec<bool>,
    overlay: Dev,
    dest: Dev,
    clock: u64,
    /// The pseudo-volume: newest acknowledged content.
    acked: Vec<Expect>,
    /// What a flush guarantees across power loss, and what came since (value and the
    /// acknowledgement count when it came).
    stable: Vec<Expect>,
    hist: Vec<Vec<(u32, u64)>>,
    acks: u64,
    apps: BTreeMap<RequestId, App>,
    lower: Vec<(LowerId, LowerOp)>,
    fetches: Vec<Range<u64>>,
    commits: Vec<u64>,
    meta: Metadata,
    store: CrashStore,
    identity: Identity,
    map: usize,
    committed_d: Vec<u64>,
    /// D regions handed to the metadata by commits that failed so far.
    noted_d: Vec<u64>,
    offered_d: Vec<u64>,
    committed_o: Vec<u64>,
    offered_o: Vec<u64>,
    committed_state: State,
    pin: OverlayPin,
    next_id: RequestId,
    next_batch: BatchId,
    batches: BTreeMap<BatchId, Range<u64>>,
    value_seq: u32,
    now_ns: u64,
    rng: u64,
    pub merged_seen: bool,
    /// Copies seen: fills (destination to overlay) and merge copies.
    pub fills_seen: u64,
    pub merge_copies_seen: u64,
    pub merges_started: u64,
    pub merges_failed: u64,
    out: Vec<Action>,
}

impl Bench {
    /// A volume of `regions` 4 KiB regions (the last cut to `tail_sectors` if
    /// non-zero) where every `zero_every`-th region of the backup is zeros.
    pub fn new(regions: u64, tail_sectors: u64, zero_every: u64, config: OverlayConfig) -> Bench {
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
        let identity = Identity {
            volume_size_bytes: size,
            region_size_bytes: 4096,
            backup_id: [9; 32],
        };
        let pin = OverlayPin {
            kind: 1,
            size_bytes: size,
            id: [5; crate::meta::TARGET_ID_BYTES],
        };
        let mut store = CrashStore::new(Metadata::store_pages_with(&geometry, 1));
        let mut meta =
            Metadata::create_with_maps(&mut store, &identity, &Binding::UNRECORDED, &[OVERLAY_MAP])
                .unwrap();
        let map = meta.maps().find(&OVERLAY_MAP).unwrap();
        let o = Arc::new(NamedMap::new(geometry).unwrap());
        meta.attach(map, Arc::clone(&o)).unwrap();
        meta.set_record(map, Record::new(pin).encode()).unwrap();
        meta.commit(&mut store, |_| 0).unwrap();
        let d = Arc::new(RegionMap::new(geometry).unwrap());
        let engine = OverlayEngine::new(d, o, Record::new(pin), config).unwrap();
        let words = (regions as usize).div_ceil(64);
        Bench {
            engine,
            config,
            geometry,
            sectors,
            acked: backup.iter().map(|&v| Expect::One(v)).collect(),
            stable: backup.iter().map(|&v| Expect::One(v)).collect(),
            hist: vec![Vec::new(); sectors],
            acks: 0,
            backup,
            zero_regions,
            overlay: Dev::new(sectors),
            dest: Dev::new(sectors),
            clock: 0,
            apps: BTreeMap::new(),
            lower: Vec::new(),
            fetches: Vec::new(),
            commits: Vec::new(),
            meta,
            store,
            identity,
            map,
            committed_d: vec![0; words],
            noted_d: vec![0; words],
            offered_d: vec![0; words],
            committed_o: vec![0; words],
            offered_o: vec![0; words],
            committed_state: State::Pseudo,
            pin,
            next_id: 1,
            next_batch: 1,
            batches: BTreeMap::new(),
            value_seq: 0,
            now_ns: 0,
            rng: regions ^ 0x000E_71A7,
            merged_seen: false,
            fills_seen: 0,
            merge_copies_seen: 0,
            merges_started: 0,
            merges_failed: 0,
            out: Vec::new(),
        }
    }

    fn region_of(&self, sector: usize) -> u64 {
        sector as u64 * SECTOR_SIZE_BYTES / 4096
    }

    /// May a request on these sectors be issued now? Overlapping a request at work is
    /// allowed when the engine orders the new one behind it (it was held), or for a
    /// read racing a read or a write.
    pub fn may_issue(&self, kind: AppKind, sector: usize, sectors: usize) -> bool {
        // Below the engine's bounds, which refuse more (a unit test shows it).
        self.apps.len() < APPS_MAX
            && self.apps.values().all(|a| {
                let overlap = a.sector < sector + sectors && sector < a.sector + a.sectors;
                !overlap
                    || a.kind == AppKind::Flush
                    || kind == AppKind::Flush
                    || a.held
                    || kind == AppKind::Read && a.kind != AppKind::Discard
            })
    }

    fn feed(&mut self, event: Event) {
        if std::env::var_os("HARNESS_TRACE").is_some() {
            std::eprintln!("event {event:?}");
        }
        let mut out = core::mem::take(&mut self.out);
        out.clear();
        self.engine.handle(event, &mut out);
        self.apply_all(&mut out);
        self.out = out;
    }

    fn apply_all(&mut self, out: &mut Vec<Action>) {
        if std::env::var_os("HARNESS_TRACE").is_some() {
            for a in out.iter() {
                std::eprintln!("   -> {a:?}");
            }
        }
        for action in out.drain(..) {
            self.apply(action);
        }
        self.check_step();
    }

    /// Issues an application request; returns its id.
    pub fn issue(&mut self, kind: AppKind, sector: usize, sectors: usize) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        let values: Vec<u32> = match kind {
            AppKind::Write { .. } => (0..sectors)
                .map(|_| {
                    self.value_seq += 1;
                    0x4000_0000 | self.value_seq
                })
                .collect(),
            _ => Vec::new(),
        };
        let expect = if kind == AppKind::Read {
            (sector..sector + sectors)
                .map(|s| {
                    // Racing writes and trims at work may land first.
                    self.apps.values().fold(self.acked[s].clone(), |e, a| {
                        let here = a.sector <= s && s < a.sector + a.sectors;
                        match a.kind {
                            AppKind::Write { .. } if here => e.with(a.values[s - a.sector]),
                            AppKind::Discard if here => Expect::Any,
                            _ => e,
                        }
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        self.apps.insert(
            id,
            App {
                kind,
                sector,
                sectors,
                values,
                read: vec![None; if kind == AppKind::Read { sectors } else { 0 }],
                expect,
                held: false,
                excused: false,
                issued_ns: self.now_ns,
                snap: self.acks,
            },
        );
        if std::env::var_os("HARNESS_TRACE").is_some() {
            std::eprintln!(
                "issue {id} {kind:?} values {:x?}",
                self.apps[&id].values.first()
            );
        }
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

    fn dev(&mut self, target: Target) -> &mut Dev {
        match target {
            Target::Overlay => &mut self.overlay,
            Target::Destination => &mut self.dest,
        }
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Piece {
                id,
                lower,
                target,
                offset,
                len,
            } => {
                let app = self.apps.get(&id).expect("model: piece of unknown request");
                let sector = (offset / SECTOR_SIZE_BYTES) as usize;
                let sectors = (len / SECTOR_SIZE_BYTES) as usize;
                assert!(
                    app.sector <= sector && sector + sectors <= app.sector + app.sectors,
                    "model: piece {sector}+{sectors} outside request {id}"
                );
                if target == Target::Destination && !self.engine.is_merged() {
                    assert!(
                        app.kind == AppKind::Read,
                        "model: {:?} of the application sent to the destination before the cutover",
                        app.kind
                    );
                }
                self.lower.push((
                    lower,
                    LowerOp::Piece {
                        id,
                        target,
                        sector,
                        sectors,
                    },
                ));
            }
            Action::Copy {
                lower,
                from,
                to,
                offset,
                len,
            } => {
                assert_ne!(from, to, "model: a copy onto itself");
                match from {
                    Target::Destination => self.fills_seen += 1,
                    Target::Overlay => self.merge_copies_seen += 1,
                }
                self.lower.push((
                    lower,
                    LowerOp::Copy {
                        from,
                        to,
                        sector: (offset / SECTOR_SIZE_BYTES) as usize,
                        sectors: (len / SECTOR_SIZE_BYTES) as usize,
                    },
                ));
            }
            Action::Hold { id } => {
                self.apps
                    .get_mut(&id)
                    .expect("model: hold of unknown request")
                    .held = true;
            }
            Action::Fetch { regions, .. } => {
                assert!(regions.end <= self.geometry.region_count());
                for r in regions.clone() {
                    assert!(
                        !self.engine.map().is_restored(r),
                        "model: fetch of restored region {r}"
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
                let snapshot = self.dest.live.clone();
                self.lower.push((
                    lower,
                    LowerOp::Flush {
                        target: Target::Destination,
                        snapshot,
                    },
                ));
            }
            Action::FlushOverlay { lower } => {
                let snapshot = self.overlay.live.clone();
                self.lower.push((
                    lower,
                    LowerOp::Flush {
                        target: Target::Overlay,
                        snapshot,
                    },
                ));
            }
            Action::CommitMetadata { commit } => self.commits.push(commit),
            Action::Complete { id, status } => self.complete(id, status),
            Action::HydrateDone { batch, status } => {
                if let Some(r) = self.batches.remove(&batch) {
                    if !status.is_success() {
                        self.fetches.push(r);
                    }
                }
            }
            Action::DestinationRestored => {
                assert!(
                    self.engine.map().is_all_restored(),
                    "model: restored said early"
                );
            }
            Action::Merged => {
                assert!(!self.merged_seen, "model: merged said twice");
                assert_eq!(
                    self.committed_state,
                    State::Merged,
                    "model: merged said before it was durable"
                );
                self.merged_seen = true;
                self.check_merged(true);
            }
            Action::MergeFailed { status } => {
                assert!(status.is_error());
                self.merges_failed += 1;
            }
            Action::Forward { .. } | Action::AllRestored => {
                panic!("model: the overlay engine emitted {action:?}")
            }
        }
    }

    /// At *merged*: the destination is the pseudo-volume, in its cache and (`durable`)
    /// on its medium (a FUA write whose data was merged may still wait for its commit).
    fn check_merged(&self, durable: bool) {
        for s in 0..self.sectors {
            let volume = self
                .apps
                .values()
                .fold(self.acked[s].clone(), |e, a| match a.kind {
                    AppKind::Write { .. } if a.sector <= s && s < a.sector + a.sectors => {
                        e.with(a.values[s - a.sector])
                    }
                    _ => e,
                });
            let medium = durable.then_some(("medium", self.dest.durable[s].0));
            for (what, v) in [("cache", self.dest.live[s].0)].into_iter().chain(medium) {
                assert!(
                    volume.allows(v),
                    "model: after the merge the destination's {what} holds {v:#x} at sector {s}, the volume {volume:?}"
                );
            }
        }
    }

    fn complete(&mut self, id: RequestId, status: Status) {
        let app = self
            .apps
            .remove(&id)
            .expect("model: completion of unknown request");
        if status.is_error() {
            assert!(
                app.excused,
                "model: request {id} ({:?}) failed with {status:?} and no fault explains it",
                app.kind
            );
            return;
        }
        match app.kind {
            AppKind::Read => {
                for (i, v) in app.read.iter().enumerate() {
                    let s = app.sector + i;
                    let v = v
                        .unwrap_or_else(|| panic!("model: read {id} completed without sector {s}"));
                    assert!(
                        app.expect[i].allows(v),
                        "model: read {id} got {v:#x} at sector {s}, expected {:?} (backup {:#x})",
                        app.expect[i],
                        self.backup[s]
                    );
                }
            }
            AppKind::Write { fua: true } => {
                // Durable now, and so is everything before it (what came after may be).
                for (i, &v) in app.values.iter().enumerate() {
                    let s = app.sector + i;
                    if let Some(at) = self.hist[s].iter().position(|e| e.0 == v) {
                        let seq = self.hist[s][at].1;
                        self.stable[s] = Expect::One(v);
                        self.hist[s].retain(|e| e.1 > seq);
                    }
                }
            }
            // Its data counted when it reached the device.
            AppKind::Write { fua: false } => {}
            // A trim counted when it reached the device (before the merge it is dropped).
            AppKind::Discard => {}
            AppKind::Flush => {
                // What was acknowledged when it was issued is stable now.
                for s in 0..self.sectors {
                    let newest = self.hist[s].iter().rev().find(|e| e.1 <= app.snap).copied();
                    if let Some((v, _)) = newest {
                        self.stable[s] = if v == TRIMMED {
                            Expect::Any
                        } else {
                            Expect::One(v)
                        };
                        self.hist[s].retain(|e| e.1 > app.snap);
                    }
                }
            }
        }
    }

    /// What sector `s` of the pseudo-volume may hold after power loss now.
    fn after_crash(&self, s: usize) -> Expect {
        let mut e = self.hist[s]
            .iter()
            .fold(self.stable[s].clone(), |e, &(v, _)| {
                if v == TRIMMED {
                    Expect::Any
                } else {
                    e.with(v)
                }
            });
        for a in self.apps.values() {
            if let AppKind::Write { .. } = a.kind {
                if a.sector <= s && s < a.sector + a.sectors {
                    e = e.with(a.values[s - a.sector]);
                }
            }
        }
        e
    }

    /// Completes the `pick`-th lower I/O, failing it with a media error when `fail`.
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
            self.excuse_all();
        }
        match op {
            LowerOp::Piece {
                id,
                target,
                sector,
                sectors,
            } => {
                let app = self
                    .apps
                    .get(&id)
                    .expect("model: piece of unknown request")
                    .clone();
                let at = sector - app.sector;
                match app.kind {
                    AppKind::Read if !fail => {
                        let data = self.dev(target).read(sector, sectors);
                        let app = self.apps.get_mut(&id).unwrap();
                        for (i, v) in data.into_iter().enumerate() {
                            app.read[at + i] = Some(v);
                        }
                    }
                    AppKind::Write { fua } => {
                        let n = if fail { sectors / 2 } else { sectors };
                        let values = app.values[at..at + n].to_vec();
                        let mut clock = self.clock;
                        self.dev(target)
                            .write(&mut clock, sector, &values, fua && !fail);
                        self.clock = clock;
                        // The volume holds it from now on; a failed write may have landed,
                        // sector by sector, or not, and no flush makes it the stable value
                        // (its count is never reached).
                        self.acks += 1;
                        for (i, &v) in app.values[at..at + sectors].iter().enumerate() {
                            let s = sector + i;
                            if fail {
                                self.acked[s] = self.acked[s].with(v);
                                self.hist[s].push((v, u64::MAX));
                            } else {
                                self.acked[s] = Expect::One(v);
                                self.hist[s].push((v, self.acks));
                            }
                        }
                    }
                    AppKind::Discard if !fail => {
                        let mut clock = self.clock;
                        self.dev(target)
                            .write(&mut clock, sector, &vec![TRIMMED; sectors], false);
                        self.clock = clock;
                        self.acks += 1;
                        for s in sector..sector + sectors {
                            self.acked[s] = Expect::Any;
                            self.hist[s].push((TRIMMED, self.acks));
                        }
                    }
                    _ => {}
                }
            }
            LowerOp::Copy {
                from,
                to,
                sector,
                sectors,
            } => {
                if !fail {
                    let data = self.dev(from).read(sector, sectors);
                    let mut clock = self.clock;
                    self.dev(to).write(&mut clock, sector, &data, false);
                    self.clock = clock;
                }
            }
            LowerOp::Hydrate { sector, values } => {
                if !fail {
                    let mut clock = self.clock;
                    self.dest.write(&mut clock, sector, &values, false);
                    self.clock = clock;
                }
            }
            LowerOp::Flush { target, snapshot } => {
                if !fail {
                    self.dev(target).flushed(&snapshot);
                }
            }
        }
        self.feed(Event::LowerCompleted { lower, status });
        true
    }

    /// A fault happened: every request alive may fail for it.
    fn excuse_all(&mut self) {
        for a in self.apps.values_mut() {
            a.excused = true;
        }
    }

    /// Performs the oldest pending commit through the real metadata; with
    /// `fail_after`, the store fails that many operations in (a torn commit).
    pub fn commit(&mut self, fail_after: Option<u64>) -> bool {
        if self.commits.is_empty() {
            return false;
        }
        let commit = self.commits.remove(0);
        if let Some(n) = fail_after {
            self.store.fail_after(n);
            self.excuse_all();
        }
        let state = self.engine.record().state;
        // `perform_commit`, noting which D regions it hands to the metadata: their
        // pages are written by this commit or, if it fails, by the next.
        let noted = &mut self.noted_d;
        let meta = &mut self.meta;
        let record = self.engine.prepare_commit(|regions| {
            meta.note_marked(regions.clone());
            for r in regions {
                noted[(r / 64) as usize] |= 1 << (r % 64);
            }
        });
        let result = meta
            .set_record(self.map, record)
            .and_then(|()| meta.commit(&mut self.store, |w| self.engine.durable_word(w)));
        self.store.clear_faults();
        for w in 0..self.offered_d.len() {
            let d = self.engine.durable_word(w);
            let o = self.engine.durable_overlay_map().word(w);
            let (new_d, new_o) = (d & !self.offered_d[w], o & !self.offered_o[w]);
            for (bits, overlay) in [(new_d, false), (new_o, true)] {
                let mut bits = bits;
                while bits != 0 {
                    let region = w as u64 * 64 + u64::from(bits.trailing_zeros());
                    bits &= bits - 1;
                    self.check_region_durable(region, overlay);
                }
            }
            self.offered_d[w] |= d;
            self.offered_o[w] |= o;
            if result.is_ok() {
                self.committed_d[w] |= self.noted_d[w];
                self.noted_d[w] = 0;
                self.committed_o[w] |= o;
            }
        }
        if result.is_ok() {
            let record = Record::decode(&self.meta.maps().entries()[self.map].record).unwrap();
            assert!(
                record.state >= self.committed_state,
                "model: the committed state went back"
            );
            assert!(
                record.state <= state.max(self.committed_state),
                "model: a state nobody asked for"
            );
            self.committed_state = record.state;
        }
        self.feed(Event::MetadataCommitted {
            commit,
            ok: result.is_ok(),
        });
        true
    }

    /// A mark offered to a commit stands over durable data: D's over backup data, O's
    /// over a value the pseudo-volume may hold after a crash.
    fn check_region_durable(&self, region: u64, overlay: bool) {
        let bytes = self.geometry.regions_byte_range(region..region + 1);
        let sectors =
            (bytes.start / SECTOR_SIZE_BYTES) as usize..(bytes.end / SECTOR_SIZE_BYTES) as usize;
        for s in sectors {
            if overlay {
                let v = self.overlay.durable[s].0;
                assert!(
                    self.after_crash(s).allows(v),
                    "model: O mark of region {region} before its overlay data is durable: sector {s} holds {v:#x}, may hold {:?}",
                    self.after_crash(s)
                );
            } else if self.committed_state == State::Pseudo {
                let v = self.dest.durable[s].0;
                assert_eq!(
                    v, self.backup[s],
                    "model: D mark of region {region} before its restore data is durable (sector {s})"
                );
            }
        }
    }

    /// After every step: the destination holds nothing but backup data, except, once a
    /// cutover's *merging* commit is durable, in regions of the committed O.
    fn check_step(&self) {
        if self.committed_state == State::Merged {
            return;
        }
        for s in 0..self.sectors {
            let v = self.dest.live[s].0;
            if v == GARBAGE || v == self.backup[s] {
                continue;
            }
            let r = self.region_of(s);
            let in_o = self.committed_o[(r / 64) as usize] & (1 << (r % 64)) != 0;
            assert!(
                self.committed_state == State::Merging && in_o,
                "model: the destination holds {v:#x} at sector {s} (backup {:#x}) in state {:?}, region {r} {} the committed O",
                self.backup[s],
                self.committed_state,
                if in_o { "in" } else { "not in" }
            );
        }
    }

    /// Answers the `pick`-th outstanding fetch.
    pub fn deliver(&mut self, pick: usize) -> bool {
        if self.fetches.is_empty() {
            return false;
        }
        let regions = self.fetches.remove(pick % self.fetches.len());
        self.hydrate(regions);
        true
    }

    /// Sends hydrate data for `regions` whether or not anyone asked.
    pub fn hydrate(&mut self, regions: Range<u64>) {
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
    }

    /// Fails the `pick`-th outstanding fetch.
    pub fn fail_fetch(&mut self, pick: usize, reason: FailReason) -> bool {
        if self.fetches.is_empty() {
            return false;
        }
        let regions = self.fetches.remove(pick % self.fetches.len());
        self.excuse_all();
        let bytes = self.geometry.regions_byte_range(regions);
        self.feed(Event::FetchFailed {
            offset: bytes.start,
            len: bytes.end - bytes.start,
            reason,
        });
        true
    }

    /// The file system cancels the `pick`-th held request.
    pub fn cancel(&mut self, pick: usize) -> bool {
        let held: Vec<RequestId> = self
            .apps
            .iter()
            .filter(|(_, a)| a.held)
            .map(|(&id, _)| id)
            .collect();
        if held.is_empty() {
            return false;
        }
        let id = held[pick % held.len()];
        self.apps.get_mut(&id).unwrap().excused = true;
        self.feed(Event::Cancel { id });
        true
    }

    pub fn tick(&mut self, advance_ns: u64) {
        self.now_ns += advance_ns;
        let deadline = self.config.engine.hold_deadline_ns;
        for a in self.apps.values_mut() {
            if self.now_ns - a.issued_ns >= deadline {
                a.excused = true;
            }
        }
        self.feed(Event::Tick {
            now_ns: self.now_ns,
        });
    }

    /// The service restarts: outstanding fetches are asked again.
    pub fn restart_service(&mut self) {
        self.fetches.clear();
        self.feed(Event::ServiceAttached);
    }

    /// Asks for the cutover; checks the refusal rule.
    pub fn merge(&mut self, online: bool) {
        let complete = self.engine.map().is_all_restored();
        let before = (self.engine.record().state, self.engine.is_merging());
        let mut out = core::mem::take(&mut self.out);
        out.clear();
        let result = self.engine.merge(online, &mut out);
        match result {
            Err(MergeRefused::Incomplete {
                missing_regions, ..
            }) => {
                assert!(
                    !complete && missing_regions > 0,
                    "model: cutover refused as incomplete when D is complete"
                );
                assert!(out.is_empty(), "model: a refused cutover acted: {out:?}");
                assert_eq!(
                    before,
                    (self.engine.record().state, self.engine.is_merging()),
                    "model: a refused cutover changed the state"
                );
            }
            Err(_) => assert!(out.is_empty(), "model: a refused cutover acted: {out:?}"),
            Ok(MergeStart::Started) => {
                assert!(
                    complete,
                    "model: a cutover began while the destination is incomplete"
                );
                self.merges_started += 1;
            }
            Ok(MergeStart::AlreadyMerged) => assert!(self.engine.is_merged()),
        }
        self.apply_all(&mut out);
        self.out = out;
    }

    /// Power loss and reboot: each device keeps its durable data or a later write, the
    /// engine reloads from the durable metadata, requests in flight are gone.
    pub fn crash(&mut self, keep: impl Fn(usize) -> bool, downtime_ns: u64) {
        if std::env::var_os("HARNESS_TRACE").is_some() {
            std::eprintln!("crash");
        }
        self.now_ns += downtime_ns;
        let after: Vec<Expect> = (0..self.sectors).map(|s| self.after_crash(s)).collect();
        self.overlay.crash(&|s| keep(s));
        self.dest.crash(&|s| keep(s + 7));
        let mut rng = self.rng;
        self.store.crash(&mut || splitmix64(&mut rng));
        self.rng = rng;
        self.acked = after;
        self.stable = self.acked.clone();
        // What failed commits handed to the metadata is gone with it.
        self.noted_d.iter_mut().for_each(|w| *w = 0);
        for h in &mut self.hist {
            h.clear();
        }
        self.reopen();
        self.apps.clear();
        self.lower.clear();
        self.fetches.clear();
        self.commits.clear();
        self.batches.clear();
        self.merged_seen = self.engine.is_merged();
    }

    fn reopen(&mut self) {
        let d = Arc::new(RegionMap::new(self.geometry).unwrap());
        let mut meta = Metadata::open(&mut self.store, &self.identity, &d)
            .expect("model: the metadata must open after any crash");
        let map = meta
            .maps()
            .find(&OVERLAY_MAP)
            .expect("model: the overlay map is gone");
        let o = Arc::new(NamedMap::new(self.geometry).unwrap());
        let load = meta.load_map(&mut self.store, map, &o).unwrap();
        assert!(load.intact, "model: the overlay map was damaged by a crash");
        meta.attach(map, Arc::clone(&o)).unwrap();
        let record = Record::decode(&meta.maps().entries()[map].record)
            .expect("model: the overlay record must decode after any crash");
        assert_eq!(record.overlay, self.pin);
        assert!(
            record.state >= self.committed_state,
            "model: the state went back across a crash"
        );
        self.committed_state = record.state;
        for w in 0..self.committed_d.len() {
            for (name, now, committed, offered) in [
                ("D", d.word(w), self.committed_d[w], self.offered_d[w]),
                ("O", o.word(w), self.committed_o[w], self.offered_o[w]),
            ] {
                assert_eq!(
                    now & committed,
                    committed,
                    "model: a committed {name} mark was lost in word {w}"
                );
                assert_eq!(
                    now & !offered,
                    0,
                    "model: a {name} mark nobody offered appeared in word {w}"
                );
            }
            self.committed_o[w] = o.word(w);
        }
        for region in 0..self.geometry.region_count() {
            // After the merge the destination is the volume and O means nothing.
            if o.is_marked(region) && record.state != State::Merged {
                self.check_region_durable(region, true);
            }
            if d.is_restored(region) {
                self.check_region_durable(region, false);
            }
        }
        self.meta = meta;
        self.map = map;
        self.engine = OverlayEngine::new(d, o, record, self.config).unwrap();
    }

    /// Runs everything to the end: restores the rest, merges (online or not), and
    /// reads the whole volume back through the engine.
    pub fn drain_and_verify(&mut self, online: bool) {
        for _ in 0..200_000 {
            if self.complete_lower(0, false) || self.commit(None) || self.deliver(0) {
                continue;
            }
            if let Some(r) = self.engine.map().next_missing_run(0, 16) {
                self.hydrate(r);
                continue;
            }
            if !self.apps.is_empty() && !self.engine.is_merging() {
                self.tick(self.config.engine.hold_deadline_ns);
                continue;
            }
            if !self.engine.is_merged() {
                if !self.engine.is_merging() {
                    self.merge(online);
                }
                self.tick(self.config.engine.commit_interval_ns);
                continue;
            }
            break;
        }
        assert!(self.engine.is_merged(), "model: the cutover did not finish");
        assert!(
            self.lower.is_empty() && self.apps.is_empty(),
            "model: did not settle"
        );
        self.check_merged(false);
        for s in (0..self.sectors).step_by(8) {
            let n = 8.min(self.sectors - s);
            let id = self.issue(AppKind::Read, s, n);
            while self.apps.contains_key(&id) {
                assert!(
                    self.complete_lower(0, false),
                    "model: a read after the merge is stuck"
                );
            }
        }
        assert!(
            self.engine.is_passthrough(),
            "model: no pass-through after the merge"
        );
    }
}
