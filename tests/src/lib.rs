//! Helpers for the end-to-end tests: where the workspace's binaries are, free ports,
//! and child processes that are killed when a test ends, pass or fail.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Child;

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
