//! Model-based property test: random workloads against the engine, checked after every
//! step by the harness's oracle (a plain model of DESIGN.md section 3): every completed
//! read returns the newest acknowledged write else the backup's data (reads may race
//! writes at the device); every error completion is explained by a fault that hit that
//! request; nothing overtakes an earlier held request; a mark becomes durable only over
//! durable data; after power loss every durably marked region holds what a crash may
//! leave; the engine keeps its bounds and strands nothing; in the end the whole volume
//! restores and verifies. The mutant tests at the end show the model catching each
//! deliberate bug of the issues it guards against.

extern crate std;

use proptest::prelude::*;
use std::vec;
use std::vec::Vec;

use super::harness::{AppKind, Harness};
use super::EngineConfig;
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
    FailFetch(usize, FailReason),
    /// The service reports a wider range failed (a whole chunk).
    FailRange {
        region: u64,
        count: u64,
        reason: FailReason,
    },
    Cancel(usize),
    NoMemory(u32),
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
    Crash {
        keep_seed: u64,
    },
}

fn reason() -> impl Strategy<Value = FailReason> {
    prop_oneof![
        Just(FailReason::Unreachable),
        Just(FailReason::Corrupt),
        Just(FailReason::OutOfRange),
        Just(FailReason::Cancelled),
        Just(FailReason::Other),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    // Sizes from one sector to 40 (20 KiB), anywhere: aligned and not, across regions.
    let span = (0usize..400, 1usize..40);
    prop_oneof![
        6 => span.clone().prop_map(|(sector, sectors)| Op::Read { sector, sectors }),
        5 => (span.clone(), any::<bool>()).prop_map(|((sector, sectors), fua)| Op::Write { sector, sectors, fua: fua && sectors % 3 == 0 }),
        1 => span.prop_map(|(sector, sectors)| Op::Discard { sector, sectors }),
        2 => Just(Op::Flush),
        6 => any::<usize>().prop_map(Op::Deliver),
        1 => (any::<usize>(), reason()).prop_map(|(pick, r)| Op::FailFetch(pick, r)),
        1 => (0u64..50, 1u64..12, reason()).prop_map(|(region, count, reason)| Op::FailRange { region, count, reason }),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => prop::option::weighted(0.1, 1u32..4).prop_map(|n| Op::NoMemory(n.unwrap_or(0))),
        2 => (0u64..50, 1u64..6).prop_map(|(region, count)| Op::Background { region, count }),
        12 => (any::<usize>(), prop::bool::weighted(0.05)).prop_map(|(pick, fail)| Op::CompleteLower { pick, fail }),
        3 => prop::option::weighted(0.15, 0u64..12).prop_map(|fail_after| Op::Commit { fail_after }),
        1 => (0u64..3000).prop_map(|advance_ms| Op::Tick { advance_ms }),
        1 => Just(Op::RestartService),
        1 => any::<u64>().prop_map(|keep_seed| Op::Crash { keep_seed }),
    ]
}

fn run(regions: u64, tail_sectors: u64, ops: Vec<Op>) {
    let config = EngineConfig {
        hold_deadline_ns: 20_000_000_000,
        held_max: 64,
        commit_interval_ns: 1_000_000_000,
        ask_window_regions: 4,
        ..EngineConfig::default()
    };
    let mut h = Harness::new(regions, tail_sectors, 5, config);
    let sectors_total = h.sectors;
    for op in ops {
        match op {
            Op::Read { sector, sectors }
            | Op::Write {
                sector, sectors, ..
            }
            | Op::Discard { sector, sectors } => {
                let sector = sector % sectors_total;
                let sectors = sectors.min(sectors_total - sector);
                let kind = match op {
                    Op::Read { .. } => AppKind::Read,
                    Op::Write { fua, .. } => AppKind::Write { fua },
                    _ => AppKind::Discard,
                };
                if !h.may_issue(kind, sector, sectors) {
                    continue;
                }
                h.issue(kind, sector, sectors);
            }
            Op::Flush => {
                h.issue(AppKind::Flush, 0, 0);
            }
            Op::Deliver(pick) => {
                h.deliver(pick);
            }
            Op::FailFetch(pick, reason) => {
                h.fail_fetch(pick, reason);
            }
            Op::FailRange {
                region,
                count,
                reason,
            } => {
                let region = region % regions;
                h.fail_range(region..region + count, reason);
            }
            Op::Cancel(pick) => {
                h.cancel(pick);
            }
            Op::NoMemory(count) => h.no_memory(count),
            Op::Background { region, count } => {
                let region = region % regions;
                let end = (region + count).min(regions);
                h.hydrate(region..end);
            }
            Op::CompleteLower { pick, fail } => {
                h.complete_lower(pick, fail);
            }
            Op::Commit { fail_after } => {
                h.commit(fail_after);
            }
            Op::Tick { advance_ms } => h.tick(advance_ms * 1_000_000),
            Op::RestartService => h.restart_service(),
            Op::Crash { keep_seed } => {
                // A reboot takes up to a minute.
                let downtime_ns = keep_seed % 60_000 * 1_000_000;
                h.crash(
                    |s| (keep_seed.rotate_left(s as u32 % 64) ^ s as u64) & 1 == 1,
                    downtime_ns,
                );
            }
        }
    }
    h.drain_and_verify();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_the_model(
        regions in 2u64..50,
        tail_sectors in 0u64..8,
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        run(regions, tail_sectors, ops);
    }
}

/// A deterministic workload of `count` operations from `seed`.
/// xorshift64: the fixed workloads' numbers.
fn numbers(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

fn fixed_workload(seed: u64, count: usize) -> Vec<Op> {
    let mut next = numbers(seed);
    let mut ops = Vec::new();
    for _ in 0..count {
        let r = next();
        let sector = (r >> 8) as usize % 400;
        let sectors = 1 + (r >> 20) as usize % 40;
        ops.push(match r % 20 {
            0..=3 => Op::Read { sector, sectors },
            4..=6 => Op::Write {
                sector,
                sectors,
                fua: r % 7 == 0,
            },
            7 => Op::Discard { sector, sectors },
            8 => Op::Flush,
            9..=10 => Op::Deliver(r as usize),
            11 => Op::Background {
                region: (r >> 30) % 50,
                count: 1 + (r >> 40) % 5,
            },
            12..=16 => Op::CompleteLower {
                pick: r as usize,
                fail: r % 97 == 0,
            },
            17 => Op::Commit {
                fail_after: (r % 23 == 0).then_some((r >> 10) % 12),
            },
            18 => Op::Tick {
                advance_ms: (r >> 33) % 2000,
            },
            _ => match r % 211 {
                0 => Op::Crash { keep_seed: r },
                1..=20 => Op::Cancel(r as usize),
                21..=40 => Op::FailRange {
                    region: (r >> 30) % 50,
                    count: 1 + (r >> 40) % 16,
                    reason: REASONS[(r >> 50) as usize % REASONS.len()],
                },
                41..=44 => Op::NoMemory(1 + (r >> 20) as u32 % 3),
                _ => Op::FailFetch(r as usize, REASONS[(r >> 50) as usize % REASONS.len()]),
            },
        });
    }
    ops
}

/// A deterministic workload heavy in faults: failing lower I/O, crashes with long
/// reboots, long ticks, cancels, wide failure reports.
fn fault_heavy_workload(seed: u64, count: usize) -> Vec<Op> {
    let mut next = numbers(seed);
    let mut ops = Vec::new();
    for _ in 0..count {
        let r = next();
        let sector = (r >> 8) as usize % 400;
        let sectors = 1 + (r >> 20) as usize % 40;
        let reason = REASONS[(r >> 50) as usize % REASONS.len()];
        ops.push(match r % 24 {
            0..=3 => Op::Read { sector, sectors },
            4..=6 => Op::Write {
                sector: sector / 8 * 8,
                sectors: sectors.div_ceil(8) * 8,
                fua: r % 3 == 0,
            },
            7 => Op::Discard { sector, sectors },
            8 => Op::Flush,
            9..=10 => Op::Deliver(r as usize),
            11..=12 => Op::Background {
                region: (r >> 30) % 50,
                count: 1 + (r >> 40) % 5,
            },
            13..=17 => Op::CompleteLower {
                pick: r as usize,
                fail: r % 11 == 0,
            },
            18 => Op::Commit { fail_after: None },
            19 => Op::Tick {
                advance_ms: (r >> 33) % 5_000,
            },
            20 => match r % 7 {
                0 => Op::Crash { keep_seed: r },
                1 => Op::Cancel(r as usize),
                2 => Op::NoMemory(1),
                _ => Op::FailFetch(r as usize, reason),
            },
            _ => Op::FailRange {
                region: (r >> 30) % 50,
                count: 1 + (r >> 40) % 16,
                reason,
            },
        });
    }
    ops
}

const REASONS: [FailReason; 5] = [
    FailReason::Unreachable,
    FailReason::Corrupt,
    FailReason::OutOfRange,
    FailReason::Cancelled,
    FailReason::Other,
];

#[test]
fn a_long_fixed_workload_verifies() {
    // A deterministic long run to cover deep histories proptest rarely reaches.
    run(50, 3, fixed_workload(0x9E37_79B9_7F4A_7C15, 20_000));
}

#[test]
fn a_long_fault_heavy_workload_verifies() {
    run(37, 5, fault_heavy_workload(0x0DDB_A11C_AFE0_0001, 20_000));
}

/// Runs fixed workloads with `mutant` selected until the model catches it (a panic of
/// the model's, not an assertion inside the engine); the real engine must pass the
/// workload that caught it. Returns the seed.
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
        let ops = if seed % 2 == 0 {
            fixed_workload(0x5EED_0000 + seed, 3_000)
        } else {
            fault_heavy_workload(0x5EED_0000 + seed, 3_000)
        };
        let regions = 20 + seed % 40;
        mutants::set(Some(mutant));
        let result = catch_unwind(AssertUnwindSafe(|| run(regions, seed % 8, ops.clone())));
        mutants::set(None);
        let Err(panic) = result else { continue };
        let why = message(panic);
        assert!(
            why.starts_with("model:"),
            "{}: the engine failed an assertion instead of the model catching it: {why}",
            mutant.name()
        );
        run(regions, seed % 8, ops);
        return seed;
    }
    panic!(
        "mutant {} was not caught within {seeds} workloads",
        mutant.name()
    );
}

#[test]
fn item6_the_model_catches_failing_waiters_of_the_whole_range() {
    caught_by_the_model(crate::mutants::Mutant::FailWaitersOfWholeRange, 8);
}

#[test]
fn item8_the_model_catches_keeping_requests_nobody_waits_for() {
    caught_by_the_model(crate::mutants::Mutant::KeepUnwantedRequests, 8);
}

#[test]
fn item8_the_model_catches_asking_for_every_missing_region_at_once() {
    caught_by_the_model(crate::mutants::Mutant::AskEveryMissingRegion, 8);
}

#[test]
fn item12_the_model_catches_no_reask_after_a_failed_claim() {
    caught_by_the_model(crate::mutants::Mutant::NoReaskAfterFailedClaim, 64);
}

#[test]
fn item12_the_model_catches_holds_timed_from_the_engine_start() {
    caught_by_the_model(crate::mutants::Mutant::HoldDeadlineFromEngineStart, 8);
}

#[test]
fn item7_the_model_catches_a_flush_covering_later_marks() {
    caught_by_the_model(crate::mutants::Mutant::FlushCoversLaterMarks, 8);
}

#[test]
fn item10_the_model_catches_skipping_the_fua_commit_over_unflushed_marks() {
    caught_by_the_model(crate::mutants::Mutant::SkipFuaCommitWhenUnflushed, 8);
}
