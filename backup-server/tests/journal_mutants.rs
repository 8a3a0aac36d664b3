//! The journal's deliberate bug is caught by its torn-tail reference
//! (`rehydrate_backup::journal::testing`): with the mutant that applies a torn tail,
//! some seed fails, and every seed it fails passes without it. Mutants are chosen for
//! the whole process, so this is its own test binary.

use rehydrate_backup::journal::testing::torn_tail_case;
use rehydrate_driver::mutants::{self, Mutant};

#[test]
fn mutant_torn_tail_applied_is_caught() {
    let mut caught = 0;
    for seed in 0..32 {
        let dir = tempfile::tempdir().expect("a temporary directory");
        assert!(mutants::set(Some(Mutant::TornTailApplied)));
        let with = torn_tail_case(dir.path(), seed);
        mutants::set(None);
        let Err(e) = with else { continue };
        assert!(
            e.contains("journal holds") || e.contains("not served") || e.contains("lacks"),
            "seed {seed}: caught by an unexpected check: {e}"
        );
        let clean = tempfile::tempdir().expect("a temporary directory");
        torn_tail_case(clean.path(), seed)
            .unwrap_or_else(|e| panic!("seed {seed} also fails without the mutant: {e}"));
        caught += 1;
    }
    assert!(
        caught > 0,
        "mutant torn-tail-applied was not caught in 32 seeds"
    );
}
