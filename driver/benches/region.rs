//! Hot-path costs of the region map and the engine on a 1 TiB volume at 4 KiB regions.
//!
//! Run: `cargo bench -p rehydrate-driver --bench region`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use rehydrate_driver::engine::{Action, Engine, EngineConfig, Event};
use rehydrate_driver::{Geometry, RegionMap, Status};

const TIB: u64 = 1 << 40;

/// A 1 TiB map with every region restored but one in a hundred (spread by a fixed LCG).
fn one_percent_missing() -> RegionMap {
    let geometry = Geometry::new(TIB, 4096).unwrap();
    let map = RegionMap::new(geometry).unwrap();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut region = 0;
    while region < map.region_count() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Gaps average 100 regions: 99 restored then one missing.
        let run = 1 + (state >> 33) % 197;
        let end = (region + run).min(map.region_count());
        map.mark_range(region..end);
        region = end + 1;
    }
    map
}

fn benches(c: &mut Criterion) {
    let map = Arc::new(one_percent_missing());
    let geometry = *map.geometry();
    // A restored 4 KiB range to read.
    let hit_region = (1u64 << 27..).find(|&r| map.is_restored(r)).unwrap();
    let hit_offset = hit_region * 4096;

    c.bench_function("read_hit_decision_1tib", |b| {
        b.iter(|| {
            let offset = black_box(hit_offset);
            geometry.check(offset, 4096).is_ok()
                && map.is_range_restored(geometry.regions_touched(offset, 4096))
        })
    });

    let mut engine = Engine::new(map.clone(), EngineConfig::default());
    let mut out = Vec::with_capacity(8);
    let mut id = 0;
    c.bench_function("engine_read_hit_forward_and_complete_1tib", |b| {
        b.iter(|| {
            id += 1;
            out.clear();
            engine.handle(
                Event::Read {
                    id,
                    offset: black_box(hit_offset),
                    len: 4096,
                },
                &mut out,
            );
            let Some(Action::Forward { lower, .. }) = out.first().cloned() else {
                panic!("not a hit: {out:?}");
            };
            out.clear();
            engine.handle(
                Event::LowerCompleted {
                    lower,
                    status: Status::SUCCESS,
                },
                &mut out,
            );
        })
    });

    c.bench_function("all_restored_fast_path", |b| {
        let full = RegionMap::new(Geometry::new(1 << 30, 4096).unwrap()).unwrap();
        full.mark_range(0..full.region_count());
        b.iter(|| black_box(&full).is_all_restored())
    });

    let fresh = RegionMap::new(geometry).unwrap();
    let mut next = 0u64;
    c.bench_function("mark_region_1tib", |b| {
        b.iter(|| {
            next = (next + 7919) % fresh.region_count();
            fresh.mark(black_box(next))
        })
    });

    c.bench_function("first_missing_from_start_1tib_1pct_missing", |b| {
        b.iter(|| map.first_missing_from(black_box(0)))
    });
    // The worst case for the search: the missing 1% all at the end, found from 0.
    let tail = RegionMap::new(geometry).unwrap();
    tail.mark_range(0..tail.region_count() / 100 * 99);
    c.bench_function("first_missing_from_start_1tib_last_1pct_missing", |b| {
        b.iter(|| tail.first_missing_from(black_box(0)))
    });
    c.bench_function("first_missing_walk_1000_1tib_1pct_missing", |b| {
        b.iter(|| {
            let mut from = black_box(1u64 << 26);
            for _ in 0..1000 {
                from = map.first_missing_from(from).unwrap() + 1;
            }
            from
        })
    });
}

criterion_group!(region, benches);
criterion_main!(region);
