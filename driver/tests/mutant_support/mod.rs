//! The loop every mutant test runs: a deliberate bug switched on for a range of seeds,
//! each seed that fails run again without it (a mutant is only caught at a seed the
//! real code passes), and the rules that caught it returned for the test to judge.
//! Mutants are selected for the whole process, so the runs are serialised.

use std::fmt::Debug;
use std::ops::Range;
use std::sync::Mutex;

use rehydrate_driver::mutants::{self, Mutant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `run_seed` over `seeds` with `mutant` on; every seed it fails must pass with it
/// off. Returns the rules (`rule` of each failure) that caught it; none is a failure.
pub fn caught<R: Debug, V: Debug>(
    mutant: Mutant,
    seeds: Range<u64>,
    run_seed: impl Fn(u64) -> Result<R, V>,
    rule: impl Fn(&V) -> &'static str,
) -> Vec<&'static str> {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut rules = Vec::new();
    for seed in seeds {
        assert!(mutants::set(Some(mutant)), "the mutants feature is on");
        let with = run_seed(seed);
        mutants::set(None);
        let Err(v) = with else { continue };
        let without = run_seed(seed);
        assert!(
            without.is_ok(),
            "{}: seed {seed} also fails without the mutant: {without:?}",
            mutant.name()
        );
        rules.push(rule(&v));
    }
    assert!(!rules.is_empty(), "mutant {} was not caught", mutant.name());
    rules
}
