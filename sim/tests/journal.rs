//! Protected runs (technique T3): the filter captures every write and flush from its
//! real completions, the simulated service journals the records through kills and
//! power losses, and the journal's rules (`src/journal.rs`) hold in both modes with
//! every fault; each write-capture mutant is caught by a seed the real driver passes.
//! Half the runs keep the journal in the backup server's segment files, where every
//! loss tears an append that must not be applied on reopening, and every listed point
//! is restored from those files and compared with the volume at its offer.

use rehydrate_driver::capture::CaptureMode;
use rehydrate_driver::mutants::Mutant;
use rehydrate_sim::journal::JournalStats;
use rehydrate_sim::verifier::Rule;
use rehydrate_sim::{run, Faults, RunConfig};

/// Requests per seed.
const OPS: u64 = 150;
/// Seeds per mode in the sweeps.
const SEEDS: u64 = 40;

fn config(seed: u64, mode: CaptureMode, mutant: Option<Mutant>) -> RunConfig {
    RunConfig {
        mutant,
        capture: Some(mode),
        ..RunConfig::new(seed, OPS, Faults::all())
    }
}

/// Sweeps `seeds` in `mode`; returns the failures and the journal's figures.
fn sweep(mode: CaptureMode, seeds: std::ops::Range<u64>) -> (Vec<String>, JournalStats) {
    let mut failures = Vec::new();
    let mut stats = JournalStats::default();
    for seed in seeds {
        let c = config(seed, mode, None);
        let o = run(&c);
        if o.violation.is_some() {
            failures.push(format!("seed {seed}: {}", o.describe(&c)));
        }
        stats.add(&o.journal.expect("a protected run reports its journal"));
    }
    (failures, stats)
}

#[test]
fn async_journaling_with_every_fault_finds_no_violation_and_checks_points_after_gaps() {
    let (failures, stats) = sweep(CaptureMode::Async, 0..SEEDS);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The sweep exercised what the rules are about.
    assert!(stats.points_checked >= SEEDS, "{stats:?}");
    assert!(stats.gaps > 0, "small buffers open gaps: {stats:?}");
    assert!(
        stats.losses > 0,
        "kills and power losses lose received records: {stats:?}"
    );
    assert!(
        stats.epochs > SEEDS,
        "power losses start new epochs: {stats:?}"
    );
    assert!(
        stats.torn_appends > 0,
        "kills tear appends on disk: {stats:?}"
    );
    assert!(
        stats.points_restored >= SEEDS / 4,
        "listed points are restored from the journal on disk: {stats:?}"
    );
}

#[test]
fn sync_journaling_with_every_fault_finds_no_violation_and_answers_only_durable_writes() {
    let (failures, stats) = sweep(CaptureMode::Sync, 1_000..1_000 + SEEDS);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(stats.points_checked >= SEEDS, "{stats:?}");
    assert!(stats.sync_answers > 10 * SEEDS, "{stats:?}");
    assert!(stats.points_restored >= SEEDS / 4, "{stats:?}");
}

#[test]
fn a_protected_seed_replays_exactly() {
    for mode in [CaptureMode::Async, CaptureMode::Sync] {
        let a = run(&config(7, mode, None));
        let b = run(&config(7, mode, None));
        assert_eq!(a, b, "{mode:?} is not deterministic");
    }
}

/// Runs `mutant` in `mode` over seeds until one fails; the failure must come from the
/// journal's rules and the real driver must pass that seed.
fn caught_within(mutant: Mutant, mode: CaptureMode, bound: u64) -> String {
    for seed in 0..bound {
        let c = config(seed, mode, Some(mutant));
        let o = run(&c);
        let Some(v) = &o.violation else { continue };
        assert_eq!(v.rule, Rule::Journal, "{}: {v}", mutant.name());
        let clean = config(seed, mode, None);
        let real = run(&clean);
        assert!(
            real.violation.is_none(),
            "{}: seed {seed} also fails without the mutant: {}",
            mutant.name(),
            real.describe(&clean)
        );
        return v.detail.clone();
    }
    panic!(
        "mutant {} was not caught within {bound} seeds in {mode:?} mode",
        mutant.name()
    );
}

#[test]
fn mutant_sequence_at_dispatch_is_caught_in_both_modes() {
    for mode in [CaptureMode::Async, CaptureMode::Sync] {
        caught_within(Mutant::SequenceAtDispatch, mode, 16);
    }
}

#[test]
fn mutant_torn_tail_applied_is_caught_in_both_modes() {
    for mode in [CaptureMode::Async, CaptureMode::Sync] {
        let detail = caught_within(Mutant::TornTailApplied, mode, 16);
        assert!(detail.contains("torn-tail"), "{detail}");
    }
}

#[test]
fn mutant_point_inside_unflushed_epoch_is_caught_in_both_modes() {
    for mode in [CaptureMode::Async, CaptureMode::Sync] {
        caught_within(Mutant::PointInsideUnflushedEpoch, mode, 16);
    }
}
