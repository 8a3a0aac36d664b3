//! Model-based property test: random writes (any order of completion, failures),
//! flushes, marks, batches, acknowledgements, service restarts, read-backs and power
//! loss against the plain reference in [`super::testing`], in both modes and with
//! buffers small enough that held writes and gaps are common.

extern crate std;

use proptest::prelude::*;

use super::testing::{ops_from_seed, run, HarnessConfig, Report};
use super::CaptureMode;

fn config(mode: CaptureMode, buffer_kib: u64) -> HarnessConfig {
    HarnessConfig {
        mode,
        buffer_max_bytes: buffer_kib << 10,
        sectors: 64,
        region_size_bytes: 4096,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn async_capture_matches_the_reference(seed in any::<u64>(), kib in 8u64..128, ops in 50usize..400) {
        let c = config(CaptureMode::Async, kib);
        if let Err(v) = run(c, &ops_from_seed(seed, ops, c.sectors)) {
            prop_assert!(false, "seed {seed} kib {kib} ops {ops}: {v:?}");
        }
    }

    #[test]
    fn sync_capture_matches_the_reference(seed in any::<u64>(), kib in 8u64..128, ops in 50usize..400) {
        let c = config(CaptureMode::Sync, kib);
        if let Err(v) = run(c, &ops_from_seed(seed, ops, c.sectors)) {
            prop_assert!(false, "seed {seed} kib {kib} ops {ops}: {v:?}");
        }
    }
}

/// The runs above must exercise what they claim to: held writes in sync mode, gaps in
/// async mode, power losses, and points checked against the reference.
#[test]
fn the_model_runs_reach_holds_gaps_crashes_and_points() {
    let mut total = [Report::default(), Report::default()];
    for seed in 0..64 {
        for (i, mode) in [CaptureMode::Sync, CaptureMode::Async]
            .into_iter()
            .enumerate()
        {
            let c = config(mode, 8 + (seed % 16) * 8);
            let r = run(c, &ops_from_seed(seed, 300, c.sectors)).unwrap();
            total[i].held += r.held;
            total[i].gaps += r.gaps;
            total[i].crashes += r.crashes;
            total[i].points_checked += r.points_checked;
        }
    }
    let [sync, asynch] = total;
    assert!(sync.held > 0, "{sync:?}");
    assert!(asynch.gaps > 0, "{asynch:?}");
    assert!(sync.crashes > 0 && asynch.crashes > 0);
    assert!(
        sync.points_checked > 100 && asynch.points_checked > 100,
        "{sync:?} {asynch:?}"
    );
}
