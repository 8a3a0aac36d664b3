//! The receiving end of a session, sans-IO: it takes frames and the results of the I/O
//! it asked for, and returns actions. It never touches a socket or a file.
//!
//! The order it enforces, whatever the sender does:
//! 1. the manifest is checked entry by entry and made durable (`SaveRecord`) before any
//!    chunk is asked for;
//! 2. a chunk is accepted only if it was asked for; the shell stores it only after its
//!    content matches its name (else it is asked for again, a bounded number of times);
//! 3. chunks count as arrived only once stored, fsynced and recorded (`SyncAndRecord`);
//! 4. a version is published (`Publish`, one at a time) only when [`decide`] says so:
//!    all its chunks arrived or were already held, and its parent is published.
//!
//! When the sender goes away, or breaks the protocol, or the store fails, the receiver
//! still finishes making durable what it already took in and publishes what is complete,
//! then ends; nothing else changes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use bytes::Bytes;

use super::decide::decide;
use super::manifest::{Manifest, ManifestError};
use super::message::{
    Hello, Message, Role, VolumeChain, VolumeResult, VolumeState, MAX_HASHES_PER_FRAME, PROTOCOL,
    PROTOCOL_VERSION,
};
use crate::chunk::ChunkHash;
use crate::index::ChunkRef;
use crate::name::VolumeName;

/// Make written chunks durable once this many bytes wait, so a cut loses little.
pub const SYNC_BATCH_BYTES: u64 = 32 << 20;
/// How often one chunk may fail verification before the receiver gives up on it.
pub const MAX_CHUNK_ATTEMPTS: u32 = 3;

/// What the receiver knows of its own store when the session starts.
#[derive(Clone, Debug, Default)]
pub struct LocalState {
    /// Every volume the sender named, with the receiver's published versions (possibly
    /// none), ascending, and each index's BLAKE3.
    pub chains: Vec<VolumeChain>,
    /// Chunks named by the receiver's newest published version of those volumes: held.
    pub held: HashSet<ChunkHash>,
    /// The session record this sender left, if any.
    pub record: Option<PriorSession>,
}

/// What a session record left by an earlier session says.
#[derive(Clone, Debug, Default)]
pub struct PriorSession {
    /// Its session id (the manifest's hash).
    pub session_id: [u8; 32],
    /// The sender it came from.
    pub sender_id: [u8; 16],
    /// Chunks it recorded as arrived.
    pub arrived: Vec<ChunkHash>,
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a message to the sender.
    Send(Message),
    /// Read the receiver's state of these volumes and this sender's session record;
    /// answer with [`Receiver::loaded`].
    Load {
        /// The sending store.
        sender_id: [u8; 16],
        /// The volumes it named.
        volumes: Vec<VolumeName>,
    },
    /// Make the session record (this manifest, no arrival yet) durable, replacing any
    /// earlier record of this sender; answer with [`Receiver::record_saved`].
    SaveRecord {
        /// The sending store.
        sender_id: [u8; 16],
        /// The manifest.
        manifest: Box<Manifest>,
    },
    /// For each chunk (with its length): if the store has it and it verifies, say so in
    /// the answer, [`Receiver::checked`]. It is made durable with the next sync.
    CheckPresent(Vec<(ChunkHash, usize)>),
    /// Verify the chunk against its name and length, then store it (not yet fsynced);
    /// answer with [`Receiver::chunk_written`] or [`Receiver::chunk_rejected`].
    StoreChunk {
        /// Its name.
        hash: ChunkHash,
        /// Its length according to the manifest.
        expected_len: usize,
        /// The stored encoding byte.
        encoding: u8,
        /// The stored body.
        body: Bytes,
    },
    /// fsync these written chunks, then append their arrival records and fsync the
    /// record; answer with [`Receiver::synced`].
    SyncAndRecord(Vec<ChunkHash>),
    /// Publish exactly these index bytes as this version (create-if-not-exists; an
    /// identical existing file counts as done); answer with [`Receiver::published`].
    Publish {
        /// The volume.
        volume: VolumeName,
        /// The version.
        version: u32,
        /// The index file's bytes.
        index: Bytes,
    },
    /// The session is over: close the connection. `complete`: every version of the
    /// manifest is published, so the session record can be deleted.
    Finish {
        /// Every manifest version is published.
        complete: bool,
        /// Why the session ended early, if it did.
        error: Option<String>,
    },
}

/// Why the receiver ends a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiverError {
    /// The sender sent something the protocol does not allow at this point.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A manifest entry was refused.
    #[error("bad manifest: {0}")]
    Manifest(#[from] ManifestError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Hello,
    Loading,
    Manifest,
    SavingRecord,
    Checking,
    Transfer,
    Finished,
}

/// The receiving end of one session.
#[derive(Debug)]
pub struct Receiver {
    store_id: [u8; 16],
    phase: Phase,
    sender_id: [u8; 16],
    named: Vec<VolumeName>,
    newest: BTreeMap<VolumeName, u32>,
    prior: Option<PriorSession>,
    manifest: Manifest,
    /// Chunks held durably and verified.
    have: HashSet<ChunkHash>,
    /// Asked for and neither received nor declared unavailable.
    outstanding: HashSet<ChunkHash>,
    /// Handed to the shell to store, no answer yet.
    storing: HashSet<ChunkHash>,
    /// Stored, not yet durable.
    written: Vec<ChunkHash>,
    written_bytes: u64,
    syncing: bool,
    publishing: bool,
    attempts: HashMap<ChunkHash, u32>,
    unavailable: HashMap<ChunkHash, String>,
    blocked: BTreeMap<VolumeName, String>,
    received_frames: u64,
    missing_sent: u64,
    done: bool,
    /// Why the session is ending (set once): the peer left, broke the protocol, or the
    /// store failed. Draining then finishes what was taken in.
    ending: Option<Option<String>>,
    actions: VecDeque<Action>,
}

impl Receiver {
    /// A receiver for a store with identity `store_id`, waiting for the sender's Hello.
    pub fn new(store_id: [u8; 16]) -> Self {
        Self {
            store_id,
            phase: Phase::Hello,
            sender_id: [0; 16],
            named: Vec::new(),
            newest: BTreeMap::new(),
            prior: None,
            manifest: Manifest::new(),
            have: HashSet::new(),
            outstanding: HashSet::new(),
            storing: HashSet::new(),
            written: Vec::new(),
            written_bytes: 0,
            syncing: false,
            publishing: false,
            attempts: HashMap::new(),
            unavailable: HashMap::new(),
            blocked: BTreeMap::new(),
            received_frames: 0,
            missing_sent: 0,
            done: false,
            ending: None,
            actions: VecDeque::new(),
        }
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether the session is over (a `Finish` was issued).
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Whether the shell may take in more chunk frames (false while draining).
    pub fn accepts_frames(&self) -> bool {
        self.ending.is_none() && self.phase != Phase::Finished
    }

    /// A frame arrived and decoded.
    pub fn frame(&mut self, message: Message) {
        if !self.accepts_frames() {
            return;
        }
        if let Err(e) = self.on_message(message) {
            self.actions
                .push_back(Action::Send(Message::Error(e.to_string())));
            self.end(Some(e.to_string()));
        }
    }

    /// The connection broke, or a frame failed to decode (`reason`). Nothing of it is
    /// used; what was taken in before is finished.
    pub fn peer_gone(&mut self, reason: Option<String>) {
        if self.ending.is_none() {
            self.end(reason);
        }
    }

    /// The store failed (full disk, I/O error): stop taking data, say why, finish what can
    /// be finished.
    pub fn store_failed(&mut self, reason: String) {
        if self.phase == Phase::Finished {
            return;
        }
        // Chunks handed to the store and not answered yet do not count as arrived.
        self.storing.clear();
        match &mut self.ending {
            None => {
                self.actions
                    .push_back(Action::Send(Message::Error(reason.clone())));
                self.ending = Some(Some(reason));
            }
            Some(r @ None) => *r = Some(reason),
            Some(Some(_)) => {}
        }
        self.progress();
    }

    fn end(&mut self, reason: Option<String>) {
        self.ending = Some(reason);
        self.progress();
    }

    fn on_message(&mut self, message: Message) -> Result<(), ReceiverError> {
        let unexpected = |m: &Message, phase: Phase| {
            ReceiverError::Protocol(format!("unexpected {} in phase {phase:?}", m.name()))
        };
        match (self.phase, message) {
            (Phase::Hello, Message::Hello(h)) => self.on_hello(h),
            (_, Message::Error(reason)) => {
                self.end(Some(format!("the sender ended the session: {reason}")));
                Ok(())
            }
            (
                Phase::Manifest,
                Message::Manifest {
                    volume,
                    version,
                    index,
                },
            ) => {
                if !self.named.contains(&volume) {
                    return Err(ReceiverError::Protocol(format!(
                        "manifest names volume {volume}, which the sender did not name"
                    )));
                }
                if version <= self.newest.get(&volume).copied().unwrap_or(0) {
                    return Err(ReceiverError::Protocol(format!(
                        "manifest offers version {version} of {volume}, which is not newer than ours"
                    )));
                }
                self.manifest.push(volume, version, index)?;
                Ok(())
            }
            (
                Phase::Manifest,
                Message::ManifestEnd {
                    entries,
                    session_id,
                },
            ) => self.on_manifest_end(entries, session_id),
            (
                Phase::Transfer,
                Message::Chunk {
                    hash,
                    encoding,
                    body,
                },
            ) => {
                self.count_frame();
                if self.have.contains(&hash)
                    || self.storing.contains(&hash)
                    || self.written.contains(&hash)
                {
                    return Ok(()); // a duplicate: already taken in
                }
                if !self.outstanding.remove(&hash) {
                    return Err(ReceiverError::Protocol(format!(
                        "chunk {hash} was not asked for"
                    )));
                }
                let expected_len = self.manifest.chunk_len(&hash).ok_or_else(|| {
                    ReceiverError::Protocol(format!("chunk {hash} is not in the manifest"))
                })?;
                self.storing.insert(hash);
                self.actions.push_back(Action::StoreChunk {
                    hash,
                    expected_len,
                    encoding,
                    body,
                });
                Ok(())
            }
            (Phase::Transfer, Message::Unavailable { hash, reason }) => {
                self.count_frame();
                if !self.outstanding.remove(&hash) {
                    if self.unavailable.contains_key(&hash) {
                        return Ok(());
                    }
                    return Err(ReceiverError::Protocol(format!(
                        "chunk {hash} was not asked for"
                    )));
                }
                self.give_up(
                    hash,
                    format!("the sender cannot read chunk {hash}: {reason}"),
                );
                self.progress();
                Ok(())
            }
            (Phase::Transfer, Message::Done(answered)) => {
                if answered > self.missing_sent {
                    return Err(ReceiverError::Protocol(format!(
                        "the sender answered {answered} Missing frames of {}",
                        self.missing_sent
                    )));
                }
                if answered < self.missing_sent {
                    return Ok(()); // sent before our latest request: another Done follows
                }
                if let Some(h) = self.outstanding.iter().next() {
                    return Err(ReceiverError::Protocol(format!(
                        "the sender said done but did not send chunk {h}"
                    )));
                }
                self.done = true;
                self.progress();
                Ok(())
            }
            (phase, m) => Err(unexpected(&m, phase)),
        }
    }

    fn send_missing(&mut self, last: bool, hashes: Vec<ChunkHash>) {
        self.missing_sent += 1;
        self.actions
            .push_back(Action::Send(Message::Missing { last, hashes }));
    }

    fn count_frame(&mut self) {
        self.received_frames += 1;
        self.actions
            .push_back(Action::Send(Message::Ack(self.received_frames)));
    }

    fn on_hello(&mut self, h: Hello) -> Result<(), ReceiverError> {
        if h.protocol != PROTOCOL || h.version != PROTOCOL_VERSION || h.role != Role::Sender {
            return Err(ReceiverError::Protocol(format!(
                "expected a replication sender speaking version {PROTOCOL_VERSION}, got protocol {:?} version {} as {:?}",
                String::from_utf8_lossy(&h.protocol),
                h.version,
                h.role
            )));
        }
        if h.store_id == self.store_id {
            return Err(ReceiverError::Protocol(
                "the sender is this very store".into(),
            ));
        }
        self.sender_id = h.store_id;
        self.named = decode_names(&h.body)
            .ok_or_else(|| ReceiverError::Protocol("bad volume list in Hello".into()))?;
        self.phase = Phase::Loading;
        self.actions.push_back(Action::Load {
            sender_id: self.sender_id,
            volumes: self.named.clone(),
        });
        Ok(())
    }

    /// The answer to [`Action::Load`].
    pub fn loaded(&mut self, local: LocalState) {
        assert_eq!(self.phase, Phase::Loading, "loaded outside Loading");
        if self.ending.is_some() {
            self.phase = Phase::Manifest;
            return self.progress();
        }
        for c in &local.chains {
            if let Some(&(v, _)) = c.versions.last() {
                self.newest.insert(c.volume.clone(), v);
            }
        }
        self.have = local.held;
        self.prior = local.record;
        self.actions.push_back(Action::Send(Message::Hello(Hello {
            protocol: PROTOCOL,
            version: PROTOCOL_VERSION,
            role: Role::Receiver,
            store_id: self.store_id,
            body: Bytes::new(),
        })));
        self.actions
            .push_back(Action::Send(Message::Welcome(local.chains)));
        self.phase = Phase::Manifest;
    }

    fn on_manifest_end(&mut self, entries: u32, session_id: [u8; 32]) -> Result<(), ReceiverError> {
        if entries as usize != self.manifest.len() || session_id != self.manifest.session_id() {
            return Err(ReceiverError::Protocol(
                "the manifest does not match its session id".into(),
            ));
        }
        match self.prior.take() {
            Some(prior) if prior.session_id == session_id && prior.sender_id == self.sender_id => {
                // The same manifest again: a resumed session. What was recorded is held.
                self.have.extend(prior.arrived);
                self.after_record();
            }
            _ => {
                self.phase = Phase::SavingRecord;
                self.actions.push_back(Action::SaveRecord {
                    sender_id: self.sender_id,
                    manifest: Box::new(self.manifest.clone()),
                });
            }
        }
        Ok(())
    }

    /// The answer to [`Action::SaveRecord`]: the manifest is durable.
    pub fn record_saved(&mut self) {
        assert_eq!(
            self.phase,
            Phase::SavingRecord,
            "record_saved outside SavingRecord"
        );
        self.after_record();
    }

    fn after_record(&mut self) {
        if self.ending.is_some() {
            self.phase = Phase::Transfer;
            return self.progress();
        }
        let wanted: Vec<(ChunkHash, usize)> = self
            .manifest
            .data_chunks()
            .into_iter()
            .filter(|h| !self.have.contains(h))
            .map(|h| (h, self.manifest.chunk_len(&h).unwrap_or_default()))
            .collect();
        self.phase = Phase::Checking;
        self.actions.push_back(Action::CheckPresent(wanted));
    }

    /// The answer to [`Action::CheckPresent`]: these chunks are in the store, verified
    /// and durable. The rest is asked for.
    pub fn checked(&mut self, present: Vec<ChunkHash>) {
        assert_eq!(self.phase, Phase::Checking, "checked outside Checking");
        self.phase = Phase::Transfer;
        if self.ending.is_some() {
            return self.progress();
        }
        let present: HashSet<ChunkHash> = present.into_iter().collect();
        let mut missing = Vec::new();
        for h in self.manifest.data_chunks() {
            if self.have.contains(&h) {
                continue;
            }
            if present.contains(&h) {
                // Found in the store: record it as arrived with the next batch.
                self.written.push(h);
            } else {
                missing.push(h);
            }
        }
        self.outstanding.extend(missing.iter().copied());
        let mut pieces = missing.chunks(MAX_HASHES_PER_FRAME).peekable();
        if pieces.peek().is_none() {
            self.send_missing(true, Vec::new());
        }
        while let Some(piece) = pieces.next() {
            let last = pieces.peek().is_none();
            self.send_missing(last, piece.to_vec());
        }
        self.progress();
    }

    /// The answer to [`Action::StoreChunk`]: verified and written (not yet durable).
    pub fn chunk_written(&mut self, hash: ChunkHash, stored_bytes: u64) {
        if !self.storing.remove(&hash) {
            return; // the store failed meanwhile; this one is not counted
        }
        self.written.push(hash);
        self.written_bytes += stored_bytes;
        self.progress();
    }

    /// The answer to [`Action::StoreChunk`]: the chunk failed verification (damaged in
    /// flight, or a lying sender). It is asked for again, a bounded number of times.
    pub fn chunk_rejected(&mut self, hash: ChunkHash, reason: String) {
        if !self.storing.remove(&hash) {
            return;
        }
        let n = {
            let n = self.attempts.entry(hash).or_insert(0);
            *n += 1;
            *n
        };
        if n >= MAX_CHUNK_ATTEMPTS || self.ending.is_some() {
            if self.ending.is_none() {
                self.give_up(
                    hash,
                    format!("chunk {hash} failed verification {n} times: {reason}"),
                );
            }
        } else {
            tracing::warn!(%hash, %reason, "chunk failed verification; asking again");
            self.outstanding.insert(hash);
            self.done = false;
            self.send_missing(true, vec![hash]);
        }
        self.progress();
    }

    /// The answer to [`Action::SyncAndRecord`]: these chunks are durable and recorded.
    pub fn synced(&mut self, hashes: Vec<ChunkHash>) {
        assert!(self.syncing, "synced without a sync");
        self.syncing = false;
        self.have.extend(hashes);
        self.progress();
    }

    /// The answer to [`Action::SyncAndRecord`] when it failed: those chunks do not count.
    pub fn sync_failed(&mut self, reason: String) {
        assert!(self.syncing, "sync_failed without a sync");
        self.syncing = false;
        self.store_failed(reason);
    }

    /// The answer to [`Action::Publish`]: `Ok` once the version is visible and durable;
    /// `Err` if it cannot be (the number is taken by a different index): the volume then
    /// stays where it is.
    pub fn published(&mut self, volume: VolumeName, version: u32, result: Result<(), String>) {
        assert!(self.publishing, "published without a publish");
        self.publishing = false;
        match result {
            Ok(()) => {
                let prev = self.newest.insert(volume.clone(), version).unwrap_or(0);
                assert!(
                    prev < version,
                    "published {version} of {volume} after {prev}"
                );
                if self.ending.is_none() {
                    self.actions
                        .push_back(Action::Send(Message::Committed { volume, version }));
                }
            }
            Err(reason) => {
                self.blocked.insert(volume, reason);
            }
        }
        self.progress();
    }

    /// The answer to [`Action::Publish`] when the store failed (full disk, I/O error):
    /// the volume is not blocked, it stays pending for the next session.
    pub fn publish_io_failed(&mut self, reason: String) {
        assert!(self.publishing, "publish_io_failed without a publish");
        self.publishing = false;
        self.store_failed(reason);
    }

    fn give_up(&mut self, hash: ChunkHash, reason: String) {
        for e in self.manifest.entries() {
            let names_it = e.index.chunks.contains(&ChunkRef::Data(hash));
            if names_it && e.version > self.newest.get(&e.volume).copied().unwrap_or(0) {
                self.blocked
                    .entry(e.volume.clone())
                    .or_insert_with(|| reason.clone());
            }
        }
        self.unavailable.insert(hash, reason);
    }

    /// Move on as far as the current facts allow: sync, publish, finish.
    fn progress(&mut self) {
        if matches!(self.phase, Phase::Finished) {
            return;
        }
        let in_transfer = self.phase == Phase::Transfer;
        let idle = self.storing.is_empty();
        let draining = self.ending.is_some() || (self.done && self.outstanding.is_empty());
        if in_transfer
            && !self.syncing
            && !self.written.is_empty()
            && (self.written_bytes >= SYNC_BATCH_BYTES
                || (idle && draining)
                || self.outstanding.is_empty())
        {
            self.syncing = true;
            self.written_bytes = 0;
            let batch = std::mem::take(&mut self.written);
            self.actions.push_back(Action::SyncAndRecord(batch));
        }
        if in_transfer && !self.publishing && !self.syncing {
            let blocked: BTreeSet<VolumeName> = self.blocked.keys().cloned().collect();
            if let Some(&i) = decide(&self.manifest, &self.newest, &self.have, &blocked).first() {
                let e = &self.manifest.entries()[i];
                self.publishing = true;
                self.actions.push_back(Action::Publish {
                    volume: e.volume.clone(),
                    version: e.version,
                    index: e.index_bytes.clone(),
                });
                return;
            }
        }
        let quiet = idle && self.written.is_empty() && !self.syncing && !self.publishing;
        let waiting_on_shell = matches!(
            self.phase,
            Phase::Loading | Phase::SavingRecord | Phase::Checking
        );
        if let Some(reason) = &self.ending {
            if quiet && !waiting_on_shell {
                let reason = reason.clone();
                self.finish(reason);
            }
        } else if in_transfer && quiet && self.done && self.outstanding.is_empty() {
            let results = self.results();
            self.actions
                .push_back(Action::Send(Message::Result(results)));
            self.finish(None);
        }
    }

    fn finish(&mut self, error: Option<String>) {
        let complete = self.phase == Phase::Transfer
            && self
                .manifest
                .entries()
                .iter()
                .all(|e| self.newest.get(&e.volume).copied().unwrap_or(0) >= e.version);
        self.phase = Phase::Finished;
        self.actions.push_back(Action::Finish { complete, error });
    }

    /// Each manifest volume's state now.
    pub fn results(&self) -> Vec<VolumeResult> {
        self.manifest
            .volumes()
            .into_iter()
            .map(|volume| {
                let version = self.newest.get(&volume).copied().unwrap_or(0);
                let mut missing = HashSet::new();
                let mut last = 0;
                for e in self
                    .manifest
                    .entries()
                    .iter()
                    .filter(|e| e.volume == volume)
                {
                    last = e.version;
                    if e.version > version {
                        missing.extend(e.data_chunks().filter(|h| !self.have.contains(h)));
                    }
                }
                let (state, reason) = match self.blocked.get(&volume) {
                    Some(r) if version < last => (VolumeState::Failed, r.clone()),
                    _ if version >= last => (VolumeState::Committed, String::new()),
                    _ => (VolumeState::Pending, String::new()),
                };
                VolumeResult {
                    volume,
                    state,
                    version,
                    missing_chunks: missing.len() as u64,
                    reason,
                }
            })
            .collect()
    }
}

/// The sender's Hello body: u32 count, then each volume name (u8 length + bytes).
pub fn encode_names(names: &[VolumeName]) -> Bytes {
    let mut out = Vec::new();
    out.extend_from_slice(&(names.len() as u32).to_le_bytes());
    for n in names {
        out.push(n.as_str().len() as u8);
        out.extend_from_slice(n.as_str().as_bytes());
    }
    Bytes::from(out)
}

/// Decode [`encode_names`]; `None` if malformed, over [`super::message::MAX_VOLUMES`],
/// or naming a volume twice.
pub fn decode_names(body: &[u8]) -> Option<Vec<VolumeName>> {
    let count = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
    if count > super::message::MAX_VOLUMES || count > body.len() {
        return None;
    }
    let mut rest = &body[4..];
    let mut out = Vec::with_capacity(count);
    let mut seen = BTreeSet::new();
    for _ in 0..count {
        let n = *rest.first()? as usize;
        let name = std::str::from_utf8(rest.get(1..1 + n)?).ok()?;
        let name = VolumeName::new(name).ok()?;
        if !seen.insert(name.clone()) {
            return None;
        }
        out.push(name);
        rest = &rest[1 + n..];
    }
    rest.is_empty().then_some(out)
}
