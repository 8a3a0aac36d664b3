//! The overlay mode (technique T2) under simulation: `rehydrate-sim overlay-sweep`.
//!
//! Each seed runs the driver's overlay engine on a bench of three devices — the
//! overlay and the destination, each with a volatile write cache, and the backup —
//! with the real metadata (restore map D, overlay map O and the mode's record) over a
//! store that tears commits. The workload mixes reads and writes of any size and
//! alignment, FUA, flushes and trims on the pseudo-volume with restore traffic, failing
//! lower I/O and fetches (odd seeds), power loss with both caches, service restarts,
//! and cutovers (online or held) asked for at any time; it ends by restoring, merging
//! and reading back the whole volume. The bench's oracle checks, at every step:
//! * every read of the pseudo-volume returns the newest acknowledged write, else the
//!   backup's data;
//! * before the cutover, every restored destination region holds only backup data;
//! * an O mark never precedes durable overlay data, and committed marks never revert;
//! * a cutover is refused while D is incomplete, and then changes nothing;
//! * after the merge the destination equals the pseudo-volume byte for byte, durably.
//!
//! A broken rule is a violation naming its seed; `--mutant NAME` selects one of the
//! overlay mode's deliberate bugs ([`Mutant::OVERLAY`]) to show the oracle catching it.

use std::ops::Range;

use rehydrate_driver::engine::overlay::workload::run_seed;
use rehydrate_driver::mutants::Mutant;

/// `overlay-sweep`.
#[derive(Debug, clap::Args)]
pub struct OverlaySweepArgs {
    /// Seeds to run, `A..B` (B excluded).
    #[arg(long, value_parser = crate::cli::parse_seeds)]
    pub seeds: Range<u64>,
    /// Steps per seed.
    #[arg(long, default_value_t = 3_000)]
    pub ops: usize,
    /// Select one of the overlay mode's deliberate bugs.
    #[arg(long, value_parser = parse_overlay_mutant)]
    pub mutant: Option<Mutant>,
}

fn parse_overlay_mutant(s: &str) -> Result<Mutant, String> {
    Mutant::OVERLAY
        .into_iter()
        .find(|m| m.name() == s)
        .ok_or_else(|| {
            let names: Vec<_> = Mutant::OVERLAY.iter().map(|m| m.name()).collect();
            format!("unknown overlay mutant {s:?} (known: {})", names.join(", "))
        })
}

/// What a sweep found.
#[derive(Debug, Default)]
pub struct OverlaySweep {
    /// Seeds run.
    pub seeds: u64,
    /// Steps run, over all seeds.
    pub ops: u64,
    /// Each violating seed with the rule it broke.
    pub violations: Vec<(u64, String)>,
}

/// Runs `seeds` with `ops` steps each, `mutant` selected throughout.
pub fn sweep(seeds: Range<u64>, ops: usize, mutant: Option<Mutant>) -> OverlaySweep {
    let mut report = OverlaySweep::default();
    for seed in seeds {
        // run_seed catches its own panics: the switch is always set back.
        let result = crate::sim::with_mutant(mutant, || run_seed(seed, ops));
        report.seeds += 1;
        report.ops += ops as u64;
        if let Err(why) = result {
            report.violations.push((seed, why));
        }
    }
    report
}

/// `rehydrate-sim overlay-sweep`: one line per violation, then
/// `overlay-sweep: seeds=K ops=N violations=V`.
pub fn run(args: &OverlaySweepArgs) -> Result<(), crate::cli::CliError> {
    // A violation is reported here, once, with its seed: not as a panic's backtrace.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let report = sweep(args.seeds.clone(), args.ops, args.mutant);
    std::panic::set_hook(hook);
    for (seed, why) in &report.violations {
        let mutant = args
            .mutant
            .map(|m| format!(" --mutant {}", m.name()))
            .unwrap_or_default();
        println!(
            "seed {seed}: {why}\n  replay: rehydrate-sim overlay-sweep --seeds {seed}..{} --ops {}{mutant}",
            seed + 1,
            args.ops
        );
    }
    println!(
        "overlay-sweep: seeds={} ops={} violations={}",
        report.seeds,
        report.ops,
        report.violations.len()
    );
    if report.violations.is_empty() {
        Ok(())
    } else {
        Err(crate::cli::CliError::SweepFailed(
            report.violations.len(),
            report.seeds,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlay_mode_with_every_fault_breaks_no_rule() {
        let report = sweep(0..12, 2_000, None);
        assert_eq!(report.seeds, 12);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
    }

    #[test]
    fn each_overlay_mutant_is_caught_by_the_oracle() {
        for mutant in Mutant::OVERLAY {
            let report = sweep(0..16, 3_000, Some(mutant));
            let (seed, why) = report
                .violations
                .first()
                .unwrap_or_else(|| panic!("{} was not caught", mutant.name()));
            assert!(
                why.starts_with("model:"),
                "{}: seed {seed} failed an engine assertion, not a rule: {why}",
                mutant.name()
            );
        }
    }

    #[test]
    fn only_overlay_mutants_are_named() {
        assert_eq!(
            parse_overlay_mutant("mark-overlay-before-flush"),
            Ok(Mutant::MarkOverlayBeforeFlush)
        );
        assert!(parse_overlay_mutant("accept-stale-hydrate").is_err());
    }
}
