//! The two-site world: a primary and a DR site in one seeded world.
//!
//! Each site is a sans-IO core of `rehydrate_driver::dr` over a simulated data device
//! ([`Disk`]: a volatile write cache, torn writes at power loss) and a metadata record
//! written atomically by its commits. The sites are joined by [`SiteLink`], ordered
//! within a session and lossy by cuts. Simulated time moves from event to event in
//! (time, order of scheduling) order; every latency, interleaving and fault is drawn
//! from the seed's one [`Rng`], so a seed replays exactly.
//!
//! After every event the world performs what the cores ask (device I/O with random
//! latencies, frames on the link) and the oracle ([`super::oracle`]) checks the rules.
//! After `ops` client requests the faults stop, the link comes back, and the world runs
//! until the sync ended and everything drained, then reads the whole DR volume and
//! compares both volumes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use rehydrate_driver::dr::bits::Bits;
use rehydrate_driver::dr::primary::{
    self, HotExtents, Primary, PrimaryAction, PrimaryConfig, Written,
};
use rehydrate_driver::dr::secondary::{self, Secondary, SecondaryAction, SecondaryConfig};
use rehydrate_driver::dr::testing::{sector_bytes, sector_tags};
use rehydrate_driver::dr::wire::{ItemBody, Message};
use rehydrate_driver::dr::{Binding, DrError, LocalData};
use rehydrate_driver::geometry::Geometry;

use super::link::{Dir, LinkConfig, SiteLink};
use super::oracle::{DrViolation, History};
use super::{DrCounters, DrShape};
use crate::device::Disk;
use crate::faults::{Fault, Faults};
use crate::rng::Rng;

const SECTOR_BYTES: u64 = 512;
/// Simulated time the quiet phase may take before the run counts as stuck.
const QUIET_CAP_NS: u64 = 120_000_000_000;
/// How long a lost frame goes unnoticed before the connection times out.
const LOSS_TIMEOUT_NS: u64 = 5_000_000;

/// Something scheduled to happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// The next client request (a primary write or flush, a DR read).
    Client,
    /// Device operation `id` of the primary completes.
    PrimaryDone(u64),
    /// Device operation `id` of the DR site completes.
    DrDone(u64),
    /// Frames of session `1` due in direction `0` (0: to the DR) arrive.
    Deliver(u8, u64),
    /// The primary's commit timer.
    PrimaryTimer,
    /// The DR's acknowledgement timer.
    DrTimer,
    /// The next fault may strike.
    Fault,
    /// The connection comes back (a new session).
    Reconnect,
    /// A lost frame of session `0` is noticed: the connection times out.
    LossTimeout(u64),
}

enum POp {
    Write {
        ticket: primary::WriteTicket,
        sector: usize,
        tags: Vec<u64>,
        zero: bool,
    },
    Read {
        ticket: primary::ReadTicket,
        region: u64,
    },
    Commit(primary::CommitTicket),
    Flush,
}

enum DOp {
    Write {
        ticket: secondary::WriteTicket,
        sector: usize,
        tags: Vec<u64>,
    },
    Read {
        ticket: secondary::ReadTicket,
    },
    Commit(secondary::CommitTicket),
}

/// A client write the primary has not dispatched yet.
struct AppWrite {
    sector: usize,
    tags: Vec<u64>,
    zero: bool,
}

/// A client read of the DR: its sectors and the oldest point it may return.
struct DrRead {
    sector: usize,
    len: usize,
    floor: u64,
    /// The floor raised by the last session whose `Ready` the DR applied.
    session_floor: u64,
}

/// What the seed drew.
#[derive(Clone, Copy, Debug)]
struct Tunables {
    device_latency_ns: u64,
    dr_device_latency_ns: u64,
    client_gap_ns: u64,
    fault_gap_ns: u64,
    media_ppm: u32,
    delay_ppm: u32,
    write_share: u64,
    /// Bytes the background sync may read per primary timer (`None`: no limit); fetched
    /// regions are never limited, so a slow sync leaves reads to fetch what they need.
    sync_grant_bytes: Option<u64>,
    primary: PrimaryConfig,
    dr: SecondaryConfig,
    /// The primary's hot extents (`rehydrate dr primary` runs with them), or none.
    hot: Option<HotExtents>,
}

pub(crate) struct World {
    faults: Faults,
    ops_max: u64,
    rng: Rng,
    now_ns: u64,
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    event_order: u64,
    tun: Tunables,
    geometry: Geometry,
    binding: Binding,
    pub(crate) shape: DrShape,
    pub(crate) counters: DrCounters,

    primary: Primary,
    p_disk: Disk,
    /// The primary's durable sent map, as its metadata holds it.
    p_meta: Bits,
    p_ops: BTreeMap<u64, POp>,
    app_writes: BTreeMap<primary::WriteTicket, AppWrite>,

    dr: Secondary,
    d_disk: Disk,
    /// The DR's committed state: present map, generation, binding.
    d_meta: (Bits, u64, Option<Binding>),
    d_ops: BTreeMap<u64, DOp>,
    dr_reads: BTreeMap<secondary::ReadTicket, DrRead>,

    link: SiteLink,
    reconnect_scheduled: bool,
    /// The session a lost frame ended (the DR's gap check or the timeout ends it).
    lost_in: Option<u64>,
    /// The `Ready` of the current session: (its sequence, the point the session began).
    ready: Option<(u64, u64)>,
    /// Where the current session began.
    session_point: u64,

    history: History,
    /// The point of the newest read completed so far.
    last_point: u64,
    /// Points older than this are stale for reads issued now.
    session_floor: u64,
    next_tag: u64,
    next_op: u64,
    /// The centre of the hot spot.
    hot_sector: u64,
    quiet_since_ns: Option<u64>,
    whole_read: Option<secondary::ReadTicket>,
    done: bool,
}

fn violation(rule: &'static str, time_ns: u64, detail: String) -> DrViolation {
    DrViolation {
        rule,
        time_ns,
        detail,
    }
}

impl World {
    pub(crate) fn new(seed: u64, ops_max: u64, faults: Faults) -> World {
        let mut rng = Rng::new(seed);
        let region_size_bytes: u32 = if rng.coin() { 4096 } else { 8192 };
        let regions = rng.range(4, 40);
        let geometry = Geometry::new(regions * u64::from(region_size_bytes), region_size_bytes)
            .expect("shape");
        let sectors = (geometry.volume_size_bytes() / SECTOR_BYTES) as usize;
        let cache = faults.has(Fault::Cache);
        let tun = Tunables {
            device_latency_ns: rng.range(20_000, 200_000),
            dr_device_latency_ns: rng.range(20_000, 400_000),
            client_gap_ns: rng.range(5_000, 60_000),
            fault_gap_ns: rng.range(1_000_000, 10_000_000),
            media_ppm: if faults.has(Fault::Media) {
                rng.range(2_000, 20_000) as u32
            } else {
                0
            },
            delay_ppm: if faults.has(Fault::LinkReorder) {
                rng.range(10_000, 100_000) as u32
            } else {
                0
            },
            write_share: rng.range(30, 70),
            sync_grant_bytes: if rng.coin() {
                Some(u64::from(region_size_bytes) * rng.range(1, 3))
            } else {
                None
            },
            primary: PrimaryConfig {
                geometry,
                queue_max_bytes: u64::from(region_size_bytes) * rng.range(2, 24),
                sync_reads_max: rng.range(1, 4) as usize,
                ops_max: 64,
            },
            dr: SecondaryConfig {
                geometry,
                inbox_max_bytes: u64::from(region_size_bytes) * rng.range(4, 32),
                items_in_flight_max: rng.range(1, 3) as usize,
                ops_max: 64,
            },
            hot: rng.coin().then(|| HotExtents {
                extent_regions: rng.range(1, 8),
                extents_max: rng.range(1, 4) as usize,
                cool_after_ticks: rng.range(1, 12),
            }),
        };
        let link = SiteLink::new(LinkConfig {
            latency_ns: rng.range(50_000, 2_000_000),
            bytes_per_us: rng.range(50, 2_000),
        });
        let initial: Vec<u64> = (0..sectors as u64).map(|s| 1_000_000 + s).collect();
        let mut p_disk = Disk::new(sectors, 512, cache);
        p_disk.write(0, sectors, true, |i| initial[i]);
        let d_disk = Disk::new(sectors, 512, cache);
        let binding = Binding {
            primary_id: [7; 16],
            volume_id: [9; 16],
            volume_size_bytes: geometry.volume_size_bytes(),
            region_size_bytes,
        };
        let shape = DrShape {
            regions,
            region_size_bytes,
            cache,
            device_latency_ns: tun.device_latency_ns,
            items_in_flight_max: tun.dr.items_in_flight_max,
        };
        let region_count = geometry.region_count();
        let mut w = World {
            faults,
            ops_max,
            rng,
            now_ns: 0,
            events: BinaryHeap::new(),
            event_order: 0,
            tun,
            geometry,
            binding,
            shape,
            counters: DrCounters::default(),
            primary: Primary::new(tun.primary, Bits::new(region_count)),
            p_disk,
            p_meta: Bits::new(region_count),
            p_ops: BTreeMap::new(),
            app_writes: BTreeMap::new(),
            dr: Secondary::new(tun.dr, None, Bits::new(region_count), 0),
            d_disk,
            d_meta: (Bits::new(region_count), 0, None),
            d_ops: BTreeMap::new(),
            dr_reads: BTreeMap::new(),
            link,
            reconnect_scheduled: false,
            lost_in: None,
            ready: None,
            session_point: 0,
            history: History::new(&initial),
            last_point: 0,
            session_floor: 0,
            next_tag: 1 << 32, // far from the initial tags
            next_op: 1,
            hot_sector: 0,
            quiet_since_ns: None,
            whole_read: None,
            done: false,
        };
        w.primary = w.new_primary(Bits::new(region_count));
        w.schedule(0, Ev::Reconnect);
        w.reconnect_scheduled = true;
        w.schedule(0, Ev::Client);
        w.schedule(100_000, Ev::PrimaryTimer);
        w.schedule(100_000, Ev::DrTimer);
        let gap = w.tun.fault_gap_ns;
        w.schedule(gap, Ev::Fault);
        w
    }

    /// The primary's sender from its durable sent map, its background sync limited when
    /// the seed drew a limit (and the run is not quiet yet).
    fn new_primary(&self, committed: Bits) -> Primary {
        let mut p = Primary::new(self.tun.primary, committed);
        if let Some(hot) = self.tun.hot {
            p.set_hot_extents(hot);
        }
        p.limit_sync(self.tun.sync_grant_bytes.is_some() && !self.quiet());
        p
    }

    fn schedule(&mut self, after_ns: u64, ev: Ev) {
        self.event_order += 1;
        self.events
            .push(Reverse((self.now_ns + after_ns, self.event_order, ev)));
    }

    fn v(&self, rule: &'static str, detail: String) -> DrViolation {
        violation(rule, self.now_ns, detail)
    }

    /// `stale`: the DR serves no read before the primary said what changed since its
    /// restart.
    fn check_trusted(&self) -> Result<(), DrViolation> {
        if self.dr.is_trusted() {
            return Ok(());
        }
        Err(self.v(
            "stale",
            "the DR serves a read before the primary said what changed since its restart".into(),
        ))
    }

    fn quiet(&self) -> bool {
        self.quiet_since_ns.is_some()
    }

    fn per_region(&self) -> usize {
        (self.geometry.region_size_bytes() as u64 / SECTOR_BYTES) as usize
    }

    /// Runs the world to its end or its first broken rule.
    pub(crate) fn run(&mut self) -> Result<(), DrViolation> {
        while !self.done {
            let Some(Reverse((at, _, ev))) = self.events.pop() else {
                return Err(self.v("progress", "nothing left to happen".into()));
            };
            debug_assert!(at >= self.now_ns, "time goes forward");
            self.now_ns = at;
            self.counters.events += 1;
            self.event(ev)?;
            self.pump()?;
            self.note_ready();
            if let Some(since) = self.quiet_since_ns {
                if self.now_ns - since > QUIET_CAP_NS {
                    return Err(self.v(
                        "progress",
                        format!(
                            "not quiet: durably sent {}/{} regions, DR reads waiting {}, \
                             link up {}",
                            self.p_meta.count(),
                            self.geometry.region_count(),
                            self.dr_reads.len(),
                            self.link.is_up()
                        ),
                    ));
                }
                self.check_quiet()?;
            }
        }
        Ok(())
    }

    fn event(&mut self, ev: Ev) -> Result<(), DrViolation> {
        match ev {
            Ev::Client => self.client(),
            Ev::PrimaryDone(id) => self.primary_done(id)?,
            Ev::DrDone(id) => self.dr_done(id)?,
            Ev::Deliver(dir, session) => self.deliver(dir, session)?,
            Ev::PrimaryTimer => {
                self.primary.request_commit();
                if let Some(grant) = self.tun.sync_grant_bytes {
                    self.primary.grant_sync(grant, 4 * grant);
                }
                let t = self.rng.range(200_000, 2_000_000);
                self.schedule(t, Ev::PrimaryTimer);
            }
            Ev::DrTimer => {
                self.dr.tick();
                let t = self.rng.range(200_000, 2_000_000);
                self.schedule(t, Ev::DrTimer);
            }
            Ev::Fault => self.fault()?,
            Ev::Reconnect => {
                self.reconnect_scheduled = false;
                if !self.link.is_up() {
                    self.reconnect()?;
                }
            }
            Ev::LossTimeout(session) => {
                if self.link.is_up() && self.link.session() == session {
                    self.cut(200_000);
                }
            }
        }
        Ok(())
    }

    // ---- the clients -------------------------------------------------------------

    fn client(&mut self) {
        if self.counters.ops >= self.ops_max {
            if self.quiet_since_ns.is_none() {
                self.quiet_since_ns = Some(self.now_ns);
                self.primary.limit_sync(false);
                if !self.link.is_up() && !self.reconnect_scheduled {
                    self.reconnect_scheduled = true;
                    self.schedule(1_000, Ev::Reconnect);
                }
            }
            return;
        }
        self.counters.ops += 1;
        let pick = self.rng.below(100);
        if pick < self.tun.write_share {
            self.app_write();
        } else if pick < self.tun.write_share + 8 {
            let id = self.op_id();
            self.p_ops.insert(id, POp::Flush);
            let t = self.rng.latency(self.tun.device_latency_ns, 8);
            self.schedule(t, Ev::PrimaryDone(id));
        } else {
            self.dr_read();
        }
        let gap = self.rng.latency(self.tun.client_gap_ns, 4);
        self.schedule(gap, Ev::Client);
    }

    fn op_id(&mut self) -> u64 {
        self.next_op += 1;
        self.next_op
    }

    fn sectors(&self) -> usize {
        self.p_disk.sectors()
    }

    /// Where a request of `len` sectors goes: half the time near the hot spot (a few
    /// regions that move now and then), so writes, region reads and DR reads meet.
    fn place(&mut self, len: u64) -> u64 {
        let sectors = self.sectors() as u64;
        let last = sectors - len;
        if self.rng.coin() {
            return self.rng.below(last + 1);
        }
        if self.rng.below(64) == 0 {
            self.hot_sector = self.rng.below(sectors);
        }
        let span = 3 * self.per_region() as u64;
        let lo = self.hot_sector.saturating_sub(span / 2).min(last);
        (lo + self.rng.below(span)).min(last)
    }

    fn app_write(&mut self) {
        if !self.primary.has_room() || self.app_writes.len() >= 8 {
            return;
        }
        let sectors = self.sectors() as u64;
        let len = 1 + self.rng.below(24).min(sectors - 1);
        let sector = self.place(len) as usize;
        let zero = self.rng.below(12) == 0;
        // Fresh tags, one a sector, so a read names the writes it saw.
        let first_tag = self.next_tag;
        let tags: Vec<u64> = (0..len)
            .map(|k| if zero { 0 } else { first_tag + k })
            .collect();
        if !zero {
            self.next_tag += len;
        }
        let ticket = self
            .primary
            .begin_write(sector as u64 * SECTOR_BYTES, len * SECTOR_BYTES)
            .expect("a write inside the volume");
        self.app_writes
            .insert(ticket, AppWrite { sector, tags, zero });
    }

    fn dr_read(&mut self) {
        if self.dr_reads.len() >= 10 {
            return;
        }
        let sectors = self.sectors() as u64;
        let len = 1 + self.rng.below(64).min(sectors - 1);
        let sector = self.place(len);
        let ticket = self
            .dr
            .read(sector * SECTOR_BYTES, len * SECTOR_BYTES)
            .expect("a read inside the volume");
        let read = DrRead {
            sector: sector as usize,
            len: len as usize,
            floor: self.last_point,
            session_floor: self.session_floor,
        };
        self.dr_reads.insert(ticket, read);
    }

    // ---- the cores' actions ------------------------------------------------------

    fn pump(&mut self) -> Result<(), DrViolation> {
        for _ in 0..100_000 {
            let mut progress = false;
            while let Some(a) = self.primary.poll_action() {
                progress = true;
                let op = match a {
                    PrimaryAction::DispatchWrite(ticket) => {
                        let w = self
                            .app_writes
                            .remove(&ticket)
                            .expect("a write the client issued");
                        assert_eq!(
                            self.primary.write_offset(ticket),
                            Some(w.sector as u64 * SECTOR_BYTES)
                        );
                        POp::Write {
                            ticket,
                            sector: w.sector,
                            tags: w.tags,
                            zero: w.zero,
                        }
                    }
                    PrimaryAction::ReadRegion { ticket, region, .. } => {
                        POp::Read { ticket, region }
                    }
                    PrimaryAction::Commit(t) => POp::Commit(t),
                };
                let id = self.op_id();
                self.p_ops.insert(id, op);
                let t = self.rng.latency(self.tun.device_latency_ns, 8);
                self.schedule(t, Ev::PrimaryDone(id));
            }
            if self.link.is_up() {
                match self.primary.poll_send() {
                    Ok(Some(m)) => {
                        progress = true;
                        if let Message::Item(item) = &m {
                            if item.body == ItemBody::Ready {
                                self.ready = Some((item.seq, self.session_point));
                            }
                        }
                        self.send(Dir::ToDr, &m);
                    }
                    Ok(None) => {}
                    Err(DrError::StreamOverflow(_)) => {
                        progress = true;
                        self.counters.overflows += 1;
                        self.cut(50_000);
                    }
                    Err(e) => return Err(self.v("protocol", format!("primary: {e}"))),
                }
            }
            while let Some(a) = self.dr.poll_action() {
                progress = true;
                let op = match a {
                    SecondaryAction::WriteLocal {
                        ticket,
                        offset,
                        data,
                    } => {
                        let tags = match data {
                            LocalData::Bytes(b) => sector_tags(&b).ok_or_else(|| {
                                self.v("garbled", format!("DR write at {offset} mixes two writes"))
                            })?,
                            LocalData::Zeroes(n) => vec![0; (n / SECTOR_BYTES) as usize],
                        };
                        DOp::Write {
                            ticket,
                            sector: (offset / SECTOR_BYTES) as usize,
                            tags,
                        }
                    }
                    SecondaryAction::ReadLocal {
                        ticket,
                        offset,
                        len,
                    } => {
                        let r = self
                            .dr_reads
                            .get(&ticket)
                            .expect("a read the client issued");
                        assert_eq!(
                            (r.sector as u64 * SECTOR_BYTES, r.len as u64 * SECTOR_BYTES),
                            (offset, len)
                        );
                        self.check_trusted()?;
                        DOp::Read { ticket }
                    }
                    SecondaryAction::ReadServed { ticket, data } => {
                        // Answered now, from the region data the DR is about to write.
                        let tags = sector_tags(&data).ok_or_else(|| {
                            self.v("garbled", format!("DR read {ticket:?} served mixed"))
                        })?;
                        let read = self.dr_reads.remove(&ticket).expect("an issued read");
                        assert_eq!(tags.len(), read.len, "a served read of its length");
                        self.check_trusted()?;
                        self.check_read(&read, &tags)?;
                        if self.whole_read == Some(ticket) {
                            self.whole_read = None;
                            self.counters.whole_reads += 1;
                        }
                        continue;
                    }
                    SecondaryAction::Commit(t) => DOp::Commit(t),
                };
                let id = self.op_id();
                self.d_ops.insert(id, op);
                let t = self.rng.latency(self.tun.dr_device_latency_ns, 8);
                self.schedule(t, Ev::DrDone(id));
            }
            if let Some(m) = self.dr.poll_send() {
                progress = true;
                if self.link.is_up() {
                    self.send(Dir::ToPrimary, &m);
                }
            }
            if !progress {
                return Ok(());
            }
        }
        Err(self.v("progress", "the cores do not settle".into()))
    }

    /// Raises the floor of stale points once the DR applied this session's `Ready`.
    fn note_ready(&mut self) {
        let Some((seq, point)) = self.ready else {
            return;
        };
        if self.link.is_up() && self.dr.applied_seq().is_some_and(|a| a >= seq) {
            self.session_floor = self.session_floor.max(point);
            self.ready = None;
        }
    }

    fn send(&mut self, dir: Dir, m: &Message) {
        let extra = if self.rng.chance(self.tun.delay_ppm) {
            self.rng.range(1_000_000, 20_000_000)
        } else {
            0
        };
        let due = self.link.send(dir, m, self.now_ns, extra);
        self.counters.frames += 1;
        let session = self.link.session();
        let lane = match dir {
            Dir::ToDr => 0,
            Dir::ToPrimary => 1,
        };
        self.schedule(due - self.now_ns, Ev::Deliver(lane, session));
    }

    fn deliver(&mut self, lane: u8, session: u64) -> Result<(), DrViolation> {
        if !self.link.is_up() || self.link.session() != session {
            return Ok(());
        }
        let dir = if lane == 0 { Dir::ToDr } else { Dir::ToPrimary };
        // Bounded by the frames in flight.
        while let Some(m) = self.link.take_due(dir, self.now_ns) {
            match dir {
                Dir::ToDr => {
                    let bytes = match &m {
                        Message::Item(i) => i.body.queued_bytes(),
                        _ => 0,
                    };
                    if !self.dr.has_room(bytes) {
                        // The DR reads the connection only while its inbox has room.
                        let later = self.now_ns + 100_000;
                        self.link.put_back(dir, &m, later);
                        self.schedule(100_000, Ev::Deliver(lane, session));
                        return Ok(());
                    }
                    match self.dr.received(m) {
                        Ok(()) => {}
                        Err(DrError::OutOfOrder { .. }) if self.lost_in == Some(session) => {
                            self.cut(200_000);
                            return Ok(());
                        }
                        Err(e) => return Err(self.v("protocol", format!("DR: {e}"))),
                    }
                }
                Dir::ToPrimary => {
                    if let Err(e) = self.primary.received(m) {
                        return Err(self.v("protocol", format!("primary: {e}")));
                    }
                }
            }
            self.pump()?;
            if !self.link.is_up() || self.link.session() != session {
                return Ok(());
            }
        }
        Ok(())
    }

    // ---- device completions ------------------------------------------------------

    fn media_error(&mut self) -> bool {
        !self.quiet() && self.rng.chance(self.tun.media_ppm)
    }

    fn primary_done(&mut self, id: u64) -> Result<(), DrViolation> {
        let Some(op) = self.p_ops.remove(&id) else {
            return Ok(()); // lost with a crash
        };
        match op {
            POp::Write {
                ticket,
                sector,
                tags,
                zero,
            } => {
                let bytes = if zero {
                    Vec::new()
                } else {
                    sector_bytes(&tags)
                };
                let data = if zero {
                    Written::Zeroes
                } else {
                    Written::Bytes(&bytes)
                };
                if self.media_error() {
                    // A failed write may have changed any of its sectors: its regions
                    // leave the sent map, and a region read waiting behind it is not
                    // streamed.
                    let landed: Vec<bool> = tags.iter().map(|_| self.rng.coin()).collect();
                    self.land_primary(sector, &tags, &landed);
                    self.counters.media_errors += 1;
                    self.primary.write_completed(ticket, data, false);
                } else {
                    self.land_primary(sector, &tags, &vec![true; tags.len()]);
                    self.counters.writes += 1;
                    self.primary.write_completed(ticket, data, true);
                }
                let regions = self.geometry.regions_touched(
                    sector as u64 * SECTOR_BYTES,
                    tags.len() as u64 * SECTOR_BYTES,
                );
                self.check_durable_sent(regions)?;
            }
            POp::Read { ticket, region } => {
                if self.media_error() {
                    self.counters.media_errors += 1;
                    self.primary.region_read(ticket, None);
                } else {
                    let per = self.per_region();
                    let s = region as usize * per;
                    let tags: Vec<u64> = (s..s + per).map(|s| self.p_disk.live(s)).collect();
                    self.primary.region_read(ticket, Some(&sector_bytes(&tags)));
                }
            }
            POp::Commit(t) => {
                if self.primary.commit_needs_data_flush(t) {
                    self.p_disk.flush();
                }
                self.p_meta = self.primary.commit_map(t).clone();
                self.primary.commit_done(t, true);
                self.check_durable_sent(0..self.geometry.region_count())?;
            }
            POp::Flush => {
                self.p_disk.flush();
                self.primary.flush_completed(true);
            }
        }
        Ok(())
    }

    /// Writes the `landed` sectors of a primary write and records the new point.
    fn land_primary(&mut self, sector: usize, tags: &[u64], landed: &[bool]) {
        let changed: Vec<(usize, u64)> = (0..tags.len())
            .filter(|&k| landed[k])
            .map(|k| (sector + k, tags[k]))
            .collect();
        if changed.is_empty() {
            return;
        }
        for &(s, tag) in &changed {
            self.p_disk.write(s, 1, false, |_| tag);
        }
        self.history.change(changed);
    }

    fn dr_done(&mut self, id: u64) -> Result<(), DrViolation> {
        let Some(op) = self.d_ops.remove(&id) else {
            return Ok(()); // lost with a crash
        };
        match op {
            DOp::Write {
                ticket,
                sector,
                tags,
            } => {
                if self.media_error() {
                    self.counters.media_errors += 1;
                    for (k, &tag) in tags.iter().enumerate() {
                        if self.rng.coin() {
                            self.d_disk.write(sector + k, 1, false, |_| tag);
                        }
                    }
                    match self.dr.local_write_done(ticket, false) {
                        Err(DrError::LocalWriteFailed { .. }) => self.cut(100_000),
                        other => {
                            return Err(
                                self.v("protocol", format!("a failed DR write answered {other:?}"))
                            )
                        }
                    }
                } else {
                    self.d_disk.write(sector, tags.len(), false, |i| tags[i]);
                    if let Err(e) = self.dr.local_write_done(ticket, true) {
                        return Err(self.v("protocol", format!("DR: {e}")));
                    }
                }
            }
            DOp::Read { ticket } => {
                let read = self.dr_reads.remove(&ticket).expect("an issued read");
                let tags: Vec<u64> = (read.sector..read.sector + read.len)
                    .map(|s| self.d_disk.live(s))
                    .collect();
                self.dr.read_done(ticket);
                self.check_read(&read, &tags)?;
                if self.whole_read == Some(ticket) {
                    self.whole_read = None;
                    self.counters.whole_reads += 1;
                }
            }
            DOp::Commit(t) => {
                self.d_disk.flush();
                let state = self.dr.commit_state(t);
                assert!(
                    state.generation >= self.d_meta.1,
                    "the generation goes back"
                );
                self.d_meta = (state.present.clone(), state.generation, state.binding);
                self.dr.commit_done(t, true);
                self.check_durable_sent(0..self.geometry.region_count())?;
            }
        }
        Ok(())
    }

    // ---- the oracle ----------------------------------------------------------------

    fn check_read(&mut self, read: &DrRead, tags: &[u64]) -> Result<(), DrViolation> {
        self.counters.reads_checked += 1;
        match self.history.points(read.sector, tags, read.floor) {
            Err(at) => {
                let tag = tags[at - read.sector];
                Err(self.v(
                    "read-point",
                    format!(
                        "DR read of sectors {}..{}: sector {at} holds {tag}, not as of one \
                         primary point at or after {} (now {})",
                        read.sector,
                        read.sector + read.len,
                        read.floor,
                        self.history.point()
                    ),
                ))
            }
            Ok(point) if point < read.session_floor => {
                match self.history.points(read.sector, tags, read.session_floor) {
                    Ok(p) => {
                        self.last_point = self.last_point.max(p);
                        Ok(())
                    }
                    Err(at) => Err(self.v(
                        "stale",
                        format!(
                            "DR read of sectors {}..{} returns sector {at} as of point {point}, \
                             before point {} where a session that the DR had resumed began",
                            read.sector,
                            read.sector + read.len,
                            read.session_floor
                        ),
                    )),
                }
            }
            Ok(point) => {
                self.last_point = self.last_point.max(point);
                Ok(())
            }
        }
    }

    /// Every region of `regions` in the primary's durable sent map is durably present
    /// at the DR with the primary's current bytes on the DR's medium.
    fn check_durable_sent(&self, regions: std::ops::Range<u64>) -> Result<(), DrViolation> {
        let per = self.per_region();
        for r in regions.filter(|&r| self.p_meta.get(r)) {
            let s = r as usize * per;
            let differs = (s..s + per).find(|&s| self.d_disk.media(s) != self.p_disk.live(s));
            if !self.d_meta.0.get(r) || differs.is_some() {
                let at = differs.unwrap_or(s);
                return Err(self.v(
                    "durable-sent",
                    format!(
                        "region {r} is durably sent but the DR durably holds {} at sector {at} \
                         (present {}), the primary {}",
                        self.d_disk.media(at),
                        self.d_meta.0.get(r),
                        self.p_disk.live(at)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_quiet(&mut self) -> Result<(), DrViolation> {
        let drained = self.p_ops.is_empty()
            && self.d_ops.is_empty()
            && self.app_writes.is_empty()
            && self.link.is_up()
            && self.link.is_empty()
            && self.primary.is_synced()
            && self.p_meta.is_full();
        if !drained || !self.dr_reads.is_empty() {
            return Ok(());
        }
        if self.counters.whole_reads == 0 && self.whole_read.is_none() {
            let len = self.geometry.volume_size_bytes();
            let ticket = self.dr.read(0, len).expect("the whole volume");
            let read = DrRead {
                sector: 0,
                len: self.sectors(),
                floor: self.last_point,
                session_floor: self.session_floor,
            };
            self.dr_reads.insert(ticket, read);
            self.whole_read = Some(ticket);
            return Ok(());
        }
        self.check_durable_sent(0..self.geometry.region_count())?;
        if let Some(s) = (0..self.sectors()).find(|&s| self.d_disk.live(s) != self.p_disk.live(s)) {
            return Err(self.v(
                "quiet-equal",
                format!(
                    "sector {s}: DR {} primary {}",
                    self.d_disk.live(s),
                    self.p_disk.live(s)
                ),
            ));
        }
        self.done = true;
        Ok(())
    }

    // ---- the link and the faults -----------------------------------------------------

    fn reconnect(&mut self) -> Result<(), DrViolation> {
        let session = self.link.connect(self.now_ns);
        if let Err(e) = self.dr.attach(session, self.binding) {
            return Err(self.v("protocol", format!("attach: {e}")));
        }
        self.primary.start_session(session);
        self.session_point = self.history.point();
        self.ready = None;
        self.counters.sessions += 1;
        Ok(())
    }

    /// The connection breaks; a new one comes `back_ns` later.
    fn cut(&mut self, back_ns: u64) {
        if self.link.is_up() {
            self.link.cut();
            self.primary.end_session();
            self.dr.detach();
            self.ready = None;
            self.counters.cuts += 1;
        }
        if !self.reconnect_scheduled {
            self.reconnect_scheduled = true;
            let t = self.rng.latency(back_ns.max(1_000), 4);
            self.schedule(t, Ev::Reconnect);
        }
    }

    fn fault(&mut self) -> Result<(), DrViolation> {
        if self.quiet() {
            return Ok(());
        }
        let gap = self.rng.latency(self.tun.fault_gap_ns, 4);
        self.schedule(gap, Ev::Fault);
        let f = self.faults;
        match self.rng.below(8) {
            0 if f.has(Fault::PowerLoss) => self.crash_primary(true),
            1 if f.has(Fault::PowerLoss) => self.crash_dr(true),
            2 if f.has(Fault::ServiceKill) => {
                if self.rng.coin() {
                    self.crash_primary(false)
                } else {
                    self.crash_dr(false)
                }
            }
            3 | 4 if f.has(Fault::LinkDisconnect) => self.cut(500_000),
            5 if f.has(Fault::Outage) => self.cut(50_000_000),
            6 | 7 if f.has(Fault::LinkDrop) && self.link.is_up() => {
                let n = self.link.in_flight_to_dr();
                if n > 0 {
                    let at = self.rng.pick(n);
                    self.link.lose_to_dr(at);
                    self.counters.frames_lost += 1;
                    let session = self.link.session();
                    self.lost_in = Some(session);
                    self.schedule(LOSS_TIMEOUT_NS, Ev::LossTimeout(session));
                } else {
                    // A frame to the primary lost: the connection resets.
                    self.counters.frames_lost += 1;
                    self.cut(200_000);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The primary site goes down: with `power` its device loses what it cached, else
    /// only the process dies (writes it had sent down may or may not land).
    fn crash_primary(&mut self, power: bool) {
        self.cut(300_000);
        let before: Vec<u64> = (0..self.sectors()).map(|s| self.p_disk.live(s)).collect();
        let ops = std::mem::take(&mut self.p_ops);
        let mut landed = Vec::new();
        for op in ops.into_values() {
            if let POp::Write { sector, tags, .. } = op {
                if !power && self.rng.coin() {
                    landed.push((sector, tags));
                }
            }
        }
        for (sector, tags) in landed {
            self.land_primary(sector, &tags, &vec![true; tags.len()]);
        }
        if power {
            let torn = self.faults.has(Fault::Torn);
            self.p_disk.crash(&mut self.rng, torn);
            let changed: Vec<(usize, u64)> = (0..self.sectors())
                .filter(|&s| self.p_disk.live(s) != before[s])
                .map(|s| (s, self.p_disk.live(s)))
                .collect();
            if !changed.is_empty() {
                self.history.change(changed);
            }
            self.counters.primary_crashes += 1;
        } else {
            self.counters.kills += 1;
        }
        self.app_writes.clear();
        self.primary = self.new_primary(self.p_meta.clone());
    }

    /// The DR site goes down: with `power` its device loses what it cached, else only
    /// the process dies. Client reads in flight fail.
    fn crash_dr(&mut self, power: bool) {
        self.cut(300_000);
        let ops = std::mem::take(&mut self.d_ops);
        for op in ops.into_values() {
            if let DOp::Write { sector, tags, .. } = op {
                if !power && self.rng.coin() {
                    self.d_disk.write(sector, tags.len(), false, |i| tags[i]);
                }
            }
        }
        if power {
            let torn = self.faults.has(Fault::Torn);
            self.d_disk.crash(&mut self.rng, torn);
            self.counters.dr_crashes += 1;
        } else {
            self.counters.kills += 1;
        }
        self.dr_reads.clear();
        self.whole_read = None;
        self.counters.fetches += self.dr.counters().fetches;
        let (present, generation, binding) = self.d_meta.clone();
        self.dr = Secondary::new(self.tun.dr, binding, present, generation);
    }

    /// Simulated time now.
    pub(crate) fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// Fetches asked over the run, and where simulated time stopped.
    pub(crate) fn finish_counters(&mut self) {
        self.counters.fetches += self.dr.counters().fetches;
        self.counters.sim_ns = self.now_ns;
    }
}
