//! One run: a machine with the simulated stack, the filter, the service and the backup,
//! a file system driving a workload, faults, and the oracle watching.
//!
//! # Phases
//! 1. **Boot**: PnP start down the stack (the filter starts on the way up: its metadata
//!    is opened and, after a power loss, checked against the oracle), power D0, volume
//!    online; the service starts and attaches.
//! 2. **Run**: the workload issues `ops` requests; faults are injected, including power
//!    loss (then boot again: the filter reloads its metadata, the service re-plans, the
//!    workload continues).
//! 3. **Drain**: faults stop; the service restores everything; the filter must become
//!    a pass-through.
//! 4. **Verify**: every sector is read back through the stack and checked, and the
//!    device image itself; then an orderly shutdown (flush, offline, D3, remove), after
//!    which no IRP may be left.
//!
//! Everything is driven by one seeded RNG and the event queue; the run loop delivers
//! [`Upcall`]s (completions that reach the filter, the file system or the service)
//! after each event, so no component is ever re-entered from inside a call it made.

use std::sync::Arc;

use rehydrate_driver::abi::Attach;
use rehydrate_driver::engine::EngineConfig;
use rehydrate_driver::filter::{Filter, FilterConfig};
use rehydrate_driver::meta::{
    decode_page_slot, identity_tag, Identity, Metadata, HEADER_STORE_PAGES, META_PAGE_SIZE_BYTES,
    REGIONS_PER_PAGE, WORDS_PER_PAGE,
};
use rehydrate_driver::mutants::Mutant;
use rehydrate_driver::{Geometry, RegionMap, Status};
use rehydrate_service::hydrator::HydratorConfig;

use crate::data::{app_tag, garbage_tag, Backup};
use crate::demo::realtime::LinkServer;
use crate::device::Disk;
use crate::faults::{Fault, Faults};
use crate::irp::{
    IrpId, Layer, Mdl, Origin, Routine, IOCTL_DISK_GET_LENGTH_INFO,
    IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES, IOCTL_VOLUME_OFFLINE, IOCTL_VOLUME_ONLINE,
    IRP_MJ_DEVICE_CONTROL, IRP_MJ_FLUSH_BUFFERS, IRP_MJ_PNP, IRP_MJ_POWER, IRP_MJ_READ,
    IRP_MJ_WRITE, IRP_MN_REMOVE_DEVICE, IRP_MN_SET_POWER, IRP_MN_START_DEVICE, SL_WRITE_THROUGH,
};
use crate::kernel::{Kernel, Upcall};
use crate::link::{Link, LinkConfig};
use crate::meta::MetaDev;
use crate::oracle::{Expect, OpKind, Oracle};
use crate::rng::Rng;
use crate::sched::Ev;
use crate::service::{Ctx, Service};
use crate::stack::Lower;
use crate::verifier::{Rule, Violation};
use crate::wdf::{self, SimWdf};
use crate::workload::{Request, Workload, WorkloadConfig};

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunConfig {
    /// The seed: every choice of the run follows from it.
    pub seed: u64,
    /// File-system requests to issue.
    pub ops: u64,
    /// Faults that may be injected.
    pub faults: Faults,
    /// A deliberate bug in the driver, or none.
    pub mutant: Option<Mutant>,
    /// The workload mix.
    pub workload: WorkloadConfig,
}

impl RunConfig {
    /// A run of `seed` with defaults.
    pub fn new(seed: u64, ops: u64, faults: Faults) -> RunConfig {
        RunConfig {
            seed,
            ops,
            faults,
            mutant: None,
            workload: WorkloadConfig::default(),
        }
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "rehydrate-sim run --seed {} --ops {} --faults {}",
            self.seed, self.ops, self.faults
        );
        if let Some(m) = self.mutant {
            cmd.push_str(&format!(" --mutant {}", m.name()));
        }
        cmd
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Requests the file system completed.
    pub ops_done: u64,
    /// IRPs allocated (each went through the stack).
    pub irps: u64,
    /// `IoCallDriver` calls.
    pub dispatches: u64,
    /// Simulated time at the end.
    pub sim_ns: u64,
    /// The trace hash.
    pub trace: u64,
    /// Boots (1 + power losses).
    pub boots: u64,
    /// Sectors whose reads were checked.
    pub sectors_checked: u64,
    /// The first failure.
    pub violation: Option<Violation>,
    /// The shape drawn for the run, for the report.
    pub shape: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Run,
    Drain { since_ns: u64 },
    Verify { next_sector: u64 },
    Shutdown { step: u8 },
    Done,
}

/// The machine and everything around it.
struct World {
    wdf: SimWdf,
    filter: Option<Filter<SimWdf>>,
    service: Service,
    link: Link,
    store: MetaDev,
    identity: Identity,
    attach: Attach,
    geometry: Geometry,
    filter_config: FilterConfig,
    workload: Workload,
    fs_irps: Vec<Option<(IrpId, u64)>>,
    next_write_id: u64,
    ops_target: u64,
    ops_issued: u64,
    ops_done: u64,
    phase: Phase,
    boot_step: u8,
    mounted: bool,
    boots: u64,
    /// Metadata commits performed since the last boot.
    commits_since_boot: u64,
    volume_sectors: u64,
    partition_start: u64,
    meta_ppm: u32,
    commit_crash_ppm: u32,
    crash_per_op_ppm: u32,
    kill_per_op_ppm: u32,
    hold_deadline_ns: u64,
    hydrator_deadline_ns: u64,
    shutdown_flush: Option<u32>,
    /// An `FsTick` is scheduled (the file system waits on a completion otherwise).
    fs_tick_pending: bool,
    shape: String,
    /// The demo: the service runs outside the simulator and reaches the filter through
    /// this driver-link server, and the clock follows the wall clock. `None` in
    /// deterministic runs.
    ext: Option<LinkServer>,
}

/// The demo's machine: an explicit shape instead of a drawn one, no faults, and the
/// real service outside the simulator (see `crate::demo`).
#[derive(Clone, Debug)]
pub struct DemoMachine {
    /// Seeds the workload and the latencies.
    pub seed: u64,
    /// Volume size (a multiple of 4 KiB).
    pub volume_bytes: u64,
    /// Region size.
    pub region_size_bytes: u32,
    /// What the backup holds, sector by sector (the volume image is built from it).
    pub backup: Backup,
    /// The backup's identity, as the service attaches with it.
    pub backup_id: [u8; 32],
    /// Most file-system requests; the file system stops early once the volume is
    /// restored.
    pub ops_max: u64,
    /// The workload mix.
    pub workload: WorkloadConfig,
    /// Typical device latency.
    pub device_latency_ns: u64,
}

/// What the demo's run left behind.
#[derive(Debug)]
pub struct DemoRun {
    /// How the run ended.
    pub outcome: Outcome,
    /// The device's content per volume sector (as tags) at the end.
    pub volume_tags: Vec<u64>,
    /// What the oracle says each volume sector must hold at the end.
    pub expected: Vec<Expect>,
    /// The link server, with its measurements.
    pub server: Option<LinkServer>,
}

/// Runs the demo's machine against a service outside the simulator, in real time,
/// until the volume is restored, read back, checked and shut down (or a rule breaks).
pub fn run_demo(machine: &DemoMachine, server: LinkServer) -> DemoRun {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut world = World::demo(machine, server);
        world.run();
        let outcome = world.outcome(machine.seed);
        let start = world.partition_start as usize;
        let disk = &world.wdf.k.lower.disk;
        let volume_tags = (0..world.volume_sectors as usize)
            .map(|s| disk.live(start + s))
            .collect();
        let oracle = &world.wdf.k.oracle;
        let expected = (0..world.volume_sectors)
            .map(|s| oracle.expect(s).clone())
            .collect();
        DemoRun {
            outcome,
            volume_tags,
            expected,
            server: world.ext.take(),
        }
    }));
    result.unwrap_or_else(|panic| DemoRun {
        outcome: Outcome {
            seed: machine.seed,
            violation: Some(Violation {
                rule: Rule::Driver,
                time_ns: 0,
                detail: format!("panicked: {}", panic_message(&panic)),
            }),
            ..Outcome::default()
        },
        volume_tags: Vec::new(),
        expected: Vec::new(),
        server: None,
    })
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_else(|| "panic".to_string())
}

/// The filter's timer period in every run.
const FILTER_TICK_NS: u64 = 50_000_000;

static MUTANT_LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Holds the mutant switch for a run.
enum Guard {
    Read(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
    Write(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
}

/// Runs one seed to its end (or its first failure). A panic in the driver or the
/// service is reported as a failure of the run, not of the simulator.
pub fn run(config: &RunConfig) -> Outcome {
    // The driver's mutant switch is one per process: a mutated run has it to itself,
    // unmutated runs may share it (it stays `None` while any of them holds the lock).
    let _guard = if config.mutant.is_some() {
        Guard::Write(MUTANT_LOCK.write().unwrap_or_else(|e| e.into_inner()))
    } else {
        Guard::Read(MUTANT_LOCK.read().unwrap_or_else(|e| e.into_inner()))
    };
    rehydrate_driver::mutants::set(config.mutant);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut world = World::new(config);
        world.run();
        world.outcome(config.seed)
    }));
    rehydrate_driver::mutants::set(None);
    result.unwrap_or_else(|panic| {
        let message = panic_message(&panic);
        Outcome {
            seed: config.seed,
            violation: Some(Violation {
                rule: Rule::Driver,
                time_ns: 0,
                detail: format!("panicked: {message}"),
            }),
            ..Outcome::default()
        }
    })
}

impl World {
    fn new(config: &RunConfig) -> World {
        let mut rng = Rng::new(config.seed);
        let faults = config.faults;
        // The shape of the machine, drawn first.
        let sector_bytes: u32 = if rng.coin() { 512 } else { 4096 };
        // Mostly small volumes; three in eight large enough (5,000-8,000 regions) that
        // a bitmap page's marks span several 512-byte sectors, so a torn metadata write
        // can cut between old and new marks.
        let large = rng.below(8) < 3;
        let region_size_bytes: u32 = if large { 4096 } else { 4096 << rng.below(5) };
        let volume_bytes = if large {
            rng.range(1280, 2048) * 16 * 1024
        } else {
            rng.range(64, 1024) * 16 * 1024
        } + if rng.coin() {
            4096 * rng.range(1, 3)
        } else {
            0
        };
        let volume_sectors = volume_bytes / 512;
        let region_sectors = u64::from(region_size_bytes) / 512;
        let partition_start = 2048;
        let disk_sectors = partition_start + volume_sectors + 2048;
        let align = u64::from(sector_bytes / 512);
        let geometry =
            Geometry::new(volume_bytes, region_size_bytes).expect("drawn geometry is valid");
        let backup = Backup::new(config.seed, region_size_bytes, rng.range(3, 9));
        let lower = Lower {
            volume_online: false,
            volume_sectors,
            partition_start,
            max_transfer_sectors: 128 << rng.below(3),
            port_queue: Default::default(),
            port_active: 0,
            port_depth: rng.range(1, 32) as u32,
            disk: Disk::new(
                disk_sectors as usize,
                sector_bytes,
                faults.has(Fault::Cache),
            ),
            // A fast disk or a slow array: slow devices widen the windows in which
            // restore data and application writes race.
            latency_ns: if rng.coin() {
                rng.range(20_000, 400_000)
            } else {
                rng.range(500_000, 5_000_000)
            },
            media_ppm: 2_000,
            started: [false; 11],
        };
        let hold_deadline_ns = 20_000_000_000;
        // The engine's clock moves with its timer: it may time a request out up to one
        // tick before the deadline has passed since the request was issued.
        let timeout_earliest_ns = hold_deadline_ns - FILTER_TICK_NS;
        let oracle = Oracle::new(volume_sectors, region_sectors, backup, timeout_earliest_ns);
        let link_config = LinkConfig {
            // A LAN or a WAN to the backup.
            latency_ns: if rng.coin() {
                rng.range(50_000, 500_000)
            } else {
                rng.range(1_000_000, 10_000_000)
            },
            bytes_per_us: rng.range(50, 1000),
            // Mostly a few bad replies; sometimes so many that fetches fail for good
            // while requests wait (every failure is then judged request by request).
            drop_ppm: [20_000, 20_000, 150_000][rng.below(3) as usize],
            corrupt_ppm: [20_000, 20_000, 400_000][rng.below(3) as usize],
            reorder_ppm: 100_000,
        };
        let link = Link::new(link_config, faults, backup, region_sectors);
        let mut backup_id = [0u8; 32];
        backup_id[..8].copy_from_slice(&config.seed.to_le_bytes());
        backup_id[8..16].copy_from_slice(b"rehydrat");
        let identity = Identity {
            volume_size_bytes: volume_bytes,
            region_size_bytes,
            backup_id,
        };
        let attach = Attach {
            volume_size_bytes: volume_bytes,
            region_size_bytes,
            backup_identity: backup_id,
        };
        let hydrator_deadline_ns = [500_000_000, 3_000_000_000][rng.below(2) as usize];
        let filter_config = FilterConfig {
            engine: EngineConfig {
                hold_deadline_ns,
                held_max: 1024,
                commit_interval_ns: 500_000_000,
                // Small windows, so large reads over missing regions are asked in pieces.
                ask_window_regions: 1 << rng.below(4),
                ..EngineConfig::default()
            },
            tick_ns: FILTER_TICK_NS,
            // Sometimes a short queue of wanted ranges, so ranges are widened over
            // regions nobody asked for (and failures of them reach the engine).
            missing_queue_max: [4, 16, 4096][rng.below(3) as usize],
        };
        let fetch_size_bytes = (u64::from(region_size_bytes) << rng.range(1, 6)).min(1 << 20);
        let hydrator_config = HydratorConfig {
            fetch_size_bytes,
            in_flight_max: rng.range(2, 16) as usize,
            background_floor_slots: 1,
            background_rate_bytes_per_sec: None,
            scan_ahead_bytes: fetch_size_bytes,
            deadline_ns: hydrator_deadline_ns,
            backoff_initial_ns: 20_000_000,
            backoff_max_ns: 500_000_000,
            corrupt_retries: 3,
            block_status: true,
            seed: 0,
        };
        let workload_config = WorkloadConfig {
            depth_max: rng.range(1, u64::from(config.workload.depth_max.max(1))) as u32,
            // Some runs read in large pieces, as a file copy does: a held read then
            // waits on many missing regions, asked a window at a time.
            large_pct: if rng.below(4) == 0 {
                30
            } else {
                config.workload.large_pct
            },
            ..config.workload
        };
        let workload = Workload::new(
            workload_config,
            volume_sectors,
            region_sectors,
            align,
            &mut rng,
        );
        let store = MetaDev::new(Metadata::store_pages(&geometry));
        let shape = format!(
            "volume={}KiB region={}KiB sector={} depth={} port_depth={} max_transfer={}KiB fetch={}KiB",
            volume_bytes / 1024,
            region_size_bytes / 1024,
            sector_bytes,
            workload_config.depth_max,
            lower.port_depth,
            lower.max_transfer_sectors / 2,
            fetch_size_bytes / 1024
        );
        let failure_span_bytes = [0, 4 * fetch_size_bytes, 1 << 20][rng.below(3) as usize];
        let kernel = Kernel::new(rng, faults, oracle, lower);
        let mut service = Service::new(geometry, attach, hydrator_config, 1_000_000_000);
        service.failure_span_bytes = failure_span_bytes;
        let ops = config.ops.max(1);
        World {
            wdf: SimWdf::new(kernel),
            filter: None,
            service,
            link,
            store,
            identity,
            attach,
            geometry,
            filter_config,
            workload,
            fs_irps: Vec::new(),
            next_write_id: 0,
            ops_target: config.ops,
            ops_issued: 0,
            ops_done: 0,
            phase: Phase::Run,
            boot_step: 0,
            mounted: false,
            boots: 0,
            commits_since_boot: 0,
            volume_sectors,
            partition_start,
            meta_ppm: 20_000,
            // About two power losses inside a commit per run (a commit per ~10 requests).
            commit_crash_ppm: (20_000_000 / ops).min(250_000) as u32,
            // About two power losses and two service kills per run.
            crash_per_op_ppm: (2_000_000 / ops).min(200_000) as u32,
            kill_per_op_ppm: (2_000_000 / ops).min(200_000) as u32,
            hold_deadline_ns,
            hydrator_deadline_ns,
            shutdown_flush: None,
            fs_tick_pending: false,
            shape,
            ext: None,
        }
    }

    /// The demo's machine: a 512-byte-sector disk with no faults, a fast device, the
    /// given volume and backup, and the service outside (`server`).
    fn demo(m: &DemoMachine, mut server: LinkServer) -> World {
        let mut rng = Rng::new(m.seed);
        let faults = Faults::NONE;
        let region_size_bytes = m.region_size_bytes;
        let volume_sectors = m.volume_bytes / 512;
        let region_sectors = u64::from(region_size_bytes) / 512;
        let partition_start = 2048;
        let disk_sectors = partition_start + volume_sectors + 2048;
        let geometry = Geometry::new(m.volume_bytes, region_size_bytes)
            .expect("the demo's geometry is checked by its caller");
        let lower = Lower {
            volume_online: false,
            volume_sectors,
            partition_start,
            // 1 MiB transfers: a hydrate of a whole fetch goes down as one request.
            max_transfer_sectors: 2048,
            port_queue: Default::default(),
            port_active: 0,
            port_depth: 32,
            disk: Disk::new(disk_sectors as usize, 512, false),
            latency_ns: m.device_latency_ns,
            media_ppm: 0,
            started: [false; 11],
        };
        let hold_deadline_ns = 20_000_000_000;
        let oracle = Oracle::new(
            volume_sectors,
            region_sectors,
            m.backup,
            hold_deadline_ns - FILTER_TICK_NS,
        );
        // The simulated link is not used: the service fetches over real NBD.
        let link_config = LinkConfig {
            latency_ns: 1,
            bytes_per_us: 1,
            drop_ppm: 0,
            corrupt_ppm: 0,
            reorder_ppm: 0,
        };
        let link = Link::new(link_config, faults, m.backup, region_sectors);
        let identity = Identity {
            volume_size_bytes: m.volume_bytes,
            region_size_bytes,
            backup_id: m.backup_id,
        };
        let attach = Attach {
            volume_size_bytes: m.volume_bytes,
            region_size_bytes,
            backup_identity: m.backup_id,
        };
        let filter_config = FilterConfig {
            engine: EngineConfig {
                hold_deadline_ns,
                held_max: 1024,
                commit_interval_ns: 500_000_000,
                ..EngineConfig::default()
            },
            tick_ns: FILTER_TICK_NS,
            ..FilterConfig::default()
        };
        let workload = Workload::new(m.workload, volume_sectors, region_sectors, 1, &mut rng);
        let store = MetaDev::new(Metadata::store_pages(&geometry));
        let shape = format!(
            "volume={}KiB region={}KiB sector=512 depth={} (real time, real service)",
            m.volume_bytes / 1024,
            region_size_bytes / 1024,
            m.workload.depth_max
        );
        let kernel = Kernel::new(rng, faults, oracle, lower);
        // Never started: the real service attaches through `ext` instead.
        let service = Service::new(geometry, attach, HydratorConfig::default(), 1_000_000_000);
        World {
            wdf: SimWdf::new(kernel),
            filter: None,
            service,
            link,
            store,
            identity,
            attach,
            geometry,
            filter_config,
            workload,
            fs_irps: Vec::new(),
            next_write_id: 0,
            ops_target: m.ops_max,
            ops_issued: 0,
            ops_done: 0,
            phase: Phase::Run,
            boot_step: 0,
            mounted: false,
            boots: 0,
            commits_since_boot: 0,
            volume_sectors,
            partition_start,
            meta_ppm: 0,
            commit_crash_ppm: 0,
            crash_per_op_ppm: 0,
            kill_per_op_ppm: 0,
            hold_deadline_ns,
            hydrator_deadline_ns: 30_000_000_000,
            shutdown_flush: None,
            fs_tick_pending: false,
            shape,
            ext: Some({
                // The machine is built (the oracle's per-sector state takes a while on
                // a large volume): time starts now, at power-on.
                server.start_clock();
                server
            }),
        }
    }

    fn k(&mut self) -> &mut Kernel {
        &mut self.wdf.k
    }

    fn faults_on(&self, f: Fault) -> bool {
        self.wdf.k.faults.has(f) && matches!(self.phase, Phase::Run)
    }

    fn outcome(&self, seed: u64) -> Outcome {
        let k = &self.wdf.k;
        Outcome {
            seed,
            ops_done: self.ops_done,
            irps: k.stats.irps,
            dispatches: k.stats.dispatches,
            sim_ns: k.now_ns(),
            trace: k.trace.hash() ^ k.rng.draws(),
            boots: self.boots,
            sectors_checked: k.oracle.sectors_checked,
            violation: k.v.first().cloned(),
            shape: self.shape.clone(),
        }
    }

    // ----- the loop ------------------------------------------------------------------

    fn run(&mut self) {
        // A fresh store is formatted once, before anything can fail.
        if let Err(e) = Metadata::create(&mut self.store, &self.identity) {
            self.k()
                .v
                .fail(Rule::Driver, format!("metadata create failed: {e}"));
            return;
        }
        if self.ext.is_some() {
            self.boot();
        } else {
            // The machine was up a while before the volume arrived: the filter's clock
            // does not start at zero.
            let uptime = self.wdf.k.rng.range(0, 30_000_000_000);
            self.k().sched.after(uptime, Ev::PowerOn);
        }
        let time_cap_ns = self
            .ops_target
            .saturating_mul(50_000_000)
            .saturating_add(7_200_000_000_000);
        // Bounded: every iteration consumes an event; the cap on simulated time stops
        // a run whose events never end.
        loop {
            self.pump();
            if self.wdf.k.v.failed() || self.phase == Phase::Done {
                break;
            }
            self.check_progress();
            if self.wdf.k.v.failed() {
                break;
            }
            self.step_phase();
            if self.phase == Phase::Done || self.wdf.k.v.failed() {
                break;
            }
            if self.ext.is_some() {
                match self.next_realtime() {
                    Some(ev) => {
                        let now = self.wdf.k.now_ns();
                        self.wdf.k.v.set_now(now);
                        self.handle(ev);
                    }
                    None => continue,
                }
                continue;
            }
            let Some(ev) = self.wdf.k.sched.pop() else {
                let phase = self.phase;
                self.k().v.fail(
                    Rule::Liveness,
                    format!("nothing left to happen in phase {phase:?}"),
                );
                break;
            };
            let now = self.wdf.k.now_ns();
            if now > time_cap_ns {
                let phase = self.phase;
                self.k().v.fail(
                    Rule::Liveness,
                    format!("simulated time cap reached in phase {phase:?}"),
                );
                break;
            }
            self.wdf.k.v.set_now(now);

            self.wdf.k.trace.mix(ev.code() ^ now.rotate_left(17));
            self.handle(ev);
        }
        if !self.wdf.k.v.failed() && self.phase == Phase::Done {
            self.check_leaks();
        }
    }

    /// The demo's clock: the next event once the wall clock reaches it. Meanwhile time
    /// passes and the link server hands the service's requests to the filter; `None`
    /// when the caller should pump and look again.
    fn next_realtime(&mut self) -> Option<Ev> {
        let mut ext = self.ext.take()?;
        let mounted = self.mounted;
        // Requests are taken on every turn, so a busy machine still answers at once.
        ext.serve(&mut self.wdf, &mut self.filter, mounted, None);
        let wall = ext.now_ns();
        let next = self.wdf.k.sched.next_at();
        let ev = if next.is_some_and(|at| at <= wall) {
            self.wdf.k.sched.pop()
        } else {
            self.wdf.k.sched.advance_to(wall);
            self.wdf.k.v.set_now(self.wdf.k.now_ns());
            // Sleep until the next event is due or the service asks something.
            let wait_ns = next.map_or(u64::MAX, |at| at - wall);
            ext.serve(&mut self.wdf, &mut self.filter, mounted, Some(wait_ns));
            None
        };
        if let Some(why) = ext.stalled(self.wdf.k.now_ns(), self.phase_is_restoring()) {
            self.k().v.fail(Rule::Liveness, why);
        }
        self.ext = Some(ext);
        ev
    }

    fn phase_is_restoring(&self) -> bool {
        matches!(self.phase, Phase::Run | Phase::Drain { .. })
    }

    /// Delivers queued upcalls until none is left.
    fn pump(&mut self) {
        // Bounded by the work in flight: each upcall retires a completion.
        while let Some(up) = self.wdf.k.upcalls.pop_front() {
            match up {
                Upcall::LowerComplete { lower, status } => {
                    crate::judge::lower_reported(&mut self.wdf, lower, status);
                    if let Some(f) = self.filter.as_mut() {
                        f.on_lower_complete(&mut self.wdf, lower, status);
                        self.wdf.collect();
                    }
                }
                Upcall::FsDone { op, irp } => self.fs_done(op, irp),
                Upcall::ServiceDone { op, irp } if self.ext.is_some() => {
                    if let Some(ext) = self.ext.as_mut() {
                        ext.on_done(&mut self.wdf.k, op, irp);
                    }
                }
                Upcall::ServiceDone { op, irp } => {
                    let mut cx = Ctx {
                        wdf: &mut self.wdf,
                        filter: &mut self.filter,
                        link: &mut self.link,
                    };
                    self.service.on_done(&mut cx, op, irp);
                }
                Upcall::WdfPnpDone { irp } => self.wdf_pnp_done(irp),
                Upcall::WdfCancel { irp } => {
                    if let Some(f) = self.filter.as_mut() {
                        f.on_cancel(&mut self.wdf, irp);
                        self.wdf.collect();
                    }
                }
                Upcall::IoManagerDone { irp } => self.io_manager_done(irp),
            }
            if self.wdf.k.v.failed() {
                return;
            }
        }
        if let Some(f) = self.filter.as_ref() {
            let held = f.engine().held_count();
            if f.is_passthrough() && held > 0 {
                self.k().v.fail(
                    Rule::Ordering,
                    format!("the filter became a pass-through while its engine still holds {held} requests: requests sent from now on overtake them"),
                );
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::DeviceDone(id) => crate::stack::device::done(&mut self.wdf.k, id),
            Ev::Destage => {
                self.wdf.k.lower.disk.destage();
                let delay = self.wdf.k.rng.latency(10_000_000, 8);
                self.k().sched.after(delay, Ev::Destage);
            }
            Ev::FilterTimer { gen } => {
                if self.hung() {
                    return;
                }
                if gen == self.wdf.timer_gen {
                    if let Some(f) = self.filter.as_mut() {
                        f.on_timer(&mut self.wdf);
                        self.wdf.collect();
                    }
                }
            }
            Ev::CommitWork { commit } => self.commit_work(commit),
            Ev::FsTick => {
                self.fs_tick_pending = false;
                self.fs_tick();
            }
            Ev::FsCancel => self.fs_cancel(),
            Ev::LinkReply { slot } => {
                let now = self.wdf.k.now_ns();
                if let Some(entry) = self.link.take(slot, now) {
                    let mut cx = Ctx {
                        wdf: &mut self.wdf,
                        filter: &mut self.filter,
                        link: &mut self.link,
                    };
                    self.service
                        .on_reply(&mut cx, entry.instance, entry.fetch, entry.reply);
                }
            }
            Ev::LinkState => self.link_state(),
            Ev::ServiceTick { instance } => {
                let mut cx = Ctx {
                    wdf: &mut self.wdf,
                    filter: &mut self.filter,
                    link: &mut self.link,
                };
                self.service.on_tick(&mut cx, instance);
            }
            Ev::ServiceStart => {
                if !self.service.is_alive()
                    && self.ext.is_none()
                    && self.filter.is_some()
                    && !matches!(self.phase, Phase::Shutdown { .. } | Phase::Done)
                {
                    let seed = self.wdf.k.rng.next_u64();
                    let mut cx = Ctx {
                        wdf: &mut self.wdf,
                        filter: &mut self.filter,
                        link: &mut self.link,
                    };
                    self.service.start(&mut cx, seed);
                }
            }
            Ev::ServiceKill => {
                if self.service.is_alive() && self.faults_on(Fault::ServiceKill) {
                    let mut cx = Ctx {
                        wdf: &mut self.wdf,
                        filter: &mut self.filter,
                        link: &mut self.link,
                    };
                    self.service.kill(&mut cx);
                    self.wdf.k.note_delay_fault();
                    let delay = self.wdf.k.rng.range(50_000_000, 3_000_000_000);
                    self.k().sched.after(delay, Ev::ServiceStart);
                }
            }
            Ev::PowerLoss => self.power_loss(),
            Ev::PowerOn => self.boot(),
        }
    }

    /// Liveness after every step of the restore (see `judge.rs`).
    fn check_progress(&mut self) {
        if !self.phase_is_restoring() || self.ext.is_some() {
            return;
        }
        if let Some(f) = self.filter.as_ref() {
            let map = f.engine().map();
            self.service.prune_dropped(|r| map.is_restored(r));
        }
        let last_delay_fault_ns = match (self.wdf.k.last_delay_fault_ns, self.link.last_fault_ns) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let progress = crate::judge::Progress {
            filter: &self.filter,
            service: &self.service,
            last_delay_fault_ns,
            wait_bound_ns: self.hold_deadline_ns / 2,
        };
        if let Err(why) = crate::judge::check_progress(&self.wdf, &progress) {
            self.k().v.fail(Rule::Liveness, why);
        }
    }

    /// Moves between phases when their work is done.
    fn step_phase(&mut self) {
        let now = self.wdf.k.now_ns();
        match self.phase {
            Phase::Run => {
                let restored = self.filter.as_ref().is_some_and(|f| f.is_passthrough());
                if let Some(ext) = self.ext.as_mut() {
                    if restored {
                        ext.note_restored(now);
                        // The tour's workload runs while the volume is being restored.
                        self.ops_target = self.ops_issued;
                    }
                }
                if self.ops_issued >= self.ops_target
                    && self.wdf.k.oracle.in_flight() == 0
                    && self.mounted
                {
                    self.phase = Phase::Drain { since_ns: now };
                    self.calm_down();
                }
            }
            Phase::Drain { since_ns } => {
                if self.filter.as_ref().is_some_and(|f| f.is_passthrough()) {
                    if let Some(ext) = self.ext.as_mut() {
                        ext.note_restored(now);
                    }
                    self.phase = Phase::Verify { next_sector: 0 };
                    self.verify_reads();
                } else if now - since_ns > 3_600_000_000_000 {
                    let restored = self.filter.as_ref().map(|f| f.status_counters());
                    self.k().v.fail(Rule::Liveness, format!("the restore did not finish within an hour of simulated time after the faults stopped: {restored:?}"));
                }
            }
            Phase::Verify { next_sector } => {
                if next_sector >= self.volume_sectors && self.wdf.k.oracle.in_flight() == 0 {
                    let start = self.partition_start;
                    let k = &mut self.wdf.k;
                    k.oracle.check_final_image(&k.lower.disk, start, &mut k.v);
                    self.phase = Phase::Shutdown { step: 0 };
                    self.shutdown();
                }
            }
            Phase::Shutdown { .. } | Phase::Done => {}
        }
    }

    /// The faults stop: the link heals, the service comes back, nothing more is planned.
    fn calm_down(&mut self) {
        self.link.calm = true;
        self.wdf.k.calm = true;
        self.link.come_up();
        self.wdf.k.sched.retain(|e| {
            !matches!(
                e,
                Ev::PowerLoss | Ev::ServiceKill | Ev::LinkState | Ev::FsCancel
            )
        });
        if !self.service.is_alive() {
            self.k().sched.after(1_000_000, Ev::ServiceStart);
        }
    }

    // ----- boot, power loss, shutdown ------------------------------------------------

    fn boot(&mut self) {
        self.boots += 1;
        self.commits_since_boot = 0;
        self.boot_step = 0;
        self.mounted = false;
        self.io_manager_irp(IRP_MJ_PNP, IRP_MN_START_DEVICE, 0);
        if self.wdf.k.faults.has(Fault::Cache) {
            self.k().sched.after(1_000_000, Ev::Destage);
        }
        if self.wdf.k.faults.has(Fault::LinkDisconnect) || self.wdf.k.faults.has(Fault::Outage) {
            let delay = self.wdf.k.rng.range(10_000_000, 500_000_000);
            self.k().sched.after(delay, Ev::LinkState);
        }
        if self.wdf.k.faults.has(Fault::Cancel) {
            let delay = self.wdf.k.rng.range(1_000_000, 20_000_000);
            self.k().sched.after(delay, Ev::FsCancel);
        }
    }

    /// Sends a PnP, power or volume IRP from the I/O manager to the top of the stack.
    fn io_manager_irp(&mut self, major: u8, minor: u8, ioctl: u32) {
        let k = &mut self.wdf.k;
        let id = k.alloc_irp(Layer::IoManager, Layer::Filter.stack_size());
        if let Some(next) = k.next_loc(Layer::IoManager, id) {
            next.major = major;
            next.minor = minor;
            next.ioctl = ioctl;
        }
        k.set_completion(Layer::IoManager, id, Routine::IoManager);
        wdf::dispatch(
            &mut self.wdf,
            &mut self.filter,
            Layer::IoManager,
            id,
            Layer::Filter,
        );
    }

    /// WDF's forwarded PnP/power IRP came back: the filter device starts (or goes).
    fn wdf_pnp_done(&mut self, irp: IrpId) {
        let Some(i) = self.wdf.k.irps.get(irp) else {
            return;
        };
        let (loc, status) = (*i.loc(), i.status);
        if loc.major == IRP_MJ_PNP && loc.minor == IRP_MN_START_DEVICE && status.is_success() {
            self.start_filter();
        }
        if loc.major == IRP_MJ_PNP && loc.minor == IRP_MN_REMOVE_DEVICE {
            self.filter = None;
        }
        self.k().complete(Layer::Filter, irp, status, 0);
    }

    /// `EvtDevicePrepareHardware`: load the durable marks, check them, build the filter.
    fn start_filter(&mut self) {
        let map = match RegionMap::new(self.geometry) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                self.k().v.fail(Rule::Driver, format!("region map: {e:?}"));
                return;
            }
        };
        let meta = match Metadata::open(&mut self.store, &self.identity, &map) {
            Ok(m) => m,
            Err(e) => {
                let boots = self.boots;
                self.k().v.fail(
                    Rule::DurableMark,
                    format!("metadata does not open at boot {boots}: {e}"),
                );
                return;
            }
        };
        let words: Vec<u64> = (0..map.word_count()).map(|w| map.word(w)).collect();
        let start = self.partition_start;
        let k = &mut self.wdf.k;
        k.oracle
            .check_reboot(&words, &k.lower.disk, start, &mut k.v);
        self.filter = Some(Filter::new(map, meta, self.attach, self.filter_config));
    }

    fn io_manager_done(&mut self, irp: IrpId) {
        let status = self
            .wdf
            .k
            .irps
            .get(irp)
            .map_or(Status::IO_DEVICE_ERROR, |i| i.status);
        self.k().free_irp(Layer::IoManager, irp);
        if !status.is_success() {
            let (step, phase) = (self.boot_step, self.phase);
            self.k().v.fail(Rule::Status, format!("I/O manager request failed with {status:?} (boot step {step}, phase {phase:?})"));
            return;
        }
        if let Phase::Shutdown { step } = self.phase {
            self.phase = Phase::Shutdown { step: step + 1 };
            self.shutdown();
            return;
        }
        self.boot_step += 1;
        match self.boot_step {
            1 => self.io_manager_irp(IRP_MJ_POWER, IRP_MN_SET_POWER, 1),
            2 => self.io_manager_irp(IRP_MJ_DEVICE_CONTROL, 0, IOCTL_VOLUME_ONLINE),
            _ => {
                self.mounted = true;
                self.fs_tick_pending = false;
                self.schedule_fs_tick();
                let delay = self.wdf.k.rng.range(1_000_000, 30_000_000);
                self.k().sched.after(delay, Ev::ServiceStart);
            }
        }
    }

    fn power_loss(&mut self) {
        if !self.faults_on(Fault::PowerLoss) {
            return;
        }
        let torn = self.wdf.k.faults.has(Fault::Torn);
        let k = &mut self.wdf.k;
        k.oracle.crash();
        k.lower.disk.crash(&mut k.rng, torn);
        let rng = &mut k.rng;
        let report = self.store.crash(&mut || rng.next_u64());
        if crate::oracle::trace_enabled() {
            eprintln!("power loss: metadata {report:?}");
        }
        self.wdf.k.crash();
        self.wdf.lowers.clear();
        self.wdf.timer_gen += 1;
        self.filter = None;
        self.service.vanish();
        self.link.reset();
        self.fs_irps.iter_mut().for_each(|f| *f = None);
        if self.wdf.k.faults.has(Fault::Media) && self.wdf.k.rng.coin() {
            // A latent error damages one metadata slot (never the only good one).
            let tag = identity_tag(&self.identity);
            let pages =
                HEADER_STORE_PAGES + 2 * self.geometry.region_count().div_ceil(REGIONS_PER_PAGE);
            let pick = self.wdf.k.rng.below(pages);
            let at = self.wdf.k.rng.below(META_PAGE_SIZE_BYTES as u64) as usize;
            self.store.corrupt_stale_slot(pick, tag, at);
        }
        // A reboot takes a while: the filter's clock starts late.
        let downtime = self.wdf.k.rng.range(2_000_000_000, 60_000_000_000);
        self.k().sched.after(downtime, Ev::PowerOn);
    }

    fn shutdown(&mut self) {
        let Phase::Shutdown { step } = self.phase else {
            return;
        };
        match step {
            0 => {
                let mut cx = Ctx {
                    wdf: &mut self.wdf,
                    filter: &mut self.filter,
                    link: &mut self.link,
                };
                self.service.detach(&mut cx);
                if let Some(ext) = self.ext.as_mut() {
                    ext.detach(&mut self.wdf, &mut self.filter);
                }
                self.shutdown_flush = Some(self.issue(Request {
                    kind: OpKind::Flush,
                    sector: 0,
                    count: 0,
                }));
            }
            1 => self.io_manager_irp(IRP_MJ_DEVICE_CONTROL, 0, IOCTL_VOLUME_OFFLINE),
            2 => self.io_manager_irp(IRP_MJ_POWER, IRP_MN_SET_POWER, 4),
            3 => self.io_manager_irp(IRP_MJ_PNP, IRP_MN_REMOVE_DEVICE, 0),
            _ => {
                self.service.vanish();
                self.phase = Phase::Done;
            }
        }
    }

    fn check_leaks(&mut self) {
        // What is still in flight once everything is shut down: only the service's
        // own IOCTLs may be, answered by nobody (its process exited).
        self.wdf.k.sched.clear();
        let live = self.wdf.k.irps.live_ids();
        let leaked: Vec<(IrpId, Origin, u8)> = live
            .iter()
            .filter_map(|&id| {
                self.wdf
                    .k
                    .irps
                    .get(id)
                    .map(|i| (id, i.origin, i.stack_count))
            })
            .filter(|&(_, _, stack)| stack != Layer::Control.stack_size())
            .collect();
        if let Some((id, origin, _)) = leaked.first() {
            let n = leaked.len();
            self.k().v.fail(
                Rule::Leak,
                format!("{n} IRPs never freed, e.g. {id:?} ({origin:?})"),
            );
        }
    }

    // ----- metadata commits ----------------------------------------------------------

    fn commit_work(&mut self, commit: u64) {
        if self.filter.is_none() {
            return;
        }
        if self.faults_on(Fault::Media) && self.wdf.k.rng.chance(self.meta_ppm) {
            let after = self.wdf.k.rng.below(6);
            self.store.store.fail_after(after);
            // The commit may fail: so may the flushes and FUA writes waiting on it.
            self.wdf.k.oracle.excuse_durability(Status::IO_DEVICE_ERROR);
            self.wdf.k.note_delay_fault();
        }
        // Aim at the first commit after a reboot, when both slots of a page are valid:
        // the slot it must write is the older one, and a torn write there must lose
        // nothing.
        let aimed = self.commits_since_boot == 0
            && self.boots > 1
            && self
                .store
                .has_page_with_both_slots(identity_tag(&self.identity))
            && self.wdf.k.rng.below(3) == 0;
        self.commits_since_boot += 1;
        if self.faults_on(Fault::PowerLoss)
            && (aimed || self.wdf.k.rng.chance(self.commit_crash_ppm))
        {
            // Power fails in the middle of this commit: after its first page write and
            // before its flush completes (a commit is its dirty pages, the header, a
            // flush; small volumes have one bitmap page).
            let after = self.wdf.k.rng.range(1, 2);
            if crate::oracle::trace_enabled() {
                eprintln!("commit {commit}: power fails after {after} store operations (unflushed now {})", self.store.store.unflushed_count());
            }
            self.store.die_after(after);
        }
        let flushes = self.store.store.counts().flushes;
        if let Some(f) = self.filter.as_mut() {
            f.on_commit_work(&mut self.wdf, commit, &mut self.store);
        }
        self.store.store.clear_faults();
        self.wdf.collect();
        if !self.store.is_dead() {
            // A commit with little to write may end before the armed failure point.
            self.store.disarm();
        }
        if self.store.is_dead() {
            if crate::oracle::trace_enabled() {
                eprintln!(
                    "power lost during commit {commit} at t={}",
                    self.wdf.k.now_ns()
                );
            }
            self.power_loss();
            return;
        }
        if self.store.store.counts().flushes != flushes {
            // Only a commit that flushed can change what is durable.
            self.check_commit();
        }
    }

    /// What the metadata would load right now if power failed: every mark in it must
    /// sit over durable data, and no mark may have reverted. Read straight from the
    /// store's durable image, slot by slot, as `Metadata::open` does (every valid slot's
    /// bits are ORed in), so the check costs two slot decodes per bitmap page.
    fn check_commit(&mut self) {
        let tag = identity_tag(&self.identity);
        let word_count = self.geometry.region_count().div_ceil(64) as usize;
        let mut words = vec![0u64; word_count];
        let pages = self.geometry.region_count().div_ceil(REGIONS_PER_PAGE);
        for page in 0..pages {
            let mut valid = false;
            for b in 0..2 {
                let index = HEADER_STORE_PAGES + 2 * page + b;
                if let Ok(slot) = decode_page_slot(self.store.store.durable_page(index), page, tag)
                {
                    valid = true;
                    let first = page as usize * WORDS_PER_PAGE;
                    for (j, w) in slot.words().enumerate() {
                        if let Some(out) = words.get_mut(first + j) {
                            *out |= w;
                        }
                    }
                }
            }
            if !valid {
                self.k().v.fail(
                    Rule::DurableMark,
                    format!("bitmap page {page} has no valid durable slot after a commit"),
                );
                return;
            }
        }
        let start = self.partition_start;
        let k = &mut self.wdf.k;
        k.oracle
            .check_commit(&words, &k.lower.disk, start, &mut k.v);
    }

    // ----- the link and the service --------------------------------------------------

    fn link_state(&mut self) {
        if !matches!(self.phase, Phase::Run) {
            return;
        }
        let delay = if !self.link.is_up() {
            self.link.come_up();
            self.wdf.k.rng.range(100_000_000, 2_000_000_000)
        } else if self.wdf.k.faults.has(Fault::Outage) && self.wdf.k.rng.below(6) == 0 {
            self.link.go_down();
            let d = self.hydrator_deadline_ns;
            self.wdf.k.rng.range(d * 3 / 2, d * 3)
        } else if self.wdf.k.faults.has(Fault::LinkDisconnect) {
            self.link.go_down();
            self.wdf.k.rng.range(5_000_000, 300_000_000)
        } else {
            self.wdf.k.rng.range(100_000_000, 2_000_000_000)
        };
        self.k().sched.after(delay, Ev::LinkState);
    }

    // ----- the file system -----------------------------------------------------------

    fn fs_tick(&mut self) {
        if !self.mounted {
            return;
        }
        if self.hung() {
            return;
        }
        match self.phase {
            Phase::Run => {}
            Phase::Verify { .. } => {
                self.verify_reads();
                return;
            }
            _ => return,
        }
        let depth = u64::from(self.workload.config.depth_max);
        // Bounded: at most `depth` requests per tick.
        for _ in 0..depth {
            if self.ops_issued >= self.ops_target || self.wdf.k.oracle.in_flight() as u64 >= depth {
                break;
            }
            let req = self.workload.next(&mut self.wdf.k.rng);
            let ranged = matches!(req.kind, OpKind::Read | OpKind::Write { .. } | OpKind::Trim);
            if ranged && !self.wdf.k.oracle.may_issue(req.sector, req.count) {
                break;
            }
            self.ops_issued += 1;
            self.issue(req);
            if self.faults_on(Fault::PowerLoss) && self.wdf.k.rng.chance(self.crash_per_op_ppm) {
                let delay = self.wdf.k.rng.range(0, 5_000_000);
                self.k().sched.after(delay, Ev::PowerLoss);
            }
            if self.faults_on(Fault::ServiceKill) && self.wdf.k.rng.chance(self.kill_per_op_ppm) {
                let delay = self.wdf.k.rng.range(0, 5_000_000);
                self.k().sched.after(delay, Ev::ServiceKill);
            }
            if self.wdf.k.v.failed() || !self.mounted || self.wdf.k.rng.coin() {
                break;
            }
        }
        // With its queue full the file system waits for a completion (`fs_done`);
        // else it comes back after a think time (also after a refused overlap).
        if self.ops_issued < self.ops_target && (self.wdf.k.oracle.in_flight() as u64) < depth {
            self.schedule_fs_tick();
        }
    }

    /// Liveness: nothing the file system sent may hang far past the hold deadline.
    fn hung(&mut self) -> bool {
        let now = self.wdf.k.now_ns();
        let limit = self.hold_deadline_ns + 60_000_000_000;
        if let Some(&(irp, at)) = self
            .fs_irps
            .iter()
            .flatten()
            .find(|&&(_, at)| now - at > limit)
        {
            self.k().v.fail(
                Rule::Liveness,
                format!("IRP {irp:?} issued at {at}ns never completed"),
            );
            return true;
        }
        false
    }

    /// Wakes the file system after a think time, unless a wake-up is already coming.
    fn schedule_fs_tick(&mut self) {
        if !self.fs_tick_pending {
            self.fs_tick_pending = true;
            let think = self.wdf.k.rng.latency(self.workload.config.think_ns, 10);
            self.k().sched.after(think, Ev::FsTick);
        }
    }

    fn fs_cancel(&mut self) {
        if !self.faults_on(Fault::Cancel) {
            return;
        }
        let live: Vec<(u32, IrpId)> = self
            .fs_irps
            .iter()
            .enumerate()
            .filter_map(|(op, f)| f.map(|(irp, _)| (op as u32, irp)))
            .collect();
        if !live.is_empty() {
            let (op, irp) = live[self.wdf.k.rng.pick(live.len())];
            self.k().oracle.excuse(op, Status::CANCELLED);
            self.k().cancel(irp);
        }
        let delay = self.wdf.k.rng.range(1_000_000, 50_000_000);
        self.k().sched.after(delay, Ev::FsCancel);
    }

    /// Sends one file-system request down the stack; returns its slot.
    fn issue(&mut self, req: Request) -> u32 {
        let write_id = if matches!(req.kind, OpKind::Write { .. }) {
            self.next_write_id += 1;
            self.next_write_id
        } else {
            0
        };
        let k = &mut self.wdf.k;
        let now = k.now_ns();
        let slot = k
            .oracle
            .start(req.kind, req.sector, req.count, write_id, now);
        let id = k.alloc_irp(Layer::Fs, Layer::Filter.stack_size());
        let (major, flags, ioctl) = match req.kind {
            OpKind::Read | OpKind::Bad => (IRP_MJ_READ, 0, 0),
            OpKind::Write { fua } => (IRP_MJ_WRITE, if fua { SL_WRITE_THROUGH } else { 0 }, 0),
            OpKind::Flush => (IRP_MJ_FLUSH_BUFFERS, 0, 0),
            OpKind::Trim => (
                IRP_MJ_DEVICE_CONTROL,
                0,
                IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES,
            ),
            OpKind::GetLength => (IRP_MJ_DEVICE_CONTROL, 0, IOCTL_DISK_GET_LENGTH_INFO),
        };
        if let Some(irp) = k.irps.get_mut(id) {
            irp.origin = Origin::App {
                op: slot,
                first_sector: req.sector,
            };
            match req.kind {
                OpKind::Read | OpKind::Bad => {
                    irp.mdl = Mdl::Own;
                    // Never a valid read result: a read "served" without data shows.
                    irp.buffer.resize(req.count as usize, garbage_tag(u64::MAX));
                }
                OpKind::Write { .. } => {
                    irp.mdl = Mdl::Own;
                    irp.buffer
                        .extend((req.sector..req.sector + req.count).map(|s| app_tag(write_id, s)));
                }
                OpKind::Trim => encode_trim(&mut irp.input, req.sector * 512, req.count * 512),
                OpKind::GetLength => irp.output.resize(8, 0),
                OpKind::Flush => {}
            }
        }
        if let Some(next) = k.next_loc(Layer::Fs, id) {
            next.major = major;
            next.flags = flags;
            next.ioctl = ioctl;
            next.offset = req.sector * 512;
            next.length = req.count * 512;
        }
        k.set_completion(Layer::Fs, id, Routine::Fs { op: slot });
        let now = k.now_ns();
        if self.fs_irps.len() <= slot as usize {
            self.fs_irps.resize(slot as usize + 1, None);
        }
        self.fs_irps[slot as usize] = Some((id, now));
        wdf::dispatch(
            &mut self.wdf,
            &mut self.filter,
            Layer::Fs,
            id,
            Layer::Filter,
        );
        slot
    }

    fn fs_done(&mut self, op: u32, irp: IrpId) {
        let k = &mut self.wdf.k;
        let Some(i) = k.irps.get(irp) else { return };
        let (status, info) = (i.status, i.information);
        let kind = k.oracle.op(op).kind;
        if kind == OpKind::GetLength && status.is_success() {
            let len = u64::from_le_bytes(i.output[..8].try_into().unwrap_or([0; 8]));
            if len != self.volume_sectors * 512 || info != 8 {
                k.v.fail(
                    Rule::Status,
                    format!("IOCTL_DISK_GET_LENGTH_INFO said {len} bytes ({info} returned)"),
                );
            }
        }
        let data: &[u64] = if kind == OpKind::Read && status.is_success() {
            &i.buffer
        } else {
            &[]
        };
        if let (Some(ext), Some(Some((_, issued_ns)))) =
            (self.ext.as_mut(), self.fs_irps.get(op as usize))
        {
            let o = k.oracle.op(op);
            ext.note_fs_done(
                o.kind,
                o.held,
                *issued_ns,
                k.now_ns(),
                status.is_success(),
                matches!(self.phase, Phase::Run),
            );
        }
        let now = k.now_ns();
        k.oracle.finish(op, status, info, data, now, &mut k.v);
        k.free_irp(Layer::Fs, irp);
        if let Some(slot) = self.fs_irps.get_mut(op as usize) {
            *slot = None;
        }
        self.ops_done += 1;
        if matches!(self.phase, Phase::Run) && self.ops_issued < self.ops_target {
            self.schedule_fs_tick();
        }
        if self.shutdown_flush == Some(op) {
            self.shutdown_flush = None;
            if !status.is_success() {
                self.k().v.fail(
                    Rule::Status,
                    format!("the shutdown flush failed with {status:?}"),
                );
                return;
            }
            self.phase = Phase::Shutdown { step: 1 };
            self.shutdown();
        } else if matches!(self.phase, Phase::Verify { .. }) {
            if !status.is_success() {
                self.k().v.fail(
                    Rule::Status,
                    format!(
                        "a verification read failed with {status:?} after everything was restored"
                    ),
                );
                return;
            }
            self.verify_reads();
        }
    }

    /// Reads the whole volume back, a few requests at a time.
    fn verify_reads(&mut self) {
        const CHUNK: u64 = 256;
        const DEPTH: usize = 8;
        while let Phase::Verify { next_sector } = self.phase {
            if next_sector >= self.volume_sectors || self.wdf.k.oracle.in_flight() >= DEPTH {
                return;
            }
            let count = CHUNK.min(self.volume_sectors - next_sector);
            self.phase = Phase::Verify {
                next_sector: next_sector + count,
            };
            self.issue(Request {
                kind: OpKind::Read,
                sector: next_sector,
                count,
            });
        }
    }
}

/// A one-range trim in `DEVICE_MANAGE_DATA_SET_ATTRIBUTES` layout (see the driver's
/// `dsm` module): 28-byte header, ranges at offset 32.
fn encode_trim(buf: &mut Vec<u8>, offset: u64, len: u64) {
    buf.clear();
    buf.resize(48, 0);
    buf[0..4].copy_from_slice(&28u32.to_le_bytes());
    buf[4..8].copy_from_slice(&rehydrate_driver::dsm::DSM_ACTION_TRIM.to_le_bytes());
    buf[20..24].copy_from_slice(&32u32.to_le_bytes());
    buf[24..28].copy_from_slice(&16u32.to_le_bytes());
    buf[32..40].copy_from_slice(&offset.to_le_bytes());
    buf[40..48].copy_from_slice(&len.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_buffer_decodes_as_one_range() {
        let mut b = Vec::new();
        encode_trim(&mut b, 4096, 8192);
        let d = rehydrate_driver::dsm::decode(&b).unwrap();
        assert_eq!(d.range_count(), 1);
        assert_eq!(d.range(0), Some((4096, 8192)));
    }
}
