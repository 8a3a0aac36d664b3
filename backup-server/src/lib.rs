//! Rehydrate's backup server: a deduplicating chunk store with integrity checks, the
//! `backup` that fills it, and `serve`, which exports every volume version read-only
//! over NBD.
//!
//! - [`store`]: the layout over any `object_store` (local directory by default);
//!   [`chunk`] and [`index`] say each object's format byte by byte.
//! - [`backup`]: image or device → chunks → a published version; [`incremental`]: the
//!   same, reading only what changed since a base version.
//! - [`catalog`], [`export`], [`cache`]: the NBD side, over `rehydrate-nbd`'s server;
//!   [`access`]: which TLS client may read which volume.
//! - [`keep`], [`forget`], [`gc`], [`marks`]: retention, and deleting unreferenced
//!   chunks safely while backups run.
//! - [`journal`]: the point-in-time journal of protected volumes, and its recovery
//!   points served as exports.
//! - [`cli`]: the subcommands' arguments and entry points for the binaries.

pub mod access;
pub mod backup;
pub mod cache;
pub mod catalog;
pub mod chunk;
mod chunk_buf;
pub mod cli;
mod cpu;
pub mod error;
pub mod export;
pub mod forget;
pub mod gc;
pub mod identity;
pub mod incremental;
pub mod index;
pub mod journal;
pub mod keep;
mod local_chunk;
pub mod location;
pub mod marks;
pub mod name;
mod os;
mod read_lanes;
pub mod replicate;
pub mod size;
pub mod store;

pub use access::{AllowRule, AllowRules};
pub use backup::{backup, BackupOptions, BackupSummary};
pub use cache::ChunkCache;
pub use catalog::StoreCatalog;
pub use chunk::ChunkHash;
pub use cli::{
    run_backup, run_backup_command, run_serve, serve_on, BackupArgs, BackupCommand, ServeArgs,
};
pub use error::BackupError;
pub use export::VersionExport;
pub use forget::{run_forget, ForgetArgs, ForgetSummary};
pub use gc::{run_gc, GcArgs, GcSummary};
pub use identity::{ExportIdentity, IdentityError, PointIdentity};
pub use incremental::{backup_changes, BaseError, Changes, IncrementalError};
pub use index::{ChunkRef, Index, IndexError};
pub use location::StoreLocation;
pub use name::{ExportName, PointSpec, VolumeName};
pub use size::{parse_size, ChunkSize};
pub use store::{ChunkStore, PutOutcome};
