//! Creates the queues described in `queue_spec.rs`: the one place a
//! `WDF_IO_QUEUE_CONFIG` is built, so no queue can be made with a field the spec does not
//! set (`driver/tests/kmdf_queues.rs` checks that from the source).

use core::ptr;

use wdk::nt_success;
use wdk_sys::{
    call_unsafe_wdf_function_binding, _WDF_IO_QUEUE_DISPATCH_TYPE, _WDF_TRI_STATE, NTSTATUS,
    PFN_WDF_IO_QUEUE_IO_DEVICE_CONTROL, PFN_WDF_IO_QUEUE_IO_INTERNAL_DEVICE_CONTROL,
    PFN_WDF_IO_QUEUE_IO_READ, PFN_WDF_IO_QUEUE_IO_STOP, PFN_WDF_IO_QUEUE_IO_WRITE,
    STATUS_INVALID_PARAMETER, WDFDEVICE, WDFQUEUE, WDF_IO_QUEUE_CONFIG, WDF_NO_OBJECT_ATTRIBUTES,
};

use crate::queue_spec::{Dispatch, QueueSpec};
use crate::wdf::size_ulong;

/// The callbacks of a queue that presents requests (a manual queue has none: KMDF
/// refuses callbacks on it, `FxIoQueue::Initialize`).
#[derive(Clone, Copy, Default)]
pub struct Handlers {
    /// `EvtIoRead`.
    pub read: PFN_WDF_IO_QUEUE_IO_READ,
    /// `EvtIoWrite`.
    pub write: PFN_WDF_IO_QUEUE_IO_WRITE,
    /// `EvtIoDeviceControl`.
    pub device_control: PFN_WDF_IO_QUEUE_IO_DEVICE_CONTROL,
    /// `EvtIoInternalDeviceControl`.
    pub internal_device_control: PFN_WDF_IO_QUEUE_IO_INTERNAL_DEVICE_CONTROL,
    /// `EvtIoStop`: called for each request the driver owns when the queue is purged.
    pub stop: PFN_WDF_IO_QUEUE_IO_STOP,
}

impl Handlers {
    fn any(&self) -> bool {
        self.read.is_some()
            || self.write.is_some()
            || self.device_control.is_some()
            || self.internal_device_control.is_some()
            || self.stop.is_some()
    }
}

/// `WDF_IO_QUEUE_CONFIG_INIT(_DEFAULT_QUEUE)` for `spec`, with `handlers`.
fn config(spec: &QueueSpec, handlers: Handlers) -> WDF_IO_QUEUE_CONFIG {
    let mut config = WDF_IO_QUEUE_CONFIG {
        Size: size_ulong::<WDF_IO_QUEUE_CONFIG>(),
        DispatchType: match spec.dispatch {
            Dispatch::Parallel => _WDF_IO_QUEUE_DISPATCH_TYPE::WdfIoQueueDispatchParallel,
            Dispatch::Manual => _WDF_IO_QUEUE_DISPATCH_TYPE::WdfIoQueueDispatchManual,
        },
        PowerManaged: if spec.power_managed {
            _WDF_TRI_STATE::WdfTrue
        } else {
            _WDF_TRI_STATE::WdfFalse
        },
        DefaultQueue: u8::from(spec.default_queue),
        EvtIoRead: handlers.read,
        EvtIoWrite: handlers.write,
        EvtIoDeviceControl: handlers.device_control,
        EvtIoInternalDeviceControl: handlers.internal_device_control,
        EvtIoStop: handlers.stop,
        ..WDF_IO_QUEUE_CONFIG::default()
    };
    // Writing a plain integer into the union is safe; it is the only arm it has.
    config.Settings.Parallel.NumberOfPresentedRequests = spec.presented_requests_max;
    config
}

/// `WdfIoQueueCreate` of `spec` on `device` (the queue is the device's child).
///
/// # Safety
/// `device` must be a live device; PASSIVE_LEVEL (EvtDriverDeviceAdd or control-device
/// creation).
pub unsafe fn create(
    device: WDFDEVICE,
    spec: &QueueSpec,
    handlers: Handlers,
) -> Result<WDFQUEUE, NTSTATUS> {
    if spec.dispatch == Dispatch::Manual && handlers.any() {
        debug_assert!(false, "a manual queue with callbacks");
        return Err(STATUS_INVALID_PARAMETER);
    }
    let mut config = config(spec, handlers);
    let mut queue: WDFQUEUE = ptr::null_mut();
    // SAFETY: the caller's contract; the config is an initialised local and the queue
    // handle goes to a local.
    let nt_status = unsafe {
        call_unsafe_wdf_function_binding!(
            WdfIoQueueCreate,
            device,
            &mut config,
            WDF_NO_OBJECT_ATTRIBUTES,
            &mut queue
        )
    };
    if nt_success(nt_status) {
        Ok(queue)
    } else {
        Err(nt_status)
    }
}
