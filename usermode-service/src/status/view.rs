//! `rehydrate status`: the status file shown to a person (aligned lines) or a program
//! (one JSON object).

use std::fmt::Write as _;
use std::path::PathBuf;

use super::{
    default_status_files, read_status, status_path, unix_ms_now, Phase, StatusError, StatusSnapshot,
};

/// Arguments of `rehydrate status`.
#[derive(Clone, Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the snapshot as one JSON object, with `alive` saying whether its writer
    /// still runs.
    #[arg(long)]
    pub json: bool,
    /// The status file to read [default: every status file in
    /// $XDG_RUNTIME_DIR/rehydrate/, else /tmp/rehydrate-$UID/: one per restore target,
    /// and the demo's]
    #[arg(long, value_name = "PATH")]
    pub status_file: Option<PathBuf>,
    /// Read a restore's metadata file instead (a Windows attach's or a restore's):
    /// opened read-only, nothing written and no lock taken, so it reads beside the
    /// filter or the restore that holds it. Shows where its last commit left it.
    #[arg(long, value_name = "PATH", conflicts_with = "status_file")]
    pub metadata: Option<PathBuf>,
}

impl StatusArgs {
    /// Reads the status file (or, by default, every one) and renders it as asked: one
    /// block per restore, newest first, separated by a blank line (`--json`: one object
    /// per line).
    pub fn run(&self) -> Result<String, StatusError> {
        if let Some(path) = &self.metadata {
            let status = crate::attach::inspect::read(path)?;
            return Ok(match self.json {
                true => serde_json::to_string(&status).unwrap_or_default(),
                false => status.render(),
            });
        }
        let snapshots = match &self.status_file {
            Some(path) => vec![read_status(path)?],
            None => {
                let mut found: Vec<StatusSnapshot> = default_status_files()?
                    .iter()
                    // A file another process is replacing right now is skipped, not fatal.
                    .filter_map(|p| read_status(p).ok())
                    .collect();
                if found.is_empty() {
                    return Err(StatusError::NotFound(status_path(None)?));
                }
                found.sort_by_key(|s| std::cmp::Reverse(s.updated_at_unix_ms));
                found
            }
        };
        let now = unix_ms_now();
        let rendered: Vec<String> = snapshots
            .iter()
            .map(|s| {
                let alive = process_alive(s.pid);
                if self.json {
                    render_json(s, alive)
                } else {
                    render_human(s, alive, now)
                }
            })
            .collect();
        Ok(rendered.join(if self.json { "\n" } else { "\n\n" }))
    }
}

/// Whether process `pid` still runs (Linux: `/proc/PID` exists and is not a zombie;
/// Windows: the process can be opened and has no exit code yet).
/// A pid reused by another process after the writer exited reads as alive; the
/// `updated` age in the view tells the two apart.
#[cfg(not(windows))]
pub fn process_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    let proc_dir = std::path::Path::new("/proc").join(pid.to_string());
    match std::fs::read_to_string(proc_dir.join("stat")) {
        // The state follows the parenthesised command name, which may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// See the other `process_alive`.
#[cfg(windows)]
#[allow(unsafe_code)]
pub fn process_alive(pid: u32) -> bool {
    use windows_sys::Win32::Foundation::{CloseHandle, STILL_ACTIVE};
    use windows_sys::Win32::System::Threading::{
        GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    };
    if pid == 0 {
        return false;
    }
    // SAFETY: plain FFI calls; the handle is checked, used, and closed once.
    unsafe {
        let process = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if process.is_null() {
            return false;
        }
        let mut code = 0u32;
        let ok = GetExitCodeProcess(process, &mut code);
        CloseHandle(process);
        ok != 0 && code == STILL_ACTIVE as u32
    }
}

/// The snapshot plus `alive`, as one line of JSON.
pub fn render_json(snapshot: &StatusSnapshot, alive: bool) -> String {
    let mut value = serde_json::to_value(snapshot).unwrap_or(serde_json::Value::Null);
    if let Some(object) = value.as_object_mut() {
        object.insert("alive".into(), alive.into());
    }
    value.to_string()
}

/// The snapshot as aligned `name: value` lines; `now_ms` is the reader's clock.
pub fn render_human(s: &StatusSnapshot, alive: bool, now_ms: u64) -> String {
    let age = duration(now_ms.saturating_sub(s.updated_at_unix_ms) / 1000);
    let state = match (s.phase, alive) {
        (Phase::Restoring, true) => format!("restoring (pid {})", s.pid),
        (Phase::Restoring, false) => format!("not running (last update {age} ago)"),
        (Phase::Complete, _) => format!("complete (finished {age} ago)"),
        (Phase::Stopped, _) => format!("stopped ({age} ago); run the same command to resume"),
        (Phase::Failed, _) => format!(
            "failed ({age} ago): {}",
            s.error.as_deref().unwrap_or("no reason recorded")
        ),
    };
    let percent = if s.bytes_total == 0 {
        0.0
    } else {
        s.bytes_restored as f64 * 100.0 / s.bytes_total as f64
    };
    let eta = match (s.phase, s.eta_secs) {
        (Phase::Restoring, Some(secs)) if alive => duration(secs),
        _ => "-".into(),
    };
    let overlay = s.overlay.as_ref().map(|o| {
        let cut = if o.state == "merged" {
            "the volume is the target; the overlay may be removed"
        } else if s.regions_total > 0 && s.regions_restored == s.regions_total {
            "cutover possible"
        } else {
            "cutover after the restore"
        };
        format!("{} ({}, O = {} regions; {cut})", o.path, o.state, o.regions)
    });
    let mut rows = vec![
        ("state", state),
        ("source", s.source.clone()),
        ("target", s.target.clone()),
        (
            "restored",
            format!(
                "{} of {} ({percent:.1}%)",
                size(s.bytes_restored),
                size(s.bytes_total)
            ),
        ),
        (
            "regions",
            format!("{} of {}", s.regions_restored, s.regions_total),
        ),
        (
            "this run",
            format!(
                "{} fetched, {} zero-filled",
                size(s.bytes_fetched),
                size(s.bytes_zero)
            ),
        ),
        ("rate", rate(s.rate_bytes_per_sec)),
        ("eta", eta),
        ("held requests", s.held_requests.to_string()),
        (
            "clients",
            s.clients
                .map_or("-".into(), |c| format!("{c} connected to the live export")),
        ),
        (
            "miss latency",
            match (s.miss_latency_ms_p50, s.miss_latency_ms_p99) {
                (Some(p50), Some(p99)) => format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
                _ => "-".into(),
            },
        ),
        ("misses served", s.misses_served.to_string()),
        (
            "failures",
            format!("{} fetch failures, {} retries", s.fetch_failures, s.retries),
        ),
        (
            "started",
            format!(
                "{} ago",
                duration(now_ms.saturating_sub(s.started_at_unix_ms) / 1000)
            ),
        ),
    ];
    if let Some(overlay) = overlay {
        rows.insert(3, ("overlay", overlay));
    }
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (name, value) in rows {
        let _ = writeln!(out, "{:<width$} {value}", format!("{name}:"));
    }
    out.pop();
    out
}

/// `512 B`, `4.0 KiB`, `1.5 GiB`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Rates in MiB/s, the unit storage people compare.
fn rate(bytes_per_sec: f64) -> String {
    format!("{:.1} MiB/s", bytes_per_sec.max(0.0) / (1u64 << 20) as f64)
}

/// `45s`, `1m 23s`, `2h 5m`, `3d 4h`: two units at most.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> StatusSnapshot {
        StatusSnapshot {
            pid: 1234,
            started_at_unix_ms: 1_000_000,
            updated_at_unix_ms: 1_100_000,
            regions_total: 1 << 20,
            regions_restored: 393_216,
            bytes_total: 4 << 30,
            bytes_restored: 3 << 29,
            bytes_fetched: 1 << 30,
            bytes_zero: 300 << 20,
            rate_bytes_per_sec: 85.3 * (1 << 20) as f64,
            eta_secs: Some(83),
            retries: 3,
            ..StatusSnapshot::starting("nbd://127.0.0.1:10809/sys", "/dev/sdb")
        }
    }

    #[test]
    fn units_read_like_a_person_writes_them() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(4096), "4.0 KiB");
        assert_eq!(size(3 << 29), "1.5 GiB");
        assert_eq!(size(u64::MAX), "16.0 EiB");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(83), "1m 23s");
        assert_eq!(duration(7500), "2h 5m");
        assert_eq!(duration(273_600), "3d 4h");
        assert_eq!(rate(1.5 * (1 << 20) as f64), "1.5 MiB/s");
    }

    #[test]
    fn a_running_restore_shows_its_pid_rate_and_eta() {
        let text = render_human(&snapshot(), true, 1_100_500);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "state:         restoring (pid 1234)");
        assert!(
            text.contains("restored:      1.5 GiB of 4.0 GiB (37.5%)"),
            "{text}"
        );
        assert!(text.contains("rate:          85.3 MiB/s"), "{text}");
        assert!(text.contains("eta:           1m 23s"), "{text}");
        // Every value starts in the same column.
        let column = lines[0].find("restoring").unwrap();
        assert!(lines
            .iter()
            .all(|l| l.as_bytes()[column - 1] == b' ' && l.as_bytes()[column] != b' '));
    }

    #[test]
    fn an_overlay_restore_shows_o_beside_d() {
        let mut s = snapshot();
        s.overlay = Some(crate::status::OverlayStatus {
            path: "/srv/o.img".into(),
            regions: 17,
            state: "pseudo-volume".into(),
        });
        let text = render_human(&s, true, 1_100_500);
        assert!(
            text.contains("overlay:       /srv/o.img (pseudo-volume, O = 17 regions; cutover after the restore)"),
            "{text}"
        );
        assert!(text.contains("regions:       393216 of 1048576"), "{text}");
        s.regions_restored = s.regions_total;
        let text = render_human(&s, true, 1_100_500);
        assert!(text.contains("cutover possible"), "{text}");
        assert!(!render_human(&snapshot(), true, 1_100_500).contains("overlay"));
    }

    #[test]
    fn a_dead_writer_and_a_failure_say_so() {
        let text = render_human(&snapshot(), false, 1_112_000);
        assert!(text.starts_with("state:         not running (last update 12s ago)"));
        assert!(text.contains("eta:           -"));
        let mut failed = snapshot();
        failed.phase = Phase::Failed;
        failed.error = Some("range 0+4096 could not be restored".into());
        let text = render_human(&failed, false, 1_100_000);
        assert!(text.starts_with("state:         failed (0s ago): range 0+4096"));
    }

    #[test]
    fn json_is_the_snapshot_plus_alive() {
        let v: serde_json::Value = serde_json::from_str(&render_json(&snapshot(), false)).unwrap();
        assert_eq!(v["alive"], false);
        assert_eq!(v["phase"], "restoring");
        assert_eq!(v["bytes_restored"], 3u64 << 29);
        assert_eq!(v["pid"], 1234);
        assert!(v.get("error").is_none());
    }

    #[test]
    fn this_process_is_alive_and_pid_zero_is_not() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(0));
        assert!(!process_alive(u32::MAX));
    }
}
