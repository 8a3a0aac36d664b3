//! One run: what to run ([`RunConfig`]), what it did ([`Outcome`]), and the entry points
//! ([`run`], [`run_demo`]). The run itself is a world (`world.rs`) of machines
//! (`machine/`): a machine with the simulated stack, the filter, the service and its
//! file system driving a workload, a link to the backup, faults, and the oracle
//! watching.
//!
//! # Phases (of each machine)
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
//! upcalls (`crate::kernel::Upcall`: completions that reach the filter, the file system
//! or the service) after each event, so no component is ever re-entered from inside a
//! call it made.

use rehydrate_driver::capture::CaptureMode;
use rehydrate_driver::mutants::Mutant;

use crate::data::Backup;
use crate::demo::realtime::LinkServer;
use crate::faults::Faults;
use crate::oracle::Expect;
use crate::verifier::{Rule, Violation};
use crate::workload::WorkloadConfig;
use crate::world::World;

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
    /// Protect the volume: capture every write into a journal (sync or async mode),
    /// checked by the journal's rules (`journal.rs`).
    pub capture: Option<CaptureMode>,
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
            capture: None,
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
        if let Some(mode) = self.capture {
            cmd.push_str(match mode {
                CaptureMode::Sync => " --journal sync",
                CaptureMode::Async => " --journal async",
            });
        }
        cmd
    }
}

impl Outcome {
    /// `ok`, or the violation and the command that replays it.
    pub fn describe(&self, config: &RunConfig) -> String {
        match &self.violation {
            Some(v) => format!("{v}\n    replay: {}", config.replay_command()),
            None => "ok".to_string(),
        }
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
    /// What the journal checked, in a protected run.
    pub journal: Option<crate::journal::JournalStats>,
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
        let m = world.machine(0);
        let start = m.partition_start as usize;
        let disk = &m.wdf.k.lower.disk;
        let volume_tags = (0..m.volume_sectors as usize)
            .map(|s| disk.live(start + s))
            .collect();
        let oracle = &m.wdf.k.oracle;
        let expected = (0..m.volume_sectors).map(|s| oracle.expect(s)).collect();
        DemoRun {
            outcome,
            volume_tags,
            expected,
            server: world.take_server(),
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
pub(crate) const FILTER_TICK_NS: u64 = 50_000_000;

static MUTANT_LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Holds the mutant switch for a run.
enum Guard {
    Read(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
    Write(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
}

/// Keeps mutated runs out while held: for tests that drive a `World` without [`run`].
#[cfg(test)]
pub(crate) fn hold_unmutated() -> std::sync::RwLockReadGuard<'static, ()> {
    MUTANT_LOCK.read().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` with `mutant` selected, holding the process's mutant switch as [`run`]
/// does (the overlay sweep's runs share it with the stack's).
pub(crate) fn with_mutant<T>(mutant: Option<Mutant>, f: impl FnOnce() -> T) -> T {
    let _guard = if mutant.is_some() {
        Guard::Write(MUTANT_LOCK.write().unwrap_or_else(|e| e.into_inner()))
    } else {
        Guard::Read(MUTANT_LOCK.read().unwrap_or_else(|e| e.into_inner()))
    };
    rehydrate_driver::mutants::set(mutant);
    let out = f();
    rehydrate_driver::mutants::set(None);
    out
}

/// Runs one seed to its end (or its first failure). A panic in the driver or the
/// service is reported as a failure of the run, not of the simulator.
pub fn run(config: &RunConfig) -> Outcome {
    // The driver's mutant switch is one per process: a mutated run has it to itself,
    // unmutated runs may share it (it stays `None` while any of them holds the lock).
    with_mutant(config.mutant, || run_switched(config))
}

/// [`run`] for a caller that holds the mutant switch set to `config.mutant` (see
/// [`with_mutant`]): the sweep's workers, which share one setting.
pub(crate) fn run_switched(config: &RunConfig) -> Outcome {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut world = World::new(config);
        world.run();
        world.outcome(config.seed)
    }));
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
