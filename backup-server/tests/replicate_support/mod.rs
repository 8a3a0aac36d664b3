//! Helpers for the replication tests: the receiver and sender as real processes, a
//! loopback proxy that cuts connections at chosen byte offsets (or slows them down), and
//! checks of what a receiving store shows.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `rehydrate-backup` binary.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rehydrate-backup"))
}

/// A small deterministic RNG (xorshift64*), seeded per test and printed on failure.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A seed from the clock, unless `REPLICATE_TEST_SEED` names one.
    pub fn seed() -> u64 {
        std::env::var("REPLICATE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until something listens on `port`.
pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `rehydrate-backup receive` process; killed when dropped.
pub struct Receiver {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Receiver {
    pub fn start(store: &Path, port: u16, log: &Path) -> Self {
        Self::start_with(store, port, log, &[])
    }

    /// As [`Receiver::start`], with `extra` arguments.
    pub fn start_with(store: &Path, port: u16, log: &Path, extra: &[&str]) -> Self {
        let child = bin()
            .args(["receive", "--store"])
            .arg(store)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("REHYDRATE_LOG", "info")
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        wait_port(port);
        Self {
            child,
            port,
            log: log.to_owned(),
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `rehydrate-backup replicate --from STORE --to 127.0.0.1:PORT [ARGS]`, as a child.
pub fn replicate_cmd(store: &Path, port: u16, args: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.args(["replicate", "--from"])
        .arg(store)
        .args(["--to", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The outcome of one `replicate` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub last_line: String,
    pub stderr: String,
    pub bytes_sent: u64,
}

pub fn run_replicate(store: &Path, port: u16, args: &[&str]) -> Run {
    let out = replicate_cmd(store, port, args).output().unwrap();
    parse_run(&out)
}

pub fn parse_run(out: &Output) -> Run {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let last_line = stdout.lines().last().unwrap_or_default().to_owned();
    // A session that broke off says what it sent in its error line.
    let bytes_sent = field(&last_line, "bytes_sent")
        .or_else(|| field(&stderr, "bytes_sent"))
        .unwrap_or(0);
    Run {
        code: out.status.code().unwrap_or(-1),
        last_line,
        stderr,
        bytes_sent,
    }
}

/// `key=N` in `text`.
pub fn field(text: &str, key: &str) -> Option<u64> {
    let at = text.rfind(&format!("{key}="))? + key.len() + 1;
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// A loopback proxy in front of `target`. Connection `n` (from 0) is cut once
/// `cut(n)` bytes went from the client towards the target (`None`: never); it can also
/// pace the client's bytes to `rate_bytes_per_sec`.
pub struct Proxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    /// Bytes forwarded client-to-target over all connections.
    pub forwarded: Arc<AtomicU64>,
    /// How many connections were cut.
    pub cuts: Arc<AtomicU64>,
}

type CutPlan = Arc<Mutex<dyn FnMut(u64) -> Option<u64> + Send>>;

impl Proxy {
    pub fn start(
        target: u16,
        cut: impl FnMut(u64) -> Option<u64> + Send + 'static,
        rate_bytes_per_sec: Option<u64>,
    ) -> Self {
        Self::start_with(target, cut, rate_bytes_per_sec, None)
    }

    /// A proxy that flips one bit of the first connection's client bytes at `offset`.
    pub fn flipping(target: u16, offset: u64) -> Self {
        Self::start_with(target, |_| None, None, Some(offset))
    }

    fn start_with(
        target: u16,
        cut: impl FnMut(u64) -> Option<u64> + Send + 'static,
        rate_bytes_per_sec: Option<u64>,
        flip_at: Option<u64>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(AtomicU64::new(0));
        let plan: CutPlan = Arc::new(Mutex::new(cut));
        let (s, f, c) = (stop.clone(), forwarded.clone(), cuts.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let limit = (plan.lock().unwrap())(n);
                        let flip = flip_at.filter(|_| n == 0);
                        n += 1;
                        let (f, c) = (f.clone(), c.clone());
                        std::thread::spawn(move || {
                            let plan = RelayPlan {
                                limit,
                                rate: rate_bytes_per_sec,
                                flip,
                            };
                            relay(client, target, plan, &f, &c)
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            port,
            stop,
            forwarded,
            cuts,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What a relay does to one connection.
struct RelayPlan {
    /// Cut after this many client bytes.
    limit: Option<u64>,
    /// Pace the client's bytes to this rate.
    rate: Option<u64>,
    /// Flip a bit of the client's byte at this offset.
    flip: Option<u64>,
}

fn relay(client: TcpStream, target: u16, plan: RelayPlan, forwarded: &AtomicU64, cuts: &AtomicU64) {
    let RelayPlan { limit, rate, flip } = plan;
    client.set_nonblocking(false).unwrap();
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
        return;
    };
    // Target to client: copy until either side ends.
    let (mut from_server, mut to_client) =
        (server.try_clone().unwrap(), client.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Both);
    });
    let (mut from_client, mut to_server) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    let started = Instant::now();
    let mut sent = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let room = limit.map_or(buf.len() as u64, |l| {
            l.saturating_sub(sent).min(buf.len() as u64)
        });
        if room == 0 {
            // The cut: the target gets exactly `limit` bytes and then the end of the
            // stream; the client's connection is torn down.
            cuts.fetch_add(1, Ordering::Relaxed);
            break;
        }
        let n = match from_client.read(&mut buf[..room as usize]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(at) = flip.filter(|&at| (sent..sent + n as u64).contains(&at)) {
            buf[(at - sent) as usize] ^= 0x10;
        }
        if to_server.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        forwarded.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let _ = to_server.shutdown(Shutdown::Write);
    let _ = client.shutdown(Shutdown::Both);
}

/// Version files of `volume` in a store, ascending.
pub fn versions(store: &Path, volume: &str) -> Vec<u32> {
    let dir = store.join("volumes").join(volume).join("versions");
    let mut out: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".idx")
                .filter(|d| d.len() == 8)
                .and_then(|d| d.parse().ok())
        })
        .collect();
    out.sort_unstable();
    out
}

/// What a receiving store shows is a prefix of the sender's chain of complete versions:
/// for each volume, versions 1..=k, each index byte-identical to the sender's, and
/// every chunk each names present. Returns the versions shown per volume.
pub fn assert_prefix_of_complete_versions(
    sender: &Path,
    receiver: &Path,
    volumes: &[&str],
) -> Vec<usize> {
    volumes
        .iter()
        .map(|volume| {
            let theirs = versions(receiver, volume);
            let ours = versions(sender, volume);
            assert_eq!(
                theirs[..],
                ours[..theirs.len().min(ours.len())],
                "{volume}: receiver shows {theirs:?}, sender has {ours:?}"
            );
            for v in &theirs {
                let rel = format!("volumes/{volume}/versions/{v:08}.idx");
                let (a, b) = (
                    std::fs::read(sender.join(&rel)).unwrap(),
                    std::fs::read(receiver.join(&rel)).unwrap(),
                );
                assert!(a == b, "{volume}@{v}: index differs from the sender's");
                let index = rehydrate_backup::Index::decode(&b).unwrap();
                for c in &index.chunks {
                    if let rehydrate_backup::ChunkRef::Data(h) = c {
                        assert!(
                            receiver.join(h.path().as_ref()).exists(),
                            "{volume}@{v} is visible but names chunk {h}, which is not there"
                        );
                    }
                }
            }
            theirs.len()
        })
        .collect()
}

/// Total stored size of the chunk objects of `store` that `other` lacks.
pub fn missing_bytes(store: &Path, other: &Path) -> u64 {
    let mut total = 0;
    for dir in std::fs::read_dir(store.join("chunks"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.contains('#') {
                continue;
            }
            let rel = f.path().strip_prefix(store).unwrap().to_owned();
            if !other.join(&rel).exists() {
                total += f.metadata().unwrap().len();
            }
        }
    }
    total
}

/// Total size of every version index of `store` (what one manifest can carry).
pub fn index_bytes(store: &Path) -> u64 {
    let mut total = 0;
    for vol in std::fs::read_dir(store.join("volumes"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(vol.path().join("versions"))
            .into_iter()
            .flatten()
            .flatten()
        {
            total += f.metadata().unwrap().len();
        }
    }
    total
}

/// Read a whole export of a store through our NBD server and client.
pub fn read_export(store: &Path, export: &str) -> Vec<u8> {
    let server = super::common::Server::start(store);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(super::common::read_all(server.addr, export))
}

/// Back up `image` into `store` as `volume` with 64 KiB chunks.
pub fn backup(image: &Path, store: &Path, volume: &str) {
    super::common::run_ok(
        bin()
            .arg("backup")
            .arg(image)
            .arg("--store")
            .arg(store)
            .args(["--volume", volume, "--chunk-size", "64KiB"]),
    );
}

/// Overwrite `fraction_percent` of the 64 KiB chunks of `data` (deterministically).
pub fn change_chunks(data: &mut [u8], fraction_percent: u64, seed: u64) {
    let chunks = data.len() / 65536;
    let mut rng = Rng::new(seed);
    for i in 0..chunks {
        if rng.range(0, 100) < fraction_percent {
            let fresh = super::common::noise(65536, seed ^ (i as u64) << 20);
            data[i * 65536..(i + 1) * 65536].copy_from_slice(&fresh);
        }
    }
}
