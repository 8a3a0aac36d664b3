//! The messages of the disaster-recovery stream, as bytes.
//!
//! A message is one frame of the session protocol the backup server's replication uses
//! (a kind byte and a payload; the session layer adds length and checksum). Kinds start
//! at `0x20`, past the session layer's own. Integers are little-endian; every payload
//! has exactly the length its kind says, data lengths are bounded by
//! [`DATA_MAX_BYTES`], and a decoder accepts only what the encoder writes.
//!
//! ```text
//! primary → DR (each an item of the ordered stream; seq = 1, 2, 3 … per session)
//! kind  payload
//! 0x20  seq u64 | region u64 | len u32 | data[len]      region data (len = region's length)
//! 0x21  seq u64 | offset u64 | len u32 | data[len]      a replicated write
//! 0x22  seq u64 | offset u64 | len u64                  a replicated write of zeroes
//! 0x23  seq u64                                         a flush completed on the primary
//! 0x24  seq u64 | first u64 | count u64                 regions the DR must not trust
//! 0x25  seq u64                                         end of the session's invalidations
//! DR → primary
//! 0x30  durable_seq u64                                 items up to here are durable
//! 0x31  region u64                                      fetch this region first
//! ```

use alloc::vec::Vec;

/// Longest data a message carries: the largest region.
pub const DATA_MAX_BYTES: u32 = 1 << 20;
/// Longest payload (region data at its bound).
pub const PAYLOAD_MAX_BYTES: usize = 8 + 8 + 4 + DATA_MAX_BYTES as usize;

const REGION_DATA: u8 = 0x20;
const WRITE: u8 = 0x21;
const ZEROES: u8 = 0x22;
const FLUSH: u8 = 0x23;
const INVALIDATE: u8 = 0x24;
const READY: u8 = 0x25;
const ACK: u8 = 0x30;
const FETCH: u8 = 0x31;

/// What one stream item carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemBody {
    /// A region's content as read for sending.
    RegionData {
        /// The region.
        region: u64,
        /// Its bytes (the region's length).
        data: Vec<u8>,
    },
    /// A write the primary completed on a sent region.
    Write {
        /// Byte offset.
        offset: u64,
        /// The bytes written.
        data: Vec<u8>,
    },
    /// A write of zeroes (or trim) the primary completed on a sent region.
    Zeroes {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
    },
    /// A flush completed on the primary: the DR should make what it holds durable.
    Flush,
    /// Regions the DR must drop (they will be sent again).
    Invalidate {
        /// First region.
        first: u64,
        /// How many.
        count: u64,
    },
    /// Every invalidation of this session was sent: what the DR still holds is right.
    Ready,
}

/// One item of the ordered stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// Its place in the session's stream (from 1, no gaps).
    pub seq: u64,
    /// What it carries.
    pub body: ItemBody,
}

impl ItemBody {
    /// Bytes it holds in a queue (its data plus a fixed overhead).
    pub fn queued_bytes(&self) -> u64 {
        64 + match self {
            ItemBody::RegionData { data, .. } | ItemBody::Write { data, .. } => data.len() as u64,
            _ => 0,
        }
    }
}

/// Every message of the DR protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Primary → DR: an item of the stream.
    Item(Item),
    /// DR → primary: every item up to `durable_seq` is durable at the DR.
    Ack {
        /// The highest durable item.
        durable_seq: u64,
    },
    /// DR → primary: a client waits for this region.
    Fetch {
        /// The region.
        region: u64,
    },
}

/// Why bytes are not a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The kind byte names no DR message.
    #[error("unknown DR message kind {0:#04x}")]
    UnknownKind(u8),
    /// The payload's length is not what its kind and fields say.
    #[error("DR message kind {kind:#04x}: payload of {len} bytes, expected {expected}")]
    Length {
        /// The kind.
        kind: u8,
        /// Bytes received.
        len: usize,
        /// Bytes the kind needs.
        expected: usize,
    },
    /// A data length past [`DATA_MAX_BYTES`] (or a zero one).
    #[error("DR message data length {0} is zero or over the bound")]
    DataLength(u64),
    /// A sequence number of zero (items count from 1).
    #[error("DR stream item with sequence 0")]
    ZeroSeq,
}

impl Message {
    /// The frame kind.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Item(i) => match i.body {
                ItemBody::RegionData { .. } => REGION_DATA,
                ItemBody::Write { .. } => WRITE,
                ItemBody::Zeroes { .. } => ZEROES,
                ItemBody::Flush => FLUSH,
                ItemBody::Invalidate { .. } => INVALIDATE,
                ItemBody::Ready => READY,
            },
            Message::Ack { .. } => ACK,
            Message::Fetch { .. } => FETCH,
        }
    }

    /// Appends the payload (without the kind byte).
    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        if let Some(data) = self.encode_payload_head(out) {
            out.extend_from_slice(data);
        }
    }

    /// Appends the payload up to its data bytes, which always end it, and returns those
    /// (`None` for a message without data): a sender can write them from where they
    /// are instead of copying them behind the head.
    pub fn encode_payload_head(&self, out: &mut Vec<u8>) -> Option<&[u8]> {
        match self {
            Message::Item(i) => {
                out.extend_from_slice(&i.seq.to_le_bytes());
                match &i.body {
                    ItemBody::RegionData { region: a, data }
                    | ItemBody::Write { offset: a, data } => {
                        assert!(!data.is_empty() && data.len() <= DATA_MAX_BYTES as usize);
                        out.extend_from_slice(&a.to_le_bytes());
                        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                        return Some(data);
                    }
                    ItemBody::Zeroes { offset: a, len: b }
                    | ItemBody::Invalidate { first: a, count: b } => {
                        out.extend_from_slice(&a.to_le_bytes());
                        out.extend_from_slice(&b.to_le_bytes());
                    }
                    ItemBody::Flush | ItemBody::Ready => {}
                }
            }
            Message::Ack { durable_seq: v } | Message::Fetch { region: v } => {
                out.extend_from_slice(&v.to_le_bytes())
            }
        }
        None
    }

    /// The message's data bytes, taken out (`None` for a message without data).
    pub fn into_data(self) -> Option<Vec<u8>> {
        match self {
            Message::Item(Item {
                body: ItemBody::RegionData { data, .. } | ItemBody::Write { data, .. },
                ..
            }) => Some(data),
            _ => None,
        }
    }

    /// Decodes a frame's kind and payload.
    pub fn decode(kind: u8, p: &[u8]) -> Result<Message, WireError> {
        let exact = |expected: usize| {
            if p.len() == expected {
                Ok(())
            } else {
                Err(WireError::Length {
                    kind,
                    len: p.len(),
                    expected,
                })
            }
        };
        let u64_at = |at: usize| u64::from_le_bytes(p[at..at + 8].try_into().expect("8 bytes"));
        let item = |body| {
            let seq = u64_at(0);
            if seq == 0 {
                return Err(WireError::ZeroSeq);
            }
            Ok(Message::Item(Item { seq, body }))
        };
        match kind {
            REGION_DATA | WRITE => {
                if p.len() < 20 {
                    exact(20)?;
                }
                let len = u32::from_le_bytes(p[16..20].try_into().expect("4 bytes"));
                if len == 0 || len > DATA_MAX_BYTES {
                    return Err(WireError::DataLength(len as u64));
                }
                exact(20 + len as usize)?;
                let (a, data) = (u64_at(8), p[20..].to_vec());
                item(if kind == REGION_DATA {
                    ItemBody::RegionData { region: a, data }
                } else {
                    ItemBody::Write { offset: a, data }
                })
            }
            ZEROES | INVALIDATE => {
                exact(24)?;
                let (a, b) = (u64_at(8), u64_at(16));
                item(if kind == ZEROES {
                    ItemBody::Zeroes { offset: a, len: b }
                } else {
                    ItemBody::Invalidate { first: a, count: b }
                })
            }
            FLUSH | READY => {
                exact(8)?;
                item(if kind == FLUSH {
                    ItemBody::Flush
                } else {
                    ItemBody::Ready
                })
            }
            ACK => {
                exact(8)?;
                Ok(Message::Ack {
                    durable_seq: u64_at(0),
                })
            }
            FETCH => {
                exact(8)?;
                Ok(Message::Fetch { region: u64_at(0) })
            }
            other => Err(WireError::UnknownKind(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn round_trip(m: Message) {
        let mut p = Vec::new();
        m.encode_payload(&mut p);
        assert!(p.len() <= PAYLOAD_MAX_BYTES);
        assert_eq!(Message::decode(m.kind(), &p), Ok(m));
    }

    #[test]
    fn every_message_round_trips() {
        let item = |seq, body| Message::Item(Item { seq, body });
        round_trip(item(
            1,
            ItemBody::RegionData {
                region: 7,
                data: vec![3; 4096],
            },
        ));
        round_trip(item(
            2,
            ItemBody::Write {
                offset: 512,
                data: vec![9; 512],
            },
        ));
        round_trip(item(
            3,
            ItemBody::Zeroes {
                offset: 0,
                len: 1 << 40,
            },
        ));
        round_trip(item(4, ItemBody::Flush));
        round_trip(item(5, ItemBody::Invalidate { first: 2, count: 9 }));
        round_trip(item(6, ItemBody::Ready));
        round_trip(Message::Ack { durable_seq: 77 });
        round_trip(Message::Fetch { region: 5 });
    }

    #[test]
    fn bad_payloads_are_typed_errors() {
        assert_eq!(
            Message::decode(0x7f, &[]),
            Err(WireError::UnknownKind(0x7f))
        );
        assert!(matches!(
            Message::decode(FLUSH, &[1; 7]),
            Err(WireError::Length { .. })
        ));
        assert_eq!(Message::decode(FLUSH, &[0; 8]), Err(WireError::ZeroSeq));
        let mut p = vec![1, 0, 0, 0, 0, 0, 0, 0];
        p.extend_from_slice(&[0; 8]);
        p.extend_from_slice(&(DATA_MAX_BYTES + 1).to_le_bytes());
        assert_eq!(
            Message::decode(WRITE, &p),
            Err(WireError::DataLength(DATA_MAX_BYTES as u64 + 1))
        );
        p.truncate(16);
        p.extend_from_slice(&4u32.to_le_bytes());
        p.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            Message::decode(WRITE, &p),
            Err(WireError::Length { .. })
        ));
        assert!(matches!(
            Message::decode(REGION_DATA, &p[..5]),
            Err(WireError::Length { .. })
        ));
    }

    proptest::proptest! {
        /// What the fuzz target checks, on a budget: any bytes decode to an error or to
        /// a message that encodes back to exactly those bytes.
        #[test]
        fn any_bytes_decode_to_an_error_or_round_trip(
            kind in 0x1eu8..0x34,
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            len_field in proptest::prelude::any::<u32>(),
            small in proptest::prelude::any::<bool>(),
        ) {
            let mut p = payload.clone();
            if small && p.len() >= 20 {
                // Make the data length agree sometimes, so the long kinds decode too.
                let n = (p.len() - 20) as u32;
                p[16..20].copy_from_slice(&if len_field % 2 == 0 { n } else { len_field }.to_le_bytes());
            }
            if let Ok(m) = Message::decode(kind, &p) {
                let mut out = Vec::new();
                m.encode_payload(&mut out);
                proptest::prop_assert_eq!(out, p);
                proptest::prop_assert_eq!(m.kind(), kind);
            }
        }
    }
}
