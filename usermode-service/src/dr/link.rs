//! The DR protocol on the wire: the replication session layer (frames, Hello, Error,
//! `rehydrate_backup::replicate::{frame, session, conn}`) carrying the DR core's
//! messages (`rehydrate_driver::dr::wire`) as the protocol's own kinds.
//!
//! A session: the primary connects and sends Hello (protocol `RHYDDRSY`, role sender,
//! store id = the primary's id) whose body is
//!
//! ```text
//! offset  size  field
//!      0    16  volume id
//!     16     8  volume size in bytes
//!     24     4  region size in bytes
//!     28     8  session number (the primary's choice, new for every connection)
//! ```
//!
//! The DR site answers Hello (role receiver, empty body) or Error with the reason it
//! refuses (another primary, another volume, another size, promoted), and closes. Then
//! the primary streams items and the DR site sends acknowledgements and fetches. A cut
//! connection is a new session: the primary sends again what was not acknowledged
//! durable, after invalidating it at the DR site.

use bytes::Bytes;
use rehydrate_backup::replicate::frame;
use rehydrate_backup::replicate::session::{
    self, put_text, Hello, MessageError, Reader, Role, Wire,
};
use rehydrate_driver::dr::wire::Message;
use rehydrate_driver::dr::Binding;

/// The protocol's name in Hello.
pub const PROTOCOL: [u8; 8] = *b"RHYDDRSY";
/// Its version.
pub const VERSION: u16 = 1;

const _: () = assert!(session::FIRST_PROTOCOL_KIND <= 0x20);

/// One frame of the DR protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The session layer's greeting.
    Hello(Hello),
    /// The peer ends the session and says why.
    Error(String),
    /// A DR message.
    Dr(Message),
}

impl Frame {
    /// Encodes the frame into `out` up to the data bytes that end a region's or a
    /// write's message, and returns those, to be sent right after `out` from where they
    /// are (region data is most of the stream: copying it behind its head cost the
    /// sender a pass over every byte). Other frames are encoded whole.
    pub fn encode_split(self, out: &mut Vec<u8>) -> Option<Vec<u8>> {
        match self {
            Frame::Dr(m) => {
                dr_head(&m, out);
                m.into_data()
            }
            other => {
                other.encode_into(out);
                None
            }
        }
    }
}

/// Appends a DR message's frame up to its data bytes, which end it, and returns those:
/// the layout `frame::encode_into` writes (length of kind + payload, kind, payload),
/// the length counting the data.
fn dr_head<'m>(m: &'m Message, out: &mut Vec<u8>) -> Option<&'m [u8]> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(m.kind());
    let data = m.encode_payload_head(out);
    let len = out.len() - start - 4 + data.map_or(0, <[u8]>::len);
    assert!(len <= frame::MAX_FRAME_BYTES, "DR frame of {len} bytes");
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    data
}

impl Wire for Frame {
    fn encode_into(&self, out: &mut Vec<u8>) {
        let mut p = Vec::new();
        let kind = match self {
            Frame::Hello(h) => {
                h.encode_payload(&mut p);
                session::HELLO
            }
            Frame::Error(reason) => {
                put_text(&mut p, reason);
                session::ERROR
            }
            Frame::Dr(m) => {
                // Straight into `out`: region data is most of the stream, one copy
                // fewer than building the payload apart.
                if let Some(data) = dr_head(m, out) {
                    out.extend_from_slice(data);
                }
                return;
            }
        };
        frame::encode_into(kind, &p, out);
    }

    fn decode(kind: u8, payload: Bytes) -> Result<Self, MessageError> {
        match kind {
            session::HELLO => {
                let mut r = Reader::new(payload, "Hello");
                let h = Hello::decode_payload(&mut r)?;
                r.finish()?;
                Ok(Frame::Hello(h))
            }
            session::ERROR => {
                let mut r = Reader::new(payload, "Error");
                let t = r.text()?;
                r.finish()?;
                Ok(Frame::Error(t))
            }
            _ => Message::decode(kind, &payload)
                .map(Frame::Dr)
                .map_err(|e| match e {
                    rehydrate_driver::dr::wire::WireError::UnknownKind(k) => {
                        MessageError::UnknownKind(k)
                    }
                    _ => MessageError::Invalid("DR", "malformed DR message"),
                }),
        }
    }
}

/// The primary's Hello for session `session` of `binding`.
pub fn primary_hello(binding: &Binding, session: u64) -> Frame {
    let mut body = Vec::with_capacity(36);
    body.extend_from_slice(&binding.volume_id);
    body.extend_from_slice(&binding.volume_size_bytes.to_le_bytes());
    body.extend_from_slice(&binding.region_size_bytes.to_le_bytes());
    body.extend_from_slice(&session.to_le_bytes());
    Frame::Hello(Hello {
        protocol: PROTOCOL,
        version: VERSION,
        role: Role::Sender,
        store_id: binding.primary_id,
        body: body.into(),
    })
}

/// The DR site's Hello.
pub fn secondary_hello(id: [u8; 16]) -> Frame {
    Frame::Hello(Hello {
        protocol: PROTOCOL,
        version: VERSION,
        role: Role::Receiver,
        store_id: id,
        body: Bytes::new(),
    })
}

/// The binding and session a primary's Hello names.
pub fn parse_primary_hello(h: &Hello) -> Result<(Binding, u64), &'static str> {
    if h.protocol != PROTOCOL || h.version != VERSION {
        return Err("not the DR protocol, or another version of it");
    }
    if h.role != Role::Sender {
        return Err("the peer is not a primary");
    }
    let mut r = Reader::new(h.body.clone(), "DR hello");
    let parse = |r: &mut Reader| -> Result<(Binding, u64), MessageError> {
        let volume_id = r.array::<16>()?;
        let volume_size_bytes = r.u64()?;
        let region_size_bytes = r.u32()?;
        let session = r.u64()?;
        r.finish()?;
        Ok((
            Binding {
                primary_id: h.store_id,
                volume_id,
                volume_size_bytes,
                region_size_bytes,
            },
            session,
        ))
    };
    parse(&mut r).map_err(|_| "a malformed DR hello")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rehydrate_driver::dr::wire::{Item, ItemBody};

    fn round_trip(f: Frame) {
        let mut out = Vec::new();
        f.encode_into(&mut out);
        // Split, the head then the data are the same bytes.
        let mut split = Vec::new();
        if let Some(data) = f.clone().encode_split(&mut split) {
            split.extend_from_slice(&data);
        }
        assert_eq!(split, out, "{f:?} split");
        let kind = out[4];
        assert_eq!(Frame::decode(kind, Bytes::from(out[5..].to_vec())), Ok(f));
    }

    #[test]
    fn frames_round_trip_and_hellos_parse() {
        let b = Binding {
            primary_id: [3; 16],
            volume_id: [4; 16],
            volume_size_bytes: 1 << 30,
            region_size_bytes: 65536,
        };
        let hello = primary_hello(&b, 9);
        round_trip(hello.clone());
        let Frame::Hello(h) = hello else { panic!() };
        assert_eq!(parse_primary_hello(&h), Ok((b, 9)));
        let Frame::Hello(s) = secondary_hello([5; 16]) else {
            panic!()
        };
        assert!(parse_primary_hello(&s).is_err());
        round_trip(Frame::Error("refused".into()));
        round_trip(Frame::Dr(Message::Item(Item {
            seq: 1,
            body: ItemBody::Write {
                offset: 512,
                data: vec![1; 512],
            },
        })));
        round_trip(Frame::Dr(Message::Fetch { region: 7 }));
        assert!(Frame::decode(0x21, Bytes::from_static(&[0; 3])).is_err());
    }
}
