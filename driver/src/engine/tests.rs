//! One test per engine rule, with exact actions.

extern crate std;

use alloc::sync::Arc;
use std::vec;
use std::vec::Vec;

use super::*;
use crate::geometry::Geometry;
use crate::status::{FailReason, Status};

const R: u64 = 4096;

pub(super) fn engine(regions: u64) -> Engine {
    let map = Arc::new(RegionMap::new(Geometry::new(regions * R, 4096).unwrap()).unwrap());
    Engine::new(map, EngineConfig::default())
}

pub(super) fn step(e: &mut Engine, event: Event) -> Vec<Action> {
    let mut out = Vec::new();
    e.handle(event, &mut out);
    out
}

pub(super) fn lower_of(actions: &[Action], want: RequestId) -> LowerId {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Forward { id, lower } if *id == want => Some(*lower),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{want} not forwarded in {actions:?}"))
}

fn hydrate_writes(actions: &[Action]) -> Vec<(LowerId, u64, u64, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::WriteHydrate {
                lower,
                offset,
                len,
                zero,
                ..
            } => Some((*lower, *offset, *len, *zero)),
            _ => None,
        })
        .collect()
}

/// The success completion of request `id`.
fn done(id: RequestId) -> Vec<Action> {
    vec![Action::Complete {
        id,
        status: Status::SUCCESS,
    }]
}

/// The engine flush among `actions`.
fn flush_down_of(actions: &[Action]) -> LowerId {
    actions
        .iter()
        .find_map(|a| match a {
            Action::FlushDown { lower } => Some(*lower),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no engine flush in {actions:?}"))
}

/// Performs commit `commit` the way a shell does and reports success.
fn commit_ok(e: &mut Engine, commit: u64) -> Vec<Action> {
    e.take_flushed_marks(|_| {});
    step(e, Event::MetadataCommitted { commit, ok: true })
}

pub(super) fn read(id: RequestId, offset: u64, len: u64) -> Event {
    Event::Read { id, offset, len }
}

fn write(id: RequestId, offset: u64, len: u64) -> Event {
    Event::Write {
        id,
        offset,
        len,
        fua: false,
    }
}

fn hydrate(batch: BatchId, offset: u64, len: u64) -> Event {
    Event::Hydrate {
        batch,
        offset,
        len,
        zero: false,
    }
}

pub(super) fn ok(lower: LowerId) -> Event {
    Event::LowerCompleted {
        lower,
        status: Status::SUCCESS,
    }
}

/// Hydrates regions `regions` and completes their writes; returns nothing.
fn restore(e: &mut Engine, regions: core::ops::Range<u64>, batch: BatchId) {
    let out = step(
        e,
        Event::Hydrate {
            batch,
            offset: regions.start * R,
            len: (regions.end - regions.start) * R,
            zero: false,
        },
    );
    for (lower, ..) in hydrate_writes(&out) {
        step(e, ok(lower));
    }
}

#[test]
fn a_read_of_restored_regions_is_forwarded_at_once() {
    let mut e = engine(8);
    restore(&mut e, 0..2, 1);
    let out = step(&mut e, read(7, 512, 6 * 1024));
    assert_eq!(
        out,
        vec![Action::Forward {
            id: 7,
            lower: lower_of(&out, 7)
        }]
    );
}

#[test]
fn a_missing_region_is_fetched_once_however_many_reads_wait() {
    let mut e = engine(8);
    let a = step(&mut e, read(1, 2 * R, 512));
    let b = step(&mut e, read(2, 2 * R + 1024, 512));
    assert_eq!(
        a,
        vec![
            Action::Hold { id: 1 },
            Action::Fetch {
                regions: 2..3,
                on_demand: true
            }
        ]
    );
    assert_eq!(b, vec![Action::Hold { id: 2 }]);
    assert_eq!(e.counters().misses_regions, 1);
}

#[test]
fn a_held_read_goes_down_only_after_the_hydrate_write_completes() {
    let mut e = engine(8);
    step(&mut e, read(1, 3 * R, R));
    let out = step(&mut e, hydrate(9, 3 * R, R));
    let writes = hydrate_writes(&out);
    assert_eq!(writes.len(), 1);
    assert!(
        !out.iter().any(|a| matches!(a, Action::Forward { .. })),
        "read before data landed"
    );
    assert!(
        !e.map().is_restored(3),
        "marked before the lower write completed"
    );
    let out = step(&mut e, ok(writes[0].0));
    assert!(e.map().is_restored(3));
    assert!(out.contains(&Action::HydrateDone {
        batch: 9,
        status: Status::SUCCESS
    }));
    lower_of(&out, 1);
}

#[test]
fn a_write_covering_whole_regions_needs_no_fetch_and_marks_on_completion() {
    let mut e = engine(8);
    let out = step(&mut e, write(1, 2 * R, 3 * R));
    let lower = lower_of(&out, 1);
    assert!(!out.iter().any(|a| matches!(a, Action::Fetch { .. })));
    assert!(!e.map().is_restored(2));
    // Hydrate data racing the write is dropped: the write is newer.
    let stale = step(&mut e, hydrate(4, 2 * R, 3 * R));
    assert_eq!(
        stale,
        vec![Action::HydrateDone {
            batch: 4,
            status: Status::SUCCESS
        }]
    );
    assert_eq!(e.counters().stale_regions_dropped, 3);
    let out = step(&mut e, ok(lower));
    assert_eq!(out[0], done(1)[0]);
    assert!(e.map().is_range_restored(2..5));
}

#[test]
fn an_unaligned_write_fetches_only_its_head_and_tail_regions() {
    let mut e = engine(16);
    // Sectors from the middle of region 1 to the middle of region 5.
    let out = step(&mut e, write(1, R + 1024, 4 * R));
    let fetched: Vec<_> = out
        .iter()
        .filter_map(|a| match a {
            Action::Fetch { regions, .. } => Some(regions.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(fetched, vec![1..2, 5..6]);
    assert_eq!(out[0], Action::Hold { id: 1 });
    restore(&mut e, 1..2, 1);
    let out = step(&mut e, hydrate(2, 5 * R, R));
    let w = hydrate_writes(&out);
    let out = step(&mut e, ok(w[0].0));
    let lower = lower_of(&out, 1);
    let out = step(&mut e, ok(lower));
    assert_eq!(out[0], done(1)[0]);
    assert!(e.map().is_range_restored(1..6));
}

#[test]
fn writes_to_a_region_being_fetched_go_down_after_it_in_arrival_order() {
    let mut e = engine(8);
    step(&mut e, write(1, R + 512, 512));
    let second = step(&mut e, write(2, R + 512, 1024));
    assert_eq!(second, vec![Action::Hold { id: 2 }]);
    // A read of the same sectors queues behind both.
    step(&mut e, read(3, R, R));
    let out = step(&mut e, hydrate(1, R, R));
    let out = step(&mut e, ok(hydrate_writes(&out)[0].0));
    let first = lower_of(&out, 1);
    assert!(
        !out.iter()
            .any(|a| matches!(a, Action::Forward { id: 2 | 3, .. })),
        "{out:?}"
    );
    let out = step(&mut e, ok(first));
    let second = lower_of(&out, 2);
    assert!(!out
        .iter()
        .any(|a| matches!(a, Action::Forward { id: 3, .. })));
    let out = step(&mut e, ok(second));
    lower_of(&out, 3);
}

#[test]
fn hydrate_data_for_restored_or_in_flight_regions_is_dropped() {
    let mut e = engine(8);
    restore(&mut e, 0..1, 1);
    let out = step(&mut e, hydrate(2, 0, 3 * R));
    // Region 0 restored: dropped; regions 1..3 written in one piece.
    assert_eq!(
        hydrate_writes(&out)
            .iter()
            .map(|w| (w.1, w.2))
            .collect::<Vec<_>>(),
        vec![(R, 2 * R)]
    );
    // The same data again while it is in flight: dropped.
    let dup = step(&mut e, hydrate(3, R, R));
    assert_eq!(
        dup,
        vec![Action::HydrateDone {
            batch: 3,
            status: Status::SUCCESS
        }]
    );
}

#[test]
fn a_zero_fill_hydrate_restores_without_payload() {
    let mut e = engine(4);
    step(&mut e, read(1, 0, 4 * R));
    let out = step(
        &mut e,
        Event::Hydrate {
            batch: 1,
            offset: 0,
            len: 4 * R,
            zero: true,
        },
    );
    let w = hydrate_writes(&out);
    assert_eq!(w, vec![(w[0].0, 0, 4 * R, true)]);
    let out = step(&mut e, ok(w[0].0));
    lower_of(&out, 1);
    assert!(e.map().is_all_restored());
}

#[test]
fn a_fetch_failure_fails_exactly_the_requests_that_need_the_range() {
    let mut e = engine(8);
    step(&mut e, read(1, 2 * R, 512));
    step(&mut e, read(2, 4 * R, 512));
    // A whole-region write of the failed region needs no data: unaffected.
    step(&mut e, write(3, 6 * R, R));
    let out = step(
        &mut e,
        Event::FetchFailed {
            offset: 2 * R,
            len: R,
            reason: FailReason::Unreachable,
        },
    );
    assert_eq!(
        out,
        vec![Action::Complete {
            id: 1,
            status: Status::IO_TIMEOUT
        }]
    );
    assert_eq!(e.held_count(), 1);
    assert!(!e.map().is_restored(2));
    // The region can be asked for again by the next reader.
    let again = step(&mut e, read(4, 2 * R, 512));
    assert!(again.contains(&Action::Fetch {
        regions: 2..3,
        on_demand: true
    }));
}

#[test]
fn a_flush_completes_only_after_the_metadata_commit_is_durable() {
    let mut e = engine(4);
    restore(&mut e, 0..1, 1);
    let out = step(&mut e, Event::Flush { id: 5 });
    let lower = lower_of(&out, 5);
    let out = step(&mut e, ok(lower));
    assert_eq!(out, vec![Action::CommitMetadata { commit: 1 }]);
    let mut marks = Vec::new();
    e.take_flushed_marks(|r| marks.push(r));
    assert_eq!(marks, vec![0..1]);
    e.prepare_durable_view();
    assert_eq!(e.durable_word(0), 1);
    let out = step(
        &mut e,
        Event::MetadataCommitted {
            commit: 1,
            ok: true,
        },
    );
    assert_eq!(out, done(5));
}

#[test]
fn unflushed_marks_are_hidden_from_the_durable_view() {
    let mut e = engine(130);
    restore(&mut e, 0..70, 1);
    e.prepare_durable_view();
    assert_eq!(e.map().word(0), u64::MAX);
    assert_eq!(e.durable_word(0), 0);
    assert_eq!(e.durable_word(1), 0);
}

#[test]
fn a_failed_commit_fails_the_flush() {
    let mut e = engine(4);
    restore(&mut e, 0..1, 1);
    let out = step(&mut e, Event::Flush { id: 5 });
    step(&mut e, ok(lower_of(&out, 5)));
    let out = step(
        &mut e,
        Event::MetadataCommitted {
            commit: 1,
            ok: false,
        },
    );
    assert_eq!(
        out,
        vec![Action::Complete {
            id: 5,
            status: Status::IO_DEVICE_ERROR
        }]
    );
}

#[test]
fn a_trim_of_whole_regions_marks_them_without_fetching() {
    let mut e = engine(8);
    let out = step(
        &mut e,
        Event::Discard {
            id: 1,
            offset: R - 512,
            len: 2 * R + 1024,
        },
    );
    assert!(!out.iter().any(|a| matches!(a, Action::Fetch { .. })));
    step(&mut e, ok(lower_of(&out, 1)));
    assert!(e.map().is_range_restored(1..3));
    assert!(!e.map().is_restored(0) && !e.map().is_restored(3));
}

#[test]
fn all_restored_is_said_once_after_it_is_durable() {
    let mut e = engine(2);
    let out = step(&mut e, hydrate(1, 0, 2 * R));
    let out = step(&mut e, ok(hydrate_writes(&out)[0].0));
    let flush = flush_down_of(&out);
    assert!(!e.is_passthrough());
    let out = step(&mut e, ok(flush));
    assert_eq!(out, vec![Action::CommitMetadata { commit: 1 }]);
    let out = commit_ok(&mut e, 1);
    assert_eq!(out, vec![Action::AllRestored]);
    assert!(e.is_passthrough());
    assert!(step(
        &mut e,
        Event::Tick {
            now_ns: 5_000_000_000
        }
    )
    .is_empty());
}

#[test]
fn each_bad_request_gets_its_status_and_changes_nothing() {
    let mut e = engine(8);
    let cases = [
        (read(1, 100, 512), Status::INVALID_PARAMETER),
        (write(2, 0, 700), Status::INVALID_PARAMETER),
        (read(3, 512, 0), Status::INVALID_BUFFER_SIZE),
        (
            Event::Discard {
                id: 4,
                offset: u64::MAX - 511,
                len: 1024,
            },
            Status::INTEGER_OVERFLOW,
        ),
        (read(5, 8 * R, 512), Status::NONEXISTENT_SECTOR),
        (
            Event::Write {
                id: 6,
                offset: 7 * R,
                len: 2 * R,
                fua: true,
            },
            Status::NONEXISTENT_SECTOR,
        ),
    ];
    for (event, status) in cases {
        let id = match event {
            Event::Read { id, .. } | Event::Write { id, .. } | Event::Discard { id, .. } => id,
            _ => unreachable!(),
        };
        assert_eq!(step(&mut e, event), vec![Action::Complete { id, status }]);
    }
    assert_eq!(e.held_count(), 0);
    assert_eq!(e.map().restored_count(), 0);
    assert_eq!(e.counters().misses_regions, 0);
}

#[test]
fn a_misaligned_hydrate_is_refused() {
    let mut e = engine(8);
    for (offset, len) in [(512, R), (0, R + 512), (0, 0), (7 * R, 2 * R)] {
        let out = step(
            &mut e,
            Event::Hydrate {
                batch: 1,
                offset,
                len,
                zero: false,
            },
        );
        assert_eq!(
            out,
            vec![Action::HydrateDone {
                batch: 1,
                status: Status::INVALID_PARAMETER
            }]
        );
    }
    assert_eq!(e.map().restored_count(), 0);
}

#[test]
fn a_held_request_past_the_deadline_times_out() {
    let mut e = engine(8);
    step(&mut e, Event::Tick { now_ns: 1 });
    step(&mut e, read(1, 0, 512));
    let deadline = EngineConfig::default().hold_deadline_ns;
    assert!(step(&mut e, Event::Tick { now_ns: deadline }).is_empty());
    let out = step(
        &mut e,
        Event::Tick {
            now_ns: deadline + 1,
        },
    );
    assert_eq!(
        out,
        vec![Action::Complete {
            id: 1,
            status: Status::IO_TIMEOUT
        }]
    );
}

#[test]
fn too_many_held_requests_are_refused_not_queued() {
    let map = Arc::new(RegionMap::new(Geometry::new(64 * R, 4096).unwrap()).unwrap());
    let mut e = Engine::new(
        map,
        EngineConfig {
            held_max: 2,
            ..EngineConfig::default()
        },
    );
    step(&mut e, read(1, 0, 512));
    step(&mut e, read(2, R, 512));
    let out = step(&mut e, read(3, 2 * R, 512));
    assert_eq!(
        out,
        vec![Action::Complete {
            id: 3,
            status: Status::INSUFFICIENT_RESOURCES
        }]
    );
}

#[test]
fn a_fua_write_completes_only_when_its_regions_are_durably_marked() {
    let mut e = engine(4);
    let out = step(
        &mut e,
        Event::Write {
            id: 1,
            offset: 0,
            len: R,
            fua: true,
        },
    );
    let out = step(&mut e, ok(lower_of(&out, 1)));
    let flush = flush_down_of(&out);
    assert!(!out.iter().any(|a| matches!(a, Action::Complete { .. })));
    let out = step(&mut e, ok(flush));
    assert_eq!(out, vec![Action::CommitMetadata { commit: 1 }]);
    let out = commit_ok(&mut e, 1);
    assert_eq!(out, done(1));
}

#[test]
fn a_service_restart_asks_again_for_what_it_lost() {
    let mut e = engine(8);
    step(&mut e, read(1, 3 * R, 2 * R));
    let out = step(&mut e, Event::ServiceAttached);
    assert_eq!(
        out,
        vec![Action::Fetch {
            regions: 3..5,
            on_demand: true
        }]
    );
    assert_eq!(e.counters().misses_regions, 2);
}

#[test]
fn removal_fails_every_held_request_and_nothing_else() {
    let mut e = engine(8);
    step(&mut e, read(1, 0, 512));
    step(&mut e, read(2, 3 * R, 512));
    let forwarded = step(&mut e, write(3, 5 * R, R));
    let out = step(&mut e, Event::Remove);
    assert_eq!(
        out,
        vec![
            Action::Complete {
                id: 1,
                status: Status::DEVICE_NOT_READY
            },
            Action::Complete {
                id: 2,
                status: Status::DEVICE_NOT_READY
            },
        ]
    );
    assert_eq!(e.held_count(), 0);
    // The write already at the lower device completes as usual.
    let out = step(&mut e, ok(lower_of(&forwarded, 3)));
    assert_eq!(out, done(3));
}

#[test]
fn no_pass_through_while_a_request_is_still_sequenced() {
    // A write held behind the fetch of its head region, then a read of the same sectors
    // held behind the write: when the last region is restored and durable the read is
    // still waiting for the write, so the filter must not start forwarding blindly.
    let mut e = engine(1);
    step(&mut e, write(1, 512, 512));
    step(&mut e, read(2, 0, R));
    let out = step(&mut e, hydrate(1, 0, R));
    let out = step(&mut e, ok(hydrate_writes(&out)[0].0));
    let write_lower = lower_of(&out, 1);
    let out = step(&mut e, ok(flush_down_of(&out)));
    assert_eq!(out, vec![Action::CommitMetadata { commit: 1 }]);
    let out = commit_ok(&mut e, 1);
    assert!(!out.contains(&Action::AllRestored), "{out:?}");
    assert!(!e.is_passthrough());
    let out = step(&mut e, ok(write_lower));
    let read_lower = lower_of(&out, 2);
    step(&mut e, ok(read_lower));
    let out = step(&mut e, Event::Tick { now_ns: 1 });
    assert_eq!(out, vec![Action::AllRestored]);
}
