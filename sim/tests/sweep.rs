//! The simulator's acceptance tests: a sweep of seeds with every fault must find no
//! violation, a seed must replay exactly, and every deliberate bug in the driver must
//! be caught within a bounded number of seeds that the real driver passes.
//!
//! Requests per seed are kept small so the debug build runs this in seconds; the
//! release benchmark (`benches/throughput.rs`) and `rehydrate-sim sweep` run long ones.

use rehydrate_driver::mutants::Mutant;
use rehydrate_sim::verifier::Rule;
use rehydrate_sim::{run, Faults, Outcome, RunConfig};

/// Requests per seed in these tests.
const OPS: u64 = 150;
/// Seeds in the all-faults sweep.
const SEEDS: u64 = 100;

fn config(seed: u64, mutant: Option<Mutant>) -> RunConfig {
    RunConfig {
        mutant,
        ..RunConfig::new(seed, OPS, Faults::all())
    }
}

fn describe(config: &RunConfig, outcome: &Outcome) -> String {
    match &outcome.violation {
        Some(v) => format!("{v}\n    replay: {}", config.replay_command()),
        None => "ok".to_string(),
    }
}

#[test]
fn a_hundred_seeds_with_every_fault_find_no_violation() {
    let mut failures = Vec::new();
    let mut ops = 0;
    for seed in 0..SEEDS {
        let c = config(seed, None);
        let o = run(&c);
        ops += o.ops_done;
        if o.violation.is_some() {
            failures.push(format!("seed {seed}: {}", describe(&c, &o)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {SEEDS} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(ops >= SEEDS * OPS, "every seed ran its requests ({ops})");
}

#[test]
fn a_seed_replays_exactly_and_different_seeds_differ() {
    for seed in [3, 17, 42] {
        let a = run(&config(seed, None));
        let b = run(&config(seed, None));
        assert_eq!(a, b, "seed {seed} is not deterministic");
    }
    assert_ne!(run(&config(1, None)).trace, run(&config(2, None)).trace);
}

/// Runs `mutant` over seeds until one fails; the failure must come from a rule (not a
/// panic) and the real driver must pass that seed.
fn caught_within(mutant: Mutant, bound: u64) -> u64 {
    for seed in 0..bound {
        let c = config(seed, Some(mutant));
        let o = run(&c);
        let Some(v) = &o.violation else { continue };
        assert_ne!(
            v.rule,
            Rule::Driver,
            "{}: the driver panicked instead of the oracle catching it: {v}",
            mutant.name()
        );
        let clean = config(seed, None);
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
    caught_within(Mutant::CommitMetadataBeforeDataFlush, 16);
}

#[test]
fn mutant_mark_before_lower_write_completes_is_caught() {
    caught_within(Mutant::MarkBeforeLowerWriteCompletes, 16);
}

#[test]
fn mutant_skip_fetch_for_partial_write_is_caught() {
    caught_within(Mutant::SkipFetchForPartialWrite, 16);
}

#[test]
fn mutant_accept_stale_hydrate_is_caught() {
    caught_within(Mutant::AcceptStaleHydrate, 48);
}

#[test]
fn mutant_lose_mark_on_torn_commit_is_caught() {
    caught_within(Mutant::LoseMarkOnTornCommit, 64);
}

#[test]
fn mutant_forward_read_before_restored_is_caught() {
    caught_within(Mutant::ForwardReadBeforeRestored, 16);
}

#[test]
fn every_mutant_has_a_test() {
    // A new mutant in the driver must get its own `caught_within` test above.
    assert_eq!(Mutant::ALL.len(), 6);
}
