//! The receiver's disk fills up mid-transfer: a small tmpfs holds the receiving store
//! (mounting it needs root, as CI runs; the test says so if it cannot). The sender gets
//! one clear error line, the receiver keeps running and publishes nothing half, and once
//! the tmpfs is grown the same command completes.

mod common;
mod replicate_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{noise, MIB};
use replicate_support::*;

/// A tmpfs mounted for the test; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill the receiver's disk and needs root \
             (CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_owned())
    }

    fn resize(&self, size: &str) {
        common::run_ok(
            Command::new("mount")
                .args(["-o", &format!("remount,size={size}")])
                .arg(&self.0),
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_at_the_receiver_publishes_nothing_half_and_resumes_when_freed() {
    let dir = tempfile::tempdir().unwrap();
    let sender = dir.path().join("sender");
    let image = dir.path().join("image");
    let small = noise((2 * MIB) as usize, 1);
    let big = noise((12 * MIB) as usize, 2);
    for (name, data) in [("a-small", &small), ("b-big", &big)] {
        std::fs::write(&image, data).unwrap();
        backup(&image, &sender, name);
    }
    let mnt = Tmpfs::mount(&dir.path().join("mnt"), "6m");
    let store = mnt.0.join("store");
    let mut receiver = Receiver::start(&store, free_port(), &dir.path().join("r.log"));

    let run = run_replicate(&sender, receiver.port, &[]);
    assert_eq!(run.code, 1, "{run:?}");
    let line = run.stderr.lines().last().unwrap_or_default();
    assert!(
        line.contains("No space left on device") && line.contains("run again to resume"),
        "not one clear line: {line:?}"
    );
    eprintln!("{line}");
    let shown = assert_prefix_of_complete_versions(&sender, &store, &["a-small", "b-big"]);
    assert_eq!(shown[1], 0, "b-big cannot fit, nothing of it is visible");
    assert!(
        receiver.child.try_wait().unwrap().is_none(),
        "the receiver exited on a full disk"
    );

    mnt.resize("64m");
    let run = run_replicate(&sender, receiver.port, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.last_line
            .starts_with("replicate: committed=2 pending=0 failed=0 "),
        "{run:?}"
    );
    assert_eq!(
        assert_prefix_of_complete_versions(&sender, &store, &["a-small", "b-big"]),
        vec![1, 1]
    );
    assert!(read_export(&store, "a-small") == small);
    assert!(read_export(&store, "b-big") == big);
    receiver.kill9();
}
