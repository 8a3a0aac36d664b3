//! The NBD protocol (NetworkBlockDevice/nbd `doc/proto.md`), written by hand.
//!
//! - A sans-IO core that never panics on any input and allocates only within stated
//!   bounds: message codecs ([`option`], [`transmission`]), the two handshake state
//!   machines ([`handshake`]), the server's request rules ([`rules`]) and the client's
//!   reply assembly ([`assemble`]).
//! - Tokio shells that only move bytes: [`Client`] (and [`ReconnectingClient`]) and the
//!   server ([`serve`], [`serve_connection`]) over the [`Export`] and [`Catalog`] traits,
//!   with [`FileExport`] and [`MemExport`] as ready-made exports.
//!
//! Supported: fixed newstyle; `NBD_OPT_EXPORT_NAME`, `GO`, `INFO`, `LIST`, `ABORT`,
//! `STRUCTURED_REPLY`, `LIST_META_CONTEXT`, `SET_META_CONTEXT` with `base:allocation`
//! (unknown options get `NBD_REP_ERR_UNSUP`); simple and structured replies; `READ`,
//! `WRITE`, `FLUSH`, `TRIM`, `WRITE_ZEROES`, `DISC`, `BLOCK_STATUS`; TLS with
//! `NBD_OPT_STARTTLS` ([`tls`]: rustls; the server requires it once configured, the
//! client asks first for `nbds://`). Not supported: oldstyle negotiation, extended
//! headers.

pub mod assemble;
pub mod client;
pub mod consts;
pub mod decode;
pub mod error;
pub mod export;
pub mod file_export;
pub mod handshake;
pub mod option;
pub mod positional;
pub mod rules;
pub mod server;
pub mod tls;
pub mod transmission;
pub mod url;

pub use client::{Client, ClientOptions, ReconnectingClient};
pub use consts::TransmissionFlags;
pub use decode::Decoded;
pub use error::{Error, ProtocolError};
pub use export::{
    range_end, BoxFuture, Catalog, Export, ExportError, Extent, MapCatalog, MemExport,
};
pub use file_export::FileExport;
pub use handshake::Negotiated;
pub use positional::PositionalIo;
pub use server::{serve, serve_connection, serve_until, ServerConfig};
pub use tls::{AccessPolicy, ClientTls, PeerIdentity, ServerTls};
pub use url::NbdUrl;
