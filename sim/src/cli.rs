//! The command line (DESIGN.md section 4).
//!
//! ```text
//! rehydrate-sim run   --seed N [--ops N] [--faults LIST] [--mutant NAME] [--journal sync|async] [--check-determinism] [--json]
//! rehydrate-sim sweep --seeds A..B [--ops N] [--faults LIST] [--mutant NAME] [--journal sync|async] [--jobs N] [--json]
//! rehydrate-sim overlay-sweep --seeds A..B [--ops N] [--mutant NAME]
//! rehydrate-sim dr-sweep --seeds A..B [--ops N] [--faults LIST] [--mutant NAME] [--quiet] [--json]
//! rehydrate-sim demo [--size 256MiB] [--seed N] [--keep] [--status-file PATH] [--json]
//! ```
//! `demo` ends with `demo: ok size=... secs=...` or `demo: FAILED <reason>`.
//! `sweep` ends with `sweep: seeds=K ops=N violations=V irps_per_sec=R`. Exit status 0
//! means no violation; anything else prints one line saying what went wrong, and a
//! failing seed prints the command that replays it.

use std::ops::Range;

use clap::{Args, Parser, Subcommand};
use rehydrate_driver::capture::CaptureMode;
use rehydrate_driver::mutants::Mutant;

use crate::faults::{Faults, FaultsError};
use crate::sim::{Outcome, RunConfig};

/// Deterministic simulation of the Windows storage stack around the Rehydrate filter.
///
/// Every run is driven by one seeded RNG: the same seed replays the same run exactly.
/// A failing run prints the command that replays it. Set REHYDRATE_SIM_TRACE=1 to print
/// the life of every file-system request on stderr.
#[derive(Debug, Parser)]
#[command(name = "rehydrate-sim", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one seed and check it.
    Run(RunArgs),
    /// Run a range of seeds and count violations.
    ///
    /// Each seed draws one machine restoring in place (the Windows filter's instant
    /// restore) with the default workload mix and the faults asked for, and runs the
    /// real driver or the one `--mutant` named. A sweep does not include a second mode
    /// or mutant set unless asked: write capture and the journal run only with
    /// `--journal` (and the capture and journal mutants only with it), the overlay
    /// restore has a sweep of its own (`overlay-sweep`); each seed is one run, never
    /// repeated with other variants.
    Sweep(SweepArgs),
    /// The end-to-end tour on embedded defaults: back up a volume image, serve it over
    /// NBD, boot the simulated stack on an empty disk and restore it with the real
    /// service while a workload runs; ends with `demo: ok ...`.
    Demo(crate::demo::DemoArgs),
    /// Run the overlay mode (T2) on a range of seeds with every fault and count
    /// violations; ends with `overlay-sweep: seeds=K ops=N violations=V`.
    OverlaySweep(crate::overlay::OverlaySweepArgs),
    /// Run disaster recovery (T5) on a range of seeds: a primary and a DR site in one
    /// world, joined by an ordered, lossy link, with crashes of either side and cuts;
    /// ends with `dr-sweep: seeds=K ops=N violations=V ...`.
    DrSweep(crate::dr::DrSweepArgs),
}

/// Settings shared by `run` and `sweep`.
#[derive(Debug, Args)]
pub struct Common {
    /// File-system requests per seed. 0 means no workload: the restore runs alone, then
    /// the shutdown flush and the final image check (the requests they make are counted).
    #[arg(long, default_value_t = 2000)]
    pub ops: u64,
    /// Faults to inject: `all`, `none`, or a comma-separated list of cache, torn, media,
    /// power-loss, link-drop, link-corrupt, link-reorder, link-disconnect, outage,
    /// service-kill, cancel.
    #[arg(long, default_value = "all", value_parser = parse_faults)]
    pub faults: Faults,
    /// Run the driver with a deliberate bug: commit-metadata-before-data-flush,
    /// mark-before-lower-write-completes, skip-fetch-for-partial-write,
    /// accept-stale-hydrate, lose-mark-on-torn-commit, forward-read-before-restored,
    /// fail-waiters-of-whole-range, keep-unwanted-requests, ask-every-missing-region,
    /// no-reask-after-failed-claim, hold-deadline-from-engine-start,
    /// complete-while-cancelable, flush-covers-later-marks,
    /// skip-fua-commit-when-unflushed; with --journal also the write-capture and journal
    /// mutants sequence-at-dispatch, point-inside-unflushed-epoch, torn-tail-applied
    /// (refused without it). The overlay mutants belong to overlay-sweep.
    #[arg(long, value_parser = parse_mutant)]
    pub mutant: Option<Mutant>,
    /// Protect the volume: capture every write into a journal, `sync` or `async`.
    #[arg(long, value_parser = parse_journal)]
    pub journal: Option<CaptureMode>,
    /// Print results as JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The seed.
    #[arg(long)]
    pub seed: u64,
    /// Run twice and compare the trace hashes.
    #[arg(long)]
    pub check_determinism: bool,
    /// Shared settings.
    #[command(flatten)]
    pub common: Common,
}

/// `sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Seeds to run, `A..B` (B excluded).
    #[arg(long, value_parser = parse_seeds)]
    pub seeds: Range<u64>,
    /// Print only failures and the summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Seeds run side by side (default: one per core). The outcomes, and the order
    /// they are printed in, do not depend on it.
    #[arg(long, short, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
    /// Shared settings.
    #[command(flatten)]
    pub common: Common,
}

/// Why the command line or a run failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A fault list did not parse.
    #[error(transparent)]
    Faults(#[from] FaultsError),
    /// The run broke a rule.
    #[error("seed {seed}: {violation}")]
    Violation {
        /// The seed.
        seed: u64,
        /// What broke.
        violation: String,
    },
    /// Two runs of one seed differed.
    #[error("seed {seed} is not deterministic: trace {first:#018x} then {second:#018x}")]
    Nondeterministic {
        /// The seed.
        seed: u64,
        /// First trace hash.
        first: u64,
        /// Second trace hash.
        second: u64,
    },
    /// Options that do not go together.
    #[error("{0}")]
    Usage(String),
    /// A sweep found violations.
    #[error("{0} of {1} seeds violated a rule")]
    SweepFailed(usize, u64),
    /// The demo failed.
    #[error("demo: {0}")]
    Demo(#[from] crate::demo::DemoError),
}

fn parse_faults(s: &str) -> Result<Faults, String> {
    Faults::parse(s).map_err(|e| e.to_string())
}

fn parse_mutant(s: &str) -> Result<Mutant, String> {
    match Mutant::from_name(s) {
        Some(m) if Mutant::OVERLAY.contains(&m) => Err(format!(
            "mutant {} is an overlay mutant: run it with overlay-sweep",
            m.name()
        )),
        Some(m) if Mutant::DR.contains(&m) => Err(format!(
            "mutant {} is a disaster-recovery mutant: run it with dr-sweep",
            m.name()
        )),
        Some(m) => Ok(m),
        None => {
            let names: Vec<&str> = Mutant::ALL
                .iter()
                .chain(&Mutant::CAPTURE)
                .map(|m| m.name())
                .collect();
            Err(format!(
                "unknown mutant {s:?} (known: {})",
                names.join(", ")
            ))
        }
    }
}

fn parse_journal(s: &str) -> Result<CaptureMode, String> {
    match s {
        "sync" => Ok(CaptureMode::Sync),
        "async" => Ok(CaptureMode::Async),
        _ => Err(format!("unknown journal mode {s:?} (known: sync, async)")),
    }
}

pub(crate) fn parse_seeds(s: &str) -> Result<Range<u64>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("seeds {s:?} are not A..B"))?;
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|e| format!("seed range start {a:?}: {e}"))?;
    let b: u64 = b
        .trim()
        .parse()
        .map_err(|e| format!("seed range end {b:?}: {e}"))?;
    if a >= b {
        return Err(format!("seed range {a}..{b} is empty"));
    }
    Ok(a..b)
}

/// Options that parse alone but not together.
fn check_common(c: &Common) -> Result<(), CliError> {
    match c.mutant {
        Some(m) if Mutant::CAPTURE.contains(&m) && c.journal.is_none() => {
            Err(CliError::Usage(format!(
                "mutant {} is a write-capture or journal mutant: it needs --journal sync|async",
                m.name()
            )))
        }
        _ => Ok(()),
    }
}

fn template(c: &Common, seed: u64) -> RunConfig {
    RunConfig {
        seed,
        ops: c.ops,
        faults: c.faults,
        mutant: c.mutant,
        workload: Default::default(),
        capture: c.journal,
    }
}

fn print_outcome(config: &RunConfig, o: &Outcome, json: bool) {
    let result = match &o.violation {
        None => "ok".to_string(),
        Some(v) => v.to_string(),
    };
    if json {
        println!(
            "{{\"seed\":{},\"ops\":{},\"irps\":{},\"dispatches\":{},\"boots\":{},\"sim_ns\":{},\"trace\":\"{:#018x}\",\"ok\":{},\"result\":{:?},\"shape\":{:?},\"replay\":{:?}}}",
            o.seed,
            o.ops_done,
            o.irps,
            o.dispatches,
            o.boots,
            o.sim_ns,
            o.trace,
            o.violation.is_none(),
            result,
            o.shape,
            config.replay_command()
        );
    } else {
        println!(
            "seed={} ops={} irps={} boots={} sim_time={:.3}s sectors_checked={} trace={:#018x} {} result={}",
            o.seed,
            o.ops_done,
            o.irps,
            o.boots,
            o.sim_ns as f64 / 1e9,
            o.sectors_checked,
            o.trace,
            o.shape,
            result
        );
        if o.violation.is_some() {
            println!("replay: {}", config.replay_command());
        }
    }
}

/// Runs the parsed command; `Err` is the one line to print.
pub fn execute(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::OverlaySweep(args) => crate::overlay::run(&args),
        Command::DrSweep(args) => crate::dr::run(&args),
        Command::Demo(args) if args.write_image.is_some() => crate::demo::write_image_only(&args)
            .map_err(|e| {
                println!("demo: FAILED {e}");
                e.into()
            }),
        Command::Demo(args) => match crate::demo::run(&args) {
            Ok(summary) => {
                println!(
                    "{}",
                    if args.json {
                        summary.json()
                    } else {
                        summary.line()
                    }
                );
                Ok(())
            }
            Err(e) => {
                println!("demo: FAILED {e}");
                Err(e.into())
            }
        },
        Command::Run(args) => {
            check_common(&args.common)?;
            let config = template(&args.common, args.seed);
            let outcome = crate::run(&config);
            print_outcome(&config, &outcome, args.common.json);
            if args.check_determinism {
                let again = crate::run(&config);
                if again.trace != outcome.trace || again.violation != outcome.violation {
                    return Err(CliError::Nondeterministic {
                        seed: args.seed,
                        first: outcome.trace,
                        second: again.trace,
                    });
                }
                println!(
                    "determinism: seed={} trace={:#018x} (two runs agree)",
                    args.seed, outcome.trace
                );
            }
            match outcome.violation {
                Some(v) => Err(CliError::Violation {
                    seed: args.seed,
                    violation: v.to_string(),
                }),
                None => Ok(()),
            }
        }
        Command::Sweep(args) => {
            check_common(&args.common)?;
            let config = template(&args.common, args.seeds.start);
            let (json, quiet) = (args.common.json, args.quiet);
            let jobs = args.jobs.map_or_else(
                || std::thread::available_parallelism().map_or(1, usize::from),
                usize::from,
            );
            let report = crate::sweep_on(jobs, args.seeds.clone(), &config, |c, o| {
                if !quiet || o.violation.is_some() {
                    print_outcome(c, o, json);
                }
            });
            println!(
                "sweep: seeds={} ops={} violations={} irps_per_sec={:.0}",
                report.seeds,
                report.ops,
                report.failures.len(),
                report.irps_per_sec()
            );
            if config.capture.is_some() {
                println!("journal: {}", report.journal.line());
            }
            if report.failures.is_empty() {
                Ok(())
            } else {
                Err(CliError::SweepFailed(report.failures.len(), report.seeds))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn arguments_parse_and_bad_ones_are_refused() {
        let cli = Cli::try_parse_from([
            "rehydrate-sim",
            "sweep",
            "--seeds",
            "3..7",
            "--faults",
            "torn,media",
        ])
        .unwrap();
        let Command::Sweep(s) = cli.command else {
            panic!()
        };
        assert_eq!(s.seeds, 3..7);
        assert!(s.common.faults.has(crate::Fault::Media));
        assert!(Cli::try_parse_from(["rehydrate-sim", "sweep", "--seeds", "7..3"]).is_err());
        assert!(
            Cli::try_parse_from(["rehydrate-sim", "run", "--seed", "1", "--faults", "bogus"])
                .is_err()
        );
        assert!(
            Cli::try_parse_from(["rehydrate-sim", "run", "--seed", "1", "--mutant", "nope"])
                .is_err()
        );
        let cli = Cli::try_parse_from([
            "rehydrate-sim",
            "run",
            "--seed",
            "1",
            "--mutant",
            "accept-stale-hydrate",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.common.mutant, Some(Mutant::AcceptStaleHydrate));
        let sweep_with = |m: Mutant, more: &[&str]| {
            let args = [
                &[
                    "rehydrate-sim",
                    "sweep",
                    "--seeds",
                    "0..1",
                    "--mutant",
                    m.name(),
                ][..],
                more,
            ]
            .concat();
            Cli::try_parse_from(args)
        };
        for m in Mutant::CAPTURE {
            let checked = |journal: &[&str]| {
                let Command::Sweep(s) = sweep_with(m, journal).unwrap().command else {
                    panic!()
                };
                check_common(&s.common)
            };
            let refused = checked(&[]).unwrap_err().to_string();
            assert!(refused.contains("needs --journal"), "{refused}");
            assert!(checked(&["--journal", "async"]).is_ok());
        }
        for m in Mutant::OVERLAY.into_iter().chain(Mutant::DR) {
            let refused = sweep_with(m, &[]).unwrap_err().to_string();
            assert!(
                refused.contains("overlay-sweep") || refused.contains("dr-sweep"),
                "{refused}"
            );
        }
    }

    #[test]
    fn dr_sweep_takes_the_dr_mutants_and_refuses_the_others_in_one_line() {
        let dr_sweep = |more: &[&str]| {
            let args = [&["rehydrate-sim", "dr-sweep", "--seeds", "0..3"][..], more].concat();
            Cli::try_parse_from(args)
        };
        let Command::DrSweep(a) = dr_sweep(&["--quiet", "--json"]).unwrap().command else {
            panic!()
        };
        assert_eq!(a.seeds, 0..3);
        assert_eq!(
            (a.ops, a.faults, a.mutant),
            (2_000, crate::Faults::all(), None)
        );
        assert!(a.quiet && a.json);
        for m in Mutant::DR {
            let Command::DrSweep(a) = dr_sweep(&["--mutant", m.name()]).unwrap().command else {
                panic!()
            };
            assert_eq!(a.mutant, Some(m));
        }
        for m in Mutant::ALL.into_iter().chain(Mutant::OVERLAY) {
            let refused = dr_sweep(&["--mutant", m.name()]).unwrap_err().to_string();
            assert!(
                refused.contains("not a disaster-recovery mutant"),
                "{refused}"
            );
        }
        assert!(dr_sweep(&["--faults", "bogus"]).is_err());
    }

    #[test]
    fn sweep_help_says_what_a_sweep_includes() {
        let mut cli = Cli::command();
        let help = cli
            .find_subcommand_mut("sweep")
            .expect("sweep")
            .render_long_help()
            .to_string();
        assert!(help.contains("does not include a second mode"), "{help}");
        assert!(help.contains("0 means no workload"), "{help}");
    }

    #[test]
    fn ops_0_runs_the_restore_alone_and_checks_it() {
        let cli =
            Cli::try_parse_from(["rehydrate-sim", "run", "--seed", "5", "--ops", "0"]).unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        let config = template(&r.common, r.seed);
        let outcome = crate::run(&config);
        assert!(outcome.violation.is_none(), "{:?}", outcome.violation);
        assert!(outcome.irps > 0, "the restore ran");
    }
}
