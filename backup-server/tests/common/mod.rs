//! Helpers shared by the end-to-end tests: images, the `rehydrate-backup` binary, an
//! in-process server on an ephemeral port, and the external tools (which must exist:
//! a missing tool fails the test with the package to install).

#![allow(dead_code)]

use std::io::Read;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use rehydrate_backup::ChunkStore;

pub const MIB: u64 = 1 << 20;

/// The `rehydrate-backup` binary cargo built for these tests.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rehydrate-backup"))
}

/// Fail clearly if an external tool is missing.
pub fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "required tool `{tool}` is not installed: apt-get install -y {package}"
    );
}

/// Deterministic noise (xorshift64*), fast enough in debug builds.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Write an image made of `(length, random?)` runs; returns its bytes.
pub fn write_image(path: &Path, runs: &[(u64, bool)], seed: u64) -> Vec<u8> {
    let mut data = Vec::new();
    for (i, &(len, random)) in runs.iter().enumerate() {
        if random {
            data.extend_from_slice(&noise(len as usize, seed + i as u64));
        } else {
            data.resize(data.len() + len as usize, 0);
        }
    }
    std::fs::File::create(path)
        .unwrap()
        .write_all(&data)
        .unwrap();
    data
}

/// Run a command to completion; panic with its stderr if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `key=value` fields of a `backup:` summary line (the last stdout line).
pub fn summary_fields(out: &Output) -> std::collections::HashMap<String, u64> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().to_owned();
    assert!(
        last.starts_with("backup: "),
        "last line is not a summary: {last:?}"
    );
    last.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_owned(), v)))
        .collect()
}

/// `rehydrate-backup backup IMAGE --store STORE --volume NAME`, checked.
pub fn backup(image: &Path, store: &Path, volume: &str) -> std::collections::HashMap<String, u64> {
    summary_fields(&run_ok(
        bin()
            .arg("backup")
            .arg(image)
            .arg("--store")
            .arg(store)
            .args(["--volume", volume]),
    ))
}

/// A server running in this process on an ephemeral loopback port.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(store: &Path) -> Self {
        let store = ChunkStore::open(store.to_str().unwrap(), false).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                ready_tx.send(listener.local_addr().unwrap()).unwrap();
                rehydrate_backup::serve_on(listener, store, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = ready_rx.recv().unwrap();
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Read a whole export with the nbd crate's client.
pub async fn read_all(addr: SocketAddr, export: &str) -> Vec<u8> {
    let client = rehydrate_nbd::Client::connect(addr, export).await.unwrap();
    let size = client.size_bytes();
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        let n = (size - out.len() as u64).min(8 * MIB) as usize;
        out.extend(client.read(out.len() as u64, n).await.unwrap());
    }
    client.disconnect().await.unwrap();
    out
}

/// Paths of every complete chunk object in a local store.
pub fn chunk_files(store: &Path) -> Vec<PathBuf> {
    let Ok(dirs) = std::fs::read_dir(store.join("chunks")) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for dir in dirs.flatten() {
        for f in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            // Temporary files of unfinished writes end in `#N`; they are not chunks.
            if !f.file_name().to_string_lossy().contains('#') {
                files.push(f.path());
            }
        }
    }
    files
}

/// Published version files of a volume.
pub fn version_files(store: &Path, volume: &str) -> Vec<String> {
    let dir = store.join("volumes").join(volume).join("versions");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".idx"))
        .collect();
    names.sort();
    names
}

/// A loopback port nobody listens on right now (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Kill a running `backup` (spawned with piped stdout) as soon as `stored_enough()`,
/// and check that it failed and printed no summary: it published nothing.
pub fn kill_mid_way(mut child: Child, stored_enough: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stored_enough() {
        assert!(Instant::now() < deadline, "backup stored no chunks in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success());
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("spawned with piped stdout")
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(stdout.is_empty(), "the killed backup printed: {stdout}");
}
