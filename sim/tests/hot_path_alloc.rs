//! The simulator's hot path does not allocate per IRP: a counting global allocator
//! (this test binary's own) compares the allocations of one seed run with N requests
//! and with 2N; the difference per IRP of the difference is what each further IRP
//! costs, once every pool, slab and interval map has grown to its working size.
//!
//! What is left is not per IRP: while a seed is still restoring, the service plans
//! each fetch into a fresh list of segments (`usermode-service`'s hydrator) and
//! decodes each message it gets from the filter into a buffer of its own, about one
//! allocation per fifty IRPs. Once restored (seed 1 here), under one per five hundred.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use rehydrate_sim::workload::WorkloadConfig;
use rehydrate_sim::{run, Faults, RunConfig};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations and IRPs of one run.
fn measure(config: &RunConfig) -> (u64, u64) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let outcome = run(config);
    assert!(outcome.violation.is_none(), "{:?}", outcome.violation);
    (ALLOCATIONS.load(Ordering::Relaxed) - before, outcome.irps)
}

/// Allocations per IRP of the requests past the first `ops` (same seed, same shape).
fn marginal(seed: u64, ops: u64, faults: Faults, workload: WorkloadConfig) -> f64 {
    let config = |ops| RunConfig {
        workload,
        ..RunConfig::new(seed, ops, faults)
    };
    let (a1, i1) = measure(&config(ops));
    let (a2, i2) = measure(&config(2 * ops));
    assert!(i2 > i1, "more requests, more IRPs ({i1} then {i2})");
    let per_irp = a2.saturating_sub(a1) as f64 / (i2 - i1) as f64;
    println!("seed {seed} {faults}: {a1} allocations for {i1} IRPs, {a2} for {i2}: {per_irp:.4} per further IRP");
    per_irp
}

#[test]
fn further_irps_allocate_nothing_on_the_hot_path() {
    // Restored early: the stack, the filter and the oracle alone.
    let per_irp = marginal(1, 5_000, Faults::NONE, WorkloadConfig::default());
    assert!(per_irp < 0.005, "{per_irp:.4} allocations per IRP");
    // Still restoring: fetches too.
    for seed in [2, 3] {
        let per_irp = marginal(seed, 5_000, Faults::NONE, WorkloadConfig::default());
        assert!(
            per_irp < 0.03,
            "seed {seed}: {per_irp:.4} allocations per IRP"
        );
    }
}
