//! The whole instant-restore path across real processes: `rehydrate backup` stores the
//! demo's volume image, `rehydrate serve` exports it over NBD on loopback, and
//! `rehydrate-sim demo --source` boots the simulated Windows stack with the filter on an
//! empty disk and the real service fetching from that server, while a file-system
//! workload reads and writes; the demo's oracle checks every read and the final disk
//! byte for byte.

use std::process::{Command, Stdio};

use rehydrate_tests::{backup, bin, free_port, serve};

#[test]
fn a_workload_runs_on_an_empty_disk_restored_from_a_separate_server_process() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("volume.img");
    let store = dir.path().join("store");
    let demo = |extra: &[&str]| {
        let out = Command::new(bin("rehydrate-sim"))
            .args(["demo", "--size", "24MiB", "--seed", "11"])
            .args(extra)
            .arg("--status-file")
            .arg(dir.path().join("status.json"))
            .stderr(Stdio::piped())
            .output()
            .expect("rehydrate-sim runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, _, err) = demo(&["--write-image", image.to_str().unwrap()]);
    assert!(ok, "{err}");

    backup(&image, &store, "sys");

    let port = free_port();
    let _server = serve(&store, port);
    let url = format!("nbd://127.0.0.1:{port}/sys");
    let (ok, out, err) = demo(&["--source", &url]);
    let last = out.lines().last().unwrap_or_default();
    assert!(ok && last.starts_with("demo: ok"), "{out}\n{err}");
    assert!(
        out.contains("no violation") && out.contains("equal byte for byte"),
        "{out}"
    );
}
