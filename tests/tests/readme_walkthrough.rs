//! The README's walk-through, run as written: the `sh` block under "## Walk-through"
//! is executed by bash in an empty directory with the workspace's binaries on PATH.
//! Only the NBD port is changed, to a free one, so parallel runs do not collide.

use std::process::Command;

use rehydrate_tests::{bin, bin_dir, free_port};

fn walkthrough() -> String {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("## Walk-through")
        .nth(1)
        .expect("README has a Walk-through section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the Walk-through section has an sh block");
    block.to_string()
}

#[test]
fn every_command_of_the_readme_walkthrough_works_as_written() {
    // Fail early and clearly if a binary the walk-through uses is missing.
    bin("rehydrate");
    bin("rehydrate-sim");
    let script = walkthrough();
    assert!(script.contains("10809"), "the walk-through names its port");
    let port = free_port().to_string();
    let script = format!("set -euo pipefail\n{}", script.replace("10809", &port));
    let dir = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .env("XDG_RUNTIME_DIR", dir.path())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "walk-through failed ({}):\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    for expected in [
        "backup: volume=sys version=1",
        "restore: complete",
        "sweep: seeds=20",
    ] {
        assert!(
            stdout.contains(expected),
            "walk-through output lacks {expected:?}:\n{stdout}\n{stderr}"
        );
    }
}
