//! The world of a run, shaped like TigerBeetle's VOPR (a cluster of replicas, a network
//! and a checker): the machines, the links that join each machine's service to the
//! backup server (each link serves the run's one backup), the clock, and the run-level
//! checks.
//!
//! **The clock.** Each machine keeps its own queue of events; the world runs, one event
//! at a time, the machine whose next event is earliest (the first on a tie), so every
//! machine's time moves forward in one global order and a seed replays exactly. A
//! machine that is done (shut down after its checks) runs nothing more. After
//! every event the world delivers each machine's upcalls, checks that everything can
//! still make progress (`judge.rs`), and moves each machine between its phases.
//!
//! Today a run has one machine; the world is where a second one (a disaster-recovery
//! site) and the links between machines go.

use crate::demo::realtime::LinkServer;
use crate::link::Link;
use crate::machine::{Drawn, Machine};
use crate::sim::{DemoMachine, Outcome, RunConfig};
use crate::verifier::Rule;

/// The machines and what lies between them.
pub(crate) struct World {
    machines: Vec<Machine>,
    /// `links[i]` joins machine `i`'s service to the backup server.
    links: Vec<Link>,
    /// Simulated time past which a run that has not ended has hung.
    time_cap_ns: u64,
    /// Steps run so far (paces the costlier liveness checks).
    steps: u64,
}

impl World {
    /// The world of run `config`: one machine drawn from its seed.
    pub(crate) fn new(config: &RunConfig) -> World {
        let time_cap_ns = config
            .ops
            .saturating_mul(50_000_000)
            .saturating_add(7_200_000_000_000);
        World::of(Machine::draw(config), time_cap_ns)
    }

    /// The demo's world: its machine, with the service outside in real time.
    pub(crate) fn demo(m: &DemoMachine, server: LinkServer) -> World {
        let time_cap_ns = m
            .ops_max
            .saturating_mul(50_000_000)
            .saturating_add(7_200_000_000_000);
        World::of(Machine::demo(m, server), time_cap_ns)
    }

    fn of(drawn: Drawn, time_cap_ns: u64) -> World {
        World {
            machines: vec![drawn.machine],
            links: vec![drawn.link],
            time_cap_ns,
            steps: 0,
        }
    }

    /// Machine `i`.
    pub(crate) fn machine(&self, i: usize) -> &Machine {
        &self.machines[i]
    }

    /// The demo's outside service, when the run is over.
    pub(crate) fn take_server(&mut self) -> Option<LinkServer> {
        self.machines.first_mut().and_then(|m| m.ext.take())
    }

    fn failed(&self) -> bool {
        self.machines.iter().any(Machine::failed)
    }

    fn all_done(&self) -> bool {
        self.machines.iter().all(Machine::is_done)
    }

    /// Runs every machine to its end (or the first failure anywhere).
    pub(crate) fn run(&mut self) {
        for m in &mut self.machines {
            if !m.power_on() {
                return;
            }
        }
        // Bounded: every iteration runs one event of one machine, and the cap on
        // simulated time stops a run whose events never end.
        loop {
            for (m, link) in self.machines.iter_mut().zip(&mut self.links) {
                m.pump(link);
            }
            if self.failed() || self.all_done() {
                break;
            }
            self.steps += 1;
            for i in 0..self.machines.len() {
                self.check_progress(i);
            }
            if self.failed() {
                break;
            }
            for (m, link) in self.machines.iter_mut().zip(&mut self.links) {
                m.step_phase(link);
            }
            if self.all_done() || self.failed() {
                break;
            }
            if self.machines[0].ext.is_some() {
                // The demo: one machine, on the wall clock.
                self.machines[0].step_realtime(&mut self.links[0]);
                continue;
            }
            let next = self
                .machines
                .iter()
                .enumerate()
                .filter(|(_, m)| !m.is_done())
                .filter_map(|(i, m)| m.next_at().map(|at| (at, i)))
                .min();
            let Some((_, i)) = next else {
                for m in self.machines.iter_mut().filter(|m| !m.is_done()) {
                    let phase = m.phase;
                    m.k().v.fail(
                        Rule::Liveness,
                        format!("nothing left to happen in phase {phase:?}"),
                    );
                }
                break;
            };
            self.machines[i].step(&mut self.links[i], self.time_cap_ns);
        }
        if !self.failed() && self.all_done() {
            for m in &mut self.machines {
                m.check_leaks();
            }
        }
    }

    /// Liveness of machine `i` after every step of its restore (see `judge.rs`).
    fn check_progress(&mut self, i: usize) {
        let steps = self.steps;
        let (m, link) = (&mut self.machines[i], &self.links[i]);
        if !m.phase_is_restoring() || m.ext.is_some() {
            return;
        }
        if let Some(f) = m.filter.as_ref() {
            let map = f.engine().map();
            m.service.prune_dropped(|r| map.is_restored(r));
        }
        let last_delay_fault_ns = match (m.wdf.k.last_delay_fault_ns, link.last_fault_ns) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let progress = crate::judge::Progress {
            filter: &m.filter,
            service: &m.service,
            last_delay_fault_ns,
            wait_bound_ns: m.hold_deadline_ns / 2,
            service_knowledge: steps % 8 == 0,
        };
        if let Err(why) = crate::judge::check_progress(&m.wdf, &progress) {
            m.k().v.fail(Rule::Liveness, why);
        }
    }

    /// What the run did, over every machine (the first violation found wins).
    pub(crate) fn outcome(&self, seed: u64) -> Outcome {
        let mut o = Outcome {
            seed,
            ..Outcome::default()
        };
        let mut shapes = Vec::new();
        for m in &self.machines {
            let k = &m.wdf.k;
            o.ops_done += m.ops_done;
            o.irps += k.stats.irps;
            o.dispatches += k.stats.dispatches;
            o.sim_ns = o.sim_ns.max(k.now_ns());
            o.trace = o.trace.rotate_left(1) ^ k.trace.hash() ^ k.rng.draws();
            o.boots += m.boots;
            o.sectors_checked += k.oracle.sectors_checked;
            if o.violation.is_none() {
                o.violation = k.v.first().cloned();
            }
            shapes.push(m.shape.clone());
            if let Some(p) = m.protect.as_ref() {
                o.journal = Some(p.sink.stats());
            }
        }
        o.shape = shapes.join(" | ");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Faults;

    /// A world of one machine per config (each drawn from its own seed).
    fn world_of(configs: &[RunConfig]) -> World {
        let mut w = World::new(&configs[0]);
        for c in &configs[1..] {
            let d = Machine::draw(c);
            w.machines.push(d.machine);
            w.links.push(d.link);
        }
        w
    }

    #[test]
    fn two_machines_run_side_by_side_in_one_world_and_replay_exactly() {
        let _unmutated = crate::sim::hold_unmutated();
        let configs = [
            RunConfig::new(11, 120, Faults::all()),
            RunConfig::new(12, 120, Faults::all()),
        ];
        let mut a = world_of(&configs);
        a.run();
        let first = a.outcome(11);
        assert!(first.violation.is_none(), "{:?}", first.violation);
        assert!(a.machines.iter().all(Machine::is_done));
        assert!(
            first.ops_done >= 240,
            "both file systems ran: {}",
            first.ops_done
        );
        let mut b = world_of(&configs);
        b.run();
        assert_eq!(first, b.outcome(11), "the same world replays exactly");
        // Each machine alone does what it did beside the other: they share nothing
        // but the clock.
        let mut alone = World::new(&configs[1]);
        alone.run();
        assert_eq!(alone.machines[0].ops_done, a.machines[1].ops_done);
        assert_eq!(
            alone.machines[0].wdf.k.trace.hash(),
            a.machines[1].wdf.k.trace.hash()
        );
    }
}
