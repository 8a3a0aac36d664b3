//! The filter's device as KMDF would run it: `impl Framework for SimWdf`.
//!
//! A request handle is the IRP it wraps. Every request presented to the filter is marked
//! pending first and the dispatch routine returns `STATUS_PENDING`, as KMDF does for a
//! request it hands to a queue; the filter then owns it until it completes it, sends
//! it down, or parks it. Each `Framework` method is the IRP work its WDF call does:
//!
//! | method              | simulated as                                                          |
//! |---------------------|-----------------------------------------------------------------------|
//! | `send_to_lower`     | copy location to next + completion routine + `IoCallDriver`           |
//! | `send_and_forget`   | `IoSkipCurrentIrpStackLocation` + `IoCallDriver`                      |
//! | `write_lower`       | `IoAllocateIrp` + partial MDL of the hydrate payload (or zeros) + ... |
//! | `flush_lower`       | `IoAllocateIrp` + `IRP_MJ_FLUSH_BUFFERS` + routine + `IoCallDriver`   |
//! | `complete`          | `IoCompleteRequest`                                                    |
//! | `park`/`take_parked`| a manual queue; parked requests carry a cancel routine                 |
//! | `mark_cancelable`   | WDF's cancel routine on the IRP; a cancel queues `EvtRequestCancel`   |
//! | `unmark_cancelable` | the routine taken back, or `CANCELLED` when a cancel already took it |
//! | `start_timer`       | a scheduled event (restarting replaces the pending one)               |
//! | `queue_commit_work` | a scheduled event after a work-item delay                             |
//!
//! The completion routine of a sent request returns `STATUS_MORE_PROCESSING_REQUIRED`
//! and queues the filter's `on_lower_complete`, which the run loop calls once the
//! current callback has returned: the filter is never re-entered from inside a call it
//! made, just as a KMDF completion routine may run later on another thread.
//!
//! Misuse is a verifier failure, as KMDF's verifier refuses it: touching a request the
//! filter no longer owns (sent, parked, completed: so completing twice and forwarding
//! after completion), writing from a hydrate payload whose request is gone, marking a
//! request cancelable twice or unmarking one that is not, completing, sending or
//! parking a request still marked cancelable (unless it was cancelled), and keeping a
//! request past its queue callback without marking it cancelable (the file system could
//! never cancel it). Methods taking `&self` record such failures in a cell, collected
//! after the callback.

use std::cell::RefCell;
use std::collections::BTreeMap;

use rehydrate_driver::abi::HYDRATE_PREFIX_BYTES;
use rehydrate_driver::engine::LowerId;
use rehydrate_driver::framework::{Framework, RequestParameters, WriteSource};
use rehydrate_driver::Status;

use crate::irp::{
    CancelRoutine, IrpId, Layer, Mdl, Origin, Owner, Routine, WdfState, IRP_MJ_DEVICE_CONTROL,
    IRP_MJ_FLUSH_BUFFERS, IRP_MJ_READ, IRP_MJ_WRITE, SL_WRITE_THROUGH,
};
use crate::kernel::Kernel;
use crate::sched::Ev;
use crate::verifier::Rule;

/// Most requests the manual queue holds.
pub const PARKED_MAX: usize = 64;

/// What a lower I/O of the filter is, until the filter hears of its completion (what
/// the engine sees as at the device: a claim, a hydrate write, a flush).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LowerUse {
    /// A file-system request sent down (its oracle slot).
    App {
        /// The op's slot.
        op: u32,
    },
    /// A hydrate write of volume sectors `[first_sector, first_sector + sectors)`.
    Hydrate {
        /// First volume sector.
        first_sector: u64,
        /// Sectors.
        sectors: u64,
    },
    /// The filter's own flush.
    Flush,
}

/// The simulated WDF runtime of the filter and its control device, over the kernel.
#[derive(Debug)]
pub struct SimWdf {
    /// Everything below (and the run's shared state).
    pub k: Kernel,
    /// Generation of the filter's timer: a restart makes the old event stale.
    pub timer_gen: u64,
    /// The filter's lower I/O not yet reported back to it, by its id.
    pub lowers: BTreeMap<LowerId, LowerUse>,
    /// The device's filter refused its volume at start (not the restore's: the KMDF
    /// shell's `Volume::Refused`): [`dispatch`] hands it every request. `None` on the
    /// restore's volume and before a start.
    pub refused: Option<rehydrate_driver::filter::Refused>,
    late: RefCell<Vec<String>>,
}

impl SimWdf {
    /// The runtime over `k`.
    pub fn new(k: Kernel) -> SimWdf {
        SimWdf {
            k,
            timer_gen: 0,
            lowers: BTreeMap::new(),
            refused: None,
            late: RefCell::new(Vec::new()),
        }
    }

    /// Moves failures noted by `&self` methods into the verifier.
    pub fn collect(&mut self) {
        for detail in self.late.borrow_mut().drain(..) {
            self.k.v.fail(Rule::NotOwner, detail);
        }
    }

    /// The layer that owns a request: the filter's device or its control device.
    fn layer_of(&self, request: IrpId) -> Option<Layer> {
        match self.k.irps.get(request)?.owner {
            Owner::Driver(l @ (Layer::Filter | Layer::Control)) => Some(l),
            _ => None,
        }
    }

    /// Checks the filter may touch `request` now (delivered to it and not yet passed on).
    fn owned(&self, request: IrpId, what: &str) -> Option<Layer> {
        let Some(irp) = self.k.irps.get(request) else {
            self.late.borrow_mut().push(format!(
                "filter called {what} on request {request:?} after it was completed and freed"
            ));
            return None;
        };
        match (self.layer_of(request), irp.wdf) {
            (Some(layer), WdfState::Owned) => Some(layer),
            (_, state) => {
                let owner = irp.owner;
                self.late.borrow_mut().push(format!(
                    "filter called {what} on request {request:?} it does not own (state {state:?}, owner {owner:?})"
                ));
                None
            }
        }
    }

    /// Allocates an IRP of the filter's own for the volume below.
    fn own_irp(&mut self, major: u8, offset: u64, len: u64, mdl: Mdl, lower: LowerId) -> IrpId {
        let id = self.k.alloc_irp(Layer::Filter, Layer::Volume.stack_size());
        if let Some(irp) = self.k.irps.get_mut(id) {
            irp.mdl = mdl;
        }
        if let Some(next) = self.k.next_loc(Layer::Filter, id) {
            next.major = major;
            next.offset = offset;
            next.length = len;
        }
        self.k
            .set_completion(Layer::Filter, id, Routine::Wdf { lower, own: true });
        id
    }

    /// Refuses to let a request still marked cancelable (and not cancelled) go.
    fn not_cancelable(&mut self, request: IrpId, what: &str) -> bool {
        let marked = self
            .k
            .irps
            .get(request)
            .is_some_and(|i| i.wdf_cancelable && i.cancel_routine.is_some());
        if marked {
            let rule = if what == "WdfRequestComplete" {
                Rule::CompletedWithCancelRoutine
            } else {
                Rule::SentWithCancelRoutine
            };
            self.k.v.fail(
                rule,
                format!("filter called {what} on request {request:?} still marked cancelable (WdfRequestUnmarkCancelable first)"),
            );
        }
        !marked
    }

    fn note_forward(&mut self, request: IrpId) {
        if let Some(Origin::App { op, .. }) = self.k.irps.get(request).map(|i| i.origin) {
            self.k.oracle.on_forward(op, &mut self.k.v);
        }
    }
}

/// WDF's cancel routine for a parked request: the framework completes it cancelled.
pub fn cancel_parked(k: &mut Kernel, id: IrpId) {
    let Some(at) = k.wdf_queue.iter().position(|&q| q == id) else {
        k.v.fail(
            Rule::Driver,
            format!("WDF cancel routine ran for request {id:?}, which is not parked"),
        );
        return;
    };
    k.wdf_queue.remove(at);
    if let Some(irp) = k.irps.get_mut(id) {
        irp.wdf = WdfState::None;
    }
    k.complete(Layer::Control, id, Status::CANCELLED, 0);
}

impl Framework for SimWdf {
    type Request = IrpId;

    fn parameters(&self, request: IrpId) -> RequestParameters {
        if self.owned(request, "WdfRequestGetParameters").is_none() {
            return RequestParameters::Other;
        }
        let Some(irp) = self.k.irps.get(request) else {
            return RequestParameters::Other;
        };
        let loc = irp.loc();
        match loc.major {
            IRP_MJ_READ => RequestParameters::Read {
                offset: loc.offset,
                len: loc.length,
            },
            IRP_MJ_WRITE => RequestParameters::Write {
                offset: loc.offset,
                len: loc.length,
                fua: loc.flags & SL_WRITE_THROUGH != 0,
            },
            IRP_MJ_FLUSH_BUFFERS => RequestParameters::Flush,
            IRP_MJ_DEVICE_CONTROL => RequestParameters::DeviceControl {
                ioctl: loc.ioctl,
                input_len: irp.input.len(),
                output_len: irp.output.len(),
            },
            _ => RequestParameters::Other,
        }
    }

    fn input_buffer(&self, request: IrpId, min_len: usize) -> Result<&[u8], Status> {
        if self
            .owned(request, "WdfRequestRetrieveInputBuffer")
            .is_none()
        {
            return Err(Status::INVALID_DEVICE_REQUEST);
        }
        let irp = self
            .k
            .irps
            .get(request)
            .ok_or(Status::INVALID_DEVICE_REQUEST)?;
        if irp.input.is_empty() || irp.input.len() < min_len {
            return Err(Status::BUFFER_TOO_SMALL);
        }
        Ok(&irp.input)
    }

    fn output_buffer(&mut self, request: IrpId, min_len: usize) -> Result<&mut [u8], Status> {
        if self
            .owned(request, "WdfRequestRetrieveOutputBuffer")
            .is_none()
        {
            self.collect();
            return Err(Status::INVALID_DEVICE_REQUEST);
        }
        let irp = self
            .k
            .irps
            .get_mut(request)
            .ok_or(Status::INVALID_DEVICE_REQUEST)?;
        if irp.output.is_empty() || irp.output.len() < min_len {
            return Err(Status::BUFFER_TOO_SMALL);
        }
        Ok(&mut irp.output)
    }

    fn send_to_lower(&mut self, request: IrpId, lower: LowerId) -> Result<(), Status> {
        if self.owned(request, "WdfRequestSend").is_none() {
            self.collect();
            return Err(Status::INVALID_DEVICE_REQUEST);
        }
        if !self.not_cancelable(request, "WdfRequestSend") {
            return Err(Status::INVALID_DEVICE_REQUEST);
        }
        self.k.copy_to_next(Layer::Filter, request);
        self.k
            .set_completion(Layer::Filter, request, Routine::Wdf { lower, own: false });
        if let Some(irp) = self.k.irps.get_mut(request) {
            irp.wdf = WdfState::Sent;
            if let Origin::App { op, .. } = irp.origin {
                self.lowers.insert(lower, LowerUse::App { op });
            }
        }
        self.note_forward(request);
        self.k.call(Layer::Filter, request, Layer::Volume);
        Ok(())
    }

    fn send_and_forget(&mut self, request: IrpId) -> Result<(), Status> {
        if self
            .owned(request, "WdfRequestSend(SEND_AND_FORGET)")
            .is_none()
        {
            self.collect();
            return Err(Status::INVALID_DEVICE_REQUEST);
        }
        if !self.not_cancelable(request, "WdfRequestSend(SEND_AND_FORGET)") {
            return Err(Status::INVALID_DEVICE_REQUEST);
        }
        if let Some(irp) = self.k.irps.get_mut(request) {
            irp.wdf = WdfState::None;
        }
        self.note_forward(request);
        self.k.skip(Layer::Filter, request);
        self.k.call(Layer::Filter, request, Layer::Volume);
        Ok(())
    }

    fn write_lower(
        &mut self,
        lower: LowerId,
        offset: u64,
        len: u64,
        source: WriteSource<IrpId>,
    ) -> Result<(), Status> {
        let mdl = match source {
            WriteSource::Zeros => Mdl::Zeros,
            WriteSource::Payload {
                request,
                payload_offset,
            } => {
                if self
                    .owned(request, "a partial MDL of the hydrate payload")
                    .is_none()
                {
                    self.collect();
                    return Err(Status::INVALID_PARAMETER);
                }
                let byte = HYDRATE_PREFIX_BYTES as u64 + payload_offset;
                Mdl::Payload {
                    irp: request,
                    byte: u32::try_from(byte).map_err(|_| Status::INVALID_PARAMETER)?,
                }
            }
        };
        let id = self.own_irp(IRP_MJ_WRITE, offset, len, mdl, lower);
        self.lowers.insert(
            lower,
            LowerUse::Hydrate {
                first_sector: offset / 512,
                sectors: len / 512,
            },
        );
        self.k.call(Layer::Filter, id, Layer::Volume);
        Ok(())
    }

    fn flush_lower(&mut self, lower: LowerId) -> Result<(), Status> {
        let id = self.own_irp(IRP_MJ_FLUSH_BUFFERS, 0, 0, Mdl::None, lower);
        self.lowers.insert(lower, LowerUse::Flush);
        self.k.call(Layer::Filter, id, Layer::Volume);
        Ok(())
    }

    fn complete(&mut self, request: IrpId, status: Status, information: usize) {
        let Some(layer) = self.owned(request, "WdfRequestComplete") else {
            self.collect();
            return;
        };
        if !self.not_cancelable(request, "WdfRequestComplete") {
            return;
        }
        if let Some(irp) = self.k.irps.get_mut(request) {
            irp.wdf = WdfState::None;
            irp.wdf_cancelable = false;
        }
        self.k.complete(layer, request, status, information);
    }

    fn park(&mut self, request: IrpId) -> Result<(), Status> {
        if self.owned(request, "WdfRequestForwardToIoQueue").is_none() {
            self.collect();
            return Err(Status::INVALID_DEVICE_REQUEST);
        }
        if !self.not_cancelable(request, "WdfRequestForwardToIoQueue") {
            return Err(Status::INVALID_DEVICE_REQUEST);
        }
        if self.k.wdf_queue.len() >= PARKED_MAX {
            return Err(Status::INSUFFICIENT_RESOURCES);
        }
        if let Some(irp) = self.k.irps.get_mut(request) {
            irp.wdf = WdfState::Parked;
        }
        self.k
            .set_cancel_routine(Layer::Control, request, Some(CancelRoutine::WdfQueue));
        self.k.wdf_queue.push_back(request);
        Ok(())
    }

    fn take_parked(&mut self) -> Option<IrpId> {
        while let Some(request) = self.k.wdf_queue.pop_front() {
            // Cleared as it leaves the queue; a request being cancelled has none.
            if self
                .k
                .set_cancel_routine(Layer::Control, request, None)
                .is_some()
            {
                if let Some(irp) = self.k.irps.get_mut(request) {
                    irp.wdf = WdfState::Owned;
                }
                return Some(request);
            }
        }
        None
    }

    fn now_ns(&self) -> u64 {
        self.k.now_ns()
    }

    fn start_timer(&mut self, due_ns: u64) {
        self.timer_gen += 1;
        self.k.sched.after(
            due_ns.max(1),
            Ev::FilterTimer {
                gen: self.timer_gen,
            },
        );
    }

    fn queue_commit_work(&mut self, commit: u64) {
        let delay = self.k.rng.latency(50_000, 10);
        self.k.sched.after(delay, Ev::CommitWork { commit });
    }

    fn mark_cancelable(&mut self, request: IrpId) -> Result<(), Status> {
        let Some(layer) = self.owned(request, "WdfRequestMarkCancelableEx") else {
            self.collect();
            return Err(Status::INVALID_DEVICE_REQUEST);
        };
        let Some(irp) = self.k.irps.get_mut(request) else {
            return Err(Status::INVALID_DEVICE_REQUEST);
        };
        if irp.wdf_cancelable {
            self.k.v.fail(
                Rule::WdfRequest,
                format!("filter marked request {request:?} cancelable twice"),
            );
            return Err(Status::INVALID_DEVICE_REQUEST);
        }
        if irp.cancel {
            // Ex: already cancelled, no callback; the caller completes it.
            return Err(Status::CANCELLED);
        }
        irp.wdf_cancelable = true;
        self.k
            .set_cancel_routine(layer, request, Some(CancelRoutine::WdfDriver));
        Ok(())
    }

    fn unmark_cancelable(&mut self, request: IrpId) -> Result<(), Status> {
        let Some(layer) = self.owned(request, "WdfRequestUnmarkCancelable") else {
            self.collect();
            return Err(Status::INVALID_DEVICE_REQUEST);
        };
        let marked = self.k.irps.get(request).is_some_and(|i| i.wdf_cancelable);
        if !marked {
            self.k.v.fail(
                Rule::WdfRequest,
                format!("filter unmarked request {request:?}, which is not cancelable"),
            );
            return Err(Status::INVALID_DEVICE_REQUEST);
        }
        if let Some(irp) = self.k.irps.get_mut(request) {
            irp.wdf_cancelable = false;
        }
        match self.k.set_cancel_routine(layer, request, None) {
            Some(_) => Ok(()),
            // A cancel took the routine: `EvtRequestCancel` is on its way.
            None => Err(Status::CANCELLED),
        }
    }
}

/// `IoCallDriver` to the filter's device or its control device: the run loop's half of
/// WDF, which needs the filter itself. PnP and power IRPs WDF handles alone: it pends
/// them, forwards them, and finishes them when they come back (see `sim.rs`). Every
/// other request is marked pending and presented to the filter's queue callback.
pub fn dispatch(
    wdf: &mut SimWdf,
    filter: &mut Option<rehydrate_driver::filter::Filter<SimWdf>>,
    by: Layer,
    id: IrpId,
    target: Layer,
) {
    debug_assert!(matches!(target, Layer::Filter | Layer::Control));
    let Some(frame) = wdf.k.begin_call(by, id, target) else {
        return;
    };
    let major = wdf.k.irps.get(id).map_or(0, |i| i.loc().major);
    let status = if target == Layer::Filter
        && matches!(major, crate::irp::IRP_MJ_PNP | crate::irp::IRP_MJ_POWER)
    {
        wdf.k.mark_pending(Layer::Filter, id);
        wdf.k.copy_to_next(Layer::Filter, id);
        wdf.k.set_completion(Layer::Filter, id, Routine::WdfPnp);
        wdf.k.call(Layer::Filter, id, Layer::Volume);
        Status::PENDING
    } else if let Some(f) = filter.as_mut() {
        wdf.k.mark_pending(target, id);
        if let Some(irp) = wdf.k.irps.get_mut(id) {
            irp.wdf = WdfState::Owned;
        }
        if target == Layer::Filter {
            if crate::oracle::trace_enabled() {
                eprintln!("  params {:?}", wdf.parameters(id));
            }
            f.on_io(wdf, id);
            // Still the filter's and not sent: it holds the request.
            let held = wdf
                .k
                .irps
                .get(id)
                .filter(|i| i.owner == Owner::Driver(Layer::Filter) && i.wdf == WdfState::Owned)
                .map(|i| i.origin);
            if crate::oracle::trace_enabled() {
                if let Some(Origin::App { op, .. }) = wdf.k.irps.get(id).map(|i| i.origin) {
                    let sim_held: Vec<String> = wdf
                        .k
                        .oracle
                        .live_ops()
                        .into_iter()
                        .map(|s| wdf.k.oracle.op(s))
                        .filter(|o| o.held && !o.forwarded)
                        .map(|o| format!("#{}:{}+{}", o.seq, o.sector, o.count))
                        .collect();
                    eprintln!(
                        "  on_io #{} held={} engine_held={} pt={} restored={} sim_held={:?} t={}",
                        wdf.k.oracle.op(op).seq,
                        held.is_some(),
                        f.engine().held_count(),
                        f.is_passthrough(),
                        f.engine().map().restored_count(),
                        sim_held,
                        wdf.k.now_ns()
                    );
                }
            }
            if let Some(origin) = held {
                let cancelable = wdf.k.irps.get(id).is_some_and(|i| i.wdf_cancelable);
                if !cancelable {
                    wdf.k.v.fail(
                        Rule::WdfRequest,
                        format!("the filter kept request {id:?} after its queue callback without marking it cancelable"),
                    );
                }
                if let Some(irp) = wdf.k.irps.get_mut(id) {
                    irp.held = true;
                }
                if let Origin::App { op, .. } = origin {
                    wdf.k.oracle.op_mut(op).held = true;
                }
            }
        } else {
            f.on_control(wdf, id);
        }
        wdf.collect();
        Status::PENDING
    } else if let Some(mut refused) = wdf.refused {
        // A volume that is not the restore's: its requests go down untouched, the
        // service's are refused, under the same ownership rules.
        wdf.k.mark_pending(target, id);
        if let Some(irp) = wdf.k.irps.get_mut(id) {
            irp.wdf = WdfState::Owned;
        }
        match target {
            Layer::Filter => refused.on_io(wdf, id),
            _ => refused.on_control(wdf, id),
        }
        wdf.refused = Some(refused);
        wdf.collect();
        Status::PENDING
    } else {
        // No filter (the device is not started): refused at once.
        wdf.k.complete(target, id, Status::DEVICE_NOT_READY, 0);
        Status::DEVICE_NOT_READY
    };
    wdf.k.end_call(frame, status);
}

#[cfg(test)]
mod tests {
    //! What the simulated WDF refuses, as KMDF's verifier does, where the portable
    //! filter could get it wrong.

    use super::*;
    use crate::irp::IRP_MJ_READ;
    use crate::testing::kernel;

    /// A read the file system sent, presented to the filter (as `dispatch` does).
    fn presented(wdf: &mut SimWdf) -> (IrpId, usize) {
        crate::testing::presented(wdf, Layer::Fs, Layer::Filter, IRP_MJ_READ, 0)
    }

    fn wdf() -> SimWdf {
        SimWdf::new(kernel())
    }

    #[test]
    fn completing_twice_is_refused() {
        let mut w = wdf();
        let (id, frame) = presented(&mut w);
        w.complete(id, Status::SUCCESS, 0);
        w.k.end_call(frame, Status::PENDING);
        assert!(!w.k.v.failed());
        w.complete(id, Status::SUCCESS, 0);
        assert!(w.k.v.failed());
    }

    #[test]
    fn forwarding_after_completion_is_refused() {
        let mut w = wdf();
        let (id, frame) = presented(&mut w);
        w.complete(id, Status::SUCCESS, 0);
        w.k.end_call(frame, Status::PENDING);
        assert!(w.send_to_lower(id, 1).is_err());
        assert!(w.k.v.failed());
    }

    #[test]
    fn completing_a_request_still_marked_cancelable_is_refused() {
        let mut w = wdf();
        let (id, frame) = presented(&mut w);
        w.mark_cancelable(id).unwrap();
        w.complete(id, Status::SUCCESS, 0);
        w.k.end_call(frame, Status::PENDING);
        assert_eq!(
            w.k.v.first().unwrap().rule,
            Rule::CompletedWithCancelRoutine
        );
    }

    #[test]
    fn sending_a_request_still_marked_cancelable_is_refused() {
        let mut w = wdf();
        let (id, frame) = presented(&mut w);
        w.mark_cancelable(id).unwrap();
        assert!(w.send_to_lower(id, 1).is_err());
        w.k.end_call(frame, Status::PENDING);
        assert_eq!(w.k.v.first().unwrap().rule, Rule::SentWithCancelRoutine);
    }

    #[test]
    fn marking_twice_or_unmarking_an_unmarked_request_is_refused() {
        let mut w = wdf();
        let (id, _) = presented(&mut w);
        assert!(w.unmark_cancelable(id).is_err());
        assert_eq!(w.k.v.first().unwrap().rule, Rule::WdfRequest);
        let mut w = wdf();
        let (id, _) = presented(&mut w);
        w.mark_cancelable(id).unwrap();
        assert!(w.mark_cancelable(id).is_err());
        assert_eq!(w.k.v.first().unwrap().rule, Rule::WdfRequest);
    }

    #[test]
    fn a_cancel_of_a_cancelable_request_reaches_the_filter_and_unmarking_then_fails() {
        let mut w = wdf();
        let (id, frame) = presented(&mut w);
        w.mark_cancelable(id).unwrap();
        w.k.end_call(frame, Status::PENDING);
        assert!(w.k.cancel(id));
        assert_eq!(
            w.k.upcalls.pop_front(),
            Some(crate::kernel::Upcall::WdfCancel { irp: id })
        );
        assert_eq!(w.unmark_cancelable(id), Err(Status::CANCELLED));
        // Completing it now (from the cancel callback) is what KMDF expects.
        w.complete(id, Status::CANCELLED, 0);
        assert!(!w.k.v.failed(), "{:?}", w.k.v.first());
    }

    #[test]
    fn a_request_cancelled_before_it_is_marked_is_refused_the_mark() {
        let mut w = wdf();
        let (id, frame) = presented(&mut w);
        w.k.end_call(frame, Status::PENDING);
        assert!(!w.k.cancel(id), "no routine to run yet");
        assert_eq!(w.mark_cancelable(id), Err(Status::CANCELLED));
        w.complete(id, Status::CANCELLED, 0);
        assert!(!w.k.v.failed());
    }
}
