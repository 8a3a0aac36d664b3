//! The DR site's applier: the stream applied in order, reads served at one sequence
//! point, fetch-on-read, and distrust after a crash until the primary said what changed.
//!
//! # How a shell drives it
//! ```text
//! the link        attach(session, binding) after the primary's hello; received(message);
//!                 poll_send() → Ack / Fetch for the primary; detach() when the link drops
//! client read     read(offset, len) → ticket; read the volume on ReadLocal(ticket), then
//!                 read_done; or answer it with ReadServed's bytes (no read_done)
//! actions         poll_action(): WriteLocal (→ local_write_done) | ReadLocal | Commit (→ commit_done)
//! timer           tick(): make what was applied durable and acknowledge it
//! promotion       promote(force)
//! ```
//!
//! # Bounds
//! Inbox bytes ≤ `inbox_max_bytes` (the shell reads the link only while
//! [`Secondary::has_room`]); stream items in flight ≤ `items_in_flight_max`; operations
//! in the gate ≤ `ops_max` (client reads beyond it wait outside); fetches ≤ one per
//! region per session.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::ops::Range;

use super::bits::Bits;
use super::gate::{Access, Gate};
use super::wire::{Item, ItemBody, Message};
use super::{Binding, DrError, LocalData};
use crate::geometry::Geometry;
use crate::mutants::{self, Mutant};

/// Tunables of the applier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecondaryConfig {
    /// The volume.
    pub geometry: Geometry,
    /// Bytes of received items waiting to be applied.
    pub inbox_max_bytes: u64,
    /// Items whose local writes are in flight at once.
    pub items_in_flight_max: usize,
    /// Operations the gate holds at once.
    pub ops_max: usize,
}

impl SecondaryConfig {
    /// Defaults for everything but the volume.
    pub fn new(geometry: Geometry) -> SecondaryConfig {
        SecondaryConfig {
            geometry,
            inbox_max_bytes: 64 << 20,
            items_in_flight_max: 64,
            ops_max: 4096,
        }
    }
}

/// A client read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadTicket(pub u64);

/// A local write of a stream item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteTicket(pub u64);

/// A flush and commit of the present map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitTicket(pub u64);

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecondaryAction {
    /// Write this to the local volume, then call [`Secondary::local_write_done`].
    WriteLocal {
        /// Its name.
        ticket: WriteTicket,
        /// Byte offset.
        offset: u64,
        /// What to write.
        data: LocalData,
    },
    /// Read the client's bytes from the local volume now, then call
    /// [`Secondary::read_done`].
    ReadLocal {
        /// Its name.
        ticket: ReadTicket,
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
    },
    /// Answer the client read named `ticket` with these bytes; no
    /// [`Secondary::read_done`] follows. A read that missed one region and waited only
    /// for its data is answered from the region data item when the item's local write
    /// starts (the action comes before that `WriteLocal`): the volume would hold exactly
    /// these bytes once the write completed, so the read need not wait for the write and
    /// a read of the volume. See `serve_from_region`.
    ReadServed {
        /// Its name.
        ticket: ReadTicket,
        /// The bytes read.
        data: Vec<u8>,
    },
    /// Flush the local volume, then write [`Secondary::commit_state`], then call
    /// [`Secondary::commit_done`].
    Commit(CommitTicket),
}

/// What a commit writes: the present map, its generation, the binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitState {
    /// Regions durably present.
    pub present: Bits,
    /// The metadata generation (bumped whenever regions were dropped).
    pub generation: u64,
    /// The primary volume this DR volume replicates.
    pub binding: Option<Binding>,
    /// Items up to here are durable once it is written.
    upto_seq: u64,
    session: Option<u64>,
}

/// Counters for status lines and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecondaryCounters {
    /// Region data items applied.
    pub regions_applied: u64,
    /// Replicated writes applied.
    pub writes_applied: u64,
    /// Regions dropped on the primary's word.
    pub regions_invalidated: u64,
    /// Fetches asked.
    pub fetches: u64,
    /// Client reads served.
    pub reads: u64,
}

#[derive(Debug)]
enum Op {
    /// A stream item's local write; `data` is taken when it starts.
    Item {
        session: u64,
        seq: u64,
        offset: u64,
        /// Byte length (kept when `data` is taken: a failed write drops every region
        /// it touched).
        len: u64,
        region: Option<u64>,
        data: Option<LocalData>,
    },
    Invalidate {
        session: u64,
        seq: u64,
        regions: Range<u64>,
    },
    Ready {
        session: u64,
        seq: u64,
    },
    Read {
        offset: u64,
        len: u64,
        admitted: bool,
    },
}

#[derive(Debug)]
struct Session {
    id: u64,
    expect_seq: u64,
    inbox: VecDeque<Item>,
    inbox_bytes: u64,
    /// Items done, past the contiguous prefix.
    done: BTreeSet<u64>,
    applied_seq: u64,
    acked_seq: u64,
    /// The newest flush item whose commit waits for the items before it to be applied
    /// (0: none).
    flush_seq: u64,
    asked: Bits,
    outbox: VecDeque<Message>,
}

/// The applier.
#[derive(Debug)]
pub struct Secondary {
    config: SecondaryConfig,
    binding: Option<Binding>,
    generation: u64,
    /// Regions whose data (as the stream ordered it) is on the local volume.
    present: Bits,
    committed: Bits,
    dropped_since_commit: bool,
    /// False after a restart until the primary's invalidations were applied.
    trusted: bool,
    promoted: bool,
    session: Option<Session>,
    commit: Option<(CommitTicket, CommitState)>,
    commit_wanted: bool,
    ops: BTreeMap<u64, Op>,
    gate: Gate,
    items_in_flight: usize,
    actions: VecDeque<SecondaryAction>,
    next_ticket: u64,
    counters: SecondaryCounters,
}

impl Secondary {
    /// A DR volume from its committed state (all clear and no binding for a new one).
    /// Nothing it holds is served until a primary's session said what changed.
    pub fn new(
        config: SecondaryConfig,
        binding: Option<Binding>,
        present: Bits,
        generation: u64,
    ) -> Secondary {
        assert_eq!(present.len(), config.geometry.region_count());
        assert!(config.items_in_flight_max > 0 && config.ops_max > config.items_in_flight_max);
        Secondary {
            config,
            binding,
            generation,
            committed: present.clone(),
            present,
            dropped_since_commit: false,
            trusted: false,
            promoted: false,
            session: None,
            commit: None,
            commit_wanted: false,
            ops: BTreeMap::new(),
            gate: Gate::new(config.ops_max),
            items_in_flight: 0,
            actions: VecDeque::new(),
            next_ticket: 1,
            counters: SecondaryCounters::default(),
        }
    }

    /// Regions present now.
    pub fn present(&self) -> &Bits {
        &self.present
    }

    /// The metadata generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The binding.
    pub fn binding(&self) -> Option<Binding> {
        self.binding
    }

    /// True once the primary's invalidations since the last restart were applied.
    pub fn is_trusted(&self) -> bool {
        self.trusted
    }

    /// Counters.
    pub fn counters(&self) -> SecondaryCounters {
        self.counters
    }

    /// The contiguous prefix of this session's stream applied locally.
    pub fn applied_seq(&self) -> Option<u64> {
        self.session.as_ref().map(|s| s.applied_seq)
    }

    /// True when the inbox can take an item of `bytes`.
    pub fn has_room(&self, bytes: u64) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.inbox_bytes + bytes <= self.config.inbox_max_bytes)
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// A session from the primary described by `binding` begins; refused when this DR
    /// volume replicates another primary or volume.
    pub fn attach(&mut self, id: u64, binding: Binding) -> Result<(), DrError> {
        if self.promoted {
            return Err(DrError::Promoted);
        }
        if binding.volume_size_bytes != self.config.geometry.volume_size_bytes()
            || binding.region_size_bytes != self.config.geometry.region_size_bytes()
        {
            return Err(DrError::GeometryMismatch);
        }
        match self.binding {
            Some(b) if b.primary_id != binding.primary_id => return Err(DrError::WrongPrimary),
            Some(b) if b.volume_id != binding.volume_id => return Err(DrError::WrongVolume),
            Some(_) => {}
            None => {
                self.binding = Some(binding);
                self.commit_wanted = true;
            }
        }
        self.session = Some(Session {
            id,
            expect_seq: 1,
            inbox: VecDeque::new(),
            inbox_bytes: 0,
            done: BTreeSet::new(),
            applied_seq: 0,
            acked_seq: 0,
            flush_seq: 0,
            asked: Bits::new(self.config.geometry.region_count()),
            outbox: VecDeque::new(),
        });
        Ok(())
    }

    /// The link dropped: items received but not applied are dropped (the primary sends
    /// again what was not acknowledged); what was applied stays and is served.
    pub fn detach(&mut self) {
        self.session = None;
    }

    /// A message from the primary. An error ends the session.
    pub fn received(&mut self, message: Message) -> Result<(), DrError> {
        if self.promoted {
            return Err(DrError::Promoted);
        }
        let g = self.config.geometry;
        let s = self.session.as_mut().ok_or(DrError::NoSession)?;
        let Message::Item(item) = message else {
            return Err(DrError::UnexpectedMessage);
        };
        if item.seq != s.expect_seq {
            return Err(DrError::OutOfOrder {
                expected: s.expect_seq,
                got: item.seq,
            });
        }
        let bad = DrError::BadItem { seq: item.seq };
        match &item.body {
            ItemBody::RegionData { region, data } => {
                if *region >= g.region_count() || data.len() as u64 != g.region_len_bytes(*region) {
                    return Err(bad);
                }
            }
            ItemBody::Write { offset, data } => {
                g.check(*offset, data.len() as u64).map_err(|_| bad)?;
            }
            ItemBody::Zeroes { offset, len } => g.check(*offset, *len).map_err(|_| bad)?,
            ItemBody::Invalidate { first, count } => {
                if *count == 0
                    || first
                        .checked_add(*count)
                        .is_none_or(|e| e > g.region_count())
                {
                    return Err(bad);
                }
            }
            ItemBody::Flush | ItemBody::Ready => {}
        }
        let bytes = item.body.queued_bytes();
        if s.inbox_bytes + bytes > self.config.inbox_max_bytes {
            return Err(DrError::InboxFull);
        }
        s.expect_seq += 1;
        s.inbox_bytes += bytes;
        s.inbox.push_back(item);
        Ok(())
    }

    /// The next message for the primary.
    pub fn poll_send(&mut self) -> Option<Message> {
        self.pump();
        self.session.as_mut()?.outbox.pop_front()
    }

    /// The next thing the shell must do.
    pub fn poll_action(&mut self) -> Option<SecondaryAction> {
        self.pump();
        self.actions.pop_front()
    }

    /// A client read; its bytes are read when [`SecondaryAction::ReadLocal`] names it.
    pub fn read(&mut self, offset: u64, len: u64) -> Result<ReadTicket, DrError> {
        self.config.geometry.check(offset, len)?;
        let id = self.ticket();
        self.ops.insert(
            id,
            Op::Read {
                offset,
                len,
                admitted: false,
            },
        );
        Ok(ReadTicket(id))
    }

    /// A client write: refused until promotion.
    pub fn write(&mut self, offset: u64, len: u64) -> Result<(), DrError> {
        self.config.geometry.check(offset, len)?;
        Err(DrError::ReadOnly)
    }

    /// The client read named `ticket` was read from the volume.
    pub fn read_done(&mut self, ticket: ReadTicket) {
        let op = self.ops.remove(&ticket.0);
        assert!(
            matches!(op, Some(Op::Read { admitted: true, .. })),
            "read {ticket:?}"
        );
        self.gate.finish(ticket.0);
        self.counters.reads += 1;
    }

    /// The local write named `ticket` finished. A failure ends the session (the error
    /// says so); the region is fetched again in the next one.
    pub fn local_write_done(&mut self, ticket: WriteTicket, ok: bool) -> Result<(), DrError> {
        let op = self
            .ops
            .remove(&ticket.0)
            .unwrap_or_else(|| panic!("local write {ticket:?} is unknown"));
        let Op::Item {
            session,
            seq,
            offset,
            len,
            region,
            data,
        } = op
        else {
            panic!("local write {ticket:?} is not a stream item");
        };
        assert!(data.is_none(), "local write finished before it started");
        if region.is_some() && mutants::active(Mutant::StaleRegionOverWrite) {
            self.gate.forget(ticket.0); // it never waited in the gate
        } else {
            self.gate.finish(ticket.0);
        }
        self.items_in_flight -= 1;
        let g = self.config.geometry;
        if !ok {
            // The bytes there are unknown: drop the regions and end the session before
            // anything past this item is acknowledged.
            self.drop_regions(region.map_or(g.regions_touched(offset, len), |r| r..r + 1));
            self.session = None;
            return Err(DrError::LocalWriteFailed { offset });
        }
        match region {
            Some(r) => {
                self.present.set(r);
                self.counters.regions_applied += 1;
            }
            None => self.counters.writes_applied += 1,
        }
        self.item_done(session, seq);
        Ok(())
    }

    fn item_done(&mut self, session: u64, seq: u64) {
        let Some(s) = self.session.as_mut().filter(|s| s.id == session) else {
            return;
        };
        assert!(
            seq > s.applied_seq && s.done.insert(seq),
            "item {seq} done twice"
        );
        while s.done.remove(&(s.applied_seq + 1)) {
            s.applied_seq += 1;
        }
        if s.flush_seq != 0 && s.applied_seq >= s.flush_seq {
            s.flush_seq = 0;
            self.commit_wanted = true;
        }
    }

    fn drop_regions(&mut self, regions: Range<u64>) {
        for r in regions {
            if self.present.clear(r) {
                self.counters.regions_invalidated += 1;
                self.dropped_since_commit = true;
            }
            if let Some(s) = self.session.as_mut() {
                s.asked.clear(r);
            }
        }
    }

    /// Timer: make what was applied durable and acknowledge it.
    pub fn tick(&mut self) {
        if let Some(s) = &self.session {
            if s.applied_seq > s.acked_seq {
                self.commit_wanted = true;
            }
        }
    }

    /// What the commit named `ticket` writes.
    pub fn commit_state(&self, ticket: CommitTicket) -> &CommitState {
        let (t, state) = self.commit.as_ref().expect("a commit in flight");
        assert_eq!(*t, ticket);
        state
    }

    /// The commit named `ticket` finished.
    pub fn commit_done(&mut self, ticket: CommitTicket, ok: bool) {
        let (t, state) = self.commit.take().expect("a commit in flight");
        assert_eq!(t, ticket);
        if !ok {
            self.commit_wanted = true;
            return;
        }
        self.committed = state.present;
        self.generation = state.generation;
        if let Some(s) = self
            .session
            .as_mut()
            .filter(|s| Some(s.id) == state.session)
        {
            if state.upto_seq > s.acked_seq {
                s.acked_seq = state.upto_seq;
                s.outbox.push_back(Message::Ack {
                    durable_seq: state.upto_seq,
                });
            }
        }
    }

    /// Makes this the primary volume: refused while regions are missing unless `force`
    /// (then the missing regions read as whatever the volume holds: the caller warns).
    pub fn promote(&mut self, force: bool) -> Result<u64, DrError> {
        let missing = self.present.len() - self.present.count();
        if (missing > 0 || !self.trusted) && !force {
            return Err(DrError::Incomplete { missing });
        }
        self.promoted = true;
        self.session = None;
        Ok(missing)
    }

    fn pump(&mut self) {
        loop {
            let before = (self.actions.len(), self.ops.len(), self.gate.held());
            self.issue_items();
            self.admit_reads();
            self.start_ready();
            if before == (self.actions.len(), self.ops.len(), self.gate.held()) {
                break;
            }
        }
        if self.commit.is_none() && self.commit_wanted {
            self.commit_wanted = false;
            if self.dropped_since_commit {
                self.dropped_since_commit = false;
                self.generation += 1;
            }
            let t = CommitTicket(self.ticket());
            let state = CommitState {
                present: self.present.clone(),
                generation: self.generation,
                binding: self.binding,
                upto_seq: self.session.as_ref().map_or(0, |s| s.applied_seq),
                session: self.session.as_ref().map(|s| s.id),
            };
            self.commit = Some((t, state));
            self.actions.push_back(SecondaryAction::Commit(t));
        }
    }

    /// Moves items from the inbox into the gate, in stream order.
    fn issue_items(&mut self) {
        let g = self.config.geometry;
        while self.items_in_flight < self.config.items_in_flight_max && self.gate.has_room() {
            let Some(s) = self.session.as_mut() else {
                return;
            };
            let mut at = 0;
            if mutants::active(Mutant::FetchReplyOutOfOrder) {
                // Wrong: a fetched region's data jumps the items before it.
                at = s
                    .inbox
                    .iter()
                    .position(|i| matches!(i.body, ItemBody::RegionData { region, .. } if s.asked.get(region)))
                    .unwrap_or(0);
            }
            let Some(item) = s.inbox.remove(at) else {
                return;
            };
            s.inbox_bytes -= item.body.queued_bytes();
            let session = s.id;
            let seq = item.seq;
            let id = self.ticket();
            match item.body {
                ItemBody::RegionData { region, data } => {
                    let bytes = g.regions_byte_range(region..region + 1);
                    self.push_item(
                        id,
                        session,
                        seq,
                        bytes.start,
                        Some(region),
                        LocalData::Bytes(data),
                    );
                }
                ItemBody::Write { offset, data } => {
                    if self.drops_write(offset, data.len() as u64) {
                        self.item_done(session, seq);
                        continue;
                    }
                    self.push_item(id, session, seq, offset, None, LocalData::Bytes(data));
                }
                ItemBody::Zeroes { offset, len } => {
                    if self.drops_write(offset, len) {
                        self.item_done(session, seq);
                        continue;
                    }
                    self.push_item(id, session, seq, offset, None, LocalData::Zeroes(len));
                }
                ItemBody::Flush => {
                    // Made durable by a commit once everything before it is applied
                    // (the local writes of earlier items may still be in flight: a
                    // commit now would cover only what completed, and the rest would
                    // wait for the timer). See `item_done`.
                    if let Some(s) = self.session.as_mut() {
                        s.flush_seq = s.flush_seq.max(seq);
                    }
                    self.item_done(session, seq);
                }
                ItemBody::Invalidate { first, count } => {
                    let regions = first..first + count;
                    self.gate
                        .admit(id, g.regions_byte_range(regions.clone()), Access::Write);
                    self.ops.insert(
                        id,
                        Op::Invalidate {
                            session,
                            seq,
                            regions,
                        },
                    );
                }
                ItemBody::Ready => {
                    // After every invalidation before it took effect.
                    self.gate.admit(id, 0..g.volume_size_bytes(), Access::Write);
                    self.ops.insert(id, Op::Ready { session, seq });
                }
            }
        }
    }

    /// The mutant that treats a replicated write as stale when its region's data has
    /// not landed yet.
    fn drops_write(&self, offset: u64, len: u64) -> bool {
        mutants::active(Mutant::DropReplicatedWrite)
            && self
                .config
                .geometry
                .regions_touched(offset, len)
                .any(|r| !self.present.get(r))
    }

    fn push_item(
        &mut self,
        id: u64,
        session: u64,
        seq: u64,
        offset: u64,
        region: Option<u64>,
        data: LocalData,
    ) {
        let len = data.len();
        self.items_in_flight += 1;
        self.ops.insert(
            id,
            Op::Item {
                session,
                seq,
                offset,
                len,
                region,
                data: Some(data),
            },
        );
        if region.is_some() && mutants::active(Mutant::StaleRegionOverWrite) {
            // Wrong: region data written without waiting for, or holding back, the
            // replicated writes around it.
            self.start_op(id);
            return;
        }
        self.gate.admit(id, offset..offset + len, Access::Write);
    }

    /// Client reads whose regions are all present (and trusted) enter the gate; the
    /// others ask for their missing regions once per session.
    fn admit_reads(&mut self) {
        let g = self.config.geometry;
        let mut admit = Vec::new();
        for (&id, op) in self.ops.iter() {
            let Op::Read {
                offset,
                len,
                admitted: false,
            } = *op
            else {
                continue;
            };
            let regions = g.regions_touched(offset, len);
            if self.trusted && self.present.all_set(regions.clone()) {
                if self.gate.has_room() && admit.len() < self.config.ops_max - self.gate.held() {
                    admit.push(id);
                }
                continue;
            }
            let Some(s) = self.session.as_mut() else {
                continue;
            };
            for r in regions {
                if !self.present.get(r) && s.asked.set(r) {
                    s.outbox.push_back(Message::Fetch { region: r });
                    self.counters.fetches += 1;
                }
            }
        }
        for id in admit {
            let Some(Op::Read {
                offset,
                len,
                admitted,
            }) = self.ops.get_mut(&id)
            else {
                unreachable!()
            };
            *admitted = true;
            self.gate.admit(id, *offset..*offset + *len, Access::Read);
        }
    }

    /// Answers, from the bytes of region `region`'s data item `id` (at byte `offset`,
    /// of session `session`) whose local write starts now, the client reads that
    /// wait for that region alone.
    ///
    /// Why this serves what the read would have read after the write: the item runs, so
    /// nothing admitted before it overlaps it; the read lies within its bytes; and no
    /// other operation overlapping the read is held (no later stream item for those
    /// bytes was issued yet), so the read is placed at the item's point, and every read
    /// served before saw points before any later change of those bytes (stream items are
    /// issued in order, so none after such a change was applied). Anything less certain
    /// (an untrusted volume, a read over two regions, a later item for the same bytes
    /// already held, an item of an ended session) takes the ordinary way: admitted once
    /// the region is present, read from the volume.
    fn serve_from_region(&mut self, id: u64, session: u64, region: u64, offset: u64, bytes: &[u8]) {
        if !self.trusted || self.session.as_ref().is_none_or(|s| s.id != session) {
            return;
        }
        let g = self.config.geometry;
        debug_assert_eq!(g.regions_byte_range(region..region + 1).start, offset);
        let mut served = Vec::new();
        for (&read, op) in self.ops.iter() {
            let Op::Read {
                offset: at,
                len,
                admitted: false,
            } = *op
            else {
                continue;
            };
            if g.regions_touched(at, len) != (region..region + 1)
                || self.gate.busy_but(id, at..at + len)
            {
                continue;
            }
            let from = (at - offset) as usize;
            served.push((read, bytes[from..from + len as usize].to_vec()));
        }
        for (read, data) in served {
            let op = self.ops.remove(&read);
            debug_assert!(matches!(
                op,
                Some(Op::Read {
                    admitted: false,
                    ..
                })
            ));
            self.counters.reads += 1;
            self.actions.push_back(SecondaryAction::ReadServed {
                ticket: ReadTicket(read),
                data,
            });
        }
    }

    fn start_ready(&mut self) {
        let mut started = Vec::new();
        self.gate.start_ready(|id| started.push(id));
        for id in started {
            self.start_op(id);
        }
    }

    fn start_op(&mut self, id: u64) {
        let g = self.config.geometry;
        match self.ops.get_mut(&id).expect("known operation") {
            Op::Item {
                offset,
                data,
                region,
                session,
                ..
            } => {
                let data = data.take().expect("started once");
                let (offset, region, session) = (*offset, *region, *session);
                if let (Some(r), LocalData::Bytes(bytes)) = (region, &data) {
                    self.serve_from_region(id, session, r, offset, bytes);
                }
                self.actions.push_back(SecondaryAction::WriteLocal {
                    ticket: WriteTicket(id),
                    offset,
                    data,
                });
            }
            Op::Read {
                offset,
                len,
                admitted,
            } => {
                if !(self.trusted && self.present.all_set(g.regions_touched(*offset, *len))) {
                    // An invalidation ahead of it in the gate dropped a region: back to
                    // waiting (and fetching).
                    *admitted = false;
                    self.gate.forget(id);
                    return;
                }
                self.actions.push_back(SecondaryAction::ReadLocal {
                    ticket: ReadTicket(id),
                    offset: *offset,
                    len: *len,
                });
            }
            Op::Invalidate { .. } | Op::Ready { .. } => {
                let op = self.ops.remove(&id).expect("known operation");
                self.gate.finish(id);
                match op {
                    Op::Invalidate {
                        session,
                        seq,
                        regions,
                    } => {
                        self.drop_regions(regions);
                        self.item_done(session, seq);
                    }
                    Op::Ready { session, seq } => {
                        self.trusted = true;
                        self.item_done(session, seq);
                    }
                    _ => unreachable!(),
                }
            }
        }
    }
}
