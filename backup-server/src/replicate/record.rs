//! The receiver's session record: the manifest, made durable before any data is asked
//! for, followed by one arrival record per chunk made durable. One file per sending
//! store, `replication/SENDER/session` under a local store's root (SENDER: the sender's
//! store id, 32 hex digits). Integers little-endian:
//!
//! ```text
//! offset  size  field
//!      0     8  magic "RHYDRSES"
//!      8     2  format version = 1
//!     10     2  flags, must be 0
//!     12     4  manifest entry count V
//!     16     8  manifest length M in bytes
//!     24    32  session id: BLAKE3 of the manifest (see manifest.rs), so it checks it
//!     56    16  the sending store's id
//!     72     8  creation time, seconds since the Unix epoch
//!     80     8  header checksum: the first 8 bytes of BLAKE3(bytes 0..80)
//!     88     M  manifest: V x (u32 length L | L bytes: a Manifest message payload)
//!   88+M  48*K  arrival records, appended:
//!                 0  32  chunk hash (stored, verified and fsynced before this is written)
//!                32   8  sequence number: 0, 1, 2, ... in file order
//!                40   8  checksum: the first 8 bytes of BLAKE3(session id | bytes 0..40)
//! ```
//!
//! The header and manifest are written to a temporary file, fsynced, renamed into place
//! and the directory fsynced, so a record exists whole or not at all. Arrival records are
//! appended in batches, each batch fsynced before the chunks in it count as arrived. A
//! crash can tear only the last batch: reading stops at the first record whose sequence
//! number or checksum is wrong, and the file is cut back to the good prefix before the
//! next append. A chunk whose record was lost is found again in the store (and
//! re-verified) or asked for again: a lost record costs a re-check, never a wrong answer.

use bytes::Bytes;

use super::manifest::{self, Manifest, ManifestError};
use super::message::{Message, MessageError};
use crate::chunk::ChunkHash;

/// The magic at offset 0.
pub const MAGIC: [u8; 8] = *b"RHYDRSES";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Header length.
pub const HEADER_BYTES: usize = 88;
/// One arrival record's length.
pub const ARRIVAL_BYTES: usize = 48;
const CHECKSUM_OFFSET: usize = 80;

const _: () = assert!(CHECKSUM_OFFSET + 8 == HEADER_BYTES);
const _: () = assert!(32 + 8 + 8 == ARRIVAL_BYTES);

/// Why a session record is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than its header or its manifest.
    #[error("truncated session record")]
    Truncated,
    /// Not a session record.
    #[error("bad magic")]
    BadMagic,
    /// Written by another format version.
    #[error("unsupported session record format {0}")]
    UnsupportedVersion(u16),
    /// The header checksum does not match.
    #[error("header checksum mismatch")]
    HeaderChecksum,
    /// The manifest does not hash to the session id, or is malformed.
    #[error("manifest is damaged: {0}")]
    Manifest(String),
}

impl From<ManifestError> for RecordError {
    fn from(e: ManifestError) -> Self {
        Self::Manifest(e.to_string())
    }
}

impl From<MessageError> for RecordError {
    fn from(e: MessageError) -> Self {
        Self::Manifest(e.to_string())
    }
}

/// A decoded session record.
#[derive(Clone, Debug)]
pub struct Record {
    /// The sending store.
    pub sender_id: [u8; 16],
    /// The session id (BLAKE3 of the manifest).
    pub session_id: [u8; 32],
    /// Creation time.
    pub created_unix_secs: u64,
    /// The manifest.
    pub manifest: Manifest,
    /// Chunks recorded as arrived, in order.
    pub arrived: Vec<ChunkHash>,
    /// Length of the valid prefix of the file (header, manifest, good arrival records);
    /// appends start here.
    pub valid_len: u64,
}

/// The header and manifest of a new record.
pub fn encode_head(sender_id: [u8; 16], manifest: &Manifest, created_unix_secs: u64) -> Vec<u8> {
    let mut body = Vec::new();
    for e in manifest.entries() {
        let p = manifest::entry_payload(&e.volume, e.version, &e.index_bytes);
        body.extend_from_slice(&(p.len() as u32).to_le_bytes());
        body.extend_from_slice(&p);
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&manifest.session_id());
    out.extend_from_slice(&sender_id);
    out.extend_from_slice(&created_unix_secs.to_le_bytes());
    debug_assert_eq!(out.len(), CHECKSUM_OFFSET);
    let sum = blake3::hash(&out);
    out.extend_from_slice(&sum.as_bytes()[..8]);
    out.extend_from_slice(&body);
    out
}

/// Arrival records `first_seq..` for `hashes`.
pub fn encode_arrivals(session_id: &[u8; 32], first_seq: u64, hashes: &[ChunkHash]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hashes.len() * ARRIVAL_BYTES);
    for (i, h) in hashes.iter().enumerate() {
        let start = out.len();
        out.extend_from_slice(&h.0);
        out.extend_from_slice(&(first_seq + i as u64).to_le_bytes());
        let sum = arrival_checksum(session_id, &out[start..]);
        out.extend_from_slice(&sum);
    }
    out
}

fn arrival_checksum(session_id: &[u8; 32], record: &[u8]) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    h.update(session_id);
    h.update(&record[..40]);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    out
}

/// Decode a record file.
pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
    let header = bytes.get(..HEADER_BYTES).ok_or(RecordError::Truncated)?;
    if header[..8] != MAGIC {
        return Err(RecordError::BadMagic);
    }
    let format = u16::from_le_bytes([header[8], header[9]]);
    if format != FORMAT_VERSION {
        return Err(RecordError::UnsupportedVersion(format));
    }
    if blake3::hash(&header[..CHECKSUM_OFFSET]).as_bytes()[..8] != header[CHECKSUM_OFFSET..] {
        return Err(RecordError::HeaderChecksum);
    }
    let arr = |o: usize, n: usize| &header[o..o + n];
    if arr(10, 2) != [0, 0] {
        return Err(RecordError::Manifest("unknown flags".into()));
    }
    let entries = u32::from_le_bytes(arr(12, 4).try_into().unwrap_or_default()) as usize;
    let body_len = u64::from_le_bytes(arr(16, 8).try_into().unwrap_or_default());
    let mut session_id = [0u8; 32];
    session_id.copy_from_slice(arr(24, 32));
    let mut sender_id = [0u8; 16];
    sender_id.copy_from_slice(arr(56, 16));
    let created_unix_secs = u64::from_le_bytes(arr(72, 8).try_into().unwrap_or_default());
    let body_end = usize::try_from(body_len)
        .ok()
        .and_then(|l| l.checked_add(HEADER_BYTES))
        .filter(|&end| end <= bytes.len())
        .ok_or(RecordError::Truncated)?;
    let mut body = &bytes[HEADER_BYTES..body_end];
    let mut manifest = Manifest::new();
    while !body.is_empty() {
        let len = body
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or(RecordError::Truncated)?;
        let payload = body.get(4..4 + len).ok_or(RecordError::Truncated)?;
        match Message::decode(0x11, Bytes::copy_from_slice(payload))? {
            Message::Manifest {
                volume,
                version,
                index,
            } => manifest.push(volume, version, index)?,
            _ => return Err(RecordError::Manifest("not a manifest entry".into())),
        }
        body = &body[4 + len..];
    }
    if manifest.len() != entries || manifest.session_id() != session_id {
        return Err(RecordError::Manifest(
            "does not match its session id".into(),
        ));
    }
    let mut arrived = Vec::new();
    let mut valid_len = body_end;
    for rec in bytes[body_end..].chunks_exact(ARRIVAL_BYTES) {
        let seq = u64::from_le_bytes(rec[32..40].try_into().unwrap_or_default());
        if seq != arrived.len() as u64 || arrival_checksum(&session_id, rec) != rec[40..48] {
            break;
        }
        let mut h = [0u8; 32];
        h.copy_from_slice(&rec[..32]);
        arrived.push(ChunkHash(h));
        valid_len += ARRIVAL_BYTES;
    }
    Ok(Record {
        sender_id,
        session_id,
        created_unix_secs,
        manifest,
        arrived,
        valid_len: valid_len as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::ChunkRef;
    use crate::name::VolumeName;
    use crate::replicate::manifest::tests::index_bytes;
    use proptest::prelude::*;

    fn sample() -> (Vec<u8>, Manifest) {
        let mut m = Manifest::new();
        let chunks: Vec<ChunkRef> = (0..3u8)
            .map(|i| ChunkRef::Data(ChunkHash::of(&[i])))
            .collect();
        m.push(VolumeName::new("a").unwrap(), 1, index_bytes(&chunks, 0))
            .unwrap();
        m.push(
            VolumeName::new("a").unwrap(),
            2,
            index_bytes(&chunks[1..], 0),
        )
        .unwrap();
        let mut bytes = encode_head([5; 16], &m, 42);
        let hashes: Vec<_> = (0..3u8).map(|i| ChunkHash::of(&[i])).collect();
        bytes.extend(encode_arrivals(&m.session_id(), 0, &hashes[..2]));
        bytes.extend(encode_arrivals(&m.session_id(), 2, &hashes[2..]));
        (bytes, m)
    }

    #[test]
    fn round_trip_and_layout() {
        let (bytes, m) = sample();
        let r = decode(&bytes).unwrap();
        assert_eq!(&bytes[..8], b"RHYDRSES");
        assert_eq!((r.sender_id, r.created_unix_secs), ([5; 16], 42));
        assert_eq!(r.manifest, m);
        assert_eq!(r.arrived.len(), 3);
        assert_eq!(r.valid_len, bytes.len() as u64);
    }

    #[test]
    fn header_damage_is_a_typed_error() {
        let (bytes, _) = sample();
        assert_eq!(decode(&bytes[..10]).unwrap_err(), RecordError::Truncated);
        let mut b = bytes.clone();
        b[0] = 0;
        assert_eq!(decode(&b).unwrap_err(), RecordError::BadMagic);
        let mut b = bytes.clone();
        b[8] = 9;
        assert_eq!(decode(&b).unwrap_err(), RecordError::UnsupportedVersion(9));
        let mut b = bytes.clone();
        b[60] ^= 1;
        assert_eq!(decode(&b).unwrap_err(), RecordError::HeaderChecksum);
        let mut b = bytes.clone();
        b[HEADER_BYTES + 30] ^= 1;
        assert!(matches!(decode(&b), Err(RecordError::Manifest(_))));
    }

    proptest! {
        /// A record torn anywhere in its arrivals keeps exactly the whole records before
        /// the tear; a flipped bit in an arrival record drops it and every later one.
        #[test]
        fn torn_or_damaged_arrivals_keep_a_prefix(cut in any::<prop::sample::Index>(), bit in 0u8..8) {
            let (bytes, _) = sample();
            let head = bytes.len() - 3 * ARRIVAL_BYTES;
            let at = head + cut.index(3 * ARRIVAL_BYTES);
            let torn = decode(&bytes[..at]).unwrap();
            prop_assert_eq!(torn.arrived.len(), (at - head) / ARRIVAL_BYTES);
            prop_assert_eq!(torn.valid_len as usize, head + torn.arrived.len() * ARRIVAL_BYTES);
            let mut damaged = bytes.clone();
            damaged[at] ^= 1 << bit;
            prop_assert_eq!(decode(&damaged).unwrap().arrived.len(), (at - head) / ARRIVAL_BYTES);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }
    }
}
