//! One test per policy; the model tests check the same rules on random schedules.

use rehydrate_driver::FailReason;

use super::testkit::Harness;
use super::*;

const REGION: u64 = 4096;

fn config(fetch_regions: u64, in_flight: usize) -> HydratorConfig {
    HydratorConfig {
        fetch_size_bytes: fetch_regions * REGION,
        in_flight_max: in_flight,
        background_floor_slots: 0,
        scan_ahead_bytes: fetch_regions * REGION,
        ..HydratorConfig::default()
    }
}

#[test]
fn the_sweep_restores_everything_in_ascending_coalesced_fetches() {
    let mut t = Harness::new(100, config(8, 2));
    t.tick(1);
    assert_eq!(t.pending_fetches.len(), 2, "both slots used");
    t.run_to_end();
    assert!(t.all_restored());
    let starts: Vec<u64> = t.fetch_log.iter().map(|f| f.1).collect();
    assert!(
        starts.windows(2).all(|w| w[0] < w[1]),
        "ascending: {starts:?}"
    );
    assert!(t.fetch_log.iter().all(|f| f.2 - f.1 <= 8));
    assert_eq!(t.fetch_log.len(), 13, "100 regions in fetches of 8");
    assert!(t.h.is_idle());
    let p = t.h.progress();
    assert_eq!(p.fetched_bytes, 100 * REGION);
    assert_eq!(p.restored_bytes, 100 * REGION);
}

#[test]
fn restored_regions_are_never_fetched() {
    let mut t = Harness::new(64, config(8, 4));
    for r in (0..64).filter(|r| r % 3 != 0) {
        t.restored[r as usize] = true;
    }
    t.tick(1);
    t.run_to_end();
    assert!(t.all_restored());
    for &(_, s, e, _) in &t.fetch_log {
        assert!(
            (s..e).all(|r| r % 3 == 0),
            "fetched a restored region in {s}..{e}"
        );
    }
    let p = t.h.progress();
    assert_eq!(p.fetched_bytes, 22 * REGION);
    assert_eq!(p.restored_at_start_bytes, 42 * REGION);
}

#[test]
fn a_miss_takes_the_next_free_slot_before_queued_background_work() {
    let mut t = Harness::new(1000, config(4, 2));
    t.tick(1);
    assert_eq!(t.pending_fetches.len(), 2, "slots full of background");
    t.miss(500..501);
    assert_eq!(t.pending_fetches.len(), 2, "no slot yet");
    let first = t.first_pending_fetch().unwrap();
    t.complete(first);
    let last = *t.fetch_log.last().unwrap();
    assert_eq!(
        (last.1, last.2, last.3),
        (500, 501, true),
        "the miss got the freed slot"
    );
}

#[test]
fn a_miss_for_a_region_in_flight_is_attached_not_fetched_again() {
    let mut t = Harness::new(64, config(8, 1));
    t.tick(1);
    assert_eq!(t.fetch_log.len(), 1);
    let (id, s, e, _) = t.fetch_log[0];
    t.miss(s + 2..e);
    assert_eq!(t.fetch_log.len(), 1, "no second fetch");
    t.complete(id);
    // While it is being written it is still busy.
    t.miss(s..s + 1);
    assert!(
        t.fetch_log.iter().skip(1).all(|f| f.1 >= e),
        "{:?}",
        t.fetch_log
    );
}

#[test]
fn scan_ahead_fetches_the_regions_past_a_miss_before_the_sweep_goes_on() {
    let mut t = Harness::new(4096, config(8, 1));
    t.tick(1);
    let (id, ..) = t.fetch_log[0];
    t.miss(2000..2001);
    t.complete(id);
    let b = *t.pending_hydrates.keys().next().unwrap();
    t.ack(b, true);
    // The miss went first, then the scan-ahead window just past it.
    let order: Vec<(u64, u64, bool)> = t.fetch_log.iter().map(|f| (f.1, f.2, f.3)).collect();
    assert_eq!(order[1], (2000, 2001, true));
    let next = t.first_pending_fetch().unwrap();
    t.complete(next);
    let b = *t.pending_hydrates.keys().next().unwrap();
    t.ack(b, true);
    let order: Vec<(u64, u64, bool)> = t.fetch_log.iter().map(|f| (f.1, f.2, f.3)).collect();
    assert_eq!(order[2], (2001, 2009, false), "scan-ahead: {order:?}");
    // Scan-ahead skips regions already restored.
    t.restored[2010] = true;
    let before = t.fetch_log.len();
    t.miss(2009..2010);
    while let Some(id) = t.first_pending_fetch() {
        t.complete(id);
        for b in t.pending_hydrates.keys().copied().collect::<Vec<_>>() {
            t.ack(b, true);
        }
        if t.fetch_log.len() >= before + 2 {
            break;
        }
    }
    let order: Vec<(u64, u64, bool)> = t.fetch_log[before..]
        .iter()
        .map(|f| (f.1, f.2, f.3))
        .collect();
    assert_eq!(&order[..2], &[(2009, 2010, true), (2011, 2018, false)]);
}

#[test]
fn holes_become_zero_fill_hydrates_without_payload() {
    let mut t = Harness::new(16, config(16, 1));
    t.holes.extend([4, 5, 6, 7]);
    t.tick(1);
    let id = t.first_pending_fetch().unwrap();
    t.last.clear();
    t.complete(id);
    let hydrates: Vec<_> = t
        .last
        .iter()
        .filter_map(|o| match o {
            Output::Hydrate {
                offset,
                len,
                zero,
                payload,
                ..
            } => Some((*offset / REGION, *len / REGION, *zero, payload.is_some())),
            _ => None,
        })
        .collect();
    assert_eq!(
        hydrates,
        vec![
            (0, 4, false, true),
            (4, 4, true, false),
            (8, 8, false, true)
        ]
    );
    let p = t.h.progress();
    assert_eq!((p.fetched_bytes, p.zero_bytes), (12 * REGION, 4 * REGION));
}

#[test]
fn transient_failures_back_off_then_fail_exactly_the_range_after_the_deadline() {
    let mut c = config(4, 1);
    c.deadline_ns = 1_000_000_000;
    c.backoff_initial_ns = 10_000_000;
    c.backoff_max_ns = 200_000_000;
    let mut t = Harness::new(8, c);
    t.tick(1);
    let (id, s, e, _) = t.fetch_log[0];
    let mut delays = Vec::new();
    let mut tries = 0;
    loop {
        t.fail(id, FetchError::Transient);
        if !t.failures.is_empty() {
            break;
        }
        let at = t.h.next_wakeup_ns().expect("a retry is scheduled");
        delays.push(at - t.now_ns);
        t.tick(at - t.now_ns);
        assert!(t.pending_fetches.contains_key(&id), "retried");
        tries += 1;
        assert!(tries < 100);
    }
    assert!(t.now_ns >= 1_000_000_000, "not before the deadline");
    assert_eq!(
        t.failures,
        vec![(s * REGION, (e - s) * REGION, FailReason::Unreachable)]
    );
    assert!(
        delays.windows(2).take(3).all(|w| w[1] > w[0] / 2),
        "backoff grows: {delays:?}"
    );
    assert!(delays.iter().all(|&d| d <= 200_000_000));
    assert_eq!(t.h.progress().failures, 1);
}

#[test]
fn corrupt_data_is_retried_then_failed_as_corrupt() {
    let mut c = config(4, 1);
    c.corrupt_retries = 2;
    let mut t = Harness::new(8, c);
    t.tick(1);
    let (id, s, e, _) = t.fetch_log[0];
    for _ in 0..3 {
        t.fail(id, FetchError::Corrupt);
        assert_eq!(
            t.h.last_error(id),
            if t.failures.is_empty() {
                Some(FetchError::Corrupt)
            } else {
                None
            }
        );
        if let Some(at) = t.h.next_wakeup_ns() {
            t.tick(at - t.now_ns);
        }
    }
    assert_eq!(
        t.failures,
        vec![(s * REGION, (e - s) * REGION, FailReason::Corrupt)]
    );
    assert_eq!(t.h.progress().retries, 2);
}

#[test]
fn a_range_the_source_lacks_fails_at_once() {
    let mut t = Harness::new(8, config(4, 1));
    t.tick(1);
    let (id, ..) = t.fetch_log[0];
    t.fail(id, FetchError::OutOfRange);
    assert_eq!(t.failures.len(), 1);
    assert_eq!(t.failures[0].2, FailReason::OutOfRange);
}

#[test]
fn malformed_segments_count_as_corrupt() {
    let mut t = Harness::new(8, config(4, 1));
    t.tick(1);
    let (id, ..) = t.fetch_log[0];
    t.pending_fetches.remove(&id);
    let bad = [Segment {
        offset: 0,
        len: 512,
        zero: false,
    }];
    t.feed(Input::Fetched {
        fetch: id,
        segments: &bad,
    });
    assert_eq!(t.h.last_error(id), Some(FetchError::Corrupt));
}

#[test]
fn the_background_rate_limit_paces_the_sweep_but_not_misses() {
    let mut c = config(1, 4);
    c.background_rate_bytes_per_sec = Some(4 * REGION); // four regions a second
    let mut t = Harness::new(64, c);
    t.tick(1);
    let issued = t.fetch_log.len();
    assert!(issued <= 2, "burst bounded: {issued}");
    for id in t.pending_fetches.keys().copied().collect::<Vec<_>>() {
        t.complete(id);
    }
    for b in t.pending_hydrates.keys().copied().collect::<Vec<_>>() {
        t.ack(b, true);
    }
    t.miss(40..41);
    assert!(
        t.fetch_log.iter().any(|f| f.1 == 40 && f.3),
        "a miss is never paced"
    );
    // One simulated second lets about four more background regions through.
    let before = t.fetch_log.iter().filter(|f| !f.3).count();
    for _ in 0..10 {
        t.tick(100_000_000);
        for id in t.pending_fetches.keys().copied().collect::<Vec<_>>() {
            t.complete(id);
        }
        for b in t.pending_hydrates.keys().copied().collect::<Vec<_>>() {
            t.ack(b, true);
        }
    }
    let after = t.fetch_log.iter().filter(|f| !f.3).count();
    assert!((3..=6).contains(&(after - before)), "{before} -> {after}");
}

#[test]
fn the_background_floor_keeps_a_slot_under_constant_misses() {
    let mut c = config(1, 4);
    c.background_floor_slots = 1;
    let mut t = Harness::new(10_000, c);
    t.tick(1);
    for id in t.pending_fetches.keys().copied().collect::<Vec<_>>() {
        t.complete(id);
    }
    let mut next_miss = 5000;
    for _ in 0..200 {
        // Keep more misses queued than there are slots.
        while t.h.progress().on_demand_queued < 8 {
            t.miss(next_miss..next_miss + 1);
            next_miss += 7;
        }
        if let Some(id) = t.first_pending_fetch() {
            t.complete(id);
        }
        for b in t.pending_hydrates.keys().copied().collect::<Vec<_>>() {
            t.ack(b, true);
        }
    }
    let background = t.fetch_log.iter().filter(|f| !f.3).count();
    let on_demand = t.fetch_log.len() - background;
    assert!(
        background >= 40,
        "background starved: {background} of {}",
        t.fetch_log.len()
    );
    assert!(on_demand >= 100, "misses served: {on_demand}");
}

#[test]
fn a_full_on_demand_queue_fails_the_new_miss_instead_of_growing() {
    let mut t = Harness::new(100_000, config(1, 1));
    t.tick(1);
    for i in 0..ON_DEMAND_QUEUE_MAX as u64 + 1 {
        t.miss(50_000 + 2 * i..50_001 + 2 * i);
    }
    assert_eq!(t.failures.len(), 1);
    assert_eq!(t.failures[0].2, FailReason::Other);
}

#[test]
fn regions_acknowledged_while_a_page_is_asked_for_are_not_planned_again() {
    let mut t = Harness::new(256, config(8, 2));
    t.answer_now = false;
    t.miss(10..11);
    t.miss(100..108);
    // Serve both misses while the sweep's page (a snapshot taken before) is outstanding.
    for id in t.pending_fetches.keys().copied().collect::<Vec<_>>() {
        t.complete(id);
    }
    for b in t.pending_hydrates.keys().copied().collect::<Vec<_>>() {
        t.ack(b, true);
    }
    t.run_to_end();
    assert!(t.all_restored());
    let mut seen = std::collections::BTreeSet::new();
    for &(_, s, e, _) in &t.fetch_log {
        for r in s..e {
            assert!(seen.insert(r), "region {r} fetched twice");
        }
    }
}

#[test]
fn a_failed_hydrate_leaves_its_regions_for_a_later_pass() {
    let mut t = Harness::new(8, config(8, 1));
    t.tick(1);
    let id = t.first_pending_fetch().unwrap();
    t.complete(id);
    let b = *t.pending_hydrates.keys().next().unwrap();
    t.ack(b, false);
    t.run_to_end();
    assert!(t.all_restored());
    assert_eq!(t.h.progress().hydrate_failures, 1);
}

#[test]
fn the_partial_last_region_is_fetched_to_the_volume_end() {
    let g = rehydrate_driver::Geometry::new(10 * REGION + 3584, 4096).unwrap();
    let mut t = Harness::with_geometry(g, config(4, 2));
    t.tick(1);
    t.run_to_end();
    assert!(t.all_restored());
    assert_eq!(t.h.progress().fetched_bytes, 10 * REGION + 3584);
}

#[test]
fn bad_configurations_are_refused() {
    let g = rehydrate_driver::Geometry::new(1 << 20, 4096).unwrap();
    let bad = [
        HydratorConfig {
            fetch_size_bytes: 6000,
            ..HydratorConfig::default()
        },
        HydratorConfig {
            fetch_size_bytes: 16 << 20,
            ..HydratorConfig::default()
        },
        HydratorConfig {
            in_flight_max: 0,
            ..HydratorConfig::default()
        },
        HydratorConfig {
            in_flight_max: 4,
            background_floor_slots: 4,
            ..HydratorConfig::default()
        },
        HydratorConfig {
            background_rate_bytes_per_sec: Some(0),
            ..HydratorConfig::default()
        },
    ];
    for c in bad {
        assert!(Hydrator::new(g, c).is_err(), "{c:?}");
    }
}

/// Completes pending fetches (freeing their slots) until `region` is fetched after the
/// first `from` fetches, or nothing is pending.
fn fetch_until(t: &mut Harness, from: usize, region: u64) {
    for _ in 0..100 {
        if t.fetch_log[from..]
            .iter()
            .any(|f| f.1 <= region && region < f.2)
        {
            return;
        }
        let Some(id) = t.first_pending_fetch() else {
            return;
        };
        t.complete(id);
    }
}

/// The driver asks again for a region whose hydrate it has (it dropped that data: a
/// write was overwriting the region, then failed). The ask is not absorbed by the
/// hydrate in flight: the region is fetched again once the hydrate is acknowledged.
#[test]
fn a_region_asked_again_while_its_hydrate_is_with_the_driver_is_fetched_again() {
    let mut t = Harness::new(16, config(1, 8));
    t.miss(3..4);
    let id = t.first_pending_fetch().unwrap();
    t.complete(id);
    let batch = *t.pending_hydrates.keys().next().unwrap();
    // The driver dropped the data, and asks again before acknowledging.
    t.miss(3..4);
    assert!(t.h.tracks(3..4), "the ask is remembered");
    let fetches = t.fetch_log.len();
    t.ack(batch, true);
    t.restored[3] = false;
    fetch_until(&mut t, fetches, 3);
    assert!(
        t.fetch_log[fetches..]
            .iter()
            .any(|f| f.1 <= 3 && 3 < f.2 && f.3),
        "region 3 fetched again, on demand: {:?}",
        &t.fetch_log[fetches..]
    );
}

/// A hydrate the driver refuses (no room) is fetched again soon, not left to a sweep.
#[test]
fn a_refused_hydrate_is_fetched_again() {
    let mut t = Harness::new(16, config(1, 8));
    t.miss(5..6);
    let id = t.first_pending_fetch().unwrap();
    t.complete(id);
    let batch = *t.pending_hydrates.keys().next().unwrap();
    let fetches = t.fetch_log.len();
    t.ack(batch, false);
    assert!(t.h.tracks(5..6));
    fetch_until(&mut t, fetches, 5);
    // As soon as a slot is free, ahead of the sweep.
    assert_eq!(
        t.fetch_log.get(fetches).map(|f| (f.1, f.2)),
        Some((5, 6)),
        "{:?}",
        &t.fetch_log[fetches..]
    );
}
