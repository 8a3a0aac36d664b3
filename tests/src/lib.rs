//! Helpers for the end-to-end tests: where the workspace's binaries are, free ports,
//! and child processes that are killed when a test ends, pass or fail.

pub mod windows;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The directory holding the workspace's binaries for this build (`target/debug`):
/// the test executable lives in its `deps/` folder.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// A binary of the workspace, checked to exist so a missing build says so plainly.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo test --workspace`, which builds every binary",
        path.display()
    );
    path
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process killed and reaped on drop.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rehydrate backup IMAGE --store STORE --volume VOLUME`, which must succeed.
pub fn backup(image: &Path, store: &Path, volume: &str) {
    let out = Command::new(bin("rehydrate"))
        .arg("backup")
        .arg(image)
        .arg("--store")
        .arg(store)
        .args(["--volume", volume])
        .output()
        .expect("rehydrate backup runs");
    assert!(
        out.status.success(),
        "rehydrate backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rehydrate serve --store STORE --listen 127.0.0.1:PORT` as a child process.
pub fn serve(store: &Path, port: u16) -> Guard {
    let child = Command::new(bin("rehydrate"))
        .args(["serve", "--store"])
        .arg(store)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rehydrate serve starts");
    Guard(child)
}
