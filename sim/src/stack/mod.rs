//! The device objects below the filter, one module each, and their dispatch table.
//!
//! ```text
//! file system   (fs.rs, above the filter: originates IRPs)
//! filter        (wdf.rs: a simulated WDF device calling rehydrate_driver::filter)
//! volume        IOCTL_VOLUME_ONLINE/OFFLINE, IOCTL_DISK_GET_LENGTH_INFO; offline fails I/O
//! partition     bounds check; volume offsets become disk offsets (trim ranges too)
//! disk class    splits transfers over the maximum transfer length (MPR routine)
//! port          queue depth; queued IRPs are cancelable (cancel routine)
//! bus           skips its location (IoSkipCurrentIrpStackLocation)
//! device        pends everything; completes on a later step; the medium and cache
//! ```
//!
//! PnP and power IRPs go down every layer with a completion routine that propagates
//! `PendingReturned` (start happens on the way up, after the lower device started).

pub mod bus;
pub mod device;
pub mod disk;
pub mod partition;
pub mod port;
pub mod volume;

use std::collections::VecDeque;

use rehydrate_driver::Status;

use crate::device::Disk;
use crate::irp::{IrpId, Layer, Routine, IRP_MJ_PNP, IRP_MN_REMOVE_DEVICE, IRP_MN_START_DEVICE};
use crate::kernel::Kernel;

/// The state of the layers below the filter.
#[derive(Debug)]
pub struct Lower {
    /// The volume is online (I/O allowed).
    pub volume_online: bool,
    /// Volume size in 512-byte sectors.
    pub volume_sectors: u64,
    /// Where the partition starts on the disk, in 512-byte sectors.
    pub partition_start: u64,
    /// Largest transfer the disk class sends down whole, in sectors.
    pub max_transfer_sectors: u64,
    /// The port's queue of IRPs waiting for a slot.
    pub port_queue: VecDeque<IrpId>,
    /// IRPs the port has at the device.
    pub port_active: u32,
    /// The port's queue depth.
    pub port_depth: u32,
    /// The device's contents.
    pub disk: Disk,
    /// Typical device latency.
    pub latency_ns: u64,
    /// Media errors per million device operations.
    pub media_ppm: u32,
    /// Layers whose device has started (PnP), by `Layer as usize`.
    pub started: [bool; 11],
}

impl Lower {
    /// Forgets everything volatile (power loss); the medium stays.
    pub fn reset_volatile(&mut self) {
        self.volume_online = false;
        self.port_queue.clear();
        self.port_active = 0;
        self.started = [false; 11];
    }
}

/// The dispatch table: `DriverObject->MajorFunction[...]` of each layer.
pub fn dispatch(k: &mut Kernel, target: Layer, id: IrpId) -> Status {
    match target {
        Layer::Volume => volume::dispatch(k, id),
        Layer::Partition => partition::dispatch(k, id),
        Layer::Disk => disk::dispatch(k, id),
        Layer::Port => port::dispatch(k, id),
        Layer::Bus => bus::dispatch(k, id),
        Layer::Device => device::dispatch(k, id),
        other => {
            // The filter and control device are dispatched by the run loop (wdf.rs).
            k.v.fail(
                crate::verifier::Rule::Driver,
                format!("IRP {id:?} sent to {other:?} from below the filter"),
            );
            Status::INVALID_DEVICE_REQUEST
        }
    }
}

/// The usual PnP/power forwarding: copy the location, set a routine that propagates
/// pending (and records a start or remove), call the device below, return its status.
pub fn forward_pnp(k: &mut Kernel, layer: Layer, id: IrpId) -> Status {
    let Some(below) = layer.below() else {
        return Status::INVALID_DEVICE_REQUEST;
    };
    k.copy_to_next(layer, id);
    k.set_completion(layer, id, Routine::Pnp(layer));
    k.call(layer, id, below)
}

/// A layer's PnP/power completion routine.
pub fn pnp_done(k: &mut Kernel, layer: Layer, id: IrpId) -> Status {
    let Some(irp) = k.irps.get(id) else {
        return Status::SUCCESS;
    };
    let (pending, loc, status) = (irp.pending_returned, *irp.loc(), irp.status);
    if pending {
        k.mark_pending(layer, id);
    }
    if loc.major == IRP_MJ_PNP && status.is_success() {
        match loc.minor {
            IRP_MN_START_DEVICE => k.lower.started[layer as usize] = true,
            IRP_MN_REMOVE_DEVICE => k.lower.started[layer as usize] = false,
            _ => {}
        }
    }
    Status::SUCCESS
}
