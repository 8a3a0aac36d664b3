//! Differential replication between two stores that never half-applies (technique T4).
//!
//! The sender sends the change manifest first — for each volume, the versions the
//! receiver lacks, parent first, each with its index exactly as stored — then only the
//! chunks the receiver says it is missing. The receiver makes the manifest durable before
//! any data, stores each chunk only after checking it against its name, records arrivals
//! durably, and publishes a version only when all its chunks and its parent are there.
//! After a failure, volumes whose data arrived are committed; the others stay at their
//! previous version, and the next run resumes with only what is missing.
//!
//! - [`frame`], [`session`], [`conn`]: the framing, the session layer (Hello/Error, the
//!   [`session::Wire`] trait) and the tokio connection, shared with any later protocol
//!   between two sites; [`message`]: replication's messages on them.
//! - [`manifest`], [`decide`]: what is to be replicated, and which versions may be
//!   published now (a pure function).
//! - [`receiver`], [`sender`]: the two ends, sans-IO (events in, actions out).
//! - [`record`], [`session_dir`]: the receiver's durable session record.
//! - [`receive`], [`send`]: the tokio shells that perform the actions.
//! - [`cli`], [`status`]: the `replicate`, `replicate status` and `receive` commands.

pub mod cli;
pub mod conn;
pub mod decide;
mod error;
pub mod frame;
pub mod manifest;
pub mod message;
mod platform;
pub mod receive;
pub mod receiver;
pub mod record;
pub mod send;
pub mod sender;
pub mod session;
pub mod session_dir;
pub mod status;

#[cfg(test)]
mod model_tests;

pub use cli::{ReceiveArgs, ReplicateArgs, ReplicateCommand, ReplicateStatusArgs, EXIT_PARTIAL};
pub use error::ReplicateError;
pub use send::{replicate, Options, Report};
