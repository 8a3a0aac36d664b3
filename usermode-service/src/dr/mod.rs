//! `rehydrate dr primary|secondary|status|promote`: copy-on-read disaster recovery
//! between two sites (technique T5) on Linux, around the two sans-IO cores of
//! `rehydrate_driver::dr`.
//!
//! ```text
//! application ──NBD──► dr primary (export, sender core) ══ DR stream (replication
//!                        │ volume                          framing and session layer) ══►
//!                                                    dr secondary (applier core, export) ◄──NBD── readers
//!                                                        │ volume
//! ```
//!
//! Each process is one core task that owns its core, its volume and its link to the
//! other site (it reads and writes the link's socket itself, `peer`), and performs the
//! core's actions; the NBD server runs beside it and talks to it on channels.

pub mod export;
pub mod link;
pub mod meta;
pub mod peer;
pub mod primary;
pub mod secondary;
pub mod volume;

use std::path::PathBuf;

use tokio::net::TcpListener;

use meta::{Meta, MetaError, Role};

/// Everything that ends a DR command.
#[derive(Debug, thiserror::Error)]
pub enum DrRunError {
    /// The metadata file.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The volume or a socket.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The DR site refused this primary.
    #[error("the DR site refused this primary: {0}")]
    Refused(String),
    /// Arguments or files that do not go together.
    #[error("{0}")]
    Usage(String),
    /// Another process holds the site's volume.
    #[error("{} is in use by another process ({}): one `rehydrate dr` process per volume; stop it first", path.display(), crate::restore::lock::held_by(holder))]
    Locked {
        /// The volume.
        path: PathBuf,
        /// The pid holding the lock, when it can be told.
        holder: Option<u32>,
    },
    /// Promotion refused.
    #[error(
        "refused to promote: {missing} of {regions} regions are not at the DR site yet \
         (run the primary until `dr status` says complete, or promote with --force and lose them)"
    )]
    Incomplete {
        /// Regions missing.
        missing: u64,
        /// Regions of the volume.
        regions: u64,
    },
}

/// `rehydrate dr primary`.
#[derive(Debug, clap::Args)]
pub struct PrimaryArgs {
    /// The volume (image file or block device) the application uses.
    #[arg(long)]
    pub target: PathBuf,
    /// Serve the volume read-write over NBD here (the application's access).
    #[arg(long, value_name = "ADDR")]
    pub export: String,
    /// The DR site (`rehydrate dr secondary --listen`).
    #[arg(long, value_name = "HOST:PORT")]
    pub peer: String,
    /// The DR metadata file (default: TARGET.dr-meta).
    #[arg(long)]
    pub metadata: Option<PathBuf>,
    /// Region size, for a volume replicated for the first time.
    #[arg(long, default_value = "64KiB", value_parser = parse_size_u32)]
    pub region_size: u32,
    /// Bytes per second the background sync reads at most (regions a DR read waits for
    /// are sent at once regardless).
    #[arg(long, value_parser = parse_size_u32)]
    pub sync_rate: Option<u32>,
}

/// `rehydrate dr secondary`.
#[derive(Debug, clap::Args)]
pub struct SecondaryArgs {
    /// The DR copy (created at the primary's size when absent).
    #[arg(long)]
    pub target: PathBuf,
    /// Take the primary's connection here.
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// Serve the DR copy read-only over NBD here, at once.
    #[arg(long, value_name = "ADDR")]
    pub export: String,
    /// The DR metadata file (default: TARGET.dr-meta).
    #[arg(long)]
    pub metadata: Option<PathBuf>,
    /// Make a new DR copy on a target that already holds data (a file that is not
    /// empty, a block device): its contents are overwritten.
    #[arg(long)]
    pub force: bool,
}

/// `rehydrate dr status` / `rehydrate dr promote`.
#[derive(Debug, clap::Args)]
pub struct SiteArgs {
    /// The site's volume.
    #[arg(long)]
    pub target: PathBuf,
    /// The DR metadata file (default: TARGET.dr-meta).
    #[arg(long)]
    pub metadata: Option<PathBuf>,
    /// `promote` only: promote even though regions are missing (their data is lost).
    #[arg(long)]
    pub force: bool,
}

/// The DR subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DrCommand {
    /// Serve the primary volume and replicate it to a DR site.
    Primary(PrimaryArgs),
    /// Keep a DR copy, readable at once, fed by a primary.
    Secondary(SecondaryArgs),
    /// Say how far a site is (last line: `dr: role=... regions=N ...`).
    Status(SiteArgs),
    /// Make a stopped DR copy a volume of its own (refused while regions are missing).
    Promote(SiteArgs),
}

fn parse_size_u32(s: &str) -> Result<u32, String> {
    let (num, mult) = match s.strip_suffix("KiB") {
        Some(n) => (n, 1u64 << 10),
        None => match s.strip_suffix("MiB") {
            Some(n) => (n, 1 << 20),
            None => (s, 1),
        },
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("not a size: {s}"))
}

impl DrCommand {
    /// Runs the command; its last line.
    pub fn run(&self) -> Result<String, DrRunError> {
        match self {
            DrCommand::Primary(a) => runtime()?.block_on(primary::run(a)),
            DrCommand::Secondary(a) => runtime()?.block_on(secondary::run(a)),
            DrCommand::Status(a) => status(a),
            DrCommand::Promote(a) => promote(a),
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, DrRunError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| DrRunError::Io {
            what: "start the runtime".into(),
            source,
        })
}

fn load(a: &SiteArgs) -> Result<(Meta, PathBuf), DrRunError> {
    let path = a
        .metadata
        .clone()
        .unwrap_or_else(|| meta::default_path(&a.target));
    let m = Meta::load(&path)?.ok_or_else(|| {
        DrRunError::Usage(format!(
            "{}: no DR metadata (not a DR site or primary)",
            path.display()
        ))
    })?;
    Ok((m, path))
}

fn status(a: &SiteArgs) -> Result<String, DrRunError> {
    let (m, _) = load(a)?;
    let regions = m.geometry.region_count();
    let done = m.map.count();
    Ok(match m.role {
        Role::Primary => format!(
            "dr: role=primary regions={regions} durably_sent={done} complete={}",
            done == regions
        ),
        Role::Secondary => format!(
            "dr: role=secondary regions={regions} present={done} complete={} generation={} bound={} promoted={}",
            done == regions,
            m.generation,
            m.binding.is_some(),
            m.promoted
        ),
    })
}

fn promote(a: &SiteArgs) -> Result<String, DrRunError> {
    // Held until the promotion is stored: a running secondary holds it and would undo
    // the promotion with its next commit.
    let _volume = volume::Volume::open(&a.target)?;
    let (mut m, path) = load(a)?;
    if m.role != Role::Secondary {
        return Err(DrRunError::Usage(format!(
            "{} is a primary's metadata: only a DR copy is promoted",
            path.display()
        )));
    }
    let regions = m.geometry.region_count();
    let missing = regions - m.map.count();
    if missing > 0 && !a.force {
        return Err(DrRunError::Incomplete { missing, regions });
    }
    if missing > 0 {
        eprintln!(
            "rehydrate: warning: promoting with {missing} of {regions} regions missing: \
             they hold whatever the DR copy had, not the primary's data"
        );
    }
    m.promoted = true;
    m.store(&path)?;
    Ok(format!("dr: promoted regions={regions} missing={missing}"))
}

/// Binds a listening address.
pub(crate) async fn bind(addr: &str) -> Result<TcpListener, DrRunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DrRunError::Io {
            what: format!("listen on {addr}"),
            source,
        })
}
