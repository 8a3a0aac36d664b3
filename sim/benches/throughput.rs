//! Throughput of the simulation (not a test): IRPs per second through the eight-layer
//! stack with the verifier and the oracle on, on one thread (what one world costs) and
//! on every core (what a sweep gets: seeds are independent worlds).
//!
//! `cargo bench -p rehydrate-sim` (release build). Two workloads:
//! * small I/O (4 KiB requests, the usual IOPS measure): how fast IRPs move;
//! * the default file-system mix (512 B to 1 MiB, flushes, trims, faults): what a
//!   sweep costs.

use std::time::Instant;

mod common;

use rehydrate_sim::workload::WorkloadConfig;
use rehydrate_sim::{sweep_on, Faults, RunConfig};

fn measure(name: &str, seeds: u64, ops: u64, faults: Faults, workload: WorkloadConfig) {
    let template = RunConfig {
        workload,
        ..RunConfig::new(0, ops, faults)
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    for jobs in [1, cores] {
        measure_on(name, jobs, seeds, &template);
    }
}

fn measure_on(name: &str, jobs: usize, seeds: u64, template: &RunConfig) {
    let start = Instant::now();
    let report = sweep_on(jobs, 0..seeds, template, |_, _| {});
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name} (threads={jobs}): seeds={seeds} ops={} irps={} dispatches={} violations={} secs={secs:.2} irps_per_sec={:.0} dispatches_per_sec={:.0}",
        report.ops,
        report.irps,
        report.dispatches,
        report.failures.len(),
        report.irps as f64 / secs,
        report.dispatches as f64 / secs,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter we ignore.
    let small = common::small_io();
    measure("small-io", 50, 20_000, Faults::NONE, small);
    measure(
        "fs-mix-all-faults",
        100,
        10_000,
        Faults::all(),
        WorkloadConfig::default(),
    );
}
