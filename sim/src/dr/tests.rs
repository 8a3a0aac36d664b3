//! The two-site sweep breaks no rule with every fault, and each DR mutant is caught by
//! a data rule within a stated range of seeds that the real cores pass.

use super::*;

/// The rules about data: a mutant caught by `progress`, `protocol` or a panic would be
/// a harness problem, not the bug it plants.
const DATA_RULES: [&str; 4] = ["read-point", "stale", "durable-sent", "quiet-equal"];

#[test]
fn two_sites_with_every_fault_break_no_rule() {
    let report = sweep(0..16, 1_000, Faults::all(), None, |_| {});
    assert_eq!(report.seeds, 16);
    let failures: Vec<String> = report
        .failures
        .iter()
        .map(|o| format!("seed {}: {}", o.seed, o.violation.as_ref().expect("failed")))
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
    // The sweep exercised what it claims to.
    let t = report.totals;
    assert_eq!(
        t.whole_reads, 16,
        "every seed ended with the volumes compared"
    );
    assert!(t.reads_checked > 500, "{t:?}");
    assert!(
        t.primary_crashes > 5 && t.dr_crashes > 5 && t.kills > 5,
        "{t:?}"
    );
    assert!(
        t.cuts > 20 && t.frames_lost > 5 && t.media_errors > 5,
        "{t:?}"
    );
    assert!(t.fetches > 100, "{t:?}");
}

#[test]
fn without_faults_the_sync_ends_and_nothing_is_cut() {
    let report = sweep(0..4, 500, Faults::NONE, None, |_| {});
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let t = report.totals;
    assert_eq!(
        (t.cuts, t.primary_crashes, t.dr_crashes, t.kills),
        (0, 0, 0, 0)
    );
    assert_eq!(t.sessions, 4, "one session per seed");
}

#[test]
fn a_seed_replays_exactly() {
    let a = run_seed(3, 600, Faults::all(), None);
    let b = run_seed(3, 600, Faults::all(), None);
    assert_eq!(a.counters, b.counters);
    assert_eq!(a.shape, b.shape);
}

/// Runs `mutant` from seed 0 until one seed fails, at most `bound` seeds; the failure
/// must be a data rule and the seed must pass without the mutant. Returns the seed.
fn caught_within(mutant: Mutant, bound: u64) -> u64 {
    for seed in 0..bound {
        let o = run_seed(seed, 1_000, Faults::all(), Some(mutant));
        let Some(v) = o.violation else { continue };
        assert!(
            DATA_RULES.contains(&v.rule),
            "{}: seed {seed} broke {v}, not a data rule",
            mutant.name()
        );
        let without = run_seed(seed, 1_000, Faults::all(), None);
        assert!(
            without.violation.is_none(),
            "{}: seed {seed} also fails without the mutant: {:?}",
            mutant.name(),
            without.violation
        );
        return seed;
    }
    panic!(
        "mutant {} was not caught within {bound} seeds",
        mutant.name()
    );
}

#[test]
fn mutant_mark_sent_after_read_is_caught() {
    // A write admitted while the region was read stays local: the DR never gets it.
    caught_within(Mutant::MarkSentAfterRead, 8);
}

#[test]
fn mutant_fetch_reply_out_of_order_is_caught() {
    // Fetched data overtakes replicated writes to the regions read beside it.
    caught_within(Mutant::FetchReplyOutOfOrder, 8);
}

#[test]
fn mutant_drop_replicated_write_is_caught() {
    caught_within(Mutant::DropReplicatedWrite, 8);
}

#[test]
fn mutant_stale_region_over_write_is_caught() {
    caught_within(Mutant::StaleRegionOverWrite, 16);
}

#[test]
fn only_dr_mutants_are_named() {
    for m in Mutant::DR {
        assert_eq!(parse_dr_mutant(m.name()), Ok(m));
    }
    let refused = parse_dr_mutant("accept-stale-hydrate").unwrap_err();
    assert!(
        refused.contains("not a disaster-recovery mutant"),
        "{refused}"
    );
    assert!(parse_dr_mutant("nope")
        .unwrap_err()
        .contains("unknown DR mutant"));
}
