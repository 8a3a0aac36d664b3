//! The whole loop with our own binary only: `rehydrate backup` an image into a store,
//! `rehydrate serve` it, `rehydrate restore` it with a status file, and `rehydrate
//! status` reading that file; plus the one-line failures of each.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{assert_ok, started, text};

const MIB: usize = 1 << 20;
const IMAGE_BYTES: usize = 24 * MIB;

fn rehydrate(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rehydrate"));
    c.args(args).env("RUST_LOG", "warn");
    c
}

fn run(args: &[&str]) -> Output {
    started("run rehydrate", || rehydrate(args).output())
}

/// A failure: non-zero exit, nothing on stdout, exactly one line on stderr.
fn assert_one_line_error(out: &Output, starts_with: &str) {
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
    assert!(stderr.starts_with(starts_with), "stderr: {stderr}");
}

/// `rehydrate serve`, killed when dropped.
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

fn serve(store: &Path) -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let child = started("start rehydrate serve", || {
        rehydrate(&[
            "serve",
            "--store",
            store.to_str().unwrap(),
            "--listen",
            &listen,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    });
    let mut server = Server { child, port };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("rehydrate serve exited early: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "serve never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

/// 24 MiB: 8 MiB random, 8 MiB zeros (zero chunks, restored without data), 8 MiB random.
fn make_image(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut data = vec![0u8; IMAGE_BYTES];
    let mut urandom = std::fs::File::open("/dev/urandom").expect("open /dev/urandom");
    urandom.read_exact(&mut data[..8 * MIB]).unwrap();
    urandom.read_exact(&mut data[16 * MIB..]).unwrap();
    std::fs::write(path, &data).expect("write image");
    data
}

#[test]
fn backup_serve_restore_and_status_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    let data = make_image(&image);
    let store = dir.path().join("store");

    let out = run(&[
        "backup",
        image.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--volume",
        "disk",
    ]);
    assert_ok(&out, "backup");
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().expect("a backup line");
    assert!(
        last.starts_with(&format!(
            "backup: volume=disk version=1 bytes={IMAGE_BYTES} "
        )),
        "{last}"
    );
    assert!(last.contains(" zero_chunks=8"), "{last}");

    let server = serve(&store);
    let target = dir.path().join("restored.img");
    let status_file = dir.path().join("run/status.json");
    let url = format!("nbd://127.0.0.1:{}/disk", server.port);
    let child = started("start rehydrate restore", || {
        rehydrate(&[
            "restore",
            "--source",
            &url,
            "--target",
            target.to_str().unwrap(),
            "--status-file",
            status_file.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    });
    let restore_pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_ok(&out, "restore");
    assert!(text(&out.stdout).starts_with(&format!("restore: complete bytes={IMAGE_BYTES} ")));
    drop(server);

    let status = ["status", "--status-file", status_file.to_str().unwrap()];
    let out = run(&[&status[..], &["--json"]].concat());
    assert_ok(&out, "status --json");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["phase"], "complete");
    assert_eq!(v["bytes_total"], IMAGE_BYTES as u64);
    assert_eq!(v["bytes_restored"], v["bytes_total"]);
    assert_eq!(v["regions_restored"], v["regions_total"]);
    assert_eq!(
        v["bytes_zero"].as_u64().unwrap() + v["bytes_fetched"].as_u64().unwrap(),
        IMAGE_BYTES as u64
    );
    assert_eq!(v["pid"], restore_pid);
    assert_eq!(v["alive"], false);
    assert_eq!(v["source"], url.as_str());

    let out = run(&status);
    assert_ok(&out, "status");
    let human = text(&out.stdout);
    assert!(human.starts_with("state:"), "{human}");
    assert!(
        human.lines().next().unwrap().contains("complete"),
        "{human}"
    );
    assert!(human.contains("24.0 MiB of 24.0 MiB (100.0%)"), "{human}");

    assert!(
        std::fs::read(&target).unwrap() == data,
        "restored bytes differ"
    );

    // The restore's metadata, read as attach's is beside the filter: nothing written.
    let metadata = dir.path().join("restored.img.rehydrate-meta");
    let before = std::fs::read(&metadata).unwrap();
    let inspect = ["status", "--metadata", metadata.to_str().unwrap()];
    let out = run(&inspect);
    assert_ok(&out, "status --metadata");
    let human = text(&out.stdout);
    assert!(human.contains("phase     complete"), "{human}");
    assert!(human.contains("source    disk@1 ("), "{human}");
    assert!(human.contains("(100.0%)"), "{human}");
    let out = run(&[&inspect[..], &["--json"]].concat());
    assert_ok(&out, "status --metadata --json");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["bytes_total"], IMAGE_BYTES as u64);
    assert_eq!(v["regions_restored"], v["regions_total"]);
    assert_eq!(
        std::fs::read(&metadata).unwrap(),
        before,
        "metadata untouched"
    );
}

#[test]
fn failures_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing/status.json");
    let out = run(&["status", "--status-file", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(&out, "rehydrate: error: no status file at ");
    let out = run(&["status", "--metadata", missing.to_str().unwrap()]);
    assert_one_line_error(&out, "rehydrate: error: metadata ");

    let store = dir.path().join("store");
    let out = run(&[
        "backup",
        dir.path().join("absent.img").to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--volume",
        "v",
    ]);
    assert_one_line_error(&out, "rehydrate: error: ");

    // An address that cannot be bound: serve fails at once, with one line.
    std::fs::create_dir_all(&store).unwrap();
    let out = run(&[
        "serve",
        "--store",
        store.to_str().unwrap(),
        "--listen",
        "256.0.0.1:1",
    ]);
    assert_one_line_error(&out, "rehydrate: error: ");
}
