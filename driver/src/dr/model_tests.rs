//! The two-site model (see [`super::testing`]) under proptest: random seeds and shapes,
//! all faults on; every rule holds for the real cores.

use proptest::prelude::*;

use super::testing::{run, HarnessConfig};

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn two_sites_keep_every_rule(
        seed in any::<u64>(),
        regions in 3u64..24,
        steps in 50usize..500,
        faults in any::<bool>(),
        dr_items_in_flight_max in 1usize..6,
    ) {
        let cfg = HarnessConfig { regions, steps, faults, dr_items_in_flight_max };
        let report = run(seed, cfg);
        prop_assert!(report.is_ok(), "seed {seed} {cfg:?}: {report:?}");
    }
}

#[test]
fn a_long_faulty_run_keeps_every_rule() {
    let mut totals = super::testing::Report::default();
    for seed in 0..40 {
        let r =
            run(seed, HarnessConfig::small(1500)).unwrap_or_else(|v| panic!("seed {seed}: {v:?}"));
        totals.reads_checked += r.reads_checked;
        totals.primary_crashes += r.primary_crashes;
        totals.dr_crashes += r.dr_crashes;
        totals.drops += r.drops;
        totals.cuts += r.cuts;
        totals.writes += r.writes;
        totals.fetches += r.fetches;
    }
    // The run exercised what it claims to.
    assert!(totals.reads_checked > 1200, "{totals:?}");
    assert!(
        totals.primary_crashes > 10 && totals.dr_crashes > 10,
        "{totals:?}"
    );
    assert!(totals.drops > 5 && totals.fetches > 20, "{totals:?}");
}

/// Frames lost last in a session, with none after them to show the loss: the harness
/// waited for ever on these (the link's idle timeout must end such a session).
#[test]
fn frames_lost_last_in_a_session_end_it() {
    for (seed, regions, steps, items) in [
        (5_734_929_463_473_644_843, 3, 69, 3),
        (4_566_130_726_330_536_027, 3, 103, 1),
    ] {
        let cfg = HarnessConfig {
            regions,
            steps,
            faults: true,
            dr_items_in_flight_max: items,
        };
        if let Err(v) = run(seed, cfg) {
            panic!("seed {seed} {cfg:?}: {v:?}");
        }
    }
}
