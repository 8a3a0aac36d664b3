//! Technique T3 on Linux: `rehydrate protect` journals every write to a live volume,
//! `rehydrate mark` names a point, `rehydrate points` lists them; `rehydrate serve`
//! serves any point, and `rehydrate restore` recovers to one (in place: [`inplace`]).
//!
//! ```text
//!  NBD clients ──► ProtectExport ──► Protected: target I/O + Capture (driver core)
//!                                        │ batches (ABI RecordBatch)      ▲ ack
//!                                        ▼                                │
//!                                    pump thread ──► JournalWriter (store/volumes/NAME/journal/)
//!  rehydrate mark ──► control socket ──► flush + mark point, answered once durable
//! ```
//!
//! Protect serves the target itself read-write over NBD: the volume is whole, so there
//! is nothing to restore and no engine between the client and the file; write capture
//! sits where the Windows filter's completion routines call it.
//!
//! Start: the target's state file ([`state`]) says which journal it belongs to. Without
//! one (or with `--new-base`) the target is backed up as a new version of the volume
//! and a new journal starts from it. With one, the journal is opened (a torn final
//! append truncated, damage refused); if the last protect did not stop cleanly, or a
//! recovery wrote the target since, the target is compared with the journal's head and
//! what differs is journaled again inside a gap before points resume. The state is set
//! running before the first write is served.
//!
//! Stop (SIGINT, SIGTERM): new requests are refused, those in flight finish, the target
//! is flushed (a last point), every record is journaled and any gap closed, and the
//! state is set clean with the journal's head. The last line is the summary.

pub mod control;
pub mod error;
pub mod export;
pub mod inplace;
pub mod points;
pub mod pump;
pub mod resync;
pub mod shared;
pub mod state;

use std::collections::HashSet;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rehydrate_backup::journal::export::PointExport;
use rehydrate_backup::journal::map::PointMap;
use rehydrate_backup::journal::writer::{JournalBase, JournalWriter};
use rehydrate_backup::journal::{Journal, JournalError};
use rehydrate_backup::{
    parse_size, BackupOptions, ChunkCache, ChunkSize, ChunkStore, ExportIdentity, PointIdentity,
    VersionExport, VolumeName,
};
use rehydrate_driver::capture::{Capture, CaptureConfig, CaptureMode};
use rehydrate_driver::meta::Metadata;
use rehydrate_driver::{Geometry, RegionMap};
use tokio::sync::{watch, Notify};

use error::ProtectError;
use export::{ProtectCatalog, ProtectExport};
use shared::{lock, now_unix_ns, Protected, PumpWaker};
use state::{Phase, State};

use crate::restore::{FileMetaStore, Target};
use crate::ServiceError;

/// How long a stop waits for requests in flight.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a stop waits for the journal to take everything (and a gap to close).
const DRAIN_GRACE: Duration = Duration::from_secs(60);
/// The chunk cache used to compare the target with the journal's head.
const COMPARE_CACHE_BYTES: u64 = 64 << 20;

/// Arguments of `rehydrate protect`.
#[derive(Clone, Debug, clap::Args)]
#[command(
    about = "Journal every write to a volume, so it can be recovered to any point",
    long_about = "Serve a volume (a file or block device) read-write over NBD and journal every \
write into a store, so the volume can be recovered to any completed flush or named mark since. \
The first run backs the volume up as a new version (the journal's base); later runs continue \
its journal. --async (the default) never holds a write: when the journal falls behind it \
records a gap and reads the written regions back later (no point inside a gap); --sync holds \
writes while the buffer is full and answers each write only once its record is durable. \
`rehydrate mark --label L` names a point; `rehydrate points` lists them; `rehydrate serve` \
exports them as NAME@BASE+SEQ, NAME@mark:LABEL and NAME@time:RFC3339. Runs until SIGINT or \
SIGTERM.\n\nExample:\n  rehydrate protect --target vm.img --store /var/backups --volume vm \
--export 127.0.0.1:10810\n\nThe last line is `protect: stopped volume=NAME base=B head=SEQ \
points=P gaps=G records=R journaled_bytes=J clean=true secs=S`."
)]
pub struct ProtectArgs {
    /// The volume: a file or block device, whole 512-byte sectors.
    #[arg(long, value_name = "PATH")]
    pub target: PathBuf,
    /// The store the journal is kept in (a local directory).
    #[arg(long, value_name = "STORE")]
    pub store: String,
    /// The volume's name in the store.
    #[arg(long, value_name = "NAME", value_parser = parse_volume)]
    pub volume: VolumeName,
    /// Answer a write only once its record is durable; hold writes while the buffer is full.
    #[arg(long, conflicts_with = "asynchronous")]
    pub sync: bool,
    /// Never hold a write; fall behind into a gap when the buffer is full (the default).
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// Serve the volume over NBD on this address: e.g. 127.0.0.1:10810.
    #[arg(long, value_name = "ADDR")]
    pub export: String,
    /// The export's name [default: the volume's name].
    #[arg(long, value_name = "NAME")]
    pub export_name: Option<String>,
    /// The control socket `rehydrate mark` reaches [default: protect-NAME.sock in the
    /// status directory].
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Records held in memory before the journal must catch up.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub buffer_size: u64,
    /// Granularity of the regions a gap reads back.
    #[arg(long, value_name = "SIZE", default_value = "4KiB", value_parser = parse_size)]
    pub region_size: u64,
    /// Start a new journal from a fresh backup of the volume, even if it has one.
    #[arg(long)]
    pub new_base: bool,
    /// Journal segment size (a new segment starts past it).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size, hide = true)]
    pub segment_size: u64,
}

/// Arguments of `rehydrate mark`.
#[derive(Clone, Debug, clap::Args)]
#[command(
    about = "Name the current point of a protected volume",
    long_about = "Name the current point of a running `rehydrate protect`: it flushes the \
volume and records a mark, answered once the mark is durable in the journal. The point is \
then served as NAME@mark:LABEL. Labels are 1 to 64 of [A-Za-z0-9._-], unique per journal.\n\n\
Example:\n  rehydrate mark --label pre-upgrade\n\nThe last line is `mark: label=L \
point=NAME@BASE+SEQ seq=SEQ time=RFC3339`."
)]
pub struct MarkArgs {
    /// The mark's name.
    #[arg(long, value_name = "LABEL")]
    pub label: String,
    /// The protected volume [default: the only one running].
    #[arg(long, value_name = "NAME", value_parser = parse_volume)]
    pub volume: Option<VolumeName>,
    /// The control socket [default: the volume's, in the status directory].
    #[arg(long, value_name = "PATH", conflicts_with = "volume")]
    pub control: Option<PathBuf>,
}

fn parse_volume(s: &str) -> Result<VolumeName, String> {
    VolumeName::new(s).map_err(|e| e.to_string())
}

/// What a protect run did.
#[derive(Clone, Debug)]
pub struct Summary {
    volume: String,
    base: u32,
    head: u64,
    points: u64,
    gaps: u64,
    records: u64,
    journaled_bytes: u64,
    clean: bool,
    secs: f64,
}

impl Summary {
    /// The last line.
    pub fn line(&self) -> String {
        format!(
            "protect: stopped volume={} base={} head={} points={} gaps={} records={} journaled_bytes={} clean={} secs={:.3}",
            self.volume,
            self.base,
            self.head,
            self.points,
            self.gaps,
            self.records,
            self.journaled_bytes,
            self.clean,
            self.secs
        )
    }
}

/// Runs `rehydrate mark`; returns the last line.
pub fn mark(args: &MarkArgs) -> Result<String, ProtectError> {
    let socket = match (&args.control, &args.volume) {
        (Some(path), _) => path.clone(),
        (None, Some(volume)) => control::default_socket(volume)?,
        (None, None) => match control::default_sockets().as_slice() {
            [(_, path)] => path.clone(),
            [] => {
                return Err(ProtectError::NoControl(
                    "no rehydrate protect is running (no control socket in the status directory); give --control PATH".into(),
                ))
            }
            several => {
                let names: Vec<&str> = several.iter().map(|(v, _)| v.as_str()).collect();
                return Err(ProtectError::NoControl(format!(
                    "several volumes are protected ({}); give --volume NAME",
                    names.join(", ")
                )));
            }
        },
    };
    let fields = control::mark(&socket, &args.label)?;
    let field = |key: &str| {
        fields
            .split(' ')
            .find_map(|f| f.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .unwrap_or("?")
            .to_owned()
    };
    Ok(format!(
        "mark: label={} point={} seq={} time={}",
        args.label,
        field("point"),
        field("seq"),
        field("time")
    ))
}

/// Runs `rehydrate protect` until SIGINT or SIGTERM; returns the summary.
pub fn run(args: &ProtectArgs) -> Result<Summary, ProtectError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ServiceError::Runtime)?;
    runtime.block_on(protect(args))
}

fn target_size(target: &Target) -> Result<u64, ProtectError> {
    let mut file = target.file();
    file.seek(SeekFrom::End(0)).map_err(|source| {
        ProtectError::Service(ServiceError::TargetIo {
            op: "measure",
            path: target.path().to_owned(),
            source,
        })
    })
}

/// A restore into the target must be complete before it is protected; the metadata of
/// a complete one (an in-place recovery) is removed, as protection takes over.
fn settle_restore(target: &Path) -> Result<(), ProtectError> {
    let mut meta_path = target.as_os_str().to_owned();
    meta_path.push(".rehydrate-meta");
    let meta_path = PathBuf::from(meta_path);
    if !meta_path.exists() {
        return Ok(());
    }
    let incomplete = || ProtectError::RestoreIncomplete {
        target: target.to_owned(),
        metadata: meta_path.clone(),
    };
    let mut store = FileMetaStore::open_unchecked(&meta_path, None)?;
    store.lock(&meta_path)?;
    let header = Metadata::read_header(&mut store).map_err(|_| incomplete())?;
    let geometry = header.identity.geometry().map_err(|_| incomplete())?;
    let map = RegionMap::new(geometry).map_err(ServiceError::Alloc)?;
    Metadata::open(&mut store, &header.identity, &map).map_err(|_| incomplete())?;
    if !map.is_all_restored() {
        return Err(incomplete());
    }
    drop(store);
    tracing::info!(path = %meta_path.display(), "protect: the recovery into the target is complete; its metadata is removed");
    std::fs::remove_file(&meta_path).map_err(|source| {
        ProtectError::Service(ServiceError::MetaIo {
            op: "remove",
            path: meta_path.clone(),
            source,
        })
    })
}

async fn protect(args: &ProtectArgs) -> Result<Summary, ProtectError> {
    let started = Instant::now();
    // Before anything else: a stop asked for while starting is a clean stop, not death.
    let stop_signal = StopSignal::install();
    let mode = if args.sync {
        CaptureMode::Sync
    } else {
        CaptureMode::Async
    };
    let store = ChunkStore::open(&args.store, true)?;
    let root = store
        .local_root()
        .ok_or_else(|| JournalError::NeedsLocalStore(args.store.clone()))?
        .to_owned();
    let listener = crate::restore::live::serve::bind(&args.export).await?;
    let target = Target::open_existing(&args.target)?.ok_or_else(|| {
        ProtectError::Service(ServiceError::TargetIo {
            op: "open",
            path: args.target.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        })
    })?;
    let size = target_size(&target)?;
    if size == 0 || size % 512 != 0 {
        return Err(ProtectError::TargetSize {
            path: args.target.clone(),
            size_bytes: size,
        });
    }
    let pin = target.pin()?;
    settle_restore(&args.target)?;
    let old = if args.new_base {
        None
    } else {
        State::read(&args.target)?
    };
    if let Some(s) = &old {
        if s.store != root
            || s.volume != args.volume
            || s.target != pin
            || s.volume_size_bytes != size
        {
            return Err(ProtectError::ProtectedElsewhere {
                path: args.target.clone(),
                volume: s.volume.to_string(),
                store: s.store.display().to_string(),
                state: state::path_for(&args.target),
            });
        }
    }
    let base = match &old {
        Some(s) => s.base,
        None => {
            let options = BackupOptions {
                volume: args.volume.clone(),
                chunk_size: ChunkSize::DEFAULT,
                progress: false,
                rate_limit_bytes_per_sec: None,
                verify: false,
            };
            let summary = rehydrate_backup::backup(&store, &args.target, &options).await?;
            tracing::info!(
                version = summary.version,
                "protect: backed up the volume as the journal's base"
            );
            summary.version
        }
    };
    let index = store.read_index(&args.volume, base).await?;
    let index_checksum =
        index
            .checksum()
            .map_err(|source| rehydrate_backup::BackupError::Index {
                path: format!("{}@{base}", args.volume),
                source,
            })?;
    if index.volume_size_bytes != size {
        return Err(ProtectError::ProtectedElsewhere {
            path: args.target.clone(),
            volume: args.volume.to_string(),
            store: args.store.clone(),
            state: state::path_for(&args.target),
        });
    }
    let journal_base = JournalBase {
        volume: args.volume.clone(),
        version: base,
        volume_size_bytes: size,
        index_checksum,
    };
    let (r, segment_size) = (root.clone(), args.segment_size);
    let (writer, journal) =
        tokio::task::spawn_blocking(move || JournalWriter::open(&r, journal_base, segment_size))
            .await
            .map_err(|e| ProtectError::JournalFailed(e.to_string()))??;
    let head = journal.head();
    let clean = old
        .as_ref()
        .is_some_and(|s| s.phase == Phase::Clean && s.head == head)
        && !journal.in_gap();
    let compare = old.is_some() && !clean;
    let target = Arc::new(target);
    State {
        phase: Phase::Running,
        base,
        head,
        volume_size_bytes: size,
        target: pin,
        volume: args.volume.clone(),
        store: root.clone(),
    }
    .write(&args.target)?;

    let region_size = u32::try_from(args.region_size).unwrap_or(u32::MAX);
    let geometry = Geometry::new(size, region_size).map_err(|source| ServiceError::Geometry {
        size_bytes: size,
        source,
    })?;
    let config = CaptureConfig {
        buffer_max_bytes: args.buffer_size,
        ..CaptureConfig::new(mode, head + 1)
    };
    let mut capture = Capture::new(geometry, config)?;
    if compare {
        let runs = compare_with_head(
            &store,
            &args.volume,
            base,
            index,
            &journal,
            &target,
            &geometry,
        )
        .await?;
        tracing::warn!(
            regions = runs.iter().map(|r| r.end - r.start).sum::<u64>(),
            "protect: the target was not left as journaled; journaling what differs inside a gap"
        );
        let now = now_unix_ns();
        capture.open_gap(now);
        for r in runs {
            let bytes = geometry.regions_byte_range(r);
            capture.mark_dirty(bytes.start, bytes.end - bytes.start, now)?;
        }
    }

    let labels: HashSet<String> = journal
        .points()
        .iter()
        .filter_map(|p| p.label.clone())
        .collect();
    let (pump_waker, pump_wake) = PumpWaker::new();
    let (durable, _) = watch::channel(head);
    let journal_name = format!("{}@{base}", args.volume);
    let shared = Arc::new(Protected {
        target: Arc::clone(&target),
        size_bytes: size,
        capture: Mutex::new(capture),
        mode,
        room: Notify::new(),
        durable,
        pump: pump_waker,
        resync: Notify::new(),
        stopping: AtomicBool::new(false),
        in_flight: AtomicU64::new(0),
        failure: Mutex::new(None),
        labels: Mutex::new(labels),
        journal_name: journal_name.clone(),
    });
    let pump = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("journal-pump".into())
            .spawn(move || pump::run(shared, writer, pump_wake))
            .map_err(|e| {
                ProtectError::JournalFailed(format!("cannot start the journal thread: {e}"))
            })?
    };
    let resync = tokio::spawn(resync::run(Arc::clone(&shared)));
    let socket = match &args.control {
        Some(p) => p.clone(),
        None => control::default_socket(&args.volume)?,
    };
    #[cfg(unix)]
    {
        let control_listener = control::bind(&socket, args.volume.as_str())?;
        tokio::spawn(control::serve(control_listener, Arc::clone(&shared)));
    }
    let name = args
        .export_name
        .clone()
        .unwrap_or_else(|| args.volume.to_string());
    let description = format!(
        "rehydrate protected volume {} ({}), journal {journal_name} in {}",
        args.target.display(),
        if mode == CaptureMode::Sync {
            "sync"
        } else {
            "async"
        },
        root.display()
    );
    let export = Arc::new(ProtectExport::new(Arc::clone(&shared), description));
    tokio::spawn(rehydrate_nbd::serve(
        listener,
        Arc::new(ProtectCatalog::new(name, export)),
        rehydrate_nbd::ServerConfig::default(),
    ));
    tracing::info!(base, head, ?mode, "protect: serving");

    // Until a stop is asked for, or journaling fails (nothing can be acknowledged then).
    let mut durable = shared.durable.subscribe();
    tokio::select! {
        () = stop_signal.wait() => {}
        _ = durable.wait_for(|_| lock(&shared.failure).is_some()) => {}
    }
    let clean = stop(&shared).await;
    resync.abort();
    let (writer, report) = tokio::task::spawn_blocking(move || pump.join())
        .await
        .map_err(|e| ProtectError::JournalFailed(e.to_string()))?
        .map_err(|_| ProtectError::JournalFailed("the journal thread panicked".into()))?;
    control::remove(&socket);
    let counters = lock(&shared.capture).counters();
    let head = writer.head();
    if clean {
        State {
            phase: Phase::Clean,
            base,
            head,
            volume_size_bytes: size,
            target: pin,
            volume: args.volume.clone(),
            store: root,
        }
        .write(&args.target)?;
    }
    if let Some(why) = lock(&shared.failure).clone() {
        return Err(ProtectError::JournalFailed(why));
    }
    Ok(Summary {
        volume: args.volume.to_string(),
        base,
        head,
        points: counters.points,
        gaps: counters.gaps,
        records: report.records,
        journaled_bytes: report.bytes,
        clean,
        secs: started.elapsed().as_secs_f64(),
    })
}

/// Stops serving, flushes, and waits for the journal to take everything; true when the
/// target is left exactly as journaled.
async fn stop(shared: &Arc<Protected>) -> bool {
    tracing::info!("protect: stopping");
    shared.stopping.store(true, Ordering::Release);
    let since = Instant::now();
    // Bounded by STOP_GRACE.
    while shared.in_flight.load(Ordering::Acquire) > 0 && since.elapsed() < STOP_GRACE {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = shared.in_flight.load(Ordering::Acquire) == 0;
    let flushed = shared.flush().await.is_ok();
    let since = Instant::now();
    // Bounded by DRAIN_GRACE: the pump journals, the read-back task closes a gap.
    loop {
        shared.pump.wake();
        shared.resync.notify_one();
        let idle = lock(&shared.capture).is_idle();
        if idle || lock(&shared.failure).is_some() || since.elapsed() >= DRAIN_GRACE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idle = lock(&shared.capture).is_idle();
    if !idle {
        // The pump ends on its own only once the capture is idle.
        shared.fail("stopped before the journal took every record".into());
    }
    drained && flushed && idle && lock(&shared.failure).is_none()
}

/// The journal's head, served like a point, compared with the target.
async fn compare_with_head(
    store: &ChunkStore,
    volume: &VolumeName,
    base: u32,
    index: rehydrate_backup::Index,
    journal: &Journal,
    target: &Arc<Target>,
    geometry: &Geometry,
) -> Result<Vec<std::ops::Range<u64>>, ProtectError> {
    let cache = Arc::new(ChunkCache::new(store.clone(), COMPARE_CACHE_BYTES));
    let base_export =
        VersionExport::new(volume.clone(), base, Arc::new(index), cache).map_err(|source| {
            rehydrate_backup::BackupError::Index {
                path: format!("{volume}@{base}"),
                source,
            }
        })?;
    let identity = ExportIdentity {
        point: Some(PointIdentity {
            seq: journal.head().max(1),
            digest: [0; 32],
        }),
        ..base_export.identity().clone()
    };
    let map = Arc::new(PointMap::build(journal, journal.head()));
    let head = PointExport::new(base_export, map, Arc::new(journal.files()), identity);
    resync::differing_regions(target, &head, geometry).await
}

/// SIGINT and SIGTERM, caught from the moment it is installed.
struct StopSignal {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignal {
    fn install() -> StopSignal {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signals = signal(SignalKind::terminate())
                .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)))
                .ok();
            StopSignal { signals }
        }
        #[cfg(not(unix))]
        StopSignal {}
    }

    /// Completes on the first SIGINT or SIGTERM (Ctrl-C elsewhere).
    async fn wait(self) {
        #[cfg(unix)]
        if let Some((mut term, mut int)) = self.signals {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
