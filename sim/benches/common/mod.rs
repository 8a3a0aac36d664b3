//! What the simulator's benches share.

use rehydrate_sim::workload::WorkloadConfig;

/// Plain small I/O: 4 KiB and smaller reads and writes at random places, a flush now
/// and then (the usual IOPS measure: how fast IRPs move).
pub fn small_io() -> WorkloadConfig {
    WorkloadConfig {
        read: 500,
        write: 450,
        fua_write: 0,
        flush: 50,
        trim: 0,
        get_length: 0,
        bad: 0,
        aligned_pct: 0,
        sequential_pct: 0,
        max_sectors: 8,
        ..WorkloadConfig::default()
    }
}
