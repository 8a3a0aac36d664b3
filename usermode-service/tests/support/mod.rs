//! Helpers shared by the process-level tests: the `rehydrate` binary, servers killed
//! on drop (ours, qemu-nbd), images, and reading the one-line results.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const MIB: u64 = 1 << 20;

/// `rehydrate ARGS`, with logs left at the binary's defaults.
pub fn rehydrate(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rehydrate"));
    c.args(args).env_remove("RUST_LOG");
    c
}

/// Runs `rehydrate ARGS` to the end.
pub fn run(args: &[&str]) -> Output {
    started("run rehydrate", || rehydrate(args).output())
}

/// What `start` returns once it started a process (`what` names it if it never does).
///
/// Under wine (the Windows run of the portable tests) starting a process fails now and
/// then on a loaded machine (ERROR_INTERNAL_ERROR from CreateProcess). Such a process
/// never ran, so starting it again tests the same thing; an error that lasts is still
/// reported.
pub fn started<T>(what: &str, mut start: impl FnMut() -> std::io::Result<T>) -> T {
    let attempts = if cfg!(windows) { 3 } else { 1 };
    let mut last = None;
    for attempt in 0..attempts {
        match start() {
            Ok(done) => return done,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(200 * (attempt + 1)));
    }
    panic!("{what}: {}", last.expect("at least one attempt"))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A failure: non-zero exit, exactly one line on stderr, starting `rehydrate: error: `.
pub fn one_line_error(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr}");
    assert!(stderr.starts_with("rehydrate: error: "), "{stderr}");
    stderr.trim_end().to_owned()
}

/// The `key=value` fields of the completion line (the last stdout line).
pub fn summary(out: &Output) -> std::collections::HashMap<String, u64> {
    assert_ok(out, "restore");
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("restore: complete bytes="), "{last}");
    last.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse::<f64>().ok()? as u64)))
        .collect()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process killed and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub port: u16,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed and reaped on drop unless taken out first (a test that
/// fails half-way leaves no process behind).
pub struct Running(pub Option<Child>);

impl Running {
    /// The child, running.
    pub fn get(&mut self) -> &mut Child {
        self.0.as_mut().expect("still running")
    }

    /// The child, no longer guarded (to wait for its output).
    pub fn take(&mut self) -> Child {
        self.0.take().expect("still running")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn wait_listening(port: u16, child: &mut Child) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server exited early: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `rehydrate serve --store STORE` on `port`.
pub fn serve_on(store: &Path, port: u16) -> Proc {
    let mut child = rehydrate(&[
        "serve",
        "--store",
        s(store),
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start rehydrate serve");
    wait_listening(port, &mut child);
    Proc { child, port }
}

pub fn serve(store: &Path) -> Proc {
    serve_on(store, free_port())
}

pub fn require(tool: &str, package: &str) -> PathBuf {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "{tool} is not installed: apt-get install -y {package}"
    );
    PathBuf::from(text(&out.stdout).trim())
}

/// `qemu-nbd` serving `file` read-only (or writable) as export `name` on `port`.
pub fn qemu_nbd_on(file: &Path, name: &str, port: u16, writable: bool) -> Proc {
    require("qemu-nbd", "qemu-utils");
    let mut cmd = Command::new("qemu-nbd");
    cmd.args(["--persistent", "--shared=8", "-f", "raw", "-b", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-x", name]);
    if !writable {
        cmd.arg("--read-only");
    }
    let mut child = cmd
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-nbd");
    wait_listening(port, &mut child);
    Proc { child, port }
}

/// `len` random bytes (the kernel's: fast in debug builds; tests compare with the
/// image, so they need not replay).
pub fn random(len: usize) -> Vec<u8> {
    use std::io::Read;
    let mut data = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut data))
        .expect("read /dev/urandom");
    data
}

/// An image of `len` bytes: random with a run of zeros in the middle quarter.
pub fn make_image(path: &Path, len: usize) -> Vec<u8> {
    let mut data = random(len);
    data[len / 4..len / 2].fill(0);
    std::fs::write(path, &data).expect("write image");
    data
}

/// `rehydrate backup IMAGE --store STORE --volume NAME`, which must succeed; its line.
pub fn backup(image: &Path, store: &Path, volume: &str) -> String {
    let out = run(&["backup", s(image), "--store", s(store), "--volume", volume]);
    assert_ok(&out, "backup");
    text(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// Starts `rehydrate restore --source URL --target TARGET ARGS...` in the background.
pub fn spawn_restore(url: &str, target: &Path, extra: &[&str]) -> Child {
    rehydrate(
        &[
            &["restore", "--source", url, "--target", s(target)][..],
            extra,
        ]
        .concat(),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start rehydrate restore")
}

/// Runs `rehydrate restore` to the end.
pub fn restore(url: &str, target: &Path, extra: &[&str]) -> Output {
    run(&[
        &["restore", "--source", url, "--target", s(target)][..],
        extra,
    ]
    .concat())
}

/// The status file's snapshot (`Null` while there is none, or half written).
pub fn read_status(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// Waits until the status file says at least `bytes` are restored (the restore runs).
pub fn wait_restored(status_file: &Path, bytes: u64, child: &mut Child) {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(status_file) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                if v["bytes_restored"].as_u64().unwrap_or(0) >= bytes {
                    return;
                }
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("restore exited before {bytes} bytes were restored: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "restore never reached {bytes} bytes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills a restore that has committed some progress: waits for `bytes` restored, then a
/// commit interval and a half (commits land about once a second), then SIGKILL.
pub fn kill_after(status_file: &Path, bytes: u64, mut child: Child) {
    wait_restored(status_file, bytes, &mut child);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().expect("poll").is_none(),
        "the restore finished before it could be killed"
    );
    child.kill().expect("SIGKILL");
    let _ = child.wait();
}
