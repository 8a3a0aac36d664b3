//! The restore's side of the status file: a snapshot kept current by the shell and
//! written about every [`STATUS_INTERVAL`] and once at the end.
//!
//! The status file is a convenience for `rehydrate status`; a restore never fails
//! because it cannot be written. The first write error is logged as a warning, later
//! ones at debug level.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::status::{unix_ms_now, Phase, StatusFile, StatusSnapshot};

/// How often the snapshot is written while restoring.
pub const STATUS_INTERVAL: Duration = Duration::from_millis(500);

/// The snapshot being kept and where it goes.
#[derive(Debug)]
pub struct StatusReport {
    file: Option<StatusFile>,
    snapshot: StatusSnapshot,
    last_write: Option<Instant>,
    warned: bool,
}

impl StatusReport {
    /// Starts reporting a restore of `source` into `target` to `status_file` (or the
    /// default location).
    pub fn new(status_file: Option<&Path>, source: &str, target: &Path) -> StatusReport {
        let file = match StatusFile::for_target(status_file, target) {
            Ok(file) => {
                tracing::debug!(path = %file.path().display(), "restore: status file");
                Some(file)
            }
            Err(e) => {
                tracing::warn!(%e, "restore: no status file; `rehydrate status` will not see this restore");
                None
            }
        };
        StatusReport {
            file,
            // Absolute, so the status reads the same from any directory.
            snapshot: StatusSnapshot::starting(
                source,
                std::path::absolute(target)
                    .unwrap_or_else(|_| target.to_owned())
                    .display()
                    .to_string(),
            ),
            last_write: None,
            warned: false,
        }
    }

    /// Reports a restore of `source` into what `target` names (not a path: a simulated
    /// volume, say) to `file`, or nowhere.
    pub fn with_file(file: Option<StatusFile>, source: &str, target: &str) -> StatusReport {
        StatusReport {
            file,
            snapshot: StatusSnapshot::starting(source, target),
            last_write: None,
            warned: false,
        }
    }

    /// The snapshot, for the shell to fill in its counters.
    pub fn snapshot_mut(&mut self) -> &mut StatusSnapshot {
        &mut self.snapshot
    }

    /// Writes the snapshot if the last write is [`STATUS_INTERVAL`] old (or there was
    /// none yet).
    pub fn write_if_due(&mut self) {
        if self
            .last_write
            .is_none_or(|at| at.elapsed() >= STATUS_INTERVAL)
        {
            self.write();
        }
    }

    /// The restore finished: every byte restored.
    pub fn complete(&mut self) {
        let s = &mut self.snapshot;
        s.phase = Phase::Complete;
        s.eta_secs = Some(0);
        debug_assert_eq!(s.bytes_restored, s.bytes_total);
        self.write();
    }

    /// A live export was stopped before every region was restored.
    pub fn stopped(&mut self) {
        self.snapshot.phase = Phase::Stopped;
        self.snapshot.eta_secs = None;
        self.write();
    }

    /// The restore stopped with `error`.
    pub fn failed(&mut self, error: &dyn std::fmt::Display) {
        self.snapshot.phase = Phase::Failed;
        self.snapshot.eta_secs = None;
        self.snapshot.error = Some(error.to_string());
        self.write();
    }

    fn write(&mut self) {
        self.last_write = Some(Instant::now());
        let Some(file) = &self.file else {
            return;
        };
        self.snapshot.updated_at_unix_ms = unix_ms_now();
        if let Err(e) = file.write(&self.snapshot) {
            if self.warned {
                tracing::debug!(%e, "restore: status file not written");
            } else {
                tracing::warn!(%e, "restore: status file not written");
                self.warned = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::read_status;

    #[test]
    fn snapshots_are_written_when_due_and_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let mut report = StatusReport::new(Some(&path), "nbd://h/x", Path::new("/t"));
        report.snapshot_mut().bytes_total = 8;
        report.write_if_due();
        assert_eq!(read_status(&path).unwrap().bytes_total, 8);
        // Not due again so soon: the file keeps the first snapshot.
        report.snapshot_mut().bytes_restored = 4;
        report.write_if_due();
        assert_eq!(read_status(&path).unwrap().bytes_restored, 0);
        report.snapshot_mut().bytes_restored = 8;
        report.complete();
        let read = read_status(&path).unwrap();
        assert_eq!((read.phase, read.bytes_restored), (Phase::Complete, 8));
        report.failed(&"boom");
        assert_eq!(read_status(&path).unwrap().error.as_deref(), Some("boom"));
    }

    #[test]
    fn an_unwritable_location_does_not_stop_the_restore() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"").unwrap();
        let mut report =
            StatusReport::new(Some(&blocker.join("status.json")), "s", Path::new("/t"));
        report.write_if_due();
        report.failed(&"x");
    }
}
