//! Handshake messages: the greeting, client flags, options (client -> server) and option
//! replies (server -> client), each with an encoder and a decoder that never panics.
//!
//! Wire layouts (big-endian):
//!
//! ```text
//! greeting       S: u64 NBDMAGIC | u64 IHAVEOPT | u16 handshake flags          (18 bytes)
//! client flags   C: u32 client flags                                            (4 bytes)
//! option         C: u64 IHAVEOPT | u32 option | u32 length | length bytes data
//! option reply   S: u64 0x3e889045565a9 | u32 option | u32 reply type | u32 length | data
//! EXPORT_NAME    S: u64 size | u16 transmission flags | 124 zero bytes unless NO_ZEROES
//!
//! NBD_OPT_INFO / NBD_OPT_GO data:
//!     u32 name length | name | u16 n | n x u16 information request
//! NBD_OPT_{LIST,SET}_META_CONTEXT data:
//!     u32 name length | name | u32 n | n x (u32 query length | query)
//! NBD_REP_SERVER data:        u32 name length | name | rest: description
//! NBD_REP_INFO data:          u16 info type | info payload
//!     NBD_INFO_EXPORT         u64 size | u16 transmission flags            (length 12)
//!     NBD_INFO_NAME           name                                         (length >= 2)
//!     NBD_INFO_DESCRIPTION    description                                  (length >= 2)
//!     NBD_INFO_BLOCK_SIZE     u32 minimum | u32 preferred | u32 maximum    (length 14)
//! NBD_REP_META_CONTEXT data:  u32 context id | name
//! NBD_REP_ERR_* data:         optional message
//! ```

use crate::consts::*;
use crate::decode::{Decoded, Reader};
use crate::error::ProtocolError;

/// The server's first message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Greeting {
    /// Handshake flags offered; unknown bits are dropped, as clients must ignore them.
    pub flags: HandshakeFlags,
}

impl Greeting {
    /// Append the 18-byte greeting.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&NBD_MAGIC.to_be_bytes());
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&self.flags.bits().to_be_bytes());
    }

    /// Decode the greeting (client side).
    pub fn decode(buf: &[u8]) -> Result<Decoded<Self>, ProtocolError> {
        let mut r = Reader::new(buf);
        let Some(magic) = r.u64() else {
            return Ok(Decoded::Incomplete {
                needed: GREETING_BYTES,
            });
        };
        expect_magic(NBD_MAGIC, magic)?;
        let Some(second) = r.u64() else {
            return Ok(Decoded::Incomplete {
                needed: GREETING_BYTES,
            });
        };
        if second == OLDSTYLE_MAGIC {
            return Err(ProtocolError::Oldstyle);
        }
        expect_magic(IHAVEOPT, second)?;
        let Some(flags) = r.u16() else {
            return Ok(Decoded::Incomplete {
                needed: GREETING_BYTES,
            });
        };
        Ok(Decoded::Complete {
            message: Greeting {
                flags: HandshakeFlags::from_bits_truncate(flags),
            },
            consumed: GREETING_BYTES,
        })
    }
}

/// Append the client's 4-byte flags.
pub fn encode_client_flags(flags: ClientFlags, out: &mut Vec<u8>) {
    out.extend_from_slice(&flags.bits().to_be_bytes());
}

/// Decode the client's flags (server side). Unknown bits are a protocol error, as the spec
/// requires the server to drop such a client.
pub fn decode_client_flags(buf: &[u8]) -> Result<Decoded<ClientFlags>, ProtocolError> {
    let Some(bits) = Reader::new(buf).u32() else {
        return Ok(Decoded::Incomplete { needed: 4 });
    };
    let flags = ClientFlags::from_bits(bits).ok_or(ProtocolError::BadClientFlags(bits))?;
    Ok(Decoded::Complete {
        message: flags,
        consumed: 4,
    })
}

/// The body of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoRequest {
    /// Export name (empty means the default export).
    pub name: String,
    /// `NBD_INFO_*` types the client asks for.
    pub info_requests: Vec<u16>,
}

/// The body of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaContextRequest {
    /// Export name the contexts are for.
    pub name: String,
    /// Queries such as `base:allocation` or `base:`.
    pub queries: Vec<String>,
}

/// One option sent by the client during the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME`.
    ExportName(String),
    /// `NBD_OPT_ABORT` (any data is ignored, as the spec asks).
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_STARTTLS`.
    StartTls,
    /// `NBD_OPT_INFO`.
    Info(GoRequest),
    /// `NBD_OPT_GO`.
    Go(GoRequest),
    /// `NBD_OPT_STRUCTURED_REPLY`.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT`.
    ListMetaContext(MetaContextRequest),
    /// `NBD_OPT_SET_META_CONTEXT`.
    SetMetaContext(MetaContextRequest),
    /// An option this crate does not know; answered `NBD_REP_ERR_UNSUP`.
    Unknown {
        /// The option code.
        option: u32,
        /// Its payload (at most [`MAX_OPTION_DATA_BYTES`]).
        data: Vec<u8>,
    },
    /// A known option whose payload does not parse; answered `NBD_REP_ERR_INVALID`.
    /// Encodes as the bare option with no data.
    Invalid {
        /// The option code.
        option: u32,
        /// Which rule the payload broke.
        reason: &'static str,
    },
}

impl ClientOption {
    /// The option code on the wire.
    pub fn code(&self) -> u32 {
        match self {
            ClientOption::ExportName(_) => OPT_EXPORT_NAME,
            ClientOption::Abort => OPT_ABORT,
            ClientOption::List => OPT_LIST,
            ClientOption::StartTls => OPT_STARTTLS,
            ClientOption::Info(_) => OPT_INFO,
            ClientOption::Go(_) => OPT_GO,
            ClientOption::StructuredReply => OPT_STRUCTURED_REPLY,
            ClientOption::ListMetaContext(_) => OPT_LIST_META_CONTEXT,
            ClientOption::SetMetaContext(_) => OPT_SET_META_CONTEXT,
            ClientOption::Unknown { option, .. } | ClientOption::Invalid { option, .. } => *option,
        }
    }

    /// Append the option, header included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut data = Vec::new();
        match self {
            ClientOption::ExportName(name) => data.extend_from_slice(name.as_bytes()),
            ClientOption::Abort
            | ClientOption::List
            | ClientOption::StartTls
            | ClientOption::StructuredReply
            | ClientOption::Invalid { .. } => {}
            ClientOption::Info(go) | ClientOption::Go(go) => {
                put_string32(&mut data, &go.name);
                data.extend_from_slice(&len_u16(go.info_requests.len()).to_be_bytes());
                for info in &go.info_requests {
                    data.extend_from_slice(&info.to_be_bytes());
                }
            }
            ClientOption::ListMetaContext(meta) | ClientOption::SetMetaContext(meta) => {
                put_string32(&mut data, &meta.name);
                data.extend_from_slice(&len_u32(meta.queries.len()).to_be_bytes());
                for query in &meta.queries {
                    put_string32(&mut data, query);
                }
            }
            ClientOption::Unknown { data: d, .. } => data.extend_from_slice(d),
        }
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&self.code().to_be_bytes());
        out.extend_from_slice(&len_u32(data.len()).to_be_bytes());
        out.extend_from_slice(&data);
    }

    /// Decode one option (server side). A payload over [`MAX_OPTION_DATA_BYTES`] is an
    /// error (the caller hangs up); a payload that merely does not parse is
    /// [`ClientOption::Invalid`], so the server can answer `NBD_REP_ERR_INVALID`.
    pub fn decode(buf: &[u8]) -> Result<Decoded<Self>, ProtocolError> {
        let mut r = Reader::new(buf);
        let (Some(magic), Some(option), Some(length)) = (r.u64(), r.u32(), r.u32()) else {
            return Ok(Decoded::Incomplete {
                needed: OPTION_HEADER_BYTES,
            });
        };
        expect_magic(IHAVEOPT, magic)?;
        let data_len = length as usize;
        if data_len > MAX_OPTION_DATA_BYTES {
            return Err(ProtocolError::OptionTooLarge {
                option,
                length,
                max: MAX_OPTION_DATA_BYTES,
            });
        }
        let total = OPTION_HEADER_BYTES + data_len;
        let Some(data) = r.bytes(data_len) else {
            return Ok(Decoded::Incomplete { needed: total });
        };
        Ok(Decoded::Complete {
            message: parse_option(option, data),
            consumed: total,
        })
    }
}

fn parse_option(option: u32, data: &[u8]) -> ClientOption {
    let invalid = |reason| ClientOption::Invalid { option, reason };
    match option {
        OPT_EXPORT_NAME => match strict_string(data) {
            Ok(name) => ClientOption::ExportName(name),
            Err(reason) => invalid(reason),
        },
        OPT_ABORT => ClientOption::Abort,
        OPT_LIST | OPT_STARTTLS | OPT_STRUCTURED_REPLY if !data.is_empty() => {
            invalid("option takes no data")
        }
        OPT_LIST => ClientOption::List,
        OPT_STARTTLS => ClientOption::StartTls,
        OPT_STRUCTURED_REPLY => ClientOption::StructuredReply,
        OPT_INFO | OPT_GO => match parse_go(data) {
            Ok(go) if option == OPT_GO => ClientOption::Go(go),
            Ok(go) => ClientOption::Info(go),
            Err(reason) => invalid(reason),
        },
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => match parse_meta(data) {
            Ok(meta) if option == OPT_SET_META_CONTEXT => ClientOption::SetMetaContext(meta),
            Ok(meta) => ClientOption::ListMetaContext(meta),
            Err(reason) => invalid(reason),
        },
        _ => ClientOption::Unknown {
            option,
            data: data.to_vec(),
        },
    }
}

fn parse_go(data: &[u8]) -> Result<GoRequest, &'static str> {
    let mut r = Reader::new(data);
    let name = take_string32(&mut r)?;
    let count = r.u16().ok_or("missing information request count")? as usize;
    if count > MAX_INFO_REQUESTS {
        return Err("too many information requests");
    }
    if r.remaining() != count * 2 {
        return Err("information request count does not match the option length");
    }
    let mut info_requests = Vec::with_capacity(count);
    for _ in 0..count {
        info_requests.push(r.u16().ok_or("truncated information request")?);
    }
    Ok(GoRequest {
        name,
        info_requests,
    })
}

fn parse_meta(data: &[u8]) -> Result<MetaContextRequest, &'static str> {
    let mut r = Reader::new(data);
    let name = take_string32(&mut r)?;
    let count = r.u32().ok_or("missing query count")? as usize;
    if count > MAX_META_QUERIES {
        return Err("too many queries");
    }
    let mut queries = Vec::with_capacity(count);
    for _ in 0..count {
        queries.push(take_string32(&mut r)?);
    }
    if r.remaining() != 0 {
        return Err("trailing bytes after the queries");
    }
    Ok(MetaContextRequest { name, queries })
}

/// Information carried by one `NBD_REP_INFO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InfoReply {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    Export {
        /// Export size in bytes.
        size_bytes: u64,
        /// Transmission flags.
        flags: TransmissionFlags,
    },
    /// `NBD_INFO_NAME`.
    Name(String),
    /// `NBD_INFO_DESCRIPTION`.
    Description(String),
    /// `NBD_INFO_BLOCK_SIZE`.
    BlockSize {
        /// Minimum block size.
        minimum: u32,
        /// Preferred block size.
        preferred: u32,
        /// Maximum payload size.
        maximum: u32,
    },
    /// An information type we do not know; clients must ignore it.
    Unknown {
        /// The `NBD_INFO_*` type.
        kind: u16,
        /// Its payload.
        data: Vec<u8>,
    },
}

/// The body of one option reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyBody {
    /// `NBD_REP_ACK`.
    Ack,
    /// `NBD_REP_SERVER`: an export name and free-form details.
    Server {
        /// Export name.
        name: String,
        /// Whatever follows the name (a description).
        details: String,
    },
    /// `NBD_REP_INFO`.
    Info(InfoReply),
    /// `NBD_REP_META_CONTEXT`.
    MetaContext {
        /// Context id to match block status chunks against.
        id: u32,
        /// Context name, e.g. `base:allocation`.
        name: String,
    },
    /// An `NBD_REP_ERR_*` reply with an optional message.
    Error {
        /// The reply type (bit 31 set).
        code: u32,
        /// The message, possibly empty.
        message: String,
    },
    /// A non-error reply type we do not know (a protocol error for the client).
    Unknown {
        /// The reply type.
        code: u32,
        /// Its payload.
        data: Vec<u8>,
    },
}

/// One reply to an option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionReply {
    /// The option this answers.
    pub option: u32,
    /// What it says.
    pub body: ReplyBody,
}

impl OptionReply {
    /// Shorthand for an `NBD_REP_ACK`.
    pub fn ack(option: u32) -> Self {
        Self {
            option,
            body: ReplyBody::Ack,
        }
    }

    /// Shorthand for an error reply with a message.
    pub fn error(option: u32, code: u32, message: impl Into<String>) -> Self {
        debug_assert!(code & REP_FLAG_ERROR != 0);
        Self {
            option,
            body: ReplyBody::Error {
                code,
                message: message.into(),
            },
        }
    }

    /// The reply type on the wire.
    pub fn code(&self) -> u32 {
        match &self.body {
            ReplyBody::Ack => REP_ACK,
            ReplyBody::Server { .. } => REP_SERVER,
            ReplyBody::Info(_) => REP_INFO,
            ReplyBody::MetaContext { .. } => REP_META_CONTEXT,
            ReplyBody::Error { code, .. } | ReplyBody::Unknown { code, .. } => *code,
        }
    }

    /// Append the reply, header included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut data = Vec::new();
        match &self.body {
            ReplyBody::Ack => {}
            ReplyBody::Server { name, details } => {
                put_string32(&mut data, name);
                data.extend_from_slice(details.as_bytes());
            }
            ReplyBody::Info(info) => encode_info(info, &mut data),
            ReplyBody::MetaContext { id, name } => {
                data.extend_from_slice(&id.to_be_bytes());
                data.extend_from_slice(name.as_bytes());
            }
            ReplyBody::Error { message, .. } => data.extend_from_slice(message.as_bytes()),
            ReplyBody::Unknown { data: d, .. } => data.extend_from_slice(d),
        }
        out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        out.extend_from_slice(&self.option.to_be_bytes());
        out.extend_from_slice(&self.code().to_be_bytes());
        out.extend_from_slice(&len_u32(data.len()).to_be_bytes());
        out.extend_from_slice(&data);
    }

    /// Decode one option reply (client side).
    pub fn decode(buf: &[u8]) -> Result<Decoded<Self>, ProtocolError> {
        let mut r = Reader::new(buf);
        let (Some(magic), Some(option), Some(code), Some(length)) =
            (r.u64(), r.u32(), r.u32(), r.u32())
        else {
            return Ok(Decoded::Incomplete {
                needed: OPTION_REPLY_HEADER_BYTES,
            });
        };
        expect_magic(OPTION_REPLY_MAGIC, magic)?;
        let data_len = length as usize;
        if data_len > MAX_OPTION_REPLY_BYTES {
            return Err(ProtocolError::OptionReplyTooLarge {
                length,
                max: MAX_OPTION_REPLY_BYTES,
            });
        }
        let total = OPTION_REPLY_HEADER_BYTES + data_len;
        let Some(data) = r.bytes(data_len) else {
            return Ok(Decoded::Incomplete { needed: total });
        };
        Ok(Decoded::Complete {
            message: OptionReply {
                option,
                body: parse_reply_body(code, data)?,
            },
            consumed: total,
        })
    }
}

fn encode_info(info: &InfoReply, data: &mut Vec<u8>) {
    match info {
        InfoReply::Export { size_bytes, flags } => {
            data.extend_from_slice(&INFO_EXPORT.to_be_bytes());
            data.extend_from_slice(&size_bytes.to_be_bytes());
            data.extend_from_slice(&flags.bits().to_be_bytes());
        }
        InfoReply::Name(name) => {
            data.extend_from_slice(&INFO_NAME.to_be_bytes());
            data.extend_from_slice(name.as_bytes());
        }
        InfoReply::Description(text) => {
            data.extend_from_slice(&INFO_DESCRIPTION.to_be_bytes());
            data.extend_from_slice(text.as_bytes());
        }
        InfoReply::BlockSize {
            minimum,
            preferred,
            maximum,
        } => {
            data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
            data.extend_from_slice(&minimum.to_be_bytes());
            data.extend_from_slice(&preferred.to_be_bytes());
            data.extend_from_slice(&maximum.to_be_bytes());
        }
        InfoReply::Unknown { kind, data: d } => {
            data.extend_from_slice(&kind.to_be_bytes());
            data.extend_from_slice(d);
        }
    }
}

fn parse_reply_body(code: u32, data: &[u8]) -> Result<ReplyBody, ProtocolError> {
    let mut r = Reader::new(data);
    Ok(match code {
        REP_ACK if data.is_empty() => ReplyBody::Ack,
        REP_ACK => return Err(ProtocolError::Malformed("NBD_REP_ACK carries data")),
        REP_SERVER => {
            let name = take_string32(&mut r).map_err(ProtocolError::Malformed)?;
            ReplyBody::Server {
                name,
                details: lossy_string(r.rest()).map_err(ProtocolError::Malformed)?,
            }
        }
        REP_INFO => ReplyBody::Info(parse_info(&mut r)?),
        REP_META_CONTEXT => {
            let id = r.u32().ok_or(ProtocolError::Malformed(
                "NBD_REP_META_CONTEXT shorter than 4 bytes",
            ))?;
            ReplyBody::MetaContext {
                id,
                name: lossy_string(r.rest()).map_err(ProtocolError::Malformed)?,
            }
        }
        code if code & REP_FLAG_ERROR != 0 => ReplyBody::Error {
            code,
            message: lossy_string(data).map_err(ProtocolError::Malformed)?,
        },
        code => ReplyBody::Unknown {
            code,
            data: data.to_vec(),
        },
    })
}

fn parse_info(r: &mut Reader<'_>) -> Result<InfoReply, ProtocolError> {
    let kind = r.u16().ok_or(ProtocolError::Malformed(
        "NBD_REP_INFO shorter than 2 bytes",
    ))?;
    let rest = r.rest();
    let mut p = Reader::new(rest);
    Ok(match kind {
        INFO_EXPORT => match (p.u64(), p.u16(), p.remaining()) {
            (Some(size_bytes), Some(flags), 0) => InfoReply::Export {
                size_bytes,
                flags: TransmissionFlags::from_bits_retain(flags),
            },
            _ => return Err(ProtocolError::Malformed("NBD_INFO_EXPORT length is not 12")),
        },
        INFO_NAME => InfoReply::Name(lossy_string(rest).map_err(ProtocolError::Malformed)?),
        INFO_DESCRIPTION => {
            InfoReply::Description(lossy_string(rest).map_err(ProtocolError::Malformed)?)
        }
        INFO_BLOCK_SIZE => match (p.u32(), p.u32(), p.u32(), p.remaining()) {
            (Some(minimum), Some(preferred), Some(maximum), 0) => InfoReply::BlockSize {
                minimum,
                preferred,
                maximum,
            },
            _ => {
                return Err(ProtocolError::Malformed(
                    "NBD_INFO_BLOCK_SIZE length is not 14",
                ))
            }
        },
        kind => InfoReply::Unknown {
            kind,
            data: rest.to_vec(),
        },
    })
}

/// The server's answer to `NBD_OPT_EXPORT_NAME`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportNameReply {
    /// Export size in bytes.
    pub size_bytes: u64,
    /// Transmission flags.
    pub flags: TransmissionFlags,
}

impl ExportNameReply {
    /// Append the answer; `no_zeroes` omits the 124 bytes of padding.
    pub fn encode(&self, no_zeroes: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.size_bytes.to_be_bytes());
        out.extend_from_slice(&self.flags.bits().to_be_bytes());
        if !no_zeroes {
            out.extend_from_slice(&[0u8; EXPORT_NAME_ZEROES]);
        }
    }

    /// Decode the answer (client side); the padding is skipped, not checked.
    pub fn decode(buf: &[u8], no_zeroes: bool) -> Result<Decoded<Self>, ProtocolError> {
        let total = 10 + if no_zeroes { 0 } else { EXPORT_NAME_ZEROES };
        let mut r = Reader::new(buf);
        match (r.u64(), r.u16(), buf.len() >= total) {
            (Some(size_bytes), Some(flags), true) => Ok(Decoded::Complete {
                message: ExportNameReply {
                    size_bytes,
                    flags: TransmissionFlags::from_bits_retain(flags),
                },
                consumed: total,
            }),
            _ => Ok(Decoded::Incomplete { needed: total }),
        }
    }
}

// ---- helpers -------------------------------------------------------------------------

fn expect_magic(expected: u64, found: u64) -> Result<(), ProtocolError> {
    if expected == found {
        Ok(())
    } else {
        Err(ProtocolError::BadMagic { expected, found })
    }
}

/// Lengths we encode come from strings and lists we built or bounded; saturate rather than
/// wrap if a caller hands us something absurd (the peer then rejects it).
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn len_u16(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

fn put_string32(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&len_u32(s.len()).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A u32-length-prefixed UTF-8 string of at most [`MAX_STRING_BYTES`].
fn take_string32(r: &mut Reader<'_>) -> Result<String, &'static str> {
    let len = r.u32().ok_or("missing string length")? as usize;
    if len > MAX_STRING_BYTES {
        return Err("string longer than 4096 bytes");
    }
    let bytes = r
        .bytes(len)
        .ok_or("string runs past the end of the message")?;
    strict_string(bytes)
}

/// Names a client sends must be UTF-8 and bounded; we reject rather than guess.
fn strict_string(bytes: &[u8]) -> Result<String, &'static str> {
    if bytes.len() > MAX_STRING_BYTES {
        return Err("string longer than 4096 bytes");
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| "string is not UTF-8")
}

/// Text a server sends for display; bounded, and made printable rather than refused.
fn lossy_string(bytes: &[u8]) -> Result<String, &'static str> {
    if bytes.len() > MAX_STRING_BYTES {
        return Err("string longer than 4096 bytes");
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9:@/._-]{0,40}"
    }

    pub(crate) fn go_request() -> impl Strategy<Value = GoRequest> {
        (name(), proptest::collection::vec(any::<u16>(), 0..8)).prop_map(|(name, info_requests)| {
            GoRequest {
                name,
                info_requests,
            }
        })
    }

    pub(crate) fn meta_request() -> impl Strategy<Value = MetaContextRequest> {
        (name(), proptest::collection::vec(name(), 0..5))
            .prop_map(|(name, queries)| MetaContextRequest { name, queries })
    }

    pub(crate) fn client_option() -> impl Strategy<Value = ClientOption> {
        prop_oneof![
            name().prop_map(ClientOption::ExportName),
            Just(ClientOption::Abort),
            Just(ClientOption::List),
            Just(ClientOption::StartTls),
            go_request().prop_map(ClientOption::Info),
            go_request().prop_map(ClientOption::Go),
            Just(ClientOption::StructuredReply),
            meta_request().prop_map(ClientOption::ListMetaContext),
            meta_request().prop_map(ClientOption::SetMetaContext),
            (
                11u32..0x8000_0000,
                proptest::collection::vec(any::<u8>(), 0..32)
            )
                .prop_map(|(option, data)| ClientOption::Unknown { option, data }),
        ]
    }

    fn info_reply() -> impl Strategy<Value = InfoReply> {
        prop_oneof![
            (any::<u64>(), any::<u16>()).prop_map(|(size_bytes, f)| InfoReply::Export {
                size_bytes,
                flags: TransmissionFlags::from_bits_retain(f)
            }),
            name().prop_map(InfoReply::Name),
            name().prop_map(InfoReply::Description),
            (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(minimum, preferred, maximum)| {
                InfoReply::BlockSize {
                    minimum,
                    preferred,
                    maximum,
                }
            }),
            (4u16.., proptest::collection::vec(any::<u8>(), 0..16))
                .prop_map(|(kind, data)| InfoReply::Unknown { kind, data }),
        ]
    }

    pub(crate) fn option_reply() -> impl Strategy<Value = OptionReply> {
        let body = prop_oneof![
            Just(ReplyBody::Ack),
            (name(), name()).prop_map(|(name, details)| ReplyBody::Server { name, details }),
            info_reply().prop_map(ReplyBody::Info),
            (any::<u32>(), name()).prop_map(|(id, name)| ReplyBody::MetaContext { id, name }),
            (REP_FLAG_ERROR.., name())
                .prop_map(|(code, message)| ReplyBody::Error { code, message }),
            (
                5u32..REP_FLAG_ERROR,
                proptest::collection::vec(any::<u8>(), 0..16)
            )
                .prop_map(|(code, data)| ReplyBody::Unknown { code, data }),
        ];
        (any::<u32>(), body).prop_map(|(option, body)| OptionReply { option, body })
    }

    proptest! {
        #[test]
        fn client_option_round_trips(opt in client_option()) {
            let mut buf = Vec::new();
            opt.encode(&mut buf);
            let decoded = ClientOption::decode(&buf).unwrap();
            prop_assert_eq!(decoded, Decoded::Complete { message: opt, consumed: buf.len() });
            // Every strict prefix asks for more and never claims a message.
            for cut in 0..buf.len() {
                let partial = ClientOption::decode(&buf[..cut]).unwrap();
                let needs_more = matches!(partial, Decoded::Incomplete { needed } if needed > cut);
                prop_assert!(needs_more);
            }
        }

        #[test]
        fn option_reply_round_trips(reply in option_reply()) {
            let mut buf = Vec::new();
            reply.encode(&mut buf);
            let decoded = OptionReply::decode(&buf).unwrap();
            prop_assert_eq!(decoded, Decoded::Complete { message: reply, consumed: buf.len() });
        }

        #[test]
        fn greeting_and_export_name_round_trip(flags in 0u16..4, size in any::<u64>(), tf in any::<u16>(), nz in any::<bool>()) {
            let g = Greeting { flags: HandshakeFlags::from_bits_truncate(flags) };
            let mut buf = Vec::new();
            g.encode(&mut buf);
            prop_assert_eq!(Greeting::decode(&buf).unwrap(), Decoded::Complete { message: g, consumed: 18 });
            let e = ExportNameReply { size_bytes: size, flags: TransmissionFlags::from_bits_retain(tf) };
            let mut buf = Vec::new();
            e.encode(nz, &mut buf);
            prop_assert_eq!(ExportNameReply::decode(&buf, nz).unwrap(), Decoded::Complete { message: e, consumed: buf.len() });
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = ClientOption::decode(&bytes);
            let _ = OptionReply::decode(&bytes);
            let _ = Greeting::decode(&bytes);
            let _ = decode_client_flags(&bytes);
            let _ = ExportNameReply::decode(&bytes, false);
            // With a valid header the payload parsers see the arbitrary bytes too.
            for option in 0..12u32 {
                let mut buf = Vec::new();
                ClientOption::Unknown { option, data: bytes.clone() }.encode(&mut buf);
                let _ = ClientOption::decode(&buf);
                let mut buf = Vec::new();
                OptionReply { option, body: ReplyBody::Unknown { code: option, data: bytes.clone() } }.encode(&mut buf);
                let _ = OptionReply::decode(&buf);
            }
        }
    }

    #[test]
    fn oversized_option_is_refused_before_allocation() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&IHAVEOPT.to_be_bytes());
        buf.extend_from_slice(&OPT_GO.to_be_bytes());
        buf.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            ClientOption::decode(&buf),
            Err(ProtocolError::OptionTooLarge { .. })
        ));
    }

    #[test]
    fn go_with_lying_name_length_is_invalid() {
        let mut data = Vec::new();
        data.extend_from_slice(&100u32.to_be_bytes());
        data.extend_from_slice(b"abc");
        assert!(matches!(
            parse_option(OPT_GO, &data),
            ClientOption::Invalid { .. }
        ));
    }

    #[test]
    fn oldstyle_server_is_named() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&NBD_MAGIC.to_be_bytes());
        buf.extend_from_slice(&OLDSTYLE_MAGIC.to_be_bytes());
        assert_eq!(Greeting::decode(&buf), Err(ProtocolError::Oldstyle));
    }
}
