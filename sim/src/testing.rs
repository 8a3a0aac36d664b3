//! Small constructors for unit tests.

use crate::data::Backup;
use crate::device::Disk;
use crate::faults::Faults;
use crate::irp::{IrpId, Layer, Routine, WdfState};
use crate::kernel::Kernel;
use crate::oracle::Oracle;
use crate::rng::Rng;
use crate::stack::Lower;
use crate::wdf::SimWdf;

/// A kernel over a small volume with no faults.
pub fn kernel() -> Kernel {
    let lower = Lower {
        volume_online: true,
        volume_sectors: 64,
        partition_start: 8,
        max_transfer_sectors: 16,
        port_queue: Default::default(),
        port_active: 0,
        port_depth: 2,
        disk: Disk::new(128, 512, true),
        latency_ns: 1000,
        media_ppm: 0,
        started: [false; 11],
    };
    let oracle = Oracle::new(64, 8, Backup::new(1, 4096, 0), 20_000_000_000);
    Kernel::new(Rng::new(1), Faults::NONE, oracle, lower)
}

/// An IRP from `by` (its completion kept for the test to read) presented to the filter's
/// device `to` as `wdf::dispatch` presents it: marked pending and owned by the driver.
/// Returns it and the open call frame (`end_call` it with `STATUS_PENDING`).
pub fn presented(wdf: &mut SimWdf, by: Layer, to: Layer, major: u8, ioctl: u32) -> (IrpId, usize) {
    let k = &mut wdf.k;
    let id = k.alloc_irp(by, to.stack_size());
    if let Some(next) = k.next_loc(by, id) {
        next.major = major;
        next.ioctl = ioctl;
        next.length = 512;
    }
    k.set_completion(by, id, Routine::Test { keep: true });
    let frame = k.begin_call(by, id, to).expect("the call begins");
    k.mark_pending(to, id);
    if let Some(irp) = k.irps.get_mut(id) {
        irp.wdf = WdfState::Owned;
    }
    (id, frame)
}
