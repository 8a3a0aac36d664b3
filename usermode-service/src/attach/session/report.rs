//! Where an attach session's progress goes while it runs: the status file `rehydrate
//! status` reads (as `rehydrate restore` keeps one) and a progress bar on stderr when
//! it is a terminal. Both are conveniences: neither can stop the session.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rehydrate_driver::abi::StatusCounters;
use rehydrate_driver::Geometry;

use super::SessionError;
use crate::hydrator::Progress;
use crate::restore::StatusReport;

/// The status file and the bar.
pub(super) struct Reporter {
    status: StatusReport,
    bar: ProgressBar,
    geometry: Geometry,
}

impl Reporter {
    pub(super) fn new(status: StatusReport, geometry: Geometry, bar_wanted: bool) -> Reporter {
        let total = geometry.volume_size_bytes();
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if !bar_wanted || !std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        if let Ok(style) = ProgressStyle::with_template(
            "restore {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        ) {
            bar.set_style(style);
        }
        Reporter {
            status,
            bar,
            geometry,
        }
    }

    /// Takes in the hydrator's counters and the driver's last ones; writes the status
    /// file when due and moves the bar.
    pub(super) fn update(&mut self, progress: &Progress, counters: Option<&StatusCounters>) {
        self.fill(progress, counters);
        let s = self.status.snapshot_mut();
        self.bar.set_position(s.bytes_restored);
        self.bar.set_message(format!(
            "misses {} held {}",
            s.misses_served, s.held_requests
        ));
        self.status.write_if_due();
    }

    /// The last snapshot (complete, stopped or failed), and the bar goes away.
    pub(super) fn finish(
        &mut self,
        result: &Result<(), SessionError>,
        progress: &Progress,
        counters: Option<&StatusCounters>,
    ) {
        self.fill(progress, counters);
        match result {
            Ok(()) => {
                // Every region restored (the driver may be gone by now, so its counters
                // cannot say so any more).
                let s = self.status.snapshot_mut();
                s.regions_restored = s.regions_total;
                s.bytes_restored = s.bytes_total;
                s.held_requests = 0;
                self.status.complete();
            }
            Err(SessionError::Stopped) => self.status.stopped(),
            Err(e) => self.status.failed(e),
        }
        self.bar
            .set_position(self.status.snapshot_mut().bytes_restored);
        self.bar.finish_and_clear();
    }

    fn fill(&mut self, p: &Progress, counters: Option<&StatusCounters>) {
        let region = u64::from(self.geometry.region_size_bytes());
        let total = self.geometry.volume_size_bytes();
        let regions_total = self.geometry.region_count();
        let from_driver = counters.map_or(0, |c| c.regions_restored);
        let s = self.status.snapshot_mut();
        s.regions_total = regions_total;
        s.regions_restored = from_driver.min(regions_total);
        s.bytes_total = total;
        s.bytes_restored = (from_driver * region).max(p.restored_bytes).min(total);
        s.bytes_fetched = p.fetched_bytes;
        s.bytes_zero = p.zero_bytes;
        s.held_requests = counters.map_or(0, |c| c.held_requests);
        s.misses_served = p.misses_served;
        s.fetch_failures = p.failures;
        s.retries = p.retries;
        s.rate_bytes_per_sec = p.rate_bytes_per_sec;
        s.eta_secs = p.eta_secs;
    }
}
