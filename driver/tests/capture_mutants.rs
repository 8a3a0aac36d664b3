//! Each deliberate bug in write capture is caught by the capture's model (the rules in
//! `rehydrate_driver::capture::testing`), within a bounded number of seeds that the real
//! capture passes (the loop is `mutant_support::caught`).

mod mutant_support;

use rehydrate_driver::capture::testing::{ops_from_seed, run, HarnessConfig};
use rehydrate_driver::capture::CaptureMode;
use rehydrate_driver::mutants::Mutant;

fn config(seed: u64) -> HarnessConfig {
    HarnessConfig {
        mode: if seed % 2 == 0 {
            CaptureMode::Async
        } else {
            CaptureMode::Sync
        },
        buffer_max_bytes: (8 + (seed % 16) * 8) << 10,
        sectors: 64,
        region_size_bytes: 4096,
    }
}

/// Runs `mutant` over `seeds` of 300 operations each; returns the rules that caught it.
fn caught(mutant: Mutant, seeds: std::ops::Range<u64>) -> Vec<&'static str> {
    mutant_support::caught(
        mutant,
        seeds,
        |seed| {
            let c = config(seed);
            run(c, &ops_from_seed(seed, 300, c.sectors))
        },
        |v| v.rule,
    )
}

#[test]
fn mutant_sequence_at_dispatch_is_caught() {
    let rules = caught(Mutant::SequenceAtDispatch, 0..16);
    // A point replays writes that completed after its flush; and a write numbered at
    // dispatch that then fails leaves a hole the journal can never fill.
    assert!(rules.contains(&"point-content"), "{rules:?}");
    assert!(
        rules
            .iter()
            .all(|r| ["point-content", "progress"].contains(r)),
        "{rules:?}"
    );
}

#[test]
fn mutant_point_inside_unflushed_epoch_is_caught() {
    let rules = caught(Mutant::PointInsideUnflushedEpoch, 0..16);
    assert!(
        rules
            .iter()
            .all(|r| ["point-before-flush", "point-content", "listed-point"].contains(r)),
        "{rules:?}"
    );
    assert!(rules.contains(&"point-before-flush"), "{rules:?}");
}

#[test]
fn every_capture_mutant_is_named() {
    for m in Mutant::CAPTURE {
        assert_eq!(Mutant::from_name(m.name()), Some(m));
    }
}
