//! `rehydrate restore`: the whole pipeline on Linux. The driver core's engine runs in
//! user space over the target file or block device, the hydrator drives it, the NBD
//! client fetches. Same engine, same rules as the Windows filter: a region is marked
//! only after its data is written, durably only after `fdatasync` and a metadata commit,
//! so a killed restore resumes where its last commit left it.

pub(crate) mod bound;
mod buffers;
pub(crate) mod changes;
mod fetch;
pub mod live;
pub(crate) mod lock;
pub(crate) mod meta_file;
pub mod overlay;
mod padded;
mod paths;
pub mod pin;
mod report;
pub(crate) mod shell;
mod status_report;
mod target;
pub(crate) mod target_id;
pub(crate) mod target_os;
#[cfg(test)]
pub(crate) mod test_server;
pub mod timeline;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rehydrate_driver::geometry::{REGION_SIZE_MAX_BYTES, REGION_SIZE_MIN_BYTES};
use rehydrate_driver::meta::TargetPin;
use rehydrate_nbd::NbdUrl;

pub use meta_file::FileMetaStore;
pub(crate) use padded::PaddedSource;
pub use report::Summary;
pub use status_report::{StatusReport, STATUS_INTERVAL};
pub use target::Target;

use crate::error::ServiceError;
use crate::hydrator::HydratorConfig;
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
    #[arg(long, value_name = "SIZE", default_value = "4KiB", value_parser = parse_region_size)]
    pub region_size: u64,
    /// Largest single fetch from the source (whole regions, at most 8MiB).
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size)]
    pub fetch_size: u64,
    /// Fetches in flight at once (more helps over a link with a long round trip).
    // 4 by default: on loopback from qemu-nbd, 8 made a restore of 1 GiB 20-30% slower
    // (more buffers filled ahead of the writer than the disk takes in), 2 and 4 were
    // fastest; 4 MiB in flight still fills a link of 1 Gbit/s at 30 ms.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub in_flight: usize,
    /// NBD connections to the source when it allows several (multi-conn), 1 to 16.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=16))]
    pub connections: u16,
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
    /// Restore into a target larger than the source (its first part is overwritten,
    /// the rest left as it is): normal for a block device.
    #[arg(long)]
    pub force: bool,
    /// Serve the volume read-write over NBD on this address while it restores (and
    /// after, until SIGINT or SIGTERM): e.g. 127.0.0.1:10810.
    #[arg(long, value_name = "ADDR")]
    pub export: Option<String>,
    /// The live export's name [default: the source's export name].
    #[arg(long, value_name = "NAME", requires = "export")]
    pub export_name: Option<String>,
    /// Serve the live export over TLS only (NBD STARTTLS) with this certificate chain
    /// (PEM); needs --export-tls-key.
    #[arg(long, value_name = "PEM", requires_all = ["export", "export_tls_key"])]
    pub export_tls_cert: Option<PathBuf>,
    /// The live export's TLS private key (PEM).
    #[arg(long, value_name = "PEM", requires = "export_tls_cert")]
    pub export_tls_key: Option<PathBuf>,
    /// Accept only live-export clients whose certificate this CA (PEM) signed.
    #[arg(long, value_name = "PEM", requires = "export_tls_cert")]
    pub export_tls_client_ca: Option<PathBuf>,
    /// Draw restored bytes, on-demand misses and source outages over time into this
    /// SVG file when the restore ends.
    #[arg(long, value_name = "PATH.svg")]
    pub timeline: Option<PathBuf>,
    /// Where to keep the snapshot `rehydrate status` reads, rewritten twice a second
    /// [default: one file per target in $XDG_RUNTIME_DIR/rehydrate/, else
    /// /tmp/rehydrate-$UID/]
    #[arg(long, value_name = "PATH")]
    pub status_file: Option<PathBuf>,
    /// Overlay restore (needs --export): the export serves a pseudo-volume whose writes
    /// go to this overlay file, while the target receives nothing but backup data until
    /// `rehydrate cutover` merges the overlay into it. A new restore creates the file;
    /// a resumed one needs the file it was started with.
    #[arg(long, value_name = "PATH", requires = "export")]
    pub overlay: Option<PathBuf>,
}

/// A region size from the command line: a size with a unit, a power of two from 4KiB
/// to 1MiB (said in the error with the text given, never a clamped number).
fn parse_region_size(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text).map_err(|e| e.to_string())?;
    let valid = bytes.is_power_of_two()
        && (u64::from(REGION_SIZE_MIN_BYTES)..=u64::from(REGION_SIZE_MAX_BYTES)).contains(&bytes);
    if valid {
        Ok(bytes)
    } else {
        Err(format!(
            "region size {text} ({bytes} bytes) is not a power of two from 4KiB to 1MiB"
        ))
    }
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

/// Names an export by name and size alone. Kept for shells that attach to an export
/// without pinning it (the simulator's demo serves its own store for one run); a
/// `rehydrate restore` pins the exact source instead ([`pin::backup_id_of`]).
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
        Ok(summary) if summary.complete => status.complete(),
        Ok(_) => status.stopped(),
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
    // `parse_region_size` admitted only valid sizes, which fit in u32.
    let region_size = u32::try_from(args.region_size).unwrap_or(u32::MAX);
    let deadline = Duration::from_secs(args.deadline.max(1));
    let meta_path = args.metadata_path();
    paths::check_distinct(&args.target, &meta_path)?;
    let listener = match &args.export {
        Some(addr) => Some(live::serve::bind(addr).await?),
        None => None,
    };
    let export_tls = live::serve::tls(
        args.export_tls_cert.as_deref(),
        args.export_tls_key.as_deref(),
        args.export_tls_client_ca.as_deref(),
    )?;

    // What exists already, locked and read, before anything is written or fetched.
    let existing = Target::open_existing(&args.target)?;
    let store = match meta_path.exists() {
        true => Some(FileMetaStore::open_unchecked(&meta_path, None)?),
        false => None,
    };
    if let Some(store) = &store {
        if let Some(target) = &existing {
            paths::check_not_same(target, store, &meta_path)?;
        }
        store.lock(&meta_path)?;
    }
    let existing_meta = bound::read_existing(store, &meta_path)?;
    if existing_meta.is_some() && existing.is_none() {
        return Err(ServiceError::MetadataWithoutTarget {
            target: args.target.clone(),
            metadata: meta_path,
        });
    }
    overlay::check_mode(
        args.overlay.as_deref(),
        existing_meta.as_ref().map(|(_, header)| header),
        &meta_path,
    )?;

    // Connect to what the metadata pins (or what the URL names), pin it, and bind the
    // metadata to it and to the target.
    let config = HydratorConfig {
        fetch_size_bytes: args.fetch_size,
        in_flight_max: args.in_flight,
        background_rate_bytes_per_sec: args.rate_limit,
        deadline_ns: deadline.as_nanos() as u64,
        block_status: !args.no_block_status,
        ..HydratorConfig::default()
    };
    // The map of changes since the backup beside the restore map, and in overlay mode
    // the overlay's map.
    let changed = [rehydrate_driver::changed::CHANGED_MAP];
    let both = [
        rehydrate_driver::changed::CHANGED_MAP,
        rehydrate_driver::engine::overlay::OVERLAY_MAP,
    ];
    let names: &[_] = if args.overlay.is_some() {
        &both
    } else {
        &changed
    };
    let request = bound::BindRequest {
        url: &url,
        metadata: &meta_path,
        region_size_bytes: region_size,
        hydrator: &config,
        source_in_flight: args.in_flight.saturating_mul(2),
        deadline,
        named_maps: names,
    };
    let mut shell_target = RestoreTarget {
        path: &args.target,
        metadata: &meta_path,
        force: args.force,
        target: existing,
    };
    let bound = match bound::bind(&request, existing_meta, &mut shell_target).await? {
        bound::Bind::Empty => {
            // Nothing to restore, and no geometry to track it with.
            return Ok(Summary::new(
                0,
                started.elapsed(),
                shell::Outcome::default(),
            ));
        }
        bound::Bind::Ready(bound) => *bound,
    };
    // `prepare` made the target before the metadata was bound to it.
    let Some(target) = shell_target.target else {
        return Err(ServiceError::TargetKind(args.target.clone()));
    };
    let bound::Bound {
        source,
        binding,
        identity,
        geometry,
        map,
        mut store,
        mut meta,
        fresh,
    } = bound;
    source.widen(usize::from(args.connections));
    let size = binding.source.size_bytes;
    let volume_bytes = identity.volume_size_bytes;
    if fresh {
        // A protected target recovered in place: what it already holds is not fetched.
        crate::protect::inplace::start(
            &args.target,
            &binding.target,
            &binding.source,
            &map,
            &mut meta,
            &mut store,
        )?;
    }
    // The map of changes since the backup: a session opens before any write is taken.
    let mut changes = changes::Changes::attach(&mut meta, &mut store, geometry, &meta_path)?;
    if let Some(changes) = &mut changes {
        if fresh {
            changes.start_from(changes::base_of(&binding.source));
        }
        changes.begin(&mut meta, &mut store, |w| map.word(w), &meta_path)?;
    }
    tracing::info!(
        size,
        regions = geometry.region_count(),
        restored = map.restored_count(),
        "restore: starting"
    );
    let title = format!("rehydrate restore of {}", pin::describe(&binding.source));
    let source = Arc::new(PaddedSource::new(source, volume_bytes));
    let overlay = match &args.overlay {
        Some(path) => Some(overlay::open(
            path, size, fresh, &target, &mut meta, &mut store, &map, &meta_path,
        )?),
        None => None,
    };
    let target = Arc::new(target);
    let live = listener.map(|listener| {
        let shared = Arc::new(live::Shared {
            passthrough: false.into(),
            stopping: false.into(),
            clients: 0.into(),
            requests_in_flight: 0.into(),
            size_bytes: size,
            target: Arc::clone(&target),
            map: Arc::clone(&map),
            changes: changes.as_ref().map(changes::Changes::tracker),
            overlay: overlay.as_ref().map(|o| Arc::clone(&o.map)),
        });
        let name = args
            .export_name
            .clone()
            .unwrap_or_else(|| match url.export.split('@').next() {
                Some(name) if !name.is_empty() => name.to_owned(),
                _ => "rehydrate".to_owned(),
            });
        let description = format!(
            "rehydrate live restore of {} into {}",
            pin::describe(&binding.source),
            args.target.display()
        );
        live::serve::start(
            listener,
            name,
            description,
            export_tls,
            shared,
            Arc::clone(&source),
        )
    });
    let mut shell = shell::Shell::new(
        target,
        store,
        meta,
        map,
        config,
        source,
        live,
        changes,
        args.timeline.is_some(),
    )?;
    if let Some(o) = overlay {
        shell = shell.with_overlay(
            o.core,
            shell::overlay::Side::new(o.file, o.commands, o.listening),
        );
    }
    let outcome = shell
        .run(started, status, args.timeline.as_deref(), &title)
        .await?;
    Ok(Summary::new(size, started.elapsed(), outcome))
}

/// `rehydrate restore`'s target for [`bound::bind`]: a file (created at the source's
/// size when missing) or a block device, and a metadata file beside it that is never
/// the target itself.
struct RestoreTarget<'a> {
    path: &'a Path,
    metadata: &'a Path,
    force: bool,
    /// The target once it exists.
    target: Option<Target>,
}

impl bound::BindTarget for RestoreTarget<'_> {
    type Store = FileMetaStore;
    type Error = ServiceError;

    fn prepare(&mut self, source_bytes: u64) -> Result<TargetPin, ServiceError> {
        let target = match self.target.take() {
            Some(t) => t,
            None => Target::create(self.path, source_bytes)?,
        };
        let target = self.target.insert(target);
        target.fit(source_bytes, self.force)?;
        target.pin()
    }

    fn create_store(&mut self, pages: u64) -> Result<FileMetaStore, ServiceError> {
        let store = FileMetaStore::open_unchecked(self.metadata, Some(pages))?;
        if let Some(target) = &self.target {
            paths::check_not_same(target, &store, self.metadata)?;
        }
        Ok(store)
    }

    fn describe(&self) -> PathBuf {
        self.path.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_sizes_out_of_range_are_named_as_given() {
        assert_eq!(parse_region_size("64KiB"), Ok(64 << 10));
        let e = parse_region_size("1TiB").unwrap_err();
        assert!(
            e.starts_with("region size 1TiB (1099511627776 bytes)"),
            "{e}"
        );
        assert!(!e.contains("4294967295"), "{e}");
        assert!(parse_region_size("2KiB").is_err());
        assert!(parse_region_size("12KiB").is_err());
    }

    #[test]
    fn backup_ids_differ_by_export_and_size() {
        assert_eq!(backup_id("a", 1), backup_id("a", 1));
        assert_ne!(backup_id("a", 1), backup_id("b", 1));
        assert_ne!(backup_id("a", 1), backup_id("a", 2));
        assert_ne!(backup_id("ab", 1), backup_id("a", 1));
    }
}
