//! A machine drawn from a seed (its volume, device, link, service and filter settings),
//! or built to the demo's explicit shape.

use rehydrate_driver::abi::Attach;
use rehydrate_driver::engine::EngineConfig;
use rehydrate_driver::filter::FilterConfig;
use rehydrate_driver::meta::{Identity, Metadata};
use rehydrate_driver::Geometry;
use rehydrate_service::hydrator::HydratorConfig;

use super::{Machine, Phase};
use crate::data::Backup;
use crate::demo::realtime::LinkServer;
use crate::device::Disk;
use crate::faults::{Fault, Faults};
use crate::kernel::Kernel;
use crate::link::{Link, LinkConfig};
use crate::meta::MetaDev;
use crate::oracle::Oracle;
use crate::rng::Rng;
use crate::service::Service;
use crate::sim::{DemoMachine, RunConfig, FILTER_TICK_NS};
use crate::stack::Lower;
use crate::wdf::SimWdf;
use crate::workload::{Workload, WorkloadConfig};

/// A machine as drawn, with the link that joins it to the backup server.
pub(crate) struct Drawn {
    /// The machine.
    pub(crate) machine: Machine,
    /// Its link to the backup server (which serves the run's backup).
    pub(crate) link: Link,
}

/// How often each machine-level fault strikes, per million chances.
#[derive(Clone, Copy, Debug, Default)]
struct FaultRates {
    meta_ppm: u32,
    commit_crash_ppm: u32,
    crash_per_op_ppm: u32,
    kill_per_op_ppm: u32,
}

/// What building a machine decides; the rest starts empty.
struct Parts {
    kernel: Kernel,
    service: Service,
    store: MetaDev,
    identity: Identity,
    attach: Attach,
    geometry: Geometry,
    filter_config: FilterConfig,
    workload: Workload,
    ops_target: u64,
    volume_sectors: u64,
    partition_start: u64,
    rates: FaultRates,
    hold_deadline_ns: u64,
    hydrator_deadline_ns: u64,
    shape: String,
    ext: Option<LinkServer>,
}

impl Machine {
    fn assemble(p: Parts) -> Machine {
        Machine {
            wdf: SimWdf::new(p.kernel),
            filter: None,
            service: p.service,
            store: p.store,
            durable_marks: Default::default(),
            identity: p.identity,
            attach: p.attach,
            geometry: p.geometry,
            filter_config: p.filter_config,
            workload: p.workload,
            fs_irps: Vec::new(),
            next_write_id: 0,
            ops_target: p.ops_target,
            ops_issued: 0,
            ops_done: 0,
            phase: Phase::Run,
            boot_step: 0,
            mounted: false,
            boots: 0,
            commits_since_boot: 0,
            volume_sectors: p.volume_sectors,
            partition_start: p.partition_start,
            meta_ppm: p.rates.meta_ppm,
            commit_crash_ppm: p.rates.commit_crash_ppm,
            crash_per_op_ppm: p.rates.crash_per_op_ppm,
            kill_per_op_ppm: p.rates.kill_per_op_ppm,
            hold_deadline_ns: p.hold_deadline_ns,
            hydrator_deadline_ns: p.hydrator_deadline_ns,
            shutdown_flush: None,
            fs_tick_pending: false,
            shape: p.shape,
            ext: p.ext,
            protect: None,
        }
    }

    /// The machine of run `config`, drawn from its seed.
    pub(crate) fn draw(config: &RunConfig) -> Drawn {
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
            mode: rehydrate_driver::abi::RestoreMode::InPlace,
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
        let machine = Machine::assemble(Parts {
            kernel,
            service,
            store,
            identity,
            attach,
            geometry,
            filter_config,
            workload,
            ops_target: config.ops,
            volume_sectors,
            partition_start,
            rates: FaultRates {
                meta_ppm: 20_000,
                // About two power losses inside a commit per run (a commit per ~10
                // requests).
                commit_crash_ppm: (20_000_000 / ops).min(250_000) as u32,
                // About two power losses and two service kills per run.
                crash_per_op_ppm: (2_000_000 / ops).min(200_000) as u32,
                kill_per_op_ppm: (2_000_000 / ops).min(200_000) as u32,
            },
            hold_deadline_ns,
            hydrator_deadline_ns,
            shape,
            ext: None,
        });
        let mut machine = machine;
        let protect = config
            .capture
            .map(|mode| super::Protect::draw(mode, backup, volume_bytes, config.seed));
        match protect {
            Some(Ok(p)) => machine.protect = Some(p),
            Some(Err(v)) => machine.k().v.fail(
                crate::verifier::Rule::Journal,
                format!("journal:{}: {}", v.rule, v.detail),
            ),
            None => {}
        }
        Drawn { machine, link }
    }

    /// The demo's machine: a 512-byte-sector disk with no faults, a fast device, the
    /// given volume and backup, and the service outside (`server`).
    pub(crate) fn demo(m: &DemoMachine, mut server: LinkServer) -> Drawn {
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
            mode: rehydrate_driver::abi::RestoreMode::InPlace,
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
        let machine = Machine::assemble(Parts {
            kernel,
            service,
            store,
            identity,
            attach,
            geometry,
            filter_config,
            workload,
            ops_target: m.ops_max,
            volume_sectors,
            partition_start,
            rates: FaultRates::default(),
            hold_deadline_ns,
            hydrator_deadline_ns: 30_000_000_000,
            shape,
            ext: Some({
                // The machine is built (the oracle's per-sector state takes a while on
                // a large volume): time starts now, at power-on.
                server.start_clock();
                server
            }),
        });
        Drawn { machine, link }
    }
}
