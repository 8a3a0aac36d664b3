//! The portable core of the Rehydrate volume filter.
//!
//! Everything that decides anything in the Windows driver lives here, as `no_std` Rust
//! that the Linux simulator runs unchanged: the region map, the sans-IO engine, the
//! persistent metadata and its commit protocol, the driver/service ABI, and the filter
//! callbacks written against the small `Framework` trait. The KMDF shell in `kmdf/`
//! only turns `Framework` calls into wdk-sys calls.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod abi;
pub mod capture;
pub mod changed;
pub mod commit;
pub mod dr;
pub mod dsm;
pub mod engine;
pub mod filter;
pub mod framework;
pub mod geometry;
pub mod meta;
pub mod mutants;

pub mod region;
pub mod status;
pub mod volume_id;

pub use geometry::{Geometry, GeometryError, RangeError};
pub use region::RegionMap;
pub use status::{FailReason, Status};
