//! `rehydrate restore`: the whole pipeline on Linux. The driver core's engine runs in
//! user space over the target file or block device, the hydrator drives it, the NBD
//! client fetches. Same engine, same rules as the Windows filter: a region is marked
//! only after its data is written, durably only after `fdatasync` and a metadata commit,
//! so a killed restore resumes where its last commit left it.

mod meta_file;
mod report;
mod shell;
mod status_report;
mod target;
mod target_os;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rehydrate_driver::meta::{Identity, Metadata};
use rehydrate_driver::{Geometry, RegionMap};
use rehydrate_nbd::NbdUrl;

pub use meta_file::FileMetaStore;
pub use report::Summary;
pub use status_report::{StatusReport, STATUS_INTERVAL};
pub use target::Target;

use crate::error::ServiceError;
use crate::hydrator::HydratorConfig;
use crate::source::{NbdSource, Source};
use rehydrate_backup::parse_size;

/// Arguments of `rehydrate restore`.
#[derive(Clone, Debug, clap::Args)]
#[command(
    about = "Restore a whole volume from an NBD export into a file or block device",
    long_about = "Restore a whole volume from an NBD export (qemu-nbd, nbdkit, `rehydrate serve`) into a \
file or block device, with the same engine and rules as the Windows filter. Progress is \
committed to a metadata file about once a second, so a restore that is killed resumes where \
it stopped without fetching restored regions again. Regions the source reports as holes are \
zero-filled without transferring data. `rehydrate status` shows the progress of a running \
restore.\n\nExample:\n  rehydrate restore --source nbd://127.0.0.1:10809/sys --target \
/dev/sdb\n\nThe last line is \
`restore: complete bytes=N secs=S mib_per_sec=R fetched_bytes=F zero_bytes=Z resumed_bytes=P ...`."
)]
pub struct RestoreArgs {
    /// The backup to restore: nbd://HOST[:PORT]/EXPORT
    #[arg(long, value_name = "URL")]
    pub source: String,
    /// File or block device to restore into; a missing file is created at the source size.
    #[arg(long, value_name = "PATH")]
    pub target: PathBuf,
    /// Where restore progress is kept [default: TARGET.rehydrate-meta]
    #[arg(long, value_name = "PATH")]
    pub metadata: Option<PathBuf>,
    /// Region size: the unit of restore tracking (power of two, 4KiB to 1MiB).
    #[arg(long, value_name = "SIZE", default_value = "4KiB", value_parser = parse_size)]
    pub region_size: u64,
    /// Largest single fetch from the source (whole regions, at most 8MiB).
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size)]
    pub fetch_size: u64,
    /// Fetches in flight at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub in_flight: usize,
    /// Limit the background restore to this many bytes per second (e.g. 64MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub rate_limit: Option<u64>,
    /// Seconds a failing fetch (or the first connection) is retried before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub deadline: u64,
    /// Read holes as data instead of asking the source for block status.
    #[arg(long)]
    pub no_block_status: bool,
    /// Print the final summary as one JSON object instead of the key=value line.
    #[arg(long)]
    pub json: bool,
    /// Where to keep the snapshot `rehydrate status` reads, rewritten twice a second
    /// [default: $XDG_RUNTIME_DIR/rehydrate/status.json, else /tmp/rehydrate-$UID/status.json]
    #[arg(long, value_name = "PATH")]
    pub status_file: Option<PathBuf>,
}

impl RestoreArgs {
    /// The metadata path: given, or the target's path plus `.rehydrate-meta`.
    pub fn metadata_path(&self) -> PathBuf {
        self.metadata.clone().unwrap_or_else(|| {
            let mut p = self.target.clone().into_os_string();
            p.push(".rehydrate-meta");
            PathBuf::from(p)
        })
    }
}

/// Names the backup a restore reads, for the metadata's identity: BLAKE3 of the export
/// name and size. The same export restored again matches; metadata left by a restore of
/// another export (or of an export that changed size) is refused rather than trusted.
pub fn backup_id(export: &str, size_bytes: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"rehydrate backup id v1\0");
    h.update(&(export.len() as u64).to_le_bytes());
    h.update(export.as_bytes());
    h.update(&size_bytes.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Runs `rehydrate restore` to the end; returns the summary to print.
pub fn run(args: &RestoreArgs) -> Result<Summary, ServiceError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ServiceError::Runtime)?;
    runtime.block_on(restore(args))
}

async fn restore(args: &RestoreArgs) -> Result<Summary, ServiceError> {
    let mut status = StatusReport::new(args.status_file.as_deref(), &args.source, &args.target);
    let result = restore_with(args, &mut status).await;
    match &result {
        Ok(_) => status.complete(),
        Err(e) => status.failed(e),
    }
    result
}

async fn restore_with(
    args: &RestoreArgs,
    status: &mut StatusReport,
) -> Result<Summary, ServiceError> {
    let started = Instant::now();
    let url = NbdUrl::parse(&args.source).map_err(ServiceError::Url)?;
    let region_size = u32::try_from(args.region_size).unwrap_or(u32::MAX);
    let deadline = Duration::from_secs(args.deadline.max(1));
    let source = NbdSource::connect(&url, args.in_flight.saturating_mul(2), deadline).await?;
    let size = source.size_bytes();
    let geometry = Geometry::new(size, region_size).map_err(|source| ServiceError::Geometry {
        size_bytes: size,
        source,
    })?;
    let config = HydratorConfig {
        fetch_size_bytes: args.fetch_size,
        in_flight_max: args.in_flight,
        background_rate_bytes_per_sec: args.rate_limit,
        deadline_ns: deadline.as_nanos() as u64,
        block_status: !args.no_block_status,
        ..HydratorConfig::default()
    };
    config.check(&geometry)?;
    // Nothing is written to the target before every check above has passed.
    let target = Target::open(&args.target, size)?;
    let identity = Identity {
        volume_size_bytes: size,
        region_size_bytes: region_size,
        backup_id: backup_id(&url.export, size),
    };
    let meta_path = args.metadata_path();
    let map = Arc::new(RegionMap::new(geometry)?);
    let (store, meta) = open_metadata(&meta_path, &identity, &map, target.created)?;
    tracing::info!(
        size,
        regions = geometry.region_count(),
        restored = map.restored_count(),
        "restore: starting"
    );
    let shell = shell::Shell::new(target, store, meta, map, config, Arc::new(source))?;
    let outcome = shell.run(started, status).await?;
    Ok(Summary::new(size, started.elapsed(), outcome))
}

/// Opens the metadata, or creates it for a new restore (or when the target was just
/// created, as marks of an older target would be lies about the new one).
fn open_metadata(
    path: &Path,
    identity: &Identity,
    map: &RegionMap,
    fresh_target: bool,
) -> Result<(FileMetaStore, Metadata), ServiceError> {
    let geometry = *map.geometry();
    let pages = Metadata::store_pages(&geometry);
    let meta_err = |source| ServiceError::Metadata {
        path: path.to_owned(),
        source,
    };
    let io = |op| {
        move |source| ServiceError::MetaIo {
            op,
            path: path.to_owned(),
            source,
        }
    };
    let exists = path.exists();
    if exists && !fresh_target {
        let mut store = FileMetaStore::open(path, pages, false).map_err(io("open"))?;
        let meta = Metadata::open(&mut store, identity, map).map_err(meta_err)?;
        return Ok((store, meta));
    }
    if exists {
        tracing::warn!(path = %path.display(), "restore: target was created anew; starting its metadata over");
        std::fs::remove_file(path).map_err(io("remove"))?;
    }
    let mut store = FileMetaStore::open(path, pages, true).map_err(io("create"))?;
    let meta = Metadata::create(&mut store, identity).map_err(meta_err)?;
    Ok((store, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_differ_by_export_and_size() {
        assert_eq!(backup_id("a", 1), backup_id("a", 1));
        assert_ne!(backup_id("a", 1), backup_id("b", 1));
        assert_ne!(backup_id("a", 1), backup_id("a", 2));
        assert_ne!(backup_id("ab", 1), backup_id("a", 1));
    }
}
