//! Each deliberate bug of disaster recovery (technique T5) is caught by the two-site
//! model (`rehydrate_driver::dr::testing`) within a bounded number of seeds that the real
//! cores pass (the loop is `mutant_support::caught`).

mod mutant_support;

use rehydrate_driver::dr::testing::{run, HarnessConfig};
use rehydrate_driver::mutants::Mutant;

/// The rules about data; a mutant caught by `progress` or `protocol` would be a harness
/// problem, not the bug it plants.
const DATA_RULES: [&str; 3] = ["read-point", "durable-sent", "quiet-equal"];

fn config(seed: u64) -> HarnessConfig {
    HarnessConfig {
        regions: 4 + seed % 12,
        steps: 600,
        faults: seed % 3 != 0,
        dr_items_in_flight_max: 1 + (seed % 4) as usize,
    }
}

/// A mutant caught by stale reads, and otherwise only by data rules or by a read that
/// never completes (`progress`).
fn assert_read_points_and_maybe_a_hang(rules: &[&str]) {
    assert!(rules.contains(&"read-point"), "{rules:?}");
    assert!(
        rules
            .iter()
            .all(|r| DATA_RULES.contains(r) || *r == "progress"),
        "{rules:?}"
    );
}

/// Runs `mutant` over `seeds`; returns the rules that caught it.
fn caught(mutant: Mutant, seeds: std::ops::Range<u64>) -> Vec<&'static str> {
    mutant_support::caught(mutant, seeds, |seed| run(seed, config(seed)), |v| v.rule)
}

#[test]
fn mutant_mark_sent_after_read_is_caught() {
    let rules = caught(Mutant::MarkSentAfterRead, 0..24);
    // The write admitted while the region was read stays local: the DR never gets it,
    // so a later DR read returns the older data next to newer sectors, and the region
    // is marked durably sent with the old bytes.
    assert!(rules.contains(&"read-point"), "{rules:?}");
    assert!(rules.iter().all(|r| DATA_RULES.contains(r)), "{rules:?}");
}

#[test]
fn mutant_fetch_reply_out_of_order_is_caught() {
    // Data that jumped ahead of the session's invalidations is then dropped by them
    // while the primary counts it sent: a read of it waits forever.
    assert_read_points_and_maybe_a_hang(&caught(Mutant::FetchReplyOutOfOrder, 0..24));
}

#[test]
fn mutant_drop_replicated_write_is_caught() {
    let rules = caught(Mutant::DropReplicatedWrite, 0..24);
    assert!(rules.contains(&"read-point"), "{rules:?}");
    assert!(rules.iter().all(|r| DATA_RULES.contains(r)), "{rules:?}");
}

#[test]
fn mutant_stale_region_over_write_is_caught() {
    // Region data written outside the gate can also land ahead of the session's
    // invalidations held there, which then drop it while the primary counts it sent:
    // a read of it waits forever (as with a fetch reply out of order).
    assert_read_points_and_maybe_a_hang(&caught(Mutant::StaleRegionOverWrite, 0..24));
}

#[test]
fn every_dr_mutant_is_named() {
    for m in Mutant::DR {
        assert_eq!(Mutant::from_name(m.name()), Some(m));
    }
}
