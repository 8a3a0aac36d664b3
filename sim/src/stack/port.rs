//! The storage port: at most `port_depth` IRPs at the device; the rest wait in a queue
//! with a cancel routine set, so a cancelled IRP that has not started completes with
//! `STATUS_CANCELLED`. An IRP leaving the queue has its cancel routine cleared first.

use rehydrate_driver::Status;

use crate::irp::{CancelRoutine, IrpId, Layer, Routine, IRP_MJ_PNP, IRP_MJ_POWER};
use crate::kernel::Kernel;

const ME: Layer = Layer::Port;

/// `IRP_MJ_*` dispatch: everything is pended.
pub fn dispatch(k: &mut Kernel, id: IrpId) -> Status {
    let Some(loc) = k.cur_loc(ME, id) else {
        return Status::INVALID_DEVICE_REQUEST;
    };
    if matches!(loc.major, IRP_MJ_PNP | IRP_MJ_POWER) {
        return super::forward_pnp(k, ME, id);
    }
    k.mark_pending(ME, id);
    if k.lower.port_active < k.lower.port_depth {
        start(k, id);
    } else {
        k.set_cancel_routine(ME, id, Some(CancelRoutine::Port));
        k.lower.port_queue.push_back(id);
        debug_assert!(k.lower.port_queue.len() <= 4096, "port queue bound");
    }
    Status::PENDING
}

fn start(k: &mut Kernel, id: IrpId) {
    k.lower.port_active += 1;
    k.copy_to_next(ME, id);
    k.set_completion(ME, id, Routine::Port);
    k.call(ME, id, Layer::Bus);
}

/// The completion routine of an IRP the port started.
pub fn completed(k: &mut Kernel, id: IrpId) -> Status {
    if k.irps.get(id).is_some_and(|i| i.pending_returned) {
        k.mark_pending(ME, id);
    }
    debug_assert!(k.lower.port_active > 0);
    k.lower.port_active -= 1;
    while let Some(next) = k.lower.port_queue.pop_front() {
        // Cleared before it leaves the queue: a cancel now finds no routine.
        if k.set_cancel_routine(ME, next, None).is_some() {
            start(k, next);
            break;
        }
    }
    Status::SUCCESS
}

/// The cancel routine: the IRP is still queued.
pub fn cancel(k: &mut Kernel, id: IrpId) {
    let Some(at) = k.lower.port_queue.iter().position(|&q| q == id) else {
        k.v.fail(
            crate::verifier::Rule::Driver,
            format!("port cancel routine ran for IRP {id:?}, which it does not queue"),
        );
        return;
    };
    k.lower.port_queue.remove(at);
    k.complete(ME, id, Status::CANCELLED, 0);
}
