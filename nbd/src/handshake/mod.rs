//! The fixed-newstyle handshake as two sans-IO state machines, one per side: bytes in,
//! bytes out, and an outcome when the handshake is over. No sockets, no time.

pub mod client;
pub mod server;

use crate::consts::TransmissionFlags;

/// What both sides agreed on when the handshake ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The export chosen.
    pub export_name: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Its transmission flags.
    pub flags: TransmissionFlags,
    /// Whether the server must answer with structured replies.
    pub structured_replies: bool,
    /// The context id of `base:allocation`, if block status was negotiated.
    pub base_allocation: Option<u32>,
    /// Largest read or write payload the client will send (the server's advertised
    /// maximum if it gave one, never more than [`crate::consts::MAX_PAYLOAD_BYTES`]).
    pub max_payload_bytes: u32,
    /// The export's `NBD_INFO_DESCRIPTION`, when the server sent one (empty otherwise).
    /// `rehydrate serve` says there which version and index an export is.
    pub description: String,
}
