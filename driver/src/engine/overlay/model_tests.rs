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
use std::vec::Vec;

use super::harness::{AppKind, Bench};
use super::OverlayConfig;
use crate::engine::EngineConfig;
use crate::status::FailReason;

#[derive(Clone, Debug)]
enum Op {
    Read {
        sector: usize,
        sectors: usize,
    },
    Write {
        sector: usize,
        sectors: usize,
        fua: bool,
    },
    Discard {
        sector: usize,
        sectors: usize,
    },
    Flush,
    Deliver(usize),
    FailFetch(usize),
    Cancel(usize),
    Background {
        region: u64,
        count: u64,
    },
    CompleteLower {
        pick: usize,
        fail: bool,
    },
    Commit {
        fail_after: Option<u64>,
    },
    Tick {
        advance_ms: u64,
    },
    RestartService,
    Merge {
        online: bool,
    },
    Crash {
        keep_seed: u64,
    },
}

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

fn config() -> OverlayConfig {
    OverlayConfig {
        engine: EngineConfig {
            hold_deadline_ns: 20_000_000_000,
            held_max: 256,
            commit_interval_ns: 1_000_000_000,
            ask_window_regions: 4,
            ..EngineConfig::default()
        },
        requests_max: 64,
        fills_max: 4,
        merge_copy_bytes: 3 * 4096,
        merge_copies_max: 2,
    }
}

fn run(regions: u64, tail_sectors: u64, ops: Vec<Op>, online: bool) -> Bench {
    let mut b = Bench::new(regions, tail_sectors, 5, config());
    let total = b.sectors;
    for op in ops {
        match op {
            Op::Read { sector, sectors }
            | Op::Write {
                sector, sectors, ..
            }
            | Op::Discard { sector, sectors } => {
                let sector = sector % total;
                let sectors = sectors.min(total - sector);
                let kind = match op {
                    Op::Read { .. } => AppKind::Read,
                    Op::Write { fua, .. } => AppKind::Write { fua },
                    _ => AppKind::Discard,
                };
                if b.may_issue(kind, sector, sectors) {
                    b.issue(kind, sector, sectors);
                }
            }
            Op::Flush => {
                b.issue(AppKind::Flush, 0, 0);
            }
            Op::Deliver(pick) => {
                b.deliver(pick);
            }
            Op::FailFetch(pick) => {
                b.fail_fetch(pick, FailReason::Unreachable);
            }
            Op::Cancel(pick) => {
                b.cancel(pick);
            }
            Op::Background { region, count } => {
                let region = region % regions;
                b.hydrate(region..(region + count).min(regions));
            }
            Op::CompleteLower { pick, fail } => {
                b.complete_lower(pick, fail);
            }
            Op::Commit { fail_after } => {
                b.commit(fail_after);
            }
            Op::Tick { advance_ms } => b.tick(advance_ms * 1_000_000),
            Op::RestartService => b.restart_service(),
            Op::Merge { online } => b.merge(online),
            Op::Crash { keep_seed } => {
                let downtime_ns = keep_seed % 60_000 * 1_000_000;
                b.crash(
                    |s| (keep_seed.rotate_left(s as u32 % 64) ^ s as u64) & 1 == 1,
                    downtime_ns,
                );
            }
        }
    }
    b.drain_and_verify(online);
    b
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

/// xorshift64: the fixed workloads' numbers.
fn numbers(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// A deterministic workload: `fault_every` sets how often lower I/O fails (0: never).
fn workload(seed: u64, count: usize, fault_every: u64) -> Vec<Op> {
    let mut next = numbers(seed);
    let mut ops = Vec::new();
    for _ in 0..count {
        let r = next();
        let sector = (r >> 8) as usize % 400;
        let sectors = 1 + (r >> 20) as usize % 40;
        ops.push(match r % 24 {
            0..=3 => Op::Read { sector, sectors },
            4..=7 => Op::Write {
                sector,
                sectors,
                fua: r % 5 == 0,
            },
            8 => Op::Discard { sector, sectors },
            9 => Op::Flush,
            10..=11 => Op::Deliver(r as usize),
            12 => Op::Background {
                region: (r >> 30) % 50,
                count: 1 + (r >> 40) % 5,
            },
            13..=18 => Op::CompleteLower {
                pick: r as usize,
                fail: fault_every != 0 && r % fault_every == 0,
            },
            19 => Op::Commit {
                fail_after: (fault_every != 0 && r % 17 == 0).then_some((r >> 10) % 12),
            },
            20 => Op::Tick {
                advance_ms: (r >> 33) % 2000,
            },
            21 if (r >> 9) % 8 == 0 => Op::Merge {
                online: (r >> 12) % 2 == 0,
            },
            21 => Op::Read { sector, sectors },
            22 => match r % 31 {
                0 => Op::Crash { keep_seed: r },
                1..=3 => Op::RestartService,
                4..=6 => Op::FailFetch(r as usize),
                _ => Op::Cancel(r as usize),
            },
            _ => Op::Deliver(r as usize),
        });
    }
    ops
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
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::string::String;
    let message = |p: std::boxed::Box<dyn core::any::Any + Send>| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| String::from(*s)))
            .unwrap_or_default()
    };
    for seed in 0..seeds {
        let ops = workload(
            0x5EED_0000 + seed,
            3_000,
            if seed % 2 == 0 { 0 } else { 19 },
        );
        let regions = 20 + seed % 30;
        let online = seed % 3 == 0;
        mutants::set(Some(mutant));
        let result = catch_unwind(AssertUnwindSafe(|| {
            run(regions, seed % 8, ops.clone(), online);
        }));
        mutants::set(None);
        let Err(panic) = result else { continue };
        let why = message(panic);
        assert!(
            why.starts_with("model:"),
            "{}: the engine failed an assertion instead of the model catching it: {why}",
            mutant.name()
        );
        run(regions, seed % 8, ops, online);
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
