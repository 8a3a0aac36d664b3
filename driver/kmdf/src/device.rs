//! The filter device: `EvtDriverDeviceAdd`, start, the default queue, the flush hook,
//! the timer and work items, and removal. Each callback only turns a WDF event into a
//! call of the portable filter through the cell (`cell.rs`).
//!
//! # Flushes
//! KMDF does not put `IRP_MJ_FLUSH_BUFFERS` in I/O queues (a filter's framework passes it
//! straight down), and `WdfDeviceWdmDispatchIrpToIoQueue` accepts only read, write and
//! device-control IRPs, so a flush cannot be routed into the default queue. Instead
//! `WdfDeviceInitAssignWdmIrpPreprocessCallback` hooks `IRP_MJ_FLUSH_BUFFERS`: the hook
//! wraps the IRP in a WDF request (`WdfRequestCreateFromIrp`, the IRP not freed by WDF),
//! marks the IRP pending, returns `STATUS_PENDING`, and hands the request to
//! `Filter::on_io` like any queued request, whose `parameters` then say `Flush`. The
//! request is sent down with `WdfRequestFormatRequestUsingCurrentType` like the others;
//! finishing it is `WdfObjectDelete` + `IoCompleteRequest` (WDF's rule for requests made
//! from IRPs; `kmdf.rs`). A flush that cannot be wrapped fails with
//! `STATUS_INSUFFICIENT_RESOURCES` rather than passing by the filter: completing it
//! without the filter's metadata commit would acknowledge a durability that is not there.
//!
//! # Removal
//! KMDF purges a non-power-managed queue at removal and waits for every request the
//! driver owns (`PnpEventRemovedCommonCode` → `FxIoQueue::StopProcessingForPower`), and
//! only then runs the device's cleanup. Held requests are therefore failed earlier, in
//! `EvtDeviceSelfManagedIoFlush` (called from `PnpCleanupForRemove` on both the graceful
//! and the surprise path) with `EvtIoStop` as a backstop; a request still arriving is
//! refused. What the filter sent down completes as usual, through the filter, so the
//! HYDRATE requests its writes came from are completed too.
//!
//! # Which volume
//! The driver is a class filter, so PnP offers it every volume. `EvtDriverDeviceAdd`
//! compares the volume's PDO name with the `TargetDevice` parameter and, for any other
//! volume, returns success without creating a device: KMDF then leaves the stack without
//! us, at no cost.

use alloc::sync::Arc;
use core::ptr;

use rehydrate_driver::framework::Framework;
use rehydrate_driver::Status;
use wdk::nt_success;
use wdk_sys::{
    call_unsafe_wdf_function_binding, ntddk::IofCompleteRequest, _DEVICE_REGISTRY_PROPERTY,
    _WDF_REQUEST_STOP_ACTION_FLAGS, NTSTATUS, PFN_WDF_WORKITEM, PIRP, PWDFDEVICE_INIT,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_PENDING, STATUS_SUCCESS, ULONG, WDFCMRESLIST, WDFDEVICE,
    WDFDRIVER, WDFIOTARGET, WDFOBJECT, WDFQUEUE, WDFREQUEST, WDFSPINLOCK, WDFTIMER, WDFWORKITEM,
    WDF_NO_OBJECT_ATTRIBUTES, WDF_OBJECT_ATTRIBUTES, WDF_PNPPOWER_EVENT_CALLBACKS,
    WDF_TIMER_CONFIG, WDF_WORKITEM_CONFIG,
};

use crate::cell::{Event, Inner, Shared};
use crate::config::{self, PATH_UNITS_MAX};
use crate::control;
use crate::kmdf::{Kmdf, Origin, RequestContext};
use crate::queue_spec::VOLUME_QUEUE;
use crate::queues::{self, Handlers};
use crate::wdf::{self, context_type, names_equal, size_ulong};

/// The filter device's context: its cell, as `Arc::into_raw` (released in the destroy
/// callback). Zero-filled by WDF: null until `evt_device_add` sets it.
pub struct DeviceContext {
    shared: *const Shared,
}

context_type!(DEVICE_CONTEXT_TYPE, DeviceContext);

/// The cell of a filter device, borrowed for a callback of that device.
///
/// # Safety
/// `device` must be a live filter device; the reference must not outlive the callback.
unsafe fn shared_of<'a>(device: WDFDEVICE) -> Option<&'a Shared> {
    // SAFETY: the caller's contract; the pointer is null or from `Arc::into_raw`, and the
    // reference it holds is released only in the destroy callback, after every callback.
    unsafe {
        let ctx: *mut DeviceContext = DEVICE_CONTEXT_TYPE.get(device as WDFOBJECT);
        if ctx.is_null() {
            return None;
        }
        (*ctx).shared.as_ref()
    }
}

/// A new reference to the cell of `device`.
///
/// # Safety
/// As for [`shared_of`].
unsafe fn shared_arc(device: WDFDEVICE) -> Option<Arc<Shared>> {
    // SAFETY: the caller's contract; the context's pointer came from `Arc::into_raw` and
    // its reference is still held, so adding one and taking it back is balanced.
    unsafe {
        let ctx: *mut DeviceContext = DEVICE_CONTEXT_TYPE.get(device as WDFOBJECT);
        if ctx.is_null() || (*ctx).shared.is_null() {
            return None;
        }
        Arc::increment_strong_count((*ctx).shared);
        Some(Arc::from_raw((*ctx).shared))
    }
}

/// Runs one event as the cell's owner: the only place the shell calls the filter's
/// callbacks. Once the device is being removed, new requests are refused; requests
/// already sent down, the timer and the metadata commit go on, since the engine still
/// completes what it sent down (and the HYDRATE requests those writes came from).
pub fn dispatch(inner: &mut Inner, event: Event) {
    let Inner {
        filter,
        fw,
        removed,
        ..
    } = inner;
    match event {
        Event::Io(request) => match filter.as_mut().filter(|_| !*removed) {
            Some(f) => f.on_io(fw, request),
            None => fw.complete(request, Status::DEVICE_NOT_READY, 0),
        },
        Event::Control(request) => match filter.as_mut().filter(|_| !*removed) {
            Some(f) => f.on_control(fw, request),
            None => fw.complete(request, Status::DEVICE_NOT_READY, 0),
        },
        Event::Timer => {
            if let Some(f) = filter.as_mut() {
                f.on_timer(fw);
            }
        }
        // Also after removal: a request whose completion was left to this callback
        // (cancellation won the race) is completed here.
        Event::Cancel(request) => match filter.as_mut() {
            Some(f) => f.on_cancel(fw, request),
            None => fw.complete(request, Status::CANCELLED, 0),
        },
        Event::Remove => {
            if !*removed {
                *removed = true;
                if let Some(f) = filter.as_mut() {
                    f.on_remove(fw);
                }
            }
        }
        Event::LowerComplete(request) => {
            // Read everything first: the filter may complete `request` below.
            // SAFETY: a request back from the lower target, ours again, with our context.
            let (origin, forget, lower, status) = unsafe {
                let ctx = RequestContext::of(request);
                (
                    (*ctx).origin,
                    (*ctx).forget,
                    (*ctx).lower,
                    Status((*ctx).status as u32),
                )
            };
            let own = matches!(origin, Origin::OwnWrite | Origin::OwnFlush);
            match filter.as_mut() {
                Some(f) if !forget => f.on_lower_complete(fw, lower, status),
                // A pass-through flush (`Kmdf::send_and_forget`), or no filter (never
                // started): the lower status and information are the answer.
                _ if !own => fw.complete(request, status, 0),
                _ => {}
            }
            if own {
                // SAFETY: our own request, back from the target and reported.
                unsafe { Kmdf::free_own(request) };
            }
        }
    }
}

/// `EvtDriverDeviceAdd`: attach to the target volume only.
pub extern "C" fn evt_device_add(_driver: WDFDRIVER, device_init: PWDFDEVICE_INIT) -> NTSTATUS {
    let Some(target) = config::target_device(control::driver()) else {
        return STATUS_SUCCESS;
    };
    let mut pdo_name = [0u16; PATH_UNITS_MAX];
    let mut result_bytes: ULONG = 0;
    // SAFETY: `device_init` is the live init structure WDF passed; the buffer is a local
    // of the size given.
    let nt_status = unsafe {
        call_unsafe_wdf_function_binding!(
            WdfFdoInitQueryProperty,
            device_init,
            _DEVICE_REGISTRY_PROPERTY::DevicePropertyPhysicalDeviceObjectName,
            (PATH_UNITS_MAX * 2) as ULONG,
            pdo_name.as_mut_ptr().cast(),
            &mut result_bytes
        )
    };
    if !nt_success(nt_status) {
        return STATUS_SUCCESS;
    }
    let mut len = (result_bytes as usize / 2).min(PATH_UNITS_MAX);
    while len > 0 && pdo_name[len - 1] == 0 {
        len -= 1;
    }
    if !names_equal(&pdo_name[..len], target.as_units()) {
        // Not the volume being restored: stay out of its stack.
        return STATUS_SUCCESS;
    }
    let parked = match control::add_instance() {
        Ok(parked) => parked,
        Err(nt_status) => return nt_status,
    };
    // SAFETY: `device_init` is live until WdfDeviceCreate consumes it (below).
    let created = unsafe { create_device(device_init) };
    let device = match created {
        Ok(device) => device,
        Err(nt_status) => {
            control::remove_instance();
            return nt_status;
        }
    };
    // From here a failure deletes the device, and its cleanup callback drops the count.
    // SAFETY: `device` is the live device just created, in EvtDriverDeviceAdd.
    unsafe { finish_device(device, parked) }
}

/// The init-structure settings and `WdfDeviceCreate`.
///
/// # Safety
/// `device_init` must be the live init structure of this EvtDriverDeviceAdd.
unsafe fn create_device(mut device_init: PWDFDEVICE_INIT) -> Result<WDFDEVICE, NTSTATUS> {
    // SAFETY: the caller's contract; every structure passed is an initialised local.
    unsafe {
        call_unsafe_wdf_function_binding!(WdfFdoInitSetFilter, device_init);

        let mut pnp = WDF_PNPPOWER_EVENT_CALLBACKS {
            Size: size_ulong::<WDF_PNPPOWER_EVENT_CALLBACKS>(),
            EvtDevicePrepareHardware: Some(evt_prepare_hardware),
            EvtDeviceSelfManagedIoFlush: Some(evt_self_managed_io_flush),
            ..WDF_PNPPOWER_EVENT_CALLBACKS::default()
        };
        call_unsafe_wdf_function_binding!(
            WdfDeviceInitSetPnpPowerEventCallbacks,
            device_init,
            &mut pnp
        );

        let mut request_attributes =
            wdf::attributes(Some(RequestContext::type_info()), ptr::null_mut());
        call_unsafe_wdf_function_binding!(
            WdfDeviceInitSetRequestAttributes,
            device_init,
            &mut request_attributes
        );

        let nt_status = call_unsafe_wdf_function_binding!(
            WdfDeviceInitAssignWdmIrpPreprocessCallback,
            device_init,
            Some(evt_flush_preprocess),
            wdk_sys::IRP_MJ_FLUSH_BUFFERS as u8,
            ptr::null_mut(),
            0
        );
        if !nt_success(nt_status) {
            // A filter's init structure belongs to the framework: not freed by us.
            return Err(nt_status);
        }

        let mut attributes = WDF_OBJECT_ATTRIBUTES {
            EvtCleanupCallback: Some(evt_device_cleanup),
            EvtDestroyCallback: Some(evt_device_destroy),
            ..wdf::attributes(Some(&DEVICE_CONTEXT_TYPE), ptr::null_mut())
        };
        let mut device: WDFDEVICE = ptr::null_mut();
        let nt_status = call_unsafe_wdf_function_binding!(
            WdfDeviceCreate,
            &mut device_init,
            &mut attributes,
            &mut device
        );
        if nt_success(nt_status) {
            Ok(device)
        } else {
            Err(nt_status)
        }
    }
}

/// The lock, timer, work items, the cell, and last the default queue (so no request
/// arrives before the cell exists).
///
/// # Safety
/// `device` must be the live filter device of this EvtDriverDeviceAdd.
unsafe fn finish_device(device: WDFDEVICE, parked: WDFQUEUE) -> NTSTATUS {
    // SAFETY: the caller's contract; every structure passed is an initialised local, and
    // every object is parented to the device except the spin lock (see `Shared::new`).
    unsafe {
        let mut spin_lock: WDFSPINLOCK = ptr::null_mut();
        let nt_status = call_unsafe_wdf_function_binding!(
            WdfSpinLockCreate,
            WDF_NO_OBJECT_ATTRIBUTES,
            &mut spin_lock
        );
        if !nt_success(nt_status) {
            return nt_status;
        }

        let mut timer_config = WDF_TIMER_CONFIG {
            Size: size_ulong::<WDF_TIMER_CONFIG>(),
            EvtTimerFunc: Some(evt_timer),
            Period: 0,
            AutomaticSerialization: 0,
            TolerableDelay: 0,
            ..WDF_TIMER_CONFIG::default()
        };
        let mut attributes = wdf::attributes(None, device as WDFOBJECT);
        let mut timer: WDFTIMER = ptr::null_mut();
        let nt_status = call_unsafe_wdf_function_binding!(
            WdfTimerCreate,
            &mut timer_config,
            &mut attributes,
            &mut timer
        );
        if !nt_success(nt_status) {
            call_unsafe_wdf_function_binding!(WdfObjectDelete, spin_lock as WDFOBJECT);
            return nt_status;
        }

        let work_items = create_work_item(device, Some(evt_commit_work)).and_then(|commit| {
            create_work_item(device, Some(evt_drain_work)).map(|drain| (commit, drain))
        });
        let (commit_item, drain_item) = match work_items {
            Ok(items) => items,
            Err(nt_status) => {
                call_unsafe_wdf_function_binding!(WdfObjectDelete, spin_lock as WDFOBJECT);
                return nt_status;
            }
        };

        let lower: WDFIOTARGET = call_unsafe_wdf_function_binding!(WdfDeviceGetIoTarget, device);
        let mut shared = Arc::new(Shared::new(
            spin_lock,
            Inner {
                filter: None,
                fw: Kmdf {
                    device,
                    lower,
                    parked,
                    timer,
                    commit_item,
                    shared: ptr::null(),
                    pending_commit: None,
                },
                store: None,
                removed: false,
            },
        ));
        let address = Arc::as_ptr(&shared);
        if let Some(unique) = Arc::get_mut(&mut shared) {
            unique.inner_mut().fw.shared = address;
        }
        shared.init(drain_item);
        let ctx: *mut DeviceContext = DEVICE_CONTEXT_TYPE.get(device as WDFOBJECT);
        (*ctx).shared = Arc::into_raw(shared);

        // The volume's requests (`queue_spec::VOLUME_QUEUE`). EvtIoStop is called for
        // every request the driver owns when KMDF purges the queue at removal.
        let handlers = Handlers {
            read: Some(evt_io_read),
            write: Some(evt_io_write),
            device_control: Some(evt_io_device_control),
            internal_device_control: Some(evt_io_device_control),
            stop: Some(evt_io_stop),
        };
        match queues::create(device, &VOLUME_QUEUE, handlers) {
            Ok(_) => STATUS_SUCCESS,
            Err(nt_status) => nt_status,
        }
    }
}

/// A work item of `device` running `function` at PASSIVE_LEVEL.
///
/// # Safety
/// `device` must be a live filter device.
unsafe fn create_work_item(
    device: WDFDEVICE,
    function: PFN_WDF_WORKITEM,
) -> Result<WDFWORKITEM, NTSTATUS> {
    let mut config = WDF_WORKITEM_CONFIG {
        Size: size_ulong::<WDF_WORKITEM_CONFIG>(),
        EvtWorkItemFunc: function,
        // Our own serialisation (the cell), not the parent's lock.
        AutomaticSerialization: 0,
    };
    let mut attributes = wdf::attributes(None, device as WDFOBJECT);
    let mut item: WDFWORKITEM = ptr::null_mut();
    // SAFETY: the caller's contract; initialised config and attributes; out-pointer local.
    let nt_status = unsafe {
        call_unsafe_wdf_function_binding!(
            WdfWorkItemCreate,
            &mut config,
            &mut attributes,
            &mut item
        )
    };
    if nt_success(nt_status) {
        Ok(item)
    } else {
        Err(nt_status)
    }
}

/// `EvtDevicePrepareHardware`: the volume below has started; decide whether it is the
/// restore's volume, open its metadata and create the filter (`start.rs`). A refused
/// volume starts too, with a filter that stays out of its way; a failure fails the
/// volume's start with that status.
extern "C" fn evt_prepare_hardware(
    device: WDFDEVICE,
    _raw: WDFCMRESLIST,
    _translated: WDFCMRESLIST,
) -> NTSTATUS {
    // SAFETY: WDF passes our live device, in a PnP callback.
    let Some(shared) = (unsafe { shared_arc(device) }) else {
        return STATUS_INSUFFICIENT_RESOURCES;
    };
    shared.enter_passive();
    // SAFETY: we are the owner until `leave`; `lower` is copied out.
    let (started, lower) = unsafe {
        let inner = shared.inner();
        (inner.filter.is_some(), inner.fw.lower)
    };
    shared.leave();
    if started {
        // A restart after a stop: the filter and its state carry on.
        return STATUS_SUCCESS;
    }
    let (volume, store) = match crate::start::start(lower) {
        Ok(started) => started,
        Err(nt_status) => return nt_status,
    };
    shared.enter_passive();
    // SAFETY: we are the owner until `leave`.
    unsafe {
        let inner = shared.inner();
        inner.filter = Some(volume);
        inner.store = store;
    }
    shared.leave();
    control::set_active(shared);
    STATUS_SUCCESS
}

/// The preprocess hook for `IRP_MJ_FLUSH_BUFFERS` (module comment).
extern "C" fn evt_flush_preprocess(device: WDFDEVICE, irp: PIRP) -> NTSTATUS {
    // SAFETY: WDF passes our live device and the IRP it received for it.
    let shared = unsafe { shared_of(device) };
    let mut attributes = wdf::attributes(Some(RequestContext::type_info()), ptr::null_mut());
    let mut request: WDFREQUEST = ptr::null_mut();
    // SAFETY: a live IRP at our stack location; `FALSE`: WDF does not free it, we complete
    // it (`Kmdf::complete`).
    let nt_status = unsafe {
        call_unsafe_wdf_function_binding!(
            WdfRequestCreateFromIrp,
            &mut attributes,
            irp,
            0,
            &mut request
        )
    };
    let Some(shared) = shared.filter(|_| nt_success(nt_status)) else {
        let failed = if nt_success(nt_status) {
            STATUS_INSUFFICIENT_RESOURCES
        } else {
            nt_status
        };
        // SAFETY: the IRP is ours to complete (not pended, not passed on); any request we
        // made for it is deleted first.
        unsafe {
            if !request.is_null() {
                call_unsafe_wdf_function_binding!(WdfObjectDelete, request as WDFOBJECT);
            }
            (*irp).IoStatus.__bindgen_anon_1.Status = failed;
            (*irp).IoStatus.Information = 0;
            IofCompleteRequest(irp, wdk_sys::IO_NO_INCREMENT as _);
        }
        return failed;
    };
    // SAFETY: the new request has our context; the IRP is pended before anyone else can
    // complete it, and we return STATUS_PENDING as IoMarkIrpPending requires.
    unsafe {
        let ctx = RequestContext::of(request);
        (*ctx).origin = Origin::FlushIrp;
        (*ctx).irp = irp;
        wdf::mark_irp_pending(irp);
    }
    shared.enter(Event::Io(request));
    STATUS_PENDING
}

fn io(queue: WDFQUEUE, request: WDFREQUEST) {
    // SAFETY: the queue is the live default queue of one of our devices.
    let device = unsafe { call_unsafe_wdf_function_binding!(WdfIoQueueGetDevice, queue) };
    // SAFETY: our live device, during its queue callback.
    match unsafe { shared_of(device) } {
        Some(shared) => shared.enter(Event::Io(request)),
        // SAFETY: a request just presented to us, completed once.
        None => unsafe {
            call_unsafe_wdf_function_binding!(
                WdfRequestComplete,
                request,
                wdk_sys::STATUS_DEVICE_NOT_READY
            )
        },
    }
}

extern "C" fn evt_io_read(queue: WDFQUEUE, request: WDFREQUEST, _length: usize) {
    io(queue, request);
}

extern "C" fn evt_io_write(queue: WDFQUEUE, request: WDFREQUEST, _length: usize) {
    io(queue, request);
}

extern "C" fn evt_io_device_control(
    queue: WDFQUEUE,
    request: WDFREQUEST,
    _output_buffer_length: usize,
    _input_buffer_length: usize,
    _io_control_code: ULONG,
) {
    io(queue, request);
}

/// `EvtIoStop` of the volume's queue. KMDF calls it for each request the driver owns
/// when it purges the queue at removal (`FxIoQueue::ProcessPowerEvents`, state
/// `FxIoQueuePowerPurgeNotifyingDriver`) and then waits for all of them. Normally
/// `evt_self_managed_io_flush` has already failed what the filter held; this is the
/// backstop. The request itself is left alone: it is held (failed by the removal), in
/// the backlog (refused when it runs), or at the lower device (completes from there).
extern "C" fn evt_io_stop(queue: WDFQUEUE, _request: WDFREQUEST, action_flags: ULONG) {
    let purge = _WDF_REQUEST_STOP_ACTION_FLAGS::WdfRequestStopActionPurge as ULONG;
    if action_flags & purge == 0 {
        // Suspend: only for power-managed queues, which this one is not.
        return;
    }
    // SAFETY: the queue is the live default queue of one of our devices.
    let device = unsafe { call_unsafe_wdf_function_binding!(WdfIoQueueGetDevice, queue) };
    // SAFETY: our live device, during its queue callback.
    if let Some(shared) = unsafe { shared_of(device) } {
        shared.enter(Event::Remove);
    }
}

/// `EvtDeviceSelfManagedIoFlush` (PASSIVE_LEVEL): the device is being removed, gracefully
/// or by surprise. KMDF calls it from `PnpCleanupForRemove`, before
/// `PnpEventRemovedCommonCode` purges the non-power-managed queues and waits for every
/// request the driver owns (pnpstatemachine.cpp). Held requests fail here, so that wait
/// is short; stop routing the service's requests to this instance too.
extern "C" fn evt_self_managed_io_flush(device: WDFDEVICE) {
    // SAFETY: WDF passes our live device, in a PnP callback.
    if let Some(shared) = unsafe { shared_arc(device) } {
        control::clear_active(&shared);
        shared.enter_passive();
        // SAFETY: we are the owner until `leave`.
        dispatch(unsafe { shared.inner() }, Event::Remove);
        shared.leave();
    }
}

/// The one-shot timer (a DPC, DISPATCH_LEVEL).
extern "C" fn evt_timer(timer: WDFTIMER) {
    // SAFETY: the timer is a live child of our device, which outlives its callbacks.
    unsafe {
        let device = call_unsafe_wdf_function_binding!(WdfTimerGetParentObject, timer) as WDFDEVICE;
        if let Some(shared) = shared_of(device) {
            shared.enter(Event::Timer);
        }
    }
}

/// The commit work item (PASSIVE_LEVEL): owns the filter while the metadata file is
/// written and flushed; I/O meanwhile waits in the backlog. It runs during removal too:
/// a flush from above waits for its commit, and KMDF's purge waits for that flush. The
/// file stays open until the device cleanup, after the purge.
extern "C" fn evt_commit_work(item: WDFWORKITEM) {
    // SAFETY: the work item is a live child of our device, which outlives its callbacks.
    let Some(shared) = (unsafe {
        let device =
            call_unsafe_wdf_function_binding!(WdfWorkItemGetParentObject, item) as WDFDEVICE;
        shared_of(device)
    }) else {
        return;
    };
    shared.enter_passive();
    {
        // SAFETY: we are the owner until `leave`.
        let Inner {
            filter, fw, store, ..
        } = unsafe { shared.inner() };
        if let (Some(commit), Some(filter), Some(store)) =
            (fw.pending_commit.take(), filter.as_mut(), store.as_mut())
        {
            filter.on_commit_work(fw, commit, store);
        }
    }
    shared.leave();
}

/// Continues a backlog an owner at DISPATCH_LEVEL handed over (PASSIVE_LEVEL; already
/// the owner).
extern "C" fn evt_drain_work(item: WDFWORKITEM) {
    // SAFETY: as in `evt_commit_work`.
    unsafe {
        let device =
            call_unsafe_wdf_function_binding!(WdfWorkItemGetParentObject, item) as WDFDEVICE;
        if let Some(shared) = shared_of(device) {
            shared.leave();
        }
    }
}

/// Device cleanup (PASSIVE_LEVEL): the device is going away, after KMDF purged its queues
/// and ran down its timer and work items (a parent's cleanup runs after its children's).
/// The removal normally happened in `evt_self_managed_io_flush`; this makes sure of it,
/// closes the metadata file, and drops the instance count (deleting the control device
/// with the last instance).
extern "C" fn evt_device_cleanup(object: WDFOBJECT) {
    // SAFETY: WDF passes our device object.
    if let Some(shared) = unsafe { shared_arc(object as WDFDEVICE) } {
        control::clear_active(&shared);
        shared.enter_passive();
        // SAFETY: we are the owner until `leave`.
        unsafe {
            let inner = shared.inner();
            dispatch(inner, Event::Remove);
            if let Some(mut store) = inner.store.take() {
                store.close();
            }
        }
        shared.leave();
    }
    control::remove_instance();
}

/// Device destroy: release the context's reference to the cell.
extern "C" fn evt_device_destroy(object: WDFOBJECT) {
    // SAFETY: WDF passes our device object, whose context is still readable here; the
    // pointer came from `Arc::into_raw` and is released exactly once.
    unsafe {
        let ctx: *mut DeviceContext = DEVICE_CONTEXT_TYPE.get(object);
        if !ctx.is_null() && !(*ctx).shared.is_null() {
            drop(Arc::from_raw((*ctx).shared));
            (*ctx).shared = ptr::null();
        }
    }
}
