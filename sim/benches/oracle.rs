//! Criterion measures of the simulator (release build): whole seed runs, IRPs per
//! second through the stack with the verifier and the oracle on, and the oracle alone
//! on a history of writes, reads and flushes. `throughput.rs` times whole sweeps.
//!
//! Run: `cargo bench -p rehydrate-sim --bench oracle`.

use std::hint::black_box;

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rehydrate_driver::Status;
use rehydrate_sim::data::{app_tag, Backup};
use rehydrate_sim::oracle::{OpKind, Oracle};
use rehydrate_sim::rng::Rng;
use rehydrate_sim::verifier::Verifier;
use rehydrate_sim::workload::WorkloadConfig;
use rehydrate_sim::{run, Faults, RunConfig};

/// One seed, as a sweep runs it.
fn seed_runs(c: &mut Criterion) {
    let mut group = c.benchmark_group("seed");
    group.sample_size(10);
    let small_io = common::small_io();
    let cases = [
        (
            "fs-mix-all-faults",
            Faults::all(),
            WorkloadConfig::default(),
        ),
        ("small-io-no-faults", Faults::NONE, small_io),
    ];
    for (name, faults, workload) in cases {
        let config = RunConfig {
            workload,
            ..RunConfig::new(7, 5_000, faults)
        };
        let outcome = run(&config);
        assert!(outcome.violation.is_none(), "{:?}", outcome.violation);
        group.throughput(Throughput::Elements(outcome.irps));
        group.bench_function(name, |b| b.iter(|| black_box(run(black_box(&config)))));
    }
    group.finish();
}

/// The oracle alone: 4 KiB writes, each applied, acknowledged and read back, and a
/// flush every sixteen, at random places of a 64 MiB volume.
fn oracle_history(c: &mut Criterion) {
    const SECTORS: u64 = 1 << 17;
    const OPS: u64 = 4_096;
    let backup = Backup::new(1, 4096, 0);
    let mut group = c.benchmark_group("oracle");
    group.throughput(Throughput::Elements(OPS));
    group.bench_function("write-read-flush-64mib", |b| {
        b.iter(|| {
            let mut o = Oracle::new(SECTORS, 8, backup, 1_000_000_000);
            let mut v = Verifier::default();
            let mut rng = Rng::new(3);
            let mut data = Vec::with_capacity(8);
            for id in 1..=OPS {
                let at = rng.below(SECTORS / 8) * 8;
                let w = o.start(OpKind::Write { fua: false }, at, 8, id, 0);
                o.on_device_write(w, at, 8, &mut v);
                o.finish(w, Status::SUCCESS, 4096, &[], 0, &mut v);
                let r = o.start(OpKind::Read, at, 8, 0, 0);
                data.clear();
                data.extend((at..at + 8).map(|s| app_tag(id, s)));
                o.finish(r, Status::SUCCESS, 4096, &data, 0, &mut v);
                if id % 16 == 0 {
                    let f = o.start(OpKind::Flush, 0, 0, 0, 0);
                    o.finish(f, Status::SUCCESS, 0, &[], 0, &mut v);
                }
            }
            assert!(!v.failed());
            black_box(o.runs())
        })
    });
    group.finish();
}

criterion_group!(benches, seed_runs, oracle_history);
criterion_main!(benches);
