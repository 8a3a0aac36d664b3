//! The sending end of a session, sans-IO.
//!
//! It starts knowing its own volumes (every version's index bytes), greets the receiver,
//! and from the receiver's Welcome plans the manifest: for each volume, the receiver's
//! versions must be a prefix of ours with identical indexes (else the volume is refused:
//! the stores have diverged), and the manifest carries the rest, parent first. It then
//! sends only the chunks the receiver names as missing — each checked against the
//! manifest, so a receiver cannot make it send anything else — at most `window_bytes`
//! ahead of the receiver's acknowledgements, so a cut link wastes at most a window.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;

use super::frame;
use super::manifest::{Manifest, ManifestError};
use super::message::{
    Hello, Message, Role, VolumeChain, VolumeResult, VolumeState, PROTOCOL, PROTOCOL_VERSION,
};
use super::receiver::encode_names;
use crate::chunk::ChunkHash;
use crate::index::ChunkRef;
use crate::name::VolumeName;

/// Chunks read ahead of the window.
pub const READ_AHEAD: usize = 8;
/// How often the receiver may ask for one chunk in a session (the first time and its
/// re-requests after failed checks).
pub const MAX_SENDS_PER_CHUNK: u32 = 4;
/// Bytes of a Manifest frame besides the index: header, name, version.
const MANIFEST_FRAME_OVERHEAD_BYTES: usize = 256;
/// Default bytes in flight beyond the receiver's acknowledgements.
pub const DEFAULT_WINDOW_BYTES: u64 = 2 << 20;
/// What a frame weighs in the window at least: bounds the frames (and so the
/// acknowledgements) one window can hold to `window / 4 KiB`.
pub const MIN_FRAME_WEIGHT_BYTES: u64 = 4096;
/// Most acknowledgements a full window of the largest allowed size can cause; the shell
/// buffers this many incoming frames without blocking.
pub const MAX_WINDOW_BYTES: u64 = 1 << 30;

/// One local volume: every published version's index bytes, ascending.
#[derive(Clone, Debug)]
pub struct LocalVolume {
    /// The volume.
    pub volume: VolumeName,
    /// `(version, index file bytes)`, ascending.
    pub versions: Vec<(u32, Bytes)>,
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a message.
    Send(Message),
    /// Read chunk `hash` in its stored form and verify it; answer with
    /// [`Sender::chunk_read`] or [`Sender::chunk_unreadable`].
    ReadChunk {
        /// The chunk.
        hash: ChunkHash,
        /// Its length according to the manifest.
        expected_len: usize,
    },
    /// The session is over.
    Finish(Outcome),
}

/// How the session ended, volume by volume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Volumes now at our newest version on the receiver.
    pub committed: Vec<VolumeName>,
    /// Volumes with versions still to send (a later run resumes them).
    pub pending: Vec<VolumeName>,
    /// Volumes that cannot move, and why.
    pub failed: Vec<(VolumeName, String)>,
    /// Versions the receiver published in this session.
    pub versions_committed: u64,
    /// Why the session ended before its result, if it did.
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Greeting,
    Missing,
    Sending,
    Finished,
}

/// The sending end of one session.
#[derive(Debug)]
pub struct Sender {
    store_id: [u8; 16],
    local: Vec<LocalVolume>,
    window_bytes: u64,
    phase: Phase,
    manifest: Manifest,
    up_to_date: Vec<VolumeName>,
    refused: BTreeMap<VolumeName, String>,
    /// Volumes whose newer versions could not go in the manifest: why, and whether that
    /// lasts (else the next run sends them).
    held_back: BTreeMap<VolumeName, (String, bool)>,
    unreadable: BTreeMap<VolumeName, String>,
    committed: BTreeMap<VolumeName, u32>,
    versions_committed: u64,
    got_hello: bool,
    sends: HashMap<ChunkHash, u32>,
    queue: VecDeque<ChunkHash>,
    reading: usize,
    ready: VecDeque<Message>,
    missing_frames: u64,
    missing_complete: bool,
    requested_bytes: u64,
    done_for: Option<u64>,
    frames_sent: u64,
    acked: u64,
    inflight: VecDeque<u64>,
    inflight_bytes: u64,
    actions: VecDeque<Action>,
}

/// Why the sender ends a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol error: {0}")]
pub struct SenderError(String);

impl Sender {
    /// A sender of `local` (the volumes to replicate, each with all its versions).
    pub fn new(store_id: [u8; 16], local: Vec<LocalVolume>, window_bytes: u64) -> Self {
        let names: Vec<VolumeName> = local.iter().map(|l| l.volume.clone()).collect();
        let mut s = Self {
            store_id,
            local,
            window_bytes: window_bytes.max(1),
            phase: Phase::Greeting,
            manifest: Manifest::new(),
            up_to_date: Vec::new(),
            refused: BTreeMap::new(),
            held_back: BTreeMap::new(),
            unreadable: BTreeMap::new(),
            committed: BTreeMap::new(),
            versions_committed: 0,
            got_hello: false,
            sends: HashMap::new(),
            queue: VecDeque::new(),
            reading: 0,
            ready: VecDeque::new(),
            missing_frames: 0,
            missing_complete: false,
            requested_bytes: 0,
            done_for: None,
            frames_sent: 0,
            acked: 0,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            actions: VecDeque::new(),
        };
        s.actions.push_back(Action::Send(Message::Hello(Hello {
            protocol: PROTOCOL,
            version: PROTOCOL_VERSION,
            role: Role::Sender,
            store_id,
            body: encode_names(&names),
        })));
        s
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether the session is over.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Chunk bytes the receiver asked for so far (for progress).
    pub fn requested_bytes(&self) -> u64 {
        self.requested_bytes
    }

    /// The manifest (empty until the Welcome).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// A frame arrived and decoded.
    pub fn frame(&mut self, message: Message) {
        if self.phase == Phase::Finished {
            return;
        }
        if let Err(e) = self.on_message(message) {
            self.actions
                .push_back(Action::Send(Message::Error(e.to_string())));
            self.finish(Some(e.to_string()), None);
        }
    }

    /// The connection broke or a frame failed to decode.
    pub fn peer_gone(&mut self, reason: String) {
        if self.phase != Phase::Finished {
            self.finish(Some(reason), None);
        }
    }

    fn on_message(&mut self, message: Message) -> Result<(), SenderError> {
        match (self.phase, message) {
            (_, Message::Error(reason)) => {
                self.finish(
                    Some(format!("the receiver ended the session: {reason}")),
                    None,
                );
            }
            (Phase::Greeting, Message::Hello(h)) if !self.got_hello => {
                if h.protocol != PROTOCOL
                    || h.version != PROTOCOL_VERSION
                    || h.role != Role::Receiver
                {
                    return Err(SenderError(format!(
                        "expected a replication receiver speaking version {PROTOCOL_VERSION}, got version {} as {:?}",
                        h.version, h.role
                    )));
                }
                if h.store_id == self.store_id {
                    return Err(SenderError("the receiver is this very store".into()));
                }
                self.got_hello = true;
            }
            (Phase::Greeting, Message::Welcome(chains)) if self.got_hello => self.plan(chains)?,
            (Phase::Missing | Phase::Sending, Message::Missing { last, hashes }) => {
                self.on_missing(last, hashes)?
            }
            (Phase::Sending, Message::Ack(n)) => {
                if n < self.acked || n > self.frames_sent {
                    return Err(SenderError(format!(
                        "acknowledgement {n} outside {}..={}",
                        self.acked, self.frames_sent
                    )));
                }
                while self.acked < n {
                    self.acked += 1;
                    self.inflight_bytes -= self.inflight.pop_front().unwrap_or(0);
                }
            }
            (Phase::Missing | Phase::Sending, Message::Committed { volume, version }) => {
                if !self
                    .manifest
                    .entries()
                    .iter()
                    .any(|e| e.volume == volume && e.version == version)
                {
                    return Err(SenderError(format!(
                        "the receiver committed version {version} of {volume}, which we did not send"
                    )));
                }
                self.versions_committed += 1;
                self.committed.insert(volume, version);
            }
            (Phase::Missing | Phase::Sending, Message::Result(results)) => {
                let manifest_volumes = self.manifest.volumes();
                if results.len() != manifest_volumes.len()
                    || results
                        .iter()
                        .zip(&manifest_volumes)
                        .any(|(r, v)| r.volume != *v)
                {
                    return Err(SenderError("the result does not match the manifest".into()));
                }
                self.finish(None, Some(results));
                return Ok(());
            }
            (phase, m) => {
                return Err(SenderError(format!(
                    "unexpected {} in phase {phase:?}",
                    m.name()
                )));
            }
        }
        self.pump();
        Ok(())
    }

    /// Compare the receiver's chains with ours and send the manifest.
    fn plan(&mut self, chains: Vec<VolumeChain>) -> Result<(), SenderError> {
        if chains.len() != self.local.len()
            || chains
                .iter()
                .zip(&self.local)
                .any(|(c, l)| c.volume != l.volume)
        {
            return Err(SenderError(
                "the receiver's volume list is not the one we sent".into(),
            ));
        }
        let local = std::mem::take(&mut self.local);
        for (theirs, ours) in chains.into_iter().zip(local) {
            // The first of the receiver's versions that is not ours, number and bytes.
            let differs = theirs
                .versions
                .iter()
                .enumerate()
                .find(|(i, (tv, td))| {
                    ours.versions
                        .get(*i)
                        .is_none_or(|(ov, ob)| tv != ov || *td != *blake3::hash(ob).as_bytes())
                })
                .map(|(_, (tv, _))| *tv);
            if let Some(at) = differs {
                self.refused.insert(
                    ours.volume.clone(),
                    format!(
                        "the receiver's versions differ from ours (at version {at}): the stores have diverged"
                    ),
                );
                continue;
            }
            let rest = &ours.versions[theirs.versions.len()..];
            if rest.is_empty() {
                self.up_to_date.push(ours.volume.clone());
            }
            // A version that cannot go (its index is damaged here, or too large for a
            // frame) holds back itself and its descendants; the versions before it go.
            for (version, bytes) in rest {
                let name = &ours.volume;
                let held = if bytes.len() + MANIFEST_FRAME_OVERHEAD_BYTES > frame::MAX_FRAME_BYTES {
                    Some((
                        format!(
                            "version {version}'s index ({} bytes) is larger than a frame",
                            bytes.len()
                        ),
                        true,
                    ))
                } else {
                    match self.manifest.push(name.clone(), *version, bytes.clone()) {
                        Ok(()) => None,
                        Err(ManifestError::TooLarge) => Some((
                            "the manifest is full; the next run sends the rest".to_owned(),
                            false,
                        )),
                        Err(e) => Some((format!("our index is unusable: {e}"), true)),
                    }
                };
                if let Some(reason) = held {
                    self.held_back.insert(name.clone(), reason);
                    break;
                }
            }
        }
        for e in self.manifest.entries() {
            self.actions.push_back(Action::Send(Message::Manifest {
                volume: e.volume.clone(),
                version: e.version,
                index: e.index_bytes.clone(),
            }));
        }
        self.actions.push_back(Action::Send(Message::ManifestEnd {
            entries: self.manifest.len() as u32,
            session_id: self.manifest.session_id(),
        }));
        self.phase = Phase::Missing;
        Ok(())
    }

    fn on_missing(&mut self, last: bool, hashes: Vec<ChunkHash>) -> Result<(), SenderError> {
        if self.missing_complete && !last {
            return Err(SenderError(
                "a re-request must be one whole Missing frame".into(),
            ));
        }
        for h in hashes {
            if self.manifest.chunk_len(&h).is_none() {
                return Err(SenderError(format!(
                    "the receiver asked for chunk {h}, which the manifest does not name"
                )));
            }
            let n = self.sends.entry(h).or_insert(0);
            *n += 1;
            if *n > MAX_SENDS_PER_CHUNK {
                return Err(SenderError(format!(
                    "the receiver asked for chunk {h} more than {MAX_SENDS_PER_CHUNK} times"
                )));
            }
            self.queue.push_back(h);
            self.requested_bytes += self.manifest.chunk_len(&h).unwrap_or_default() as u64;
        }
        self.missing_frames += 1;
        self.missing_complete |= last;
        if self.missing_complete {
            self.phase = Phase::Sending;
        }
        Ok(())
    }

    /// The answer to [`Action::ReadChunk`].
    pub fn chunk_read(&mut self, hash: ChunkHash, encoding: u8, body: Bytes) {
        self.reading -= 1;
        self.ready.push_back(Message::Chunk {
            hash,
            encoding,
            body,
        });
        self.pump();
    }

    /// The answer to [`Action::ReadChunk`] when the chunk cannot be read or verified: the
    /// receiver is told, and every volume whose unsent versions need it fails.
    pub fn chunk_unreadable(&mut self, hash: ChunkHash, reason: String) {
        self.reading -= 1;
        for e in self.manifest.entries() {
            if e.index.chunks.contains(&ChunkRef::Data(hash)) {
                self.unreadable
                    .entry(e.volume.clone())
                    .or_insert_with(|| format!("chunk {hash} is unreadable here: {reason}"));
            }
        }
        self.ready.push_back(Message::Unavailable { hash, reason });
        self.pump();
    }

    /// Issue reads, send what fits in the window, say Done when all is sent.
    fn pump(&mut self) {
        if self.phase == Phase::Finished {
            return;
        }
        self.issue_reads();
        while let Some(m) = self.ready.front() {
            // Small frames count as 4 KiB so the acknowledgements a window can cause stay
            // few (the shell buffers them).
            let len = match m {
                Message::Chunk { body, .. } => body.len() as u64 + 39,
                _ => 0,
            }
            .max(MIN_FRAME_WEIGHT_BYTES);
            if self.inflight_bytes > 0 && self.inflight_bytes + len > self.window_bytes {
                break;
            }
            let Some(m) = self.ready.pop_front() else {
                break;
            };
            self.frames_sent += 1;
            self.inflight.push_back(len);
            self.inflight_bytes += len;
            self.actions.push_back(Action::Send(m));
            self.issue_reads();
        }
        let all_sent = self.queue.is_empty() && self.reading == 0 && self.ready.is_empty();
        if self.phase == Phase::Sending && all_sent && self.done_for != Some(self.missing_frames) {
            self.done_for = Some(self.missing_frames);
            self.actions
                .push_back(Action::Send(Message::Done(self.missing_frames)));
        }
    }

    fn issue_reads(&mut self) {
        while self.reading + self.ready.len() < READ_AHEAD {
            let Some(hash) = self.queue.pop_front() else {
                break;
            };
            let expected_len = self.manifest.chunk_len(&hash).unwrap_or_default();
            self.reading += 1;
            self.actions
                .push_back(Action::ReadChunk { hash, expected_len });
        }
    }

    fn finish(&mut self, error: Option<String>, results: Option<Vec<VolumeResult>>) {
        let mut out = Outcome {
            committed: self.up_to_date.clone(),
            versions_committed: self.versions_committed,
            error,
            ..Outcome::default()
        };
        out.failed
            .extend(self.refused.iter().map(|(v, r)| (v.clone(), r.clone())));
        let last_versions: BTreeMap<&VolumeName, u32> = self
            .manifest
            .entries()
            .iter()
            .map(|e| (&e.volume, e.version))
            .collect();
        for (volume, last) in last_versions {
            let from_result = results
                .as_ref()
                .and_then(|rs| rs.iter().find(|r| r.volume == *volume));
            let state = match from_result {
                Some(r) => r.state,
                None if self.committed.get(volume) == Some(&last) => VolumeState::Committed,
                None if self.unreadable.contains_key(volume) => VolumeState::Failed,
                None => VolumeState::Pending,
            };
            // Sent all it could, but newer versions were held back.
            let state = match (state, self.held_back.get(volume)) {
                (VolumeState::Committed, Some((_, true))) => VolumeState::Failed,
                (VolumeState::Committed, Some((_, false))) => VolumeState::Pending,
                (state, _) => state,
            };
            match state {
                VolumeState::Committed => out.committed.push(volume.clone()),
                VolumeState::Pending => out.pending.push(volume.clone()),
                VolumeState::Failed => {
                    let reason = self
                        .unreadable
                        .get(volume)
                        .cloned()
                        .or_else(|| self.held_back.get(volume).map(|(r, _)| r.clone()))
                        .or_else(|| from_result.map(|r| r.reason.clone()))
                        .unwrap_or_default();
                    out.failed.push((volume.clone(), reason));
                }
            }
        }
        out.committed.sort();
        out.pending.sort();
        out.failed.sort();
        self.phase = Phase::Finished;
        self.actions.push_back(Action::Finish(out));
    }
}
