//! The demo's summary: the figures a newcomer wants, and the last line scripts read.
//!
//! ```text
//! demo: ok size=B secs=S mib_per_sec=R first_read_ms=F miss_p50_ms=P miss_p99_ms=Q fetched_bytes=X restored_bytes=Y
//! ```

use std::path::PathBuf;

use super::check::CheckStats;
use super::realtime::DemoStats;
use rehydrate_service::attach::session::SessionReport;

/// What the demo did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    /// Volume size.
    pub size_bytes: u64,
    /// The seed.
    pub seed: u64,
    /// Seconds from boot on the empty disk until every region was restored.
    pub secs: f64,
    /// Restore throughput over those seconds.
    pub mib_per_sec: f64,
    /// Seconds spent making the image, backing it up and starting the server.
    pub setup_secs: f64,
    /// Milliseconds from boot to the first completed read.
    pub first_read_ms: f64,
    /// Reads the filter held for data (on-demand misses).
    pub read_misses: u64,
    /// Median on-demand miss latency: from held to completed.
    pub miss_p50_ms: f64,
    /// 99th percentile of it.
    pub miss_p99_ms: f64,
    /// Bytes of data transferred from the backup server.
    pub fetched_bytes: u64,
    /// Bytes restored by zero-fill, with no transfer (holes of the backup).
    pub zero_bytes: u64,
    /// Bytes of the volume restored (all of it, by the end).
    pub restored_bytes: u64,
    /// Workload reads served.
    pub reads: u64,
    /// Workload writes served.
    pub writes: u64,
    /// Workload flushes served.
    pub flushes: u64,
    /// Workload trims served.
    pub trims: u64,
    /// Sectors the oracle checked in reads (workload and final read-back).
    pub sectors_checked: u64,
    /// The final byte-for-byte check.
    pub final_sectors: u64,
    /// Of those, sectors the workload rewrote.
    pub final_rewritten: u64,
    /// Where the store and images were kept (`--keep`).
    pub kept: Option<PathBuf>,
}

/// The `p`-th percentile (0-100) of `ns`, in milliseconds; 0 when empty.
pub fn percentile_ms(ns: &mut [u64], p: f64) -> f64 {
    if ns.is_empty() {
        return 0.0;
    }
    ns.sort_unstable();
    let rank = ((p / 100.0) * (ns.len() - 1) as f64).round() as usize;
    ns[rank.min(ns.len() - 1)] as f64 / 1e6
}

impl Summary {
    /// Puts the figures together.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        size_bytes: u64,
        seed: u64,
        setup_secs: f64,
        stats: &DemoStats,
        service: &SessionReport,
        sectors_checked: u64,
        check: &CheckStats,
        kept: Option<PathBuf>,
    ) -> Summary {
        let secs = stats.restored_ns.unwrap_or(0) as f64 / 1e9;
        let mut misses = stats.read_miss_latencies_ns.clone();
        Summary {
            size_bytes,
            seed,
            secs,
            mib_per_sec: if secs > 0.0 {
                size_bytes as f64 / (1024.0 * 1024.0) / secs
            } else {
                0.0
            },
            setup_secs,
            first_read_ms: stats.first_read_ns.unwrap_or(0) as f64 / 1e6,
            read_misses: misses.len() as u64,
            miss_p50_ms: percentile_ms(&mut misses, 50.0),
            miss_p99_ms: percentile_ms(&mut misses, 99.0),
            fetched_bytes: service.progress.fetched_bytes,
            zero_bytes: service.progress.zero_bytes,
            restored_bytes: size_bytes,
            reads: stats.reads,
            writes: stats.writes,
            flushes: stats.flushes,
            trims: stats.trims,
            sectors_checked,
            final_sectors: check.sectors,
            final_rewritten: check.rewritten,
            kept,
        }
    }

    /// The human lines before the last one.
    pub fn details(&self) -> Vec<String> {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        vec![
            format!(
                "demo: first read completed {:.1} ms after boot on the empty disk",
                self.first_read_ms
            ),
            format!(
                "demo: restored {:.0} MiB in {:.2} s ({:.1} MiB/s): fetched {:.1} MiB, zero-filled {:.1} MiB without a transfer",
                mib(self.restored_bytes),
                self.secs,
                self.mib_per_sec,
                mib(self.fetched_bytes),
                mib(self.zero_bytes)
            ),
            format!(
                "demo: on-demand read misses {}: p50 {:.2} ms, p99 {:.2} ms (held to completed)",
                self.read_misses, self.miss_p50_ms, self.miss_p99_ms
            ),
            format!(
                "demo: workload during the restore: {} reads, {} writes, {} flushes, {} trims; the oracle checked {} sectors read, no violation",
                self.reads, self.writes, self.flushes, self.trims, self.sectors_checked
            ),
            format!(
                "demo: final check: all {} sectors equal byte for byte ({} from the image, {} as the workload last wrote them)",
                self.final_sectors,
                self.final_sectors - self.final_rewritten,
                self.final_rewritten
            ),
        ]
    }

    /// The last line.
    pub fn line(&self) -> String {
        format!(
            "demo: ok size={} secs={:.3} mib_per_sec={:.1} first_read_ms={:.1} miss_p50_ms={:.2} miss_p99_ms={:.2} fetched_bytes={} restored_bytes={}",
            self.size_bytes,
            self.secs,
            self.mib_per_sec,
            self.first_read_ms,
            self.miss_p50_ms,
            self.miss_p99_ms,
            self.fetched_bytes,
            self.restored_bytes
        )
    }

    /// The summary as one JSON object.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| self.line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks_of_the_sorted_latencies() {
        let mut v: Vec<u64> = (1..=100).rev().map(|ms| ms * 1_000_000).collect();
        assert_eq!(percentile_ms(&mut v, 50.0), 51.0);
        assert_eq!(percentile_ms(&mut v, 99.0), 99.0);
        assert_eq!(percentile_ms(&mut [], 99.0), 0.0);
    }
}
