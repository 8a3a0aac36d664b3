//! Transmission-phase messages: requests (client -> server), simple replies and structured
//! reply chunks (server -> client), with encoders and decoders that never panic.
//!
//! Wire layouts (big-endian):
//!
//! ```text
//! request        C: u32 0x25609513 | u16 command flags | u16 type | u64 cookie
//!                   | u64 offset | u32 length | (length bytes data for NBD_CMD_WRITE)
//! simple reply   S: u32 0x67446698 | u32 error | u64 cookie
//!                   | (request length bytes data for a successful NBD_CMD_READ)
//! chunk          S: u32 0x668e33ef | u16 flags | u16 type | u64 cookie | u32 length | payload
//!   NONE           (length 0)
//!   OFFSET_DATA    u64 offset | length-8 bytes data                         (length >= 9)
//!   OFFSET_HOLE    u64 offset | u32 hole size (non-zero)                     (length 12)
//!   BLOCK_STATUS   u32 context id | n x (u32 extent length | u32 status)     (length 4+8n, n >= 1)
//!   ERROR          u32 error | u16 message length | message                  (length >= 6)
//!   ERROR_OFFSET   u32 error | u16 message length | message | u64 offset     (length >= 14)
//! ```

use crate::consts::*;
use crate::decode::{Decoded, Reader};
use crate::error::ProtocolError;

/// A request type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE` (carries `length` bytes of data).
    Write,
    /// `NBD_CMD_DISC`.
    Disconnect,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Trim,
    /// `NBD_CMD_CACHE`.
    Cache,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes,
    /// `NBD_CMD_BLOCK_STATUS`.
    BlockStatus,
    /// A type this crate does not know; the server answers `NBD_EINVAL`.
    Unknown(u16),
}

impl Command {
    /// The type on the wire.
    pub fn code(self) -> u16 {
        match self {
            Command::Read => CMD_READ,
            Command::Write => CMD_WRITE,
            Command::Disconnect => CMD_DISC,
            Command::Flush => CMD_FLUSH,
            Command::Trim => CMD_TRIM,
            Command::Cache => CMD_CACHE,
            Command::WriteZeroes => CMD_WRITE_ZEROES,
            Command::BlockStatus => CMD_BLOCK_STATUS,
            Command::Unknown(code) => code,
        }
    }

    /// The command for a wire type.
    pub fn from_code(code: u16) -> Self {
        match code {
            CMD_READ => Command::Read,
            CMD_WRITE => Command::Write,
            CMD_DISC => Command::Disconnect,
            CMD_FLUSH => Command::Flush,
            CMD_TRIM => Command::Trim,
            CMD_CACHE => Command::Cache,
            CMD_WRITE_ZEROES => Command::WriteZeroes,
            CMD_BLOCK_STATUS => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }
}

/// A request header (the 28 bytes before any write payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Command flags (unknown bits kept so the server can refuse them).
    pub flags: CommandFlags,
    /// Request type.
    pub command: Command,
    /// Opaque cookie the reply echoes.
    pub cookie: u64,
    /// Byte offset into the export.
    pub offset: u64,
    /// Length in bytes (of data for reads and writes, of the range otherwise).
    pub length: u32,
}

impl Request {
    /// Bytes of payload that follow this header on the wire.
    pub fn payload_len(&self) -> u32 {
        if self.command == Command::Write {
            self.length
        } else {
            0
        }
    }

    /// Append the 28-byte header (a write's data is appended by the caller).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out.extend_from_slice(&self.flags.bits().to_be_bytes());
        out.extend_from_slice(&self.command.code().to_be_bytes());
        out.extend_from_slice(&self.cookie.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }

    /// Decode a header only. The shell then reads [`Request::payload_len`] bytes itself,
    /// so it can stream or discard an oversized write without buffering it.
    pub fn decode_header(buf: &[u8]) -> Result<Decoded<Self>, ProtocolError> {
        let mut r = Reader::new(buf);
        let (Some(magic), Some(flags), Some(kind), Some(cookie), Some(offset), Some(length)) =
            (r.u32(), r.u16(), r.u16(), r.u64(), r.u64(), r.u32())
        else {
            return Ok(Decoded::Incomplete {
                needed: REQUEST_HEADER_BYTES,
            });
        };
        if magic != REQUEST_MAGIC {
            return Err(ProtocolError::BadMagic {
                expected: REQUEST_MAGIC.into(),
                found: magic.into(),
            });
        }
        Ok(Decoded::Complete {
            message: Request {
                flags: CommandFlags::from_bits_retain(flags),
                command: Command::from_code(kind),
                cookie,
                offset,
                length,
            },
            consumed: REQUEST_HEADER_BYTES,
        })
    }

    /// Decode a header and its write payload together. A write payload over
    /// `max_payload_bytes` is an error: the caller hangs up rather than buffer it.
    pub fn decode(
        buf: &[u8],
        max_payload_bytes: u32,
    ) -> Result<Decoded<(Self, &[u8])>, ProtocolError> {
        let request = match Self::decode_header(buf)? {
            Decoded::Incomplete { needed } => return Ok(Decoded::Incomplete { needed }),
            Decoded::Complete { message, .. } => message,
        };
        let payload_len = request.payload_len();
        if payload_len > max_payload_bytes {
            return Err(ProtocolError::PayloadTooLarge {
                length: payload_len.into(),
                max: max_payload_bytes.into(),
            });
        }
        let total = REQUEST_HEADER_BYTES + payload_len as usize;
        match buf.get(REQUEST_HEADER_BYTES..total) {
            Some(payload) => Ok(Decoded::Complete {
                message: (request, payload),
                consumed: total,
            }),
            None => Ok(Decoded::Incomplete { needed: total }),
        }
    }
}

/// One block status descriptor as it is on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockDescriptor {
    /// Extent length in bytes (non-zero).
    pub length: u32,
    /// Status flags (`NBD_STATE_HOLE`, `NBD_STATE_ZERO` for `base:allocation`).
    pub status: u32,
}

/// The payload of one structured reply chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkBody<'a> {
    /// `NBD_REPLY_TYPE_NONE`: the reply is over.
    None,
    /// `NBD_REPLY_TYPE_OFFSET_DATA`: data at an offset.
    OffsetData {
        /// Absolute export offset of `data`.
        offset: u64,
        /// The bytes (at least one).
        data: &'a [u8],
    },
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`: a run that reads as zeroes.
    OffsetHole {
        /// Absolute export offset.
        offset: u64,
        /// Length of the hole (non-zero).
        length: u32,
    },
    /// `NBD_REPLY_TYPE_BLOCK_STATUS`.
    BlockStatus {
        /// The metadata context these descriptors belong to.
        context_id: u32,
        /// Consecutive extents from the request offset (at least one).
        descriptors: Vec<BlockDescriptor>,
    },
    /// `NBD_REPLY_TYPE_ERROR`.
    Error {
        /// NBD error value (non-zero).
        error: u32,
        /// Message for a human, possibly empty.
        message: String,
    },
    /// `NBD_REPLY_TYPE_ERROR_OFFSET`.
    ErrorOffset {
        /// NBD error value (non-zero).
        error: u32,
        /// Message for a human, possibly empty.
        message: String,
        /// Where the error happened.
        offset: u64,
    },
    /// An unknown chunk type with bit 15 set: the reply failed with this error.
    UnknownError {
        /// The chunk type.
        kind: u16,
        /// NBD error value.
        error: u32,
        /// Message for a human, possibly empty.
        message: String,
    },
}

impl ChunkBody<'_> {
    /// The chunk type on the wire.
    pub fn kind(&self) -> u16 {
        match self {
            ChunkBody::None => REPLY_TYPE_NONE,
            ChunkBody::OffsetData { .. } => REPLY_TYPE_OFFSET_DATA,
            ChunkBody::OffsetHole { .. } => REPLY_TYPE_OFFSET_HOLE,
            ChunkBody::BlockStatus { .. } => REPLY_TYPE_BLOCK_STATUS,
            ChunkBody::Error { .. } => REPLY_TYPE_ERROR,
            ChunkBody::ErrorOffset { .. } => REPLY_TYPE_ERROR_OFFSET,
            ChunkBody::UnknownError { kind, .. } => *kind,
        }
    }

    /// The error value, if this is an error chunk.
    pub fn error(&self) -> Option<(u32, &str)> {
        match self {
            ChunkBody::Error { error, message }
            | ChunkBody::ErrorOffset { error, message, .. }
            | ChunkBody::UnknownError { error, message, .. } => Some((*error, message)),
            _ => None,
        }
    }
}

/// One structured reply chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// Whether this is the last chunk of its reply (`NBD_REPLY_FLAG_DONE`).
    pub done: bool,
    /// The request's cookie.
    pub cookie: u64,
    /// What the chunk says.
    pub body: ChunkBody<'a>,
}

impl Chunk<'_> {
    /// Append the chunk, header and payload.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let flags = if self.done { REPLY_FLAG_DONE } else { 0 };
        let start = out.len();
        encode_chunk_header(out, flags, self.body.kind(), self.cookie, 0);
        match &self.body {
            ChunkBody::None => {}
            ChunkBody::OffsetData { offset, data } => {
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(data);
            }
            ChunkBody::OffsetHole { offset, length } => {
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(&length.to_be_bytes());
            }
            ChunkBody::BlockStatus {
                context_id,
                descriptors,
            } => {
                out.extend_from_slice(&context_id.to_be_bytes());
                for d in descriptors {
                    out.extend_from_slice(&d.length.to_be_bytes());
                    out.extend_from_slice(&d.status.to_be_bytes());
                }
            }
            ChunkBody::Error { error, message }
            | ChunkBody::UnknownError { error, message, .. } => {
                put_error(out, *error, message);
            }
            ChunkBody::ErrorOffset {
                error,
                message,
                offset,
            } => {
                put_error(out, *error, message);
                out.extend_from_slice(&offset.to_be_bytes());
            }
        }
        // Patch the length now that the payload is written.
        let payload_len = u32::try_from(out.len() - start - CHUNK_HEADER_BYTES).unwrap_or(u32::MAX);
        if let Some(field) = out.get_mut(start + CHUNK_HEADER_BYTES - 4..start + CHUNK_HEADER_BYTES)
        {
            field.copy_from_slice(&payload_len.to_be_bytes());
        }
    }
}

/// Append a chunk header; used directly by the server to send read data without copying it.
pub fn encode_chunk_header(out: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, length: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
}

/// Append the header and offset of an `OFFSET_DATA` chunk whose `data_len` bytes of data
/// the caller writes next.
pub fn encode_offset_data_prefix(
    out: &mut Vec<u8>,
    done: bool,
    cookie: u64,
    offset: u64,
    data_len: u32,
) {
    let flags = if done { REPLY_FLAG_DONE } else { 0 };
    encode_chunk_header(
        out,
        flags,
        REPLY_TYPE_OFFSET_DATA,
        cookie,
        data_len.saturating_add(8),
    );
    out.extend_from_slice(&offset.to_be_bytes());
}

/// Append a simple reply header (a successful read's data is appended by the caller).
pub fn encode_simple_reply(out: &mut Vec<u8>, cookie: u64, error: u32) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

fn put_error(out: &mut Vec<u8>, error: u32, message: &str) {
    // The spec caps messages at 4096 bytes; cut at a character boundary to stay UTF-8.
    let mut end = message.len().min(MAX_STRING_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let text = message.get(..end).unwrap_or("");
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&u16::try_from(text.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// One message from the server during transmission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A simple reply; `data` is non-empty only for a successful read.
    Simple {
        /// The request's cookie.
        cookie: u64,
        /// NBD error value, 0 for success.
        error: u32,
        /// The read's data.
        data: &'a [u8],
    },
    /// One structured reply chunk.
    Chunk(Chunk<'a>),
}

/// Decode one server message (client side).
///
/// A simple reply does not say how much data follows, so `simple_data_len(cookie)` must
/// return the length of the read request with that cookie (0 for anything else); it is
/// called only for successful simple replies. Lengths come from our own requests, which
/// the client bounds by [`MAX_PAYLOAD_BYTES`]; chunk payloads are bounded by
/// [`MAX_CHUNK_PAYLOAD_BYTES`].
pub fn decode_reply(
    buf: &[u8],
    simple_data_len: impl FnOnce(u64) -> u32,
) -> Result<Decoded<Reply<'_>>, ProtocolError> {
    let mut r = Reader::new(buf);
    let Some(magic) = r.u32() else {
        return Ok(Decoded::Incomplete {
            needed: SIMPLE_REPLY_HEADER_BYTES,
        });
    };
    match magic {
        SIMPLE_REPLY_MAGIC => {
            let (Some(error), Some(cookie)) = (r.u32(), r.u64()) else {
                return Ok(Decoded::Incomplete {
                    needed: SIMPLE_REPLY_HEADER_BYTES,
                });
            };
            let data_len = if error == 0 {
                simple_data_len(cookie)
            } else {
                0
            };
            if data_len > MAX_PAYLOAD_BYTES {
                return Err(ProtocolError::PayloadTooLarge {
                    length: data_len.into(),
                    max: MAX_PAYLOAD_BYTES.into(),
                });
            }
            let total = SIMPLE_REPLY_HEADER_BYTES + data_len as usize;
            match r.bytes(data_len as usize) {
                Some(data) => Ok(Decoded::Complete {
                    message: Reply::Simple {
                        cookie,
                        error,
                        data,
                    },
                    consumed: total,
                }),
                None => Ok(Decoded::Incomplete { needed: total }),
            }
        }
        STRUCTURED_REPLY_MAGIC => {
            let (Some(flags), Some(kind), Some(cookie), Some(length)) =
                (r.u16(), r.u16(), r.u64(), r.u32())
            else {
                return Ok(Decoded::Incomplete {
                    needed: CHUNK_HEADER_BYTES,
                });
            };
            if length > MAX_CHUNK_PAYLOAD_BYTES {
                return Err(ProtocolError::PayloadTooLarge {
                    length: length.into(),
                    max: MAX_CHUNK_PAYLOAD_BYTES.into(),
                });
            }
            let total = CHUNK_HEADER_BYTES + length as usize;
            let Some(payload) = r.bytes(length as usize) else {
                return Ok(Decoded::Incomplete { needed: total });
            };
            let done = flags & REPLY_FLAG_DONE != 0;
            let body = parse_chunk_body(kind, payload)?;
            if matches!(body, ChunkBody::None) && !done {
                return Err(ProtocolError::Malformed(
                    "NBD_REPLY_TYPE_NONE without the DONE flag",
                ));
            }
            Ok(Decoded::Complete {
                message: Reply::Chunk(Chunk { done, cookie, body }),
                consumed: total,
            })
        }
        found => Err(ProtocolError::BadMagic {
            expected: SIMPLE_REPLY_MAGIC.into(),
            found: found.into(),
        }),
    }
}

/// The fixed part of a reply that may carry read data, decoded without the data, so a
/// client can read the data from the socket straight into the request's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataHeader {
    /// A successful simple reply: as many bytes follow as the read with `cookie` asked
    /// for (none if it was not a read).
    Simple {
        /// The request's cookie.
        cookie: u64,
    },
    /// An `OFFSET_DATA` chunk: `data_len` bytes of data for `offset` follow.
    OffsetData {
        /// The request's cookie.
        cookie: u64,
        /// The chunk ends its reply (`NBD_REPLY_FLAG_DONE`).
        done: bool,
        /// Absolute export offset of the data.
        offset: u64,
        /// Bytes of data that follow (at least one).
        data_len: u32,
    },
}

/// Bytes [`decode_data_header`] consumes for an `OFFSET_DATA` chunk: header and offset.
pub const OFFSET_DATA_HEADER_BYTES: usize = CHUNK_HEADER_BYTES + 8;

/// Decode the header of the next server message if it may carry read data (client
/// side). `Complete { message: None, .. }`: it is another kind of message (an error, a
/// hole, block status): decode it whole with [`decode_reply`]. For `Some`, `consumed`
/// covers the header (and an `OFFSET_DATA` chunk's offset), not the data. The checks
/// are [`decode_reply`]'s for the same bytes: magic, payload bounds, chunk lengths.
pub fn decode_data_header(buf: &[u8]) -> Result<Decoded<Option<DataHeader>>, ProtocolError> {
    let mut r = Reader::new(buf);
    let Some(magic) = r.u32() else {
        return Ok(Decoded::Incomplete {
            needed: SIMPLE_REPLY_HEADER_BYTES,
        });
    };
    match magic {
        SIMPLE_REPLY_MAGIC => {
            let (Some(error), Some(cookie)) = (r.u32(), r.u64()) else {
                return Ok(Decoded::Incomplete {
                    needed: SIMPLE_REPLY_HEADER_BYTES,
                });
            };
            let message = (error == 0).then_some(DataHeader::Simple { cookie });
            Ok(Decoded::Complete {
                message,
                consumed: SIMPLE_REPLY_HEADER_BYTES,
            })
        }
        STRUCTURED_REPLY_MAGIC => {
            let (Some(flags), Some(kind), Some(cookie), Some(length)) =
                (r.u16(), r.u16(), r.u64(), r.u32())
            else {
                return Ok(Decoded::Incomplete {
                    needed: CHUNK_HEADER_BYTES,
                });
            };
            if kind != REPLY_TYPE_OFFSET_DATA {
                return Ok(Decoded::Complete {
                    message: None,
                    consumed: CHUNK_HEADER_BYTES,
                });
            }
            if length > MAX_CHUNK_PAYLOAD_BYTES {
                return Err(ProtocolError::PayloadTooLarge {
                    length: length.into(),
                    max: MAX_CHUNK_PAYLOAD_BYTES.into(),
                });
            }
            if length < 9 {
                return Err(ProtocolError::Malformed("OFFSET_DATA shorter than 9 bytes"));
            }
            let Some(offset) = r.u64() else {
                return Ok(Decoded::Incomplete {
                    needed: OFFSET_DATA_HEADER_BYTES,
                });
            };
            Ok(Decoded::Complete {
                message: Some(DataHeader::OffsetData {
                    cookie,
                    done: flags & REPLY_FLAG_DONE != 0,
                    offset,
                    data_len: length - 8,
                }),
                consumed: OFFSET_DATA_HEADER_BYTES,
            })
        }
        found => Err(ProtocolError::BadMagic {
            expected: SIMPLE_REPLY_MAGIC.into(),
            found: found.into(),
        }),
    }
}

fn parse_chunk_body(kind: u16, payload: &[u8]) -> Result<ChunkBody<'_>, ProtocolError> {
    let mut r = Reader::new(payload);
    let body = match kind {
        REPLY_TYPE_NONE if payload.is_empty() => ChunkBody::None,
        REPLY_TYPE_NONE => return Err(ProtocolError::Malformed("NONE chunk with a payload")),
        REPLY_TYPE_OFFSET_DATA => match (r.u64(), r.rest()) {
            (Some(offset), data) if !data.is_empty() => ChunkBody::OffsetData { offset, data },
            _ => return Err(ProtocolError::Malformed("OFFSET_DATA shorter than 9 bytes")),
        },
        REPLY_TYPE_OFFSET_HOLE => match (r.u64(), r.u32(), r.remaining()) {
            (Some(offset), Some(length), 0) if length > 0 => {
                ChunkBody::OffsetHole { offset, length }
            }
            _ => {
                return Err(ProtocolError::Malformed(
                    "OFFSET_HOLE not 12 bytes or empty",
                ))
            }
        },
        REPLY_TYPE_BLOCK_STATUS => {
            let context_id = r.u32().ok_or(ProtocolError::Malformed(
                "BLOCK_STATUS shorter than 4 bytes",
            ))?;
            let rest = r.remaining();
            if rest == 0 || rest % 8 != 0 {
                return Err(ProtocolError::Malformed(
                    "BLOCK_STATUS length is not 4 + 8n, n >= 1",
                ));
            }
            let count = rest / 8;
            if count > MAX_BLOCK_STATUS_DESCRIPTORS {
                return Err(ProtocolError::Malformed(
                    "BLOCK_STATUS has more than 2^20 descriptors",
                ));
            }
            let mut descriptors = Vec::with_capacity(count);
            while let (Some(length), Some(status)) = (r.u32(), r.u32()) {
                if length == 0 {
                    return Err(ProtocolError::Malformed("BLOCK_STATUS extent of length 0"));
                }
                descriptors.push(BlockDescriptor { length, status });
            }
            ChunkBody::BlockStatus {
                context_id,
                descriptors,
            }
        }
        kind if kind & REPLY_TYPE_FLAG_ERROR != 0 => {
            let (Some(error), Some(message_len)) = (r.u32(), r.u16()) else {
                return Err(ProtocolError::Malformed("error chunk shorter than 6 bytes"));
            };
            let message = r.bytes(message_len.into()).ok_or(ProtocolError::Malformed(
                "error message longer than the chunk",
            ))?;
            if message.len() > MAX_STRING_BYTES {
                return Err(ProtocolError::Malformed(
                    "error message longer than 4096 bytes",
                ));
            }
            let message = String::from_utf8_lossy(message).into_owned();
            match kind {
                REPLY_TYPE_ERROR if r.remaining() == 0 => ChunkBody::Error { error, message },
                REPLY_TYPE_ERROR => {
                    return Err(ProtocolError::Malformed("ERROR chunk has trailing bytes"))
                }
                REPLY_TYPE_ERROR_OFFSET => match (r.u64(), r.remaining()) {
                    (Some(offset), 0) => ChunkBody::ErrorOffset {
                        error,
                        message,
                        offset,
                    },
                    _ => {
                        return Err(ProtocolError::Malformed(
                            "ERROR_OFFSET chunk length is wrong",
                        ))
                    }
                },
                kind => ChunkBody::UnknownError {
                    kind,
                    error,
                    message,
                },
            }
        }
        _ => {
            return Err(ProtocolError::Unexpected(
                "unknown structured reply chunk type",
            ))
        }
    };
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn command() -> impl Strategy<Value = Command> {
        any::<u16>().prop_map(Command::from_code)
    }

    fn request() -> impl Strategy<Value = Request> {
        (
            any::<u16>(),
            command(),
            any::<u64>(),
            any::<u64>(),
            0u32..4096,
        )
            .prop_map(|(flags, command, cookie, offset, length)| Request {
                flags: CommandFlags::from_bits_retain(flags),
                command,
                cookie,
                offset,
                length,
            })
    }

    fn text() -> impl Strategy<Value = String> {
        "[ -~]{0,64}"
    }

    /// Owned parts of a chunk (the chunk borrows its data from them).
    type Parts = (
        bool,
        u64,
        u16,
        Vec<u8>,
        u64,
        u32,
        String,
        Vec<BlockDescriptor>,
    );

    fn chunk_parts() -> impl Strategy<Value = Parts> {
        (
            any::<bool>(),
            any::<u64>(),
            0u16..7,
            proptest::collection::vec(any::<u8>(), 1..64),
            any::<u64>(),
            1u32..,
            text(),
            proptest::collection::vec(
                (1u32.., any::<u32>())
                    .prop_map(|(length, status)| BlockDescriptor { length, status }),
                1..16,
            ),
        )
    }

    fn build(parts: &Parts) -> Chunk<'_> {
        let (done, cookie, which, data, offset, n, message, descriptors) = parts;
        let (done, cookie, which, offset, n) = (*done, *cookie, *which, *offset, *n);
        let data = data.as_slice();
        let body = match which {
            0 => ChunkBody::None,
            1 => ChunkBody::OffsetData { offset, data },
            2 => ChunkBody::OffsetHole { offset, length: n },
            3 => ChunkBody::BlockStatus {
                context_id: n,
                descriptors: descriptors.to_vec(),
            },
            4 => ChunkBody::Error {
                error: n,
                message: message.to_owned(),
            },
            5 => ChunkBody::ErrorOffset {
                error: n,
                message: message.to_owned(),
                offset,
            },
            _ => ChunkBody::UnknownError {
                kind: REPLY_TYPE_FLAG_ERROR | 77,
                error: n,
                message: message.to_owned(),
            },
        };
        // NONE is only legal as the final chunk.
        let done = done || which == 0;
        Chunk { done, cookie, body }
    }

    proptest! {
        #[test]
        fn request_round_trips(req in request(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut req = req;
            if req.command == Command::Write {
                req.length = u32::try_from(payload.len()).unwrap();
            }
            let mut buf = Vec::new();
            req.encode(&mut buf);
            if req.command == Command::Write {
                buf.extend_from_slice(&payload);
            }
            let expected_payload: &[u8] = if req.command == Command::Write { &payload } else { &[] };
            prop_assert_eq!(
                Request::decode(&buf, MAX_PAYLOAD_BYTES).unwrap(),
                Decoded::Complete { message: (req, expected_payload), consumed: buf.len() }
            );
            for cut in 0..buf.len() {
                let incomplete = matches!(Request::decode(&buf[..cut], MAX_PAYLOAD_BYTES).unwrap(), Decoded::Incomplete { needed } if needed > cut);
                prop_assert!(incomplete);
            }
        }

        #[test]
        fn chunk_round_trips(parts in chunk_parts()) {
            let chunk = build(&parts);
            let mut buf = Vec::new();
            chunk.encode(&mut buf);
            let decoded = decode_reply(&buf, |_| panic!("not a simple reply")).unwrap();
            prop_assert_eq!(decoded, Decoded::Complete { message: Reply::Chunk(chunk), consumed: buf.len() });
        }

        #[test]
        fn simple_reply_round_trips(cookie in any::<u64>(), error in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = Vec::new();
            encode_simple_reply(&mut buf, cookie, error);
            let data: &[u8] = if error == 0 { &data } else { &[] };
            buf.extend_from_slice(data);
            let len = u32::try_from(data.len()).unwrap();
            prop_assert_eq!(
                decode_reply(&buf, |c| { assert_eq!(c, cookie); len }).unwrap(),
                Decoded::Complete { message: Reply::Simple { cookie, error, data }, consumed: buf.len() }
            );
        }

        #[test]
        fn data_headers_agree_with_whole_replies(parts in chunk_parts()) {
            // The header decoder reads exactly what the whole-reply decoder reads.
            let chunk = build(&parts);
            let mut buf = Vec::new();
            chunk.encode(&mut buf);
            let header = decode_data_header(&buf).unwrap();
            match &chunk.body {
                ChunkBody::OffsetData { offset, data } => {
                    let expected = DataHeader::OffsetData {
                        cookie: chunk.cookie,
                        done: chunk.done,
                        offset: *offset,
                        data_len: u32::try_from(data.len()).unwrap(),
                    };
                    prop_assert_eq!(header, Decoded::Complete { message: Some(expected), consumed: OFFSET_DATA_HEADER_BYTES });
                    prop_assert_eq!(&buf[OFFSET_DATA_HEADER_BYTES..], *data);
                }
                _ => prop_assert_eq!(header, Decoded::Complete { message: None, consumed: CHUNK_HEADER_BYTES }),
            }
            for cut in 0..CHUNK_HEADER_BYTES {
                let incomplete = matches!(decode_data_header(&buf[..cut]).unwrap(), Decoded::Incomplete { needed } if needed > cut);
                prop_assert!(incomplete);
            }
        }

        #[test]
        fn simple_data_headers_name_the_cookie(cookie in any::<u64>(), error in any::<u32>()) {
            let mut buf = Vec::new();
            encode_simple_reply(&mut buf, cookie, error);
            let expected = (error == 0).then_some(DataHeader::Simple { cookie });
            prop_assert_eq!(decode_data_header(&buf).unwrap(), Decoded::Complete { message: expected, consumed: SIMPLE_REPLY_HEADER_BYTES });
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), n in any::<u32>()) {
            let _ = Request::decode(&bytes, MAX_PAYLOAD_BYTES);
            let _ = decode_reply(&bytes, |_| n);
            // Behind valid headers, so the payload parsers see the bytes.
            for kind in [0, 1, 2, 5, REPLY_TYPE_ERROR, REPLY_TYPE_ERROR_OFFSET, 0x8099, 9] {
                let mut buf = Vec::new();
                encode_chunk_header(&mut buf, 1, kind, 7, u32::try_from(bytes.len()).unwrap());
                buf.extend_from_slice(&bytes);
                let _ = decode_reply(&buf, |_| 0);
                let _ = decode_data_header(&buf);
            }
            let _ = decode_data_header(&bytes);
        }
    }

    #[test]
    fn huge_lengths_are_refused_not_allocated() {
        let mut buf = Vec::new();
        encode_chunk_header(&mut buf, 1, REPLY_TYPE_OFFSET_DATA, 1, u32::MAX);
        assert!(matches!(
            decode_reply(&buf, |_| 0),
            Err(ProtocolError::PayloadTooLarge { .. })
        ));
        assert!(matches!(
            decode_data_header(&buf),
            Err(ProtocolError::PayloadTooLarge { .. })
        ));
        let mut short = Vec::new();
        encode_chunk_header(&mut short, 1, REPLY_TYPE_OFFSET_DATA, 1, 8);
        assert!(matches!(
            decode_data_header(&short),
            Err(ProtocolError::Malformed(_))
        ));
        let mut buf = Vec::new();
        Request {
            flags: CommandFlags::empty(),
            command: Command::Write,
            cookie: 1,
            offset: 0,
            length: u32::MAX,
        }
        .encode(&mut buf);
        assert!(matches!(
            Request::decode(&buf, MAX_PAYLOAD_BYTES),
            Err(ProtocolError::PayloadTooLarge { .. })
        ));
        // The header alone still decodes, so a server can discard and answer EINVAL.
        assert!(matches!(
            Request::decode_header(&buf),
            Ok(Decoded::Complete { .. })
        ));
    }

    #[test]
    fn long_error_message_is_truncated_on_a_char_boundary() {
        let message = "é".repeat(3000);
        let chunk = Chunk {
            done: true,
            cookie: 3,
            body: ChunkBody::Error {
                error: EIO,
                message,
            },
        };
        let mut buf = Vec::new();
        chunk.encode(&mut buf);
        let Decoded::Complete {
            message: Reply::Chunk(c),
            ..
        } = decode_reply(&buf, |_| 0).unwrap()
        else {
            panic!("expected a chunk");
        };
        let (_, text) = c.body.error().unwrap();
        assert_eq!(text.len(), 4096);
    }
}
