//! A real S3-compatible server for the tests: `moto_server` (PyPI `moto[server]`), one
//! per test binary, on a loopback port, each test in a bucket of its own.
//!
//! The server is found through `REHYDRATE_MOTO_SERVER` (set by `.ci/run`), else on
//! `PATH`. A missing server fails the test with what to install: a skip would hide it.
//! It runs under `sh`, which kills it when this process exits and closes its stdin.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;

/// Credentials the server accepts (moto checks none); the client must send some.
pub const KEY_ID: &str = "rehydrate-test";
pub const SECRET: &str = "rehydrate-test-secret";

struct Running {
    port: u16,
    /// Held until the process exits: its closing stops the server.
    _stdin: Mutex<ChildStdin>,
}

static SERVER: OnceLock<Running> = OnceLock::new();
static BUCKETS: AtomicU32 = AtomicU32::new(0);

fn moto_server() -> PathBuf {
    if let Some(path) = std::env::var_os("REHYDRATE_MOTO_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "REHYDRATE_MOTO_SERVER={} is not a file",
            path.display()
        );
        return path;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("moto_server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the S3 tests need an S3 server: `moto_server` is not installed. Install it \
                 with `python3 -m venv /opt/rehydrate-s3 && /opt/rehydrate-s3/bin/pip install \
                 'moto[server]'` and set REHYDRATE_MOTO_SERVER=/opt/rehydrate-s3/bin/moto_server \
                 (.ci/run does both)"
            )
        })
}

fn start() -> Running {
    let program = moto_server();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port");
    let mut child = Command::new("sh")
        .args([
            "-c",
            r#""$0" -H 127.0.0.1 -p "$1" >/dev/null 2>&1 & server=$!; read -r _; kill $server"#,
        ])
        .arg(&program)
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .spawn()
        .expect("sh starts the S3 server");
    let stdin = child.stdin.take().expect("piped stdin");
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{} exited before listening: {status}", program.display());
        }
        assert!(
            Instant::now() < deadline,
            "{} did not listen on port {port} within 60 s",
            program.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // `sh` is reaped when this process exits; nothing waits on it before.
    std::mem::forget(child);
    Running {
        port,
        _stdin: Mutex::new(stdin),
    }
}

/// The endpoint URL of this binary's server, starting it on first use.
pub fn endpoint() -> String {
    format!("http://127.0.0.1:{}", SERVER.get_or_init(start).port)
}

/// A new, empty bucket of this test's own.
pub fn new_bucket(label: &str) -> String {
    let name = format!(
        "{label}-{}-{}",
        std::process::id(),
        BUCKETS.fetch_add(1, Ordering::Relaxed)
    );
    let port = SERVER.get_or_init(start).port;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the S3 server");
    write!(
        stream,
        "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "creating bucket {name} failed: {reply}"
    );
    name
}

/// The environment a `rehydrate` process needs to reach the server.
pub fn env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT", endpoint()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", KEY_ID.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

/// A `Command` with the server's environment set.
pub fn with_env(mut cmd: Command) -> Command {
    for (k, v) in env() {
        cmd.env(k, v);
    }
    cmd
}

/// The bucket as an object store, for looking at and damaging objects directly.
pub fn bucket_store(bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint())
            .with_allow_http(true)
            .with_access_key_id(KEY_ID)
            .with_secret_access_key(SECRET)
            .with_region("us-east-1")
            .with_bucket_name(bucket)
            .build()
            .expect("an S3 client"),
    )
}
