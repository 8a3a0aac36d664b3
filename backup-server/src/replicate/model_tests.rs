//! Model-based tests of the two sans-IO ends together: a sender store and a receiver
//! store in memory, the byte streams between them cut at any point, frames duplicated or
//! damaged, the receiver crashed (losing everything not yet durable), sessions replayed.
//! After every step the receiver's visible versions must be a prefix of the sender's
//! chain with byte-identical indexes, and every chunk they name must be durable and
//! intact; once the faults stop, one clean session must bring every volume up to date.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use proptest::prelude::*;

use super::frame::FrameDecoder;
use super::message::{Message, VolumeChain};
use super::receiver::{self, LocalState, PriorSession, Receiver};
use super::sender::{self, LocalVolume, Outcome, Sender};
use crate::chunk::{self, ChunkHash};
use crate::index::{ChunkRef, Index};
use crate::name::VolumeName;
use crate::size::ChunkSize;

const SENDER_ID: [u8; 16] = [1; 16];
const RECEIVER_ID: [u8; 16] = [2; 16];

/// The sending store: versions per volume and chunks in stored form.
#[derive(Clone, Debug)]
struct SenderStore {
    volumes: BTreeMap<VolumeName, Vec<(u32, Bytes)>>,
    chunks: HashMap<ChunkHash, Bytes>,
    unreadable: HashSet<ChunkHash>,
}

/// The receiving store: durable state survives a crash, the rest does not.
#[derive(Clone, Debug, Default)]
struct ReceiverStore {
    durable_chunks: HashMap<ChunkHash, Bytes>,
    written_chunks: HashMap<ChunkHash, Bytes>,
    published: BTreeMap<VolumeName, BTreeMap<u32, Bytes>>,
    /// (session id, sender, arrived) — durable.
    record: Option<([u8; 32], [u8; 16], Vec<ChunkHash>)>,
    /// Volumes given versions of another origin on purpose (not checked as a prefix).
    foreign: HashSet<VolumeName>,
}

impl ReceiverStore {
    fn crash(&mut self) {
        self.written_chunks.clear();
    }

    fn chunk(&self, h: &ChunkHash) -> Option<&Bytes> {
        self.durable_chunks
            .get(h)
            .or_else(|| self.written_chunks.get(h))
    }
}

/// `len` bytes of noise named by `n` (BLAKE3's output stream).
fn chunk_data(n: u16, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&n.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// A sender store from a spec: per volume, per version, the chunk numbers (0: zero).
/// Chunks are 64 KiB except a volume's last, which is 1000 bytes.
fn sender_store(spec: &[Vec<Vec<u16>>]) -> SenderStore {
    let mut s = SenderStore {
        volumes: BTreeMap::new(),
        chunks: HashMap::new(),
        unreadable: HashSet::new(),
    };
    let chunk_size = ChunkSize::from_shift(16).unwrap();
    for (vi, versions) in spec.iter().enumerate() {
        let name = VolumeName::new(&format!("vol{vi}")).unwrap();
        let mut list = Vec::new();
        for (i, chunks) in versions.iter().enumerate() {
            let n = chunks.len();
            let size = (n as u64 - 1) * 65536 + 1000;
            let refs = chunks
                .iter()
                .enumerate()
                .map(|(pos, &c)| {
                    if c == 0 {
                        return ChunkRef::Zero;
                    }
                    let len = if pos + 1 == n { 1000 } else { 65536 };
                    // The content depends on its length too, so one name has one length.
                    let data = chunk_data(c * 2 + u16::from(len == 1000), len);
                    let h = ChunkHash::of(&data);
                    s.chunks
                        .insert(h, Bytes::from(chunk::encode(Bytes::from(data)).to_vec()));
                    ChunkRef::Data(h)
                })
                .collect();
            let index = Index {
                volume_size_bytes: size,
                chunk_size,
                parent_version: i as u32,
                created_unix_secs: 7,
                chunks: refs,
            };
            list.push((i as u32 + 1, Bytes::from(index.encode().unwrap())));
        }
        s.volumes.insert(name, list);
    }
    s
}

/// Faults of one session.
#[derive(Clone, Debug, Default)]
struct Faults {
    /// Cut the sender-to-receiver stream after this many bytes.
    cut_at: Option<u64>,
    /// Cut the receiver-to-sender stream after this many bytes.
    cut_back_at: Option<u64>,
    /// Deliver these sender frames (by number) twice.
    duplicate: HashSet<usize>,
    /// Flip a byte in the body of these sender frames (by number), if chunks.
    corrupt: HashSet<usize>,
    /// Crash the receiver after this many handled events (losing what is not durable).
    crash_after: Option<usize>,
}

/// What one session did.
#[derive(Debug)]
struct SessionRun {
    outcome: Option<Outcome>,
    chunk_bytes_sent: u64,
    /// Length of each sender frame, in order.
    frame_lens: Vec<usize>,
    /// Bytes the receiver sent.
    bytes_back: u64,
}

/// Every published version is a prefix of the sender's chain, byte for byte, and every
/// chunk it names is durable and intact.
fn check_invariants(s: &SenderStore, r: &ReceiverStore) {
    for (volume, published) in &r.published {
        if r.foreign.contains(volume) {
            continue;
        }
        let ours = &s.volumes[volume];
        let versions: Vec<u32> = published.keys().copied().collect();
        assert_eq!(
            versions,
            ours.iter()
                .map(|(v, _)| *v)
                .take(versions.len())
                .collect::<Vec<_>>(),
            "{volume}: not a prefix"
        );
        for (v, bytes) in published {
            let theirs = &ours.iter().find(|(x, _)| x == v).unwrap().1;
            assert_eq!(bytes, theirs, "{volume}@{v}: index differs");
            let index = Index::decode(bytes).unwrap();
            for (i, c) in index.chunks.iter().enumerate() {
                if let ChunkRef::Data(h) = c {
                    let stored = r.durable_chunks.get(h).unwrap_or_else(|| {
                        panic!("{volume}@{v} names chunk {h}, which is not durable")
                    });
                    chunk::decode(h, stored, index.chunk_len(i as u64)).unwrap();
                }
            }
        }
    }
}

/// Run one session between the two stores.
/// The sender's view of its store.
fn local(s: &SenderStore) -> Vec<LocalVolume> {
    s.volumes
        .iter()
        .map(|(v, versions)| LocalVolume {
            volume: v.clone(),
            versions: versions.clone(),
        })
        .collect()
}

fn run_session(s: &SenderStore, r: &mut ReceiverStore, faults: &Faults) -> SessionRun {
    let mut snd = Sender::new(SENDER_ID, local(s), 3 * 65536);
    let mut rcv = Receiver::new(RECEIVER_ID);
    let mut to_r = FrameDecoder::new();
    let mut to_s = FrameDecoder::new();
    let (mut sent, mut back, mut chunk_bytes) = (0u64, 0u64, 0u64);
    // One TCP connection: a cut, a crash or either end finishing closes both ways; each
    // end then reads what was already on its way, and sees the end.
    let mut open = true;
    let mut frame_lens = Vec::new();
    let mut frame_no = 0usize;
    let mut events = 0usize;
    let mut outcome = None;
    let mut crashed = false;
    for _round in 0..100_000 {
        let mut moved = false;
        // The sender's actions.
        while let Some(a) = snd.poll_action() {
            moved = true;
            match a {
                sender::Action::Send(m) => {
                    if !open {
                        continue;
                    }
                    let mut bytes = m.to_frame_bytes();
                    if let Message::Chunk { body, .. } = &m {
                        chunk_bytes += body.len() as u64;
                        if faults.corrupt.contains(&frame_no) {
                            let last = bytes.len() - 1;
                            bytes[last] ^= 0x55;
                        }
                    }
                    let copies = if faults.duplicate.contains(&frame_no) {
                        2
                    } else {
                        1
                    };
                    frame_no += 1;
                    frame_lens.push(bytes.len());
                    for _ in 0..copies {
                        let room = faults.cut_at.map_or(u64::MAX, |c| c.saturating_sub(sent));
                        let n = (bytes.len() as u64).min(room) as usize;
                        to_r.push(&bytes[..n]);
                        sent += n as u64;
                        if n < bytes.len() {
                            open = false;
                        }
                    }
                }
                sender::Action::ReadChunk { hash, .. } => {
                    if s.unreadable.contains(&hash) {
                        snd.chunk_unreadable(hash, "unreadable".into());
                    } else {
                        let stored = &s.chunks[&hash];
                        snd.chunk_read(hash, stored[0], stored.slice(1..));
                    }
                }
                sender::Action::Finish(o) => {
                    outcome = Some(o);
                    open = false;
                }
            }
        }
        // The receiver's actions.
        while let Some(a) = rcv.poll_action() {
            moved = true;
            events += 1;
            if !crashed && faults.crash_after.is_some_and(|n| events > n) {
                crashed = true;
                r.crash();
                open = false;
                snd.peer_gone("the receiver crashed".into());
            }
            if crashed {
                continue; // a dead process performs nothing
            }
            handle_receiver_action(a, &mut rcv, r, &mut to_s, &mut back, faults, &mut open);
            check_invariants(s, r);
        }
        if rcv.is_finished() {
            open = false;
        }
        // Deliver frames.
        match to_r.next_frame() {
            Ok(Some(f)) if !crashed => {
                moved = true;
                match Message::decode(f.kind, f.payload) {
                    Ok(m) => rcv.frame(m),
                    Err(e) => rcv.peer_gone(Some(e.to_string())),
                }
            }
            Ok(Some(_)) => {}
            Ok(None) if !open && !crashed && rcv.accepts_frames() => {
                moved = true;
                rcv.peer_gone(Some("cut".into()));
            }
            Ok(None) => {}
            Err(e) => {
                if !crashed {
                    rcv.peer_gone(Some(e.to_string()));
                }
                moved = true;
            }
        }
        match to_s.next_frame() {
            Ok(Some(f)) => {
                moved = true;
                match Message::decode(f.kind, f.payload) {
                    Ok(m) => snd.frame(m),
                    Err(e) => snd.peer_gone(e.to_string()),
                }
            }
            Ok(None) if !open && !snd.is_finished() => {
                moved = true;
                snd.peer_gone("cut".into());
            }
            _ => {}
        }
        if (rcv.is_finished() || crashed) && snd.is_finished() && !moved {
            break;
        }
        if !moved {
            // Both wait on each other with nothing in flight: a liveness bug.
            panic!("session stalled: sender {snd:?}");
        }
    }
    if !crashed {
        assert!(rcv.is_finished(), "the receiver did not finish");
    }
    check_invariants(s, r);
    SessionRun {
        outcome,
        chunk_bytes_sent: chunk_bytes,
        frame_lens,
        bytes_back: back,
    }
}

fn handle_receiver_action(
    a: receiver::Action,
    rcv: &mut Receiver,
    r: &mut ReceiverStore,
    to_s: &mut FrameDecoder,
    back: &mut u64,
    faults: &Faults,
    open: &mut bool,
) {
    match a {
        receiver::Action::Send(m) => {
            if *open {
                let bytes = m.to_frame_bytes();
                let room = faults
                    .cut_back_at
                    .map_or(u64::MAX, |c| c.saturating_sub(*back));
                let n = (bytes.len() as u64).min(room) as usize;
                to_s.push(&bytes[..n]);
                *back += n as u64;
                if n < bytes.len() {
                    *open = false;
                    rcv.peer_gone(Some("cut".into()));
                }
            }
        }
        receiver::Action::Load { sender_id, volumes } => {
            let mut state = LocalState::default();
            for v in volumes {
                let published = r.published.get(&v).cloned().unwrap_or_default();
                state.chains.push(VolumeChain {
                    volume: v,
                    versions: published
                        .iter()
                        .map(|(n, b)| (*n, *blake3::hash(b).as_bytes()))
                        .collect(),
                });
                if let Some((_, b)) = published.iter().next_back() {
                    for c in Index::decode(b).unwrap().chunks {
                        if let ChunkRef::Data(h) = c {
                            state.held.insert(h);
                        }
                    }
                }
            }
            state.record =
                r.record
                    .as_ref()
                    .filter(|(_, s, _)| *s == sender_id)
                    .map(|(id, s, arrived)| PriorSession {
                        session_id: *id,
                        sender_id: *s,
                        arrived: arrived.clone(),
                    });
            rcv.loaded(state);
        }
        receiver::Action::SaveRecord {
            sender_id,
            manifest,
        } => {
            r.record = Some((manifest.session_id(), sender_id, Vec::new()));
            rcv.record_saved();
        }
        receiver::Action::CheckPresent(wanted) => {
            let found = wanted
                .into_iter()
                .filter(|(h, len)| {
                    r.chunk(h)
                        .is_some_and(|b| chunk::decode(h, b, *len).is_ok())
                })
                .map(|(h, _)| h)
                .collect();
            rcv.checked(found);
        }
        receiver::Action::StoreChunk {
            hash,
            expected_len,
            encoding,
            body,
        } => {
            let mut stored = vec![encoding];
            stored.extend_from_slice(&body);
            match chunk::decode(&hash, &stored, expected_len) {
                Ok(_) => {
                    r.written_chunks.insert(hash, Bytes::from(stored));
                    rcv.chunk_written(hash, body.len() as u64 + 1);
                }
                Err(e) => rcv.chunk_rejected(hash, e.to_string()),
            }
        }
        receiver::Action::SyncAndRecord(hashes) => {
            for h in &hashes {
                let b = r
                    .chunk(h)
                    .cloned()
                    .unwrap_or_else(|| panic!("sync of chunk {h}, never written"));
                r.durable_chunks.insert(*h, b);
            }
            r.record
                .as_mut()
                .expect("a record exists before any chunk")
                .2
                .extend(hashes.iter().copied());
            rcv.synced(hashes);
        }
        receiver::Action::Publish {
            volume,
            version,
            index,
        } => {
            let versions = r.published.entry(volume.clone()).or_default();
            match versions.get(&version) {
                Some(b) if *b == index => rcv.published(volume, version, Ok(())),
                Some(_) => rcv.published(volume, version, Err("conflict".into())),
                None => {
                    versions.insert(version, index);
                    rcv.published(volume, version, Ok(()));
                }
            }
        }
        receiver::Action::Finish { complete, .. } => {
            if complete {
                r.record = None;
            }
        }
    }
}

fn up_to_date(s: &SenderStore, r: &ReceiverStore) -> bool {
    s.volumes
        .iter()
        .all(|(v, versions)| r.published.get(v).map(|p| p.len()) == Some(versions.len()))
}

/// Distinct data chunks the receiver lacks, and their stored bytes.
fn missing_bytes(s: &SenderStore, r: &ReceiverStore) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    for versions in s.volumes.values() {
        for (_, b) in versions {
            for c in Index::decode(b).unwrap().chunks {
                if let ChunkRef::Data(h) = c {
                    if r.chunk(&h).is_none() && seen.insert(h) {
                        total += s.chunks[&h].len() as u64 - 1;
                    }
                }
            }
        }
    }
    total
}

fn arb_spec() -> impl Strategy<Value = Vec<Vec<Vec<u16>>>> {
    let version = proptest::collection::vec(0u16..12, 1..5);
    proptest::collection::vec(proptest::collection::vec(version, 1..4), 1..4)
}

fn arb_faults() -> impl Strategy<Value = Faults> {
    (
        proptest::option::of(0u64..1_200_000),
        proptest::option::of(0u64..600),
        proptest::collection::hash_set(0usize..40, 0..3),
        proptest::collection::hash_set(0usize..40, 0..3),
        proptest::option::of(0usize..60),
    )
        .prop_map(
            |(cut_at, cut_back_at, duplicate, corrupt, crash_after)| Faults {
                cut_at,
                cut_back_at,
                duplicate,
                corrupt,
                crash_after,
            },
        )
}

#[test]
fn a_clean_session_replicates_everything_and_a_second_sends_no_chunk() {
    let s = sender_store(&[vec![vec![1, 2, 0], vec![1, 3, 0]], vec![vec![4, 5]]]);
    let mut r = ReceiverStore::default();
    let missing = missing_bytes(&s, &r);
    let run = run_session(&s, &mut r, &Faults::default());
    let o = run.outcome.unwrap();
    assert_eq!(
        (o.committed.len(), o.pending.len(), o.failed.len()),
        (2, 0, 0)
    );
    assert!(o.error.is_none(), "{o:?}");
    assert_eq!(run.chunk_bytes_sent, missing);
    assert!(up_to_date(&s, &r));
    assert!(r.record.is_none(), "a complete session leaves no record");
    let again = run_session(&s, &mut r, &Faults::default());
    assert_eq!(again.chunk_bytes_sent, 0);
    assert_eq!(again.outcome.unwrap().committed.len(), 2);
}

/// Cut points of a stream of frames of these lengths: every byte of every frame, except
/// inside chunk bodies, where the first and last bytes and the middle stand for the rest.
fn cut_points(frame_lens: &[usize]) -> Vec<u64> {
    let mut points = Vec::new();
    let mut start = 0u64;
    for &len in frame_lens {
        let len = len as u64;
        if len <= 128 {
            points.extend(start..start + len);
        } else {
            points.extend(start..start + 64);
            points.extend([start + len / 2, start + len - 2, start + len - 1]);
        }
        start += len;
    }
    points.push(start);
    points
}

/// The sender-to-receiver stream cut at every point, each cut followed by a clean
/// session: at every cut the invariants hold, and the resumed session sends no chunk
/// byte the receiver already took in, beyond the window that was in flight.
#[test]
fn cut_at_every_point_then_resume() {
    let s = sender_store(&[vec![vec![1, 2], vec![1, 3, 0]], vec![vec![4, 0]]]);
    let clean = run_session(&s, &mut ReceiverStore::default(), &Faults::default());
    for cut in cut_points(&clean.frame_lens) {
        let mut r = ReceiverStore::default();
        let missing = missing_bytes(&s, &r);
        let first = run_session(
            &s,
            &mut r,
            &Faults {
                cut_at: Some(cut),
                ..Faults::default()
            },
        );
        let second = run_session(&s, &mut r, &Faults::default());
        assert!(
            up_to_date(&s, &r),
            "cut at {cut}: not up to date after resuming"
        );
        assert!(second.outcome.unwrap().error.is_none());
        // What was sent twice is at most the window that was in flight at the cut.
        let sent = first.chunk_bytes_sent + second.chunk_bytes_sent;
        assert!(
            sent <= missing + 3 * 65536,
            "cut at {cut}: {sent} for {missing}"
        );
    }
    // The other way: every byte of what the receiver says.
    for cut in 0..=clean.bytes_back {
        let mut r = ReceiverStore::default();
        run_session(
            &s,
            &mut r,
            &Faults {
                cut_back_at: Some(cut),
                ..Faults::default()
            },
        );
        run_session(&s, &mut r, &Faults::default());
        assert!(
            up_to_date(&s, &r),
            "cut back at {cut}: not up to date after resuming"
        );
    }
}

#[test]
fn an_unreadable_chunk_fails_its_volume_only() {
    let mut s = sender_store(&[vec![vec![1, 2]], vec![vec![3, 4]], vec![vec![5]]]);
    let bad = Index::decode(&s.volumes[&VolumeName::new("vol1").unwrap()][0].1)
        .unwrap()
        .chunks[1];
    let ChunkRef::Data(bad) = bad else { panic!() };
    s.unreadable.insert(bad);
    let mut r = ReceiverStore::default();
    let o = run_session(&s, &mut r, &Faults::default()).outcome.unwrap();
    assert_eq!(o.committed.len(), 2);
    assert_eq!(o.failed.len(), 1);
    assert_eq!(o.failed[0].0.as_str(), "vol1");
    assert!(!r.published.contains_key(&VolumeName::new("vol1").unwrap()));
    assert!(r.record.is_some(), "an incomplete session keeps its record");
    s.unreadable.clear();
    let o = run_session(&s, &mut r, &Faults::default()).outcome.unwrap();
    assert_eq!((o.committed.len(), o.failed.len()), (3, 0));
}

#[test]
fn a_chunk_damaged_in_flight_is_asked_for_again_and_never_recorded() {
    let s = sender_store(&[vec![vec![1, 2, 3]]]);
    let mut r = ReceiverStore::default();
    // Frames: Hello, Manifest, ManifestEnd, then chunks: damage the first two chunks.
    let faults = Faults {
        corrupt: [3, 4].into(),
        ..Faults::default()
    };
    let run = run_session(&s, &mut r, &faults);
    assert!(run.outcome.unwrap().error.is_none());
    assert!(up_to_date(&s, &r));
}

#[test]
fn a_diverged_receiver_is_refused() {
    let s = sender_store(&[vec![vec![1], vec![2]]]);
    let mut r = ReceiverStore::default();
    let other = sender_store(&[vec![vec![9]]]);
    let vol = VolumeName::new("vol0").unwrap();
    r.published
        .entry(vol.clone())
        .or_default()
        .insert(1, other.volumes[&vol][0].1.clone());
    for (h, b) in &other.chunks {
        r.durable_chunks.insert(*h, b.clone());
    }
    r.foreign.insert(vol.clone());
    let o = run_session(&s, &mut r, &Faults::default()).outcome.unwrap();
    assert_eq!(o.failed.len(), 1);
    assert!(o.failed[0].1.contains("diverged"), "{:?}", o.failed);
    assert_eq!(
        r.published[&vol].len(),
        1,
        "the diverged volume is left alone"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Sessions with random faults (cuts both ways, duplicated and damaged frames,
    /// receiver crashes), replayed until one runs clean: the invariants hold after every
    /// step, and the clean session brings everything up to date.
    #[test]
    fn faulty_sessions_never_half_apply_and_then_complete(
        spec in arb_spec(),
        sessions in proptest::collection::vec(arb_faults(), 1..5),
        unreadable in proptest::option::of(1u16..12),
    ) {
        let mut s = sender_store(&spec);
        if let Some(u) = unreadable {
            let h: Vec<ChunkHash> = s.chunks.keys().copied().filter(|h| h.0[0] as u16 % 12 == u).collect();
            s.unreadable.extend(h);
        }
        let mut r = ReceiverStore::default();
        for faults in &sessions {
            run_session(&s, &mut r, faults);
        }
        // A replay with no fault resumes and finishes.
        let last = run_session(&s, &mut r, &Faults::default());
        let o = last.outcome.expect("a clean session has an outcome");
        prop_assert!(o.error.is_none(), "{:?}", o);
        if s.unreadable.is_empty() {
            prop_assert!(up_to_date(&s, &r));
            prop_assert_eq!(o.committed.len(), s.volumes.len());
            prop_assert!(r.record.is_none());
        } else {
            prop_assert_eq!(o.committed.len() + o.failed.len(), s.volumes.len());
            s.unreadable.clear();
            run_session(&s, &mut r, &Faults::default());
            prop_assert!(up_to_date(&s, &r));
        }
    }
}

/// Drive a receiver by hand up to the point where it asked for chunks.
fn receiver_asking(s: &SenderStore) -> (Receiver, Vec<receiver::Action>) {
    let mut rcv = Receiver::new(RECEIVER_ID);
    let mut snd = Sender::new(SENDER_ID, local(s), 1 << 20);
    let mut r = ReceiverStore::default();
    let (mut to_s, mut back, mut open) = (FrameDecoder::new(), 0, true);
    let mut seen = Vec::new();
    // Hello, then the receiver's Hello and Welcome, then the manifest.
    for _ in 0..4 {
        while let Some(sender::Action::Send(m)) = snd.poll_action() {
            rcv.frame(m);
        }
        while let Some(a) = rcv.poll_action() {
            seen.push(a.clone());
            handle_receiver_action(
                a,
                &mut rcv,
                &mut r,
                &mut to_s,
                &mut back,
                &Faults::default(),
                &mut open,
            );
        }
        while let Ok(Some(f)) = to_s.next_frame() {
            snd.frame(Message::decode(f.kind, f.payload).unwrap());
        }
    }
    (rcv, seen)
}

fn ends_with_error(rcv: &mut Receiver) -> bool {
    let mut error_sent = false;
    while let Some(a) = rcv.poll_action() {
        match a {
            receiver::Action::Send(Message::Error(_)) => error_sent = true,
            receiver::Action::Publish { .. } => panic!("published after a protocol error"),
            receiver::Action::Finish { error: Some(_), .. } => return error_sent,
            _ => {}
        }
    }
    false
}

#[test]
fn a_lying_sender_ends_the_session_and_publishes_nothing() {
    let s = sender_store(&[vec![vec![1, 2]]]);
    let (_, seen) = receiver_asking(&s);
    assert!(
        seen.iter()
            .any(|a| matches!(a, receiver::Action::Send(Message::Missing { .. }))),
        "{seen:?}"
    );
    // A chunk nobody asked for.
    let (mut rcv, _) = receiver_asking(&s);
    let body = Bytes::from_static(b"anything");
    rcv.frame(Message::Chunk {
        hash: ChunkHash::of(b"anything"),
        encoding: 0,
        body,
    });
    assert!(ends_with_error(&mut rcv));
    // Done while chunks are still owed.
    let (mut rcv, _) = receiver_asking(&s);
    rcv.frame(Message::Done(1));
    assert!(ends_with_error(&mut rcv));
    // Done claiming to answer requests never made.
    let (mut rcv, _) = receiver_asking(&s);
    rcv.frame(Message::Done(9));
    assert!(ends_with_error(&mut rcv));
    // A manifest whose end does not match it.
    let mut rcv = Receiver::new(RECEIVER_ID);
    let mut snd = Sender::new(SENDER_ID, Vec::new(), 1 << 20);
    if let Some(sender::Action::Send(hello)) = snd.poll_action() {
        rcv.frame(hello);
    }
    while rcv.poll_action().is_some() {}
    rcv.loaded(LocalState::default());
    while rcv.poll_action().is_some() {}
    rcv.frame(Message::ManifestEnd {
        entries: 0,
        session_id: [3; 32],
    });
    assert!(ends_with_error(&mut rcv));
}

#[test]
fn a_receiver_cannot_make_the_sender_send_what_the_manifest_does_not_name() {
    let s = sender_store(&[vec![vec![1]]]);
    let mut snd = Sender::new(SENDER_ID, local(&s), 1 << 20);
    snd.frame(Message::Hello(super::message::Hello {
        protocol: super::message::PROTOCOL,
        version: super::message::PROTOCOL_VERSION,
        role: super::message::Role::Receiver,
        store_id: RECEIVER_ID,
        body: Bytes::new(),
    }));
    snd.frame(Message::Welcome(vec![VolumeChain {
        volume: VolumeName::new("vol0").unwrap(),
        versions: Vec::new(),
    }]));
    snd.frame(Message::Missing {
        last: true,
        hashes: vec![ChunkHash::of(b"secret")],
    });
    let mut reads = 0;
    let mut finished_with_error = false;
    while let Some(a) = snd.poll_action() {
        match a {
            sender::Action::ReadChunk { .. } => reads += 1,
            sender::Action::Finish(o) => finished_with_error = o.error.is_some(),
            _ => {}
        }
    }
    assert_eq!(reads, 0);
    assert!(finished_with_error);
}

#[test]
fn a_damaged_index_at_the_sender_holds_back_that_version_and_its_descendants() {
    let mut s = sender_store(&[vec![vec![1], vec![2], vec![3]], vec![vec![4]]]);
    let vol0 = VolumeName::new("vol0").unwrap();
    let versions = s.volumes.get_mut(&vol0).unwrap();
    let mut damaged = versions[1].1.to_vec();
    damaged[20] ^= 1;
    versions[1].1 = Bytes::from(damaged);
    let mut r = ReceiverStore::default();
    let o = run_session(&s, &mut r, &Faults::default()).outcome.unwrap();
    assert!(o.error.is_none(), "{o:?}");
    assert_eq!(o.committed, vec![VolumeName::new("vol1").unwrap()]);
    assert_eq!(o.failed.len(), 1);
    assert!(o.failed[0].1.contains("unusable"), "{:?}", o.failed);
    assert_eq!(
        r.published[&vol0].keys().copied().collect::<Vec<_>>(),
        vec![1]
    );
}
