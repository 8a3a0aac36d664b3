//! Every number on the wire, named as in the spec (NetworkBlockDevice/nbd `doc/proto.md`),
//! plus the bounds this crate puts on anything a peer can make us allocate.
//!
//! All integers on the wire are big-endian.

use bitflags::bitflags;

// ---- magic numbers -------------------------------------------------------------------

/// `NBDMAGIC`: the first 8 bytes a server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle magic; also prefixes every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// The oldstyle magic that follows `NBDMAGIC` on an oldstyle server (not supported).
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Prefix of every fixed-newstyle option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// `NBD_REQUEST_MAGIC`: prefix of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_SIMPLE_REPLY_MAGIC`.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// `NBD_STRUCTURED_REPLY_MAGIC`.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// ---- option types (client -> server, handshake) --------------------------------------

/// `NBD_OPT_EXPORT_NAME`: choose an export and enter transmission (no error path).
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`: soft disconnect during the handshake.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`: list export names.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_STARTTLS`: upgrade to TLS (not supported by this crate).
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO`: describe an export without entering transmission.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`: describe an export and enter transmission.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`: ask for structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_OPT_LIST_META_CONTEXT`: list metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// `NBD_OPT_SET_META_CONTEXT`: select metadata contexts for block status.
pub const OPT_SET_META_CONTEXT: u32 = 10;

// ---- option reply types (server -> client, handshake) --------------------------------

/// `NBD_REP_ACK`.
pub const REP_ACK: u32 = 1;
/// `NBD_REP_SERVER`: one export in an `NBD_OPT_LIST` answer.
pub const REP_SERVER: u32 = 2;
/// `NBD_REP_INFO`: one piece of export information.
pub const REP_INFO: u32 = 3;
/// `NBD_REP_META_CONTEXT`: one metadata context.
pub const REP_META_CONTEXT: u32 = 4;
/// Bit 31 marks every error reply.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// `NBD_REP_ERR_UNSUP`: option unknown to this server.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
/// `NBD_REP_ERR_POLICY`: forbidden by server policy.
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
/// `NBD_REP_ERR_INVALID`: syntactically or semantically invalid.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
/// `NBD_REP_ERR_PLATFORM`: not supported on this platform.
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
/// `NBD_REP_ERR_TLS_REQD`: TLS required first.
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
/// `NBD_REP_ERR_UNKNOWN`: no such export.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
/// `NBD_REP_ERR_SHUTDOWN`: server shutting down.
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
/// `NBD_REP_ERR_BLOCK_SIZE_REQD`: client must request block sizes.
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
/// `NBD_REP_ERR_TOO_BIG`: request or reply too large.
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

// ---- NBD_INFO types (inside NBD_REP_INFO) ---------------------------------------------

/// `NBD_INFO_EXPORT`: size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_NAME`: canonical export name.
pub const INFO_NAME: u16 = 1;
/// `NBD_INFO_DESCRIPTION`: human-readable description.
pub const INFO_DESCRIPTION: u16 = 2;
/// `NBD_INFO_BLOCK_SIZE`: minimum, preferred and maximum block sizes.
pub const INFO_BLOCK_SIZE: u16 = 3;

// ---- handshake flags -----------------------------------------------------------------

bitflags! {
    /// The 16-bit flags the server sends in its greeting.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct HandshakeFlags: u16 {
        /// `NBD_FLAG_FIXED_NEWSTYLE`.
        const FIXED_NEWSTYLE = 1 << 0;
        /// `NBD_FLAG_NO_ZEROES`.
        const NO_ZEROES = 1 << 1;
    }
}

bitflags! {
    /// The 32-bit flags the client answers the greeting with.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct ClientFlags: u32 {
        /// `NBD_FLAG_C_FIXED_NEWSTYLE`.
        const FIXED_NEWSTYLE = 1 << 0;
        /// `NBD_FLAG_C_NO_ZEROES`.
        const NO_ZEROES = 1 << 1;
    }
}

bitflags! {
    /// The 16-bit transmission flags describing an export.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct TransmissionFlags: u16 {
        /// `NBD_FLAG_HAS_FLAGS`: always set.
        const HAS_FLAGS = 1 << 0;
        /// `NBD_FLAG_READ_ONLY`.
        const READ_ONLY = 1 << 1;
        /// `NBD_FLAG_SEND_FLUSH`.
        const SEND_FLUSH = 1 << 2;
        /// `NBD_FLAG_SEND_FUA`.
        const SEND_FUA = 1 << 3;
        /// `NBD_FLAG_ROTATIONAL`.
        const ROTATIONAL = 1 << 4;
        /// `NBD_FLAG_SEND_TRIM`.
        const SEND_TRIM = 1 << 5;
        /// `NBD_FLAG_SEND_WRITE_ZEROES`.
        const SEND_WRITE_ZEROES = 1 << 6;
        /// `NBD_FLAG_SEND_DF`: reads honour `NBD_CMD_FLAG_DF` (structured replies only).
        const SEND_DF = 1 << 7;
        /// `NBD_FLAG_CAN_MULTI_CONN`: flush is visible across connections.
        const CAN_MULTI_CONN = 1 << 8;
        /// `NBD_FLAG_SEND_CACHE`.
        const SEND_CACHE = 1 << 10;
        /// `NBD_FLAG_SEND_FAST_ZERO`.
        const SEND_FAST_ZERO = 1 << 11;
        // Unknown bits are kept (clients must ignore them, not reject them).
        const _ = !0;
    }
}

bitflags! {
    /// The 16-bit command flags of a request.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct CommandFlags: u16 {
        /// `NBD_CMD_FLAG_FUA`: persist before replying.
        const FUA = 1 << 0;
        /// `NBD_CMD_FLAG_NO_HOLE`: write zeroes without punching a hole.
        const NO_HOLE = 1 << 1;
        /// `NBD_CMD_FLAG_DF`: at most one content chunk in the read reply.
        const DF = 1 << 2;
        /// `NBD_CMD_FLAG_REQ_ONE`: one extent only in the block status reply.
        const REQ_ONE = 1 << 3;
        /// `NBD_CMD_FLAG_FAST_ZERO`.
        const FAST_ZERO = 1 << 4;
        // Unknown bits are kept so the server can answer them with NBD_EINVAL.
        const _ = !0;
    }
}

// ---- commands ------------------------------------------------------------------------

/// `NBD_CMD_READ`.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM`.
pub const CMD_TRIM: u16 = 4;
/// `NBD_CMD_CACHE`.
pub const CMD_CACHE: u16 = 5;
/// `NBD_CMD_WRITE_ZEROES`.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// `NBD_CMD_BLOCK_STATUS`.
pub const CMD_BLOCK_STATUS: u16 = 7;

// ---- structured replies --------------------------------------------------------------

/// `NBD_REPLY_FLAG_DONE`: the last chunk of a reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// `NBD_REPLY_TYPE_NONE`.
pub const REPLY_TYPE_NONE: u16 = 0;
/// `NBD_REPLY_TYPE_OFFSET_DATA`.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// `NBD_REPLY_TYPE_OFFSET_HOLE`.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// `NBD_REPLY_TYPE_BLOCK_STATUS`.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Bit 15 marks every error chunk type.
pub const REPLY_TYPE_FLAG_ERROR: u16 = 1 << 15;
/// `NBD_REPLY_TYPE_ERROR`.
pub const REPLY_TYPE_ERROR: u16 = REPLY_TYPE_FLAG_ERROR | 1;
/// `NBD_REPLY_TYPE_ERROR_OFFSET`.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = REPLY_TYPE_FLAG_ERROR | 2;

// ---- base:allocation -----------------------------------------------------------------

/// The one metadata context this crate speaks.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// `NBD_STATE_HOLE`: the extent is not allocated.
pub const STATE_HOLE: u32 = 1 << 0;
/// `NBD_STATE_ZERO`: the extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

// ---- error values (transmission) -----------------------------------------------------

/// `NBD_EPERM`: e.g. a write to a read-only export.
pub const EPERM: u32 = 1;
/// `NBD_EIO`.
pub const EIO: u32 = 5;
/// `NBD_ENOMEM`.
pub const ENOMEM: u32 = 12;
/// `NBD_EINVAL`: bad request, unknown command or flag, read past the end.
pub const EINVAL: u32 = 22;
/// `NBD_ENOSPC`: write past the end.
pub const ENOSPC: u32 = 28;
/// `NBD_EOVERFLOW`: too large for a payload-less command or a DF read.
pub const EOVERFLOW: u32 = 75;
/// `NBD_ENOTSUP`.
pub const ENOTSUP: u32 = 95;
/// `NBD_ESHUTDOWN`.
pub const ESHUTDOWN: u32 = 108;

// ---- bounds --------------------------------------------------------------------------

/// Longest string (export name, query, message) we accept; the spec's own limit.
pub const MAX_STRING_BYTES: usize = 4096;
/// Largest option payload a client may send us. Enough for a name plus a few queries;
/// anything larger is treated as a denial of service (hard disconnect).
pub const MAX_OPTION_DATA_BYTES: usize = 64 * 1024;
/// Largest option reply payload we accept from a server, for the same reason.
pub const MAX_OPTION_REPLY_BYTES: usize = 64 * 1024;
/// Most metadata-context queries we parse in one option.
pub const MAX_META_QUERIES: usize = 64;
/// Most information requests we parse in one `NBD_OPT_INFO`/`NBD_OPT_GO`.
pub const MAX_INFO_REQUESTS: usize = 64;
/// Most options one handshake may send before we hang up (a loop bound, not a spec rule).
pub const MAX_OPTIONS_PER_HANDSHAKE: u32 = 1024;
/// Largest read or write payload (2^25, the spec's interoperable maximum).
pub const MAX_PAYLOAD_BYTES: u32 = 32 * 1024 * 1024;
/// Largest structured chunk payload we accept: a full payload plus its 8-byte offset.
pub const MAX_CHUNK_PAYLOAD_BYTES: u32 = MAX_PAYLOAD_BYTES + 8;
/// Most block status descriptors one chunk may carry (the spec's SHOULD limit, 2^20).
pub const MAX_BLOCK_STATUS_DESCRIPTORS: usize = 1 << 20;
/// The preferred block size we advertise.
pub const PREFERRED_BLOCK_BYTES: u32 = 4096;
/// Length of the greeting: NBDMAGIC + IHAVEOPT + handshake flags.
pub const GREETING_BYTES: usize = 8 + 8 + 2;
/// Length of an option header: IHAVEOPT + option + length.
pub const OPTION_HEADER_BYTES: usize = 8 + 4 + 4;
/// Length of an option reply header: magic + option + type + length.
pub const OPTION_REPLY_HEADER_BYTES: usize = 8 + 4 + 4 + 4;
/// Length of a request header.
pub const REQUEST_HEADER_BYTES: usize = 4 + 2 + 2 + 8 + 8 + 4;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_HEADER_BYTES: usize = 4 + 4 + 8;
/// Length of a structured reply chunk header.
pub const CHUNK_HEADER_BYTES: usize = 4 + 2 + 2 + 8 + 4;
/// Zero padding after an `NBD_OPT_EXPORT_NAME` answer unless NO_ZEROES was agreed.
pub const EXPORT_NAME_ZEROES: usize = 124;

const _: () = assert!(MAX_STRING_BYTES + 4 + 2 + 2 * MAX_INFO_REQUESTS <= MAX_OPTION_DATA_BYTES);
const _: () = assert!(REQUEST_HEADER_BYTES == 28);
const _: () = assert!(CHUNK_HEADER_BYTES == 20);
// A full block status chunk fits under the chunk cap, so a legal reply is never refused.
const _: () = assert!(4 + 8 * MAX_BLOCK_STATUS_DESCRIPTORS <= MAX_CHUNK_PAYLOAD_BYTES as usize);
const _: () = assert!(PREFERRED_BLOCK_BYTES <= MAX_PAYLOAD_BYTES);
