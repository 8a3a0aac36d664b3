//! Typed errors: [`ProtocolError`] for bytes that break the protocol (the codec's
//! boundary) and [`Error`] for everything the client and server shells report.

use crate::consts;

/// Bytes from a peer that break the NBD protocol. Decoders return these instead of
/// panicking; the shells answer them with a hard disconnect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A magic number was not the one the protocol requires here.
    #[error("bad magic: expected {expected:#x}, found {found:#x}")]
    BadMagic {
        /// The magic the protocol requires.
        expected: u64,
        /// What the peer sent.
        found: u64,
    },
    /// The server speaks the oldstyle handshake, which this crate does not.
    #[error("server uses the oldstyle handshake, which is not supported")]
    Oldstyle,
    /// The client set handshake flags the server did not offer or does not know.
    #[error("client sent unknown or unoffered flags {0:#x}")]
    BadClientFlags(u32),
    /// An option payload longer than [`consts::MAX_OPTION_DATA_BYTES`].
    #[error("option {option} carries {length} bytes, more than the {max} allowed")]
    OptionTooLarge {
        /// The option code.
        option: u32,
        /// Its declared payload length.
        length: u32,
        /// The bound.
        max: usize,
    },
    /// An option reply longer than [`consts::MAX_OPTION_REPLY_BYTES`].
    #[error("option reply carries {length} bytes, more than the {max} allowed")]
    OptionReplyTooLarge {
        /// Its declared payload length.
        length: u32,
        /// The bound.
        max: usize,
    },
    /// The client sent more options than [`consts::MAX_OPTIONS_PER_HANDSHAKE`].
    #[error("more than {0} options in one handshake")]
    TooManyOptions(u32),
    /// A request or reply payload larger than the bound we accept.
    #[error("payload of {length} bytes exceeds the {max} byte bound")]
    PayloadTooLarge {
        /// Declared payload length.
        length: u64,
        /// The bound.
        max: u64,
    },
    /// A message whose fields contradict each other or the spec; the text says which rule.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// A message that is well-formed but not allowed at this point of the conversation.
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
}

/// Everything the client, server and URL helpers can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol; the connection was dropped.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The server does not have the export we asked for, or cannot open it; `message`
    /// is the server's reason (empty when it gave none).
    #[error("server has no export named {name:?}{}{message}", if message.is_empty() { "" } else { ": " })]
    UnknownExport {
        /// The export asked for.
        name: String,
        /// The server's message.
        message: String,
    },
    /// An export name longer than the protocol's 4096-byte string bound; never sent.
    #[error("export name of {len} bytes is longer than the 4096 bytes NBD allows")]
    NameTooLong {
        /// Bytes in the name.
        len: usize,
    },
    /// The server refused an option with an error reply.
    #[error("server refused option {option} with reply {reply:#x}: {message}")]
    OptionRefused {
        /// The option code.
        option: u32,
        /// The `NBD_REP_ERR_*` code.
        reply: u32,
        /// The server's message, if any.
        message: String,
    },
    /// The server answered a request with an NBD error value.
    #[error("server error {} ({}): {message}", errno, errno_name(*errno))]
    Server {
        /// The `NBD_E*` value.
        errno: u32,
        /// The server's message, empty for simple replies.
        message: String,
    },
    /// A request lies outside the export or exceeds the payload bound; not sent.
    #[error("request offset={offset} length={length} is invalid for export size {size_bytes}")]
    OutOfRange {
        /// Request offset.
        offset: u64,
        /// Request length.
        length: u64,
        /// Export size.
        size_bytes: u64,
    },
    /// The export does not allow this operation (read-only, or not advertised).
    #[error("operation not supported by this export: {0}")]
    Unsupported(&'static str),
    /// The connection is closed; no further requests can be sent.
    #[error("connection closed")]
    Disconnected,
    /// An `nbd://` URL could not be parsed.
    #[error("invalid NBD URL {url:?}: {reason}")]
    InvalidUrl {
        /// The text given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An export's storage failed while the server was negotiating.
    #[error("export error: {0}")]
    Export(#[from] crate::export::ExportError),
    /// TLS settings could not be used (a PEM file missing or unreadable, no key, no
    /// certificate, a bad server name).
    #[error("TLS settings: {0}")]
    TlsConfig(String),
    /// The TLS handshake failed: an untrusted or missing certificate, a name mismatch.
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(String),
    /// The server answered `NBD_OPT_STARTTLS` with an error: it will not do TLS.
    #[error("server refused TLS (NBD_OPT_STARTTLS): {0}")]
    TlsRefused(String),
    /// The server requires TLS (`NBD_REP_ERR_TLS_REQD`) and this client was not asked
    /// to use it.
    #[error(
        "server requires TLS: connect with an nbds:// URL and certificates (NBD_REP_ERR_TLS_REQD)"
    )]
    TlsRequired,
    /// The server refused the export by its access policy (`NBD_REP_ERR_POLICY`).
    #[error("server refused export {export:?}: {message}")]
    Forbidden {
        /// The export asked for.
        export: String,
        /// The server's explanation.
        message: String,
    },
}

impl Error {
    /// Whether redialling could help (the connection broke, not the request).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Error::Io(_) | Error::Protocol(_) | Error::Disconnected
        )
    }
}

/// A short name for an NBD error value, for messages.
pub fn errno_name(errno: u32) -> &'static str {
    match errno {
        consts::EPERM => "EPERM",
        consts::EIO => "EIO",
        consts::ENOMEM => "ENOMEM",
        consts::EINVAL => "EINVAL",
        consts::ENOSPC => "ENOSPC",
        consts::EOVERFLOW => "EOVERFLOW",
        consts::ENOTSUP => "ENOTSUP",
        consts::ESHUTDOWN => "ESHUTDOWN",
        _ => "unknown",
    }
}
