//! The simulated I/O manager: `IoAllocateIrp`, `IoCallDriver`, `IoCompleteRequest`,
//! `IoMarkIrpPending`, `IoSetCancelRoutine`, `IoCancelIrp` and friends, with Driver
//! Verifier's I/O rules checked on every call (see `verifier.rs`).
//!
//! Every call names the driver making it (`by`), so ownership is checked: a driver may
//! touch an IRP only while it owns it — from dispatch until it passes the IRP on or
//! completes it, and again when its completion routine returns
//! `STATUS_MORE_PROCESSING_REQUIRED`. Pending is checked per dispatch call: a dispatch
//! routine that marks the IRP must return `STATUS_PENDING`; one that returns
//! `STATUS_PENDING` without marking is checked when completion pops its location, by
//! which time the I/O manager must have propagated the lower driver's mark (the
//! pass-through pattern `return IoCallDriver(...)`).
//!
//! The kernel also owns what lies below the filter (`stack/`), the device, the oracle
//! and the one RNG, so the layers' dispatch routines run inside it without reaching
//! back up. Anything that must reach the filter, the file system or the service is
//! queued as an [`Upcall`] and delivered by the run loop right after the current step,
//! as a DPC or a signalled event would be.

use std::collections::VecDeque;

use rehydrate_driver::Status;

use crate::faults::Faults;
use crate::irp::{
    CancelRoutine, IrpId, Layer, Mdl, Owner, Routine, Slab, StackLocation, SL_PENDING_RETURNED,
    STATUS_MORE_PROCESSING_REQUIRED,
};
use crate::oracle::Oracle;
use crate::rng::Rng;
use crate::sched::Sched;
use crate::stack::Lower;
use crate::trace::Trace;
use crate::verifier::{Rule, Verifier};

/// Work for the run loop, queued from inside the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upcall {
    /// WDF's completion routine ran for lower I/O of the filter: call
    /// `Filter::on_lower_complete`.
    LowerComplete {
        /// The filter's handle.
        lower: u64,
        /// Its status.
        status: Status,
    },
    /// A file-system IRP came back.
    FsDone {
        /// The op's slot.
        op: u32,
        /// The IRP (owned by the file system now).
        irp: IrpId,
    },
    /// A service IOCTL came back.
    ServiceDone {
        /// The service's handle.
        op: u32,
        /// The IRP.
        irp: IrpId,
    },
    /// A PnP or power IRP WDF forwarded came back (the filter device may start).
    WdfPnpDone {
        /// The IRP.
        irp: IrpId,
    },
    /// A PnP or power IRP the I/O manager sent came back.
    IoManagerDone {
        /// The IRP.
        irp: IrpId,
    },
    /// A request the filter marked cancelable was cancelled: WDF calls its
    /// `EvtRequestCancel` (deferred, as KMDF's queue dispatches cancellations).
    WdfCancel {
        /// The IRP.
        irp: IrpId,
    },
}

/// One dispatch call in progress.
#[derive(Clone, Copy, Debug)]
struct Frame {
    irp: IrpId,
    level: u8,
    target: Layer,
    marked: bool,
    popped: bool,
    pending_at_pop: bool,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// IRPs allocated.
    pub irps: u64,
    /// `IoCallDriver` calls.
    pub dispatches: u64,
    /// `IoCompleteRequest` calls.
    pub completions: u64,
}

/// The kernel below the filter, and the run's shared state.
#[derive(Debug)]
pub struct Kernel {
    /// The IRPs.
    pub irps: Slab,
    /// Failures.
    pub v: Verifier,
    /// Time.
    pub sched: Sched,
    /// The one RNG.
    pub rng: Rng,
    /// Faults that may be injected.
    pub faults: Faults,
    /// The trace hash.
    pub trace: Trace,
    /// Work for the run loop.
    pub upcalls: VecDeque<Upcall>,
    /// The oracle.
    pub oracle: Oracle,
    /// Volume, partition, disk class, port, bus and device.
    pub lower: Lower,
    /// WDF's manual queue of the control device (parked GET_MISSING requests). Here
    /// rather than in `wdf.rs` because `IoCancelIrp` reaches it through the cancel
    /// routine.
    pub wdf_queue: VecDeque<IrpId>,
    /// Counters.
    pub stats: Stats,
    /// Faults have stopped (the run is settling): no more media errors.
    pub calm: bool,
    /// When a fault that can delay a held request last happened (a media error, a
    /// killed service, a failed metadata commit), for the liveness bound.
    pub last_delay_fault_ns: Option<u64>,
    frames: Vec<Frame>,
    /// Per IRP slot: locations whose dispatch returned `STATUS_PENDING` unmarked, to be
    /// checked when completion pops them.
    deferred: Vec<u16>,
}

impl Kernel {
    /// A kernel over `lower`.
    pub fn new(rng: Rng, faults: Faults, oracle: Oracle, lower: Lower) -> Kernel {
        Kernel {
            irps: Slab::default(),
            v: Verifier::default(),
            sched: Sched::default(),
            rng,
            faults,
            trace: Trace::default(),
            upcalls: VecDeque::new(),
            oracle,
            lower,
            wdf_queue: VecDeque::new(),
            stats: Stats::default(),
            calm: false,
            last_delay_fault_ns: None,
            frames: Vec::new(),
            deferred: Vec::new(),
        }
    }

    /// Now, in simulated nanoseconds.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.sched.now_ns()
    }

    /// A fault that can delay held requests happened now.
    pub fn note_delay_fault(&mut self) {
        self.last_delay_fault_ns = Some(self.now_ns());
    }

    // ----- ownership -----------------------------------------------------------------

    /// True when `by` owns `id`; else records the violation `rule` (or use-after-free).
    #[inline]
    pub fn owns(&mut self, by: Layer, id: IrpId, what: &str) -> bool {
        self.owns_as(by, id, what, Rule::NotOwner)
    }

    fn owns_as(&mut self, by: Layer, id: IrpId, what: &str, rule: Rule) -> bool {
        match self.irps.get(id) {
            Some(irp) if irp.owner == Owner::Driver(by) => true,
            Some(irp) => {
                let owner = irp.owner;
                self.v.fail(
                    rule,
                    format!("{by:?} called {what} on IRP {id:?} owned by {owner:?}"),
                );
                false
            }
            None => {
                self.v.fail(
                    Rule::UseAfterFree,
                    format!("{by:?} called {what} on IRP {id:?} after it was freed"),
                );
                false
            }
        }
    }

    // ----- allocation ----------------------------------------------------------------

    /// `IoAllocateIrp`: owned by `by` until it calls a driver with it.
    pub fn alloc_irp(&mut self, by: Layer, stack_count: u8) -> IrpId {
        self.stats.irps += 1;
        let id = self.irps.alloc(stack_count, by);
        let i = id.index as usize;
        if self.deferred.len() <= i {
            self.deferred.resize(i + 1, 0);
        }
        self.deferred[i] = 0;
        id
    }

    /// `IoFreeIrp`.
    pub fn free_irp(&mut self, by: Layer, id: IrpId) {
        if self.owns(by, id, "IoFreeIrp") {
            self.irps.free(id);
        }
    }

    // ----- stack locations -----------------------------------------------------------

    /// `IoGetNextIrpStackLocation`, checked for underflow.
    pub fn next_loc(&mut self, by: Layer, id: IrpId) -> Option<&mut StackLocation> {
        if !self.owns(by, id, "IoGetNextIrpStackLocation") {
            return None;
        }
        let current = self.irps.get(id).map_or(0, |i| i.current);
        if current <= 1 {
            self.v.fail(
                Rule::StackUnderflow,
                format!("{by:?}: no stack location below location {current} of IRP {id:?}"),
            );
            return None;
        }
        self.irps
            .get_mut(id)
            .map(|irp| &mut irp.stack[usize::from(current) - 2])
    }

    /// The current location (the caller's own), checked for ownership.
    pub fn cur_loc(&mut self, by: Layer, id: IrpId) -> Option<StackLocation> {
        if !self.owns(by, id, "IoGetCurrentIrpStackLocation") {
            return None;
        }
        let irp = self.irps.get(id)?;
        if irp.current > irp.stack_count || irp.current == 0 {
            self.v.fail(
                Rule::StackOverflow,
                format!("{by:?}: IRP {id:?} has no current location"),
            );
            return None;
        }
        Some(*irp.loc())
    }

    /// `IoCopyCurrentIrpStackLocationToNext` (completion routine and control cleared).
    pub fn copy_to_next(&mut self, by: Layer, id: IrpId) {
        let Some(cur) = self.cur_loc(by, id) else {
            return;
        };
        if let Some(next) = self.next_loc(by, id) {
            *next = StackLocation {
                completion: None,
                control: 0,
                device: None,
                ..cur
            };
        }
    }

    /// `IoSkipCurrentIrpStackLocation`: the next driver gets this location.
    pub fn skip(&mut self, by: Layer, id: IrpId) {
        if !self.owns(by, id, "IoSkipCurrentIrpStackLocation") {
            return;
        }
        if let Some(irp) = self.irps.get_mut(id) {
            if irp.current > irp.stack_count {
                self.v.fail(
                    Rule::StackOverflow,
                    format!("{by:?} skipped past the top of IRP {id:?}"),
                );
                return;
            }
            irp.current += 1;
        }
    }

    /// `IoSetCompletionRoutine` (invoked on success, error and cancel).
    pub fn set_completion(&mut self, by: Layer, id: IrpId, routine: Routine) {
        debug_assert_eq!(
            routine.layer(),
            by,
            "a routine belongs to the driver setting it"
        );
        if let Some(next) = self.next_loc(by, id) {
            next.completion = Some(routine);
        }
    }

    /// `IoMarkIrpPending`.
    pub fn mark_pending(&mut self, by: Layer, id: IrpId) {
        if !self.owns(by, id, "IoMarkIrpPending") {
            return;
        }
        self.mark_pending_unchecked(id);
    }

    fn mark_pending_unchecked(&mut self, id: IrpId) {
        let Some(irp) = self.irps.get_mut(id) else {
            return;
        };
        let level = irp.current;
        irp.loc_mut().control |= SL_PENDING_RETURNED;
        if let Some(f) = self
            .frames
            .iter_mut()
            .rev()
            .find(|f| f.irp == id && f.level == level && !f.popped)
        {
            f.marked = true;
        }
    }

    // ----- calling drivers -----------------------------------------------------------

    /// The first half of `IoCallDriver`: moves to the next location and hands the IRP to
    /// `target`. Returns the frame to close with [`Kernel::end_call`], or `None` when the
    /// call is refused (a violation was recorded).
    pub fn begin_call(&mut self, by: Layer, id: IrpId, target: Layer) -> Option<usize> {
        if !self.owns(by, id, "IoCallDriver") {
            return None;
        }
        self.stats.dispatches += 1;
        let irp = self.irps.get_mut(id)?;
        if let Some(routine) = irp.cancel_routine {
            self.v.fail(
                Rule::SentWithCancelRoutine,
                format!("{by:?} called {target:?} with IRP {id:?} whose cancel routine {routine:?} is still set"),
            );
            return None;
        }
        if irp.current <= 1 {
            let current = irp.current;
            self.v.fail(
                Rule::StackUnderflow,
                format!("{by:?} called {target:?} with IRP {id:?} at location {current}: no location left"),
            );
            return None;
        }
        irp.current -= 1;
        let level = irp.current;
        irp.loc_mut().device = Some(target);
        irp.owner = Owner::Driver(target);
        self.frames.push(Frame {
            irp: id,
            level,
            target,
            marked: false,
            popped: false,
            pending_at_pop: false,
        });
        Some(self.frames.len() - 1)
    }

    /// The second half: `target`'s dispatch routine returned `status`.
    pub fn end_call(&mut self, frame: usize, status: Status) {
        debug_assert_eq!(frame, self.frames.len() - 1, "dispatch frames nest");
        let Some(f) = self.frames.pop() else { return };
        let pending = status == Status::PENDING;
        if f.popped {
            if pending && !f.pending_at_pop {
                self.v.fail(
                    Rule::PendingNotMarked,
                    format!("{:?} returned STATUS_PENDING for IRP {:?}, completed without being marked pending", f.target, f.irp),
                );
            } else if !pending && f.marked {
                self.v.fail(
                    Rule::MarkedNotPending,
                    format!(
                        "{:?} marked IRP {:?} pending and returned {status:?}",
                        f.target, f.irp
                    ),
                );
            }
            return;
        }
        if pending && !f.marked {
            // Pass-through: the lower driver's mark must reach this location by the time
            // completion pops it.
            if let Some(d) = self.deferred.get_mut(f.irp.index as usize) {
                *d |= 1 << f.level;
            }
        } else if !pending && f.marked {
            self.v.fail(
                Rule::MarkedNotPending,
                format!(
                    "{:?} marked IRP {:?} pending and returned {status:?}",
                    f.target, f.irp
                ),
            );
        }
    }

    /// `IoCallDriver` to a layer below the filter.
    pub fn call(&mut self, by: Layer, id: IrpId, target: Layer) -> Status {
        let Some(frame) = self.begin_call(by, id, target) else {
            return Status::INVALID_DEVICE_REQUEST;
        };
        let status = crate::stack::dispatch(self, target, id);
        self.end_call(frame, status);
        status
    }

    // ----- completion ----------------------------------------------------------------

    /// `IoCompleteRequest`.
    pub fn complete(&mut self, by: Layer, id: IrpId, status: Status, information: usize) {
        debug_assert_ne!(status, Status::PENDING, "completing with STATUS_PENDING");
        if !self.owns_as(by, id, "IoCompleteRequest", Rule::DoubleCompletion) {
            return;
        }
        let Some(irp) = self.irps.get_mut(id) else {
            return;
        };
        if irp.cancel_routine.is_some() {
            let routine = irp.cancel_routine;
            self.v.fail(
                Rule::CompletedWithCancelRoutine,
                format!("{by:?} completed IRP {id:?} with cancel routine {routine:?} still set"),
            );
            return;
        }
        if irp.current > irp.stack_count {
            self.v.fail(
                Rule::StackOverflow,
                format!("{by:?} completed IRP {id:?} above its top location"),
            );
            return;
        }
        irp.status = status;
        irp.information = information;
        self.stats.completions += 1;
        self.trace
            .mix(u64::from(status.0) ^ (u64::from(id.index) << 32));
        self.walk_up(id);
    }

    /// Pops locations, calling completion routines, until one keeps the IRP or it
    /// reaches the top.
    fn walk_up(&mut self, id: IrpId) {
        // Bounded by the stack depth.
        for _ in 0..=crate::irp::STACK_MAX {
            let Some(irp) = self.irps.get_mut(id) else {
                return;
            };
            let level = irp.current;
            let loc = &mut irp.stack[usize::from(level) - 1];
            let pending = loc.control & SL_PENDING_RETURNED != 0;
            let routine = loc.completion.take();
            irp.pending_returned = pending;
            irp.current += 1;
            let at_top = irp.current > irp.stack_count;
            let upper = if at_top {
                None
            } else {
                irp.stack[usize::from(irp.current) - 1].device
            };
            irp.owner = Owner::Driver(Layer::IoManager);
            let deferred = self.deferred.get(id.index as usize).copied().unwrap_or(0);
            if deferred & (1 << level) != 0 {
                self.deferred[id.index as usize] &= !(1 << level);
                if !pending {
                    self.v.fail(
                        Rule::PendingNotMarked,
                        format!("STATUS_PENDING was returned for IRP {id:?} at location {level} but it was never marked pending"),
                    );
                }
            }
            for f in self.frames.iter_mut().rev() {
                if f.irp == id && f.level == level && !f.popped {
                    f.popped = true;
                    f.pending_at_pop = pending;
                }
            }
            match routine {
                Some(r) => {
                    if let (Some(upper), false) = (upper, at_top) {
                        debug_assert_eq!(
                            upper,
                            r.layer(),
                            "a routine runs in its driver's context"
                        );
                    }
                    if let Some(irp) = self.irps.get_mut(id) {
                        irp.owner = Owner::Driver(r.layer());
                    }
                    if self.run_routine(r, id) == STATUS_MORE_PROCESSING_REQUIRED {
                        return;
                    }
                }
                None => {
                    if pending && !at_top {
                        self.mark_pending_unchecked(id);
                    }
                }
            }
            if at_top {
                // Nobody kept it: the I/O manager frees it.
                if self.irps.get(id).is_some() {
                    self.irps.free(id);
                }
                return;
            }
            if let Some(irp) = self.irps.get_mut(id) {
                irp.owner = Owner::Driver(Layer::IoManager);
            }
        }
        debug_assert!(false, "completion walked past the stack bound");
    }

    fn run_routine(&mut self, routine: Routine, id: IrpId) -> Status {
        match routine {
            Routine::Wdf { lower, own } => {
                let status = self.irps.get(id).map_or(Status::SUCCESS, |i| i.status);
                if own {
                    self.free_irp(Layer::Filter, id);
                } else if let Some(irp) = self.irps.get_mut(id) {
                    irp.wdf = crate::irp::WdfState::Owned;
                    if let crate::irp::Origin::App { op, .. } = irp.origin {
                        self.oracle.on_lower_done(op);
                    }
                }
                self.upcalls
                    .push_back(Upcall::LowerComplete { lower, status });
                STATUS_MORE_PROCESSING_REQUIRED
            }
            Routine::WdfPnp => {
                self.upcalls.push_back(Upcall::WdfPnpDone { irp: id });
                STATUS_MORE_PROCESSING_REQUIRED
            }
            Routine::Fs { op } => {
                // Done as far as ordering goes, even before the file system looks.
                self.oracle.on_lower_done(op);
                self.upcalls.push_back(Upcall::FsDone { op, irp: id });
                STATUS_MORE_PROCESSING_REQUIRED
            }
            Routine::Service { op } => {
                self.upcalls.push_back(Upcall::ServiceDone { op, irp: id });
                STATUS_MORE_PROCESSING_REQUIRED
            }
            Routine::IoManager => {
                self.upcalls.push_back(Upcall::IoManagerDone { irp: id });
                STATUS_MORE_PROCESSING_REQUIRED
            }
            Routine::DiskSplit { master } => crate::stack::disk::split_done(self, id, master),
            Routine::Port => crate::stack::port::completed(self, id),
            Routine::Pnp(layer) => crate::stack::pnp_done(self, layer, id),
            Routine::Test { keep } => {
                if keep {
                    STATUS_MORE_PROCESSING_REQUIRED
                } else {
                    Status::SUCCESS
                }
            }
        }
    }

    // ----- cancellation --------------------------------------------------------------

    /// `IoSetCancelRoutine`: returns the routine that was set.
    pub fn set_cancel_routine(
        &mut self,
        by: Layer,
        id: IrpId,
        routine: Option<CancelRoutine>,
    ) -> Option<CancelRoutine> {
        if !self.owns(by, id, "IoSetCancelRoutine") {
            return None;
        }
        let irp = self.irps.get_mut(id)?;
        std::mem::replace(&mut irp.cancel_routine, routine)
    }

    /// `IoCancelIrp`, by whoever sent the IRP: sets `Cancel` and runs the cancel routine
    /// if one is set (taking it out first, as the I/O manager does). Returns true when a
    /// routine ran.
    pub fn cancel(&mut self, id: IrpId) -> bool {
        let Some(irp) = self.irps.get_mut(id) else {
            return false;
        };
        irp.cancel = true;
        let Some(routine) = irp.cancel_routine.take() else {
            return false;
        };
        match routine {
            CancelRoutine::Port => crate::stack::port::cancel(self, id),
            CancelRoutine::WdfQueue => crate::wdf::cancel_parked(self, id),
            CancelRoutine::WdfDriver => self.upcalls.push_back(Upcall::WdfCancel { irp: id }),
            CancelRoutine::Test => {}
        }
        true
    }

    // ----- data ----------------------------------------------------------------------

    /// Where an IRP's data is: (the IRP holding the buffer, its first sector, kind),
    /// checking that IRP is alive. `None` for zeros or no data.
    pub fn resolve_mdl(&mut self, id: IrpId) -> Option<(IrpId, u32, bool)> {
        let irp = self.irps.get(id)?;
        match irp.mdl {
            Mdl::None | Mdl::Zeros => None,
            Mdl::Own => Some((id, 0, false)),
            Mdl::Partial {
                irp: target,
                sector,
            } => {
                if self.irps.get(target).is_none() {
                    self.v.fail(
                        Rule::StaleMdl,
                        format!("IRP {id:?} points into IRP {target:?}, which was freed"),
                    );
                    return None;
                }
                Some((target, sector, false))
            }
            Mdl::Payload { irp: target, byte } => match self.irps.get(target) {
                Some(t) if t.owner == Owner::Driver(Layer::Control) => Some((target, byte, true)),
                Some(t) => {
                    let owner = t.owner;
                    self.v.fail(
                        Rule::StaleMdl,
                        format!("IRP {id:?} writes from the payload of hydrate IRP {target:?}, which the filter no longer owns ({owner:?})"),
                    );
                    None
                }
                None => {
                    self.v.fail(Rule::StaleMdl, format!("IRP {id:?} writes from the payload of hydrate IRP {target:?}, which was freed"));
                    None
                }
            },
        }
    }

    /// Power loss: every IRP, frame and queued callback is gone.
    pub fn crash(&mut self) {
        self.irps.reset();
        self.frames.clear();
        self.upcalls.clear();
        self.wdf_queue.clear();
        self.deferred.iter_mut().for_each(|d| *d = 0);
        self.sched.clear();
        self.lower.reset_volatile();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irp::{CancelRoutine, Routine, IRP_MJ_READ};
    use crate::testing::kernel;

    /// A test IRP as the file system would send it: one location, a routine on top.
    fn sent(k: &mut Kernel, keep: bool) -> IrpId {
        let id = k.alloc_irp(Layer::Fs, 2);
        k.next_loc(Layer::Fs, id).unwrap().major = IRP_MJ_READ;
        k.next_loc(Layer::Fs, id).unwrap().completion = Some(Routine::Test { keep });
        id
    }

    #[test]
    fn completing_twice_is_caught() {
        let mut k = kernel();
        let id = sent(&mut k, true);
        let f = k.begin_call(Layer::Fs, id, Layer::Device).unwrap();
        k.complete(Layer::Device, id, Status::SUCCESS, 0);
        k.end_call(f, Status::SUCCESS);
        assert!(!k.v.failed());
        k.complete(Layer::Device, id, Status::SUCCESS, 0);
        assert_eq!(k.v.first().unwrap().rule, Rule::DoubleCompletion);
    }

    #[test]
    fn returning_pending_without_marking_is_caught() {
        let mut k = kernel();
        let id = sent(&mut k, true);
        let f = k.begin_call(Layer::Fs, id, Layer::Device).unwrap();
        k.end_call(f, Status::PENDING);
        assert!(!k.v.failed(), "checked when completion pops the location");
        k.complete(Layer::Device, id, Status::SUCCESS, 0);
        assert_eq!(k.v.first().unwrap().rule, Rule::PendingNotMarked);
    }

    #[test]
    fn marking_pending_and_returning_success_is_caught() {
        let mut k = kernel();
        let id = sent(&mut k, true);
        let f = k.begin_call(Layer::Fs, id, Layer::Device).unwrap();
        k.mark_pending(Layer::Device, id);
        k.complete(Layer::Device, id, Status::SUCCESS, 0);
        k.end_call(f, Status::SUCCESS);
        assert_eq!(k.v.first().unwrap().rule, Rule::MarkedNotPending);
    }

    #[test]
    fn marking_and_returning_pending_is_fine_either_way_round() {
        let mut k = kernel();
        let id = sent(&mut k, true);
        let f = k.begin_call(Layer::Fs, id, Layer::Device).unwrap();
        k.mark_pending(Layer::Device, id);
        k.end_call(f, Status::PENDING);
        k.complete(Layer::Device, id, Status::SUCCESS, 0);
        assert!(!k.v.failed());
        assert!(k.irps.get(id).unwrap().pending_returned);
    }

    #[test]
    fn completing_with_a_cancel_routine_set_is_caught() {
        let mut k = kernel();
        let id = sent(&mut k, true);
        let f = k.begin_call(Layer::Fs, id, Layer::Device).unwrap();
        k.mark_pending(Layer::Device, id);
        k.set_cancel_routine(Layer::Device, id, Some(CancelRoutine::Test));
        k.end_call(f, Status::PENDING);
        k.complete(Layer::Device, id, Status::SUCCESS, 0);
        assert_eq!(k.v.first().unwrap().rule, Rule::CompletedWithCancelRoutine);
    }

    #[test]
    fn touching_an_irp_after_passing_it_on_is_caught() {
        let mut k = kernel();
        let id = sent(&mut k, true);
        let f = k.begin_call(Layer::Fs, id, Layer::Device).unwrap();
        k.mark_pending(Layer::Device, id);
        k.end_call(f, Status::PENDING);
        // The file system passed it on: it may not look at its location now.
        assert!(k.cur_loc(Layer::Fs, id).is_none());
        assert_eq!(k.v.first().unwrap().rule, Rule::NotOwner);
    }

    #[test]
    fn touching_an_irp_after_completing_it_is_caught() {
        let mut k = kernel();
        let id = sent(&mut k, false);
        let f = k.begin_call(Layer::Fs, id, Layer::Device).unwrap();
        k.complete(Layer::Device, id, Status::SUCCESS, 0);
        k.end_call(f, Status::SUCCESS);
        // Nobody kept it: freed at the top; a later touch is a use after free.
        k.mark_pending(Layer::Device, id);
        assert_eq!(k.v.first().unwrap().rule, Rule::UseAfterFree);
    }

    #[test]
    fn a_routine_that_keeps_the_irp_gives_it_back_to_its_driver() {
        let mut k = kernel();
        let id = sent(&mut k, true);
        let f = k.begin_call(Layer::Fs, id, Layer::Device).unwrap();
        k.complete(Layer::Device, id, Status::SUCCESS, 7);
        k.end_call(f, Status::SUCCESS);
        assert_eq!(k.irps.get(id).unwrap().owner, Owner::Driver(Layer::Fs));
        assert_eq!(k.irps.get(id).unwrap().information, 7);
        k.free_irp(Layer::Fs, id);
        assert!(!k.v.failed());
    }

    #[test]
    fn stack_underflow_and_overflow_are_caught() {
        let mut k = kernel();
        let id = k.alloc_irp(Layer::Fs, 1);
        let f = k.begin_call(Layer::Fs, id, Layer::Device).unwrap();
        assert!(k.begin_call(Layer::Device, id, Layer::Device).is_none());
        assert_eq!(k.v.first().unwrap().rule, Rule::StackUnderflow);
        k.end_call(f, Status::SUCCESS);
        let mut k = kernel();
        let id = k.alloc_irp(Layer::Fs, 1);
        k.skip(Layer::Fs, id);
        assert_eq!(k.v.first().unwrap().rule, Rule::StackOverflow);
    }

    #[test]
    fn data_behind_a_freed_irp_is_caught() {
        let mut k = kernel();
        let master = k.alloc_irp(Layer::Fs, 2);
        let piece = k.alloc_irp(Layer::Disk, 1);
        k.irps.get_mut(piece).unwrap().mdl = Mdl::Partial {
            irp: master,
            sector: 0,
        };
        assert!(k.resolve_mdl(piece).is_some());
        k.free_irp(Layer::Fs, master);
        assert!(k.resolve_mdl(piece).is_none());
        assert_eq!(k.v.first().unwrap().rule, Rule::StaleMdl);
    }

    #[test]
    fn writing_from_a_hydrate_payload_the_filter_gave_back_is_caught() {
        let mut k = kernel();
        let hydrate = k.alloc_irp(Layer::Control, 1);
        let write = k.alloc_irp(Layer::Filter, 1);
        k.irps.get_mut(write).unwrap().mdl = Mdl::Payload {
            irp: hydrate,
            byte: 32,
        };
        assert!(
            k.resolve_mdl(write).is_some(),
            "the control device still owns it"
        );
        k.irps.get_mut(hydrate).unwrap().owner = Owner::Driver(Layer::Service);
        assert!(k.resolve_mdl(write).is_none());
        assert_eq!(k.v.first().unwrap().rule, Rule::StaleMdl);
    }

    #[test]
    fn cancel_runs_the_routine_once_and_clears_it() {
        let mut k = kernel();
        let id = sent(&mut k, true);
        let f = k.begin_call(Layer::Fs, id, Layer::Device).unwrap();
        k.mark_pending(Layer::Device, id);
        k.set_cancel_routine(Layer::Device, id, Some(CancelRoutine::Test));
        k.end_call(f, Status::PENDING);
        assert!(k.cancel(id));
        assert!(!k.cancel(id), "the routine is taken out before it runs");
        assert!(k.irps.get(id).unwrap().cancel);
        k.complete(Layer::Device, id, Status::CANCELLED, 0);
        assert!(!k.v.failed());
    }
}
