//! One machine: the simulated storage stack (IRPs, the layers below the filter, the
//! device and its cache), the filter on its simulated WDF, the service, the metadata
//! store, the file system driving its workload, and its own life: boot, power loss and
//! reboot, orderly shutdown. A machine owns its event queue, its RNG stream, its
//! verifier and the oracle of its volume (the stack reports into it as it works). The
//! world (`world.rs`) holds the machines, the links from them to the backup, the backup,
//! the clock that picks which machine runs next, and the run-level checks.
//!
//! `shape.rs` draws a machine from a seed; `fs.rs` is its file system; `boot.rs` its
//! PnP, power, crash, reboot and shutdown; `commit.rs` its metadata commits;
//! `volume.rs` which volume its filter starts on.

mod boot;
mod capture;
mod commit;
mod fs;
mod shape;
mod volume;

use rehydrate_driver::abi::Attach;
use rehydrate_driver::filter::{Filter, FilterConfig};
use rehydrate_driver::meta::{Identity, Metadata};
use rehydrate_driver::Geometry;

use crate::demo::realtime::LinkServer;
use crate::faults::Fault;
use crate::irp::IrpId;
use crate::kernel::{Kernel, Upcall};
use crate::link::Link;
use crate::meta::MetaDev;
use crate::sched::Ev;
use crate::service::{Ctx, Service};
use crate::verifier::Rule;
use crate::wdf::SimWdf;
use crate::workload::Workload;

pub(crate) use capture::Protect;
pub(crate) use shape::Drawn;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// Where a machine's run is (see `sim.rs`).
pub(crate) enum Phase {
    Run,
    Drain { since_ns: u64 },
    Verify { next_sector: u64 },
    Shutdown { step: u8 },
    Done,
}

/// One machine and its volume.
pub(crate) struct Machine {
    pub(crate) wdf: SimWdf,
    pub(crate) filter: Option<Filter<SimWdf>>,
    pub(crate) service: Service,
    pub(crate) store: MetaDev,
    /// The store's durable restore map, decoded as commits change it (`check_commit`).
    pub(crate) durable_marks: crate::oracle::DurableMarks,
    pub(crate) identity: Identity,
    pub(crate) attach: Attach,
    pub(crate) geometry: Geometry,
    pub(crate) filter_config: FilterConfig,
    pub(crate) workload: Workload,
    pub(crate) fs_irps: Vec<Option<(IrpId, u64)>>,
    pub(crate) next_write_id: u64,
    pub(crate) ops_target: u64,
    pub(crate) ops_issued: u64,
    pub(crate) ops_done: u64,
    pub(crate) phase: Phase,
    pub(crate) boot_step: u8,
    pub(crate) mounted: bool,
    pub(crate) boots: u64,
    /// Metadata commits performed since the last boot.
    pub(crate) commits_since_boot: u64,
    pub(crate) volume_sectors: u64,
    pub(crate) partition_start: u64,
    pub(crate) meta_ppm: u32,
    pub(crate) commit_crash_ppm: u32,
    pub(crate) crash_per_op_ppm: u32,
    pub(crate) kill_per_op_ppm: u32,
    pub(crate) hold_deadline_ns: u64,
    pub(crate) hydrator_deadline_ns: u64,
    pub(crate) shutdown_flush: Option<u32>,
    /// An `FsTick` is scheduled (the file system waits on a completion otherwise).
    pub(crate) fs_tick_pending: bool,
    pub(crate) shape: String,
    /// The demo: the service runs outside the simulator and reaches the filter through
    /// this driver-link server, and the clock follows the wall clock. `None` in
    /// deterministic runs.
    pub(crate) ext: Option<LinkServer>,
    /// Write capture and the service's journal, when the run protects the volume.
    pub(crate) protect: Option<Protect>,
}

impl Machine {
    pub(crate) fn k(&mut self) -> &mut Kernel {
        &mut self.wdf.k
    }

    pub(crate) fn faults_on(&self, f: Fault) -> bool {
        self.wdf.k.faults.has(f) && matches!(self.phase, Phase::Run)
    }

    pub(crate) fn phase_is_restoring(&self) -> bool {
        matches!(self.phase, Phase::Run | Phase::Drain { .. })
    }

    /// The run is over for this machine (shut down after verifying).
    pub(crate) fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// A rule broke on this machine.
    pub(crate) fn failed(&self) -> bool {
        self.wdf.k.v.failed()
    }

    /// Its metadata is formatted (once, before anything can fail) and power comes on:
    /// at once in real time, else after a while (the machine was up before the volume
    /// arrived, so the filter's clock does not start at zero). False when formatting
    /// failed (a violation says why).
    pub(crate) fn power_on(&mut self) -> bool {
        let binding = self.binding();
        if let Err(e) = Metadata::create_bound(&mut self.store, &self.identity, &binding) {
            self.k()
                .v
                .fail(Rule::Driver, format!("metadata create failed: {e}"));
            return false;
        }
        if self.ext.is_some() {
            self.boot();
        } else {
            let uptime = self.wdf.k.rng.range(0, 30_000_000_000);
            self.k().sched.after(uptime, Ev::PowerOn);
        }
        true
    }

    /// When its next event is due.
    pub(crate) fn next_at(&self) -> Option<u64> {
        self.wdf.k.sched.next_at()
    }

    /// Runs its next event (the world chose this machine): `false` when it has none.
    /// The clock moves to the event's time; past `time_cap_ns` it is a liveness failure.
    pub(crate) fn step(&mut self, link: &mut Link, time_cap_ns: u64) -> bool {
        let Some(ev) = self.wdf.k.sched.pop() else {
            return false;
        };
        let now = self.wdf.k.now_ns();
        if now > time_cap_ns {
            let phase = self.phase;
            self.k().v.fail(
                Rule::Liveness,
                format!("simulated time cap reached in phase {phase:?}"),
            );
            return true;
        }
        self.wdf.k.v.set_now(now);
        self.wdf.k.trace.mix(ev.code() ^ now.rotate_left(17));
        self.handle(ev, link);
        true
    }

    /// In real time (the demo): the next event once the wall clock reaches it, else
    /// time passes while the outside service is served.
    pub(crate) fn step_realtime(&mut self, link: &mut Link) {
        if let Some(ev) = self.next_realtime() {
            let now = self.wdf.k.now_ns();
            self.wdf.k.v.set_now(now);
            self.handle(ev, link);
        }
    }

    /// The demo's clock: the next event once the wall clock reaches it. Meanwhile time
    /// passes and the link server hands the service's requests to the filter; `None`
    /// when the caller should pump and look again.
    pub(crate) fn next_realtime(&mut self) -> Option<Ev> {
        let mut ext = self.ext.take()?;
        let mounted = self.mounted;
        // Requests are taken on every turn, so a busy machine still answers at once.
        ext.serve(&mut self.wdf, &mut self.filter, mounted, None);
        let wall = ext.now_ns();
        let next = self.wdf.k.sched.next_at();
        let ev = if next.is_some_and(|at| at <= wall) {
            self.wdf.k.sched.pop()
        } else {
            self.wdf.k.sched.advance_to(wall);
            self.wdf.k.v.set_now(self.wdf.k.now_ns());
            // Sleep until the next event is due or the service asks something.
            let wait_ns = next.map_or(u64::MAX, |at| at - wall);
            ext.serve(&mut self.wdf, &mut self.filter, mounted, Some(wait_ns));
            None
        };
        if let Some(why) = ext.stalled(self.wdf.k.now_ns(), self.phase_is_restoring()) {
            self.k().v.fail(Rule::Liveness, why);
        }
        self.ext = Some(ext);
        ev
    }

    /// Delivers queued upcalls until none is left.
    pub(crate) fn pump(&mut self, link: &mut Link) {
        // Bounded by the work in flight: each upcall retires a completion.
        while let Some(up) = self.wdf.k.upcalls.pop_front() {
            match up {
                Upcall::LowerComplete { lower, status } => {
                    crate::judge::lower_reported(&mut self.wdf, lower, status);
                    if let Some(f) = self.filter.as_mut() {
                        f.on_lower_complete(&mut self.wdf, lower, status);
                        self.wdf.collect();
                        self.capture_points();
                    }
                }
                Upcall::FsDone { op, irp } => self.fs_done(op, irp, link),
                Upcall::ServiceDone { op, irp } if self.ext.is_some() => {
                    if let Some(ext) = self.ext.as_mut() {
                        ext.on_done(&mut self.wdf.k, op, irp);
                    }
                }
                Upcall::ServiceDone { op, irp } => {
                    let mut cx = Ctx {
                        wdf: &mut self.wdf,
                        filter: &mut self.filter,
                        link: &mut *link,
                    };
                    self.service.on_done(&mut cx, op, irp);
                }
                Upcall::WdfPnpDone { irp } => self.wdf_pnp_done(irp),
                Upcall::WdfCancel { irp } => {
                    if let Some(f) = self.filter.as_mut() {
                        f.on_cancel(&mut self.wdf, irp);
                        self.wdf.collect();
                    }
                }
                Upcall::IoManagerDone { irp } => self.io_manager_done(irp, link),
            }
            if self.wdf.k.v.failed() {
                return;
            }
        }
        if let Some(f) = self.filter.as_ref() {
            let held = f.engine().held_count();
            if f.is_passthrough() && held > 0 {
                self.k().v.fail(
                    Rule::Ordering,
                    format!("the filter became a pass-through while its engine still holds {held} requests: requests sent from now on overtake them"),
                );
            }
        }
    }

    pub(crate) fn handle(&mut self, ev: Ev, link: &mut Link) {
        match ev {
            Ev::DeviceDone(id) => crate::stack::device::done(&mut self.wdf.k, id),
            Ev::Destage => {
                self.wdf.k.lower.disk.destage();
                let delay = self.wdf.k.rng.latency(10_000_000, 8);
                self.k().sched.after(delay, Ev::Destage);
            }
            Ev::FilterTimer { gen } => {
                if self.hung() {
                    return;
                }
                if gen == self.wdf.timer_gen {
                    if let Some(f) = self.filter.as_mut() {
                        f.on_timer(&mut self.wdf);
                        self.wdf.collect();
                    }
                }
            }
            Ev::CommitWork { commit } => self.commit_work(commit, link),
            Ev::FsTick => {
                self.fs_tick_pending = false;
                self.fs_tick();
            }
            Ev::FsCancel => self.fs_cancel(),
            Ev::LinkReply { slot } => {
                let now = self.wdf.k.now_ns();
                if let Some(entry) = link.take(slot, now) {
                    let mut cx = Ctx {
                        wdf: &mut self.wdf,
                        filter: &mut self.filter,
                        link: &mut *link,
                    };
                    self.service
                        .on_reply(&mut cx, entry.instance, entry.fetch, entry.reply);
                }
            }
            Ev::LinkState => self.link_state(link),
            Ev::ServiceTick { instance } => {
                let mut cx = Ctx {
                    wdf: &mut self.wdf,
                    filter: &mut self.filter,
                    link: &mut *link,
                };
                self.service.on_tick(&mut cx, instance);
            }
            Ev::ServiceStart => {
                if !self.service.is_alive()
                    && self.ext.is_none()
                    && self.filter.is_some()
                    && !matches!(self.phase, Phase::Shutdown { .. } | Phase::Done)
                {
                    let seed = self.wdf.k.rng.next_u64();
                    let mut cx = Ctx {
                        wdf: &mut self.wdf,
                        filter: &mut self.filter,
                        link: &mut *link,
                    };
                    self.service.start(&mut cx, seed);
                }
            }
            Ev::ServiceKill => {
                if self.service.is_alive() && self.faults_on(Fault::ServiceKill) {
                    let mut cx = Ctx {
                        wdf: &mut self.wdf,
                        filter: &mut self.filter,
                        link: &mut *link,
                    };
                    self.service.kill(&mut cx);
                    self.capture_service_killed();
                    self.wdf.k.note_delay_fault();
                    let delay = self.wdf.k.rng.range(50_000_000, 3_000_000_000);
                    self.k().sched.after(delay, Ev::ServiceStart);
                }
            }
            Ev::PowerLoss => self.power_loss(link),
            Ev::PowerOn => self.boot(),
            Ev::JournalTick { gen } => self.journal_tick(gen),
        }
    }

    /// Moves between phases when their work is done.
    pub(crate) fn step_phase(&mut self, link: &mut Link) {
        let now = self.wdf.k.now_ns();
        match self.phase {
            Phase::Run => {
                let restored = self.filter.as_ref().is_some_and(|f| f.is_passthrough());
                if let Some(ext) = self.ext.as_mut() {
                    if let Some(f) = self.filter.as_ref() {
                        let (map, geometry) = (f.engine().map(), f.engine().geometry());
                        let bytes = map
                            .restored_count()
                            .saturating_mul(u64::from(geometry.region_size_bytes()));
                        ext.note_restored_bytes(now, bytes.min(geometry.volume_size_bytes()));
                    }
                    if restored {
                        ext.note_restored(now);
                        // The tour's workload runs while the volume is being restored.
                        self.ops_target = self.ops_issued;
                    }
                }
                if self.ops_issued >= self.ops_target
                    && self.wdf.k.oracle.in_flight() == 0
                    && self.mounted
                {
                    self.phase = Phase::Drain { since_ns: now };
                    self.calm_down(link);
                }
            }
            Phase::Drain { since_ns } => {
                if self.filter.as_ref().is_some_and(|f| f.is_passthrough()) {
                    if let Some(ext) = self.ext.as_mut() {
                        ext.note_restored(now);
                    }
                    self.phase = Phase::Verify { next_sector: 0 };
                    self.verify_reads();
                } else if now - since_ns > 3_600_000_000_000 {
                    let restored = self.filter.as_ref().map(|f| f.status_counters());
                    self.k().v.fail(Rule::Liveness, format!("the restore did not finish within an hour of simulated time after the faults stopped: {restored:?}"));
                }
            }
            Phase::Verify { next_sector } => {
                if next_sector >= self.volume_sectors && self.wdf.k.oracle.in_flight() == 0 {
                    let start = self.partition_start;
                    let k = &mut self.wdf.k;
                    k.oracle.check_final_image(&k.lower.disk, start, &mut k.v);
                    self.phase = Phase::Shutdown { step: 0 };
                    self.shutdown(link);
                }
            }
            Phase::Shutdown { .. } | Phase::Done => {}
        }
    }

    /// The faults stop: the link heals, the service comes back, nothing more is planned.
    pub(crate) fn calm_down(&mut self, link: &mut Link) {
        link.calm = true;
        self.wdf.k.calm = true;
        link.come_up();
        self.wdf.k.sched.retain(|e| {
            !matches!(
                e,
                Ev::PowerLoss | Ev::ServiceKill | Ev::LinkState | Ev::FsCancel
            )
        });
        if !self.service.is_alive() {
            self.k().sched.after(1_000_000, Ev::ServiceStart);
        }
    }

    pub(crate) fn link_state(&mut self, link: &mut Link) {
        if !matches!(self.phase, Phase::Run) {
            return;
        }
        let delay = if !link.is_up() {
            link.come_up();
            self.wdf.k.rng.range(100_000_000, 2_000_000_000)
        } else if self.wdf.k.faults.has(Fault::Outage) && self.wdf.k.rng.below(6) == 0 {
            link.go_down();
            let d = self.hydrator_deadline_ns;
            self.wdf.k.rng.range(d * 3 / 2, d * 3)
        } else if self.wdf.k.faults.has(Fault::LinkDisconnect) {
            link.go_down();
            self.wdf.k.rng.range(5_000_000, 300_000_000)
        } else {
            self.wdf.k.rng.range(100_000_000, 2_000_000_000)
        };
        self.k().sched.after(delay, Ev::LinkState);
    }
}
