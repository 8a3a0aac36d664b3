//! The session layer: what any protocol between two stores or sites (replication today,
//! disaster-recovery sync later) shares on top of the framing ([`super::frame`]).
//!
//! - Kinds `0x01` (Hello) and `0x02` (Error) are the session layer's, the same in every
//!   protocol; kinds from [`FIRST_PROTOCOL_KIND`] on are the protocol's own.
//! - Hello says which protocol and version a peer speaks, which end it is, and which
//!   store it is; its body is the protocol's. Byte by byte, integers little-endian:
//!
//! ```text
//! offset  size  field
//!      0     8  magic "RHYDSESS"
//!      8     8  protocol name (replication: "RHYDREPL")
//!     16     2  protocol version
//!     18     1  role: 1 = sender, 2 = receiver
//!     19    16  the peer's store id
//!     35     4  body length B
//!     39     B  body (the protocol's greeting)
//! ```
//!
//! - Error carries one reason (u16 length + UTF-8, at most [`MAX_REASON_BYTES`]): the
//!   peer ends the session and says why.
//! - A protocol's message type implements [`Wire`]; [`super::conn`] then carries it over
//!   TCP. Payload fields are read with [`Reader`], which checks every length against what
//!   is left and every count against its bound before allocating.

use bytes::Bytes;

use crate::name::VolumeName;

/// Magic at the start of every Hello.
pub const SESSION_MAGIC: [u8; 8] = *b"RHYDSESS";
/// Kind of the Hello frame.
pub const HELLO: u8 = 0x01;
/// Kind of the Error frame.
pub const ERROR: u8 = 0x02;
/// The first kind a protocol may use for its own messages.
pub const FIRST_PROTOCOL_KIND: u8 = 0x10;
/// Longest reason text.
/// (A Result for the most volumes, each with the longest reason, still fits a frame.)
pub const MAX_REASON_BYTES: usize = 512;

/// A protocol's messages: encoded into, and decoded from, one frame each.
pub trait Wire: Sized + Send + 'static {
    /// Append this message as one frame.
    fn encode_into(&self, out: &mut Vec<u8>);
    /// Decode a frame's kind and payload.
    fn decode(kind: u8, payload: Bytes) -> Result<Self, MessageError>;
}

/// Which end of a session a peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends its store's data.
    Sender = 1,
    /// Receives it into its store.
    Receiver = 2,
}

/// The session layer's greeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Which protocol runs in this session.
    pub protocol: [u8; 8],
    /// Its version.
    pub version: u16,
    /// Which end the peer is.
    pub role: Role,
    /// The peer's store identity.
    pub store_id: [u8; 16],
    /// The protocol's own greeting (replication: the sender's volume names).
    pub body: Bytes,
}

impl Hello {
    /// Append the Hello payload.
    pub fn encode_payload(&self, p: &mut Vec<u8>) {
        p.extend_from_slice(&SESSION_MAGIC);
        p.extend_from_slice(&self.protocol);
        p.extend_from_slice(&self.version.to_le_bytes());
        p.push(self.role as u8);
        p.extend_from_slice(&self.store_id);
        p.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        p.extend_from_slice(&self.body);
    }

    /// Read a Hello payload.
    pub fn decode_payload(r: &mut Reader) -> Result<Self, MessageError> {
        if r.array::<8>()? != SESSION_MAGIC {
            return Err(MessageError::Invalid(r.name, "bad session magic"));
        }
        let protocol = r.array::<8>()?;
        let version = r.u16()?;
        let role = match r.u8()? {
            1 => Role::Sender,
            2 => Role::Receiver,
            _ => return Err(MessageError::Invalid(r.name, "unknown role")),
        };
        let store_id = r.array::<16>()?;
        let len = r.u32()? as usize;
        let body = r.bytes(len)?;
        Ok(Self {
            protocol,
            version,
            role,
            store_id,
            body,
        })
    }
}

/// Why a frame's payload is not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The kind byte names no message.
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    /// The payload ended before a field.
    #[error("{0} message is truncated")]
    Truncated(&'static str),
    /// Bytes were left after the last field.
    #[error("{0} message has {1} trailing bytes")]
    Trailing(&'static str, usize),
    /// A field holds a value the protocol does not allow.
    #[error("{0} message: {1}")]
    Invalid(&'static str, &'static str),
}

/// Append a reason text: u16 length + UTF-8, cut to [`MAX_REASON_BYTES`] on a character
/// boundary.
pub fn put_text(p: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(MAX_REASON_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    p.extend_from_slice(&(end as u16).to_le_bytes());
    p.extend_from_slice(&text.as_bytes()[..end]);
}

/// A bounds-checked cursor over a payload; errors name the message being read.
pub struct Reader {
    buf: Bytes,
    name: &'static str,
}

impl Reader {
    /// A cursor over `payload` of the message called `name`.
    pub fn new(payload: Bytes, name: &'static str) -> Self {
        Self { buf: payload, name }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<Bytes, MessageError> {
        if n > self.buf.len() {
            return Err(MessageError::Truncated(self.name));
        }
        Ok(self.buf.split_to(n))
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], MessageError> {
        let b = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&b);
        Ok(out)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, MessageError> {
        Ok(self.array::<1>()?[0])
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16, MessageError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, MessageError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, MessageError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A u32 element count, at most `max`, and small enough that `count * min_bytes`
    /// fits in what is left: so no allocation exceeds what the payload justifies.
    pub fn count(&mut self, max: usize, min_bytes: usize) -> Result<usize, MessageError> {
        let n = self.u32()? as usize;
        if n > max || n.saturating_mul(min_bytes) > self.buf.len() {
            return Err(MessageError::Invalid(self.name, "count exceeds its bound"));
        }
        Ok(n)
    }

    /// A volume name: u8 length + bytes, checked like any volume name.
    pub fn name(&mut self) -> Result<VolumeName, MessageError> {
        let n = self.u8()? as usize;
        let raw = self.bytes(n)?;
        std::str::from_utf8(&raw)
            .ok()
            .and_then(|s| VolumeName::new(s).ok())
            .ok_or(MessageError::Invalid(self.name, "invalid volume name"))
    }

    /// A reason text (see [`put_text`]).
    pub fn text(&mut self) -> Result<String, MessageError> {
        let n = self.u16()? as usize;
        if n > MAX_REASON_BYTES {
            return Err(MessageError::Invalid(self.name, "text too long"));
        }
        let raw = self.bytes(n)?;
        String::from_utf8(raw.to_vec()).map_err(|_| MessageError::Invalid(self.name, "not UTF-8"))
    }

    /// Everything left.
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fail if anything is left.
    pub fn finish(&self) -> Result<(), MessageError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(MessageError::Trailing(self.name, self.buf.len()))
        }
    }
}
