//! What `status` and the progress bar show: bytes, rate, ETA and counters.

/// A snapshot of the hydrator's progress. Cheap to copy.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Progress {
    /// Bytes of the volume.
    pub total_bytes: u64,
    /// Bytes restored, as far as the hydrator knows (last bitmap page plus hydrates
    /// acknowledged since it was asked for).
    pub restored_bytes: u64,
    /// Bytes restored when the hydrator first saw the map (a resumed restore's head start).
    pub restored_at_start_bytes: u64,
    /// Bytes of data transferred from the source.
    pub fetched_bytes: u64,
    /// Bytes restored by zero-fill, with no data transferred.
    pub zero_bytes: u64,
    /// Restore rate, bytes per second, smoothed over the last seconds.
    pub rate_bytes_per_sec: f64,
    /// Seconds until done at the current rate; `None` before there is a rate.
    pub eta_secs: Option<u64>,
    /// On-demand misses served (fetches a request was waiting on).
    pub misses_served: u64,
    /// Fetches retried.
    pub retries: u64,
    /// Fetch-failed messages sent to the driver.
    pub failures: u64,
    /// Hydrates the driver could not write.
    pub hydrate_failures: u64,
    /// Fetches at the source now.
    pub in_flight: usize,
    /// On-demand ranges waiting for a slot.
    pub on_demand_queued: usize,
}

/// Exponentially smoothed rate over ticks.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RateMeter {
    last_ns: Option<u64>,
    last_bytes: u64,
    rate: f64,
}

/// Smoothing window: the rate follows changes within a few seconds.
const RATE_WINDOW_NS: f64 = 3e9;
/// Shortest interval worth sampling (shorter ticks are noise).
const RATE_SAMPLE_MIN_NS: u64 = 100_000_000;

impl RateMeter {
    /// Feeds the restored byte count at `now_ns`.
    pub(crate) fn sample(&mut self, now_ns: u64, bytes: u64) {
        let Some(last) = self.last_ns else {
            self.last_ns = Some(now_ns);
            self.last_bytes = bytes;
            return;
        };
        let dt = now_ns.saturating_sub(last);
        if dt < RATE_SAMPLE_MIN_NS {
            return;
        }
        let instant = bytes.saturating_sub(self.last_bytes) as f64 * 1e9 / dt as f64;
        let alpha = (dt as f64 / RATE_WINDOW_NS).min(1.0);
        self.rate = if self.rate == 0.0 {
            instant
        } else {
            self.rate + alpha * (instant - self.rate)
        };
        self.last_ns = Some(now_ns);
        self.last_bytes = bytes;
    }

    pub(crate) fn rate(&self) -> f64 {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_follows_a_steady_stream() {
        let mut m = RateMeter::default();
        for s in 0..20u64 {
            m.sample(s * 500_000_000, s * 50_000_000);
        }
        assert!((m.rate() - 100e6).abs() < 1e6, "{}", m.rate());
    }
}
