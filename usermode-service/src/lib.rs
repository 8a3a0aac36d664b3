//! The Rehydrate service: the hydrator that schedules fetches from the backup, the
//! sources it fetches from, and the Linux `rehydrate restore` shell that runs the
//! driver's engine in user space over a file or block device.
//!
//! DESIGN.md section 2 places this crate: it depends on the driver core (its engine,
//! ABI and metadata) and the NBD client; the simulator reuses [`hydrator`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod error;
pub mod hydrator;
pub mod restore;
pub mod size;
pub mod source;

pub use error::ServiceError;
