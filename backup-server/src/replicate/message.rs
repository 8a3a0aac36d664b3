//! The messages of a replication session and their payload encodings (inside frames, see
//! [`super::frame`]). Integers are little-endian; every decode checks each length against
//! what is left and against its bound, and refuses trailing bytes.
//!
//! ```text
//! kind  message      direction  payload
//! 0x01  Hello        both       magic "RHYDSESS" | protocol [8] | version u16 | role u8 |
//!                               store id [16] | body (u32 len + bytes, the protocol's)
//! 0x02  Error        both       reason (u16 len + UTF-8): the session ends, and why
//! 0x10  Welcome      R -> S     u32 V volumes: name (u8 len + bytes) | u32 N |
//!                               N x (version u32 | BLAKE3 of the index [32])
//! 0x11  Manifest     S -> R     name (u8 len + bytes) | version u32 | index (rest)
//! 0x12  ManifestEnd  S -> R     entries u32 | session id [32] (BLAKE3 of every Manifest
//!                               payload in order, each prefixed by its u32 length)
//! 0x13  Missing      R -> S     last u8 (0/1) | u32 N | N x hash [32]
//! 0x14  Chunk        S -> R     hash [32] | encoding u8 | stored body (rest)
//! 0x15  Unavailable  S -> R     hash [32] | reason (u16 len + UTF-8)
//! 0x16  Done         S -> R     Missing frames answered so far, u64
//! 0x17  Ack          R -> S     chunk and unavailable frames received so far, u64
//! 0x18  Committed    R -> S     name (u8 len + bytes) | version u32
//! 0x19  Result       R -> S     u32 V x (name (u8 len + bytes) | state u8 | version u32 |
//!                               missing chunks u64 | reason (u16 len + UTF-8))
//! ```
//!
//! Hello and Error are the session layer ([`super::session`], shared with any later
//! protocol between two sites: its own `protocol` name, its own body); the rest is
//! replication's.

use bytes::Bytes;

use super::frame;
use super::session::{self, put_text, Reader, Wire};
pub use super::session::{Hello, MessageError, Role, MAX_REASON_BYTES};
use crate::chunk::ChunkHash;
use crate::name::VolumeName;

/// The replication protocol's name in Hello.
pub const PROTOCOL: [u8; 8] = *b"RHYDREPL";
/// The replication protocol version this code speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Most volumes one session names (a bound on every per-volume list).
pub const MAX_VOLUMES: usize = 65_536;
/// Most hashes one Missing frame carries (32 bytes each: 4 MiB).
pub const MAX_HASHES_PER_FRAME: usize = 131_072;
const _: () = assert!(MAX_HASHES_PER_FRAME * 32 + 16 < frame::MAX_FRAME_BYTES);
const _: () =
    assert!(MAX_VOLUMES * (1 + 128 + 1 + 4 + 8 + 2 + MAX_REASON_BYTES) < frame::MAX_FRAME_BYTES);

/// A volume's published versions at the receiver, each with the BLAKE3 of its index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeChain {
    /// The volume.
    pub volume: VolumeName,
    /// `(version, BLAKE3 of the index file)`, ascending.
    pub versions: Vec<(u32, [u8; 32])>,
}

/// How a volume ended up at the receiver after a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeState {
    /// At the sender's newest version.
    Committed = 0,
    /// Some versions wait for chunks that did not arrive yet; the next run resumes.
    Pending = 1,
    /// Cannot progress: chunks unreadable at the sender, or a version conflict.
    Failed = 2,
}

/// One volume's line in the Result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeResult {
    /// The volume.
    pub volume: VolumeName,
    /// Its state.
    pub state: VolumeState,
    /// The receiver's newest version of it now (0: none).
    pub version: u32,
    /// Chunks still missing for its unpublished versions.
    pub missing_chunks: u64,
    /// Why it failed (empty otherwise).
    pub reason: String,
}

/// One message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Session layer: who is speaking which protocol.
    Hello(Hello),
    /// Session layer: the peer ends the session, and why.
    Error(String),
    /// The receiver's versions of the volumes the sender named.
    Welcome(Vec<VolumeChain>),
    /// One version the receiver lacks, with its index exactly as stored.
    Manifest {
        /// The volume.
        volume: VolumeName,
        /// The version number (the same at both ends).
        version: u32,
        /// The index file's bytes.
        index: Bytes,
    },
    /// The manifest is complete.
    ManifestEnd {
        /// How many Manifest frames came before.
        entries: u32,
        /// BLAKE3 over the Manifest payloads (see the table above).
        session_id: [u8; 32],
    },
    /// The chunks the receiver lacks (or re-requests after a failed check).
    Missing {
        /// Whether this is the last Missing frame of the answer to the manifest.
        last: bool,
        /// The chunks.
        hashes: Vec<ChunkHash>,
    },
    /// A chunk in its stored form.
    Chunk {
        /// Its name.
        hash: ChunkHash,
        /// The stored encoding byte.
        encoding: u8,
        /// The stored body.
        body: Bytes,
    },
    /// The sender cannot read this chunk.
    Unavailable {
        /// The chunk.
        hash: ChunkHash,
        /// Why.
        reason: String,
    },
    /// Everything asked for so far was sent (as Chunk or Unavailable): the answer to
    /// this many Missing frames. A receiver that asked again since waits for the next.
    Done(u64),
    /// How many Chunk and Unavailable frames the receiver has taken in.
    Ack(u64),
    /// The receiver published this version.
    Committed {
        /// The volume.
        volume: VolumeName,
        /// The version.
        version: u32,
    },
    /// The session's outcome, per volume of the manifest.
    Result(Vec<VolumeResult>),
}

const WELCOME: u8 = 0x10;
const MANIFEST: u8 = 0x11;
const MANIFEST_END: u8 = 0x12;
const MISSING: u8 = 0x13;
const CHUNK: u8 = 0x14;
const UNAVAILABLE: u8 = 0x15;
const DONE: u8 = 0x16;
const ACK: u8 = 0x17;
const COMMITTED: u8 = 0x18;
const RESULT: u8 = 0x19;
// Replication's own kinds stay clear of the session layer's.
const _: () = assert!(WELCOME >= session::FIRST_PROTOCOL_KIND);
const _: () = assert!(session::HELLO < session::FIRST_PROTOCOL_KIND);
const _: () = assert!(session::ERROR < session::FIRST_PROTOCOL_KIND);

impl Message {
    /// The message's name (for errors and logs).
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Error(_) => "Error",
            Message::Welcome(_) => "Welcome",
            Message::Manifest { .. } => "Manifest",
            Message::ManifestEnd { .. } => "ManifestEnd",
            Message::Missing { .. } => "Missing",
            Message::Chunk { .. } => "Chunk",
            Message::Unavailable { .. } => "Unavailable",
            Message::Done(_) => "Done",
            Message::Ack(_) => "Ack",
            Message::Committed { .. } => "Committed",
            Message::Result(_) => "Result",
        }
    }

    /// Append this message as one frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut p = Vec::new();
        let kind = match self {
            Message::Hello(h) => {
                h.encode_payload(&mut p);
                session::HELLO
            }
            Message::Error(reason) => {
                put_text(&mut p, reason);
                session::ERROR
            }
            Message::Welcome(chains) => {
                p.extend_from_slice(&(chains.len() as u32).to_le_bytes());
                for c in chains {
                    put_name(&mut p, &c.volume);
                    p.extend_from_slice(&(c.versions.len() as u32).to_le_bytes());
                    for (v, digest) in &c.versions {
                        p.extend_from_slice(&v.to_le_bytes());
                        p.extend_from_slice(digest);
                    }
                }
                WELCOME
            }
            Message::Manifest {
                volume,
                version,
                index,
            } => {
                put_name(&mut p, volume);
                p.extend_from_slice(&version.to_le_bytes());
                p.extend_from_slice(index);
                MANIFEST
            }
            Message::ManifestEnd {
                entries,
                session_id,
            } => {
                p.extend_from_slice(&entries.to_le_bytes());
                p.extend_from_slice(session_id);
                MANIFEST_END
            }
            Message::Missing { last, hashes } => {
                p.push(u8::from(*last));
                p.extend_from_slice(&(hashes.len() as u32).to_le_bytes());
                hashes.iter().for_each(|h| p.extend_from_slice(&h.0));
                MISSING
            }
            Message::Chunk {
                hash,
                encoding,
                body,
            } => {
                // The body is most of the frame: write the header and body straight into
                // `out` rather than through the payload buffer.
                let len = 1 + 32 + 1 + body.len();
                assert!(len <= frame::MAX_FRAME_BYTES, "chunk frame too large");
                out.extend_from_slice(&(len as u32).to_le_bytes());
                out.push(CHUNK);
                out.extend_from_slice(&hash.0);
                out.push(*encoding);
                out.extend_from_slice(body);
                return;
            }
            Message::Unavailable { hash, reason } => {
                p.extend_from_slice(&hash.0);
                put_text(&mut p, reason);
                UNAVAILABLE
            }
            Message::Done(n) => {
                p.extend_from_slice(&n.to_le_bytes());
                DONE
            }
            Message::Ack(n) => {
                p.extend_from_slice(&n.to_le_bytes());
                ACK
            }
            Message::Committed { volume, version } => {
                put_name(&mut p, volume);
                p.extend_from_slice(&version.to_le_bytes());
                COMMITTED
            }
            Message::Result(results) => {
                p.extend_from_slice(&(results.len() as u32).to_le_bytes());
                for r in results {
                    put_name(&mut p, &r.volume);
                    p.push(r.state as u8);
                    p.extend_from_slice(&r.version.to_le_bytes());
                    p.extend_from_slice(&r.missing_chunks.to_le_bytes());
                    put_text(&mut p, &r.reason);
                }
                RESULT
            }
        };
        frame::encode_into(kind, &p, out);
    }

    /// This message as one frame.
    pub fn to_frame_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Decode a frame's payload.
    pub fn decode(kind: u8, payload: Bytes) -> Result<Self, MessageError> {
        let name = kind_name(kind).ok_or(MessageError::UnknownKind(kind))?;
        let mut r = Reader::new(payload, name);
        let message = match kind {
            session::HELLO => Message::Hello(Hello::decode_payload(&mut r)?),
            session::ERROR => Message::Error(r.text()?),
            WELCOME => {
                let count = r.count(MAX_VOLUMES, 1 + 4)?;
                let mut chains = Vec::with_capacity(count);
                for _ in 0..count {
                    let volume = r.name()?;
                    let n = r.count(usize::MAX, 36)?;
                    let mut versions = Vec::with_capacity(n);
                    for _ in 0..n {
                        versions.push((r.u32()?, r.array::<32>()?));
                    }
                    if !versions.windows(2).all(|w| w[0].0 < w[1].0) {
                        return Err(MessageError::Invalid(name, "versions not ascending"));
                    }
                    chains.push(VolumeChain { volume, versions });
                }
                Message::Welcome(chains)
            }
            MANIFEST => {
                let volume = r.name()?;
                let version = r.u32()?;
                if version == 0 {
                    return Err(MessageError::Invalid(name, "version 0"));
                }
                let index = r.rest();
                Message::Manifest {
                    volume,
                    version,
                    index,
                }
            }
            MANIFEST_END => Message::ManifestEnd {
                entries: r.u32()?,
                session_id: r.array::<32>()?,
            },
            MISSING => {
                let last = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(MessageError::Invalid(name, "flag is not 0 or 1")),
                };
                let n = r.count(MAX_HASHES_PER_FRAME, 32)?;
                let mut hashes = Vec::with_capacity(n);
                for _ in 0..n {
                    hashes.push(ChunkHash(r.array::<32>()?));
                }
                Message::Missing { last, hashes }
            }
            CHUNK => Message::Chunk {
                hash: ChunkHash(r.array::<32>()?),
                encoding: r.u8()?,
                body: r.rest(),
            },
            UNAVAILABLE => Message::Unavailable {
                hash: ChunkHash(r.array::<32>()?),
                reason: r.text()?,
            },
            DONE => Message::Done(r.u64()?),
            ACK => Message::Ack(r.u64()?),
            COMMITTED => Message::Committed {
                volume: r.name()?,
                version: r.u32()?,
            },
            RESULT => {
                let count = r.count(MAX_VOLUMES, 1 + 1 + 4 + 8 + 2)?;
                let mut results = Vec::with_capacity(count);
                for _ in 0..count {
                    let volume = r.name()?;
                    let state = match r.u8()? {
                        0 => VolumeState::Committed,
                        1 => VolumeState::Pending,
                        2 => VolumeState::Failed,
                        _ => return Err(MessageError::Invalid(name, "unknown volume state")),
                    };
                    results.push(VolumeResult {
                        volume,
                        state,
                        version: r.u32()?,
                        missing_chunks: r.u64()?,
                        reason: r.text()?,
                    });
                }
                Message::Result(results)
            }
            _ => unreachable!("kind_name accepted {kind}"),
        };
        r.finish()?;
        Ok(message)
    }
}

impl Wire for Message {
    fn encode_into(&self, out: &mut Vec<u8>) {
        Message::encode_into(self, out);
    }

    fn decode(kind: u8, payload: Bytes) -> Result<Self, MessageError> {
        Message::decode(kind, payload)
    }
}

fn kind_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        session::HELLO => "Hello",
        session::ERROR => "Error",
        WELCOME => "Welcome",
        MANIFEST => "Manifest",
        MANIFEST_END => "ManifestEnd",
        MISSING => "Missing",
        CHUNK => "Chunk",
        UNAVAILABLE => "Unavailable",
        DONE => "Done",
        ACK => "Ack",
        COMMITTED => "Committed",
        RESULT => "Result",
        _ => return None,
    })
}

fn put_name(p: &mut Vec<u8>, name: &VolumeName) {
    // Volume names are at most 128 bytes (checked when made).
    p.push(name.as_str().len() as u8);
    p.extend_from_slice(name.as_str().as_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn vol(name: &str) -> VolumeName {
        VolumeName::new(name).unwrap()
    }

    fn samples() -> Vec<Message> {
        let h = ChunkHash::of(b"x");
        vec![
            Message::Hello(Hello {
                protocol: PROTOCOL,
                version: 1,
                role: Role::Sender,
                store_id: [7; 16],
                body: Bytes::from_static(b"abc"),
            }),
            Message::Error("disk full".into()),
            Message::Welcome(vec![VolumeChain {
                volume: vol("a"),
                versions: vec![(1, [1; 32]), (2, [2; 32])],
            }]),
            Message::Manifest {
                volume: vol("a"),
                version: 3,
                index: Bytes::from_static(b"idx"),
            },
            Message::ManifestEnd {
                entries: 1,
                session_id: [9; 32],
            },
            Message::Missing {
                last: true,
                hashes: vec![h, h],
            },
            Message::Chunk {
                hash: h,
                encoding: 1,
                body: Bytes::from_static(b"body"),
            },
            Message::Unavailable {
                hash: h,
                reason: "unreadable".into(),
            },
            Message::Done(2),
            Message::Ack(5),
            Message::Committed {
                volume: vol("b"),
                version: 2,
            },
            Message::Result(vec![VolumeResult {
                volume: vol("a"),
                state: VolumeState::Failed,
                version: 1,
                missing_chunks: 4,
                reason: "chunk unreadable".into(),
            }]),
        ]
    }

    fn decode_frame(bytes: &[u8]) -> Result<Message, MessageError> {
        let mut d = frame::FrameDecoder::new();
        d.push(bytes);
        let f = d.next_frame().unwrap().unwrap();
        Message::decode(f.kind, f.payload)
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            assert_eq!(
                decode_frame(&m.to_frame_bytes()).unwrap(),
                m,
                "{}",
                m.name()
            );
        }
    }

    #[test]
    fn each_rejection_is_typed() {
        let p = |b: &'static [u8]| Bytes::from_static(b);
        assert_eq!(
            Message::decode(0x7f, p(b"")),
            Err(MessageError::UnknownKind(0x7f))
        );
        assert_eq!(
            Message::decode(ACK, p(b"\x01")),
            Err(MessageError::Truncated("Ack"))
        );
        assert_eq!(
            Message::decode(DONE, p(b"\x01\0\0\0\0\0\0\0\0")),
            Err(MessageError::Trailing("Done", 1))
        );
        assert!(matches!(
            Message::decode(MISSING, p(b"\x02\0\0\0\0")),
            Err(MessageError::Invalid(..))
        ));
        // A count larger than the payload could hold is refused before allocating.
        assert!(matches!(
            Message::decode(MISSING, p(b"\x01\xff\xff\x00\x00")),
            Err(MessageError::Invalid(..))
        ));
        assert!(matches!(
            Message::decode(COMMITTED, p(b"\x02..\x01\0\0\0")),
            Err(MessageError::Invalid(_, "invalid volume name"))
        ));
        assert!(matches!(
            Message::decode(MANIFEST, p(b"\x01a\0\0\0\0")),
            Err(MessageError::Invalid(_, "version 0"))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(kind in any::<u8>(), bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(kind, Bytes::from(bytes));
        }

        /// Any cut of a valid message's payload is refused, never misread.
        #[test]
        fn truncated_payloads_are_refused(which in 0usize..12, cut in any::<prop::sample::Index>()) {
            let m = &samples()[which];
            let bytes = m.to_frame_bytes();
            let payload = &bytes[frame::HEADER_BYTES..];
            let n = cut.index(payload.len().max(1));
            if n < payload.len() {
                let got = Message::decode(bytes[4], Bytes::copy_from_slice(&payload[..n]));
                // Messages ending in "the rest" (Manifest, Chunk) decode shorter ones as
                // different, still valid, messages; they never equal the original.
                let got = got.ok();
                prop_assert_ne!(got.as_ref(), Some(m));
            }
        }
    }
}
