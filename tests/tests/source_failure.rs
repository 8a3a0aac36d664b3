//! The backup server goes away in the middle of a restore, with real processes: the
//! restore retries until its deadline, then stops with one clear line and keeps what it
//! restored; once the server is back, the same command resumes, fetches only what is
//! missing, and the result is byte-identical to the source.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rehydrate_tests::{backup, bin, free_port, serve};

fn image(path: &Path) {
    // Data with a zero run in the middle: 40 MiB.
    let mut f = std::fs::File::create(path).unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut chunk = vec![0u8; 1 << 20];
    for mib in 0..40 {
        if (16..24).contains(&mib) {
            chunk.fill(0);
        } else {
            for b in chunk.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b.copy_from_slice(&state.to_le_bytes());
            }
        }
        f.write_all(&chunk).unwrap();
    }
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key}= missing in {line:?}"))
}

#[test]
fn a_restore_survives_the_server_going_away_and_resumes_without_refetching() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    let store = dir.path().join("store");
    let target = dir.path().join("restored.img");
    image(&disk);
    backup(&disk, &store, "vol");

    let port = free_port();
    let url = format!("nbd://127.0.0.1:{port}/vol");
    let restore = |rate: Option<&str>| {
        let mut cmd = Command::new(bin("rehydrate"));
        cmd.args(["restore", "--source", &url, "--target"])
            .arg(&target)
            .args(["--deadline", "3"])
            .arg("--status-file")
            .arg(dir.path().join("status.json"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(rate) = rate {
            cmd.args(["--rate-limit", rate]);
        }
        cmd
    };

    // First attempt: slowed down so the server can be stopped half-way.
    let server = serve(&store, port);
    let first = restore(Some("8MiB")).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    drop(server);
    let stopped_at = Instant::now();
    let first = first.wait_with_output().unwrap();
    let waited = stopped_at.elapsed();
    assert!(
        !first.status.success(),
        "the restore cannot finish without its source"
    );
    let err = last_line(&first.stderr);
    assert!(
        err.starts_with("rehydrate: error:"),
        "one clear line, got {err:?}"
    );
    assert!(
        waited < Duration::from_secs(30),
        "gave up after the deadline, not never ({waited:?})"
    );

    // The server comes back: the same command resumes and completes.
    let _server = serve(&store, port);
    let second = restore(None).output().unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let line = last_line(&second.stdout);
    assert!(line.starts_with("restore: complete"), "{line}");
    let bytes = field(&line, "bytes");
    let resumed = field(&line, "resumed_bytes");
    let fetched = field(&line, "fetched_bytes");
    let zero = field(&line, "zero_bytes");
    assert!(
        resumed > 0,
        "the first attempt's durable progress was kept: {line}"
    );
    assert_eq!(
        fetched + zero + resumed,
        bytes,
        "nothing fetched twice: {line}"
    );
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        std::fs::read(&target).unwrap()
    );
}
