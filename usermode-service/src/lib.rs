//! The Rehydrate service: the hydrator that schedules fetches from the backup, the
//! sources it fetches from, and the Linux `rehydrate restore` shell that runs the
//! driver's engine in user space over a file or block device.
//!
//! DESIGN.md section 2 places this crate: it depends on the driver core (its engine,
//! ABI and metadata), the NBD client and the backup server (whose `backup` and `serve`
//! the `rehydrate` binary runs); the simulator reuses [`hydrator`], [`link`] and
//! [`status`].
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod attach;
pub mod changed_backup;
pub mod cli;
#[cfg(unix)]
pub mod dr;
pub mod error;
pub mod hydrator;
pub mod link;
#[cfg(windows)]
pub mod link_windows;
pub mod protect;
pub mod restore;
pub mod source;
pub mod status;

pub use error::ServiceError;
