//! The simulator's acceptance tests: sweeps of seeds with every fault together, with
//! each fault class alone and with none must find no violation; a seed must replay
//! exactly; and every deliberate bug in the driver must be caught within a bounded
//! number of seeds that the real driver passes.
//!
//! Requests per seed are kept small so the test build runs this in well under a
//! minute; the release benchmark (`benches/throughput.rs`) and `rehydrate-sim sweep`
//! run long ones.

use rehydrate_driver::mutants::Mutant;
use rehydrate_sim::faults::ALL;
use rehydrate_sim::verifier::Rule;
use rehydrate_sim::{run, Fault, Faults, Outcome, RunConfig};

/// Requests per seed in these tests.
const OPS: u64 = 150;
/// Seeds in the all-faults sweep.
const SEEDS: u64 = 100;
/// Seeds per fault class alone (and with none).
const CLASS_SEEDS: u64 = 24;

fn config(seed: u64, faults: Faults, ops: u64, mutant: Option<Mutant>) -> RunConfig {
    RunConfig {
        mutant,
        ..RunConfig::new(seed, ops, faults)
    }
}

fn describe(config: &RunConfig, outcome: &Outcome) -> String {
    match &outcome.violation {
        Some(v) => format!("{v}\n    replay: {}", config.replay_command()),
        None => "ok".to_string(),
    }
}

/// Runs `seeds` with `faults`; returns the failures, described.
fn sweep(faults: Faults, seeds: std::ops::Range<u64>) -> (Vec<String>, u64) {
    let mut failures = Vec::new();
    let mut ops = 0;
    for seed in seeds {
        let c = config(seed, faults, OPS, None);
        let o = run(&c);
        ops += o.ops_done;
        if o.violation.is_some() {
            failures.push(format!("seed {seed}: {}", describe(&c, &o)));
        }
    }
    (failures, ops)
}

#[test]
fn a_hundred_seeds_with_every_fault_find_no_violation() {
    let (failures, ops) = sweep(Faults::all(), 0..SEEDS);
    assert!(
        failures.is_empty(),
        "{} of {SEEDS} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(ops >= SEEDS * OPS, "every seed ran its requests ({ops})");
}

/// Item 7: a fault class alone shows what the others hide (with every fault on, any
/// delay has something to blame).
#[test]
fn item7_each_fault_class_alone_and_none_find_no_violation() {
    let mut failures = Vec::new();
    let classes = ALL
        .iter()
        .map(|&f| Faults::NONE.with(f))
        .chain([Faults::NONE]);
    for (i, faults) in classes.enumerate() {
        // Different seeds per class, so together they cover more shapes.
        let first = 1_000 + i as u64 * CLASS_SEEDS;
        let (f, _) = sweep(faults, first..first + CLASS_SEEDS);
        failures.extend(f.into_iter().map(|f| format!("--faults {faults}: {f}")));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Item 12a's seed: with cancellation alone the restore finishes (a region whose
/// claiming write was cancelled is asked for again).
#[test]
fn item12_seed_200261_with_cancel_restores_everything() {
    let c = config(200_261, Faults::NONE.with(Fault::Cancel), 2_000, None);
    let o = run(&c);
    assert!(o.violation.is_none(), "{}", describe(&c, &o));
}

/// Item 12b's seed: with power loss alone no request fails without a fault to blame.
#[test]
fn item12_seed_401034_with_power_loss_fails_nothing_unexplained() {
    let c = config(401_034, Faults::NONE.with(Fault::PowerLoss), 2_000, None);
    let o = run(&c);
    assert!(o.violation.is_none(), "{}", describe(&c, &o));
}

#[test]
fn a_seed_replays_exactly_and_different_seeds_differ() {
    for seed in [3, 17, 42] {
        let a = run(&config(seed, Faults::all(), OPS, None));
        let b = run(&config(seed, Faults::all(), OPS, None));
        assert_eq!(a, b, "seed {seed} is not deterministic");
    }
    let one = run(&config(1, Faults::all(), OPS, None));
    assert_ne!(one.trace, run(&config(2, Faults::all(), OPS, None)).trace);
}

#[test]
fn a_sweep_on_several_threads_reports_what_one_thread_does_in_seed_order() {
    // With a mutant, so the threads must each run the mutated driver to agree.
    let template = config(
        0,
        Faults::all(),
        OPS,
        Some(Mutant::MarkBeforeLowerWriteCompletes),
    );
    let outcomes = |jobs| {
        let mut seen = Vec::new();
        let report = rehydrate_sim::sweep_on(jobs, 0..12, &template, |c, o| {
            assert_eq!(c.seed, o.seed);
            seen.push(o.clone());
        });
        assert_eq!(report.seeds, 12);
        assert_eq!(
            report.failures.len(),
            seen.iter().filter(|o| o.violation.is_some()).count()
        );
        seen
    };
    let alone = outcomes(1);
    assert_eq!(
        alone.iter().map(|o| o.seed).collect::<Vec<_>>(),
        (0..12).collect::<Vec<_>>()
    );
    assert!(
        alone.iter().any(|o| o.violation.is_some()),
        "the mutant is caught in these seeds, so the comparison covers violations"
    );
    assert_eq!(outcomes(3), alone);
}

/// Runs `mutant` over seeds until one fails; the failure must come from a rule (not a
/// panic) and the real driver must pass that seed.
fn caught_within(mutant: Mutant, faults: Faults, ops: u64, bound: u64) -> u64 {
    for seed in 0..bound {
        let c = config(seed, faults, ops, Some(mutant));
        let o = run(&c);
        let Some(v) = &o.violation else { continue };
        assert_ne!(
            v.rule,
            Rule::Driver,
            "{}: the driver panicked instead of the oracle catching it: {v}",
            mutant.name()
        );
        let clean = config(seed, faults, ops, None);
        let real = run(&clean);
        assert!(
            real.violation.is_none(),
            "{}: seed {seed} also fails without the mutant: {}",
            mutant.name(),
            describe(&clean, &real)
        );
        return seed;
    }
    panic!(
        "mutant {} was not caught within {bound} seeds",
        mutant.name()
    );
}

#[test]
fn mutant_commit_metadata_before_data_flush_is_caught() {
    caught_within(
        Mutant::CommitMetadataBeforeDataFlush,
        Faults::all(),
        OPS,
        16,
    );
}

#[test]
fn mutant_mark_before_lower_write_completes_is_caught() {
    caught_within(
        Mutant::MarkBeforeLowerWriteCompletes,
        Faults::all(),
        OPS,
        16,
    );
}

#[test]
fn mutant_skip_fetch_for_partial_write_is_caught() {
    caught_within(Mutant::SkipFetchForPartialWrite, Faults::all(), OPS, 16);
}

#[test]
fn mutant_accept_stale_hydrate_is_caught() {
    caught_within(Mutant::AcceptStaleHydrate, Faults::all(), OPS, 64);
}

#[test]
fn mutant_lose_mark_on_torn_commit_is_caught() {
    caught_within(Mutant::LoseMarkOnTornCommit, Faults::all(), OPS, 64);
}

#[test]
fn mutant_forward_read_before_restored_is_caught() {
    caught_within(Mutant::ForwardReadBeforeRestored, Faults::all(), OPS, 16);
}

/// Item 6: only the per-request judgement of failures sees this one.
#[test]
fn item6_mutant_fail_waiters_of_whole_range_is_caught() {
    let faults = Faults::NONE.with(Fault::LinkCorrupt);
    caught_within(Mutant::FailWaitersOfWholeRange, faults, 500, 400);
}

#[test]
fn item8_mutant_keep_unwanted_requests_is_caught() {
    caught_within(Mutant::KeepUnwantedRequests, Faults::all(), OPS, 16);
}

#[test]
fn item8_mutant_ask_every_missing_region_is_caught() {
    caught_within(Mutant::AskEveryMissingRegion, Faults::all(), OPS, 16);
}

/// Item 12a: caught as soon as a region is stranded, not an hour of quiet later.
#[test]
fn item12_mutant_no_reask_after_failed_claim_is_caught() {
    let faults = Faults::NONE.with(Fault::Cancel);
    caught_within(Mutant::NoReaskAfterFailedClaim, faults, 300, 200);
}

#[test]
fn item12_mutant_hold_deadline_from_engine_start_is_caught() {
    caught_within(Mutant::HoldDeadlineFromEngineStart, Faults::all(), OPS, 16);
}

#[test]
fn item12_mutant_complete_while_cancelable_is_caught() {
    caught_within(Mutant::CompleteWhileCancelable, Faults::all(), OPS, 64);
}

/// Item 7: only the strict flush model sees this one.
#[test]
fn item7_mutant_flush_covers_later_marks_is_caught() {
    caught_within(Mutant::FlushCoversLaterMarks, Faults::all(), OPS, 16);
}

#[test]
fn item10_mutant_skip_fua_commit_when_unflushed_is_caught() {
    caught_within(Mutant::SkipFuaCommitWhenUnflushed, Faults::all(), OPS, 16);
}

#[test]
fn every_mutant_has_a_test() {
    // A new mutant in the driver must get its own `caught_within` test above.
    assert_eq!(Mutant::ALL.len(), 14);
}
