//! The backup server goes away in the middle of a live restore, past the deadline, and
//! comes back, with real processes: while it is away, a client read that needs a
//! missing region gets EIO and everything restored keeps being served; the background
//! sweep keeps retrying what failed, so once the server is back the restore completes
//! on its own, and the target is byte-identical to the backup.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const IMAGE_BYTES: usize = 32 * MIB as usize;

/// `qemu-io -f raw -c CMD URL`: its output, whether or not the command failed.
fn qemu_io(url: &str, command: &str) -> String {
    require("qemu-io", "qemu-utils");
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", command, url])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

fn status(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

#[test]
fn a_live_restore_completes_once_its_source_is_back_after_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, store) = (dir.path().join("disk.img"), dir.path().join("store"));
    let image = make_image(&disk, IMAGE_BYTES);
    backup(&disk, &store, "sys");
    let source_port = free_port();
    let export_port = free_port();
    let status_file = dir.path().join("status.json");
    let target = dir.path().join("target.img");

    let server = serve_on(&store, source_port);
    let mut restore = Running(Some(spawn_restore(
        &format!("nbd://127.0.0.1:{source_port}/sys"),
        &target,
        &[
            "--export",
            &format!("127.0.0.1:{export_port}"),
            "--rate-limit",
            "4MiB",
            "--deadline",
            "2",
            "--status-file",
            s(&status_file),
        ],
    )));
    wait_listening(export_port, restore.get());
    let url = format!("nbd://127.0.0.1:{export_port}/sys");
    // The first MiB restored (read through the export), then the source goes away.
    let first = qemu_io(&url, "read 0 1M");
    assert!(first.contains("read 1048576/1048576 bytes"), "{first}");
    drop(server);

    // Past the deadline: a read of what is still missing fails with EIO...
    let missing = qemu_io(&url, &format!("read {} 4k", IMAGE_BYTES - 8192));
    assert!(
        missing.contains("Input/output error"),
        "a read of a missing region while the source is away: {missing}"
    );
    // ...and what is restored is still served.
    let restored = qemu_io(&url, "read 0 64k");
    assert!(restored.contains("read 65536/65536 bytes"), "{restored}");
    // The read's fetch and the background's in flight failed past the deadline (the
    // status file is rewritten twice a second).
    let start = Instant::now();
    while status(&status_file)["fetch_failures"].as_u64().unwrap_or(0) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "fetches failed past the deadline: {}",
            status(&status_file)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        restore.get().try_wait().unwrap().is_none(),
        "the live export keeps running without its source"
    );
    let before = status(&status_file)["bytes_restored"].as_u64().unwrap_or(0);
    assert!(
        before < IMAGE_BYTES as u64,
        "still restoring when the source left"
    );

    // The source comes back on the same address: the sweep retries what failed, and the
    // restore completes without anyone asking.
    let _server = serve_on(&store, source_port);
    let start = Instant::now();
    while status(&status_file)["bytes_restored"].as_u64() != Some(IMAGE_BYTES as u64) {
        assert!(
            restore.get().try_wait().unwrap().is_none(),
            "the restore exited before it completed"
        );
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "never completed once the source was back: {}",
            status(&status_file)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The read that failed now succeeds, with the backup's bytes (checked below).
    let again = qemu_io(&url, &format!("read {} 4k", IMAGE_BYTES - 8192));
    assert!(again.contains("read 4096/4096 bytes"), "{again}");

    let restore = restore.take();
    let _ = Command::new("kill")
        .args(["-TERM", &restore.id().to_string()])
        .status();
    let out = restore.wait_with_output().unwrap();
    assert_ok(&out, "restore");
    let line = text(&out.stdout);
    assert!(
        line.trim_end()
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("restore: complete"),
        "{line}"
    );
    assert!(
        std::fs::read(&target).unwrap() == image,
        "the target equals the backup"
    );
}
