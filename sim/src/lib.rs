//! A deterministic simulation of the Windows storage stack around the Rehydrate filter.
//!
//! `file system → rehydrate filter → volume → partition → disk class → port → bus →
//! device`, each a device object with a dispatch routine, over IRPs with stack
//! locations, with Driver Verifier's I/O rules checked on every call. The filter is the
//! driver crate's own [`rehydrate_driver::filter::Filter`] running on a simulated WDF
//! ([`wdf::SimWdf`]); the service is the real hydrator from `rehydrate-service`. One
//! seeded RNG drives every choice: scheduling, latencies and faults (power loss with a
//! volatile write cache and torn writes, media errors, a slow, lossy, corrupting,
//! disconnecting backup link, a killed service, cancellation). An oracle checks every
//! read, every state after reboot and the final disk against DESIGN.md section 3.
//!
//! With [`RunConfig::capture`] (`--journal sync|async`) the volume is protected: the
//! filter captures every write, and a journaling service behind it is checked by the
//! journal's rules ([`journal`]).
//!
//! A run is [`sim::run`]; a sweep over seeds is [`sweep`]. The same seed gives the same
//! trace hash, always.

pub mod cli;
pub mod content;
pub mod data;
pub mod demo;
pub mod device;
pub mod dr;
pub mod faults;
pub mod irp;
pub mod journal;
pub mod journal_store;
pub mod judge;
pub mod kernel;
pub mod link;
mod machine;
pub mod meta;
pub mod oracle;
pub mod overlay;
pub mod rng;
pub mod sched;
pub mod service;
pub mod sim;
pub mod stack;
pub mod trace;
pub mod verifier;
pub mod wdf;
pub mod workload;
mod world;

#[cfg(test)]
mod refused_tests;
#[cfg(test)]
mod testing;

pub use faults::{Fault, Faults};
pub use sim::{run, Outcome, RunConfig};

/// What a sweep found.
#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    /// Seeds run.
    pub seeds: u64,
    /// Operations completed, over all seeds.
    pub ops: u64,
    /// IRPs allocated, over all seeds.
    pub irps: u64,
    /// `IoCallDriver` calls, over all seeds.
    pub dispatches: u64,
    /// Failing runs, with their configuration.
    pub failures: Vec<(RunConfig, Outcome)>,
    /// Wall-clock seconds.
    pub wall_secs: f64,
    /// What the journal checked, over the protected runs.
    pub journal: journal::JournalStats,
}

impl SweepReport {
    /// IRPs per wall-clock second.
    pub fn irps_per_sec(&self) -> f64 {
        if self.wall_secs > 0.0 {
            self.irps as f64 / self.wall_secs
        } else {
            0.0
        }
    }
}

/// Runs every seed of `seeds` with `template`'s settings on every core; `each` sees
/// every outcome in seed order (for progress output).
pub fn sweep(
    seeds: std::ops::Range<u64>,
    template: &RunConfig,
    each: impl FnMut(&RunConfig, &Outcome),
) -> SweepReport {
    let jobs = std::thread::available_parallelism().map_or(1, usize::from);
    sweep_on(jobs, seeds, template, each)
}

/// [`sweep`] on `jobs` threads. Seeds are independent worlds, so the report, and the
/// order in which `each` sees the outcomes, are the same for any number of threads;
/// only the wall time differs. Every thread runs with the template's mutant (the
/// driver's switch is one per process, held for the whole sweep).
pub fn sweep_on(
    jobs: usize,
    seeds: std::ops::Range<u64>,
    template: &RunConfig,
    mut each: impl FnMut(&RunConfig, &Outcome),
) -> SweepReport {
    let start = std::time::Instant::now();
    let mut report = SweepReport::default();
    let mut record = |config: RunConfig, outcome: Outcome| {
        report.seeds += 1;
        report.ops += outcome.ops_done;
        report.irps += outcome.irps;
        report.dispatches += outcome.dispatches;
        if let Some(j) = outcome.journal {
            report.journal.add(&j);
        }
        each(&config, &outcome);
        if outcome.violation.is_some() {
            report.failures.push((config, outcome));
        }
    };
    let config_of = |seed| RunConfig {
        seed,
        ..template.clone()
    };
    // A cross-checked oracle is switched on per thread: such a sweep stays on this one.
    let jobs = if oracle::reference_on_here() {
        1
    } else {
        jobs.max(1)
    };
    sim::with_mutant(template.mutant, || {
        if jobs == 1 {
            for seed in seeds.clone() {
                let config = config_of(seed);
                let outcome = sim::run_switched(&config);
                record(config, outcome);
            }
            return;
        }
        let next_seed = std::sync::atomic::AtomicU64::new(seeds.start);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            for _ in 0..jobs {
                let done_tx = done_tx.clone();
                let (next_seed, config_of, end) = (&next_seed, &config_of, seeds.end);
                scope.spawn(move || loop {
                    let seed = next_seed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let config = config_of(seed);
                    let outcome = sim::run_switched(&config);
                    if done_tx.send((config, outcome)).is_err() {
                        break;
                    }
                });
            }
            drop(done_tx);
            // Outcomes arrive in any order and are reported in seed order: what waits
            // here is what finished ahead of the oldest seed still running (small:
            // an outcome is a summary, not a world).
            let mut waiting = std::collections::BTreeMap::new();
            let mut due = seeds.start;
            for (config, outcome) in done_rx {
                waiting.insert(config.seed, (config, outcome));
                while let Some((config, outcome)) = waiting.remove(&due) {
                    record(config, outcome);
                    due += 1;
                }
            }
            debug_assert!(waiting.is_empty() && due == seeds.end.max(seeds.start));
        });
    });
    report.wall_secs = start.elapsed().as_secs_f64();
    report
}
