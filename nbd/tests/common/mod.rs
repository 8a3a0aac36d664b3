//! Helpers for the interop tests: images, free ports, real peer processes, our server.
//!
//! Every test runs real programs on loopback. A missing program fails the test with a
//! message naming the package to install: CI installs them, so a skip would hide a gap.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod certs;

use rehydrate_nbd::{Catalog, ServerConfig};

/// Fail loudly when a peer program is missing.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "`{tool}` is not installed; this interop test needs it (apt-get install -y {package})"
        )
    })
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Wait until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if StdStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("peer exited before listening on {port}: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "nothing listened on port {port} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (and reaped) when dropped.
pub struct Peer(pub Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start a long-running peer and wait for it to listen on `port`.
pub fn spawn_peer(program: &str, package: &str, args: &[&str], port: u16) -> Peer {
    let path = require_tool(program, package);
    let child = Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let mut peer = Peer(child);
    wait_for_port(port, &mut peer.0);
    peer
}

/// Run a program to completion; panic with its output if it fails.
pub fn run(program: &str, package: &str, args: &[&str]) -> String {
    let path = require_tool(program, package);
    let out = Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A deterministic pseudo-random generator (xorshift64*), so failures replay.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Block layout of test images: each 256 KiB block is random data, written zeroes, or a
/// sparse hole, so block status has something to find.
pub const BLOCK: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Data,
    Zeroes,
    Hole,
}

/// The kind of block `i` (fixed pattern, with runs of each kind).
pub fn kind_of(i: usize) -> Kind {
    match i % 7 {
        0 | 1 | 4 => Kind::Data,
        2 => Kind::Zeroes,
        _ => Kind::Hole,
    }
}

/// The kind of block `i` of `len` bytes; a partial last block always holds data, so the
/// odd-sized tail is compared byte for byte.
pub fn block_kind(i: usize, len: usize) -> Kind {
    if len < BLOCK {
        Kind::Data
    } else {
        kind_of(i)
    }
}

/// Write a sparse raw image of `size` bytes at `path`; returns its contents.
pub fn make_image(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut rng = Rng::new(seed);
    let mut contents = vec![0u8; size];
    let file = std::fs::File::create(path).expect("create image");
    file.set_len(size as u64).expect("size image");
    for (i, block) in contents.chunks_mut(BLOCK).enumerate() {
        let at = (i * BLOCK) as u64;
        match block_kind(i, block.len()) {
            Kind::Data => {
                rng.fill(block);
                file.write_all_at(block, at).expect("write data");
            }
            Kind::Zeroes => file.write_all_at(block, at).expect("write zeroes"),
            Kind::Hole => {}
        }
    }
    file.sync_all().expect("sync image");
    contents
}

/// Start our server for `catalog` on an ephemeral loopback port.
pub async fn start_server(catalog: Arc<dyn Catalog>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(rehydrate_nbd::serve(
        listener,
        catalog,
        ServerConfig::default(),
    ));
    (addr, task)
}

/// Compare two byte strings, reporting the first difference rather than dumping both.
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i}: got {} want {}",
            got[i], want[i]
        );
    }
}
