//! Unit tests of the overlay mode's rules, one by one, by the actions they cause.

extern crate std;

use alloc::sync::Arc;
use std::vec::Vec;

use super::{
    MergeRefused, MergeStart, OverlayConfig, OverlayEngine, OverlayPin, Record, State, OWN_LOWER,
};
use crate::engine::{Action, Event, LowerId, Target};
use crate::geometry::Geometry;
use crate::meta::{NamedMap, TARGET_ID_BYTES};
use crate::region::RegionMap;
use crate::status::Status;

const REGION: u64 = 4096;

fn engine(regions: u64, restored: core::ops::Range<u64>, state: State) -> OverlayEngine {
    engine_with(regions, restored, state, OverlayConfig::default())
}

fn engine_with(
    regions: u64,
    restored: core::ops::Range<u64>,
    state: State,
    config: OverlayConfig,
) -> OverlayEngine {
    let geometry = Geometry::new(regions * REGION, 4096).unwrap();
    let d = Arc::new(RegionMap::new(geometry).unwrap());
    d.mark_range(restored);
    let o = Arc::new(NamedMap::new(geometry).unwrap());
    let record = Record {
        state,
        overlay: OverlayPin {
            kind: 1,
            size_bytes: regions * REGION,
            id: [1; TARGET_ID_BYTES],
        },
    };
    OverlayEngine::new(d, o, record, config).unwrap()
}

fn handle(e: &mut OverlayEngine, event: Event) -> Vec<Action> {
    let mut out = Vec::new();
    e.handle(event, &mut out);
    out
}

fn done(e: &mut OverlayEngine, lower: LowerId) -> Vec<Action> {
    handle(
        e,
        Event::LowerCompleted {
            lower,
            status: Status::SUCCESS,
        },
    )
}

/// The lower handle of the one action of the wanted shape.
fn lower_of(actions: &[Action], pick: impl Fn(&Action) -> Option<LowerId>) -> LowerId {
    let found: Vec<LowerId> = actions.iter().filter_map(pick).collect();
    assert_eq!(found.len(), 1, "{actions:?}");
    found[0]
}

/// Writes region `r` wholly and completes it: the region is in O (in memory).
fn write_region(e: &mut OverlayEngine, id: u64, r: u64) {
    let out = handle(
        e,
        Event::Write {
            id,
            offset: r * REGION,
            len: REGION,
            fua: false,
        },
    );
    let lower = lower_of(&out, |a| match a {
        Action::Piece {
            target: Target::Overlay,
            lower,
            ..
        } => Some(*lower),
        _ => None,
    });
    let out = done(e, lower);
    assert!(out.contains(&Action::Complete {
        id,
        status: Status::SUCCESS
    }));
    assert!(e.overlay_map().is_restored(r));
}

#[test]
fn a_read_is_split_into_pieces_per_device() {
    let mut e = engine(4, 0..4, State::Pseudo);
    write_region(&mut e, 1, 1);
    let out = handle(
        &mut e,
        Event::Read {
            id: 2,
            offset: 512,
            len: 3 * REGION - 1024,
        },
    );
    let pieces: Vec<(Target, u64, u64)> = out
        .iter()
        .filter_map(|a| match a {
            Action::Piece {
                id: 2,
                target,
                offset,
                len,
                ..
            } => Some((*target, *offset, *len)),
            _ => None,
        })
        .collect();
    assert_eq!(
        pieces,
        [
            (Target::Overlay, REGION, REGION),
            (Target::Destination, 512, REGION - 512),
            (Target::Destination, 2 * REGION, REGION - 512),
        ],
        "{out:?}"
    );
    assert!(!out.iter().any(|a| matches!(a, Action::Hold { .. })));
}

#[test]
fn a_partial_write_fills_its_region_from_the_destination_first() {
    let mut e = engine(4, 0..4, State::Pseudo);
    let out = handle(
        &mut e,
        Event::Write {
            id: 1,
            offset: 2 * REGION + 512,
            len: 512,
            fua: false,
        },
    );
    assert_eq!(out[0], Action::Hold { id: 1 });
    let copy = lower_of(&out, |a| match a {
        Action::Copy {
            lower,
            from: Target::Destination,
            to: Target::Overlay,
            offset,
            len: REGION,
        } if *offset == 2 * REGION => Some(*lower),
        _ => None,
    });
    assert!(
        !out.iter().any(|a| matches!(a, Action::Piece { .. })),
        "the write waits for the fill"
    );
    let out = done(&mut e, copy);
    assert!(e.overlay_map().is_restored(2), "the filled region is in O");
    assert!(
        out.contains(&Action::Piece {
            id: 1,
            lower: OWN_LOWER | 1,
            target: Target::Overlay,
            offset: 2 * REGION + 512,
            len: 512
        }),
        "{out:?}"
    );
}

#[test]
fn a_partial_write_to_a_missing_region_fetches_it_into_the_destination_then_fills() {
    let mut e = engine(4, 0..0, State::Pseudo);
    let out = handle(
        &mut e,
        Event::Write {
            id: 1,
            offset: 512,
            len: 512,
            fua: false,
        },
    );
    assert!(out.contains(&Action::Fetch {
        regions: 0..1,
        on_demand: true
    }));
    let out = handle(
        &mut e,
        Event::Hydrate {
            batch: 1,
            offset: 0,
            len: REGION,
            zero: false,
        },
    );
    let hydrate = lower_of(&out, |a| match a {
        Action::WriteHydrate { lower, .. } => Some(*lower),
        _ => None,
    });
    let out = done(&mut e, hydrate);
    assert!(e.map().is_restored(0));
    let copy = lower_of(&out, |a| match a {
        Action::Copy {
            lower,
            from: Target::Destination,
            ..
        } => Some(*lower),
        _ => None,
    });
    let out = done(&mut e, copy);
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Piece {
            id: 1,
            target: Target::Overlay,
            ..
        }
    )));
}

#[test]
fn writes_go_to_the_overlay_and_o_reaches_the_metadata_only_after_an_overlay_flush() {
    let mut e = engine(4, 0..4, State::Pseudo);
    write_region(&mut e, 1, 3);
    assert!(!e.durable_overlay_map().is_marked(3), "not before a flush");
    let out = handle(&mut e, Event::Flush { id: 2 });
    let flush = lower_of(&out, |a| match a {
        Action::FlushOverlay { lower } => Some(*lower),
        _ => None,
    });
    assert!(
        !e.durable_overlay_map().is_marked(3),
        "not while the flush is at the device"
    );
    let out = done(&mut e, flush);
    assert!(e.durable_overlay_map().is_marked(3));
    assert_eq!(
        out,
        [Action::CommitMetadata { commit: 1 }],
        "the flush waits for the commit"
    );
    let out = handle(
        &mut e,
        Event::MetadataCommitted {
            commit: 1,
            ok: true,
        },
    );
    assert_eq!(
        out,
        [Action::Complete {
            id: 2,
            status: Status::SUCCESS
        }]
    );
}

#[test]
fn a_cutover_is_refused_while_the_destination_is_incomplete_and_changes_nothing() {
    let mut e = engine(8, 0..5, State::Pseudo);
    write_region(&mut e, 1, 6);
    let mut out = Vec::new();
    assert_eq!(
        e.merge(false, &mut out),
        Err(MergeRefused::Incomplete {
            missing_regions: 3,
            total_regions: 8
        })
    );
    assert!(out.is_empty());
    assert_eq!(e.record().state, State::Pseudo);
    assert!(!e.is_merging());
    // Restored but not durably: refused too, with its own reason.
    let mut e = engine(2, 0..1, State::Pseudo);
    let out = handle(
        &mut e,
        Event::Hydrate {
            batch: 1,
            offset: REGION,
            len: REGION,
            zero: true,
        },
    );
    let hydrate = lower_of(&out, |a| match a {
        Action::WriteHydrate { lower, .. } => Some(*lower),
        _ => None,
    });
    done(&mut e, hydrate);
    let mut out = Vec::new();
    assert_eq!(e.merge(true, &mut out), Err(MergeRefused::NotDurable));
    assert!(out.is_empty());
}

/// Runs the engine's I/O and commits until it is quiet; returns what it said.
fn run_out(e: &mut OverlayEngine, pending: Vec<Action>) -> Vec<Action> {
    let mut pending: std::collections::VecDeque<Action> = pending.into();
    let mut said = Vec::new();
    for _ in 0..1000 {
        let Some(action) = pending.pop_front() else {
            return said;
        };
        let next = match &action {
            Action::Piece { lower, .. }
            | Action::Copy { lower, .. }
            | Action::FlushOverlay { lower }
            | Action::FlushDown { lower } => done(e, *lower),
            Action::CommitMetadata { commit } => handle(
                e,
                Event::MetadataCommitted {
                    commit: *commit,
                    ok: true,
                },
            ),
            _ => Vec::new(),
        };
        said.push(action);
        pending.extend(next);
    }
    panic!("did not settle");
}

#[test]
fn the_cutover_copies_o_flushes_the_destination_then_commits_merged() {
    let mut e = engine(4, 0..4, State::Pseudo);
    write_region(&mut e, 1, 1);
    write_region(&mut e, 2, 2);
    let mut out = Vec::new();
    assert_eq!(e.merge(false, &mut out), Ok(MergeStart::Started));
    let said = run_out(&mut e, out);
    let copy = said
        .iter()
        .position(|a| matches!(a, Action::Copy { from: Target::Overlay, to: Target::Destination, offset, len, .. } if *offset == REGION && *len == 2 * REGION))
        .expect("O copied into the destination");
    let seal = said
        .iter()
        .position(|a| matches!(a, Action::CommitMetadata { .. }))
        .unwrap();
    let flush = said
        .iter()
        .position(|a| matches!(a, Action::FlushDown { .. }))
        .unwrap();
    let merged = said.iter().position(|a| *a == Action::Merged).unwrap();
    assert!(seal < copy && copy < flush && flush < merged, "{said:?}");
    assert!(e.is_merged() && e.is_passthrough());
    assert_eq!(e.durable_state(), State::Merged);
    // From now on the volume is the destination.
    let out = handle(
        &mut e,
        Event::Write {
            id: 3,
            offset: 512,
            len: 512,
            fua: false,
        },
    );
    assert!(matches!(
        out[..],
        [Action::Piece {
            id: 3,
            target: Target::Destination,
            offset: 512,
            len: 512,
            ..
        }]
    ));
    let mut again = Vec::new();
    assert_eq!(e.merge(true, &mut again), Ok(MergeStart::AlreadyMerged));
    assert!(again.is_empty());
}

#[test]
fn the_offline_cutover_holds_new_requests_until_merged() {
    let mut e = engine(2, 0..2, State::Pseudo);
    write_region(&mut e, 1, 0);
    let mut out = Vec::new();
    e.merge(false, &mut out).unwrap();
    let held = handle(
        &mut e,
        Event::Read {
            id: 2,
            offset: 0,
            len: 512,
        },
    );
    assert_eq!(held, [Action::Hold { id: 2 }]);
    let said = run_out(&mut e, out);
    let merged = said.iter().position(|a| *a == Action::Merged).unwrap();
    let read = said
        .iter()
        .position(|a| {
            matches!(
                a,
                Action::Piece {
                    id: 2,
                    target: Target::Destination,
                    ..
                }
            )
        })
        .expect("the held read goes to the destination after the merge");
    assert!(merged < read);
}

#[test]
fn trims_are_dropped_before_the_cutover() {
    let mut e = engine(2, 0..2, State::Pseudo);
    let out = handle(
        &mut e,
        Event::Discard {
            id: 1,
            offset: 0,
            len: 2 * REGION,
        },
    );
    assert_eq!(
        out,
        [Action::Complete {
            id: 1,
            status: Status::SUCCESS
        }]
    );
    assert_eq!(e.counters().trims_dropped, 1);
}

#[test]
fn requests_past_the_bound_are_refused() {
    let config = OverlayConfig {
        requests_max: 2,
        ..OverlayConfig::default()
    };
    let mut e = engine_with(4, 0..0, State::Pseudo, config);
    for id in 1..=2 {
        let out = handle(
            &mut e,
            Event::Read {
                id,
                offset: 0,
                len: 512,
            },
        );
        assert!(out.contains(&Action::Hold { id }));
    }
    let out = handle(
        &mut e,
        Event::Read {
            id: 3,
            offset: 0,
            len: 512,
        },
    );
    assert_eq!(
        out,
        [Action::Complete {
            id: 3,
            status: Status::INSUFFICIENT_RESOURCES
        }]
    );
}

#[test]
fn a_merged_restore_is_a_pass_through_on_the_destination() {
    let mut e = engine(2, 0..2, State::Merged);
    assert!(e.is_merged() && e.is_passthrough());
    let out = handle(
        &mut e,
        Event::Read {
            id: 1,
            offset: 0,
            len: 2 * REGION,
        },
    );
    assert!(matches!(
        out[..],
        [Action::Piece {
            id: 1,
            target: Target::Destination,
            offset: 0,
            len: 8192,
            ..
        }]
    ));
    let out = handle(&mut e, Event::Flush { id: 2 });
    assert!(matches!(out[..], [Action::FlushDown { .. }]), "{out:?}");
}
