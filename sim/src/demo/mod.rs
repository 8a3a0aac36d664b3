//! `rehydrate-sim demo`: the end-to-end tour on embedded defaults.
//!
//! 1. A volume image with a file-system-like mix of data and free space is made in a
//!    temporary directory ([`image`]); every data sector carries its simulator tag.
//! 2. It is backed up with `rehydrate backup`'s code into a store next to it, and
//!    `rehydrate serve`'s code serves the store over NBD on a free loopback port.
//! 3. The simulated Windows stack boots with the rehydrate filter on an empty disk, in
//!    real time (its clock follows the wall clock, one thread). The real service
//!    ([`service`]: hydrator + NBD source) runs on tokio and talks to the filter only
//!    through the driver link, whose requests become control-device IOCTLs
//!    ([`realtime`]).
//! 4. The simulated file system runs its workload at once while the sweep restores the
//!    rest; the oracle checks every read.
//! 5. Progress shows on a bar and in the status file `rehydrate status` reads.
//! 6. The summary ([`report`]) ends with a byte-for-byte check of the whole disk
//!    ([`check`]) and the line `demo: ok ...`.

pub mod check;
pub mod image;
pub mod realtime;
pub mod report;
pub mod service;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rehydrate_backup::{parse_size, BackupArgs, BackupError, ChunkSize, ChunkStore, VolumeName};
use rehydrate_driver::abi::Attach;
use rehydrate_driver::Geometry;
use rehydrate_nbd::NbdUrl;
use rehydrate_service::attach::session::SessionError;
use rehydrate_service::hydrator::{ConfigError, HydratorConfig};
use rehydrate_service::link::{channel, LinkError};
use rehydrate_service::source::{NbdSource, Source, SourceError};
use rehydrate_service::status::StatusFile;
use tokio::sync::oneshot;

use crate::data::Backup;
use crate::sim::{run_demo, DemoMachine};
use crate::workload::WorkloadConfig;

pub use report::Summary;

/// Region size of the demo's volume.
const REGION_SIZE_BYTES: u32 = 4096;
/// The export the backup is served as.
const VOLUME: &str = "demo";
/// Smallest and largest volumes (the simulator keeps a few dozen bytes per sector).
const SIZE_MIN_BYTES: u64 = 1 << 20;
const SIZE_MAX_BYTES: u64 = 16 << 30;

/// `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Size of the volume to restore (e.g. 64MiB, 1GiB).
    #[arg(long, default_value = "256MiB", value_parser = parse_size_arg)]
    pub size: u64,
    /// Seed of the image's content and of the workload.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep the store, the image, the restored disk, the expected content and the
    /// restore's timeline (timeline.svg: restored bytes and each on-demand miss over time)
    /// in a directory (printed) instead of a temporary one.
    #[arg(long)]
    pub keep: bool,
    /// Where to write the status `rehydrate status` reads [default: as `rehydrate restore`].
    #[arg(long, value_name = "PATH")]
    pub status_file: Option<PathBuf>,
    /// Print the summary as one JSON object instead of the `demo:` lines.
    #[arg(long)]
    pub json: bool,
    /// Restore from this running backup server (nbd://HOST:PORT/EXPORT) instead of
    /// starting one: the export must hold the image `--write-image` makes for the same
    /// --size and --seed (e.g. backed up with `rehydrate backup`, served by
    /// `rehydrate serve`).
    #[arg(long, value_name = "URL")]
    pub source: Option<String>,
    /// Only write the demo's volume image for --size and --seed to PATH, and exit.
    #[arg(long, value_name = "PATH", conflicts_with = "source")]
    pub write_image: Option<PathBuf>,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// Everything the demo can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The size is not one the demo can run.
    #[error("--size {size}: {why}")]
    Size {
        /// Asked for.
        size: u64,
        /// Why not.
        why: &'static str,
    },
    /// A file of the demo could not be made or read.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The tokio runtime (or the loopback listener) could not start.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    /// Backing up or serving failed.
    #[error("backup: {0}")]
    Backup(#[from] BackupError),
    /// The NBD source failed.
    #[error("source: {0}")]
    Source(#[from] SourceError),
    /// The driver link failed.
    #[error("driver link: {0}")]
    Link(#[from] LinkError),
    /// The hydrator refused its configuration.
    #[error("hydrator: {0}")]
    Hydrator(#[from] ConfigError),
    /// The service's session failed.
    #[error("service: {0}")]
    Session(#[from] SessionError),
    /// The service stopped for another reason.
    #[error("service: {0}")]
    Service(String),
    /// The timeline picture could not be drawn or written.
    #[error("timeline {path}: {reason}")]
    Timeline {
        /// The picture's path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The simulator found a rule broken (or the restore stalled).
    #[error("{0}")]
    Violation(String),
    /// The disk's final content is wrong.
    #[error("final check: sector {sector}: {detail}")]
    Mismatch {
        /// The volume sector.
        sector: u64,
        /// What is wrong.
        detail: String,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DemoError {
    let path = path.to_owned();
    move |source| DemoError::Io { what, path, source }
}

/// Prints a line of the tour unless the summary goes out as JSON.
fn say(json: bool, line: impl AsRef<str>) {
    if !json {
        println!("{}", line.as_ref());
    }
}

/// Writes the demo's volume image for `args.size` and `args.seed` to
/// `args.write_image` (nothing without it).
pub fn write_image_only(args: &DemoArgs) -> Result<(), DemoError> {
    let Some(path) = args.write_image.as_deref() else {
        return Ok(());
    };
    checked_geometry(args.size)?;
    let backup = Backup::file_system_like(args.seed, REGION_SIZE_BYTES);
    image::write_image(path, &backup, args.size / 512).map_err(io("write", path))?;
    Ok(())
}

/// The geometry of a demo volume of `size` bytes, or why there is none.
fn checked_geometry(size: u64) -> Result<Geometry, DemoError> {
    if !(SIZE_MIN_BYTES..=SIZE_MAX_BYTES).contains(&size) {
        return Err(DemoError::Size {
            size,
            why: "must be between 1MiB and 16GiB",
        });
    }
    if size % u64::from(REGION_SIZE_BYTES) != 0 {
        return Err(DemoError::Size {
            size,
            why: "must be a multiple of 4KiB",
        });
    }
    Geometry::new(size, REGION_SIZE_BYTES).map_err(|_| DemoError::Size {
        size,
        why: "is not a volume the driver accepts",
    })
}

/// Runs the demo; the summary is printed by the caller.
pub fn run(args: &DemoArgs) -> Result<Summary, DemoError> {
    let size = args.size;
    let geometry = checked_geometry(size)?;
    let began = Instant::now();
    let temp = tempfile::Builder::new()
        .prefix("rehydrate-demo-")
        .tempdir()
        .map_err(io("create a directory in", &std::env::temp_dir()))?;
    // Dropped (and removed) at the end unless kept.
    let (root, _temp) = if args.keep {
        (temp.keep(), None)
    } else {
        (temp.path().to_owned(), Some(temp))
    };
    let json = args.json;

    // 1. The image.
    let backup = Backup::file_system_like(args.seed, REGION_SIZE_BYTES);
    let image = root.join("volume.img");
    let sectors = size / 512;
    let stats = image::write_image(&image, &backup, sectors).map_err(io("write", &image))?;
    say(
        json,
        format!(
            "demo: made a {} MiB volume image ({:.0}% free space in runs, data in extents) in {}",
            size >> 20,
            100.0 * stats.zero_sectors as f64 / stats.sectors as f64,
            root.display()
        ),
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("demo-service")
        .enable_all()
        .build()
        .map_err(DemoError::Runtime)?;

    // 2. Back it up and serve it, unless a server was named.
    let (url_text, server_stop, server) = match &args.source {
        Some(url) => (url.clone(), None, None),
        None => {
            let store = root.join("store");
            let store_name = store.display().to_string();
            let summary = runtime.block_on(rehydrate_backup::run_backup(BackupArgs {
                source: image.clone(),
                store: store_name.clone(),
                volume: VolumeName::new(VOLUME)?,
                chunk_size: ChunkSize::default(),
                rate_limit: None,
                // No progress bar of its own.
                json: true,
            }))?;
            say(json, format!("demo: {}", summary.render(false)));
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .map_err(DemoError::Runtime)?;
            let addr = listener.local_addr().map_err(DemoError::Runtime)?;
            let chunks = ChunkStore::open(&store_name, false)?;
            let (stop, stopped) = oneshot::channel::<()>();
            let server = runtime.spawn(rehydrate_backup::serve_on(listener, chunks, async move {
                let _ = stopped.await;
            }));
            (format!("nbd://{addr}/{VOLUME}"), Some(stop), Some(server))
        }
    };
    let url = NbdUrl::parse(&url_text).map_err(|e| DemoError::Service(e.to_string()))?;
    let hydrator = HydratorConfig {
        fetch_size_bytes: 1 << 20,
        in_flight_max: 8,
        deadline_ns: 30_000_000_000,
        ..HydratorConfig::default()
    };
    let source = runtime.block_on(NbdSource::connect(
        &url,
        hydrator.in_flight_max,
        Duration::from_secs(10),
    ))?;
    if source.size_bytes() != size {
        return Err(DemoError::Service(format!(
            "the export is {} bytes, the image {size}",
            source.size_bytes()
        )));
    }
    say(
        json,
        format!("demo: restoring from the backup at {url_text}"),
    );
    let status = match StatusFile::create(args.status_file.as_deref()) {
        Ok(f) => {
            let command = match &args.status_file {
                Some(p) => format!("rehydrate status --status-file {}", p.display()),
                None => "rehydrate status".to_string(),
            };
            say(
                json,
                format!("demo: progress in {} (see `{command}`)", f.path().display()),
            );
            Some(f)
        }
        Err(e) => {
            tracing::warn!(%e, "demo: no status file");
            None
        }
    };
    let setup_secs = began.elapsed().as_secs_f64();

    // 3. The service, on tokio, with the driver link's requests forwarded to the
    // machine's thread.
    let backup_id = rehydrate_service::restore::backup_id(&url.export, size);
    let attach = Attach {
        volume_size_bytes: size,
        region_size_bytes: REGION_SIZE_BYTES,
        backup_identity: backup_id,
        mode: rehydrate_driver::abi::RestoreMode::InPlace,
    };
    let (link, mut requests) = channel();
    let (forward, forwarded) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        while let Some(r) = requests.recv().await {
            if forward.send(r).is_err() {
                break;
            }
        }
    });
    let (service_stop, service_stopped) = oneshot::channel::<bool>();
    let service = runtime.spawn(service::run(
        link,
        Arc::new(source),
        service::ServiceSetup {
            geometry,
            attach,
            hydrator,
            status,
            source_url: url_text,
            progress_bar: !json,
        },
        service_stopped,
    ));

    // 4. The machine, on this thread, until restored, read back, checked and shut down.
    say(
        json,
        "demo: booting the simulated Windows stack with the rehydrate filter on an empty disk; the file system starts at once",
    );
    let machine = DemoMachine {
        seed: args.seed,
        volume_bytes: size,
        region_size_bytes: REGION_SIZE_BYTES,
        backup,
        backup_id,
        ops_max: 10_000_000,
        workload: WorkloadConfig {
            depth_max: 8,
            think_ns: 200_000,
            ..WorkloadConfig::default()
        },
        device_latency_ns: 100_000,
    };
    let deadline = Duration::from_secs(300 + (size >> 20));
    let mut outcome = run_demo(&machine, realtime::LinkServer::new(forwarded, deadline));
    let server_side = outcome.server.take();
    let restored = outcome.outcome.violation.is_none()
        && server_side
            .as_ref()
            .is_some_and(|s| s.stats.restored_ns.is_some());
    let _ = service_stop.send(restored);
    // Closes whatever the service still waits on.
    let stats = server_side.map(|s| s.stats).unwrap_or_default();
    let service_result = runtime
        .block_on(service)
        .map_err(|e| DemoError::Service(format!("the service task ended: {e}")))
        .and_then(|r| r.map_err(DemoError::from));
    if let (Some(stop), Some(server)) = (server_stop, server) {
        let _ = stop.send(());
        match runtime.block_on(server) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(%e, "demo: backup server"),
            Err(e) => tracing::warn!(%e, "demo: backup server task"),
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Some(v) = &outcome.outcome.violation {
        // A service that failed first explains the stall better than the stall does.
        // A service that only saw the machine go says less than the violation does.
        return Err(match service_result {
            Err(DemoError::Session(SessionError::DriverGone)) | Ok(_) => {
                DemoError::Violation(v.to_string())
            }
            Err(e) => e,
        });
    }
    let report = service_result?;

    // 6. The whole disk, byte for byte.
    let expected_out = args.keep.then(|| root.join("expected.img"));
    let check = check::final_check(
        &image,
        &backup,
        &outcome.volume_tags,
        &outcome.expected,
        expected_out.as_deref(),
    )?;
    if args.keep {
        let disk = root.join("disk.img");
        let tags = &outcome.volume_tags;
        image::write_sectors(&disk, tags.len() as u64, |s| tags[s as usize])
            .map_err(io("write", &disk))?;
        let timeline = root.join("timeline.svg");
        let end_secs = stats.restored_ns.unwrap_or(0) as f64 / 1e9;
        stats
            .timeline
            .write_svg(
                &timeline,
                end_secs,
                "rehydrate-sim demo: restored bytes and on-demand misses",
            )
            .map_err(|reason| DemoError::Timeline {
                path: timeline.clone(),
                reason,
            })?;
        say(
            json,
            format!(
                "demo: kept in {}: store/, volume.img (the backup's image), disk.img (the restored disk), expected.img (what it must hold), timeline.svg (restored bytes and on-demand misses over time)",
                root.display()
            ),
        );
    }
    let summary = Summary::new(
        size,
        args.seed,
        setup_secs,
        &stats,
        &report,
        outcome.outcome.sectors_checked,
        &check,
        args.keep.then_some(root),
    );
    for line in summary.details() {
        say(json, line);
    }
    Ok(summary)
}
