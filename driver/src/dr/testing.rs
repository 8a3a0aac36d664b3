//! The two-site model: a primary and a DR site, each a sans-IO core over a model volume
//! with a volatile write cache, joined by an ordered link that can lose messages and be
//! cut, with crashes of either side, all chosen by one seeded generator. It checks the
//! rules of technique T5 after every step:
//!
//! * `read-point` — every DR read returns each sector as of one primary sequence point
//!   (the primary's volume after its n-th completed write or crash), never older than
//!   the point of the read served before it, across crashes of either side;
//! * `durable-sent` — a region in the primary's durable sent map (as on its disk) is
//!   durably present at the DR with the primary's current bytes;
//! * `quiet-equal` — once faults stop and everything drained, the DR equals the primary
//!   byte for byte and a whole-volume DR read returns the primary's current data;
//! * `progress` — the sync ends once quiet; `protocol` — no unexpected typed error;
//!   `garbled` — no sector made of two writes.
//!
//! Sectors carry tags (a u64 repeated over the sector) so a read maps back to writes.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::bits::Bits;
use super::primary::{self, Primary, PrimaryAction, PrimaryConfig, Written};
use super::secondary::{self, Secondary, SecondaryAction, SecondaryConfig};
use super::wire::Message;
use super::{Binding, DrError, LocalData};
use crate::geometry::Geometry;

const SECTOR: u64 = 512;

#[cfg(test)]
std::thread_local! {
    /// Prints every event of a run (for replaying one seed by hand).
    pub static TRACE: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

macro_rules! tr {
    ($($t:tt)*) => {
        #[cfg(test)]
        if TRACE.with(|t| t.get()) {
            std::eprintln!($($t)*);
        }
    };
}

/// The world's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HarnessConfig {
    /// Regions of the volume (4 KiB each).
    pub regions: u64,
    /// Random steps before the quiet phase.
    pub steps: usize,
    /// Crashes, cuts and lost messages on.
    pub faults: bool,
    /// Stream items the DR applies at once (small: the inbox backs up).
    pub dr_items_in_flight_max: usize,
}

impl HarnessConfig {
    /// A small world with faults.
    pub fn small(steps: usize) -> HarnessConfig {
        HarnessConfig {
            regions: 16,
            steps,
            faults: true,
            dr_items_in_flight_max: 2,
        }
    }
}

/// A rule broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which rule.
    pub rule: &'static str,
    /// At which step (`usize::MAX`: the quiet phase).
    pub step: usize,
    /// What was seen.
    pub detail: String,
}

/// What a passing run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// DR reads checked.
    pub reads_checked: u64,
    /// Primary writes completed.
    pub writes: u64,
    /// Primary crashes.
    pub primary_crashes: u64,
    /// DR crashes.
    pub dr_crashes: u64,
    /// Link cuts (crashes included).
    pub cuts: u64,
    /// Sessions ended for any reason (cuts, crashes, lost messages, overflow).
    pub sessions_ended: u64,
    /// Messages lost.
    pub drops: u64,
    /// Fetches the DR asked.
    pub fetches: u64,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// Bytes of sectors carrying `tags`.
pub fn sector_bytes(tags: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(tags.len() * SECTOR as usize);
    for t in tags {
        for _ in 0..SECTOR / 8 {
            out.extend_from_slice(&t.to_le_bytes());
        }
    }
    out
}

/// The tags of sector bytes; `None` when a sector mixes two.
pub fn sector_tags(bytes: &[u8]) -> Option<Vec<u64>> {
    bytes
        .chunks(SECTOR as usize)
        .map(|s| {
            let t = u64::from_le_bytes(s[..8].try_into().expect("8 bytes"));
            s.chunks(8).all(|c| c == t.to_le_bytes()).then_some(t)
        })
        .collect()
}

enum PDev {
    Write(primary::WriteTicket),
    Read(primary::ReadTicket, u64),
    Commit(primary::CommitTicket),
}

enum DDev {
    Write(secondary::WriteTicket, usize, Vec<u64>),
    Read(secondary::ReadTicket, usize, usize),
    Commit(secondary::CommitTicket),
}

struct PWrite {
    ticket: primary::WriteTicket,
    sector: usize,
    tags: Vec<u64>,
    zero: bool,
}

struct Site {
    live: Vec<u64>,
    durable: Vec<u64>,
    unflushed: Vec<(usize, Vec<u64>)>,
}

impl Site {
    fn write(&mut self, sector: usize, tags: &[u64]) {
        self.live[sector..sector + tags.len()].copy_from_slice(tags);
        self.unflushed.push((sector, tags.to_vec()));
    }
    fn flush(&mut self) {
        self.durable.clone_from(&self.live);
        self.unflushed.clear();
    }
    /// Power loss: the durable image plus any subset of unflushed writes, in order.
    fn crash(&mut self, rng: &mut Rng) {
        let mut image = self.durable.clone();
        for (sector, tags) in self.unflushed.drain(..) {
            if rng.chance(2) {
                image[sector..sector + tags.len()].copy_from_slice(&tags);
            }
        }
        self.live.clone_from(&image);
        self.durable = image;
    }
}

struct World {
    cfg: HarnessConfig,
    rng: Rng,
    geometry: Geometry,
    binding: Binding,
    primary: Primary,
    p: Site,
    p_meta: Bits,
    p_writes: Vec<PWrite>,
    p_dev: Vec<PDev>,
    dr: Secondary,
    d: Site,
    d_meta: (Bits, u64, Option<Binding>),
    d_dev: Vec<DDev>,
    /// Client reads waiting: ticket, first sector, sectors, and the point of the newest
    /// read completed before it was issued (it may not return anything older).
    d_reads: Vec<(secondary::ReadTicket, usize, usize, u64)>,
    link_up: bool,
    lost_in_session: bool,
    to_dr: VecDeque<(u8, Vec<u8>)>,
    to_p: VecDeque<(u8, Vec<u8>)>,
    session: u64,
    version: u64,
    hist: Vec<Vec<(u64, u64)>>,
    last_point: u64,
    next_tag: u64,
    step: usize,
    report: Report,
}

fn primary_config(g: Geometry) -> PrimaryConfig {
    PrimaryConfig {
        geometry: g,
        queue_max_bytes: 48 << 10,
        sync_reads_max: 2,
        ops_max: 64,
    }
}

fn dr_config(g: Geometry, cfg: &HarnessConfig) -> SecondaryConfig {
    SecondaryConfig {
        geometry: g,
        inbox_max_bytes: 1 << 20,
        items_in_flight_max: cfg.dr_items_in_flight_max,
        ops_max: 64,
    }
}

/// Runs the world from `seed`.
pub fn run(seed: u64, cfg: HarnessConfig) -> Result<Report, Violation> {
    let mut w = World::new(seed, cfg);
    for step in 0..cfg.steps {
        w.step = step;
        w.random_step()?;
        w.pump()?;
        w.check_durable_sent()?;
    }
    w.step = usize::MAX;
    w.quiet()?;
    Ok(w.report)
}

impl World {
    fn new(seed: u64, cfg: HarnessConfig) -> World {
        let g = Geometry::new(cfg.regions * 4096, 4096).expect("geometry");
        let sectors = (g.volume_size_bytes() / SECTOR) as usize;
        let initial: Vec<u64> = (0..sectors as u64).map(|s| 1_000_000 + s).collect();
        let dr_garbage: Vec<u64> = (0..sectors as u64).map(|s| 9_000_000 + s).collect();
        let regions = g.region_count();
        let binding = Binding {
            primary_id: [1; 16],
            volume_id: [2; 16],
            volume_size_bytes: g.volume_size_bytes(),
            region_size_bytes: 4096,
        };
        let mut w = World {
            cfg,
            rng: Rng(seed),
            geometry: g,
            binding,
            primary: Primary::new(primary_config(g), Bits::new(regions)),
            p: Site {
                live: initial.clone(),
                durable: initial.clone(),
                unflushed: Vec::new(),
            },
            p_meta: Bits::new(regions),
            p_writes: Vec::new(),
            p_dev: Vec::new(),
            dr: Secondary::new(dr_config(g, &cfg), None, Bits::new(regions), 0),
            d: Site {
                live: dr_garbage.clone(),
                durable: dr_garbage,
                unflushed: Vec::new(),
            },
            d_meta: (Bits::new(regions), 0, None),
            d_dev: Vec::new(),
            d_reads: Vec::new(),
            link_up: false,
            lost_in_session: false,
            to_dr: VecDeque::new(),
            to_p: VecDeque::new(),
            session: 0,
            version: 0,
            hist: initial.iter().map(|&t| vec![(0, t)]).collect(),
            last_point: 0,
            next_tag: 1,
            step: 0,
            report: Report::default(),
        };
        w.reconnect().expect("first session");
        w
    }

    fn violation(&self, rule: &'static str, detail: String) -> Violation {
        Violation {
            rule,
            step: self.step,
            detail,
        }
    }

    fn sectors(&self) -> usize {
        self.p.live.len()
    }

    fn random_step(&mut self) -> Result<(), Violation> {
        let faults = self.cfg.faults;
        match self.rng.below(100) {
            0..=17 => self.app_write(),
            18..=21 => {
                self.p.flush();
                self.primary.flush_completed(true);
            }
            22..=33 => self.dr_read(),
            34..=49 => self.complete_p(),
            50..=67 => self.complete_d()?,
            68..=76 => {
                let n = 1 + self.rng.below(8) as usize;
                self.deliver_to_dr(n)?
            }
            77..=83 => {
                let n = 1 + self.rng.below(3) as usize;
                self.deliver_to_p(n)?
            }
            84..=86 => self.primary.request_commit(),
            87..=89 => self.dr.tick(),
            90 if faults && self.link_up && self.rng.chance(5) => {
                self.report.cuts += 1;
                self.cut()
            }
            91..=93 if !self.link_up => self.reconnect()?,
            94 if faults && self.link_up && !self.to_dr.is_empty() && self.rng.chance(5) => {
                let at = self.rng.below(self.to_dr.len() as u64) as usize;
                self.to_dr.remove(at);
                self.lost_in_session = true;
                self.report.drops += 1;
            }
            95 if faults && self.rng.chance(10) => self.crash_primary(),
            96 if faults && self.rng.chance(10) => self.crash_dr(),
            _ => {}
        }
        Ok(())
    }

    fn app_write(&mut self) {
        if !self.primary.has_room() || self.p_writes.len() >= 8 {
            return;
        }
        let sectors = self.sectors() as u64;
        let len = 1 + self.rng.below(12).min(sectors - 1);
        let sector = self.rng.below(sectors - len + 1) as usize;
        let zero = self.rng.chance(10);
        let tags: Vec<u64> = (0..len)
            .map(|_| {
                if zero {
                    0
                } else {
                    self.next_tag += 1;
                    self.next_tag
                }
            })
            .collect();
        let ticket = self
            .primary
            .begin_write(sector as u64 * SECTOR, len * SECTOR)
            .expect("a write inside the volume");
        self.p_writes.push(PWrite {
            ticket,
            sector,
            tags,
            zero,
        });
    }

    fn dr_read(&mut self) {
        if self.d_reads.len() >= 6 {
            return;
        }
        let sectors = self.sectors() as u64;
        let len = 1 + self.rng.below(24).min(sectors - 1);
        let sector = self.rng.below(sectors - len + 1);
        let t = self
            .dr
            .read(sector * SECTOR, len * SECTOR)
            .expect("a read inside the volume");
        tr!("   D client read {t:?} {sector}..{}", sector + len);
        self.d_reads
            .push((t, sector as usize, len as usize, self.last_point));
    }

    fn complete_p(&mut self) {
        if self.p_dev.is_empty() {
            return;
        }
        let at = self.rng.below(self.p_dev.len() as u64) as usize;
        match self.p_dev.swap_remove(at) {
            PDev::Write(t) => {
                let i = self
                    .p_writes
                    .iter()
                    .position(|w| w.ticket == t)
                    .expect("write");
                let w = self.p_writes.swap_remove(i);
                self.p.write(w.sector, &w.tags);
                self.version += 1;
                for (k, &tag) in w.tags.iter().enumerate() {
                    self.hist[w.sector + k].push((self.version, tag));
                }
                self.report.writes += 1;
                tr!(
                    "v{} P write sectors {}.. {:?}",
                    self.version,
                    w.sector,
                    w.tags
                );
                let bytes = sector_bytes(&w.tags);
                let data = if w.zero {
                    Written::Zeroes
                } else {
                    Written::Bytes(&bytes)
                };
                self.primary.write_completed(t, data, true);
            }
            PDev::Read(t, region) => {
                let per = 4096 / SECTOR as usize;
                let s = region as usize * per;
                let bytes = sector_bytes(&self.p.live[s..s + per]);
                tr!(
                    "v{} P region read {region} {:?}",
                    self.version,
                    &self.p.live[s..s + per]
                );
                self.primary.region_read(t, Some(&bytes));
            }
            PDev::Commit(t) => {
                if self.primary.commit_needs_data_flush(t) {
                    self.p.flush();
                }
                self.p_meta = self.primary.commit_map(t).clone();
                self.primary.commit_done(t, true);
            }
        }
    }

    fn complete_d(&mut self) -> Result<(), Violation> {
        if self.d_dev.is_empty() {
            return Ok(());
        }
        let at = self.rng.below(self.d_dev.len() as u64) as usize;
        match self.d_dev.swap_remove(at) {
            DDev::Write(t, sector, tags) => {
                self.d.write(sector, &tags);
                tr!("   D local write sectors {sector}.. {tags:?}");
                if let Err(e) = self.dr.local_write_done(t, true) {
                    return Err(self.violation("protocol", format!("{e}")));
                }
            }
            DDev::Read(t, sector, len) => {
                let tags = self.d.live[sector..sector + len].to_vec();
                self.dr.read_done(t);
                let i = self.d_reads.iter().position(|r| r.0 == t).expect("a read");
                let floor = self.d_reads.swap_remove(i).3;
                tr!("   D read {t:?} {sector}..{} {tags:?}", sector + len);
                self.check_read(sector, &tags, floor)?;
            }
            DDev::Commit(t) => {
                self.d.flush();
                let state = self.dr.commit_state(t);
                self.d_meta = (state.present.clone(), state.generation, state.binding);
                self.dr.commit_done(t, true);
            }
        }
        Ok(())
    }

    fn check_read(&mut self, sector: usize, tags: &[u64], floor: u64) -> Result<(), Violation> {
        self.report.reads_checked += 1;
        // Points where every sector holds what was read: an intersection of intervals.
        let mut ok: Vec<(u64, u64)> = vec![(floor, self.version + 1)];
        for (k, &tag) in tags.iter().enumerate() {
            let h = &self.hist[sector + k];
            let mut here = Vec::new();
            for (i, &(v, t)) in h.iter().enumerate() {
                if t == tag {
                    let end = h.get(i + 1).map_or(self.version + 1, |n| n.0);
                    here.push((v, end));
                }
            }
            let mut next = Vec::new();
            for &(a, b) in &ok {
                for &(c, d) in &here {
                    let (s, e) = (a.max(c), b.min(d));
                    if s < e {
                        next.push((s, e));
                    }
                }
            }
            ok = next;
            if ok.is_empty() {
                return Err(self.violation(
                    "read-point",
                    format!(
                        "DR read of sectors {sector}..{} at sector {}: tag {tag} is not as of one \
                         point at or after {} (now {})",
                        sector + tags.len(),
                        sector + k,
                        floor,
                        self.version
                    ),
                ));
            }
        }
        let point = ok.iter().map(|p| p.0).min().expect("non-empty");
        self.last_point = self.last_point.max(point);
        Ok(())
    }

    fn check_durable_sent(&self) -> Result<(), Violation> {
        let per = 4096 / SECTOR as usize;
        for r in 0..self.geometry.region_count() {
            if !self.p_meta.get(r) {
                continue;
            }
            let s = r as usize * per;
            if !self.d_meta.0.get(r) || self.d.durable[s..s + per] != self.p.live[s..s + per] {
                return Err(self.violation(
                    "durable-sent",
                    format!(
                        "region {r} is durably sent but the DR durably holds {:?} (present {}), \
                         the primary {:?}",
                        &self.d.durable[s..s + per],
                        self.d_meta.0.get(r),
                        &self.p.live[s..s + per]
                    ),
                ));
            }
        }
        Ok(())
    }

    fn deliver_to_dr(&mut self, n: usize) -> Result<(), Violation> {
        for _ in 0..n {
            let Some((kind, payload)) = self.to_dr.pop_front() else {
                return Ok(());
            };
            let m = Message::decode(kind, &payload).expect("encoded by the primary");
            match self.dr.received(m) {
                Ok(()) => {}
                Err(DrError::OutOfOrder { .. }) if self.lost_in_session => {
                    self.cut();
                    return Ok(());
                }
                Err(e) => return Err(self.violation("protocol", format!("DR: {e}"))),
            }
        }
        Ok(())
    }

    fn deliver_to_p(&mut self, n: usize) -> Result<(), Violation> {
        for _ in 0..n {
            let Some((kind, payload)) = self.to_p.pop_front() else {
                return Ok(());
            };
            let m = Message::decode(kind, &payload).expect("encoded by the DR");
            if let Err(e) = self.primary.received(m) {
                return Err(self.violation("protocol", format!("primary: {e}")));
            }
        }
        Ok(())
    }

    fn cut(&mut self) {
        tr!("-- cut");
        self.report.sessions_ended += 1;
        self.link_up = false;
        self.to_dr.clear();
        self.to_p.clear();
        self.primary.end_session();
        self.dr.detach();
    }

    fn reconnect(&mut self) -> Result<(), Violation> {
        tr!("-- session {}", self.session + 1);
        self.session += 1;
        if let Err(e) = self.dr.attach(self.session, self.binding) {
            return Err(self.violation("protocol", format!("attach: {e}")));
        }
        self.primary.start_session(self.session);
        self.link_up = true;
        self.lost_in_session = false;
        Ok(())
    }

    fn crash_primary(&mut self) {
        if self.link_up {
            self.cut();
        }
        self.p.crash(&mut self.rng);
        self.version += 1;
        for (s, &tag) in self.p.live.iter().enumerate() {
            self.hist[s].push((self.version, tag));
        }
        self.p_dev.clear();
        self.p_writes.clear();
        self.primary = Primary::new(primary_config(self.geometry), self.p_meta.clone());
        self.report.primary_crashes += 1;
    }

    fn crash_dr(&mut self) {
        if self.link_up {
            self.cut();
        }
        self.d.crash(&mut self.rng);
        self.d_dev.clear();
        self.d_reads.clear();
        self.report.fetches += self.dr.counters().fetches;
        let (present, generation, binding) = self.d_meta.clone();
        self.dr = Secondary::new(
            dr_config(self.geometry, &self.cfg),
            binding,
            present,
            generation,
        );
        self.report.dr_crashes += 1;
    }

    fn pump(&mut self) -> Result<(), Violation> {
        for _ in 0..10_000 {
            let mut progress = false;
            while let Some(a) = self.primary.poll_action() {
                progress = true;
                self.p_dev.push(match a {
                    PrimaryAction::DispatchWrite(t) => PDev::Write(t),
                    PrimaryAction::ReadRegion { ticket, region, .. } => PDev::Read(ticket, region),
                    PrimaryAction::Commit(t) => PDev::Commit(t),
                });
            }
            if self.link_up {
                match self.primary.poll_send() {
                    Ok(Some(m)) => {
                        progress = true;
                        let mut p = Vec::new();
                        m.encode_payload(&mut p);
                        tr!("v{} P send {}", self.version, describe(&m));
                        self.to_dr.push_back((m.kind(), p));
                    }
                    Ok(None) => {}
                    Err(DrError::StreamOverflow(_)) => {
                        progress = true;
                        self.cut();
                    }
                    Err(e) => return Err(self.violation("protocol", format!("primary: {e}"))),
                }
            }
            while let Some(a) = self.dr.poll_action() {
                progress = true;
                match a {
                    SecondaryAction::WriteLocal {
                        ticket,
                        offset,
                        data,
                    } => {
                        let sector = (offset / SECTOR) as usize;
                        let tags = match data {
                            LocalData::Bytes(b) => match sector_tags(&b) {
                                Some(t) => t,
                                None => {
                                    return Err(self.violation("garbled", format!("at {offset}")))
                                }
                            },
                            LocalData::Zeroes(n) => vec![0; (n / SECTOR) as usize],
                        };
                        self.d_dev.push(DDev::Write(ticket, sector, tags));
                    }
                    SecondaryAction::ReadLocal {
                        ticket,
                        offset,
                        len,
                    } => self.d_dev.push(DDev::Read(
                        ticket,
                        (offset / SECTOR) as usize,
                        (len / SECTOR) as usize,
                    )),
                    SecondaryAction::ReadServed { ticket, data } => {
                        // Answered now, from the region data about to be written.
                        let Some(tags) = sector_tags(&data) else {
                            return Err(self.violation("garbled", format!("read {ticket:?}")));
                        };
                        let i = self.d_reads.iter().position(|r| r.0 == ticket);
                        let (_, sector, len, floor) = self.d_reads.swap_remove(i.expect("a read"));
                        assert_eq!(tags.len(), len, "a served read of its length");
                        tr!(
                            "   D read {ticket:?} {sector}..{} served {tags:?}",
                            sector + len
                        );
                        self.check_read(sector, &tags, floor)?;
                    }
                    SecondaryAction::Commit(t) => self.d_dev.push(DDev::Commit(t)),
                }
            }
            if let Some(m) = self.dr.poll_send() {
                progress = true;
                if self.link_up {
                    let mut p = Vec::new();
                    m.encode_payload(&mut p);
                    self.to_p.push_back((m.kind(), p));
                }
            }
            if !progress {
                return Ok(());
            }
        }
        Err(self.violation("progress", "pump does not settle".into()))
    }

    fn quiet(&mut self) -> Result<(), Violation> {
        self.cfg.faults = false;
        if !self.link_up {
            self.reconnect()?;
        }
        let mut whole = None;
        for round in 0..20_000 {
            if !self.link_up {
                self.reconnect()?; // a write streamed late can still overflow the queue
            }
            self.pump()?;
            while !self.p_dev.is_empty() {
                self.complete_p();
                self.pump()?;
            }
            while !self.d_dev.is_empty() {
                self.complete_d()?;
                self.pump()?;
            }
            self.deliver_to_dr(usize::MAX)?;
            self.deliver_to_p(usize::MAX)?;
            self.primary.request_commit();
            self.dr.tick();
            let drained = self.p_dev.is_empty()
                && self.d_dev.is_empty()
                && self.to_dr.is_empty()
                && self.to_p.is_empty();
            if drained && self.link_up && self.lost_in_session {
                // The last frames of the session were lost and none followed to show
                // it: the link's idle timeout ends the session, as a real link's does.
                self.cut();
                continue;
            }
            if drained && self.primary.is_synced() && self.p_meta.is_full() {
                if whole.is_none() {
                    // A whole-volume read once everything is there.
                    let len = self.geometry.volume_size_bytes();
                    let t = self.dr.read(0, len).expect("whole volume");
                    self.d_reads.push((t, 0, self.sectors(), self.last_point));
                    whole = Some(t);
                    continue;
                }
                if self.d_reads.is_empty() {
                    self.check_durable_sent()?;
                    if self.d.live != self.p.live {
                        let s = (0..self.sectors())
                            .find(|&s| self.d.live[s] != self.p.live[s])
                            .expect("a difference");
                        return Err(self.violation(
                            "quiet-equal",
                            format!(
                                "sector {s}: DR {} primary {} (round {round})",
                                self.d.live[s], self.p.live[s]
                            ),
                        ));
                    }
                    self.report.fetches += self.dr.counters().fetches;
                    return Ok(());
                }
            }
        }
        Err(self.violation(
            "progress",
            format!(
                "not quiet: synced {}/{} regions, DR reads waiting {}",
                self.primary.committed().count(),
                self.geometry.region_count(),
                self.d_reads.len()
            ),
        ))
    }
}

#[cfg(test)]
fn describe(m: &Message) -> String {
    use super::wire::ItemBody;
    match m {
        Message::Item(i) => match &i.body {
            ItemBody::RegionData { region, data } => {
                format!("#{} region {region} {:?}", i.seq, sector_tags(data))
            }
            ItemBody::Write { offset, data } => {
                format!(
                    "#{} write {} {:?}",
                    i.seq,
                    offset / SECTOR,
                    sector_tags(data)
                )
            }
            other => format!("#{} {other:?}", i.seq),
        },
        other => format!("{other:?}"),
    }
}
