//! The control device the service talks to: `\Device\RehydrateControl`, linked as
//! `\DosDevices\RehydrateControl` (`\\.\RehydrateControl` from user mode).
//!
//! Created with the first filter instance and deleted with the last (a count of filter
//! instances under a WDFWAITLOCK, PASSIVE_LEVEL only), as KMDF's sideband filter sample
//! does. Its SDDL admits only SYSTEM and Administrators (`SDDL_DEVOBJ_SYS_ALL_ADM_ALL`),
//! and `FILE_DEVICE_SECURE_OPEN` applies that ACL to every name under the device too.
//!
//! Two queues: a parallel default queue whose `EvtIoDeviceControl` hands each ABI IOCTL
//! to `Filter::on_control` of the attached instance, and a manual queue where the filter
//! parks the service's pended `GET_MISSING` requests (the inverted call). Both are not
//! power-managed: a control device has no power state.
//!
//! The ABI names no volume, so requests go to the one *active* instance: the instance
//! whose metadata opened (the configuration names one target volume). With none, a
//! request fails with `STATUS_DEVICE_NOT_READY`.

use alloc::sync::Arc;
use core::cell::UnsafeCell;
use core::ptr;

use rehydrate_driver::abi::FILE_DEVICE_REHYDRATE;
use wdk::nt_success;
use wdk_sys::{
    call_unsafe_wdf_function_binding, NTSTATUS, PWDFDEVICE_INIT, STATUS_DEVICE_NOT_READY,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_SUCCESS, WDFDEVICE, WDFDRIVER, WDFOBJECT, WDFQUEUE,
    WDFREQUEST, WDFSPINLOCK, WDFWAITLOCK, WDF_NO_OBJECT_ATTRIBUTES,
};

use crate::cell::{Event, Shared};
use crate::kmdf::RequestContext;
use crate::queue_spec::{CONTROL_QUEUE, PARKED_QUEUE};
use crate::queues::{self, Handlers};
use crate::wdf::{self, unicode, wide};

/// What the driver keeps between devices.
struct Global {
    driver: WDFDRIVER,
    /// Serialises creating and deleting the control device (PASSIVE_LEVEL).
    wait_lock: WDFWAITLOCK,
    /// Guards `active` (taken at DISPATCH_LEVEL by the control queue).
    spin_lock: WDFSPINLOCK,
    instances: u32,
    device: WDFDEVICE,
    parked: WDFQUEUE,
    active: Option<Arc<Shared>>,
}

struct GlobalCell(UnsafeCell<Global>);

// SAFETY: `driver`, `wait_lock` and `spin_lock` are written once in DriverEntry before any
// callback can run; `instances`, `device` and `parked` only under `wait_lock`; `active`
// only under `spin_lock`.
unsafe impl Sync for GlobalCell {}

static GLOBAL: GlobalCell = GlobalCell(UnsafeCell::new(Global {
    driver: ptr::null_mut(),
    wait_lock: ptr::null_mut(),
    spin_lock: ptr::null_mut(),
    instances: 0,
    device: ptr::null_mut(),
    parked: ptr::null_mut(),
    active: None,
}));

fn global() -> *mut Global {
    GLOBAL.0.get()
}

/// The WDF driver object.
pub fn driver() -> WDFDRIVER {
    // SAFETY: written once in `init`, before any reader runs.
    unsafe { (*global()).driver }
}

/// Records the driver and creates the locks. DriverEntry, PASSIVE_LEVEL.
pub fn init(driver: WDFDRIVER) -> NTSTATUS {
    let g = global();
    let mut wait_lock: WDFWAITLOCK = ptr::null_mut();
    let mut spin_lock: WDFSPINLOCK = ptr::null_mut();
    // SAFETY: DriverEntry runs before any callback, so nothing else touches `GLOBAL`; the
    // locks default to the driver as parent; out-pointers are locals.
    unsafe {
        (*g).driver = driver;
        let nt_status = call_unsafe_wdf_function_binding!(
            WdfWaitLockCreate,
            WDF_NO_OBJECT_ATTRIBUTES,
            &mut wait_lock
        );
        if !nt_success(nt_status) {
            return nt_status;
        }
        let nt_status = call_unsafe_wdf_function_binding!(
            WdfSpinLockCreate,
            WDF_NO_OBJECT_ATTRIBUTES,
            &mut spin_lock
        );
        if !nt_success(nt_status) {
            return nt_status;
        }
        (*g).wait_lock = wait_lock;
        (*g).spin_lock = spin_lock;
    }
    STATUS_SUCCESS
}

/// One more filter instance: creates the control device for the first. Returns the
/// manual queue for parked requests. EvtDriverDeviceAdd, PASSIVE_LEVEL.
pub fn add_instance() -> Result<WDFQUEUE, NTSTATUS> {
    let g = global();
    // SAFETY: PASSIVE_LEVEL; the wait lock was created in `init`; a null timeout waits.
    unsafe {
        let _ =
            call_unsafe_wdf_function_binding!(WdfWaitLockAcquire, (*g).wait_lock, ptr::null_mut());
    }
    // SAFETY: under the wait lock.
    let result = unsafe {
        if (*g).instances == 0 {
            create_control_device().map(|(device, parked)| {
                (*g).device = device;
                (*g).parked = parked;
            })
        } else {
            Ok(())
        }
        .map(|()| {
            (*g).instances += 1;
            (*g).parked
        })
    };
    // SAFETY: paired with the acquire above.
    unsafe { call_unsafe_wdf_function_binding!(WdfWaitLockRelease, (*g).wait_lock) };
    result
}

/// One filter instance fewer: deletes the control device with the last. Device
/// cleanup, PASSIVE_LEVEL.
pub fn remove_instance() {
    let g = global();
    // SAFETY: as in `add_instance`.
    unsafe {
        let _ =
            call_unsafe_wdf_function_binding!(WdfWaitLockAcquire, (*g).wait_lock, ptr::null_mut());
        debug_assert!((*g).instances > 0);
        (*g).instances = (*g).instances.saturating_sub(1);
        if (*g).instances == 0 && !(*g).device.is_null() {
            // Deleting the device purges its queues: parked requests complete cancelled.
            call_unsafe_wdf_function_binding!(WdfObjectDelete, (*g).device as WDFOBJECT);
            (*g).device = ptr::null_mut();
            (*g).parked = ptr::null_mut();
        }
        call_unsafe_wdf_function_binding!(WdfWaitLockRelease, (*g).wait_lock);
    }
}

/// Makes `shared` the instance control requests go to (its metadata opened).
pub fn set_active(shared: Arc<Shared>) {
    let old = swap_active(Some(shared));
    debug_assert!(old.is_none(), "two target volumes attached");
    drop(old);
}

/// Stops routing control requests to `shared` if they went there.
pub fn clear_active(shared: &Arc<Shared>) {
    let g = global();
    // SAFETY: `active` is only touched under the spin lock.
    let old = unsafe {
        call_unsafe_wdf_function_binding!(WdfSpinLockAcquire, (*g).spin_lock);
        let old = if (*g).active.as_ref().is_some_and(|a| Arc::ptr_eq(a, shared)) {
            (*g).active.take()
        } else {
            None
        };
        call_unsafe_wdf_function_binding!(WdfSpinLockRelease, (*g).spin_lock);
        old
    };
    // Dropped outside the spin lock (PASSIVE_LEVEL here; the caller still holds a
    // reference, so this never frees the instance).
    drop(old);
}

fn swap_active(new: Option<Arc<Shared>>) -> Option<Arc<Shared>> {
    let g = global();
    // SAFETY: `active` is only touched under the spin lock.
    unsafe {
        call_unsafe_wdf_function_binding!(WdfSpinLockAcquire, (*g).spin_lock);
        let old = core::mem::replace(&mut (*g).active, new);
        call_unsafe_wdf_function_binding!(WdfSpinLockRelease, (*g).spin_lock);
        old
    }
}

fn active() -> Option<Arc<Shared>> {
    let g = global();
    // SAFETY: `active` is only touched under the spin lock; cloning an `Arc` does not
    // allocate, so it is fine at DISPATCH_LEVEL.
    unsafe {
        call_unsafe_wdf_function_binding!(WdfSpinLockAcquire, (*g).spin_lock);
        let active = (*g).active.clone();
        call_unsafe_wdf_function_binding!(WdfSpinLockRelease, (*g).spin_lock);
        active
    }
}

/// Creates the control device, its symbolic link and its two queues.
///
/// # Safety
/// PASSIVE_LEVEL, under the global wait lock.
unsafe fn create_control_device() -> Result<(WDFDEVICE, WDFQUEUE), NTSTATUS> {
    // D:P(A;;GA;;;SY)(A;;GA;;;BA): SDDL_DEVOBJ_SYS_ALL_ADM_ALL.
    let sddl = unicode(wide!("D:P(A;;GA;;;SY)(A;;GA;;;BA)"));
    let name = unicode(wide!("\\Device\\RehydrateControl"));
    let link = unicode(wide!("\\DosDevices\\RehydrateControl"));

    // SAFETY: the driver object is live; the SDDL string outlives the call.
    let mut init: PWDFDEVICE_INIT =
        unsafe { call_unsafe_wdf_function_binding!(WdfControlDeviceInitAllocate, driver(), &sddl) };
    if init.is_null() {
        return Err(STATUS_INSUFFICIENT_RESOURCES);
    }
    // SAFETY: `init` is the live init structure just allocated; the strings outlive the
    // calls. On failure before WdfDeviceCreate we free it, as WDF requires.
    let named = unsafe {
        call_unsafe_wdf_function_binding!(WdfDeviceInitSetDeviceType, init, FILE_DEVICE_REHYDRATE);
        call_unsafe_wdf_function_binding!(
            WdfDeviceInitSetCharacteristics,
            init,
            wdk_sys::FILE_DEVICE_SECURE_OPEN,
            1
        );
        let mut request_attributes =
            wdf::attributes(Some(RequestContext::type_info()), ptr::null_mut());
        call_unsafe_wdf_function_binding!(
            WdfDeviceInitSetRequestAttributes,
            init,
            &mut request_attributes
        );
        call_unsafe_wdf_function_binding!(WdfDeviceInitAssignName, init, &name)
    };
    if !nt_success(named) {
        // SAFETY: not consumed by WdfDeviceCreate.
        unsafe { call_unsafe_wdf_function_binding!(WdfDeviceInitFree, init) };
        return Err(named);
    }
    let mut device: WDFDEVICE = ptr::null_mut();
    // SAFETY: `init` is live; the out-pointer is a local. On success WdfDeviceCreate frees
    // the init structure and nulls `init`; on failure it leaves both to us
    // (`FxDevice::_Create`, fxdevice.cpp).
    let nt_status = unsafe {
        call_unsafe_wdf_function_binding!(
            WdfDeviceCreate,
            &mut init,
            WDF_NO_OBJECT_ATTRIBUTES,
            &mut device
        )
    };
    if !nt_success(nt_status) {
        if !init.is_null() {
            // SAFETY: not consumed by the failed WdfDeviceCreate; freed once.
            unsafe { call_unsafe_wdf_function_binding!(WdfDeviceInitFree, init) };
        }
        return Err(nt_status);
    }
    // SAFETY: `device` is live; on any failure below we delete it, which deletes its
    // queues and link too.
    unsafe {
        let built = build_control_device(device, &link);
        match built {
            Ok(parked) => {
                call_unsafe_wdf_function_binding!(WdfControlFinishInitializing, device);
                Ok((device, parked))
            }
            Err(nt_status) => {
                call_unsafe_wdf_function_binding!(WdfObjectDelete, device as WDFOBJECT);
                Err(nt_status)
            }
        }
    }
}

/// The link and the two queues of a new control device.
///
/// # Safety
/// `device` is a live control device not yet finished initialising.
unsafe fn build_control_device(
    device: WDFDEVICE,
    link: &wdk_sys::UNICODE_STRING,
) -> Result<WDFQUEUE, NTSTATUS> {
    // SAFETY: the caller's contract; `link` outlives the call.
    unsafe {
        let nt_status =
            call_unsafe_wdf_function_binding!(WdfDeviceCreateSymbolicLink, device, link);
        if !nt_success(nt_status) {
            return Err(nt_status);
        }
        queues::create(
            device,
            &CONTROL_QUEUE,
            Handlers {
                device_control: Some(evt_control_ioctl),
                ..Handlers::default()
            },
        )?;
        queues::create(device, &PARKED_QUEUE, Handlers::default())
    }
}

/// `EvtIoDeviceControl` of the control device: hands the request to the active filter.
extern "C" fn evt_control_ioctl(
    _queue: WDFQUEUE,
    request: WDFREQUEST,
    _output_buffer_length: usize,
    _input_buffer_length: usize,
    _io_control_code: u32,
) {
    match active() {
        Some(shared) => shared.enter(Event::Control(request)),
        None => {
            // SAFETY: a request the queue just presented to us; we complete it once.
            unsafe {
                call_unsafe_wdf_function_binding!(
                    WdfRequestComplete,
                    request,
                    STATUS_DEVICE_NOT_READY
                )
            };
        }
    }
}
