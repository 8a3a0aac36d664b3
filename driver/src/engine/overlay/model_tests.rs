//! Model-based property test of the overlay mode: random workloads on the
//! pseudo-volume (reads and writes of any size and alignment, FUA, flushes, trims),
//! restore traffic, failing lower I/O and fetches, torn metadata commits, power loss
//! with both devices' caches, and cutovers asked for at any time (online and not),
//! checked after every step by the bench's oracle (`harness.rs`); in the end the
//! whole volume restores, merges and reads back. The mutant tests at the end show the
//! model catching each deliberate bug of the overlay mode.

extern crate std;

use proptest::prelude::*;
use std::vec;

use super::harness::{AppKind, Bench};
use super::workload::{config, numbers, run, run_seed, workload, Op};

fn op() -> impl Strategy<Value = Op> {
    let span = (0usize..400, 1usize..40);
    prop_oneof![
        6 => span.clone().prop_map(|(sector, sectors)| Op::Read { sector, sectors }),
        6 => (span.clone(), any::<bool>()).prop_map(|((sector, sectors), fua)| Op::Write { sector, sectors, fua: fua && sectors % 3 == 0 }),
        1 => span.prop_map(|(sector, sectors)| Op::Discard { sector, sectors }),
        2 => Just(Op::Flush),
        5 => any::<usize>().prop_map(Op::Deliver),
        1 => any::<usize>().prop_map(Op::FailFetch),
        1 => any::<usize>().prop_map(Op::Cancel),
        3 => (0u64..50, 1u64..8).prop_map(|(region, count)| Op::Background { region, count }),
        14 => (any::<usize>(), prop::bool::weighted(0.04)).prop_map(|(pick, fail)| Op::CompleteLower { pick, fail }),
        3 => prop::option::weighted(0.1, 0u64..12).prop_map(|fail_after| Op::Commit { fail_after }),
        1 => (0u64..3000).prop_map(|advance_ms| Op::Tick { advance_ms }),
        1 => Just(Op::RestartService),
        1 => any::<bool>().prop_map(|online| Op::Merge { online }),
        1 => any::<u64>().prop_map(|keep_seed| Op::Crash { keep_seed }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_overlay_mode_agrees_with_the_model(
        regions in 2u64..50,
        tail_sectors in 0u64..8,
        ops in proptest::collection::vec(op(), 1..300),
        online in any::<bool>(),
    ) {
        run(regions, tail_sectors, ops, online);
    }
}

#[test]
fn a_long_fixed_workload_merges_and_verifies() {
    let b = run(50, 3, workload(0x9E37_79B9_7F4A_7C15, 20_000, 0), true);
    assert!(b.merges_started >= 1);
}

#[test]
fn a_long_fault_heavy_workload_merges_and_verifies() {
    run(37, 5, workload(0x0DDB_A11C_AFE0_0001, 20_000, 13), false);
}

/// Runs workloads with `mutant` selected until the model catches it (a `model:` panic,
/// not an engine assertion); the real engine must pass the workload that caught it.
fn caught_by_the_model(mutant: crate::mutants::Mutant, seeds: u64) -> u64 {
    use crate::mutants;
    for seed in 0..seeds {
        mutants::set(Some(mutant));
        let result = run_seed(seed, 3_000);
        mutants::set(None);
        let Err(why) = result else { continue };
        assert!(
            why.starts_with("model:"),
            "{}: the engine failed an assertion instead of the model catching it: {why}",
            mutant.name()
        );
        assert_eq!(
            run_seed(seed, 3_000),
            Ok(()),
            "the real engine fails seed {seed}"
        );
        return seed;
    }
    panic!(
        "mutant {} was not caught within {seeds} workloads",
        mutant.name()
    );
}

#[test]
fn the_model_catches_application_writes_to_the_destination() {
    caught_by_the_model(crate::mutants::Mutant::AppWriteToDestination, 4);
}

#[test]
fn the_model_catches_o_marked_before_the_overlay_flush() {
    caught_by_the_model(crate::mutants::Mutant::MarkOverlayBeforeFlush, 16);
}

#[test]
fn the_model_catches_the_overlay_cleared_before_the_destination_flush() {
    caught_by_the_model(
        crate::mutants::Mutant::ClearOverlayBeforeDestinationFlush,
        16,
    );
}

#[test]
fn the_model_catches_backup_data_served_for_a_region_in_o() {
    caught_by_the_model(crate::mutants::Mutant::ServeBackupForOverlayRegion, 4);
}

/// Completes every I/O and commit and answers every fetch until nothing is left.
fn settle(b: &mut Bench) {
    for _ in 0..100_000 {
        if !(b.complete_lower(0, false) || b.commit(None) || b.deliver(0)) {
            return;
        }
    }
    panic!("did not settle");
}

/// The cutover survives power loss at any step: restore everything, write over part
/// of it, begin the cutover, let it take `k` steps (with the application writing
/// meanwhile when it is online), lose power, and cut over again: the destination ends
/// equal to the volume (the bench checks it, and every rule on the way), for every `k`
/// until the cutover finishes before the crash.
#[test]
fn power_loss_at_every_step_of_a_cutover_then_a_new_cutover_gives_the_same_volume() {
    for (seed, online) in (0..32).map(|seed| (seed, seed % 2 == 1)) {
        let mut next = numbers(0xC07_0FE2 + seed);
        let mut finished_before_the_crash = false;
        for k in 0..400u64 {
            let mut b = Bench::new(12, 3, 5, config());
            b.hydrate(0..12);
            settle(&mut b);
            b.tick(config().engine.commit_interval_ns);
            settle(&mut b);
            for _ in 0..12 {
                let r = next();
                let sector = (r % 90) as usize;
                let sectors = (1 + (r >> 8) as usize % 20).min(b.sectors - sector);
                b.issue(AppKind::Write { fua: r % 5 == 0 }, sector, sectors);
            }
            settle(&mut b);
            b.merge(online);
            assert_eq!(
                b.merges_started, 1,
                "the cutover of a restored volume began"
            );
            for step in 0..k {
                let r = next();
                let progressed = match r % 6 {
                    0 if online => {
                        let sector = (r >> 8) as usize % 90;
                        let sectors = (1 + (r >> 20) as usize % 9).min(b.sectors - sector);
                        if b.may_issue(AppKind::Write { fua: false }, sector, sectors) {
                            b.issue(AppKind::Write { fua: false }, sector, sectors);
                        }
                        true
                    }
                    1 => b.commit(None),
                    _ => b.complete_lower((r >> 3) as usize, false),
                };
                if !progressed && !b.commit(None) && !b.complete_lower(0, false) {
                    finished_before_the_crash |= b.merged_seen;
                    let _ = step;
                    break;
                }
            }
            if b.merged_seen && k > 0 {
                finished_before_the_crash = true;
            }
            b.crash(|s| (k ^ s as u64) % 3 == 0, 1_000_000_000);
            b.drain_and_verify(online);
            if finished_before_the_crash {
                break;
            }
        }
        assert!(
            finished_before_the_crash,
            "some step count lets the cutover finish"
        );
    }
}
