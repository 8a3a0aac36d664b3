//! Workloads for the overlay bench ([`super::harness`]): the steps, a deterministic
//! generator, and a runner that plays them and verifies the end. The model tests use
//! them, and so does the simulator's overlay sweep (`rehydrate-sim overlay-sweep`),
//! which reports a broken rule as a violation instead of a panic.

extern crate std;

use std::boxed::Box;
use std::string::String;
use std::vec::Vec;

use super::harness::{AppKind, Bench};
use super::OverlayConfig;
use crate::engine::EngineConfig;
use crate::status::FailReason;

/// One step of a workload.
#[derive(Clone, Debug)]
#[allow(missing_docs)]
pub enum Op {
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

/// Small limits, so queues fill and merges copy in several steps.
pub fn config() -> OverlayConfig {
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

/// Runs `ops` on a bench of `regions` regions (and `tail_sectors` more), then restores,
/// merges and verifies the whole volume. Every broken rule panics with `model:`.
pub(crate) fn run(regions: u64, tail_sectors: u64, ops: Vec<Op>, online: bool) -> Bench {
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

/// xorshift64: the fixed workloads' numbers.
pub fn numbers(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// A deterministic workload: `fault_every` sets how often lower I/O fails (0: never).
pub fn workload(seed: u64, count: usize, fault_every: u64) -> Vec<Op> {
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

/// The bench's shape for seed `seed` of a sweep: regions, tail sectors, online merges.
pub fn shape(seed: u64) -> (u64, u64, bool) {
    (20 + seed % 30, seed % 8, seed % 3 == 0)
}

/// Seed `seed` of a sweep: `ops` steps, lower I/O and commits failing on odd seeds,
/// power loss and service restarts throughout. `Err` carries the broken rule (a
/// `model:` message) or the engine assertion that fired.
pub fn run_seed(seed: u64, ops: usize) -> Result<(), String> {
    let workload = workload(0x5EED_0000 + seed, ops, if seed % 2 == 0 { 0 } else { 19 });
    let (regions, tail_sectors, online) = shape(seed);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(regions, tail_sectors, workload, online);
    }))
    .map_err(message)
}

/// A panic's message.
fn message(p: Box<dyn core::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| String::from(*s)))
        .unwrap_or_default()
}
