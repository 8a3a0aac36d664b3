//! A machine's life below the workload: PnP start and power up the stack, the filter
//! started over its durable metadata (checked against the oracle), power loss with its
//! crash of caches and metadata and the reboot after it, and the orderly shutdown.

use std::sync::Arc;

use rehydrate_driver::filter::{Filter, Refused};
use rehydrate_driver::meta::{
    identity_tag, Metadata, HEADER_STORE_PAGES, META_PAGE_SIZE_BYTES, REGIONS_PER_PAGE,
};
use rehydrate_driver::{RegionMap, Status};

use super::{volume, Machine, Phase};
use crate::faults::Fault;
use crate::irp::{
    IrpId, Layer, Origin, Routine, IOCTL_VOLUME_OFFLINE, IOCTL_VOLUME_ONLINE,
    IRP_MJ_DEVICE_CONTROL, IRP_MJ_PNP, IRP_MJ_POWER, IRP_MN_REMOVE_DEVICE, IRP_MN_SET_POWER,
    IRP_MN_START_DEVICE,
};
use crate::link::Link;
use crate::oracle::OpKind;
use crate::sched::Ev;
use crate::service::Ctx;
use crate::verifier::Rule;
use crate::wdf;
use crate::workload::Request;

impl Machine {
    pub(crate) fn boot(&mut self) {
        self.boots += 1;
        self.commits_since_boot = 0;
        self.boot_step = 0;
        self.mounted = false;
        self.io_manager_irp(IRP_MJ_PNP, IRP_MN_START_DEVICE, 0);
        if self.wdf.k.faults.has(Fault::Cache) {
            self.k().sched.after(1_000_000, Ev::Destage);
        }
        if self.wdf.k.faults.has(Fault::LinkDisconnect) || self.wdf.k.faults.has(Fault::Outage) {
            let delay = self.wdf.k.rng.range(10_000_000, 500_000_000);
            self.k().sched.after(delay, Ev::LinkState);
        }
        if self.wdf.k.faults.has(Fault::Cancel) {
            let delay = self.wdf.k.rng.range(1_000_000, 20_000_000);
            self.k().sched.after(delay, Ev::FsCancel);
        }
    }

    /// Sends a PnP, power or volume IRP from the I/O manager to the top of the stack.
    pub(crate) fn io_manager_irp(&mut self, major: u8, minor: u8, ioctl: u32) {
        let k = &mut self.wdf.k;
        let id = k.alloc_irp(Layer::IoManager, Layer::Filter.stack_size());
        if let Some(next) = k.next_loc(Layer::IoManager, id) {
            next.major = major;
            next.minor = minor;
            next.ioctl = ioctl;
        }
        k.set_completion(Layer::IoManager, id, Routine::IoManager);
        wdf::dispatch(
            &mut self.wdf,
            &mut self.filter,
            Layer::IoManager,
            id,
            Layer::Filter,
        );
    }

    /// WDF's forwarded PnP/power IRP came back: the filter device starts (or goes).
    pub(crate) fn wdf_pnp_done(&mut self, irp: IrpId) {
        let Some(i) = self.wdf.k.irps.get(irp) else {
            return;
        };
        let (loc, status) = (*i.loc(), i.status);
        if loc.major == IRP_MJ_PNP && loc.minor == IRP_MN_START_DEVICE && status.is_success() {
            self.start_filter();
        }
        if loc.major == IRP_MJ_PNP && loc.minor == IRP_MN_REMOVE_DEVICE {
            self.filter = None;
            self.wdf.refused = None;
        }
        self.k().complete(Layer::Filter, irp, status, 0);
    }

    /// `EvtDevicePrepareHardware`: load the durable marks, check them, build the filter.
    pub(crate) fn start_filter(&mut self) {
        self.wdf.refused = None;
        match self.start_decision() {
            Ok(volume::Decision::Restore) => {}
            Ok(volume::Decision::Refused { refusal, own }) => {
                if own {
                    let boots = self.boots;
                    self.k().v.fail(
                        Rule::Driver,
                        format!(
                            "the filter refused its own volume at boot {boots}: {}",
                            refusal.describe()
                        ),
                    );
                } else {
                    self.wdf.refused = Some(Refused::new(refusal));
                }
                return;
            }
            Err(e) => {
                let boots = self.boots;
                self.k().v.fail(
                    Rule::DurableMark,
                    format!("metadata header does not read at boot {boots}: {e}"),
                );
                return;
            }
        }
        let map = match RegionMap::new(self.geometry) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                self.k().v.fail(Rule::Driver, format!("region map: {e:?}"));
                return;
            }
        };
        let meta = match Metadata::open(&mut self.store, &self.identity, &map) {
            Ok(m) => m,
            Err(e) => {
                let boots = self.boots;
                self.k().v.fail(
                    Rule::DurableMark,
                    format!("metadata does not open at boot {boots}: {e}"),
                );
                return;
            }
        };
        let words: Vec<u64> = (0..map.word_count()).map(|w| map.word(w)).collect();
        let start = self.partition_start;
        let k = &mut self.wdf.k;
        k.oracle
            .check_reboot(&words, &k.lower.disk, start, &mut k.v);
        self.filter = Some(Filter::new(map, meta, self.attach, self.filter_config));
        self.capture_start();
    }

    pub(crate) fn io_manager_done(&mut self, irp: IrpId, link: &mut Link) {
        let status = self
            .wdf
            .k
            .irps
            .get(irp)
            .map_or(Status::IO_DEVICE_ERROR, |i| i.status);
        self.k().free_irp(Layer::IoManager, irp);
        if !status.is_success() {
            let (step, phase) = (self.boot_step, self.phase);
            self.k().v.fail(Rule::Status, format!("I/O manager request failed with {status:?} (boot step {step}, phase {phase:?})"));
            return;
        }
        if let Phase::Shutdown { step } = self.phase {
            self.phase = Phase::Shutdown { step: step + 1 };
            self.shutdown(link);
            return;
        }
        self.boot_step += 1;
        match self.boot_step {
            1 => self.io_manager_irp(IRP_MJ_POWER, IRP_MN_SET_POWER, 1),
            2 => self.io_manager_irp(IRP_MJ_DEVICE_CONTROL, 0, IOCTL_VOLUME_ONLINE),
            _ => {
                self.mounted = true;
                self.fs_tick_pending = false;
                self.schedule_fs_tick();
                let delay = self.wdf.k.rng.range(1_000_000, 30_000_000);
                self.k().sched.after(delay, Ev::ServiceStart);
            }
        }
    }

    pub(crate) fn power_loss(&mut self, link: &mut Link) {
        if !self.faults_on(Fault::PowerLoss) {
            return;
        }
        let torn = self.wdf.k.faults.has(Fault::Torn);
        let k = &mut self.wdf.k;
        k.oracle.crash();
        k.lower.disk.crash(&mut k.rng, torn);
        let rng = &mut k.rng;
        let report = self.store.crash(&mut || rng.next_u64());
        if crate::oracle::trace_enabled() {
            eprintln!("power loss: metadata {report:?}");
        }
        self.wdf.k.crash();
        self.wdf.lowers.clear();
        self.wdf.timer_gen += 1;
        self.filter = None;
        self.wdf.refused = None;
        self.capture_power_loss();
        self.service.vanish();
        link.reset();
        self.fs_irps.iter_mut().for_each(|f| *f = None);
        if self.wdf.k.faults.has(Fault::Media) && self.wdf.k.rng.coin() {
            // A latent error damages one metadata slot (never the only good one).
            let tag = identity_tag(&self.identity);
            let pages =
                HEADER_STORE_PAGES + 2 * self.geometry.region_count().div_ceil(REGIONS_PER_PAGE);
            let pick = self.wdf.k.rng.below(pages);
            let at = self.wdf.k.rng.below(META_PAGE_SIZE_BYTES as u64) as usize;
            self.store.corrupt_stale_slot(pick, tag, at);
        }
        // A reboot takes a while: the filter's clock starts late.
        let downtime = self.wdf.k.rng.range(2_000_000_000, 60_000_000_000);
        self.k().sched.after(downtime, Ev::PowerOn);
    }

    pub(crate) fn shutdown(&mut self, link: &mut Link) {
        let Phase::Shutdown { step } = self.phase else {
            return;
        };
        match step {
            0 => {
                let mut cx = Ctx {
                    wdf: &mut self.wdf,
                    filter: &mut self.filter,
                    link: &mut *link,
                };
                self.service.detach(&mut cx);
                if let Some(ext) = self.ext.as_mut() {
                    ext.detach(&mut self.wdf, &mut self.filter);
                }
                self.shutdown_flush = Some(self.issue(Request {
                    kind: OpKind::Flush,
                    sector: 0,
                    count: 0,
                }));
            }
            1 => self.io_manager_irp(IRP_MJ_DEVICE_CONTROL, 0, IOCTL_VOLUME_OFFLINE),
            2 => self.io_manager_irp(IRP_MJ_POWER, IRP_MN_SET_POWER, 4),
            3 => self.io_manager_irp(IRP_MJ_PNP, IRP_MN_REMOVE_DEVICE, 0),
            _ => {
                self.service.vanish();
                self.phase = Phase::Done;
            }
        }
    }

    pub(crate) fn check_leaks(&mut self) {
        // What is still in flight once everything is shut down: only the service's
        // own IOCTLs may be, answered by nobody (its process exited).
        self.wdf.k.sched.clear();
        let live = self.wdf.k.irps.live_ids();
        let leaked: Vec<(IrpId, Origin, u8)> = live
            .iter()
            .filter_map(|&id| {
                self.wdf
                    .k
                    .irps
                    .get(id)
                    .map(|i| (id, i.origin, i.stack_count))
            })
            .filter(|&(_, _, stack)| stack != Layer::Control.stack_size())
            .collect();
        if let Some((id, origin, _)) = leaked.first() {
            let n = leaked.len();
            self.k().v.fail(
                Rule::Leak,
                format!("{n} IRPs never freed, e.g. {id:?} ({origin:?})"),
            );
        }
    }
}
