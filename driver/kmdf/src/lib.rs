//! The Rehydrate volume filter as a Windows kernel driver: a KMDF 1.33 upper filter of
//! the Volume class, built with windows-drivers-rs.
//!
//! This crate is a thin shell. It turns WDF events into calls of the portable filter in
//! `rehydrate-driver` (`Filter::on_io`, `on_control`, `on_lower_complete`, `on_timer`,
//! `on_commit_work`) and implements that crate's `Framework` trait with wdk-sys calls
//! (`kmdf.rs`). It decides nothing about I/O: every decision is in the portable crate,
//! which CI runs against a simulated Windows I/O stack.
//!
//! * `device.rs`: `EvtDriverDeviceAdd` (attach to the configured volume only), the
//!   default queue, the flush hook, the timer and work items, removal
//!   (`EvtDeviceSelfManagedIoFlush`, `EvtIoStop`, cleanup).
//! * `start.rs`: start (`EvtDevicePrepareHardware`): ask the volume below what it is,
//!   let the portable start refuse another volume, open the metadata, build the filter.
//! * `queue_spec.rs` / `queues.rs`: every queue as plain data (checked on Linux) and the
//!   one place a `WDF_IO_QUEUE_CONFIG` is built from it.
//! * `cell.rs`: how concurrent callbacks at up to DISPATCH_LEVEL and the PASSIVE_LEVEL
//!   metadata commit take turns at the filter (a WDFSPINLOCK-guarded owner flag and an
//!   allocation-free backlog).
//! * `control.rs`: the control device the service opens, `\\.\RehydrateControl`.
//! * `kmdf.rs`: `impl Framework for Kmdf` and the completion routine.
//! * `meta_store.rs`: the metadata file (on another volume) behind `MetaStore`.
//! * `config.rs`: the `Parameters` registry key.
//! * `wdf.rs`: what C gets from header macros.
#![cfg_attr(not(test), no_std)]

extern crate alloc;
#[cfg(not(test))]
extern crate wdk_panic;

mod wdf;

mod cell;
mod config;
mod control;
mod device;
mod kmdf;
mod meta_store;
mod queue_spec;
mod queues;
mod start;

use core::ptr;

use wdk::nt_success;
#[cfg(not(test))]
use wdk_alloc::WdkAllocator;
use wdk_sys::{
    call_unsafe_wdf_function_binding, DRIVER_OBJECT, NTSTATUS, PCUNICODE_STRING, PDRIVER_OBJECT,
    WDFDRIVER, WDF_DRIVER_CONFIG, WDF_NO_OBJECT_ATTRIBUTES,
};

use crate::wdf::size_ulong;

/// Kernel heap for `alloc` (the filter's maps and queues): nonpaged pool, usable at
/// DISPATCH_LEVEL, which is where most of the filter runs.
#[cfg(not(test))]
#[global_allocator]
static GLOBAL_ALLOCATOR: WdkAllocator = WdkAllocator;

/// `DriverEntry`: creates the WDF driver object with the device-add callback and the
/// driver-wide state of the control device.
///
/// # Safety
/// Called once by the I/O manager with a valid driver object and registry path.
#[export_name = "DriverEntry"]
pub unsafe extern "system" fn driver_entry(
    driver: &mut DRIVER_OBJECT,
    registry_path: PCUNICODE_STRING,
) -> NTSTATUS {
    let mut config = WDF_DRIVER_CONFIG {
        Size: size_ulong::<WDF_DRIVER_CONFIG>(),
        EvtDriverDeviceAdd: Some(device::evt_device_add),
        ..WDF_DRIVER_CONFIG::default()
    };
    let mut wdf_driver: WDFDRIVER = ptr::null_mut();
    // SAFETY: `driver` and `registry_path` come from the I/O manager; the config is an
    // initialised local; no object attributes; the handle goes to a local.
    let nt_status = unsafe {
        call_unsafe_wdf_function_binding!(
            WdfDriverCreate,
            driver as PDRIVER_OBJECT,
            registry_path,
            WDF_NO_OBJECT_ATTRIBUTES,
            &mut config,
            &mut wdf_driver
        )
    };
    if !nt_success(nt_status) {
        return nt_status;
    }
    // Before returning: no device can be added until DriverEntry is done.
    control::init(wdf_driver)
}
