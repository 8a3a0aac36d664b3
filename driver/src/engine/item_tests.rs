//! Regression tests for the engine items of issue 10 (fetch failures, bounds, FUA and
//! event cost, stranded regions, the clock, cancellation), each with exact actions.

extern crate std;

use alloc::sync::Arc;
use std::vec::Vec;

use super::tests::{engine, lower_of, ok, read, step};
use super::*;
use crate::geometry::Geometry;
use crate::status::{FailReason, Status};

const R: u64 = 4096;

fn engine_with(regions: u64, config: EngineConfig) -> Engine {
    let map = Arc::new(RegionMap::new(Geometry::new(regions * R, 4096).unwrap()).unwrap());
    Engine::new(map, config)
}

fn write(id: RequestId, offset: u64, len: u64, fua: bool) -> Event {
    Event::Write {
        id,
        offset,
        len,
        fua,
    }
}

fn hydrate_lowers(actions: &[Action]) -> Vec<LowerId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::WriteHydrate { lower, .. } => Some(*lower),
            _ => None,
        })
        .collect()
}

fn hydrate(batch: BatchId, regions: core::ops::Range<u64>) -> Event {
    Event::Hydrate {
        batch,
        offset: regions.start * R,
        len: (regions.end - regions.start) * R,
        zero: false,
    }
}

fn completions(actions: &[Action]) -> Vec<(RequestId, Status)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Complete { id, status } => Some((*id, *status)),
            _ => None,
        })
        .collect()
}

fn fetches(actions: &[Action]) -> Vec<(core::ops::Range<u64>, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Fetch { regions, on_demand } => Some((regions.clone(), *on_demand)),
            _ => None,
        })
        .collect()
}

/// Item 6: a failure reported for a wide range fails the waiters of the regions that
/// failed (asked, not answered) and no one waiting on a region being hydrated.
#[test]
fn item6_a_wide_fetch_failure_fails_only_the_waiters_of_regions_that_failed() {
    let mut e = engine(8);
    step(&mut e, read(1, 2 * R, 512));
    step(&mut e, read(2, 3 * R, 512));
    // Region 3's data arrives and is being written.
    let out = step(&mut e, hydrate(1, 3..4));
    assert_eq!(hydrate_lowers(&out).len(), 1);
    // The service reports regions 0..8 failed (a whole chunk).
    let out = step(
        &mut e,
        Event::FetchFailed {
            offset: 0,
            len: 8 * R,
            reason: FailReason::Corrupt,
        },
    );
    assert_eq!(completions(&out), [(1, Status::CRC_ERROR)]);
    assert_eq!(e.held_count(), 1, "the reader of region 3 is still served");
}

/// Item 8: a read over many missing regions asks for a window of them at a time, and the
/// next window as the first arrives.
#[test]
fn item8_a_large_read_asks_a_window_of_regions_at_a_time() {
    let config = EngineConfig {
        ask_window_regions: 4,
        ..EngineConfig::default()
    };
    let mut e = engine_with(64, config);
    let out = step(&mut e, read(1, 0, 32 * R));
    assert_eq!(fetches(&out), [(0..4, true)]);
    assert_eq!(e.requested_runs().map(|r| r.end - r.start).sum::<u64>(), 4);
    // The first region arrives: the window slides.
    let out = step(&mut e, hydrate(1, 0..1));
    let out = step(&mut e, ok(hydrate_lowers(&out)[0]));
    assert_eq!(fetches(&out), [(4..5, true)]);
}

/// Item 8: regions asked only for a request that left (timed out) are forgotten.
#[test]
fn item8_regions_nobody_waits_for_are_forgotten() {
    let config = EngineConfig {
        hold_deadline_ns: 1_000,
        ..EngineConfig::default()
    };
    let mut e = engine_with(8, config);
    step(&mut e, Event::Tick { now_ns: 1 });
    step(&mut e, read(1, 2 * R, 2 * R));
    step(&mut e, read(2, 3 * R, 512));
    let out = step(&mut e, Event::Tick { now_ns: 5_000 });
    assert_eq!(completions(&out).len(), 2);
    assert_eq!(e.requested_runs().count(), 0);
}

/// Item 8: when memory runs out, the request completes with INSUFFICIENT_RESOURCES and
/// nothing changes; so does a hydrate.
#[test]
fn item8_running_out_of_memory_refuses_the_request_and_changes_nothing() {
    let mut e = engine(8);
    e.fail_next_reservations(1);
    let out = step(&mut e, read(1, 2 * R, 512));
    assert_eq!(completions(&out), [(1, Status::INSUFFICIENT_RESOURCES)]);
    assert_eq!(e.held_count(), 0);
    assert_eq!(e.requested_runs().count(), 0);
    e.fail_next_reservations(1);
    let out = step(&mut e, hydrate(7, 2..3));
    assert_eq!(
        out,
        [Action::HydrateDone {
            batch: 7,
            status: Status::INSUFFICIENT_RESOURCES
        }]
    );
    assert!(!e.map().is_restored(2));
    // With memory back, the same request is held and asked for.
    let out = step(&mut e, read(2, 2 * R, 512));
    assert_eq!(fetches(&out), [(2..3, true)]);
}

/// Item 10: a FUA write over regions already durably marked completes without a flush.
#[test]
fn item10_a_fua_write_over_durable_regions_completes_at_once() {
    let mut e = engine(4);
    // Restore region 0 durably: hydrate, flush, commit.
    let out = step(&mut e, hydrate(1, 0..1));
    step(&mut e, ok(hydrate_lowers(&out)[0]));
    let out = step(&mut e, Event::Flush { id: 9 });
    let out = step(&mut e, ok(lower_of(&out, 9)));
    assert!(out.contains(&Action::CommitMetadata { commit: 1 }));
    e.take_flushed_marks(|_| {});
    step(
        &mut e,
        Event::MetadataCommitted {
            commit: 1,
            ok: true,
        },
    );
    let out = step(&mut e, write(2, 0, 512, true));
    let out = step(&mut e, ok(lower_of(&out, 2)));
    assert_eq!(completions(&out), [(2, Status::SUCCESS)]);
    assert!(!out.iter().any(|a| matches!(a, Action::FlushDown { .. })));
    assert_eq!(e.counters().fua_commits_skipped, 1);
}

/// Item 10: an event does work for what it changes, not for every held request.
#[test]
fn item10_a_hydrate_advances_only_the_requests_waiting_on_its_regions() {
    let mut e = engine(512);
    for i in 0..400u64 {
        step(&mut e, read(i + 1, i * R, 512));
    }
    let before = e.counters().held_advances;
    let out = step(&mut e, hydrate(1, 7..8));
    let out = step(&mut e, ok(hydrate_lowers(&out)[0]));
    lower_of(&out, 8);
    assert_eq!(e.counters().held_advances - before, 1, "one waiter woken");
    assert_eq!(e.held_count(), 399);
}

/// Item 12a: a write that claimed a region fails after the service's data for that
/// region was dropped; nobody waits, so the engine asks for it again.
#[test]
fn item12_a_region_whose_claiming_write_failed_is_asked_again() {
    let mut e = engine(8);
    let out = step(&mut e, write(1, 2 * R, R, false));
    let lower = lower_of(&out, 1);
    // The sweep's data for region 2 arrives while the write is at the device.
    let out = step(&mut e, hydrate(1, 2..3));
    assert_eq!(
        out,
        [Action::HydrateDone {
            batch: 1,
            status: Status::SUCCESS
        }]
    );
    let out = step(
        &mut e,
        Event::LowerCompleted {
            lower,
            status: Status::CANCELLED,
        },
    );
    assert!(!e.map().is_restored(2));
    assert_eq!(fetches(&out), [(2..3, false)]);
    assert_eq!(e.counters().regions_reasked, 1);
}

/// Item 12b: a request held before the engine's first tick is timed from that tick,
/// not from zero (a filter started late in a boot).
#[test]
fn item12_a_request_held_before_the_first_tick_is_timed_from_it() {
    let config = EngineConfig {
        hold_deadline_ns: 1_000,
        ..EngineConfig::default()
    };
    let mut e = engine_with(8, config);
    step(&mut e, read(1, 2 * R, 512));
    let out = step(&mut e, Event::Tick { now_ns: 60_000 });
    assert!(completions(&out).is_empty(), "held for no time yet");
    let out = step(&mut e, Event::Tick { now_ns: 61_000 });
    assert_eq!(completions(&out), [(1, Status::IO_TIMEOUT)]);
}

/// Item 12: a cancelled held request completes with CANCELLED; the regions asked only
/// for it are forgotten, and a later request behind it goes down.
#[test]
fn item12_a_cancelled_held_request_completes_and_frees_what_waited_behind_it() {
    let mut e = engine(8);
    step(&mut e, read(1, 2 * R, R));
    // A write over the same sectors waits behind the held read.
    let out = step(&mut e, write(2, 2 * R, R, false));
    assert_eq!(out, [Action::Hold { id: 2 }]);
    let out = step(&mut e, Event::Cancel { id: 1 });
    assert_eq!(completions(&out), [(1, Status::CANCELLED)]);
    lower_of(&out, 2);
    assert_eq!(e.requested_runs().count(), 0);
    assert_eq!(e.counters().requests_cancelled, 1);
    // Cancelling a request no longer held changes nothing.
    assert!(step(&mut e, Event::Cancel { id: 2 }).is_empty());
}
