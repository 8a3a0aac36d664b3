//! The primary's sender mode: the sent map S, the ordered stream, the durable sent map.
//!
//! # How a shell drives it
//! ```text
//! client write     begin_write(offset, len) → ticket; send it down on DispatchWrite(ticket)
//! its completion   write_completed(ticket, data, ok)
//! client flush     flush_completed(ok) after it completed locally (the DR is not waited for)
//! actions          poll_action(): DispatchWrite | ReadRegion (→ region_read) | Commit (→ commit_done)
//! the DR link      start_session(id); poll_send() → message to send; received(message); end_session()
//! timer            request_commit(): make the durable sent map catch up with acknowledgements
//! ```
//!
//! # Bounds
//! Queued stream bytes plus region reads in flight ≤ `queue_max_bytes` for the sync; a
//! replicated write that does not fit ends the session ([`DrError::StreamOverflow`])
//! instead of waiting. Operations in the gate ≤ `ops_max`; region reads in flight ≤
//! `sync_reads_max`; fetch requests queued ≤ one per region.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::ops::Range;

use super::bits::Bits;
use super::gate::{Access, Gate};
use super::wire::{Item, ItemBody, Message, DATA_MAX_BYTES};
use super::DrError;
use crate::geometry::Geometry;
use crate::mutants::{self, Mutant};

/// Tunables of the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrimaryConfig {
    /// The volume.
    pub geometry: Geometry,
    /// Stream bytes queued (and reserved by region reads in flight) before the sync pauses.
    pub queue_max_bytes: u64,
    /// Region reads for sending in flight at once.
    pub sync_reads_max: usize,
    /// Writes and region reads the gate holds at once.
    pub ops_max: usize,
}

impl PrimaryConfig {
    /// Defaults for everything but the volume.
    pub fn new(geometry: Geometry) -> PrimaryConfig {
        PrimaryConfig {
            geometry,
            queue_max_bytes: 64 << 20,
            sync_reads_max: 8,
            ops_max: 4096,
        }
    }
}

/// The activity set: extents of regions the application writes now, whose durable sent
/// marks are kept clear so a write to them never waits for a commit.
///
/// # Why this is safe, and why it is needed
/// A durable sent mark says the DR durably holds the region's current data. A write to
/// a region whose mark may be durable must wait until a commit cleared the mark (the
/// primary's volume keeps the write even when the process dies, so a restart trusting
/// the mark would never send it); that wait is one metadata write. Streaming the write
/// does not help: the DR acknowledges it only later. Clearing a mark, or not setting
/// one, is always safe: the region is only sent again after a crash. So the first write
/// to an extent clears the marks of the whole extent in one commit, and no commit sets
/// marks in it again until it went `cool_after_ticks` commit requests unwritten; at most
/// `extents_max` extents are hot (the one written longest ago cools first). Random
/// writes then wait for a commit once per extent, not once per region and commit
/// interval; the price is that a crash resends at most the hot extents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HotExtents {
    /// Regions per extent.
    pub extent_regions: u64,
    /// Extents hot at once.
    pub extents_max: usize,
    /// Commit requests (the shell's commit timer) without a write before an extent
    /// cools and its marks may be set again.
    pub cool_after_ticks: u64,
}

impl HotExtents {
    /// Extents of `extent_bytes` (at least one region of `geometry`).
    pub fn new(geometry: Geometry, extent_bytes: u64, extents_max: usize, ticks: u64) -> Self {
        let region = u64::from(geometry.region_size_bytes());
        HotExtents {
            extent_regions: (extent_bytes / region).max(1),
            extents_max: extents_max.max(1),
            cool_after_ticks: ticks,
        }
    }
}

/// A client write the sender knows about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteTicket(pub u64);

/// A region read for sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadTicket(pub u64);

/// A commit of the durable sent map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitTicket(pub u64);

/// What the shell must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrimaryAction {
    /// Send this client write down now.
    DispatchWrite(WriteTicket),
    /// Read the region for sending and hand the bytes to [`Primary::region_read`].
    ReadRegion {
        /// Its name.
        ticket: ReadTicket,
        /// The region.
        region: u64,
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
        /// A read at the DR site waits for it (a fetch), rather than the background
        /// sync: a shell reads it at once, and may read the sync's on other threads.
        fetched: bool,
    },
    /// Flush the volume when [`Primary::commit_needs_data_flush`] says so, then write
    /// [`Primary::commit_map`] as the durable sent map, then call
    /// [`Primary::commit_done`].
    Commit(CommitTicket),
}

/// What a completed write carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written<'a> {
    /// These bytes (the write's length).
    Bytes(&'a [u8]),
    /// Zeroes (write-zeroes or trim).
    Zeroes,
}

/// Counters for status lines and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrimaryCounters {
    /// Region data items queued.
    pub regions_sent: u64,
    /// Replicated write items queued.
    pub writes_streamed: u64,
    /// Client writes kept local (their regions were not sent).
    pub writes_local: u64,
    /// Writes held for a commit that cleared their durable marks.
    pub writes_held_for_commit: u64,
    /// Fetch requests taken.
    pub fetches: u64,
    /// Sessions started.
    pub sessions: u64,
}

#[derive(Debug)]
enum Stage {
    HeldForCommit,
    Admitted,
}

#[derive(Debug)]
struct WriteState {
    offset: u64,
    len: u64,
    stage: Stage,
    /// The session and byte runs to stream at completion, decided at admission.
    stream: Option<(u64, Vec<Range<u64>>)>,
}

#[derive(Debug, Default)]
struct Pending {
    queued: u32,
    last_seq: u64,
}

#[derive(Debug)]
struct Session {
    id: u64,
    /// False until no commit computed before the session is in flight: the
    /// invalidations are taken from the durable map only once it stopped moving.
    opened: bool,
    emitted_seq: u64,
    acked_seq: u64,
    out: VecDeque<(ItemBody, Range<u64>)>,
    out_bytes: u64,
    /// Regions to invalidate at the DR (not durably sent when the session began).
    invalidate: Bits,
    /// Where the invalidation scan is; `None` once `Ready` went out.
    invalidate_cursor: Option<u64>,
    fetch: VecDeque<u64>,
    fetch_queued: Bits,
    sync_cursor: u64,
    reads_in_flight: usize,
    /// Regions with items not acknowledged durable yet.
    pending: BTreeMap<u64, Pending>,
    overflowed: bool,
}

/// The sender.
#[derive(Debug)]
pub struct Primary {
    config: PrimaryConfig,
    committed: Bits,
    commit: Option<(CommitTicket, Bits)>,
    commit_wanted: bool,
    sent: Bits,
    session: Option<Session>,
    writes: BTreeMap<u64, WriteState>,
    /// Region reads in flight: their session, region, and whether a DR read asked.
    reads: BTreeMap<u64, (u64, u64, bool)>,
    /// Region reads whose region a failed write dropped from S while they waited behind
    /// it: what they read is not streamed (the sync reads the region again, marked first).
    spoiled_reads: BTreeSet<u64>,
    /// Client writes between `begin_write` and completion, per region.
    busy: BTreeMap<u64, u32>,
    gate: Gate,
    actions: VecDeque<PrimaryAction>,
    next_ticket: u64,
    counters: PrimaryCounters,
    /// Bytes the background sync may still read (`None`: no limit); fetched regions
    /// do not count.
    sync_budget_bytes: Option<u64>,
    /// The activity set's shape (`None`: every region on its own, no cooling wait).
    hot_config: Option<HotExtents>,
    /// Hot extents and the commit request count at their last write.
    hot: BTreeMap<u64, u64>,
    /// Commit requests so far (the activity set's clock).
    ticks: u64,
}

impl Primary {
    /// A sender whose durable sent map is `committed` (all clear for a new DR; what the
    /// metadata holds after a restart).
    pub fn new(config: PrimaryConfig, committed: Bits) -> Primary {
        let regions = config.geometry.region_count();
        assert_eq!(committed.len(), regions);
        assert!(config.sync_reads_max > 0 && config.ops_max > config.sync_reads_max);
        assert!(config.queue_max_bytes >= 2 * config.geometry.region_size_bytes() as u64);
        Primary {
            config,
            committed,
            commit: None,
            commit_wanted: false,
            sent: Bits::new(regions),
            session: None,
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            spoiled_reads: BTreeSet::new(),
            busy: BTreeMap::new(),
            gate: Gate::new(config.ops_max),
            actions: VecDeque::new(),
            next_ticket: 1,
            counters: PrimaryCounters::default(),
            sync_budget_bytes: None,
            hot_config: None,
            hot: BTreeMap::new(),
            ticks: 0,
        }
    }

    /// Keeps the durable marks of recently written extents clear ([`HotExtents`]).
    pub fn set_hot_extents(&mut self, hot: HotExtents) {
        assert!(hot.extent_regions > 0 && hot.extents_max > 0);
        self.hot_config = Some(hot);
    }

    /// True when `region` lies in a hot extent (no commit sets its durable mark).
    pub fn is_hot(&self, region: u64) -> bool {
        self.hot_config
            .is_some_and(|h| self.hot.contains_key(&(region / h.extent_regions)))
    }

    /// Makes the extents of `regions` hot now, cooling the coldest beyond the bound.
    fn heat(&mut self, regions: Range<u64>) {
        let Some(h) = self.hot_config else { return };
        if regions.is_empty() {
            return;
        }
        for e in regions.start / h.extent_regions..=(regions.end - 1) / h.extent_regions {
            self.hot.insert(e, self.ticks);
        }
        while self.hot.len() > h.extents_max {
            let (&coldest, _) = self
                .hot
                .iter()
                .min_by_key(|(_, &t)| t)
                .expect("over a positive bound");
            self.hot.remove(&coldest);
        }
        debug_assert!(self.hot.len() <= h.extents_max);
    }

    /// Limits the background sync: from now on it reads only bytes granted with
    /// [`Primary::grant_sync`] (`false`: no limit). Fetched regions are never limited.
    pub fn limit_sync(&mut self, limited: bool) {
        self.sync_budget_bytes = limited.then_some(0);
    }

    /// Grants the background sync `bytes` more, holding at most `max_bytes` unused.
    pub fn grant_sync(&mut self, bytes: u64, max_bytes: u64) {
        if let Some(b) = self.sync_budget_bytes.as_mut() {
            *b = b.saturating_add(bytes).min(max_bytes);
        }
    }

    /// The durable sent map as last committed.
    pub fn committed(&self) -> &Bits {
        &self.committed
    }

    /// The live sent map of this session.
    pub fn sent(&self) -> &Bits {
        &self.sent
    }

    /// Counters.
    pub fn counters(&self) -> PrimaryCounters {
        self.counters
    }

    /// True while a session runs.
    pub fn in_session(&self) -> bool {
        self.session.is_some()
    }

    /// The highest item the DR acknowledged durable in this session.
    pub fn acked_seq(&self) -> Option<u64> {
        self.session.as_ref().map(|s| s.acked_seq)
    }

    /// True when every region is durably at the DR (the initial sync ended and nothing
    /// is unacknowledged).
    pub fn is_synced(&self) -> bool {
        self.committed.is_full()
    }

    /// True when the gate can take one more client write.
    pub fn has_room(&self) -> bool {
        self.gate.held() + self.held_for_commit() + self.config.sync_reads_max < self.config.ops_max
    }

    /// The byte offset of a write the sender knows.
    pub fn write_offset(&self, ticket: WriteTicket) -> Option<u64> {
        self.writes.get(&ticket.0).map(|w| w.offset)
    }

    fn held_for_commit(&self) -> usize {
        self.writes
            .values()
            .filter(|w| matches!(w.stage, Stage::HeldForCommit))
            .count()
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    fn regions(&self, offset: u64, len: u64) -> Range<u64> {
        self.config.geometry.regions_touched(offset, len)
    }

    /// A client write arrived; it goes down when [`PrimaryAction::DispatchWrite`] names
    /// it. Call only while [`Primary::has_room`].
    pub fn begin_write(&mut self, offset: u64, len: u64) -> Result<WriteTicket, DrError> {
        self.config.geometry.check(offset, len)?;
        let id = self.ticket();
        let regions = self.regions(offset, len);
        self.heat(regions.clone());
        let mut needs_clear = false;
        for r in regions.clone() {
            *self.busy.entry(r).or_default() += 1;
            needs_clear |= self.may_be_durably_sent(r);
        }
        let stage = if needs_clear {
            // The durable mark must go before the data changes: a crash after the write
            // must find the region not durably sent.
            self.commit_wanted = true;
            self.counters.writes_held_for_commit += 1;
            Stage::HeldForCommit
        } else {
            Stage::Admitted
        };
        let admit_now = matches!(stage, Stage::Admitted);
        self.writes.insert(
            id,
            WriteState {
                offset,
                len,
                stage,
                stream: None,
            },
        );
        if admit_now {
            self.admit_write(id);
        }
        Ok(WriteTicket(id))
    }

    fn may_be_durably_sent(&self, region: u64) -> bool {
        self.committed.get(region) || self.commit.as_ref().is_some_and(|(_, m)| m.get(region))
    }

    /// Decides whether the write is streamed, and orders it in the gate.
    fn admit_write(&mut self, id: u64) {
        let w = self.writes.get(&id).expect("known write");
        let (offset, len) = (w.offset, w.len);
        let regions = self.regions(offset, len);
        debug_assert!(regions.clone().all(|r| !self.committed.get(r)));
        let stream = self.open().map(|s| {
            let g = self.config.geometry;
            let mut runs: Vec<Range<u64>> = Vec::new();
            for r in regions.clone().filter(|&r| self.sent.get(r)) {
                let bytes = g.regions_byte_range(r..r + 1);
                let piece = bytes.start.max(offset)..bytes.end.min(offset + len);
                match runs.last_mut() {
                    Some(last) if last.end == piece.start => last.end = piece.end,
                    _ => runs.push(piece),
                }
            }
            (s.id, runs)
        });
        match &stream {
            Some((_, runs)) if !runs.is_empty() => self.counters.writes_streamed += 1,
            _ => self.counters.writes_local += 1,
        }
        let w = self.writes.get_mut(&id).expect("known write");
        w.stage = Stage::Admitted;
        w.stream = stream;
        self.gate.admit(id, offset..offset + len, Access::Write);
    }

    /// The write named `ticket` completed locally (`ok` false: it failed; its bytes on
    /// the volume are unknown).
    pub fn write_completed(&mut self, ticket: WriteTicket, data: Written<'_>, ok: bool) {
        let w = self
            .writes
            .remove(&ticket.0)
            .unwrap_or_else(|| panic!("write {ticket:?} completed but is unknown"));
        assert!(
            matches!(w.stage, Stage::Admitted),
            "completed before dispatch"
        );
        if let Written::Bytes(b) = data {
            assert!(
                !ok || b.len() as u64 == w.len,
                "write data of the wrong length"
            );
        }
        self.gate.finish(ticket.0);
        let regions = self.regions(w.offset, w.len);
        for r in regions.clone() {
            let n = self.busy.get_mut(&r).expect("busy region");
            *n -= 1;
            if *n == 0 {
                self.busy.remove(&r);
            }
        }
        let Some(s) = self.open() else {
            return;
        };
        let sid = s.id;
        if !ok {
            // Whatever the volume holds now must be read again: drop the regions from S
            // and tell the DR not to trust them.
            let sent: Vec<u64> = regions.filter(|&r| self.sent.get(r)).collect();
            for r in sent {
                self.unsend(r);
                self.enqueue(ItemBody::Invalidate { first: r, count: 1 }, r..r + 1);
                // A read for sending of the region waits behind this write (the gate
                // orders it after): the region is no longer in S under it.
                for (&id, &(read_sid, region, _)) in &self.reads {
                    if read_sid == sid && region == r {
                        self.spoiled_reads.insert(id);
                    }
                }
            }
            return;
        }
        let Some((wsid, runs)) = w.stream else { return };
        if wsid != sid {
            return; // decided in an earlier session: this session sends the region again
        }
        for run in runs {
            let mut at = run.start;
            while at < run.end {
                let end = run.end.min(at + DATA_MAX_BYTES as u64);
                let body = match data {
                    Written::Bytes(b) => ItemBody::Write {
                        offset: at,
                        data: b[(at - w.offset) as usize..(end - w.offset) as usize].to_vec(),
                    },
                    Written::Zeroes => ItemBody::Zeroes {
                        offset: at,
                        len: end - at,
                    },
                };
                let rs = self.regions(at, end - at);
                self.enqueue(body, rs);
                at = end;
            }
        }
    }

    fn unsend(&mut self, region: u64) {
        self.sent.clear(region);
        if let Some(s) = self.session.as_mut() {
            s.sync_cursor = s.sync_cursor.min(region);
        }
    }

    fn enqueue(&mut self, body: ItemBody, regions: Range<u64>) {
        let s = self.session.as_mut().expect("a session");
        s.out_bytes += body.queued_bytes();
        if s.out_bytes > self.config.queue_max_bytes {
            s.overflowed = true;
        }
        for r in regions.clone() {
            s.pending.entry(r).or_default().queued += 1;
        }
        s.out.push_back((body, regions));
    }

    /// A flush completed locally; the DR is told to make what it holds durable.
    pub fn flush_completed(&mut self, ok: bool) {
        if ok && self.open().is_some() {
            self.enqueue(ItemBody::Flush, 0..0);
        }
    }

    /// The region read named `ticket` finished: `Some(bytes)`, or `None` when it failed.
    pub fn region_read(&mut self, ticket: ReadTicket, data: Option<&[u8]>) {
        self.region_read_owned(ticket, data.map(<[u8]>::to_vec));
    }

    /// [`Primary::region_read`] with the shell's buffer, which the stream item keeps
    /// (no copy of the region).
    pub fn region_read_owned(&mut self, ticket: ReadTicket, data: Option<Vec<u8>>) {
        let (sid, region, _) = self
            .reads
            .remove(&ticket.0)
            .unwrap_or_else(|| panic!("region read {ticket:?} is unknown"));
        self.gate.finish(ticket.0);
        let spoiled = self.spoiled_reads.remove(&ticket.0);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if s.id != sid {
            return;
        }
        s.reads_in_flight -= 1;
        if spoiled {
            debug_assert!(!self.sent.get(region) || mutants::any());
            return;
        }
        match data {
            Some(bytes) => {
                assert_eq!(
                    bytes.len() as u64,
                    self.config.geometry.region_len_bytes(region),
                    "region read of the wrong length"
                );
                if mutants::active(Mutant::MarkSentAfterRead) {
                    self.sent.set(region);
                }
                debug_assert!(self.sent.get(region) || mutants::any());
                self.counters.regions_sent += 1;
                self.enqueue(
                    ItemBody::RegionData {
                        region,
                        data: bytes,
                    },
                    region..region + 1,
                );
                // The last region of the sync: ask the DR to make everything durable
                // now, so the sync's end is acknowledged without waiting for the DR's
                // timer (a flush item only asks for a commit).
                if self.sent.is_full()
                    && self
                        .session
                        .as_ref()
                        .is_some_and(|s| s.reads_in_flight == 0)
                {
                    self.enqueue(ItemBody::Flush, 0..0);
                }
            }
            None => self.unsend(region),
        }
    }

    /// A new session with the DR begins (the link is up and the DR accepted us).
    pub fn start_session(&mut self, id: u64) {
        let regions = self.config.geometry.region_count();
        self.sent = Bits::new(regions);
        self.counters.sessions += 1;
        self.session = Some(Session {
            id,
            opened: false,
            emitted_seq: 0,
            acked_seq: 0,
            out: VecDeque::new(),
            out_bytes: 0,
            invalidate: Bits::new(regions),
            invalidate_cursor: Some(0),
            fetch: VecDeque::new(),
            fetch_queued: Bits::new(regions),
            sync_cursor: 0,
            reads_in_flight: 0,
            pending: BTreeMap::new(),
            overflowed: false,
        });
    }

    /// The session ended (link cut, DR gone, overflow). Everything not durably sent is
    /// sent again in the next one.
    pub fn end_session(&mut self) {
        self.session = None;
        self.sent = Bits::new(self.config.geometry.region_count());
    }

    /// The next message for the DR, in stream order. An error ends the session.
    pub fn poll_send(&mut self) -> Result<Option<Message>, DrError> {
        self.pump();
        let Some(s) = self.session.as_mut().filter(|s| s.opened) else {
            return Ok(None);
        };
        if s.overflowed {
            return Err(DrError::StreamOverflow(self.config.queue_max_bytes));
        }
        let body = if let Some(cursor) = s.invalidate_cursor {
            let run = next_set_run(&s.invalidate, cursor, 1 << 20);
            match run {
                Some(run) => {
                    s.invalidate_cursor = Some(run.end);
                    ItemBody::Invalidate {
                        first: run.start,
                        count: run.end - run.start,
                    }
                }
                None => {
                    s.invalidate_cursor = None;
                    ItemBody::Ready
                }
            }
        } else {
            let Some((body, regions)) = s.out.pop_front() else {
                return Ok(None);
            };
            s.out_bytes -= body.queued_bytes();
            let seq = s.emitted_seq + 1;
            for r in regions {
                let p = s.pending.get_mut(&r).expect("pending region");
                p.queued -= 1;
                p.last_seq = seq;
            }
            body
        };
        s.emitted_seq += 1;
        Ok(Some(Message::Item(Item {
            seq: s.emitted_seq,
            body,
        })))
    }

    /// A message from the DR.
    pub fn received(&mut self, message: Message) -> Result<(), DrError> {
        let regions = self.config.geometry.region_count();
        let s = self.session.as_mut().ok_or(DrError::NoSession)?;
        match message {
            Message::Ack { durable_seq } => {
                if durable_seq > s.emitted_seq || durable_seq < s.acked_seq {
                    return Err(DrError::BadAck {
                        acked: durable_seq,
                        sent: s.emitted_seq,
                        previous: s.acked_seq,
                    });
                }
                s.acked_seq = durable_seq;
                let acked = durable_seq;
                s.pending.retain(|_, p| p.queued > 0 || p.last_seq > acked);
                // The acknowledgement that ends the initial sync is committed at once
                // rather than at the next timer tick.
                if s.pending.is_empty() && self.sent.is_full() && !self.committed.is_full() {
                    self.commit_wanted = true;
                }
                Ok(())
            }
            Message::Fetch { region } => {
                if region >= regions {
                    return Err(DrError::BadRegion(region));
                }
                self.counters.fetches += 1;
                if !self.sent.get(region) && s.fetch_queued.set(region) {
                    s.fetch.push_back(region);
                }
                Ok(())
            }
            Message::Item(_) => Err(DrError::UnexpectedMessage),
        }
    }

    /// Asks for a commit of the durable sent map: the shell's commit timer. It is also
    /// the activity set's clock: extents unwritten for `cool_after_ticks` requests cool.
    pub fn request_commit(&mut self) {
        self.commit_wanted = true;
        self.ticks += 1;
        if let Some(h) = self.hot_config {
            let now = self.ticks;
            self.hot.retain(|_, &mut t| now - t < h.cool_after_ticks);
        }
    }

    /// True when the commit named `ticket` sets marks, so the volume must be flushed
    /// before the map is written (a commit that only clears marks needs no flush).
    pub fn commit_needs_data_flush(&self, ticket: CommitTicket) -> bool {
        let map = self.commit_map(ticket);
        (0..map.len()).any(|r| map.get(r) && !self.committed.get(r))
    }

    /// The map the commit named `ticket` writes.
    pub fn commit_map(&self, ticket: CommitTicket) -> &Bits {
        let (t, map) = self.commit.as_ref().expect("a commit in flight");
        assert_eq!(*t, ticket);
        map
    }

    /// The commit named `ticket` finished (`ok` false: the map on disk may be either).
    pub fn commit_done(&mut self, ticket: CommitTicket, ok: bool) {
        let (t, map) = self.commit.take().expect("a commit in flight");
        assert_eq!(t, ticket);
        if ok {
            self.committed = map;
        } else {
            for r in 0..map.len() {
                if map.get(r) {
                    self.committed.set(r);
                }
            }
            self.commit_wanted = true;
        }
    }

    /// The next thing the shell must do.
    pub fn poll_action(&mut self) -> Option<PrimaryAction> {
        self.pump();
        self.actions.pop_front()
    }

    fn clean(&self, region: u64) -> bool {
        let Some(s) = self.open() else {
            return false;
        };
        let bytes = self.config.geometry.regions_byte_range(region..region + 1);
        self.sent.get(region)
            && s.invalidate_cursor.is_none()
            && !s.pending.contains_key(&region)
            && !self.busy.contains_key(&region)
            && !self.gate.busy(bytes)
    }

    /// Opens the session once no commit is in flight: S starts as the durable sent map
    /// and everything else is invalidated at the DR.
    fn open_session(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if s.opened || self.commit.is_some() {
            return;
        }
        let regions = self.config.geometry.region_count();
        self.sent = self.committed.clone();
        let mut invalidate = Bits::full(regions);
        for r in 0..regions {
            if self.committed.get(r) {
                invalidate.clear(r);
            }
        }
        s.invalidate = invalidate;
        s.opened = true;
    }

    fn open(&self) -> Option<&Session> {
        self.session.as_ref().filter(|s| s.opened)
    }

    fn pump(&mut self) {
        self.open_session();
        // 1. The durable sent map: clear what writes wait for, set what is acknowledged.
        if self.commit.is_none() && self.commit_wanted {
            self.commit_wanted = false;
            let regions = self.config.geometry.region_count();
            // While writes wait for marks to go, the commit only clears: it needs no
            // flush of the volume first, so the writes wait for one metadata write.
            let held = self
                .writes
                .values()
                .any(|w| matches!(w.stage, Stage::HeldForCommit));
            let mut map = Bits::new(regions);
            for r in 0..regions {
                let hot = self.is_hot(r);
                let keep = self.committed.get(r) && !self.busy.contains_key(&r) && !hot;
                if keep || (!held && !hot && self.clean(r)) {
                    map.set(r);
                }
            }
            let t = CommitTicket(self.ticket());
            if map != self.committed {
                self.commit = Some((t, map));
                self.actions.push_back(PrimaryAction::Commit(t));
            }
        }
        // 2. Writes whose durable marks are gone.
        let ready: Vec<u64> = self
            .writes
            .iter()
            .filter(|(_, w)| matches!(w.stage, Stage::HeldForCommit))
            .filter(|(_, w)| {
                self.regions(w.offset, w.len)
                    .all(|r| !self.may_be_durably_sent(r))
            })
            .map(|(&id, _)| id)
            .collect();
        for id in ready {
            self.admit_write(id);
        }
        if self
            .writes
            .values()
            .any(|w| matches!(w.stage, Stage::HeldForCommit))
        {
            self.commit_wanted = true;
        }
        // 3. The sync: fetched regions first, then the next unsent one.
        self.start_sync_reads();
        // 4. Whatever the gate lets start.
        let (writes, actions, reads, g) = (
            &self.writes,
            &mut self.actions,
            &self.reads,
            &self.config.geometry,
        );
        self.gate.start_ready(|id| {
            if writes.contains_key(&id) {
                actions.push_back(PrimaryAction::DispatchWrite(WriteTicket(id)));
            } else {
                let (_, region, fetched) = reads[&id];
                let bytes = g.regions_byte_range(region..region + 1);
                actions.push_back(PrimaryAction::ReadRegion {
                    ticket: ReadTicket(id),
                    region,
                    offset: bytes.start,
                    len: bytes.end - bytes.start,
                    fetched,
                });
            }
        });
    }

    fn start_sync_reads(&mut self) {
        let region_bytes = self.config.geometry.region_size_bytes() as u64;
        let regions = self.config.geometry.region_count();
        for _ in 0..self.config.sync_reads_max {
            let Some(s) = self.session.as_mut().filter(|s| s.opened) else {
                return;
            };
            let reserved = s.out_bytes + (s.reads_in_flight as u64 + 1) * (region_bytes + 64);
            if s.reads_in_flight >= self.config.sync_reads_max
                || reserved > self.config.queue_max_bytes
                || !self.gate.has_room()
            {
                return;
            }
            let mut pick = None;
            let mut fetched = false;
            while let Some(r) = s.fetch.pop_front() {
                s.fetch_queued.clear(r);
                if !self.sent.get(r) {
                    pick = Some(r);
                    fetched = true;
                    break;
                }
            }
            let budget = self.sync_budget_bytes;
            let pick = pick.or_else(|| {
                let r = self.sent.next_clear(s.sync_cursor)?;
                if budget.is_some_and(|b| b < region_bytes) {
                    return None; // the background waits for its next grant
                }
                s.sync_cursor = r + 1;
                Some(r)
            });
            let Some(region) = pick else { return };
            debug_assert!(region < regions);
            if let (false, Some(b)) = (fetched, self.sync_budget_bytes.as_mut()) {
                *b -= region_bytes;
            }
            // Mark first, then read: a write admitted from now on is streamed, and the
            // gate runs this read after every write admitted before.
            if !mutants::active(Mutant::MarkSentAfterRead) {
                self.sent.set(region);
            }
            s.reads_in_flight += 1;
            let sid = s.id;
            let id = self.ticket();
            self.reads.insert(id, (sid, region, fetched));
            let bytes = self.config.geometry.regions_byte_range(region..region + 1);
            self.gate.admit(id, bytes, Access::Read);
        }
    }
}

/// The run of set regions starting at the first set one at or after `from`.
fn next_set_run(bits: &Bits, from: u64, max: u64) -> Option<Range<u64>> {
    let mut start = from;
    while start < bits.len() && !bits.get(start) {
        start += 1;
    }
    if start >= bits.len() {
        return None;
    }
    let mut end = start + 1;
    while end < bits.len() && end - start < max && bits.get(end) {
        end += 1;
    }
    Some(start..end)
}
