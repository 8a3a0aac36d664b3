//! Small constructors for unit tests.

use crate::data::Backup;
use crate::device::Disk;
use crate::faults::Faults;
use crate::kernel::Kernel;
use crate::oracle::Oracle;
use crate::rng::Rng;
use crate::stack::Lower;

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
