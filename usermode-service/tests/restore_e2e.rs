//! `rehydrate restore` end to end, as a real process, against real NBD servers
//! (qemu-nbd and nbdkit) on loopback: byte-compared results, a restore killed mid-way
//! and resumed, and the failures a user can cause.
//!
//! The tools must be installed (`apt-get install -y qemu-utils nbdkit`); a missing one
//! fails the test with a message saying so.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// A server process killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is not installed: apt-get install -y {package}"
    );
}

fn wait_listening(port: u16, child: &mut Child) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("server did not listen on {port}");
}

fn qemu_nbd(file: &Path, export: &str) -> Server {
    require("qemu-nbd", "qemu-utils");
    let port = free_port();
    let mut child = Command::new("qemu-nbd")
        .args([
            "--persistent",
            "--shared=8",
            "-f",
            "raw",
            "-b",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-x",
            export,
            "--read-only",
        ])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-nbd");
    wait_listening(port, &mut child);
    Server { child, port }
}

fn nbdkit(file: &Path) -> Server {
    require("nbdkit", "nbdkit");
    let port = free_port();
    let mut child = Command::new("nbdkit")
        .args([
            "-f",
            "-r",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "file",
        ])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nbdkit");
    wait_listening(port, &mut child);
    Server { child, port }
}

/// Random bytes from the kernel (fast even in a debug build; the tests compare the
/// restore with the image, so the bytes need not be reproducible).
fn fill_random(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("read /dev/urandom");
}

/// An image of `size` bytes: random data, one run of written zeros and holes punched
/// where the source should report zeros without data.
fn make_image(path: &Path, size: u64) {
    let mut data = vec![0u8; size as usize];
    fill_random(&mut data);
    // Written zeros (allocated): fetched as data, must still compare equal.
    data[(3 * MIB) as usize..(5 * MIB) as usize].fill(0);
    // Zero runs that become holes below, some not aligned to 4 KiB.
    let holes = [
        (16 * MIB, 32 * MIB),
        (100 * MIB + 4096, 7 * MIB),
        (200 * MIB, 20 * MIB),
    ];
    for &(o, l) in &holes {
        data[o as usize..(o + l) as usize].fill(0);
    }
    std::fs::write(path, &data).expect("write image");
    for &(o, l) in &holes {
        let ok = Command::new("fallocate")
            .args(["-p", "-o", &o.to_string(), "-l", &l.to_string()])
            .arg(path)
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "fallocate -p failed");
    }
}

struct Images {
    even: PathBuf,
    odd: PathBuf,
}

/// Two images shared by the tests: 256 MiB, and 256 MiB + 3584 bytes (not a whole
/// number of 4 KiB regions). They live in cargo's directory for integration-test files
/// and are kept for the next run: a static is never dropped, so a temporary directory
/// here would leak half a gigabyte on every run.
fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("restore_e2e-images");
        std::fs::create_dir_all(&dir).expect("images directory");
        let image = |name: &str, size: u64| {
            let path = dir.join(name);
            if std::fs::metadata(&path).ok().map(|m| m.len()) != Some(size) {
                // Made under another name and renamed, so a run killed midway leaves no
                // half-made image behind under the real name.
                let partial = dir.join(format!("{name}.partial"));
                make_image(&partial, size);
                std::fs::rename(&partial, &path).expect("rename image");
            }
            path
        };
        Images {
            even: image("even.img", 256 * MIB),
            odd: image("odd.img", 256 * MIB + 3584),
        }
    })
}

fn rehydrate(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rehydrate"));
    c.args(args).env("RUST_LOG", "warn");
    c
}

fn restore(url: &str, target: &Path, extra: &[&str]) -> Output {
    let t = target.to_str().expect("utf-8 path");
    let mut args = vec!["restore", "--source", url, "--target", t];
    args.extend_from_slice(extra);
    rehydrate(&args).output().expect("run rehydrate")
}

/// The `key=value` fields of the last stdout line, which must be the completion line.
fn summary(out: &Output) -> std::collections::HashMap<String, String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "restore failed: {}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("a last line");
    assert!(
        last.starts_with("restore: complete bytes="),
        "last line: {last}"
    );
    let fields: Vec<&str> = last.split_whitespace().skip(2).collect();
    assert!(
        fields[0].starts_with("bytes=")
            && fields[1].starts_with("secs=")
            && fields[2].starts_with("mib_per_sec=")
    );
    fields
        .iter()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn num(s: &std::collections::HashMap<String, String>, key: &str) -> u64 {
    s.get(key)
        .unwrap_or_else(|| panic!("no {key}"))
        .parse()
        .expect("a number")
}

fn assert_same(a: &Path, b: &Path) {
    let (x, y) = (
        std::fs::read(a).expect("read"),
        std::fs::read(b).expect("read"),
    );
    assert_eq!(x.len(), y.len(), "sizes differ");
    if x == y {
        return;
    }
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("first difference at byte {i}");
    }
}

#[test]
fn restores_from_qemu_nbd_byte_for_byte_with_holes_zero_filled() {
    let img = images();
    let server = qemu_nbd(&img.even, "even");
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("restored");
    let s = summary(&restore(
        &format!("nbd://127.0.0.1:{}/even", server.port),
        &target,
        &[],
    ));
    assert_same(&img.even, &target);
    assert_eq!(num(&s, "bytes"), 256 * MIB);
    assert!(
        num(&s, "zero_bytes") >= 50 * MIB,
        "holes zero-filled: {s:?}"
    );
    assert_eq!(num(&s, "fetched_bytes") + num(&s, "zero_bytes"), 256 * MIB);
    assert_eq!(num(&s, "resumed_bytes"), 0);
    // A second run finds everything restored and fetches nothing.
    let s = summary(&restore(
        &format!("nbd://127.0.0.1:{}/even", server.port),
        &target,
        &[],
    ));
    assert_eq!(
        (num(&s, "fetched_bytes"), num(&s, "resumed_bytes")),
        (0, 256 * MIB)
    );
}

#[test]
fn restores_an_image_that_ends_in_a_partial_region_from_qemu_nbd_and_nbdkit() {
    let img = images();
    let dir = tempfile::tempdir().expect("tempdir");
    let q = qemu_nbd(&img.odd, "odd");
    let target = dir.path().join("from-qemu");
    let s = summary(
        &restore(
            &format!("nbd://127.0.0.1:{}/odd", q.port),
            &target,
            &["--json"],
        )
        .with_json_line(),
    );
    assert_eq!(num(&s, "bytes"), 256 * MIB + 3584);
    assert_same(&img.odd, &target);
    drop(q);
    let k = nbdkit(&img.odd);
    let target = dir.path().join("from-nbdkit");
    let s = summary(&restore(
        &format!("nbd://127.0.0.1:{}/", k.port),
        &target,
        &["--fetch-size", "2MiB", "--in-flight", "4"],
    ));
    assert_eq!(num(&s, "bytes"), 256 * MIB + 3584);
    assert_same(&img.odd, &target);
}

/// `--json` prints the summary as one JSON object; turn it into the key=value line so
/// the same checks apply.
trait JsonLine {
    fn with_json_line(self) -> Output;
}

impl JsonLine for Output {
    fn with_json_line(mut self) -> Output {
        let stdout = String::from_utf8_lossy(&self.stdout).to_string();
        let last = stdout.lines().last().unwrap_or_default().to_owned();
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(&last) {
            let field = |k: &str| m.get(k).map(|v| v.to_string()).unwrap_or_default();
            let mut line = format!(
                "restore: complete bytes={} secs={} mib_per_sec={}",
                field("bytes"),
                field("secs"),
                field("mib_per_sec")
            );
            for k in ["fetched_bytes", "zero_bytes", "resumed_bytes"] {
                line.push_str(&format!(" {k}={}", field(k)));
            }
            self.stdout = line.into_bytes();
        }
        self
    }
}

#[test]
fn a_killed_restore_resumes_without_fetching_restored_regions_again() {
    let img = images();
    let server = qemu_nbd(&img.even, "even");
    let url = format!("nbd://127.0.0.1:{}/even", server.port);
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("restored");
    let t = target.to_str().expect("utf-8");
    // Paced so it is still running when killed; commits land about once a second.
    let mut child = rehydrate(&[
        "restore",
        "--source",
        &url,
        "--target",
        t,
        "--rate-limit",
        "48MiB",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start rehydrate");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        child.try_wait().expect("poll").is_none(),
        "restore finished before it could be killed"
    );
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let s = summary(&restore(&url, &target, &[]));
    assert_same(&img.even, &target);
    let (fetched, zero, resumed) = (
        num(&s, "fetched_bytes"),
        num(&s, "zero_bytes"),
        num(&s, "resumed_bytes"),
    );
    assert!(
        resumed >= 16 * MIB,
        "the first run's committed progress was kept: {s:?}"
    );
    assert!(resumed < 256 * MIB);
    // Every byte was restored exactly once across the two runs: nothing resumed was
    // fetched or written again.
    assert_eq!(fetched + zero + resumed, 256 * MIB, "{s:?}");
    assert_eq!(num(&s, "skipped_restored_bytes"), resumed);
}

fn error_line(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default().to_owned();
    assert!(last.starts_with("rehydrate: error: "), "stderr: {stderr}");
    last
}

#[test]
fn an_unreachable_source_fails_with_one_clear_line_after_retrying() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("t");
    let started = Instant::now();
    let out = restore(
        &format!("nbd://127.0.0.1:{}/x", free_port()),
        &target,
        &["--deadline", "1"],
    );
    let line = error_line(&out);
    assert!(
        line.contains("unreachable") && line.contains("attempts"),
        "{line}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!target.exists(), "nothing created");
}

#[test]
fn a_small_target_and_metadata_of_another_source_are_refused_before_any_write() {
    let img = images();
    let server = qemu_nbd(&img.odd, "odd");
    let dir = tempfile::tempdir().expect("tempdir");
    let small = dir.path().join("small");
    std::fs::write(&small, vec![7u8; 4096]).expect("write");
    let line = error_line(&restore(
        &format!("nbd://127.0.0.1:{}/odd", server.port),
        &small,
        &[],
    ));
    assert!(line.contains("holds 4096 bytes"), "{line}");
    assert_eq!(
        std::fs::read(&small).expect("read"),
        vec![7u8; 4096],
        "untouched"
    );

    // Metadata written by a restore of another export is not trusted.
    let target = dir.path().join("t");
    std::fs::write(&target, vec![0u8; (256 * MIB + 3584) as usize]).expect("write");
    let meta = dir.path().join("t.rehydrate-meta");
    {
        use rehydrate_driver::meta::{Identity, Metadata};
        let id = Identity {
            volume_size_bytes: 256 * MIB + 3584,
            region_size_bytes: 4096,
            backup_id: rehydrate_service::restore::backup_id("another", 256 * MIB + 3584),
        };
        let g = id.geometry().expect("geometry");
        let mut store =
            rehydrate_service::restore::FileMetaStore::open(&meta, Metadata::store_pages(&g), true)
                .expect("store");
        Metadata::create(&mut store, &id).expect("create");
    }
    let line = error_line(&restore(
        &format!("nbd://127.0.0.1:{}/odd", server.port),
        &target,
        &[],
    ));
    assert!(
        line.contains("metadata") && line.contains("backup"),
        "{line}"
    );
}
