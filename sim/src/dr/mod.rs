//! Disaster recovery (technique T5) under simulation: `rehydrate-sim dr-sweep`.
//!
//! Each seed runs the real DR cores of `rehydrate_driver::dr` — the primary's sender
//! and the DR site's applier — as two sites in one seeded world ([`world`]): each over
//! a simulated data device with a volatile write cache, joined by an ordered link that
//! delays frames and loses them only by cuts ([`link`]). A client writes and flushes on
//! the primary while another reads the DR volume from the start of the initial sync.
//! The faults come from the same `--faults` names as the other sweeps:
//!
//! | fault | in the two-site world |
//! |---|---|
//! | `cache`, `torn` | both devices cache writes; power loss keeps, loses or tears them |
//! | `power-loss` | the primary or the DR site loses power and restarts |
//! | `service-kill` | the primary's or the DR's process dies and restarts (the device keeps its cache) |
//! | `media` | the primary's writes and region reads and the DR's local writes fail |
//! | `link-drop` | a frame is lost: the receiver's sequence check (or a timeout) ends the session |
//! | `link-reorder` | frames are delayed a lot (never reordered inside a session) |
//! | `link-disconnect` | the connection breaks; a new session resumes |
//! | `outage` | the connection stays down for long |
//!
//! (`link-corrupt` and `cancel` have no part here: the replication framing rides on
//! TCP, and the DR cores take no cancellation.) The oracle ([`oracle`]) checks the
//! rules at every step; after `--ops` client requests the faults stop and the run ends
//! once the sync finished and both volumes are compared.
//!
//! `--mutant NAME` selects one of the DR mutants ([`Mutant::DR`]) to show the oracle
//! catching it.

mod link;
pub mod oracle;
mod world;

#[cfg(test)]
mod tests;

use std::ops::Range;

use rehydrate_driver::mutants::Mutant;

use crate::faults::Faults;
use oracle::DrViolation;

/// What a seed drew.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DrShape {
    /// Regions of the volume.
    pub regions: u64,
    /// Region size.
    pub region_size_bytes: u32,
    /// Both devices cache writes.
    pub cache: bool,
    /// Typical device latency.
    pub device_latency_ns: u64,
    /// Stream items the DR applies at once.
    pub items_in_flight_max: usize,
}

/// What a run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DrCounters {
    /// Client requests issued (primary writes and flushes, DR reads).
    pub ops: u64,
    /// Events run.
    pub events: u64,
    /// Primary writes completed.
    pub writes: u64,
    /// DR reads checked.
    pub reads_checked: u64,
    /// Whole-volume DR reads at the end.
    pub whole_reads: u64,
    /// Primary power losses.
    pub primary_crashes: u64,
    /// DR power losses.
    pub dr_crashes: u64,
    /// Process kills, either site.
    pub kills: u64,
    /// Connections broken.
    pub cuts: u64,
    /// Sessions begun.
    pub sessions: u64,
    /// Sessions ended by the stream's bound.
    pub overflows: u64,
    /// Frames sent.
    pub frames: u64,
    /// Frames lost.
    pub frames_lost: u64,
    /// Failed device I/O.
    pub media_errors: u64,
    /// Fetches the DR asked.
    pub fetches: u64,
    /// Simulated time at the end.
    pub sim_ns: u64,
}

impl DrCounters {
    fn add(&mut self, o: &DrCounters) {
        self.ops += o.ops;
        self.events += o.events;
        self.writes += o.writes;
        self.reads_checked += o.reads_checked;
        self.whole_reads += o.whole_reads;
        self.primary_crashes += o.primary_crashes;
        self.dr_crashes += o.dr_crashes;
        self.kills += o.kills;
        self.cuts += o.cuts;
        self.sessions += o.sessions;
        self.overflows += o.overflows;
        self.frames += o.frames;
        self.frames_lost += o.frames_lost;
        self.media_errors += o.media_errors;
        self.fetches += o.fetches;
        self.sim_ns += o.sim_ns;
    }
}

/// One seed's result.
#[derive(Clone, Debug)]
pub struct DrOutcome {
    /// The seed.
    pub seed: u64,
    /// What it drew.
    pub shape: DrShape,
    /// What it did.
    pub counters: DrCounters,
    /// The first rule broken, if any.
    pub violation: Option<DrViolation>,
}

/// Runs one seed with `ops` client requests, the faults of `faults`, and `mutant`
/// selected. A panic in a core is that seed's failure.
pub fn run_seed(seed: u64, ops: u64, faults: Faults, mutant: Option<Mutant>) -> DrOutcome {
    crate::sim::with_mutant(mutant, || {
        let mut world = world::World::new(seed, ops, faults);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.run()));
        let violation = match result {
            Ok(Ok(())) => None,
            Ok(Err(v)) => Some(v),
            Err(p) => {
                let message = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Some(DrViolation {
                    rule: "panic",
                    time_ns: world.now_ns(),
                    detail: message,
                })
            }
        };
        world.finish_counters();
        DrOutcome {
            seed,
            shape: world.shape,
            counters: world.counters,
            violation,
        }
    })
}

/// What a sweep found.
#[derive(Debug, Default)]
pub struct DrSweep {
    /// Seeds run.
    pub seeds: u64,
    /// Totals over all seeds.
    pub totals: DrCounters,
    /// The failing seeds.
    pub failures: Vec<DrOutcome>,
    /// Wall-clock seconds.
    pub wall_secs: f64,
}

/// Runs every seed of `seeds`; `each` sees every outcome as it comes.
pub fn sweep(
    seeds: Range<u64>,
    ops: u64,
    faults: Faults,
    mutant: Option<Mutant>,
    mut each: impl FnMut(&DrOutcome),
) -> DrSweep {
    let start = std::time::Instant::now();
    let mut report = DrSweep::default();
    for seed in seeds {
        let o = run_seed(seed, ops, faults, mutant);
        report.seeds += 1;
        report.totals.add(&o.counters);
        each(&o);
        if o.violation.is_some() {
            report.failures.push(o);
        }
    }
    report.wall_secs = start.elapsed().as_secs_f64();
    report
}

/// `dr-sweep`.
#[derive(Debug, clap::Args)]
pub struct DrSweepArgs {
    /// Seeds to run, `A..B` (B excluded).
    #[arg(long, value_parser = crate::cli::parse_seeds)]
    pub seeds: Range<u64>,
    /// Client requests per seed (primary writes and flushes, DR reads).
    #[arg(long, default_value_t = 2_000)]
    pub ops: u64,
    /// Faults to inject: `all`, `none`, or a comma-separated list (see `sweep --help`;
    /// link-corrupt and cancel have no effect on two sites).
    #[arg(long, default_value = "all", value_parser = parse_faults)]
    pub faults: Faults,
    /// Select one of the DR mutants: mark-sent-after-read, fetch-reply-out-of-order,
    /// drop-replicated-write, stale-region-over-write.
    #[arg(long, value_parser = parse_dr_mutant)]
    pub mutant: Option<Mutant>,
    /// Print only failures and the summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print results as JSON lines.
    #[arg(long)]
    pub json: bool,
}

fn parse_faults(s: &str) -> Result<Faults, String> {
    Faults::parse(s).map_err(|e| e.to_string())
}

fn parse_dr_mutant(s: &str) -> Result<Mutant, String> {
    match Mutant::from_name(s) {
        Some(m) if Mutant::DR.contains(&m) => Ok(m),
        Some(m) => Err(format!(
            "mutant {} is not a disaster-recovery mutant: run it with sweep or overlay-sweep",
            m.name()
        )),
        None => {
            let names: Vec<_> = Mutant::DR.iter().map(|m| m.name()).collect();
            Err(format!(
                "unknown DR mutant {s:?} (known: {})",
                names.join(", ")
            ))
        }
    }
}

fn replay(o: &DrOutcome, args: &DrSweepArgs) -> String {
    let mutant = args
        .mutant
        .map(|m| format!(" --mutant {}", m.name()))
        .unwrap_or_default();
    format!(
        "rehydrate-sim dr-sweep --seeds {}..{} --ops {} --faults {}{mutant}",
        o.seed,
        o.seed + 1,
        args.ops,
        args.faults
    )
}

fn print_outcome(o: &DrOutcome, args: &DrSweepArgs) {
    let c = &o.counters;
    let result = o
        .violation
        .as_ref()
        .map_or_else(|| "ok".to_string(), |v| v.to_string());
    if args.json {
        let line = serde_json::json!({
            "seed": o.seed,
            "ok": o.violation.is_none(),
            "result": result,
            "counters": c,
            "shape": o.shape,
            "replay": replay(o, args),
        });
        println!("{line}");
    } else {
        println!(
            "seed={} ops={} writes={} reads_checked={} crashes={}/{} kills={} cuts={} frames_lost={} fetches={} sim_time={:.3}s regions={}x{} result={}",
            o.seed,
            c.ops,
            c.writes,
            c.reads_checked,
            c.primary_crashes,
            c.dr_crashes,
            c.kills,
            c.cuts,
            c.frames_lost,
            c.fetches,
            c.sim_ns as f64 / 1e9,
            o.shape.regions,
            o.shape.region_size_bytes,
            result
        );
        if o.violation.is_some() {
            println!("replay: {}", replay(o, args));
        }
    }
}

/// `rehydrate-sim dr-sweep`: a line per seed (only failures with `--quiet`), then
/// `dr-sweep: seeds=K ops=N violations=V reads_checked=R crashes=P/D cuts=C`.
pub fn run(args: &DrSweepArgs) -> Result<(), crate::cli::CliError> {
    // A violation is reported here, once, with its seed: not as a panic's backtrace.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let report = sweep(
        args.seeds.clone(),
        args.ops,
        args.faults,
        args.mutant,
        |o| {
            if !args.quiet || o.violation.is_some() {
                print_outcome(o, args);
            }
        },
    );
    std::panic::set_hook(hook);
    let t = &report.totals;
    println!(
        "dr-sweep: seeds={} ops={} violations={} reads_checked={} crashes={}/{} kills={} cuts={} wall_secs={:.1}",
        report.seeds,
        t.ops,
        report.failures.len(),
        t.reads_checked,
        t.primary_crashes,
        t.dr_crashes,
        t.kills,
        t.cuts,
        report.wall_secs
    );
    if report.failures.is_empty() {
        Ok(())
    } else {
        Err(crate::cli::CliError::SweepFailed(
            report.failures.len(),
            report.seeds,
        ))
    }
}
