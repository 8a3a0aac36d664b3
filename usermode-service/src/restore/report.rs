//! The restore's last line: `restore: complete bytes=N secs=S mib_per_sec=R ...`, or the
//! same fields as one JSON object.

use std::time::Duration;

use super::shell::Outcome;

/// What a finished restore reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Bytes of the volume.
    pub bytes: u64,
    /// Wall-clock seconds of this run.
    pub secs: f64,
    /// MiB per second restored by this run (fetched plus zero-filled).
    pub mib_per_sec: f64,
    /// Data bytes transferred from the source by this run.
    pub fetched_bytes: u64,
    /// Bytes restored by zero-fill (source holes) by this run.
    pub zero_bytes: u64,
    /// Bytes already restored when this run started, neither fetched nor written again.
    pub resumed_bytes: u64,
    /// Fetches retried.
    pub retries: u64,
    /// Metadata commits made.
    pub commits: u64,
    /// Every region is restored (a live export can be stopped before).
    pub complete: bool,
    /// Bytes restored at the end, earlier runs' included.
    pub restored_bytes: u64,
}

impl Summary {
    pub(super) fn new(bytes: u64, elapsed: Duration, outcome: Outcome) -> Summary {
        let secs = elapsed.as_secs_f64();
        let p = outcome.progress;
        let restored = p.fetched_bytes + p.zero_bytes;
        Summary {
            bytes,
            secs,
            mib_per_sec: if secs > 0.0 {
                restored as f64 / (1 << 20) as f64 / secs
            } else {
                0.0
            },
            fetched_bytes: p.fetched_bytes,
            zero_bytes: p.zero_bytes,
            resumed_bytes: outcome.resumed_bytes,
            retries: p.retries,
            commits: outcome.commits,
            complete: outcome.complete || bytes == 0,
            restored_bytes: if bytes == 0 {
                0
            } else {
                outcome.restored_bytes
            },
        }
    }

    /// The key=value last line: `restore: complete ...`, or `restore: stopped ...` for a
    /// live export stopped before every region was restored.
    pub fn line(&self) -> String {
        format!(
            "restore: {} bytes={} secs={:.3} mib_per_sec={:.1} fetched_bytes={} zero_bytes={} resumed_bytes={} skipped_restored_bytes={} retries={} commits={} restored_bytes={}",
            if self.complete { "complete" } else { "stopped" },
            self.bytes, self.secs, self.mib_per_sec, self.fetched_bytes, self.zero_bytes, self.resumed_bytes, self.resumed_bytes, self.retries, self.commits, self.restored_bytes
        )
    }

    /// The same fields as one JSON object.
    pub fn json(&self) -> String {
        serde_json::json!({
            "event": if self.complete { "restore_complete" } else { "restore_stopped" },
            "restored_bytes": self.restored_bytes,
            "bytes": self.bytes,
            "secs": self.secs,
            "mib_per_sec": self.mib_per_sec,
            "fetched_bytes": self.fetched_bytes,
            "zero_bytes": self.zero_bytes,
            "resumed_bytes": self.resumed_bytes,
            "skipped_restored_bytes": self.resumed_bytes,
            "retries": self.retries,
            "commits": self.commits,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_starts_with_the_three_fixed_fields() {
        let s = Summary {
            bytes: 10,
            secs: 2.0,
            mib_per_sec: 1.5,
            fetched_bytes: 6,
            zero_bytes: 4,
            resumed_bytes: 0,
            retries: 0,
            commits: 3,
            complete: true,
            restored_bytes: 10,
        };
        assert!(s
            .line()
            .starts_with("restore: complete bytes=10 secs=2.000 mib_per_sec=1.5 fetched_bytes=6"));
        let v: serde_json::Value = serde_json::from_str(&s.json()).unwrap();
        assert_eq!(v["zero_bytes"], 4);
    }
}
